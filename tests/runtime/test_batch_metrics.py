"""batch.py's Prometheus metrics: progress while a shard runs, and the final
values (outcome included) reach a scraper before the pod exits."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from workloads.runtime.batch import BatchMetrics, run_shard
from workloads.runtime.inference import Predictor
from workloads.runtime.storage import LocalStore

from .conftest import ROOT, free_port, runtime_env
from .test_batch import write_inputs

CPU = torch.device("cpu")


def scrape(port: int) -> dict[str, float]:
    """/metrics as {series with labels: value}, e.g. 'mlbatch_shards_total{outcome="failed"}'."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


def test_progress_is_exported_while_the_shard_runs(tmp_path: Path, mlp_export: Path) -> None:
    records = write_inputs(tmp_path / "in")
    files = 3  # shard 0 of 2 holds in-00, in-02 and sub/in-04
    expected = sum(1 for name, _ in records if name in ("in-00.jsonl", "in-02.jsonl"))
    expected += sum(1 for name, _ in records if name == "sub/in-04.jsonl")
    port = free_port()
    metrics = BatchMetrics(port)
    predictor = Predictor.load(mlp_export, CPU)
    seen: list[dict[str, float]] = []
    real_predict = predictor.predict

    def predict_and_scrape(samples: list[object]) -> list[object]:
        seen.append(scrape(port))  # a scrape in the middle of the shard
        return real_predict(samples)  # type: ignore[arg-type]

    predictor.predict = predict_and_scrape  # type: ignore[method-assign]
    try:
        before = time.time()
        summary = run_shard(
            LocalStore(tmp_path / "in"),
            LocalStore(tmp_path / "out"),
            index=0,
            count=2,
            batch_size=4,
            load_predictor=lambda: predictor,
            model_name="m",
            metrics=metrics,
        )
        final = scrape(port)
    finally:
        metrics.close()
    assert summary["records"] == expected
    assert seen[0]["mlbatch_input_files"] == files and seen[0]["mlbatch_records_total"] == 0
    assert [s["mlbatch_records_total"] for s in seen] == [4 * i for i in range(len(seen))]
    assert final["mlbatch_records_total"] == expected
    assert final["mlbatch_input_files_done"] == files
    assert final["mlbatch_rows_per_second"] > 0
    assert final["mlbatch_last_progress_timestamp_seconds"] >= before - 1
    for outcome in ("complete", "skipped", "failed"):  # present, at zero, before the end
        assert final[f'mlbatch_shards_total{{outcome="{outcome}"}}'] == 0


def test_finish_waits_for_one_more_scrape_only_when_scraped() -> None:
    unscraped = BatchMetrics(free_port())
    started = time.monotonic()
    assert unscraped.finish("complete", timeout=5) is False
    assert time.monotonic() - started < 3, "nobody scrapes it: no reason to wait for 5 s"

    port = free_port()
    watched = BatchMetrics(port)
    scrape(port)
    last: dict[str, float] = {}

    def scrape_later() -> None:
        time.sleep(0.5)
        last.update(scrape(port))

    scraper = threading.Thread(target=scrape_later)
    scraper.start()
    assert watched.finish("failed", timeout=20) is True
    scraper.join()
    assert last['mlbatch_shards_total{outcome="failed"}'] == 1

    port = free_port()
    abandoned = BatchMetrics(port)
    scrape(port)
    started = time.monotonic()
    assert abandoned.finish("complete", timeout=0.5) is False  # no scrape came: bounded
    assert time.monotonic() - started < 3
    with pytest.raises(urllib.error.URLError):
        scrape(port)  # the server is closed


def test_finish_waits_until_the_last_response_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Collected is not sent: the pod may exit only once the response is on the wire."""
    from workloads.runtime import batch

    slow = 1.0
    real_iter = batch._SentBody.__iter__

    def slow_iter(self: batch._SentBody) -> Iterator[bytes]:
        time.sleep(slow)  # the registry is collected; the write is late
        return real_iter(self)

    monkeypatch.setattr(batch._SentBody, "__iter__", slow_iter)
    port = free_port()
    metrics = BatchMetrics(port)
    scrape(port)
    result: list[tuple[bool, float]] = []

    def finish() -> None:
        seen = metrics.finish("complete", timeout=20)
        result.append((seen, time.monotonic()))

    finisher = threading.Thread(target=finish)
    finisher.start()
    while metrics.registry.get_sample_value("mlbatch_shards_total", {"outcome": "complete"}) != 1:
        time.sleep(0.01)
    counted = time.monotonic()
    last: dict[str, float] = {}
    while finisher.is_alive():  # scrape like Prometheus until the program lets go
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            last = scrape(port)
    finisher.join()
    [(seen, returned)] = result
    assert seen is True
    assert returned - counted >= slow, "finish() returned before the response was written"
    assert last['mlbatch_shards_total{outcome="complete"}'] == 1


def _run_scraped(args: list[str], port: int) -> tuple[int, dict[str, float], str]:
    """Run batch.py as the image does while a scraper polls it; the last scrape it saw."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "workloads.runtime.batch", *args, f"--metrics-port={port}"],
        cwd=ROOT,
        env=runtime_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last: dict[str, float] = {}
    while proc.poll() is None:
        # A scrape that the exit cuts short fails, as it would for Prometheus;
        # the claim is about the last one that came back whole.
        with contextlib.suppress(urllib.error.URLError, ConnectionError, http.client.HTTPException):
            last = scrape(port)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, last, err


@pytest.mark.parametrize(("bad", "outcome", "code"), [(False, "complete", 0), (True, "failed", 2)])
def test_the_last_scrape_sees_the_outcome(
    tmp_path: Path, mlp_export: Path, bad: bool, outcome: str, code: int
) -> None:
    # Enough one-record forward passes that the scraper sees the program before the end.
    (tmp_path / "in").mkdir()
    row = json.dumps({"input": [0.5] * 16})
    records = 3000
    (tmp_path / "in" / "in-00.jsonl").write_text(f"{row}\n" * (records // 2))
    (tmp_path / "in" / "in-01.jsonl").write_text(f"{row}\n" * (records // 2) + "{oops\n" * bad)
    args = [
        "--batch-size=1",
        f"--model-dir={mlp_export}",
        f"--input={tmp_path / 'in'}",
        f"--output={tmp_path / 'out'}",
        "--threads=1",
        "--num-shards=1",
        "--shard-index=0",
    ]
    rc, last, err = _run_scraped(args, free_port())
    assert rc == code, err
    assert last, "the scraper never reached the program"
    assert last[f'mlbatch_shards_total{{outcome="{outcome}"}}'] == 1
    assert last["mlbatch_records_total"] == records  # in-01's bad line is its last
    assert last["mlbatch_input_files_done"] == (1 if bad else 2)
    if not bad:
        marker = json.loads((tmp_path / "out" / "part-00000-of-00001.done.json").read_text())
        assert marker["records"] == records


def test_metrics_port_must_be_a_port(capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.runtime import batch
    from workloads.runtime.common import run_cli

    code = run_cli(
        "batch",
        batch.main,
        ["--model-dir", "m", "--input", "a", "--output", "b", "--metrics-port", "70000"],
    )
    assert code == 2 and "--metrics-port 70000 is not a port" in capsys.readouterr().err
