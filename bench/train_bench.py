"""Training throughput on CPU for both reference models (not a test; numbers only).

    .venv-runtime/bin/python -m bench.train_bench [--steps 40] [--threads 0]

Runs `python -m workloads.runtime.train` as a pod would, once per
configuration, and reads samples/s (and tokens/s for the transformer) from
its JSON step events. The first logging window (allocator warm-up, first
iterations) is dropped. Results: a table on stdout and build/bench/train.json.
Step time includes the data pipeline and the optimizer: it is what a
training job gets, not a bare forward/backward timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.rt_load import machine_facts, table

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    ("mlp", "tiny", 256),
    ("mlp", "mnist", 256),
    ("transformer", "tiny", 32),
    ("transformer", "small", 8),
]


def run_config(model: str, preset: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    log_every = max(1, args.steps // 4)
    cmd = [
        sys.executable,
        "-m",
        "workloads.runtime.train",
        "--model",
        model,
        "--preset",
        preset,
        "--batch-size",
        str(batch),
        "--steps",
        str(args.steps),
        "--log-every",
        str(log_every),
        "--metrics-port",
        "0",
        "--device",
        "cpu",
        "--threads",
        str(args.threads),
    ]
    # OMP_WAIT_POLICY as in the image (Dockerfile): see README "CPU threads".
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    result = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout, check=False
    )
    row: dict[str, Any] = {
        "model": model,
        "preset": preset,
        "batch_size": batch,
        "wall_s": round(time.monotonic() - started, 1),
    }
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    steps = [e for e in events if e["event"] == "step"][1:]
    start = next((e for e in events if e["event"] == "start"), None)
    if result.returncode != 0 or not steps or start is None:
        row["error"] = result.stderr.strip()[-300:] or f"exit {result.returncode}"
        return row
    row["parameters"] = start["parameters"]
    row["samples_per_s"] = round(sum(e["samples_per_s"] for e in steps) / len(steps), 1)
    if "tokens_per_s" in steps[0]:
        row["tokens_per_s"] = round(sum(e["tokens_per_s"] for e in steps) / len(steps))
    row["final_loss"] = round(steps[-1]["loss"], 4)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = CPU budget")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "bench" / "train.json")
    args = parser.parse_args()
    facts = machine_facts()
    rows = []
    for model, preset, batch in CONFIGS:
        print(f"training {model}/{preset} ...", file=sys.stderr, flush=True)
        rows.append(run_config(model, preset, batch, args))
    result = {
        "benchmark": "train",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": "cpu",
        "torch": torch.__version__,
        "steps": args.steps,
        "threads": args.threads or "cpu budget",
        "machine": {**facts, "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\ntrain benchmark (CPU, {args.steps} steps, load avg before "
        f"{facts.get('loadavg_1m_before')})"
    )
    print(
        table(
            rows,
            [
                ("model", "model"),
                ("preset", "preset"),
                ("parameters", "params"),
                ("batch_size", "batch"),
                ("samples_per_s", "samples/s"),
                ("tokens_per_s", "tokens/s"),
                ("final_loss", "loss"),
                ("wall_s", "wall s"),
            ],
        )
    )
    for row in rows:
        if "error" in row:
            print(f"  {row['model']}/{row['preset']}: {row['error']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
