"""Fabric smoke test: all_reduce bus bandwidth across the nodes of a GPU pool.

    torchrun --nnodes 2 --nproc-per-node 8 ... -m mlruntime.nccl_test \\
        --min-bytes 8M --max-bytes 2G --iters 20 --min-busbw 350

What NCCL's `all_reduce_perf` measures, through the stack training really
uses (torch's NCCL with the image's aws-ofi-nccl and libfabric): for each
message size from --min-bytes to --max-bytes (doubling), --warmup untimed and
--iters timed in-place all_reduce(sum) calls on float32 tensors, every rank
timing the same calls; the slowest rank's time counts. Bandwidths use
nccl-tests' definitions (doc/PERFORMANCE.md):

    algbw = size / time
    busbw = algbw * 2 * (n - 1) / n          (n = ranks)

Rank 0 prints one JSON `size` event per message size and a `result` event
with the bus bandwidth at the largest size. With --min-busbw the program
exits contract.EXIT_BELOW_THRESHOLD when that bus bandwidth is lower, so the
Job fails and `kubectl get job` shows it. On CPU (tests) the backend is gloo.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from .common import CliParser, UsageError, emit, run_cli
from .contract import EXIT_BELOW_THRESHOLD, EXIT_OK

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text: str) -> int:
    """`8`, `64K`, `8M`, `2G` (binary units, as all_reduce_perf's -b/-e)."""
    value = text.strip().upper().removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS and not value[-1:].isdigit() else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise UsageError(f"{text!r} is not a size such as 8M or 2G")
    return int(number) * _UNITS[unit]


def sizes(min_bytes: int, max_bytes: int) -> list[int]:
    out, size = [], min_bytes
    while size <= max_bytes:
        out.append(size)
        size *= 2
    return out


def bus_bandwidth(algbw: float, ranks: int) -> float:
    """all_reduce bus bandwidth from algorithm bandwidth (nccl-tests' factor)."""
    return algbw * 2 * (ranks - 1) / ranks if ranks > 1 else 0.0


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog="mlruntime.nccl_test", description=__doc__.split("\n\n")[0])
    p.add_argument("--min-bytes", default="8M", help="smallest message (default 8M)")
    p.add_argument("--max-bytes", default="2G", help="largest message (default 2G)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per size (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per size (default 5)")
    p.add_argument(
        "--min-busbw",
        type=float,
        default=None,
        help=f"fail (exit {EXIT_BELOW_THRESHOLD}) when the bus bandwidth at the largest size "
        "is below this, GB/s",
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--timeout-seconds", type=int, default=1800, help="collective timeout")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    low, high = parse_bytes(args.min_bytes), parse_bytes(args.max_bytes)
    if low > high:
        raise UsageError("--min-bytes is larger than --max-bytes")
    if args.iters < 1 or args.warmup < 0:
        raise UsageError("--iters must be >= 1 and --warmup >= 0")
    if "RANK" not in os.environ:
        raise UsageError("run under torchrun (RANK, WORLD_SIZE and MASTER_ADDR are not set)")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        "nccl" if use_cuda else "gloo", timeout=timedelta(seconds=args.timeout_seconds)
    )
    try:
        return _run(args, low, high, device)
    finally:
        dist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(args: argparse.Namespace, low: int, high: int, device: torch.device) -> int:
    rank, ranks = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        emit("start", ranks=ranks, backend=dist.get_backend(), device=device.type)
    busbw = 0.0
    for size in sizes(low, high):
        tensor = torch.ones(max(1, size // 4), dtype=torch.float32, device=device)
        for _ in range(args.warmup):
            dist.all_reduce(tensor)
        _sync(device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(tensor)
        _sync(device)
        elapsed = torch.tensor(
            [(time.perf_counter() - start) / args.iters], dtype=torch.float64, device=device
        )
        # The slowest rank's time is the collective's time.
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        seconds = float(elapsed.item())
        algbw = tensor.numel() * 4 / seconds / 1e9
        busbw = bus_bandwidth(algbw, ranks)
        if rank == 0:
            emit(
                "size",
                bytes=tensor.numel() * 4,
                time_us=round(seconds * 1e6, 1),
                algbw_gbs=round(algbw, 2),
                busbw_gbs=round(busbw, 2),
            )
        del tensor
    passed = args.min_busbw is None or busbw >= args.min_busbw
    if rank == 0:
        emit(
            "result",
            ranks=ranks,
            max_bytes=high,
            busbw_gbs=round(busbw, 2),
            min_busbw_gbs=args.min_busbw,
            passed=passed,
        )
    return EXIT_OK if passed else EXIT_BELOW_THRESHOLD


if __name__ == "__main__":
    raise SystemExit(run_cli("mlruntime.nccl_test", main, None))
