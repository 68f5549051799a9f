"""Batch inference over one shard of a JSON-lines data set (an Indexed Job pod).

    python -m mlruntime.batch --model-dir /models/m --input s3://b/in/ --output s3://b/out/

Input: every `*.jsonl` file under --input (a directory or an s3:// prefix;
names starting with '.' are ignored), one record per non-blank line:

    {"input": <one row: features (mlp) or token ids (transformer)>, "id": <optional>}

Sharding: the input files, sorted by name, are dealt round-robin; file k
belongs to shard k % JOB_COMPLETIONS, and shard JOB_COMPLETION_INDEX processes
its files in order. The mapping is a pure function of the listing, so every
retry of an index sees the same records. Give the job at least as many files
as completions (an index with no files writes an empty, complete shard).
Inputs must not change while the job runs.

Output, under --output:

    part-<index>-of-<count>.jsonl       one line per input record, in input order:
        {"id": ..., "source": "<file>", "line": <n>, <output name>: <value>, ...}
    part-<index>-of-<count>.done.json   marker: records, input files, sha256 of the part

The part is published all-or-nothing (temp file + rename, or one S3 PUT),
then the marker. An index whose marker exists is skipped, so a retried or
duplicated pod neither repeats nor loses records; a pod killed midway leaves
no part (or the complete previous one) and its retry starts the shard over.
Default id: "<file>:<line>". A record that is not valid JSON or does not fit
the model stops the shard with exit 2, naming the file and line.

Metrics (contract.BATCH_METRICS) on /metrics of --metrics-port (0, the
default, disables them; the BatchInference component passes
contract.BATCH_METRICS_PORT): records written, this shard's input files and
how many are done, rows/s, the time of the last progress, and shards finished
by outcome. A pod lives for one shard, so its last values would be lost
between two scrapes: once Prometheus has scraped the pod at least once, the
program waits (at most FINAL_SCRAPE_TIMEOUT_S) for one more scrape before it
exits, failures included.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import IO, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson

from .common import CliParser, UsageError, emit, run_cli
from .contract import BATCH_MARKER_TEMPLATE, BATCH_OUTPUT_TEMPLATE, EXIT_OK
from .device import DEVICE_CHOICES, configure_cpu_threads, select_device
from .inference import InputError, Predictor, Sample, output_rows
from .storage import Store, open_store

log = logging.getLogger("mlruntime.batch")

OUTCOMES = ("complete", "skipped", "failed")
# Longer than two scrape intervals of the platform's batch PodMonitor (15 s).
FINAL_SCRAPE_TIMEOUT_S = 35.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stalled scraper never holds the pod at exit


class _SentBody:
    """A response body that reports when the server has written all of it:
    wsgiref closes the body after its last write to the socket, also when
    the scraper went away."""

    def __init__(self, body: Iterable[bytes], sent: Callable[[], None]) -> None:
        self._body = body
        self._sent = sent

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._sent()


class BatchMetrics:
    """The contract.BATCH_METRICS series, served on /metrics of `port` (0: not served)."""

    def __init__(self, port: int = 0) -> None:
        from prometheus_client import (  # noqa: PLC0415 (only when metrics are on)
            CollectorRegistry,
            Counter,
            Gauge,
            make_wsgi_app,
        )

        self.registry = r = CollectorRegistry()
        # Scrapes are counted as they begin (before the registry is collected)
        # and once their response is written. finish() waits for a scrape that
        # began after the outcome was counted to be written out, so that
        # scrape carries the outcome and the exit cannot cut it short.
        self._begun = 0
        self._sent = 0
        self._scraped = threading.Condition()
        self.records = Counter("mlbatch_records", "Records predicted and written", registry=r)
        self.shards = Counter(
            "mlbatch_shards", "Shards this pod finished, by outcome", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:  # every series exists from the start (rate() needs two points)
            self.shards.labels(outcome)
        self.rows_per_second = Gauge(
            "mlbatch_rows_per_second",
            "Records per second over this shard, since its first forward pass",
            registry=r,
        )
        self.input_files = Gauge("mlbatch_input_files", "Input files of this shard", registry=r)
        self.input_files_done = Gauge(
            "mlbatch_input_files_done", "Input files of this shard fully processed", registry=r
        )
        self.last_progress = Gauge(
            "mlbatch_last_progress_timestamp_seconds",
            "Unix time of the start, then of each batch of records written",
            registry=r,
        )
        self.last_progress.set_to_current_time()
        self._started: float | None = None
        self._written = 0
        self.server: WSGIServer | None = None
        if port:
            app = make_wsgi_app(r)

            def counted(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
                if environ.get("PATH_INFO") == "/favicon.ico":
                    return app(environ, start_response)
                self._count_scrape(begin=True)
                try:
                    body = app(environ, start_response)
                except BaseException:
                    self._count_scrape(begin=False)
                    raise
                return _SentBody(body, lambda: self._count_scrape(begin=False))

            try:
                self.server = make_server(
                    "0.0.0.0", port, counted, _MetricsServer, handler_class=_QuietHandler
                )
            except OSError as exc:
                log.warning("metrics disabled: cannot listen on port %d: %s", port, exc)
            else:
                threading.Thread(
                    target=self.server.serve_forever, name="metrics", daemon=True
                ).start()

    def _count_scrape(self, begin: bool) -> None:
        with self._scraped:
            if begin:
                self._begun += 1
            else:
                self._sent += 1
            self._scraped.notify_all()

    # -- progress
    def shard_started(self, files: int) -> None:
        self._started = time.monotonic()
        self.input_files.set(files)
        self.last_progress.set_to_current_time()

    def written(self, rows: int, files_done: int) -> None:
        """`rows` more records written; `files_done` input files are now complete."""
        self._written += rows
        self.records.inc(rows)
        if self._started is not None:
            elapsed = time.monotonic() - self._started
            if elapsed > 0:
                self.rows_per_second.set(self._written / elapsed)
        self.input_files_done.set(files_done)
        self.last_progress.set_to_current_time()

    def finish(self, outcome: str, timeout: float = FINAL_SCRAPE_TIMEOUT_S) -> bool:
        """Count the shard's outcome; if something scrapes us, wait for one more scrape.

        Returns whether a scrape carrying the final values was written out
        (False when nothing ever scraped this pod, or none came within `timeout`).
        """
        self.shards.labels(outcome).inc()
        self.last_progress.set_to_current_time()
        seen = False
        with self._scraped:
            # Scrapes begun so far collected (or may have) the old values; the
            # Prometheus scraper asks one at a time, so the next to be written
            # out after them began after the outcome was counted.
            begun = self._begun
            if self.server is not None and begun > 0:
                seen = self._scraped.wait_for(lambda: self._sent > begun, timeout)
        self.close()
        return seen

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def shard_files(files: Sequence[str], index: int, count: int) -> list[str]:
    """This shard's files: every count-th of the sorted listing, from `index`."""
    return sorted(files)[index::count]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = CliParser(prog="batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="an exported model")
    parser.add_argument("--input", required=True, help="directory or s3://bucket/prefix")
    parser.add_argument("--output", required=True, help="directory or s3://bucket/prefix")
    parser.add_argument("--batch-size", type=int, default=64, help="records per forward pass")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = auto")
    parser.add_argument(
        "--shard-index", type=int, default=None, help="default: $JOB_COMPLETION_INDEX or 0"
    )
    parser.add_argument(
        "--num-shards", type=int, default=None, help="default: $JOB_COMPLETIONS or 1"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus /metrics; 0 (default) disables"
    )
    args = parser.parse_args(argv)
    if args.shard_index is None:
        args.shard_index = _env_int("JOB_COMPLETION_INDEX", 0)
    if args.num_shards is None:
        args.num_shards = _env_int("JOB_COMPLETIONS", 1)
    if args.num_shards < 1:
        parser.error(f"the number of shards must be >= 1, got {args.num_shards}")
    if not 0 <= args.shard_index < args.num_shards:
        parser.error(f"shard index {args.shard_index} is not in [0, {args.num_shards})")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port {args.metrics_port} is not a port (0 disables)")
    if args.input.rstrip("/") == args.output.rstrip("/"):
        parser.error("--output must differ from --input (outputs would be read as inputs)")
    return args


def _records(
    store: Store, name: str, predictor: Predictor
) -> Iterator[tuple[dict[str, Any], Sample]]:
    """(output record stub, validated sample) for each record of one file."""
    for number, line in enumerate(store.lines(name), start=1):
        if not line.strip():
            continue
        where = f"{store.describe(name)}:{number}"
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(record, dict) or "input" not in record:
            raise UsageError(f'{where}: a record must be an object with an "input" field')
        try:
            sample = predictor.parse_instances([record["input"]])
        except InputError as exc:
            raise UsageError(f"{where}: {exc}") from None
        stub = {"id": record.get("id", f"{name}:{number}"), "source": name, "line": number}
        yield stub, sample


def _write(handle: IO[bytes], digest: Any, stubs: list[dict[str, Any]], outputs: list[Any]) -> None:
    for stub, result in zip(stubs, outputs, strict=True):
        (row,) = output_rows(result)
        line = orjson.dumps({**stub, **row}) + b"\n"
        digest.update(line)
        handle.write(line)


def run_shard(
    input_store: Store,
    output_store: Store,
    *,
    index: int,
    count: int,
    batch_size: int,
    load_predictor: Callable[[], Predictor],
    model_name: str,
    metrics: BatchMetrics | None = None,
) -> dict[str, Any]:
    """Process one shard unless its marker exists; returns the marker's contents.

    The model is loaded (`load_predictor`) only once the shard is known to
    need work: a retried pod whose shard is complete exits in a second.
    `metrics`, when given, follows the progress (the outcome is the caller's).
    """
    part = BATCH_OUTPUT_TEMPLATE.format(index=index, count=count)
    marker = BATCH_MARKER_TEMPLATE.format(index=index, count=count)
    if output_store.exists(marker):
        emit("skipped", shard=index, num_shards=count, marker=output_store.describe(marker))
        return {"skipped": True, "shard": index}
    files = shard_files(input_store.list(".jsonl"), index, count)
    if not files:
        print(f"batch: warning: shard {index} of {count} has no input files", file=sys.stderr)
    predictor = load_predictor()
    digest = hashlib.sha256()
    records = 0
    files_read = 0  # files whose every record is read; done once those are written
    if metrics is not None:
        metrics.shard_started(len(files))

    def flush(stubs: list[dict[str, Any]], samples: list[Sample]) -> None:
        nonlocal records
        _write(handle, digest, stubs, predictor.predict(samples))
        records += len(samples)
        if metrics is not None:
            metrics.written(len(samples), files_done=files_read)

    with output_store.publisher(part) as handle:
        stubs: list[dict[str, Any]] = []
        samples: list[Sample] = []
        for name in files:
            for stub, sample in _records(input_store, name, predictor):
                stubs.append(stub)
                samples.append(sample)
                if len(samples) == batch_size:
                    flush(stubs, samples)
                    stubs, samples = [], []
            files_read += 1
            if not samples and metrics is not None:
                metrics.written(0, files_done=files_read)
        if samples:
            flush(stubs, samples)
    summary = {
        "shard": index,
        "num_shards": count,
        "records": records,
        "inputs": files,
        "output": part,
        "sha256": digest.hexdigest(),
        "model": model_name,
    }
    with output_store.publisher(marker) as handle:
        handle.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    emit("shard_complete", **{k: v for k, v in summary.items() if k != "inputs"})
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = select_device(args.device)
    if device.type == "cpu":
        configure_cpu_threads(args.threads or None)
    metrics = BatchMetrics(args.metrics_port) if args.metrics_port else None
    try:
        summary = run_shard(
            open_store(args.input),
            open_store(args.output),
            index=args.shard_index,
            count=args.num_shards,
            batch_size=args.batch_size,
            load_predictor=lambda: Predictor.load(args.model_dir, device),
            model_name=str(args.model_dir),
            metrics=metrics,
        )
    except Exception:
        if metrics is not None:
            metrics.finish("failed")
        raise
    if metrics is not None:
        metrics.finish("skipped" if summary.get("skipped") else "complete")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_cli("batch", main, None))
