"""Helpers for the runtime tests: real torch on CPU, loopback only, bounded time.

Subprocesses run the programs exactly as the image does (`python -m ...`),
with one torch thread each: the tests compare bit-exact loss trajectories,
and on a 2-core machine shared with other work, torch's default of one
thread per core turns every parallel region into a scheduling stall.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from workloads.runtime.models import MLPConfig, TransformerConfig, build_model, export_model

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bound every runtime test (pytest-timeout): a hung server or rank fails, not stalls."""
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(180))


def runtime_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "JOB_COMPLETION", "AWS_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",  # as in the image
        GLOO_SOCKET_IFNAME="lo",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_module(
    module: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env or runtime_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def events(stdout: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The JSON-line events a program printed (every stdout line must be JSON)."""
    parsed = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return [e for e in parsed if kind is None or e["event"] == kind]


@dataclass
class Running:
    """A program running in the background whose JSON events can be awaited."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    err: str = ""

    def wait_for(self, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(
                    f"exited ({self.proc.wait()}) before the awaited event: {self.stderr()}"
                )
            self.lines.append(line)
            event = json.loads(line)
            if predicate(event):
                return event
        raise AssertionError("timed out waiting for an event")

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for exit; returns (exit code, all stdout); stderr lands in `err`."""
        out, self.err = self.proc.communicate(timeout=timeout)
        self.lines.extend(out.splitlines(keepends=True))
        return self.proc.returncode, "".join(self.lines)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        if not self.err and self.proc.stderr is not None and not self.proc.stderr.closed:
            self.err = self.proc.stderr.read()
        return self.err

    def report(self, lines: int = 8) -> str:
        """For assertion messages: the last events on stdout, then stderr."""
        tail = "".join(self.lines[-lines:])
        return f"last stdout lines:\n{tail}\nstderr:\n{self.stderr()}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)


def start(cmd: list[str], env: dict[str, str] | None = None) -> Running:
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env or runtime_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Running(proc)


@pytest.fixture
def background() -> Iterator[list[Running]]:
    """Processes a test starts; any still running at the end are killed."""
    started: list[Running] = []
    yield started
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


def train_cmd(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "workloads.runtime.train",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        *args,
    ]


@pytest.fixture(scope="session")
def mlp_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP export (16 features, 4 classes), random weights."""
    directory = tmp_path_factory.mktemp("mlp-export")
    torch.manual_seed(0)
    config = MLPConfig()
    export_model(build_model(config), config, directory, {"created_by": "tests"})
    return directory


@pytest.fixture(scope="session")
def lm_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformer export (vocab 256, seq_len 64), random weights."""
    directory = tmp_path_factory.mktemp("lm-export")
    torch.manual_seed(0)
    config = TransformerConfig()
    export_model(build_model(config), config, directory, {"created_by": "tests"})
    return directory
