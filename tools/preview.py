"""Offline preview: what `pulumi preview` would do, without the CLI or a cloud.

    python -m tools.preview --stack dev        (or: make preview STACK=dev)

Runs `__main__.py` in-process under mocks with the config of
`Pulumi.<stack>.yaml` and writes build/<stack>/:

    manifests/<namespace or _cluster>/<kind>-<name>.yaml   every Kubernetes object
    resources.json    every registered resource: type, name, parent, inputs, options
    outputs.json      the stack outputs (secrets as "[secret]")
    policy.json       policy findings, [] when clean
    plan.md           resources by type, GPU capacity vs quotas, findings

Exit codes: 0 clean (advisory findings allowed), 1 a mandatory policy
violation, 2 invalid configuration, 3 a manifest failed schema validation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from infra.config_types import ConfigError
from mlplatform.loading import load_settings
from tools import crds, plan, policy
from tools.offline import ROOT, manifest, read_stack_config, run_program, stack_file
from tools.result import EXIT_CONFIG, Preview
from tools.schema import SchemaValidator


def manifest_path(m: dict[str, Any]) -> str:
    meta = m.get("metadata", {})
    folder = meta.get("namespace") or "_cluster"
    return f"{folder}/{m['kind'].lower()}-{meta.get('name', 'unnamed')}.yaml"


def build_preview(
    stack: str, config: dict[str, Any], program: Path = ROOT / "__main__.py"
) -> Preview:
    """Validate settings, run the program, validate manifests. Raises ConfigError."""
    settings = load_settings(config, stack)
    run = run_program(stack, config, program)
    manifests = {manifest_path(m): m for m in (manifest(r) for r in run.kubernetes_objects)}
    preview = Preview(stack, settings, run, manifests)
    preview.findings = [f.as_dict() for f in policy.evaluate(run, settings)]
    validator = SchemaValidator(settings.cluster.kubernetes_version)
    custom: dict[str, dict[str, Any]] = {}
    for path, m in sorted(manifests.items()):
        if not validator.has_schema(m["apiVersion"], m["kind"]):
            custom[path] = m
            continue
        problems = validator.validate(m)
        if problems:
            preview.schema_problems[path] = problems
    crd = crds.validate(custom)
    preview.schema_problems.update(crd.problems)
    preview.crd_validated = crd.validated
    preview.unvalidated = crd.unvalidated
    return preview


def write(preview: Preview, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    manifests_dir = out_dir / "manifests"
    for path, m in preview.manifests.items():
        target = manifests_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(m, sort_keys=False, width=120))
    out_dir.mkdir(parents=True, exist_ok=True)
    resources = [
        {
            "type": r.type,
            "name": r.name,
            "parent": preview.run.parent_name(r),
            "custom": r.custom,
            "inputs": r.inputs,
            "options": r.options,
        }
        for r in preview.run.records  # sorted by run_program
    ]
    _write_json(out_dir / "resources.json", resources)
    _write_json(out_dir / "outputs.json", preview.run.outputs)
    _write_json(out_dir / "policy.json", preview.findings)
    (out_dir / "plan.md").write_text(plan.render(preview))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    parser.add_argument("--stack-file", type=Path, help="read this stack file instead")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "build", help="output root (default: build/)"
    )
    # Tests point the preview at fixture programs.
    parser.add_argument(
        "--program", type=Path, default=ROOT / "__main__.py", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    path = args.stack_file or stack_file(args.stack)
    if not path.is_file():
        print(f"error: {path}: no such stack file", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = read_stack_config(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        preview = build_preview(args.stack, config, args.program)
    except ConfigError as exc:
        print(f"error: {path.name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    out_dir = args.out / args.stack
    write(preview, out_dir)
    for rel, problems in preview.schema_problems.items():
        for problem in problems:
            print(
                f"error: {out_dir / 'manifests' / rel}: {problem.path}: {problem.message}",
                file=sys.stderr,
            )
    for finding in preview.findings:
        stream = sys.stderr if finding["level"] == "mandatory" else sys.stdout
        print(
            f"{finding['level']}: [{finding['policy']}] {finding['resource']}: "
            f"{finding['message']}",
            file=stream,
        )
    elapsed = time.perf_counter() - started
    print(
        f"{args.stack}: {len(preview.run.records)} resources, {len(preview.manifests)} manifests "
        f"({len(preview.crd_validated)} custom resources validated against their operator's "
        f"models, {len(preview.unvalidated)} not validated), "
        f"{len(preview.findings)} policy findings -> {out_dir} ({elapsed:.2f}s)"
    )
    return preview.exit_code


if __name__ == "__main__":
    code = main()
    # Every artifact is written and closed by now. Tearing down the interpreter
    # (the Pulumi SDKs' million objects and idle executor threads) takes about
    # 0.7 s that nobody waits for usefully: flush and leave.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
