"""HTTP model server: KServe Open Inference Protocol v2 and v1, dynamic batching.

    python -m mlruntime.serve --model-dir /models/mnist --model-name mnist

Endpoints (port contract.SERVE_PORT):

    GET  /v2/health/live              {"live": true} once the process serves HTTP
    GET  /v2/health/ready             {"ready": true} once the model is loaded AND warmed
    GET  /v2                          server metadata (extensions: binary_tensor_data)
    GET  /v2/models/{name}            model metadata (inputs, outputs)
    GET  /v2/models/{name}/ready      model readiness
    POST /v2/models/{name}/infer      v2 inference, JSON or binary tensor data
    GET  /v1/models/{name}            v1 model status
    POST /v1/models/{name}:predict    {"instances": [...]} -> {"predictions": [...]}
    GET  /metrics                     Prometheus (contract.SERVE_METRICS)

The v2 paths also take /versions/1 after the model name.

A request's body is read in full first (at most --max-request-bytes, within
--read-timeout-s), so a slow or stalled upload holds no queue slot and never
delays a batch. Then it is validated on the event loop, queued, and run in
dynamic batches on one inference thread, so HTTP keeps flowing during a
forward pass and requests that arrive meanwhile form the next batch. At most
--max-queue-size requests wait; more are answered 503 with Retry-After. A
client that disconnects is logged in one INFO line and counted with code 499.
SIGTERM: readiness turns false, the listener closes after --shutdown-delay-s,
requests in flight finish, exit 0.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import logging
import math
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import orjson
import torch
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .common import CliParser, UsageError, run_cli
from .contract import EXIT_OK, HEALTH_LIVE_PATH, HEALTH_READY_PATH, METRICS_PATH, SERVE_PORT
from .device import DEVICE_CHOICES, configure_cpu_threads, select_device
from .inference import (
    RAW_TYPECODES,
    InputError,
    Outputs,
    Predictor,
    RawData,
    Sample,
)
from .models import read_export_config

log = logging.getLogger("mlruntime.serve")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_MODEL = "_unknown"  # metric label for a wrong model name: bounded cardinality
MODEL_VERSION = "1"
# KServe v2 / Triton binary tensor data extension: the JSON part's length in bytes.
BINARY_HEADER = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
CLIENT_CLOSED = 499  # status counted for a client that disconnected (nginx's convention)
# The inference thread releases the GIL for every torch op of a forward pass
# and must take it back from the event loop after each one. The loop, busy
# under load, takes it at once, so the thread waits a whole switch interval
# each time: at 0.5 ms that was 6 of a 32-row batch's 16.6 ms, and the server
# used 1.2 of 2 cores. At 50 us it uses 1.6, and throughput rose by half
# (bench/serve_bench.py; the runtime README's serve.py section has the figures).
GIL_SWITCH_INTERVAL_S = 0.00005


class Overloaded(Exception):
    """The queue is full: answer 503 with Retry-After."""


class ClientGone(Exception):
    """The client closed its connection before its answer was sent (counted as 499)."""


class Reject(Exception):
    """Answer `status` with `{"error": message}`: the request is wrong or cannot be served."""

    def __init__(self, status: int, message: str, *, close: bool = False, **headers: str):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers


class _ProtocolErrorsAsOneLine(logging.Filter):
    """aiohttp logs a malformed HTTP message (bad chunking, bad header) as an ERROR
    with a traceback; it is a client's mistake, already answered 400: one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = (
                f"{record.getMessage()}: malformed HTTP request ({exc.code}): {exc.message}"
            )
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _quiet_protocol_errors() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ProtocolErrorsAsOneLine) for f in server_log.filters):
        server_log.addFilter(_ProtocolErrorsAsOneLine())


class ServeMetrics:
    """Exactly the contract.SERVE_METRICS names, in a registry per server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlserve_requests",
            "Inference requests by status code (499: the client disconnected)",
            ["model", "protocol", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "mlserve_request_duration_seconds",
            "Inference request latency, by status code as mlserve_requests_total",
            ["model", "protocol", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mlserve_batch_size",
            "Rows per forward pass",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "mlserve_queue_depth", "Requests waiting for a batch", ["model"], registry=r
        )
        self.inflight = Gauge(
            "mlserve_inflight_requests", "Inference requests being handled", ["model"], registry=r
        )


@dataclass
class Result:
    """One request's outputs as Python lists (rows), and the first floating
    output holding NaN/Inf in its rows, if any."""

    rows: dict[str, list[Any]]
    shapes: dict[str, list[int]]
    nonfinite: str | None = None


@dataclass
class _Pending:
    sample: Sample
    future: asyncio.Future[Result] = field(repr=False)
    gone: Callable[[], bool] = field(repr=False)


def _finite(row: Any) -> bool:
    """A row (nested lists of floats, or one float) holds no NaN/Inf.

    A sum of floats is finite exactly when every one is (in double precision,
    float32 values cannot overflow it).
    """
    if not isinstance(row, list):
        return math.isfinite(row)
    if row and isinstance(row[0], list):
        return all(map(_finite, row))
    return math.isfinite(sum(row))


def split_results(outputs: Outputs, sizes: list[int]) -> list[Result]:
    """A batch's outputs as per-request Python lists, NaN/Inf flagged per request.

    Runs in the inference thread with one torch call per output (tolist), so
    the event loop makes none: every torch call releases the GIL, and taking
    it back behind the other thread costs far more than the call itself.
    """
    columns = {name: tensor.tolist() for name, tensor in outputs.items()}
    tails = {name: list(tensor.shape[1:]) for name, tensor in outputs.items()}
    floating = [name for name, tensor in outputs.items() if tensor.is_floating_point()]
    results, start = [], 0
    for size in sizes:
        end = start + size
        rows = {name: column[start:end] for name, column in columns.items()}
        nonfinite = next((name for name in floating if not all(map(_finite, rows[name]))), None)
        shapes = {name: [size, *tail] for name, tail in tails.items()}
        results.append(Result(rows, shapes, nonfinite))
        start = end
    return results


class DynamicBatcher:
    """Groups queued requests into forward passes of at most `max_batch_size` rows.

    Requests reach the batcher only once their body has been read in full
    and validated, so nothing on the wire ever holds a queue slot or delays
    a batch. The inference thread forms the batches itself: it takes every
    request already queued, without waiting; only if the batch is not full
    AND more requests have been admitted (body read, still being decoded)
    does it wait for them, for at most `max_delay_s`. A lone client therefore
    never waits for the window, and under load the batches fill from
    requests that queued up during the previous forward pass.

    The thread starts the next forward pass as soon as one ends and hands
    each batch's results to the event loop in one call; it never waits for
    the loop to schedule it (that hand-off, behind the loop's own work on the
    GIL, used to idle the thread for a third of the time under load).
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        metrics: ServeMetrics,
        model_name: str,
    ) -> None:
        self.predictor = predictor
        self.max_batch_size, self.max_delay_s = max_batch_size, max_delay_s
        self.max_queue_size = max_queue_size
        self.queue: deque[_Pending] = deque()
        self.arriving = 0  # admitted (body read), not yet queued
        self._cond = threading.Condition()
        self._stopping = False
        self._notify_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.batch_metric = metrics.batch_size.labels(model_name)
        self.depth_metric = metrics.queue_depth.labels(model_name)

    # -- event loop side ----------------------------------------------------------
    def admit(self) -> None:
        """Reserve a queue slot for a request whose body is read, or raise Overloaded."""
        if len(self.queue) + self.arriving >= self.max_queue_size:
            raise Overloaded
        self.arriving += 1

    def withdraw(self) -> None:
        """Release a reservation whose request turned out invalid."""
        with self._cond:
            self.arriving -= 1
            self._cond.notify()

    async def submit(self, sample: Sample, gone: Callable[[], bool]) -> Result:
        """Queue an admitted request's sample and wait for its outputs.

        `gone()` says whether the client has disconnected: such requests are
        dropped from the queue instead of computed (ClientGone).
        """
        assert self._loop is not None, "start() the batcher first"
        future: asyncio.Future[Result] = self._loop.create_future()
        self.arriving -= 1
        self.queue.append(_Pending(sample, future, gone))  # deque: atomic
        if not self._notify_pending:
            # Wake the thread once the loop has run the other handlers that are
            # ready now, so it finds them queued too instead of starting a
            # forward pass for the first one alone (measured: waking it at once
            # made batches smaller and cost 20% more CPU per request).
            self._notify_pending = True
            self._loop.call_soon(self._notify)
        return await future

    def _notify(self) -> None:
        self._notify_pending = False
        self.depth_metric.set(len(self.queue))
        with self._cond:
            self._cond.notify()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def _deliver(self, batch: list[_Pending], results: list[Result] | BaseException) -> None:
        for i, item in enumerate(batch):
            if item.future.done():
                continue
            if isinstance(results, BaseException):
                item.future.set_exception(results)
            else:
                item.future.set_result(results[i])

    # -- inference thread ---------------------------------------------------------
    def _take_queued(self, batch: list[_Pending], rows: int) -> int:
        """With the lock held: move queued requests into `batch` while they fit."""
        while self.queue and (not batch or rows + self.queue[0].sample.rows <= self.max_batch_size):
            item = self.queue.popleft()
            if item.future.done():  # cancelled while it waited
                continue
            if item.gone():  # the client went away while it waited: no forward for it
                self._post(self._deliver, [item], ClientGone("while its request was queued"))
                continue
            batch.append(item)
            rows += item.sample.rows
        return rows

    def _next_batch(self) -> list[_Pending] | None:
        """Block until there is work; the next batch, or None once stopping."""
        with self._cond:
            while not self.queue:
                if self._stopping:
                    return None
                self._cond.wait()
            batch: list[_Pending] = []
            rows = self._take_queued(batch, 0)
            deadline = time.monotonic() + self.max_delay_s
            while rows < self.max_batch_size and self.arriving > 0 and not self.queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                rows = self._take_queued(batch, rows)
        self.depth_metric.set(len(self.queue))
        if batch:
            self.batch_metric.observe(sum(item.sample.rows for item in batch))
        return batch

    def _forward(self, samples: list[Sample]) -> list[Result]:
        """One forward pass; per-request outputs as lists, checked for NaN/Inf."""
        outputs = self.predictor.predict_batch(samples)
        return split_results(outputs, [sample.rows for sample in samples])

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits anymore
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                results: list[Result] | BaseException = self._forward(
                    [item.sample for item in batch]
                )
            except Exception as exc:  # a failed forward pass fails its requests, not the server
                rows = sum(item.sample.rows for item in batch)
                log.exception("forward pass over %d rows failed", rows)
                results = exc
            self._post(self._deliver, batch, results)


def _json(payload: Any, status: int = 200, **headers: str) -> web.Response:
    """orjson: 10x faster than json for the float lists requests and answers carry."""
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers=headers or None,
    )


def _error(status: int, message: str, **headers: str) -> web.Response:
    return _json({"error": message}, status, **headers)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{where} must be true or false, got {value!r}")
    return value


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError(f"{where}.parameters must be an object, got {type(params).__name__}")
    return params


@dataclass
class Request:
    """A validated inference request: the sample, and for v2 its id and outputs."""

    sample: Sample
    id: str = ""
    outputs: list[tuple[str, bool]] = field(default_factory=list)  # (name, as binary)


class InferenceServer:
    """The aiohttp application and the server's state (loaded, ready, draining)."""

    def __init__(
        self,
        model_name: str,
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        max_queue_size: int = 256,
        max_request_bytes: int = 16 * 1024 * 1024,
        read_timeout_s: float = 10.0,
        idle_timeout_s: float = 75.0,
    ) -> None:
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.max_request_bytes = max_request_bytes
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.metrics = ServeMetrics()
        self.predictor: Predictor | None = None
        self.batcher: DynamicBatcher | None = None
        self.output_types: dict[str, str] = {}
        self.ready = False
        self.draining = False
        self.inflight_metric = self.metrics.inflight.labels(model_name)
        _quiet_protocol_errors()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.app = web.Application(
            middlewares=[self._json_errors], client_max_size=max_request_bytes
        )
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        self.app.add_routes(
            [
                web.get(HEALTH_LIVE_PATH, self.live),
                web.get(HEALTH_READY_PATH, self.server_ready),
                web.get("/v2", self.server_metadata),
                web.get(model, self.model_metadata),
                web.get(versioned, self.model_metadata),
                web.get(model + "/ready", self.model_ready),
                web.get(versioned + "/ready", self.model_ready),
                web.post(model + "/infer", self.infer_v2),
                web.post(versioned + "/infer", self.infer_v2),
                web.get("/v1/models/{name:[^/:]+}", self.model_ready_v1),
                web.post("/v1/models/{name:[^/:]+}:predict", self.predict_v1),
                web.get(METRICS_PATH, self.prometheus),
            ]
        )
        self.app.on_shutdown.append(self._on_shutdown)

    # -- lifecycle ----------------------------------------------------------------
    def runner(self, shutdown_timeout: float) -> web.AppRunner:
        """The app's runner: no access log; a connection that has not sent a
        complete request head within `idle_timeout_s` (idle between requests,
        or sending its headers slowly) is closed. aiohttp's default is an hour."""
        return web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=shutdown_timeout,
            keepalive_timeout=self.idle_timeout_s,
        )

    def attach(self, predictor: Predictor) -> None:
        """Serve `predictor` (loaded and warmed by the caller); become ready."""
        self.predictor = predictor
        self.output_types = {s.name: s.datatype for s in predictor.output_specs()}
        self.batcher = DynamicBatcher(
            predictor,
            max_batch_size=self.max_batch_size,
            max_delay_s=self.max_delay_s,
            max_queue_size=self.max_queue_size,
            metrics=self.metrics,
            model_name=self.model_name,
        )
        self.batcher.start()
        self.ready = True

    def begin_drain(self) -> None:
        """SIGTERM: fail readiness so the Service stops sending new traffic."""
        self.ready = False
        self.draining = True

    async def _on_shutdown(self, app: web.Application) -> None:
        self.begin_drain()

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    # -- middleware ----------------------------------------------------------------
    @web.middleware
    async def _json_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """aiohttp's own errors (unknown path, wrong method, body too large) as JSON."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, f"{exc.reason}: {request.method} {request.path}")

    # -- health and metadata -------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        return _json({"ready": self.ready}, 200 if self.ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": "mlruntime", "version": torch.__version__, "extensions": EXTENSIONS})

    def _unknown(self, request: web.Request) -> web.Response | None:
        """404 for another model name or a version other than "1", else None."""
        name = request.match_info["name"]
        if name != self.model_name:
            return _error(404, f"unknown model {name!r}; this server serves {self.model_name!r}")
        version = request.match_info.get("version", MODEL_VERSION)
        if version != MODEL_VERSION:
            return _error(
                404, f"unknown version {version!r} of model {name!r}; it has {MODEL_VERSION!r}"
            )
        return None

    async def model_metadata(self, request: web.Request) -> web.Response:
        if (unknown := self._unknown(request)) is not None:
            return unknown
        if self.predictor is None:
            return _error(503, f"model {self.model_name!r} is not loaded yet")
        return _json(
            {
                "name": self.model_name,
                "versions": [MODEL_VERSION],
                "platform": "pytorch",
                "inputs": [self.predictor.input_spec().metadata()],
                "outputs": [s.metadata() for s in self.predictor.output_specs()],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        if (unknown := self._unknown(request)) is not None:
            return unknown
        return _json({"name": self.model_name, "ready": self.ready}, 200 if self.ready else 503)

    async def model_ready_v1(self, request: web.Request) -> web.Response:
        return await self.model_ready(request)

    async def prometheus(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- inference -----------------------------------------------------------------
    async def infer_v2(self, request: web.Request) -> web.Response:
        return await self._infer(request, "v2")

    async def predict_v1(self, request: web.Request) -> web.Response:
        return await self._infer(request, "v1")

    async def _infer(self, request: web.Request, protocol: str) -> web.Response:
        started = time.perf_counter()
        name = request.match_info["name"]
        label = name if name == self.model_name else UNKNOWN_MODEL
        self.inflight_metric.inc()
        try:
            response = await self._handle(request, protocol)
        except Reject as exc:
            response = _error(exc.status, exc.message, **exc.headers)
            if exc.close:
                response.force_close()
        except ClientGone as exc:
            peer = request.remote or "?"
            log.info(
                "client %s disconnected %s (%s %s); counted as %d",
                peer,
                exc,
                request.method,
                request.path,
                CLIENT_CLOSED,
            )
            response = web.Response(status=CLIENT_CLOSED)  # never sent: the peer is gone
            response.force_close()
        finally:
            self.inflight_metric.dec()
        self._observe(label, protocol, response.status, time.perf_counter() - started)
        return response

    def _observe(self, label: str, protocol: str, status: int, seconds: float) -> None:
        """Count and time a request; label children are cached (labels() takes a lock)."""
        key = (label, protocol, status)
        children = self._children.get(key)
        if children is None:
            labels = (label, protocol, str(status))
            children = (
                self.metrics.requests.labels(*labels),
                self.metrics.duration.labels(*labels),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    async def _handle(self, request: web.Request, protocol: str) -> web.Response:
        if (unknown := self._unknown(request)) is not None:
            return unknown
        if self.batcher is None or self.predictor is None or not self.ready:
            state = "shutting down" if self.draining else "not ready yet"
            raise Reject(503, f"model {self.model_name!r} is {state}", **{"Retry-After": "1"})
        # The whole body first: a request holds no queue slot while it is on the wire.
        body = await self._read_body(request)
        try:
            self.batcher.admit()
        except Overloaded:
            raise Reject(
                503,
                f"server overloaded: {self.max_queue_size} requests already queued",
                **{"Retry-After": "1"},
            ) from None
        try:
            parsed = self._parse(request, body, protocol)
        except InputError as exc:
            self.batcher.withdraw()
            raise Reject(400, str(exc)) from None
        except BaseException:
            self.batcher.withdraw()
            raise
        transport = request.transport
        try:
            result = await self.batcher.submit(
                parsed.sample, lambda: transport is None or transport.is_closing()
            )
        except ClientGone:
            raise
        except Exception as exc:
            raise Reject(500, f"inference failed: {exc}") from None
        if transport is None or transport.is_closing():
            raise ClientGone("before its answer was sent")
        if result.nonfinite is not None:
            raise Reject(
                500,
                f"the model produced NaN or Inf in output {result.nonfinite!r} for this "
                f"request; refusing to answer with non-numbers (check the input's scale "
                f"and the model's weights)",
            )
        if protocol == "v1":
            names = list(result.rows)
            predictions = [
                dict(zip(names, values, strict=True))
                for values in zip(*result.rows.values(), strict=True)
            ]
            return _json({"predictions": predictions})
        return self._v2_response(result, parsed)

    async def _read_body(self, request: web.Request) -> bytearray:
        """The request body, at most --max-request-bytes, within --read-timeout-s."""
        limit = self.max_request_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise Reject(
                413,
                f"request body is {length} bytes; this server takes at most {limit} "
                f"(--max-request-bytes)",
            )
        body = bytearray()
        try:
            if request.content.is_eof():  # all here already (the common case): no timer
                await self._read_into(body, request)
            else:
                async with asyncio.timeout(self.read_timeout_s):
                    await self._read_into(body, request)
        except TimeoutError:
            raise Reject(
                408,
                f"request body not received within {self.read_timeout_s:g}s "
                f"(got {len(body)} bytes; --read-timeout-s)",
                close=True,
            ) from None
        except ConnectionResetError:
            raise ClientGone(f"after sending {len(body)} bytes of its request body") from None
        except HttpProcessingError as exc:
            raise Reject(400, f"malformed request body: {exc.message}", close=True) from None
        return body

    async def _read_into(self, body: bytearray, request: web.Request) -> None:
        limit = self.max_request_bytes
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > limit:
                raise Reject(
                    413, f"request body exceeds {limit} bytes (--max-request-bytes)", close=True
                )

    def _parse(self, request: web.Request, body: bytearray, protocol: str) -> Request:
        """Validate a request body: the sample plus v2's id and requested outputs."""
        assert self.predictor is not None
        header_length = request.headers.get(BINARY_HEADER)
        if header_length is not None and protocol == "v1":
            raise InputError(f"{BINARY_HEADER}: binary tensor data is a v2 extension, not v1")
        payload, binary = _split_binary(body, header_length)
        # No `true`/`false` in the JSON: no booleans to scan the numbers for. The
        # one-byte checks first: memchr is 40x faster than a substring search, and
        # the protocol's field names hold no "r" or "f".
        # (bytearray.find, not `in`: a memoryview would be compared item by item.)
        end = len(payload)
        may_hold_booleans = any(
            body.find(char, 0, end) >= 0 and body.find(word, 0, end) >= 0
            for char, word in ((b"r", b"true"), (b"f", b"false"))
        )
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            hint = ""
            if header_length is None and ("UTF-8" in str(exc) or "after document" in str(exc)):
                hint = f" (binary tensor data needs the {BINARY_HEADER} header)"
            raise InputError(f"request body is not valid JSON: {exc}{hint}") from None
        if not isinstance(decoded, dict):
            raise InputError("request body must be a JSON object")
        if protocol == "v1":
            if "instances" not in decoded:
                raise InputError("v1 request is missing the field 'instances'")
            sample = self.predictor.parse_instances(decoded["instances"], may_hold_booleans)
            parsed = Request(sample)
        else:
            if "inputs" not in decoded:
                raise InputError("v2 request is missing the field 'inputs'")
            _attach_binary(decoded["inputs"], binary, header_length is not None)
            sample = self.predictor.parse_v2(decoded["inputs"], may_hold_booleans)
            binary_default = _flag(
                _parameters(decoded, "request").get("binary_data_output", False),
                "parameters.binary_data_output",
            )
            parsed = Request(
                sample,
                str(decoded.get("id") or uuid.uuid4()),
                self._requested_outputs(decoded.get("outputs"), binary_default),
            )
        if sample.rows > self.max_batch_size:
            raise InputError(
                f"request has {sample.rows} rows; this server takes at most "
                f"{self.max_batch_size} per request (--max-batch-size)"
            )
        return parsed

    def _requested_outputs(self, requested: Any, binary: bool) -> list[tuple[str, bool]]:
        if requested is None:
            return [(name, binary) for name in self.output_types]
        if not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
        ):
            raise InputError("'outputs' must be a list of objects with a 'name'")
        names = [o["name"] for o in requested]
        unknown = [n for n in names if n not in self.output_types]
        if unknown:
            raise InputError(
                f"unknown output(s) {unknown}; this model has {list(self.output_types)}"
            )
        wanted = []
        for i, output in enumerate(requested):
            params = _parameters(output, f"outputs[{i}]")
            if params.get("classification"):
                raise InputError(
                    f"outputs[{i}].parameters.classification: the classification extension "
                    f"is not supported"
                )
            as_binary = params.get("binary_data", binary)
            wanted.append(
                (output["name"], _flag(as_binary, f"outputs[{i}].parameters.binary_data"))
            )
        return wanted

    def _v2_response(self, result: Result, parsed: Request) -> web.Response:
        tensors, blobs = [], []
        for name, as_binary in parsed.outputs:
            rows, shape = result.rows[name], result.shapes[name]
            flat = list(chain.from_iterable(rows)) if len(shape) > 1 else rows
            datatype = self.output_types[name]
            entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
            if as_binary:
                values = array.array(RAW_TYPECODES[datatype], flat)
                if sys.byteorder != "little":  # the extension's bytes are little-endian
                    values.byteswap()
                blob = values.tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = flat
            tensors.append(entry)
        header = orjson.dumps(
            {
                "model_name": self.model_name,
                "model_version": MODEL_VERSION,
                "id": parsed.id,
                "outputs": tensors,
            }
        )
        if not blobs:
            return web.Response(body=header, content_type="application/json")
        return web.Response(
            body=b"".join([header, *blobs]),
            content_type="application/octet-stream",
            headers={BINARY_HEADER: str(len(header))},
        )


def _split_binary(body: bytearray, header_length: str | None) -> tuple[memoryview, memoryview]:
    """(JSON part, binary part) of a body; all JSON without the binary extension's header."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    try:
        length = int(header_length)
    except ValueError:
        raise InputError(f"{BINARY_HEADER} must be an integer, got {header_length!r}") from None
    if not 0 <= length <= len(body):
        raise InputError(f"{BINARY_HEADER} is {length} but the request body has {len(body)} bytes")
    return view[:length], view[length:]


def _attach_binary(inputs: Any, binary: memoryview, has_header: bool) -> None:
    """Replace binary inputs' data by their slice of the body (binary_data_size, in order)."""
    if not isinstance(inputs, list):
        return  # parse_v2 says what is wrong
    offset = 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            continue
        size = _parameters(tensor, f"inputs[{i}]").get("binary_data_size")
        if size is None:
            continue
        where = f"inputs[{i}].parameters.binary_data_size"
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(f"{where} must be a non-negative integer, got {size!r}")
        if "data" in tensor:
            raise InputError(f"inputs[{i}] has both 'data' and binary_data_size; send one")
        if not has_header:
            raise InputError(
                f"{where} is {size} but the request has no {BINARY_HEADER} header, so no "
                f"binary data"
            )
        if offset + size > len(binary):
            raise InputError(
                f"{where} is {size} but only {len(binary) - offset} bytes of binary data "
                f"remain after the JSON header"
            )
        tensor["data"] = RawData(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise InputError(
            f"the request carries {len(binary) - offset} bytes of binary data that no input "
            f"claims (binary_data_size)"
        )


def load_and_warm(model_dir: Path, device: torch.device, max_batch_size: int) -> Predictor:
    """Load the export and run the shapes the server will see, before readiness.

    The first forward passes pay one-off costs (allocator growth, kernel
    selection, CUDA context and cuBLAS handles); a pod must not report ready
    and then serve its first requests seconds late.
    """
    predictor = Predictor.load(model_dir, device)
    for rows in sorted({1, max_batch_size}):
        predictor.predict([predictor.example(rows)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return predictor


def quiet_garbage_collector() -> None:
    """Keep the cyclic GC off the request path once the model is loaded.

    Measured under load (64 clients): gen-0 collections ran ~60 times a
    second on the event loop (each request allocates containers), ~30 ms of
    every second, and a full collection walks the ~180k objects of torch and
    the loaded model, ~90 ms with the loop stopped. Freezing what exists now
    takes those out of every collection, and a gen-0 threshold of 10000 lets
    the short-lived request objects die by reference counting before one.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = CliParser(prog="serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="an exported model")
    parser.add_argument("--model-name", required=True, help="the {name} in the URL paths")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=SERVE_PORT)
    parser.add_argument("--max-batch-size", type=int, default=32, help="rows per forward pass")
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument("--max-queue-size", type=int, default=256, help="waiting requests")
    parser.add_argument("--max-request-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument(
        "--read-timeout-s",
        type=float,
        default=10.0,
        help="time a request's body may take to arrive after its headers (else 408)",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=75.0,
        help="close a connection that sends no complete request head for this long (idle "
        "keep-alive or slow headers); keep it above the load balancer's idle timeout",
    )
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = auto")
    parser.add_argument(
        "--shutdown-delay-s",
        type=float,
        default=0.0,
        help="after SIGTERM, keep serving (unready) this long before closing the listener",
    )
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be in 1..65535")
    for name in ("max_batch_size", "max_queue_size", "max_request_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("max_batch_delay_ms", "threads", "shutdown_delay_s", "drain_timeout_s"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("read_timeout_s", "idle_timeout_s"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if not args.model_name or "/" in args.model_name or ":" in args.model_name:
        parser.error("--model-name must be non-empty without '/' or ':'")
    return args


async def serve(args: Any) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    device = select_device(args.device)
    if device.type == "cpu":
        # One core stays with the event loop: JSON and HTTP are half the work.
        configure_cpu_threads(args.threads or None, reserve=1)
    read_export_config(args.model_dir)  # fail fast (exit 2) on a bad directory
    server = InferenceServer(
        args.model_name,
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_batch_delay_ms,
        max_queue_size=args.max_queue_size,
        max_request_bytes=args.max_request_bytes,
        read_timeout_s=args.read_timeout_s,
        idle_timeout_s=args.idle_timeout_s,
    )
    runner = server.runner(shutdown_timeout=args.drain_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    try:
        await site.start()
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s:%d; loading %s", args.host, args.port, args.model_dir)
    # Loading runs in a thread so liveness answers while a large model loads.
    loading = loop.run_in_executor(None, load_and_warm, args.model_dir, device, args.max_batch_size)
    stopping = asyncio.ensure_future(stop.wait())
    waiters: list[asyncio.Future[Any]] = [loading, stopping]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        predictor = loading.result()  # a UsageError from loading propagates (exit 2)
        quiet_garbage_collector()
        server.attach(predictor)
        log.info("model %r ready on %s", args.model_name, device)
        await stopping
    server.begin_drain()
    log.info("draining: ready=false, closing the listener in %.1fs", args.shutdown_delay_s)
    await asyncio.sleep(args.shutdown_delay_s)
    await runner.cleanup()  # stop listening, wait for in-flight handlers
    await server.close()
    log.info("stopped")
    return EXIT_OK


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (the image has it): HTTP handling is half the work."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(serve(args))


if __name__ == "__main__":
    sys.exit(run_cli("serve", main, None))
