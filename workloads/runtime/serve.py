"""HTTP model server: KServe Open Inference Protocol v2 and v1, dynamic batching.

    python -m mlruntime.serve --model-dir /models/mnist --model-name mnist

Endpoints (port contract.SERVE_PORT):

    GET  /v2/health/live              {"live": true} once the process serves HTTP
    GET  /v2/health/ready             {"ready": true} once the model is loaded AND warmed
    GET  /v2                          server metadata
    GET  /v2/models/{name}            model metadata (inputs, outputs)
    GET  /v2/models/{name}/ready      model readiness
    POST /v2/models/{name}/infer      v2 inference
    GET  /v1/models/{name}            v1 model status
    POST /v1/models/{name}:predict    {"instances": [...]} -> {"predictions": [...]}
    GET  /metrics                     Prometheus (contract.SERVE_METRICS)

Requests are validated on the event loop, queued, and run in dynamic batches
on one inference thread, so HTTP keeps flowing during a forward pass and
requests that arrive meanwhile form the next batch. At most --max-queue-size
requests wait; more are answered 503 with Retry-After before their body is
read, which bounds memory. SIGTERM: readiness turns false, the listener
closes after --shutdown-delay-s, requests in flight finish, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from aiohttp import web
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
from .inference import InputError, Outputs, Predictor, Sample, output_rows, v2_outputs
from .models import read_export_config

log = logging.getLogger("mlruntime.serve")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_MODEL = "_unknown"  # metric label for a wrong model name: bounded cardinality


class Overloaded(Exception):
    """The queue is full: answer 503 with Retry-After."""


class ServeMetrics:
    """Exactly the contract.SERVE_METRICS names, in a registry per server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlserve_requests",
            "Inference requests by status code",
            ["model", "protocol", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "mlserve_request_duration_seconds",
            "Inference request latency",
            ["model", "protocol"],
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
class _Pending:
    sample: Sample
    future: asyncio.Future[Outputs] = field(repr=False)


class DynamicBatcher:
    """Groups queued requests into forward passes of at most `max_batch_size` rows.

    Forming a batch: take every request already queued, without waiting. Only
    if the batch is not full AND more requests are known to be on their way
    (admitted, body still being read or parsed) does it wait for them, for at
    most `max_delay_s`. A lone client therefore never waits for the window,
    and under load the batches fill from requests that queued up during the
    previous forward pass.
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
        self.arriving = 0  # admitted, not yet queued
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None
        self.batch_metric = metrics.batch_size.labels(model_name)
        self.depth_metric = metrics.queue_depth.labels(model_name)

    def admit(self) -> None:
        """Reserve a queue slot before reading the body, or raise Overloaded."""
        if len(self.queue) + self.arriving >= self.max_queue_size:
            raise Overloaded
        self.arriving += 1

    def withdraw(self) -> None:
        """Release a reservation whose request turned out invalid."""
        self.arriving -= 1
        self._wakeup.set()

    async def submit(self, sample: Sample) -> Outputs:
        """Queue an admitted request's sample and wait for its outputs."""
        self.arriving -= 1
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self.queue.append(_Pending(sample, future))
        self.depth_metric.set(len(self.queue))
        self._wakeup.set()
        return await future

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def _take_queued(self, batch: list[_Pending], rows: int) -> int:
        while self.queue and (not batch or rows + self.queue[0].sample.rows <= self.max_batch_size):
            item = self.queue.popleft()
            if item.future.cancelled():  # the client went away while it waited
                continue
            batch.append(item)
            rows += item.sample.rows
        self.depth_metric.set(len(self.queue))
        return rows

    async def _wait(self, timeout: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[_Pending] = []
            rows = self._take_queued(batch, 0)
            deadline = loop.time() + self.max_delay_s
            while rows < self.max_batch_size and self.arriving > 0 and not self.queue:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self._wait(remaining)
                rows = self._take_queued(batch, rows)
            if not batch:
                continue
            self.batch_metric.observe(rows)
            samples = [item.sample for item in batch]
            try:
                results = await loop.run_in_executor(
                    self._executor, self.predictor.predict, samples
                )
            except Exception as exc:  # a failed forward pass fails its requests, not the server
                log.exception("forward pass over %d rows failed", rows)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)


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
    ) -> None:
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.metrics = ServeMetrics()
        self.predictor: Predictor | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.draining = False
        self.inflight_metric = self.metrics.inflight.labels(model_name)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.app = web.Application(
            middlewares=[self._json_errors], client_max_size=max_request_bytes
        )
        self.app.add_routes(
            [
                web.get(HEALTH_LIVE_PATH, self.live),
                web.get(HEALTH_READY_PATH, self.server_ready),
                web.get("/v2", self.server_metadata),
                web.get("/v2/models/{name}", self.model_metadata),
                web.get("/v2/models/{name}/ready", self.model_ready),
                web.post("/v2/models/{name}/infer", self.infer_v2),
                web.get("/v1/models/{name:[^/:]+}", self.model_ready_v1),
                web.post("/v1/models/{name:[^/:]+}:predict", self.predict_v1),
                web.get(METRICS_PATH, self.prometheus),
            ]
        )
        self.app.on_shutdown.append(self._on_shutdown)

    # -- lifecycle ----------------------------------------------------------------
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
        return _json({"name": "mlruntime", "version": torch.__version__, "extensions": []})

    def _unknown(self, name: str) -> web.Response:
        return _error(404, f"unknown model {name!r}; this server serves {self.model_name!r}")

    async def model_metadata(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != self.model_name:
            return self._unknown(name)
        if self.predictor is None:
            return _error(503, f"model {name!r} is not loaded yet")
        return _json(
            {
                "name": name,
                "versions": ["1"],
                "platform": "pytorch",
                "inputs": [self.predictor.input_spec().metadata()],
                "outputs": [s.metadata() for s in self.predictor.output_specs()],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != self.model_name:
            return self._unknown(name)
        return _json({"name": name, "ready": self.ready}, 200 if self.ready else 503)

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
            response = await self._handle(request, protocol, name)
        finally:
            self.inflight_metric.dec()
        self._observe(label, protocol, response.status, time.perf_counter() - started)
        return response

    def _observe(self, label: str, protocol: str, status: int, seconds: float) -> None:
        """Count and time a request; label children are cached (labels() takes a lock)."""
        key = (label, protocol, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.metrics.requests.labels(label, protocol, str(status)),
                self.metrics.duration.labels(label, protocol),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    async def _handle(self, request: web.Request, protocol: str, name: str) -> web.Response:
        if name != self.model_name:
            return self._unknown(name)
        if self.batcher is None or self.predictor is None or not self.ready:
            state = "shutting down" if self.draining else "not ready yet"
            return _error(503, f"model {name!r} is {state}", **{"Retry-After": "1"})
        try:
            self.batcher.admit()
        except Overloaded:
            return _error(
                503,
                f"server overloaded: {self.max_queue_size} requests already queued",
                **{"Retry-After": "1"},
            )
        try:
            body = await self._read_json(request)
            sample, extra = self._parse(body, protocol)
        except InputError as exc:
            self.batcher.withdraw()
            return _error(400, str(exc))
        except web.HTTPRequestEntityTooLarge as exc:
            self.batcher.withdraw()
            return _error(413, f"request body too large: {exc.text}")
        except BaseException:
            self.batcher.withdraw()
            raise
        try:
            outputs = await self.batcher.submit(sample)
        except Exception as exc:
            return _error(500, f"inference failed: {exc}")
        if protocol == "v1":
            return _json({"predictions": output_rows(outputs)})
        return _json(
            {
                "model_name": self.model_name,
                "model_version": "1",
                "id": extra["id"],
                "outputs": v2_outputs(outputs, self.output_types, extra["outputs"]),
            }
        )

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except ValueError as exc:
            raise InputError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InputError("request body must be a JSON object")
        return body

    def _parse(self, body: dict[str, Any], protocol: str) -> tuple[Sample, dict[str, Any]]:
        """Validate a request body: the sample plus v2's id and requested outputs."""
        assert self.predictor is not None
        extra: dict[str, Any] = {}
        if protocol == "v1":
            if "instances" not in body:
                raise InputError("v1 request is missing the field 'instances'")
            sample = self.predictor.parse_instances(body["instances"])
        else:
            if "inputs" not in body:
                raise InputError("v2 request is missing the field 'inputs'")
            sample = self.predictor.parse_v2(body["inputs"])
            extra["id"] = str(body.get("id") or uuid.uuid4())
            extra["outputs"] = self._requested_outputs(body.get("outputs"))
        if sample.rows > self.max_batch_size:
            raise InputError(
                f"request has {sample.rows} rows; this server takes at most "
                f"{self.max_batch_size} per request (--max-batch-size)"
            )
        return sample, extra

    def _requested_outputs(self, requested: Any) -> list[str]:
        if requested is None:
            return list(self.output_types)
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
        return names


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
    if not args.model_name or "/" in args.model_name or ":" in args.model_name:
        parser.error("--model-name must be non-empty without '/' or ':'")
    return args


async def serve(args: Any) -> int:
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
    )
    runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=args.drain_timeout_s)
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
        server.attach(loading.result())  # a UsageError from loading propagates (exit 2)
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
