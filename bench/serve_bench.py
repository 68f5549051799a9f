"""Serving benchmark: dynamic batching vs one request per forward pass vs KServe.

    .venv-runtime/bin/python -m bench.serve_bench [--duration 10] [--concurrency 64] [--rounds 3]

Each server runs as its own process on 127.0.0.1, serving the same exported
model with the same Predictor code: mlruntime.serve with batching, the same
with --max-batch-size 1, and KServe 0.21's ModelServer (request logging off,
as mlruntime has none; see bench/rt_kserve_model.py). A closed-loop load
generator keeps `--concurrency` requests outstanding for `--duration`
seconds after a warm-up, one row a request, in each payload format. The
load generator is wrk (`make wrk`; one thread, about 0.1 core at 3,000
req/s); without it, an aiohttp client in this process (`--client aiohttp`),
which needs a third of a core at 2,000 req/s: on a 2-core machine the
server then waits for CPU and the batching server's lead shrinks. Formats:

    v2-json     KServe v2 JSON request and answer
    v2-binary   binary tensor data extension, as Triton's client sends by default
                (raw input bytes, binary_data_output: raw output bytes)
    v1          {"instances": [row]} (not run by default)

Rounds are interleaved (every server and format once per round, the order
rotating) and each figure is the median over the rounds: the machine is
shared, so one slow moment should not decide a ratio. Client and servers
share the machine's cores, so absolute numbers are lower than on a
dedicated server; the table gives the CPU cores the server and the client
used in the measured window, and how long the server's threads were ready
to run but waiting for a CPU (as a share of wall time, summed over its
threads; Linux schedstat). A large wait means the machine, not the server,
set the pace. The ratios are what the targets are about (per format):

    batching >= 5x the throughput of --max-batch-size 1, at no worse p99
    batching >= 6x the throughput of KServe's ModelServer, at no worse p99

KServe runs from a separate venv (default .venv-kserve, with kserve==0.21.0
and torch); when it is missing or fails to start, the table says why.
Results: a table on stdout and build/bench/serve.json (every round's figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.rt_load import (
    ServerProcess,
    closed_loop,
    find_wrk,
    free_port,
    histogram_mean,
    machine_facts,
    scrape,
    start_server,
    table,
    wrk_closed_loop,
    wrk_version,
)
from workloads.runtime.models import PRESETS, build_model, export_model
from workloads.runtime.serve import BINARY_HEADER, event_loop_factory

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "build" / "bench"
MODEL_NAME = "bench"
BATCHING, SINGLE, KSERVE = "mlruntime batching", "mlruntime batch=1", "kserve"
FORMATS = ("v2-json", "v2-binary", "v1")
TARGETS = {"batching_vs_batch1_throughput": 5.0, "batching_vs_kserve_throughput": 6.0}


@dataclass(frozen=True)
class Payload:
    path: str
    body: bytes
    headers: dict[str, str]


def export_bench_model(kind: str, preset: str, directory: Path) -> dict[str, Any]:
    config = PRESETS[kind][preset]
    torch.manual_seed(0)
    export_model(build_model(config), config, directory, {"created_by": "bench.serve_bench"})
    return {"model": kind, "preset": preset, "config": config.__dict__}


def payloads_for(kind: str, preset: str) -> dict[str, Payload]:
    """One row a request, in each format."""
    config = PRESETS[kind][preset]
    generator = torch.Generator().manual_seed(1)
    if kind == "mlp":
        row = torch.randn(config.in_features, generator=generator).tolist()  # type: ignore[union-attr]
        datatype, raw = "FP32", struct.pack(f"<{len(row)}f", *row)
    else:
        row = torch.randint(config.vocab_size, (32,), generator=generator).tolist()  # type: ignore[union-attr]
        datatype, raw = "INT64", struct.pack(f"<{len(row)}q", *row)
    tensor = {"name": "input", "shape": [1, len(row)], "datatype": datatype}
    json_type = {"Content-Type": "application/json"}
    infer = f"/v2/models/{MODEL_NAME}/infer"
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return {
        "v2-json": Payload(
            infer, json.dumps({"inputs": [{**tensor, "data": row}]}).encode(), json_type
        ),
        "v2-binary": Payload(
            infer,
            header + raw,
            {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))},
        ),
        "v1": Payload(
            f"/v1/models/{MODEL_NAME}:predict", json.dumps({"instances": [row]}).encode(), json_type
        ),
    }


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
    ], f"kserve {probe.stdout.strip()}, request logging off"


def run_server(
    name: str,
    cmd: list[str],
    port: int,
    *,
    ready_path: str,
    payloads: dict[str, Payload],
    args: argparse.Namespace,
    metrics: bool,
    env: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Start one server, run every payload format against it, stop it."""
    server: ServerProcess = start_server(name, cmd, port, OUT_DIR / "logs", env)
    cells: dict[str, dict[str, Any]] = {}
    try:
        server.wait_ready(ready_path)
        for fmt, payload in payloads.items():
            load = {
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "headers": payload.headers,
                "server_pid": server.proc.pid,
            }
            url = server.base + payload.path
            if args.wrk:
                cells[fmt] = wrk_closed_loop(args.wrk, url, payload.body, **load)
            else:
                with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                    cells[fmt] = runner.run(closed_loop(url, payload.body, **load))
            if metrics:
                cells[fmt]["mean_batch_rows"] = histogram_mean(
                    scrape(f"{server.base}/metrics"), "mlserve_batch_size"
                )
    except RuntimeError as exc:
        for fmt in payloads:
            cells.setdefault(fmt, {"error": str(exc)[-500:]})
    finally:
        server.stop()
    return cells


def median_row(server: str, fmt: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rounds if r.get("ok")]
    row: dict[str, Any] = {"server": server, "format": fmt, "rounds": len(good)}
    if not good:
        row["error"] = next((r["error"] for r in rounds if "error" in r), "no successful round")
        return row
    for key in ("throughput_rps", "p50_ms", "p99_ms"):
        row[key] = round(statistics.median(r[key] for r in good), 2)
    for key in ("server_cores", "server_cpu_wait", "client_cores"):  # in the measured window
        values = [r[key] for r in good if r.get(key) is not None]
        row[key] = round(statistics.median(values), 2) if values else None
    row["rps_per_round"] = [r["throughput_rps"] for r in good]
    row["errors"] = sum(r["errors"] for r in good)
    row["non_200"] = sum(r["requests"] - r["ok"] for r in good)
    batch_rows = [r["mean_batch_rows"] for r in good if r.get("mean_batch_rows") is not None]
    row["mean_batch_rows"] = round(statistics.median(batch_rows), 1) if batch_rows else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="mlp")
    parser.add_argument("--preset", default="mnist", help="mlp mnist = 784-2048-2048-10")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians")
    parser.add_argument(
        "--formats", default="v2-json,v2-binary", help=f"comma-separated, of {', '.join(FORMATS)}"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kserve-venv", type=Path, default=ROOT / ".venv-kserve")
    parser.add_argument("--skip-kserve", action="store_true")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="load generator: wrk (make wrk), the aiohttp client, or wrk when found",
    )
    parser.add_argument("--output", type=Path, default=OUT_DIR / "serve.json")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    if not formats or any(f not in FORMATS for f in formats) or args.rounds < 1:
        parser.error(f"--formats takes {', '.join(FORMATS)}; --rounds must be >= 1")

    wrk = find_wrk() if args.client != "aiohttp" else None
    if args.client == "wrk" and wrk is None:
        parser.error("--client wrk: no .wrk/wrk (run `make wrk`) and no wrk on PATH")
    args.wrk = wrk
    client = (
        f"{wrk_version(wrk)}, 1 thread"
        if wrk
        else "aiohttp in the benchmark's process"
        + (" (no wrk: `make wrk` installs it)" if args.client == "auto" else "")
    )
    facts = machine_facts()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "PYTHONPATH": path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }  # as in the image
    servers = [BATCHING, SINGLE] + ([] if args.skip_kserve else [KSERVE])
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {
        (s, f): [] for s in [BATCHING, SINGLE, KSERVE] for f in formats
    }
    kserve_note = "skipped (--skip-kserve)"
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        model_dir = Path(tmp) / "model"
        model = export_bench_model(args.model, args.preset, model_dir)
        all_payloads = payloads_for(args.model, args.preset)
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
        for index in range(args.rounds):
            shift = index % len(servers)
            order = servers[shift:] + servers[:shift]
            fmts = formats if index % 2 == 0 else formats[::-1]
            payloads = {f: all_payloads[f] for f in fmts}
            for name in order:
                port = free_port()
                print(f"round {index + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
                if name == KSERVE:
                    cmd, kserve_note = kserve_command(args.kserve_venv, model_dir, port)
                    if cmd is None:
                        for f in formats:
                            cells[(KSERVE, f)].append({"error": kserve_note})
                        continue
                    ready, metrics = f"/v1/models/{MODEL_NAME}", False
                else:
                    extra = ["--max-batch-size", "1"] if name == SINGLE else []
                    cmd, ready, metrics = (
                        [*ours, "--port", str(port), *extra],
                        "/v2/health/ready",
                        True,
                    )
                result = run_server(
                    name,
                    cmd,
                    port,
                    ready_path=ready,
                    payloads=payloads,
                    args=args,
                    metrics=metrics,
                    env=env,
                )
                for f, cell in result.items():
                    cells[(name, f)].append({"round": index + 1, **cell})

    rows = []
    for f in formats:
        for name in (BATCHING, SINGLE, KSERVE):
            if name == KSERVE and args.skip_kserve:
                rows.append({"server": name, "format": f, "error": kserve_note})
            else:
                rows.append(median_row(name, f, cells[(name, f)]))
    checks: dict[str, Any] = {}
    for f in formats:
        by_name = {r["server"]: r for r in rows if r["format"] == f}
        batching = by_name[BATCHING]
        for other, key in ((SINGLE, "batch1"), (KSERVE, "kserve")):
            rival = by_name[other]
            if "throughput_rps" in batching and "throughput_rps" in rival:
                checks[f"{f}: batching_vs_{key}_throughput"] = round(
                    batching["throughput_rps"] / rival["throughput_rps"], 2
                )
                checks[f"{f}: batching_p99_not_worse_than_{key}"] = (
                    batching["p99_ms"] <= rival["p99_ms"]
                )
                # The same ratio within each round (servers measured minutes apart,
                # not hours): less sensitive to load that comes and goes.
                per_round = [
                    round(ours["throughput_rps"] / theirs["throughput_rps"], 2)
                    for ours, theirs in zip(cells[(BATCHING, f)], cells[(other, f)], strict=True)
                    if ours.get("ok") and theirs.get("ok")
                ]
                if per_round:
                    checks[f"{f}: batching_vs_{key}_throughput_per_round"] = per_round
                    checks[f"{f}: batching_vs_{key}_throughput_median_of_rounds"] = round(
                        statistics.median(per_round), 2
                    )
    result = {
        "benchmark": "serve",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "device": args.device,
        "torch": torch.__version__,
        "kserve": kserve_note,
        "client": client,
        "machine": {**facts, "loadavg_1m_after": os.getloadavg()[0]},
        "model": model,
        "results": rows,
        "per_round": {f"{s} / {f}": v for (s, f), v in cells.items() if v},
        "ratios": checks,
        "targets": TARGETS,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nserve benchmark: {args.model}/{args.preset}, {args.concurrency} clients, one row a "
        f"request, {args.duration:.0f}s x {args.rounds} interleaved rounds (medians), device "
        f"{args.device}, load avg before {facts.get('loadavg_1m_before')}"
    )
    print(
        table(
            rows,
            [
                ("format", "format"),
                ("server", "server"),
                ("throughput_rps", "req/s"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("mean_batch_rows", "rows/batch"),
                ("server_cores", "server cores"),
                ("server_cpu_wait", "server CPU wait"),
                ("client_cores", "client cores"),
                ("rps_per_round", "req/s per round"),
                ("non_200", "non-200"),
                ("errors", "errors"),
            ],
        )
    )
    for row in rows:
        if "error" in row:
            print(f"  {row['format']} {row['server']}: {row['error']}")
    print(f"  kserve: {kserve_note}")
    print(f"  client: {client}")
    for key, value in checks.items():
        print(f"  {key}: {value}")
    print(f"  targets: {TARGETS}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
