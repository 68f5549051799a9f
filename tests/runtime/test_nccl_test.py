"""The fabric smoke test program: all_reduce bandwidth across ranks, the
nccl-tests bus bandwidth formula, and the failing exit below a threshold
(2 ranks with gloo on CPU; NCCL on the GPU pools)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workloads.runtime import contract
from workloads.runtime.common import UsageError
from workloads.runtime.nccl_test import bus_bandwidth, parse_bytes, sizes

from .conftest import ROOT, events, free_port, run_module, runtime_env


def test_sizes_and_units() -> None:
    assert parse_bytes("8") == 8
    assert parse_bytes("64K") == 64 << 10
    assert parse_bytes("8M") == 8 << 20
    assert parse_bytes("2G") == 2 << 30
    assert sizes(1 << 20, 8 << 20) == [1 << 20, 2 << 20, 4 << 20, 8 << 20]
    for bad in ("", "0", "-1M", "2T", "M"):
        with pytest.raises(UsageError):
            parse_bytes(bad)


def test_bus_bandwidth_is_nccl_tests_factor() -> None:
    # all_reduce: busbw = algbw * 2 (n - 1) / n; 16 ranks: x1.875.
    assert bus_bandwidth(100.0, 16) == pytest.approx(187.5)
    assert bus_bandwidth(100.0, 2) == pytest.approx(100.0)
    assert bus_bandwidth(100.0, 1) == 0.0


def _torchrun(*args: str) -> list[str]:
    return [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "workloads.runtime.nccl_test",
        "--device=cpu",
        "--min-bytes=64K",
        "--max-bytes=256K",
        "--iters=2",
        "--warmup=1",
        *args,
    ]


def _run(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, *_torchrun(*args)],
        cwd=ROOT,
        env=runtime_env(),
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_two_ranks_report_every_size_and_pass_a_low_threshold() -> None:
    code, out, err = _run("--min-busbw=0.000001")
    assert code == 0, err
    reported = events(out, "size")
    assert [e["bytes"] for e in reported] == [64 << 10, 128 << 10, 256 << 10]
    assert all(e["busbw_gbs"] >= 0 and e["time_us"] > 0 for e in reported)
    (result,) = events(out, "result")
    assert result["ranks"] == 2 and result["passed"] is True


def test_below_the_threshold_the_ranks_fail() -> None:
    code, out, _ = _run("--min-busbw=100000")
    (result,) = events(out, "result")
    assert result["passed"] is False
    # Each rank exits EXIT_BELOW_THRESHOLD; torchrun reports the failure (non-zero),
    # which the Job's podFailurePolicy turns into a failed Job.
    assert code != 0


def test_outside_torchrun_is_a_usage_error() -> None:
    proc = run_module("workloads.runtime.nccl_test", "--device=cpu")
    assert proc.returncode == contract.EXIT_USAGE
    assert "run under torchrun" in proc.stderr
