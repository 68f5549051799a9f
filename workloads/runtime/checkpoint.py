"""Training checkpoints: atomic writes, newest-valid resume, retention.

A checkpoint is one file `ckpt-<step:08d>.pt` (torch.save of plain data:
tensors, numbers, strings, lists, dicts), so it loads with
torch.load(weights_only=True) and never unpickles code. Keys:

    format        CHECKPOINT_FORMAT
    step, epoch, consumed   optimizer steps done; data position (epoch and
                  batches of it consumed per rank)
    model, optimizer, scheduler   state dicts
    rng           one entry per rank: python, torch CPU, CUDA, numpy states
    model_kind, model_config, world_size, mlflow_run_id

Writes go through common.atomic_output (temp file, fsync, rename, fsync of
the directory): a SIGKILL or a node loss mid-save leaves the previous
checkpoint as the newest complete one plus an ignored temp file. Resume still
loads candidates newest first and skips, with a warning, any that fail to load
(a truncated copy, a disk error), because a checkpoint that cannot be read
must cost one interval of work, not the run.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import random
import re
import sys
from pathlib import Path
from typing import Any

import torch

from .common import atomic_output

log = logging.getLogger("mlruntime.checkpoint")

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = frozenset(
    {"format", "step", "epoch", "consumed", "model", "optimizer", "scheduler", "rng"}
)
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint files, newest first (temp files never match)."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int) -> Path:
    """Write atomically, then delete all but the `keep` newest and stale temps."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".ckpt-*.tmp-*"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    path = checkpoint_path(directory, int(state["step"]))
    with atomic_output(path) as handle:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)
    for _, old in list_checkpoints(directory)[max(1, keep) :]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads and has every required key, else None."""
    for _, path in list_checkpoints(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # zip/pickle/IO errors come in many types
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        missing = REQUIRED_KEYS - set(state) if isinstance(state, dict) else REQUIRED_KEYS
        if missing or state.get("format") != CHECKPOINT_FORMAT:
            log.warning(
                "skipping checkpoint %s: not format %s or missing %s",
                path,
                CHECKPOINT_FORMAT,
                sorted(missing),
            )
            continue
        return state, path
    return None


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step can touch, as plain data."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")  # only if something in the process uses it
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = (kind, keys.tolist(), pos, has_gauss, cached)
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = sys.modules.get("numpy")
    if "numpy" in state and numpy is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, numpy.asarray(keys, dtype="uint32"), pos, has_gauss, cached))


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples; a round trip may hand back lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and raw tensor bytes (bit-exact compare)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        size = tensor.numel() * tensor.element_size()
        if size:  # zero-copy view of the tensor's bytes (no numpy needed)
            digest.update((ctypes.c_char * size).from_address(tensor.data_ptr()))
    return digest.hexdigest()
