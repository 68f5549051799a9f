"""Closed-loop HTTP load generation and server-process helpers for the benchmarks.

Loopback only: every URL here is built from 127.0.0.1 and a port the helper
picked, and every loop stops at a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, path: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    name: str, cmd: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None
) -> ServerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name.replace(' ', '_').replace('/', '_')}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    return ServerProcess(name, proc, port, log_path)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def closed_loop(
    url: str,
    payload: bytes,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    headers: dict[str, str] | None = None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request as the last one returns.

    Requests completed during the warm-up are not counted. Returns throughput,
    latency percentiles (ms) and status counts over the measured window, and
    the CPU cores this process (the client) and `server_pid` used in it.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    headers = headers or {"Content-Type": "application/json"}
    cpu: dict[str, list[tuple[float, float] | None]] = {"client": [], "server": []}

    def sample_cpu() -> None:
        cpu["client"].append(thread_schedstat(os.getpid()))
        cpu["server"].append(thread_schedstat(server_pid) if server_pid else None)

    loop = asyncio.get_running_loop()
    loop.call_later(warmup_s, sample_cpu)
    loop.call_later(warmup_s + duration_s, sample_cpu)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                await asyncio.sleep(0.01)
                continue
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                latencies.append(done - sent)
                statuses[status] = statuses.get(status, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    ok = statuses.get(200, 0)
    cores = {}
    for who, samples in cpu.items():
        if len(samples) == 2 and samples[0] is not None and samples[1] is not None:
            (run0, wait0), (run1, wait1) = samples[0], samples[1]
            cores[f"{who}_cores"] = round((run1 - run0) / duration_s, 2)
            cores[f"{who}_cpu_wait"] = round((wait1 - wait0) / duration_s, 2)
    return {
        "requests": len(latencies),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "throughput_rps": round(ok / duration_s, 1),
        "p50_ms": round(1000 * percentile(latencies, 50), 2),
        "p90_ms": round(1000 * percentile(latencies, 90), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "mean_ms": round(1000 * statistics.fmean(latencies), 2) if latencies else None,
        **cores,
    }


def thread_schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one), summed over the
    process's threads so far (Linux /proc/<pid>/task/*/schedstat), or None.

    The second is what a shared machine costs a benchmark: time a thread was
    ready to run while the CPUs ran something else (the load generator, say).
    """
    run = wait = 0.0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            on_cpu, waiting, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # the thread has just exited
        run += int(on_cpu) / 1e9
        wait += int(waiting) / 1e9
    return run, wait


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def histogram_mean(metrics_text: str, name: str) -> float | None:
    """Mean of a Prometheus histogram (summed over label sets) from /metrics text."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return round(total / count, 2) if count else None


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain fixed-width text table: columns are (key, heading)."""
    cells = [[heading for _, heading in columns]]
    cells += [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_facts() -> dict[str, Any]:
    """What the numbers depend on: cores, load from other processes."""
    facts: dict[str, Any] = {"cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        facts["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
    return facts
