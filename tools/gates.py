"""Security and schema gates over every stack's rendered manifests (`make security`).

For each Pulumi.<stack>.yaml:
1. the offline preview, which validates every manifest strictly against the
   stack's Kubernetes version (kubernetes-validate schemas; custom resources
   against their operator's models) and runs the policy rules: it must exit 0;
2. checkov (`--framework kubernetes --skip-download`) on the manifests: zero
   failed checks, and every skipped check carries a reason in an annotation on
   the resource that needs it (no global skip list exists).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.offline import ROOT, preview_process

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def run_checkov(manifests: Path, checkov: Path = CHECKOV) -> dict[str, Any]:
    result = subprocess.run(
        [
            str(checkov),
            "-d",
            str(manifests),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "--quiet",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if not result.stdout.strip():
        raise RuntimeError(
            f"checkov produced no report (exit {result.returncode}): {result.stderr[-800:]}"
        )
    report = json.loads(result.stdout)
    return report if isinstance(report, dict) else report[0]


def gate(stack: str, out: Path, checkov: Path = CHECKOV) -> list[str]:
    """Problems found for one stack (empty: it passes)."""
    preview = preview_process(stack, out)
    if preview.returncode != 0:
        return [f"offline preview exited {preview.returncode}:\n{preview.stderr.strip()}"]
    report = run_checkov(out / stack / "manifests", checkov)
    results = report.get("results", {})
    problems = [
        f"{f['check_id']} {f['resource']} ({f['file_path']}): {f['check_name']}"
        for f in results.get("failed_checks", [])
    ]
    for s in results.get("skipped_checks", []):
        reason = (s.get("check_result") or {}).get("suppress_comment", "")
        if not reason or reason == "No comment provided":
            problems.append(f"{s['check_id']} {s['resource']}: skipped without a reason")
    n = {
        k: report.get("summary", {}).get(k, 0)
        for k in ("passed", "failed", "skipped", "resource_count")
    }
    print(
        f"{stack}: checkov {n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped "
        f"with reasons; {n['resource_count']} resources"
    )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", action="append", help="default: every Pulumi.<stack>.yaml")
    parser.add_argument("--checkov", type=Path, default=CHECKOV)
    args = parser.parse_args(argv)
    if not args.checkov.exists():
        print(
            f"error: {args.checkov} not found: run `make .venv-checkov/.installed`", file=sys.stderr
        )
        return 2
    stacks = args.stack or sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for stack in stacks:
            problems = gate(stack, Path(tmp), args.checkov)
            for problem in problems:
                print(f"error: {stack}: {problem}", file=sys.stderr)
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
