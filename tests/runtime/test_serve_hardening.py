"""serve.py against hostile and clumsy clients: stalled and slow uploads, read
timeouts, disconnects, oversized bodies, non-finite values, booleans."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import torch

from workloads.runtime.inference import Predictor
from workloads.runtime.models import MLPConfig, build_model, export_model
from workloads.runtime.serve import InferenceServer, load_and_warm

from .test_serve import CPU, GOOD, SlowPredictor, call, mlp_v2, run, serving

PREDICT = "/v1/models/m:predict"
INFER = "/v2/models/m/infer"


async def raw_request(base: str, head: str, body: bytes = b"") -> tuple[Any, Any]:
    """Open a TCP connection and send a request's head and (part of) a body, unfinished."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    return reader, writer


def post_head(path: str, length: int, **headers: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return "\r\n".join(lines) + "\r\n"


async def metric(s: aiohttp.ClientSession, base: str, sample: str) -> float | None:
    _, text, _ = await call(s, "GET", base + "/metrics")
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def wait_metric(s: aiohttp.ClientSession, base: str, sample: str, value: float) -> None:
    for _ in range(200):
        if await metric(s, base, sample) == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sample} never became {value}: {await metric(s, base, sample)}")


def code(status: int, protocol: str = "v1") -> str:
    return f'mlserve_requests_total{{code="{status}",model="m",protocol="{protocol}"}}'


def test_stalled_uploads_hold_no_queue_slot_and_never_delay_a_batch(mlp_export: Path) -> None:
    async def checks() -> None:
        # A 10-minute window: a batch that waited for a stalled upload would not
        # finish within the test's timeout.
        server = InferenceServer("m", max_queue_size=4, max_delay_ms=600_000, read_timeout_s=600)
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            body = b'{"instances": [[' + b"0.5, " * 8
            stalled = [await raw_request(base, post_head(PREDICT, 10_000), body) for _ in range(16)]
            idle = [await raw_request(base, "") for _ in range(64)]
            await asyncio.sleep(0.2)  # the server has seen every head and partial body
            assert server.batcher is not None
            assert (len(server.batcher.queue), server.batcher.arriving) == (0, 0)
            # More stalled uploads than queue slots, yet requests still pass, one by one
            # and several at once (a full queue would answer 503).
            status, out, _ = await call(s, "POST", base + PREDICT, {"instances": GOOD})
            assert status == 200, out
            results = await asyncio.gather(
                *(call(s, "POST", base + INFER, mlp_v2(GOOD)) for _ in range(4))
            )
            assert [r[0] for r in results] == [200] * 4
            for _, writer in stalled + idle:
                writer.close()

    run(checks)


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    mlp_export: Path,
) -> None:
    async def checks() -> None:
        server = InferenceServer("m", read_timeout_s=0.3)
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            reader, writer = await raw_request(base, post_head(PREDICT, 1000), b'{"inst')
            answer = await asyncio.wait_for(reader.read(), timeout=20)  # read() = until EOF
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), answer
            assert b"Connection: close" in head
            assert b"not received within 0.3s (got 6 bytes; --read-timeout-s)" in body
            writer.close()
            assert await metric(s, base, code(408)) == 1.0
            status, _, _ = await call(s, "POST", base + PREDICT, {"instances": GOOD})
            assert status == 200

    run(checks)


def test_slow_headers_and_idle_connections_are_closed_after_the_idle_timeout(
    mlp_export: Path,
) -> None:
    """aiohttp alone keeps a connection that never finishes its headers for an hour."""

    async def checks() -> None:
        server = InferenceServer("m", idle_timeout_s=0.5)
        server.attach(load_and_warm(mlp_export, CPU, 32))
        loop = asyncio.get_running_loop()
        async with serving(server) as (base, s):
            # Headers started, never finished (slowloris): closed, nothing answered.
            started = loop.time()
            reader, writer = await raw_request(base, f"POST {PREDICT} HTTP/1.1\r\nHost: t")
            assert await asyncio.wait_for(reader.read(), timeout=20) == b""
            assert 0.4 <= loop.time() - started < 10
            writer.close()
            # A keep-alive connection idle after its answer: closed the same way.
            body = json.dumps({"instances": GOOD}).encode()
            reader, writer = await raw_request(base, post_head(PREDICT, len(body)), body)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            started = loop.time()
            assert await asyncio.wait_for(reader.read(), timeout=20) == b""
            assert loop.time() - started < 10
            writer.close()
            # A connection that keeps sending requests is not cut off.
            for _ in range(4):
                await asyncio.sleep(0.2)
                status, _, _ = await call(s, "POST", base + PREDICT, {"instances": GOOD})
                assert status == 200

    run(checks)


def test_a_slow_upload_within_the_timeout_is_served(mlp_export: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("m", read_timeout_s=30)
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, _):
            body = b'{"instances": [[' + b", ".join([b"0.25"] * 16) + b"]]}"
            reader, writer = await raw_request(base, post_head(PREDICT, len(body)))
            for i in range(0, len(body), 7):  # dribbled in small pieces
                writer.write(body[i : i + 7])
                await writer.drain()
                await asyncio.sleep(0.01)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
            assert head.startswith(b"HTTP/1.1 200"), head
            writer.close()

    run(checks)


def test_a_client_leaving_mid_body_is_one_info_line_and_counted_499(
    mlp_export: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            _, writer = await raw_request(base, post_head(INFER, 5000), b'{"inputs": [')
            await asyncio.sleep(0.1)
            writer.close()
            await wait_metric(s, base, code(499, "v2"), 1.0)
            assert await metric(s, base, 'mlserve_inflight_requests{model="m"}') == 0.0
            assert server.batcher is not None and server.batcher.arriving == 0

    with caplog.at_level(logging.DEBUG):
        run(checks)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, [r.getMessage() for r in problems]
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert lines[0].exc_info is None
    assert (
        lines[0]
        .getMessage()
        .endswith(
            "disconnected after sending 12 bytes of its request body (POST /v2/models/m/infer); "
            "counted as 499"
        )
    )


def test_a_client_gone_while_queued_is_not_computed_and_counted_499(
    mlp_export: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def checks() -> None:
        slow = SlowPredictor(load_and_warm(mlp_export, CPU, 1), delay=0.5)
        server = InferenceServer("m", max_batch_size=1)
        server.attach(cast(Predictor, slow))
        async with serving(server) as (base, s):
            first = asyncio.create_task(call(s, "POST", base + PREDICT, {"instances": GOOD}))
            await asyncio.sleep(0.1)  # the first request is in its forward pass
            body = b'{"instances": [' + str(GOOD[0]).encode() + b"]}"
            _, writer = await raw_request(base, post_head(PREDICT, len(body)), body)
            await asyncio.sleep(0.1)  # the second is queued behind it
            writer.close()
            assert (await first)[0] == 200
            await wait_metric(s, base, code(499), 1.0)
            assert slow.batches == [1], "the gone client's request was computed"

    with caplog.at_level(logging.INFO):
        run(checks)
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "while its request was queued" in lines[0], lines


def test_oversized_bodies_get_413_with_and_without_content_length(mlp_export: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("m", max_request_bytes=1000)
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            big = json.dumps({"instances": [[0.123456789] * 16] * 8}).encode()
            status, payload, _ = await call(s, "POST", base + PREDICT, big)
            assert status == 413
            assert payload["error"] == (
                f"request body is {len(big)} bytes; this server takes at most 1000 "
                f"(--max-request-bytes)"
            )

            async def chunks() -> Any:  # no Content-Length: chunked transfer encoding
                for _ in range(40):
                    yield b" " * 100

            async with s.post(base + INFER, data=chunks()) as response:
                assert response.status == 413
                assert (await response.json())["error"] == (
                    "request body exceeds 1000 bytes (--max-request-bytes)"
                )
            assert await metric(s, base, code(413)) == 1.0
            assert await metric(s, base, code(413, "v2")) == 1.0
            assert server.batcher is not None and server.batcher.arriving == 0
            status, _, _ = await call(s, "POST", base + PREDICT, {"instances": GOOD})
            assert status == 200

    run(checks)


def test_a_malformed_chunked_body_gets_400_and_one_log_line(
    mlp_export: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, _):
            head = f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            reader, writer = await raw_request(base, head, b"zz\r\nnot hex\r\n")
            answer = await asyncio.wait_for(reader.read(), timeout=20)
            assert answer.split(b" ", 2)[1] == b"400", answer
            assert b"Invalid character in chunk size" in answer
            writer.close()

    with caplog.at_level(logging.INFO):
        run(checks)
    (line,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert (line.levelno, line.exc_info) == (logging.INFO, None)
    assert "malformed HTTP request (400): Invalid character in chunk size" in line.getMessage()


def overflowing_export(directory: Path) -> Path:
    """An MLP whose outputs overflow to Inf/NaN for inputs of 1 but are 0 for inputs of 0."""
    torch.manual_seed(0)
    config = MLPConfig()
    model = build_model(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.abs_().mul_(1e15)
                module.bias.zero_()
    export_model(model, config, directory, {})
    return directory


def test_non_finite_outputs_are_a_500_not_null(tmp_path: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(overflowing_export(tmp_path), CPU, 32))
        async with serving(server) as (base, s):
            status, out, _ = await call(s, "POST", base + INFER, mlp_v2([[0.0] * 16]))
            assert status == 200 and out["outputs"][0]["data"] == [0.0] * 4
            for path, body in [
                (INFER, mlp_v2([[1.0] * 16])),
                (INFER, mlp_v2([[1.0] * 16], outputs=[{"name": "label"}])),
                (PREDICT, {"instances": [[0.0] * 16, [1.0] * 16]}),
            ]:
                status, out, _ = await call(s, "POST", base + path, body)
                assert status == 500, out
                assert out["error"].startswith(
                    "the model produced NaN or Inf in output 'logits' for this request"
                )
            # Requests batched together with a bad one keep their answers.
            results = await asyncio.gather(
                *(
                    call(s, "POST", base + PREDICT, {"instances": [[float(i % 2)] * 16]})
                    for i in range(16)
                )
            )
            assert [r[0] for r in results] == [200, 500] * 8
            assert await metric(s, base, code(500)) == 9.0

    run(checks)


HUGE = 1e39  # beyond FP32's largest finite value, 3.4028235e38


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (INFER, mlp_v2([[HUGE] + [0.0] * 15]), "data: value at index 0 is inf as FP32"),
        (INFER, mlp_v2([[0.0] * 15 + [-HUGE]]), "data: value at index 15 is -inf as FP32"),
        (
            PREDICT,
            {"instances": [GOOD[0], [0.0] * 3 + [10**40] + [0.0] * 12]},
            "instances[1]: value at index 3 is inf",
        ),
        (
            INFER,
            {
                "inputs": [
                    {"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [[HUGE] * 16]}
                ]
            },
            "value at index [0, 0] is inf as FP32; inputs must be finite numbers within the FP32",
        ),
        (INFER, mlp_v2([[True] + [0.0] * 15]), "data holds JSON booleans (true/false)"),
        (PREDICT, {"instances": [[0.0] * 15 + [False]]}, "instances[0] holds JSON booleans"),
        (
            INFER,
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 16],
                        "datatype": "FP32",
                        "data": [[0.0] * 16, [0.0] * 15 + [True]],
                    }
                ]
            },
            "holds JSON booleans",
        ),
    ],
)
def test_out_of_range_and_boolean_inputs_get_400(
    mlp_export: Path, path: str, body: Any, message: str
) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            status, payload, _ = await call(s, "POST", base + path, body)
            assert status == 400, payload
            assert message in payload["error"], payload
            assert server.batcher is not None and server.batcher.arriving == 0

    run(checks)


def test_json_booleans_are_not_token_ids(lm_export: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("lm")
        server.attach(load_and_warm(lm_export, CPU, 32))
        async with serving(server) as (base, s):
            status, payload, _ = await call(
                s, "POST", base + "/v1/models/lm:predict", {"instances": [[5, True, 7]]}
            )
            assert status == 400
            assert payload["error"] == (
                "instances[0] holds JSON booleans (true/false); it must hold only integers"
            )
            # "true" inside a string is not a boolean: the request is served.
            status, _, _ = await call(
                s,
                "POST",
                base + "/v2/models/lm/infer",
                {
                    "id": "true-false",
                    "inputs": [
                        {"name": "input", "shape": [1, 3], "datatype": "INT64", "data": [5, 6, 7]}
                    ],
                },
            )
            assert status == 200

    run(checks)
