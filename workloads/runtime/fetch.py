"""Copy a model directory from s3:// or a local path into DEST_DIR (init container).

    python -m mlruntime.fetch s3://bucket/models/mnist/ /models/mnist

Every object under SRC is copied, keeping relative paths. The copy is staged
in DEST_DIR/.fetch-staging-*, moved into DEST_DIR by renames, and the marker
contract.FETCH_MARKER_FILE (the source and a file list) is written last:
the marker is the commit point. Staging inside DEST_DIR keeps every rename
on one filesystem even when DEST_DIR is itself a volume mount point, which
cannot be renamed over.

Idempotent: when the marker names the same SRC, nothing is copied (a
restarted pod does not download again). Otherwise DEST_DIR's previous
contents, which a killed earlier attempt may have left half-moved, are
replaced. Exit 0 on success, 2 for a wrong SRC/DEST or missing access,
1 for an error a retry may fix.

Imports no torch: copying files should not cost a torch import.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .common import CliParser, UsageError, atomic_write_json, emit, run_cli
from .contract import EXIT_OK, FETCH_MARKER_FILE
from .storage import is_s3, open_store

STAGING_PREFIX = ".fetch-staging-"


def _read_marker(dest: Path) -> dict[str, object] | None:
    try:
        value = json.loads((dest / FETCH_MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fetch(source: str, dest: Path) -> dict[str, object]:
    """Copy `source` into `dest` unless already done; returns the marker."""
    marker = _read_marker(dest)
    if marker is not None and marker.get("source") == source:
        emit("fetch_skipped", source=source, dest=str(dest))
        return marker
    if not is_s3(source) and not Path(source).is_dir():
        raise UsageError(f"source {source} is not a directory (or an s3:// prefix)")
    dest.mkdir(parents=True, exist_ok=True)
    store = open_store(source)
    names = store.list()
    if not names:
        raise UsageError(f"source {store.describe()} holds no files")
    for entry in dest.iterdir():  # a previous source, a killed attempt, old staging
        if entry.name != "lost+found":
            _remove(entry)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest))
    started = time.monotonic()
    total = 0
    for name in names:
        target = staging / name
        store.download(name, target)
        total += target.stat().st_size
    for entry in staging.iterdir():
        os.replace(entry, dest / entry.name)
    staging.rmdir()
    record: dict[str, object] = {"source": source, "files": names, "bytes": total}
    atomic_write_json(dest / FETCH_MARKER_FILE, record)
    emit(
        "fetched",
        source=source,
        dest=str(dest),
        files=len(names),
        bytes=total,
        seconds=round(time.monotonic() - started, 3),
    )
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="SRC", help="s3://bucket/prefix or a local directory")
    parser.add_argument("dest", metavar="DEST_DIR", type=Path)
    args = parser.parse_args(argv)
    fetch(args.source, args.dest)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_cli("fetch", main, None))
