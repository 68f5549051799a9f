"""Device selection, thread sizing and mixed precision, shared by all programs."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .common import UsageError, cpu_budget

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """Resolve --device: `auto` takes the GPU when one is visible.

    Asking for `cuda` where none is visible is a usage error rather than a
    silent CPU fallback: a GPU workload that quietly runs 50x slower on CPU
    is worse than one that fails at once with a clear message.
    """
    if name not in DEVICE_CHOICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICE_CHOICES)}, not {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but no CUDA device is visible")
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        # TF32 for the fp32 matmuls that autocast leaves (optimizer, norms).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda", index)
    return torch.device("cpu")


def configure_cpu_threads(threads: int | None = None, reserve: int = 0) -> int:
    """Size torch's CPU thread pool to the container, not the node.

    `reserve` cores are left for other work in the process (the server's
    event loop). Returns the number of intra-op threads set.
    """
    count = threads if threads else max(1, cpu_budget() - reserve)
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # only settable before first parallel work
        torch.set_num_interop_threads(1)
    return count


def autocast(device: torch.device, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); no-op on CPU.

    CPU bf16 autocast exists but is slower than fp32 on most server CPUs
    without AMX, and the tests compare exact fp32 loss trajectories.
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
