"""Run the Pulumi program in-process under mocks and collect what it registers.

This is the engine of the offline preview (`tools.preview`) and of the tests:
`__main__.py` runs exactly as `pulumi up` would run it, with the stack's
config, but the engine and the providers are `tools.mocks`.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _sync_await

from tools.mocks import SECRET, UNKNOWN, PlatformMocks, Record, RecordingMonitor, plain

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "mlplatform"


def stack_file(stack: str, root: Path = ROOT) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def preview_process(
    stack: str, out: Path, tree: Path = ROOT, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m tools.preview --stack STACK --out OUT`, run in `tree`.

    Each preview gets its own interpreter: the Pulumi mocks are process-wide,
    and `tree` may be another revision of the project (tools/diff.py).
    Raises subprocess.TimeoutExpired past `timeout`.
    """
    return subprocess.run(
        [sys.executable, "-m", "tools.preview", "--stack", stack, "--out", str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def read_stack_config(path: Path) -> dict[str, Any]:
    """The `config:` map of a Pulumi.<stack>.yaml file (secure values stay opaque)."""
    with path.open() as f:
        doc = yaml.safe_load(f) or {}
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: `config` must be a mapping")
    return dict(config)


@dataclass
class Run:
    """What one in-process run of the program registered."""

    stack: str
    config: dict[str, Any]
    records: list[Record]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)

    def by_type(self, type_token: str) -> list[Record]:
        return [r for r in self.records if r.type == type_token]

    def one(self, type_token: str, name: str) -> Record:
        found = [r for r in self.records if r.type == type_token and r.name == name]
        if len(found) != 1:
            names = sorted(r.name for r in self.by_type(type_token))
            raise KeyError(f"{len(found)} {type_token} named {name!r}; have {names}")
        return found[0]

    def parent_name(self, record: Record) -> str | None:
        for r in self.records:
            if r.urn == record.parent_urn:
                return r.name
        return None

    @property
    def kubernetes_objects(self) -> list[Record]:
        return [r for r in self.records if r.is_kubernetes_object]

    def manifests(self) -> list[dict[str, Any]]:
        return [manifest(r) for r in self.kubernetes_objects]

    def manifest(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        found = [
            m
            for m in self.manifests()
            if m["kind"] == kind
            and m["metadata"].get("name") == name
            and (namespace is None or m["metadata"].get("namespace") == namespace)
        ]
        if len(found) != 1:
            raise KeyError(f"{len(found)} {kind} named {name!r} in {namespace!r}")
        return found[0]


_FIRST_KEYS = ("apiVersion", "kind", "metadata", "name", "namespace")


def canonical(value: Any) -> Any:
    """Stable key order (identity keys first, then alphabetical) so rendered
    manifests diff cleanly between runs and commits."""
    if isinstance(value, dict):
        first = [k for k in _FIRST_KEYS if k in value]
        rest = sorted(k for k in value if k not in _FIRST_KEYS)
        return {k: canonical(value[k]) for k in first + rest}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def manifest(record: Record) -> dict[str, Any]:
    """The Kubernetes object exactly as it would be applied."""
    result: dict[str, Any] = canonical(record.inputs)
    return result


def _config_values(config: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            values[key] = SECRET
            secret_keys.append(key)
        elif isinstance(value, str):
            values[key] = value
        else:
            values[key] = json.dumps(value)
    return values, secret_keys


def run_program(
    stack: str,
    config: Mapping[str, Any],
    program: Path = ROOT / "__main__.py",
    monitor: RecordingMonitor | None = None,
) -> Run:
    """Run `program` under mocks with `config` (a stack file's `config:` map).

    Raises whatever the program raises (ConfigError for invalid settings); pass
    your own `monitor` to inspect what was registered before that.
    """
    if monitor is None:
        monitor = RecordingMonitor(
            PlatformMocks(region=str(config.get("aws:region") or "us-west-2"))
        )
    values, secret_keys = _config_values(config)
    runtime_settings.SETTINGS.rpc_manager.clear()
    runtime_settings.SETTINGS.outputs.clear()
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_all_config(values, secret_keys)
    pulumi.runtime.set_mocks(
        monitor.mocks, project=PROJECT, stack=stack, preview=True, monitor=monitor
    )
    previous_cwd = Path.cwd()
    os.chdir(program.parent)  # the CLI runs programs from the project directory
    try:
        runpy.run_path(str(program), run_name="__main__")
        _sync_await(wait_for_rpcs())
        root = runtime_settings.get_root_resource()
        raw_outputs: dict[str, Any] = dict(getattr(root, "outputs", {}) or {})
        outputs, secret = _resolve_outputs(raw_outputs)
    finally:
        os.chdir(previous_cwd)
    # Registration order depends on how the mocks' futures resolve, which varies
    # from run to run: everything derived from the records (resources.json,
    # plan.md, findings) must change only with the stack.
    records = sorted(monitor.records, key=lambda r: (r.type, r.name))
    return Run(stack, dict(config), records, outputs, secret)


def _resolve_outputs(raw: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    outputs: dict[str, Any] = {}
    secret: set[str] = set()
    for key, value in raw.items():
        out = pulumi.Output.from_input(value)
        if _sync_await(out.is_secret()):
            secret.add(key)
            outputs[key] = SECRET
            continue
        known = _sync_await(out.is_known())
        outputs[key] = plain(_sync_await(out.future())) if known else UNKNOWN
    return outputs, secret
