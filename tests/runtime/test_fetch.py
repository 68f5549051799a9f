"""fetch.py: local and S3 sources, idempotence, replacement, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.runtime.contract import EXIT_USAGE, FETCH_MARKER_FILE
from workloads.runtime.fetch import fetch

from .conftest import ROOT, run_module, runtime_env


def make_source(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"a": 1}',
        "model.pt": bytes(range(256)) * 100,
        "extra/tokenizer.txt": b"vocab",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != FETCH_MARKER_FILE
    }


def test_local_fetch_is_complete_idempotent_and_replaces_old_contents(tmp_path: Path) -> None:
    files = make_source(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()  # like an emptyDir mount point: exists, cannot be renamed over
    (dest / ".fetch-staging-old").mkdir()  # left by a killed attempt
    (dest / "stale.bin").write_bytes(b"half-moved from a killed attempt")
    marker = fetch(str(tmp_path / "src"), dest)
    assert tree(dest) == files
    assert sorted(p.name for p in dest.iterdir()) == [
        FETCH_MARKER_FILE,
        "config.json",
        "extra",
        "model.pt",
    ]
    assert marker["files"] == sorted(files) and marker["bytes"] == sum(map(len, files.values()))
    assert json.loads((dest / FETCH_MARKER_FILE).read_text())["source"] == str(tmp_path / "src")

    before = (dest / "model.pt").stat().st_mtime_ns
    (tmp_path / "src" / "model.pt").write_bytes(b"changed at the source")
    fetch(str(tmp_path / "src"), dest)  # same source: a restarted pod does not copy again
    assert (dest / "model.pt").stat().st_mtime_ns == before

    other = tmp_path / "other"
    (other / "weights").mkdir(parents=True)
    (other / "weights" / "w.pt").write_bytes(b"w")
    fetch(str(other), dest)  # another source: the old files go
    assert tree(dest) == {"weights/w.pt": b"w"}


def test_s3_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    files = make_source(tmp_path / "src")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        for name, data in files.items():
            s3.put_object(Bucket="models", Key=f"mnist/v3/{name}", Body=data)
        s3.put_object(Bucket="models", Key="mnist/v3/", Body=b"")  # a "folder" object
        s3.put_object(Bucket="models", Key="mnist/v30/config.json", Body=b"not this one")
        fetch("s3://models/mnist/v3", tmp_path / "dest")
        assert tree(tmp_path / "dest") == files

        with pytest.raises(Exception, match="holds no files"):
            fetch("s3://models/nothing/", tmp_path / "dest2")
        with pytest.raises(Exception, match="NoSuchBucket"):
            fetch("s3://missing-bucket/x/", tmp_path / "dest3")


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    result = run_module("workloads.runtime.fetch", str(tmp_path / "nope"), str(tmp_path / "d"))
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == (
        f"fetch: error: source {tmp_path / 'nope'} is not a directory (or an s3:// prefix)"
    )
    result = run_module("workloads.runtime.fetch", str(tmp_path))
    assert result.returncode == EXIT_USAGE and "DEST_DIR" in result.stderr


def test_fetch_does_not_import_torch() -> None:
    import subprocess
    import sys

    from .conftest import ROOT, runtime_env

    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, workloads.runtime.fetch; print('torch' in sys.modules)",
        ],
        cwd=ROOT,
        env=runtime_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"


def test_a_native_crash_prints_every_threads_python_stack(tmp_path: Path) -> None:
    """run_cli turns on faulthandler: a SIGABRT from C++ (gloo, NCCL) says where."""
    program = (
        "import os\n"
        "from workloads.runtime.common import run_cli\n"
        "def crash_in_here(argv):\n"
        "    os.abort()\n"
        "run_cli('crash', crash_in_here, [])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=runtime_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in done.stderr
    assert "crash_in_here" in done.stderr
