"""Plumbing shared by the four programs, none of it torch-specific.

fetch.py imports only this module and storage.py, so nothing here may import
torch: the init container should not pay seconds of torch import to copy files.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, NoReturn

from .contract import EXIT_USAGE

log = logging.getLogger("mlruntime")


class UsageError(Exception):
    """A mistake the user can fix (arguments, input files, model directory).

    Programs exit with contract.EXIT_USAGE and print only the message: a retry
    cannot help, and a traceback would hide the one line that matters.
    """


class RetryableError(Exception):
    """A failure a retry may fix (network, throttling): one line, exit 1."""


class CliParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting.

    All user errors then leave through run_cli(), as one line on stderr.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def setup_logging() -> None:
    """Human-readable diagnostics go to stderr; stdout carries JSON events only."""
    logging.basicConfig(
        level=os.environ.get("MLRUNTIME_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def enable_crash_traces() -> None:
    """faulthandler on the process's real stderr (fd 2), unless already on."""
    if faulthandler.is_enabled() or sys.__stderr__ is None:
        return
    # OSError/ValueError: no usable file descriptor (an embedded interpreter).
    with suppress(OSError, ValueError):
        faulthandler.enable(file=sys.__stderr__, all_threads=True)


def run_cli(
    prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None
) -> int:
    """Run a program's main(): UsageError -> EXIT_USAGE, RetryableError -> 1, one line each.

    A crash in native code (SIGSEGV, or SIGABRT from a C++ library: torch,
    gloo, NCCL) prints the Python stack of every thread on stderr first, so
    the pod's log says where it died instead of only "exit code 134".
    """
    enable_crash_traces()
    setup_logging()
    try:
        return main(argv)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except RetryableError as exc:
        print(f"{prog}: error (retryable): {exc}", file=sys.stderr, flush=True)
        return 1


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line on stdout (log collectors parse it; tests read it)."""
    record = {"event": event, "time": round(time.time(), 3), **fields}
    print(json.dumps(record, separators=(",", ":"), default=str), flush=True)


def fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry lives in the directory's inode."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write `path` all-or-nothing: temp file beside it, fsync, rename, fsync dir.

    A reader (or a restarted writer) sees either the old file or the complete
    new one, never a prefix: rename within one directory is atomic on POSIX.
    If the body raises, the temp file is removed and `path` is untouched. A
    process killed mid-write leaves only a `.<name>.tmp-*` file, which
    listings that pick real outputs ignore.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide outputs from other users
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    with atomic_output(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")


def remove_stale_temps(directory: Path, name: str) -> None:
    """Delete temp files a killed writer of `name` left behind (see atomic_output)."""
    for stale in directory.glob(f".{name}.tmp-*"):
        stale.unlink(missing_ok=True)


def cpu_budget() -> int:
    """CPUs this process may really use: affinity mask capped by the cgroup quota.

    torch sizes its thread pool from the node's cores, not the container's CPU
    limit; in a pod limited to 2 CPUs on a 96-core node that means 96 threads
    fighting over 2 CPUs' worth of quota and heavy throttling.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)
