"""Offline preview speed: the prod stack, and synthetic stacks of 50 and 500 workloads.

    .venv/bin/python -m bench.preview_bench [--repeat 3]

Each preview runs as a fresh process (`python -m tools.preview`), so the times
include interpreter start and imports, as a user sees them. Targets: prod
under 3 s; 500 workloads at most 10x the time of 50 (linear, not worse).
Writes build/bench/preview.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("training", "distributed", "inference", "batch")


def synthetic_config(workloads: int) -> dict[str, Any]:
    """prod's cluster and node groups with `workloads` workloads over 10 teams."""
    base = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    teams = [
        {"name": f"team-{t}", "quota": {"gpus": 4, "cpu": "512", "memory": "4Ti"}}
        for t in range(10)
    ]
    specs: list[dict[str, Any]] = []
    for i in range(workloads):
        team = f"team-{i % 10}"
        kind = KINDS[i % len(KINDS)]
        common = {"kind": kind, "name": f"w{i}-{kind}", "team": team, "cpu": "2", "memory": "8Gi"}
        model = {"uri": f"s3://models/m{i}/v1"}
        if kind == "training":
            spec = common | {"gpus": 1} | ({"schedule": "0 3 * * *"} if i % 8 == 0 else {})
        elif kind == "distributed":
            spec = common | {"nodes": 2, "gpus": 8, "memory": "512Gi"}
            spec["accelerators"] = ["nvidia-h100"]
        elif kind == "inference":
            spec = common | {"model": model, "minReplicas": 1, "maxReplicas": 3}
        else:
            spec = common | {"model": model, "input": "s3://in/x", "output": "s3://out/x"}
            spec |= {"shards": 8, "parallelism": 2}
        specs.append(spec)
    return base | {"mlplatform:teams": teams, "mlplatform:workloads": specs}


def time_preview(stack: str, stack_file: Path | None, out: Path, repeat: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tools.preview", "--stack", stack, "--out", str(out)]
    if stack_file is not None:
        cmd += ["--stack-file", str(stack_file)]
    times = []
    last = None
    for _ in range(repeat):
        started = time.perf_counter()
        last = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - started)
        if last.returncode != 0:
            raise SystemExit(f"preview of {stack} failed ({last.returncode}):\n{last.stderr}")
    assert last is not None
    resources = len(json.loads((out / stack / "resources.json").read_text()))
    return {
        "stack": stack,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "resources": resources,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "build"
        results.append(time_preview("prod", None, out, args.repeat))
        for n in (50, 500):
            path = Path(tmp) / f"Pulumi.synthetic{n}.yaml"
            path.write_text(yaml.safe_dump({"config": synthetic_config(n)}))
            results.append(time_preview(f"synthetic{n}", path, out, args.repeat))
    by = {r["stack"]: r for r in results}
    ratio = by["synthetic500"]["median_s"] / by["synthetic50"]["median_s"]
    print(f"{'stack':<14} {'resources':>9} {'median s':>9} {'min s':>7}")
    for r in results:
        print(f"{r['stack']:<14} {r['resources']:>9} {r['median_s']:>9.2f} {r['min_s']:>7.2f}")
    prod_ok = by["prod"]["median_s"] < 3.0
    print(
        f"prod < 3 s: {'yes' if prod_ok else 'NO'}; 500 / 50 workloads = {ratio:.1f}x "
        f"(target <= 10x: {'yes' if ratio <= 10 else 'NO'})"
    )
    target = ROOT / "build" / "bench"
    target.mkdir(parents=True, exist_ok=True)
    (target / "preview.json").write_text(
        json.dumps({"results": results, "ratio_500_50": ratio}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
