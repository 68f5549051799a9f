"""serve.py over loopback: protocol shapes, errors, batching, overload, metrics, drain."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import torch
from aiohttp import web

from workloads.runtime.contract import SERVE_METRICS
from workloads.runtime.inference import Outputs, Predictor, Sample
from workloads.runtime.models import MLPConfig, build_model, export_model, load_model
from workloads.runtime.serve import InferenceServer, load_and_warm

from .conftest import Running, free_port, runtime_env, start

CPU = torch.device("cpu")


class SlowPredictor:
    """A real predictor whose forward pass takes at least `delay` seconds."""

    def __init__(self, inner: Predictor, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_batch(self, samples: list[Sample]) -> Outputs:
        time.sleep(self.delay)
        self.batches.append(sum(s.rows for s in samples))
        return self.inner.predict_batch(samples)


@asynccontextmanager
async def serving(server: InferenceServer) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    runner = server.runner(shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            yield f"http://{host}:{port}", session
    finally:
        await runner.cleanup()
        await server.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=60))


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
    async with session.request(method, url, data=data) as response:
        text = await response.text()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        return response.status, payload, dict(response.headers)


def mlp_v2(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP32",
                "data": [v for r in rows for v in r],
            }
        ],
        **extra,
    }


def test_readiness_only_after_the_model_is_loaded_and_warmed(mlp_export: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        async with serving(server) as (base, s):
            status, payload, _ = await call(s, "GET", base + "/v2/health/live")
            assert (status, payload) == (200, {"live": True})
            status, payload, _ = await call(s, "GET", base + "/v2/health/ready")
            assert (status, payload) == (503, {"ready": False})
            status, _, _ = await call(s, "GET", base + "/v2/models/m/ready")
            assert status == 503
            status, payload, headers = await call(
                s, "POST", base + "/v2/models/m/infer", mlp_v2([[0.0] * 16])
            )
            assert status == 503 and headers["Retry-After"] == "1"
            assert "not ready" in payload["error"]

            server.attach(load_and_warm(mlp_export, CPU, 32))
            status, payload, _ = await call(s, "GET", base + "/v2/health/ready")
            assert (status, payload) == (200, {"ready": True})
            status, payload, _ = await call(s, "GET", base + "/v2/models/m/ready")
            assert (status, payload) == (200, {"name": "m", "ready": True})
            status, payload, _ = await call(s, "GET", base + "/v1/models/m")
            assert (status, payload) == (200, {"name": "m", "ready": True})

    run(checks)


def test_v2_and_v1_answers_match_the_model(mlp_export: Path) -> None:
    _, model = load_model(mlp_export, CPU)
    rows = [[float(i + j) / 10 for j in range(16)] for i in range(3)]
    expected = model(torch.tensor(rows))

    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            status, meta, _ = await call(s, "GET", base + "/v2/models/m")
            assert status == 200
            assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
            assert [o["name"] for o in meta["outputs"]] == ["logits", "label"]

            status, out, _ = await call(
                s, "POST", base + "/v2/models/m/infer", mlp_v2(rows, id="req-7")
            )
            assert status == 200, out
            assert out["model_name"] == "m" and out["id"] == "req-7"
            logits, label = out["outputs"]
            assert (logits["name"], logits["datatype"], logits["shape"]) == (
                "logits",
                "FP32",
                [3, 4],
            )
            assert torch.allclose(torch.tensor(logits["data"]).view(3, 4), expected, atol=1e-6)
            assert (label["datatype"], label["shape"]) == ("INT64", [3])
            assert label["data"] == expected.argmax(-1).tolist()

            status, out, _ = await call(
                s, "POST", base + "/v2/models/m/infer", mlp_v2(rows, outputs=[{"name": "label"}])
            )
            assert status == 200 and [o["name"] for o in out["outputs"]] == ["label"]

            status, out, _ = await call(
                s, "POST", base + "/v1/models/m:predict", {"instances": rows}
            )
            assert status == 200, out
            predictions = out["predictions"]
            assert [p["label"] for p in predictions] == expected.argmax(-1).tolist()
            assert torch.allclose(
                torch.tensor([p["logits"] for p in predictions]), expected, atol=1e-6
            )

    run(checks)


def test_language_model_rows_of_different_lengths_share_a_batch(lm_export: Path) -> None:
    _, model = load_model(lm_export, CPU)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7], [9]]
    expected = [model(torch.tensor([p]))[0, -1] for p in prompts]

    async def checks() -> None:
        server = InferenceServer("lm")
        server.attach(load_and_warm(lm_export, CPU, 32))
        async with serving(server) as (base, s):
            status, out, _ = await call(
                s, "POST", base + "/v1/models/lm:predict", {"instances": prompts}
            )
            assert status == 200, out
            for prediction, want in zip(out["predictions"], expected, strict=True):
                assert torch.allclose(torch.tensor(prediction["logits"]), want, atol=1e-5)
                assert prediction["next_token"] == int(want.argmax())
            request = {
                "inputs": [
                    {"name": "input", "shape": [1, 3], "datatype": "INT64", "data": [[5, 6, 7]]}
                ]
            }
            status, out, _ = await call(s, "POST", base + "/v2/models/lm/infer", request)
            assert status == 200, out
            assert out["outputs"][1]["data"] == [int(expected[0].argmax())]

    run(checks)


GOOD = [[0.0] * 16]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v2/models/m/infer", b"{not json", "not valid JSON"),
        ("/v2/models/m/infer", [1, 2], "must be a JSON object"),
        ("/v2/models/m/infer", {}, "missing the field 'inputs'"),
        ("/v2/models/m/infer", {"inputs": []}, "one tensor object"),
        (
            "/v2/models/m/infer",
            {"inputs": [{"name": "input", "shape": [1, 16], "data": GOOD[0]}]},
            "missing the field 'datatype'",
        ),
        (
            "/v2/models/m/infer",
            {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": GOOD[0]}]},
            "unknown input 'x'",
        ),
        (
            "/v2/models/m/infer",
            {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "BYTES", "data": GOOD[0]}]},
            "datatype 'BYTES'",
        ),
        ("/v2/models/m/infer", mlp_v2([[0.0] * 15]), "expects 16"),
        (
            "/v2/models/m/infer",
            {"inputs": [{"name": "input", "shape": [2, 16], "datatype": "FP32", "data": GOOD[0]}]},
            "has 16 values but shape [2, 16]",
        ),
        (
            "/v2/models/m/infer",
            {"inputs": [{"name": "input", "shape": [16], "datatype": "FP32", "data": GOOD[0]}]},
            "shape must be two positive",
        ),
        (
            "/v2/models/m/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [1, 16], "datatype": "FP32", "data": ["a"] * 16}
                ]
            },
            "must hold only numbers",
        ),
        ("/v2/models/m/infer", mlp_v2(GOOD, outputs=[{"name": "probs"}]), "unknown output"),
        ("/v2/models/m/infer", mlp_v2(GOOD * 40), "at most 32 per request"),
        ("/v1/models/m:predict", {"rows": GOOD}, "missing the field 'instances'"),
        ("/v1/models/m:predict", {"instances": []}, "non-empty list"),
        ("/v1/models/m:predict", {"instances": [[1.0, 2.0], [1.0]]}, "expects 16"),
    ],
)
def test_malformed_requests_get_400_naming_the_problem(
    mlp_export: Path, path: str, body: Any, message: str
) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            status, payload, headers = await call(s, "POST", base + path, body)
            assert status == 400, payload
            assert headers["Content-Type"].startswith("application/json")
            assert message in payload["error"]
            # The rejected request released its queue slot: a good one still passes.
            assert server.batcher is not None and server.batcher.arriving == 0
            status, _, _ = await call(s, "POST", base + "/v1/models/m:predict", {"instances": GOOD})
            assert status == 200

    run(checks)


def test_language_model_input_errors(lm_export: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("lm")
        server.attach(load_and_warm(lm_export, CPU, 32))
        async with serving(server) as (base, s):
            for instances, message in [
                ([[1.5, 2]], "must hold integers"),
                ([[1, 999]], "token ids must be in [0, 256)"),
                ([list(range(65))], "1 to 64 tokens"),
            ]:
                status, payload, _ = await call(
                    s, "POST", base + "/v1/models/lm:predict", {"instances": instances}
                )
                assert status == 400 and message in payload["error"], payload

    run(checks)


def test_unknown_model_and_path_are_json_404s(mlp_export: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            for method, path in [
                ("POST", "/v2/models/other/infer"),
                ("POST", "/v1/models/other:predict"),
                ("GET", "/v2/models/other"),
                ("GET", "/v2/models/other/ready"),
            ]:
                status, payload, _ = await call(s, method, base + path, mlp_v2(GOOD))
                assert status == 404 and "unknown model 'other'" in payload["error"], path
            status, payload, _ = await call(s, "GET", base + "/v3/nothing")
            assert status == 404 and payload["error"] == "Not Found: GET /v3/nothing"
            status, payload, _ = await call(s, "GET", base + "/v2/models/m/infer")
            assert status == 405 and "Method Not Allowed" in payload["error"]

    run(checks)


def test_overload_answers_503_with_retry_after_and_metrics(mlp_export: Path) -> None:
    async def checks() -> None:
        slow = SlowPredictor(load_and_warm(mlp_export, CPU, 1), delay=0.2)
        server = InferenceServer("m", max_batch_size=1, max_queue_size=2)
        server.attach(cast(Predictor, slow))
        async with serving(server) as (base, s):
            results = await asyncio.gather(
                *(
                    call(s, "POST", base + "/v1/models/m:predict", {"instances": GOOD})
                    for _ in range(8)
                )
            )
            codes = sorted(status for status, _, _ in results)
            assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
            assert set(codes) == {200, 503}
            for status, payload, headers in results:
                if status == 503:
                    assert headers["Retry-After"] == "1" and "overloaded" in payload["error"]
            _, metrics, _ = await call(s, "GET", base + "/metrics")
            assert (
                f'mlserve_requests_total{{code="503",model="m",protocol="v1"}} '
                f"{float(codes.count(503))}"
            ) in metrics

    run(checks)


def test_batching_fills_under_load_and_a_lone_client_does_not_wait(mlp_export: Path) -> None:
    async def checks() -> None:
        slow = SlowPredictor(load_and_warm(mlp_export, CPU, 32), delay=0.05)
        # A 5 s window: any request that waited for it would take >= 5 s.
        server = InferenceServer("m", max_batch_size=32, max_delay_ms=5000)
        server.attach(cast(Predictor, slow))
        async with serving(server) as (base, s):
            for _ in range(3):
                started = time.perf_counter()
                status, _, _ = await call(
                    s, "POST", base + "/v1/models/m:predict", {"instances": GOOD}
                )
                assert status == 200 and time.perf_counter() - started < 2.5
            assert slow.batches == [1, 1, 1]
            results = await asyncio.gather(
                *(
                    call(s, "POST", base + "/v1/models/m:predict", {"instances": GOOD})
                    for _ in range(24)
                )
            )
            assert all(status == 200 for status, _, _ in results)
            assert sum(slow.batches[3:]) == 24 and max(slow.batches) > 4, slow.batches
            _, metrics, _ = await call(s, "GET", base + "/metrics")
            assert f'mlserve_batch_size_count{{model="m"}} {float(len(slow.batches))}' in metrics

    run(checks)


def test_metrics_expose_exactly_the_contract_names(mlp_export: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            await call(s, "POST", base + "/v1/models/m:predict", {"instances": GOOD})
            await call(s, "POST", base + "/v2/models/m/infer", mlp_v2(GOOD))
            await call(s, "POST", base + "/v2/models/m/infer", {})
            await call(s, "POST", base + "/v2/models/zzz/infer", {})
            status, metrics, headers = await call(s, "GET", base + "/metrics")
            assert status == 200 and headers["Content-Type"].startswith("text/plain")
        declared = {
            line.split()[2]: line.split()[3]
            for line in metrics.splitlines()
            if line.startswith("# TYPE ") and not line.split()[2].endswith("_created")
        }
        assert declared == SERVE_METRICS
        for sample in [
            'mlserve_requests_total{code="200",model="m",protocol="v1"} 1.0',
            'mlserve_requests_total{code="200",model="m",protocol="v2"} 1.0',
            'mlserve_requests_total{code="400",model="m",protocol="v2"} 1.0',
            'mlserve_requests_total{code="404",model="_unknown",protocol="v2"} 1.0',
            'mlserve_request_duration_seconds_count{code="200",model="m",protocol="v2"} 1.0',
            'mlserve_request_duration_seconds_count{code="400",model="m",protocol="v2"} 1.0',
            'mlserve_batch_size_count{model="m"} 2.0',
            'mlserve_queue_depth{model="m"} 0.0',
            'mlserve_inflight_requests{model="m"} 0.0',  # /metrics itself is not inference
        ]:
            assert sample in metrics, sample

    run(checks)


def test_drain_finishes_requests_in_flight(mlp_export: Path) -> None:
    async def checks() -> None:
        slow = SlowPredictor(load_and_warm(mlp_export, CPU, 1), delay=0.3)
        server = InferenceServer("m", max_batch_size=1)
        server.attach(cast(Predictor, slow))
        runner = server.runner(shutdown_timeout=10)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as s:
            inflight = [
                asyncio.create_task(
                    call(s, "POST", base + "/v1/models/m:predict", {"instances": GOOD})
                )
                for _ in range(3)
            ]
            await asyncio.sleep(0.1)
            server.begin_drain()
            status, payload, _ = await call(s, "GET", base + "/v2/health/ready")
            assert (status, payload) == (503, {"ready": False})
            await runner.cleanup()  # what SIGTERM runs: stop listening, wait for handlers
            results = await asyncio.gather(*inflight)
        assert [status for status, _, _ in results] == [200, 200, 200]
        await server.close()

    run(checks)


def test_sigterm_drains_and_exits_0(tmp_path: Path, background: list[Running]) -> None:
    # Heavy enough that 16 requests of 32 rows take several hundred ms on one thread.
    config = MLPConfig(in_features=512, hidden=2048, depth=3, classes=10)
    torch.manual_seed(0)
    export_model(build_model(config), config, tmp_path, {})
    port = free_port()
    server = start(
        [
            sys.executable,
            "-m",
            "workloads.runtime.serve",
            "--model-dir",
            str(tmp_path),
            "--model-name",
            "big",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            "1",
            "--shutdown-delay-s",
            "0.5",
        ],
        runtime_env(),
    )
    background.append(server)
    base = f"http://127.0.0.1:{port}"

    async def checks() -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    if (await call(s, "GET", base + "/v2/health/ready"))[0] == 200:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("server never became ready")
            rows = [[0.5] * 512] * 32
            finished: list[float] = []

            async def request() -> tuple[int, Any, dict[str, str]]:
                result = await call(s, "POST", base + "/v1/models/big:predict", {"instances": rows})
                finished.append(time.monotonic())
                return result

            inflight = [asyncio.create_task(request()) for _ in range(16)]
            # SIGTERM once the server has received all 16 (on a busy machine the
            # client may still be encoding the last bodies after a fixed sleep).
            for _ in range(1000):
                _, metrics, _ = await call(s, "GET", base + "/metrics")
                values = dict(
                    line.rsplit(" ", 1) for line in metrics.splitlines() if line[0] != "#"
                )
                done = float(
                    values.get('mlserve_requests_total{code="200",model="big",protocol="v1"}', 0)
                )
                if done + float(values['mlserve_inflight_requests{model="big"}']) >= 16:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the server never received the 16 requests")
            server.signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.1)
            status, payload, _ = await call(s, "GET", base + "/v2/health/ready")
            assert (status, payload) == (503, {"ready": False})
            results = await asyncio.gather(*inflight)
            assert [status for status, _, _ in results] == [200] * 16
            assert all(len(p["predictions"]) == 32 for _, p, _ in results)
            assert max(finished) > signalled, "no request was in flight at SIGTERM"

    run(checks)
    code, _ = server.finish(timeout=30)
    assert code == 0
    assert "draining: ready=false" in server.err and "stopped" in server.err


def test_bad_model_dir_exits_2_without_traceback(tmp_path: Path) -> None:
    from .conftest import run_module

    result = run_module(
        "workloads.runtime.serve",
        "--model-dir",
        str(tmp_path),
        "--model-name",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"serve: error: {tmp_path}/config.json is missing: not an exported model directory"
    )
