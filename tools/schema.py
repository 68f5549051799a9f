"""Strict schema validation of rendered manifests.

Uses the schemas kubernetes-validate ships (`<version>-local-strict`, where
unknown fields are errors) with the same lookup rules as `kubernetes-validate
--strict`, but builds each validator once per kind and reports every error of
a manifest with its field path, not just the first.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
from kubernetes_validate import utils as kv
from referencing import Registry, Resource


@dataclass(frozen=True)
class SchemaProblem:
    path: str  # e.g. spec.template.spec.containers[0].resources
    message: str


class SchemaValidator:
    """Validates manifests for one Kubernetes minor version."""

    def __init__(self, kubernetes_version: str) -> None:
        wanted = kv.major_minor(kubernetes_version.removeprefix("v"))
        available = [v for v in kv.all_versions() if _key(kv.major_minor(v)) <= _key(wanted)]
        if not available:
            raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {wanted}")
        self.kubernetes_version = wanted
        self.schema_version = available[-1]
        self._schema_dir = f"kubernetes-json-schema/v{self.schema_version}-local-strict"

    def has_schema(self, api_version: str, kind: str) -> bool:
        return self._validator(api_version, kind) is not None

    def validate(self, manifest: dict[str, Any]) -> list[SchemaProblem]:
        """Every schema error of the manifest; raises KeyError for unknown kinds
        (check `has_schema` first)."""
        validator = self._validator(manifest["apiVersion"], manifest["kind"])
        if validator is None:
            raise KeyError(f"no schema for {manifest['apiVersion']}/{manifest['kind']}")
        problems = [
            SchemaProblem(_path(error.absolute_path), _message(error))
            for error in validator.iter_errors(manifest)
        ]
        return sorted(problems, key=lambda p: (p.path, p.message))

    @functools.cache  # noqa: B019 (one instance per preview run)
    def _validator(self, api_version: str, kind: str) -> jsonschema.Validator | None:
        # rbac.authorization.k8s.io/v1 -> rbac-v1 (kubernetes-validate's file naming)
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            schema = kv.schema_contents(
                f"{self._schema_dir}/{kind.lower()}-{group_version}.json", self.kubernetes_version
            )
        except FileNotFoundError:
            return None
        registry: Registry = Resource.from_contents(schema) @ Registry()
        registry = _definitions(self._schema_dir, self.kubernetes_version) @ registry
        return jsonschema.validators.Draft202012Validator(schema, registry=registry)


@functools.cache
def _definitions(schema_dir: str, version: str) -> Resource:
    return Resource.from_contents(kv.schema_contents(f"{schema_dir}/_definitions.json", version))


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return f"unknown field: {error.message}"
    return error.message
