"""Serving benchmark: dynamic batching vs one request per forward pass vs KServe.

    .venv-runtime/bin/python -m bench.serve_bench [--duration 10] [--concurrency 64]

Each server runs as its own process on 127.0.0.1, serving the same exported
model with the same Predictor code; a closed-loop aiohttp client in this
process keeps `--concurrency` requests outstanding for `--duration` seconds
after a warm-up, all with the same v1 payload. Client and servers share the
machine's cores, as in DESIGN.md's measurements, so absolute numbers are
lower than on a dedicated server; the ratios are what the targets are about:

    batching >= 4x the throughput of --max-batch-size 1, at no worse p99
    batching >= 1.5x the throughput of KServe's ModelServer

KServe runs from a separate venv (default .venv-kserve, with kserve==0.21.0
and torch); when it is missing or fails to start, the table says why.
Results: a table on stdout and build/bench/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.rt_load import (
    ServerProcess,
    closed_loop,
    free_port,
    histogram_mean,
    machine_facts,
    scrape,
    start_server,
    table,
)
from workloads.runtime.models import PRESETS, build_model, export_model
from workloads.runtime.serve import event_loop_factory

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "build" / "bench"
MODEL_NAME = "bench"


def export_bench_model(kind: str, preset: str, directory: Path) -> dict[str, Any]:
    config = PRESETS[kind][preset]
    torch.manual_seed(0)
    export_model(build_model(config), config, directory, {"created_by": "bench.serve_bench"})
    return {"model": kind, "preset": preset, "config": config.__dict__}


def payload_for(kind: str, preset: str) -> bytes:
    config = PRESETS[kind][preset]
    generator = torch.Generator().manual_seed(1)
    if kind == "mlp":
        row = torch.randn(config.in_features, generator=generator).tolist()  # type: ignore[union-attr]
    else:
        row = torch.randint(config.vocab_size, (32,), generator=generator).tolist()  # type: ignore[union-attr]
    return json.dumps({"instances": [row]}).encode()


def kserve_command(venv: Path, model_dir: Path, port: int) -> tuple[list[str] | None, str]:
    python = venv / "bin" / "python"
    if not python.exists():
        return None, (
            f"{python} not found; create it with: python3 -m venv {venv} && "
            f"{python.parent / 'pip'} install kserve==0.21.0 torch==2.13.0"
        )
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, kserve, torch; print(m.version('kserve'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None, f"kserve does not import in {venv}: {probe.stderr.strip()[-300:]}"
    return [
        str(python),
        str(ROOT / "bench" / "rt_kserve_model.py"),
        "--model-dir",
        str(model_dir),
        "--model_name",
        MODEL_NAME,
        "--http_port",
        str(port),
        "--enable_grpc",
        "false",
        "--enable_latency_logging",
        "false",
    ], f"kserve {probe.stdout.strip()}"


def run_one(
    name: str,
    cmd: list[str],
    port: int,
    *,
    ready_path: str,
    payload: bytes,
    args: argparse.Namespace,
    metrics: bool,
    env: dict[str, str],
) -> dict[str, Any]:
    server: ServerProcess = start_server(name, cmd, port, OUT_DIR / "logs", env)
    row: dict[str, Any] = {"server": name}
    try:
        server.wait_ready(ready_path)
        url = f"{server.base}/v1/models/{MODEL_NAME}:predict"
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            row.update(
                runner.run(
                    closed_loop(
                        url,
                        payload,
                        concurrency=args.concurrency,
                        duration_s=args.duration,
                        warmup_s=args.warmup,
                    )
                )
            )
        if metrics:
            row["mean_batch_rows"] = histogram_mean(
                scrape(f"{server.base}/metrics"), "mlserve_batch_size"
            )
    except RuntimeError as exc:
        row["error"] = str(exc)[-500:]
    finally:
        server.stop()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="mlp")
    parser.add_argument("--preset", default="mnist", help="mlp mnist = 784-2048-2048-10")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kserve-venv", type=Path, default=ROOT / ".venv-kserve")
    parser.add_argument("--skip-kserve", action="store_true")
    parser.add_argument("--output", type=Path, default=OUT_DIR / "serve.json")
    args = parser.parse_args()

    facts = machine_facts()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "PYTHONPATH": path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }  # as in the image
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        model_dir = Path(tmp) / "model"
        model = export_bench_model(args.model, args.preset, model_dir)
        payload = payload_for(args.model, args.preset)
        ours = [
            sys.executable,
            "-m",
            "workloads.runtime.serve",
            "--model-dir",
            str(model_dir),
            "--model-name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--device",
            args.device,
        ]
        rows = []
        for name, extra in (
            ("mlruntime batching", []),
            ("mlruntime batch=1", ["--max-batch-size", "1"]),
        ):
            port = free_port()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(
                run_one(
                    name,
                    [*ours, "--port", str(port), *extra],
                    port,
                    ready_path="/v2/health/ready",
                    payload=payload,
                    args=args,
                    metrics=True,
                    env=env,
                )
            )
        if args.skip_kserve:
            rows.append({"server": "kserve", "error": "skipped (--skip-kserve)"})
        else:
            port = free_port()
            cmd, note = kserve_command(args.kserve_venv, model_dir, port)
            if cmd is None:
                rows.append({"server": "kserve", "error": note})
            else:
                print(f"running {note} ...", file=sys.stderr, flush=True)
                rows.append(
                    run_one(
                        f"kserve ModelServer ({note})",
                        cmd,
                        port,
                        ready_path=f"/v1/models/{MODEL_NAME}",
                        payload=payload,
                        args=args,
                        metrics=False,
                        env=env,
                    )
                )

    by_name = {r["server"]: r for r in rows}
    batching, single = by_name["mlruntime batching"], by_name["mlruntime batch=1"]
    kserve = rows[-1]
    checks = {}
    if batching.get("ok") and single.get("ok"):
        checks["batching_vs_batch1_throughput"] = round(
            batching["throughput_rps"] / single["throughput_rps"], 2
        )
        checks["batching_p99_not_worse"] = batching["p99_ms"] <= single["p99_ms"]
    if batching.get("ok") and kserve.get("ok"):
        checks["batching_vs_kserve_throughput"] = round(
            batching["throughput_rps"] / kserve["throughput_rps"], 2
        )
    result = {
        "benchmark": "serve",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "device": args.device,
        "torch": torch.__version__,
        "machine": {**facts, "loadavg_1m_after": os.getloadavg()[0]},
        "model": model,
        "results": rows,
        "ratios": checks,
        "targets": {"batching_vs_batch1_throughput": 4.0, "batching_vs_kserve_throughput": 1.5},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nserve benchmark: {args.model}/{args.preset}, {args.concurrency} clients, "
        f"{args.duration:.0f}s, device {args.device}, "
        f"load avg before {facts.get('loadavg_1m_before')}"
    )
    print(
        table(
            rows,
            [
                ("server", "server"),
                ("throughput_rps", "req/s"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("mean_batch_rows", "rows/batch"),
                ("ok", "ok"),
                ("errors", "errors"),
            ],
        )
    )
    for row in rows:
        if "error" in row:
            print(f"  {row['server']}: {row['error']}")
    for key, value in checks.items():
        print(f"  {key}: {value}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
