"""GPU checks for the lent accelerator: bf16 transformer throughput/MFU, CUDA serving.

    python -m bench.rt_gpu --out DIR [--preset 1b] [--batch-size 8] [--steps 40]

Runs train.py exactly as a pod would (`python -m workloads.runtime.train
--device cuda --compile`), reads its JSON step events, and reports tokens/s
and model FLOPs utilisation:

    MFU = tokens_per_s * flops_per_token / peak
    flops_per_token = 6 * N_matmul + 12 * n_layers * d_model * seq_len
                      (models.TransformerConfig.flops_per_token; PaLM's formula)
    peak = 989e12 (H100 SXM dense bf16)

Steady state = the step windows after the first (which holds compilation).
Then runs bench.serve_bench with --device cuda. Everything lands in DIR.
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

ROOT = Path(__file__).resolve().parents[1]
H100_BF16_DENSE_PEAK = 989e12


def facts() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
            "--format=csv,noheader",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": props.name,
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "nvidia_smi": smi.stdout.strip(),
        "python": sys.version.split()[0],
    }


def train(out: Path, args: argparse.Namespace, tag: str, extra: list[str]) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "workloads.runtime.train",
        "--model",
        "transformer",
        "--preset",
        args.preset,
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--log-every",
        "5",
        "--device",
        "cuda",
        "--metrics-port",
        "0",
        "--num-workers",
        "4",
        "--synthetic-samples",
        "100000",
        *extra,
    ]
    started = time.monotonic()
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=args.train_timeout
    )
    (out / f"train_{tag}.jsonl").write_text(result.stdout)
    (out / f"train_{tag}.stderr.txt").write_text(result.stderr[-20000:])
    summary: dict[str, Any] = {
        "cmd": " ".join(cmd[1:]),
        "returncode": result.returncode,
        "wall_s": round(time.monotonic() - started, 1),
    }
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    start = next((r for r in records if r["event"] == "start"), None)
    steps = [r for r in records if r["event"] == "step"]
    if start is None or len(steps) < 3:
        summary["error"] = result.stderr[-2000:]
        return summary
    steady = steps[1:]  # the first window includes torch.compile
    tokens_per_s = sum(s["tokens_per_s"] for s in steady) / len(steady)
    flops = start["flops_per_token"]
    summary.update(
        parameters=start["parameters"],
        config=start["config"],
        flops_per_token=flops,
        tokens_per_s=round(tokens_per_s),
        tokens_per_s_windows=[s["tokens_per_s"] for s in steps],
        model_tflops=round(tokens_per_s * flops / 1e12, 1),
        mfu=round(tokens_per_s * flops / H100_BF16_DENSE_PEAK, 4),
        peak_gpu_memory_gib=round(max(s.get("gpu_max_memory_bytes", 0) for s in steps) / 2**30, 1),
        first_loss=steps[0]["loss"],
        last_loss=steps[-1]["loss"],
    )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "build/gpu")))
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train-timeout", type=float, default=420)
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--serve-duration", type=float, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"facts": facts()}
    print(json.dumps(report["facts"]), flush=True)
    report["train_compiled"] = train(args.out, args, "compiled", ["--compile"])
    print(json.dumps(report["train_compiled"]), flush=True)
    if not args.skip_eager or "mfu" not in report["train_compiled"]:
        args.steps = 15
        report["train_eager"] = train(args.out, args, "eager", [])
        print(json.dumps(report["train_eager"]), flush=True)
    serve = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.serve_bench",
            "--device",
            "cuda",
            "--skip-kserve",
            "--duration",
            str(args.serve_duration),
            "--output",
            str(args.out / "serve_cuda.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    report["serve_cuda"] = {
        "returncode": serve.returncode,
        "stdout": serve.stdout[-3000:],
        "stderr": serve.stderr[-2000:],
    }
    print(serve.stdout[-3000:], serve.stderr[-1500:], flush=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
