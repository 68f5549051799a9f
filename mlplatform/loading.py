"""Loading the stack config into PlatformSettings, and reporting what is wrong.

Unknown keys are rejected with a "did you mean" hint. Validation collects every
problem, each with its full key path (`mlplatform:gpuNodeGroups[1].maxSize: ...`),
and fails once, before any resource is registered.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Union

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel, ValidationError

from infra.config_types import ConfigError, FieldProblems, Loc, format_loc, unknown_key_message
from mlplatform.settings import NAMESPACE, WORKLOAD_KINDS, PlatformSettings


def load_settings(config: Mapping[str, Any], stack: str) -> PlatformSettings:
    """Build settings from a flat Pulumi config mapping (`"mlplatform:teams" -> value`).

    Values may be parsed objects (the offline preview, tests) or the JSON strings
    Pulumi hands a program for structured config. Raises ConfigError naming every
    problem with its key path.
    """
    data: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    known = {field.alias or name: name for name, field in PlatformSettings.model_fields.items()}
    for full_key, raw in config.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        if key not in known:
            problems.append((full_key, unknown_key_message(key, list(known))))
            continue
        data[key] = _decode(raw)
    data.setdefault("environment", stack)
    cluster = data.get("cluster")
    region = config.get("aws:region")
    if isinstance(cluster, dict) and "region" not in cluster and region:
        data["cluster"] = {**cluster, "region": region}
    elif cluster is None and region:
        data["cluster"] = {"region": region}
    try:
        settings = PlatformSettings.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def load_from_pulumi() -> PlatformSettings:
    """Settings from the running Pulumi program's config."""
    merged: dict[str, Any] = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    return load_settings(merged, pulumi.get_stack())


def _decode(raw: Any) -> Any:
    if isinstance(raw, str) and raw[:1] in ("{", "["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _problems_from(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblems):
            for rel, msg in cause.problems:
                problems.append((_key_path(loc + rel), msg))
            continue
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tag = (err.get("ctx") or {}).get("tag")
            kinds = ", ".join(WORKLOAD_KINDS)
            message = (
                f"unknown kind {tag!r}; use one of {kinds}"
                if tag
                else f"`kind` is missing ({kinds})"
            )
            problems.append((_key_path((*loc, "kind")), message))
            continue
        problems.append((_key_path(loc), _message(err, loc)))
    return problems


def _key_path(loc: Loc) -> str:
    """`mlplatform:<path>`, without the union tags pydantic puts in locations
    (`workloads[0].training.gpus` is shown as `workloads[0].gpus`)."""
    shown = [
        part
        for k, part in enumerate(loc)
        if not (
            k >= 2
            and part in WORKLOAD_KINDS
            and loc[k - 2] == "workloads"
            and isinstance(loc[k - 1], int)
        )
    ]
    return f"{NAMESPACE}:{format_loc(tuple(shown))}"


def _message(err: Any, loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
        return unknown_key_message(str(loc[-1]), allowed)
    if kind == "missing":
        return "required key is missing"
    msg: str = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind in ("literal_error", "enum"):
        return f"{err.get('input')!r}: {msg[0].lower()}{msg[1:]}"
    return msg


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The settings model class found by following `loc` (aliases, list indices)."""
    current: Any = PlatformSettings
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for n, f in current.model_fields.items() if (f.alias or n) == part),
                None,
            )
            if field is None:
                return None
            current = field.annotation
            continue
        # A tagged union member: the tag names the model.
        members = [m for m in typing.get_args(current) if isinstance(m, type)]
        current = next((m for m in members if _tag_of(m) == part), None)
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
            else:
                return tp
        else:
            return tp


def _tag_of(model: type) -> str | None:
    field = getattr(model, "model_fields", {}).get("kind")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return args[0] if args else None
