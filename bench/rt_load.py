"""Closed-loop HTTP load generation and server-process helpers for the benchmarks.

Two load generators keep N requests outstanding: wrk (C, one epoll thread;
`make wrk` unpacks Debian's build into .wrk/) and an aiohttp client in this
process, for machines without wrk. On a small machine shared with the
server the choice matters: the aiohttp client needs about 0.17 ms of CPU a
request, a third of a core at 2,000 req/s, which the server then waits for.

Loopback only: every URL here is built from 127.0.0.1 and a port the helper
picked, and every loop stops at a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
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
    cores: dict[str, float] = {}
    for who, samples in cpu.items():
        if len(samples) == 2:
            cores.update(cpu_shares(who, samples[0], samples[1], duration_s))
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


WRK_WRAPPER = Path(__file__).resolve().parents[1] / ".wrk" / "wrk"  # from `make wrk`

# Loaded by wrk: POST one body with fixed headers; at the end, one JSON line.
# wrk counts a response with status >= 400 in errors.status, and a request
# still in flight when the time is up not at all.
WRK_SCRIPT = """
local file = assert(io.open({body}, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK-RESULT {{"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def _lua_string(text: str) -> str:
    """`text` as a Lua long-bracket literal, which takes it verbatim."""
    if "]==]" in text:
        raise ValueError(f"{text!r} cannot be written into a wrk script")
    return f"[==[{text}]==]"


def find_wrk() -> str | None:
    """The wrk to run: .wrk/wrk (`make wrk`), else one on PATH, else None."""
    if WRK_WRAPPER.exists():
        return str(WRK_WRAPPER)
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    """`wrk -v`'s first line (wrk prints its usage after it and exits 1)."""
    run = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (run.stdout or run.stderr or wrk).splitlines()[0]
    return first.split(" Copyright")[0].strip()  # "wrk debian/4.1.0-3+b2 [epoll]"


def wrk_closed_loop(
    wrk: str,
    url: str,
    payload: bytes,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    headers: dict[str, str] | None = None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """closed_loop's measurement with wrk: `concurrency` connections on one thread.

    The warm-up is a run of its own whose figures are dropped. The client's
    CPU is wrk's (rusage of the finished child), the server's from schedstat
    around the measured run.
    """
    headers = headers or {"Content-Type": "application/json"}
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(payload)
        script = Path(tmp) / "post.lua"
        script.write_text(
            WRK_SCRIPT.format(
                body=_lua_string(str(body)),
                headers="\n".join(  # spaced: "[[" would open a Lua string
                    f"wrk.headers[ {_lua_string(key)} ] = {_lua_string(value)}"
                    for key, value in headers.items()
                ),
            )
        )

        def run(seconds: float) -> dict[str, Any]:
            command = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "60s"]
            done = subprocess.run(
                [*command, "-s", str(script), url],
                capture_output=True,
                text=True,
                timeout=seconds + 120,
                check=False,
            )
            marker = next(
                (line for line in done.stdout.splitlines() if line.startswith("WRK-RESULT ")), None
            )
            if done.returncode != 0 or marker is None:
                raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
            return dict(json.loads(marker.removeprefix("WRK-RESULT ")))

        if warmup_s > 0:
            run(warmup_s)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = thread_schedstat(server_pid) if server_pid else None
        result = run(duration_s)
        server_after = thread_schedstat(server_pid) if server_pid else None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = result["duration_us"] / 1e6
    ok = result["requests"] - result["status_errors"]
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    cores = {
        "client_cores": round(client_cpu / seconds, 2),
        **cpu_shares("server", server_before, server_after, seconds),
    }
    return {
        "requests": result["requests"],
        "ok": ok,
        "statuses": {"<400": ok, ">=400": result["status_errors"]},
        "errors": result["socket_errors"],
        "throughput_rps": round(ok / seconds, 1),
        "p50_ms": round(result["p50_us"] / 1000, 2),
        "p90_ms": round(result["p90_us"] / 1000, 2),
        "p99_ms": round(result["p99_us"] / 1000, 2),
        "mean_ms": round(result["mean_us"] / 1000, 2),
        **cores,
    }


def cpu_shares(
    who: str,
    before: tuple[float, float] | None,
    after: tuple[float, float] | None,
    seconds: float,
) -> dict[str, float]:
    """`<who>_cores` and `<who>_cpu_wait` between two thread_schedstat samples."""
    if before is None or after is None:
        return {}
    return {
        f"{who}_cores": round((after[0] - before[0]) / seconds, 2),
        f"{who}_cpu_wait": round((after[1] - before[1]) / seconds, 2),
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
