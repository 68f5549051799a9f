"""The binary tensor data extension, with Triton's official HTTP client and by hand."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from workloads.runtime.models import load_model
from workloads.runtime.serve import InferenceServer, load_and_warm

from .test_serve import CPU, call, run, serving

INFER = "/v2/models/m/infer"


def test_tritonclient_default_binary_mode_and_json_mixes(mlp_export: Path) -> None:
    _, model = load_model(mlp_export, CPU)
    rows = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    expected = model(torch.from_numpy(rows)).detach().numpy()

    def client_calls(url: str) -> None:  # tritonclient is synchronous: a thread
        client = triton.InferenceServerClient(url)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("m") and client.is_model_ready("m", "1")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata("m")
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]

        # Default mode: binary input, no outputs named (binary_data_output).
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer("m", [tensor], request_id="r1")
        assert result.get_response()["id"] == "r1"
        for output in result.get_response()["outputs"]:
            assert "data" not in output and output["parameters"]["binary_data_size"] > 0
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-6)
        assert result.as_numpy("label").tolist() == expected.argmax(-1).tolist()
        assert result.as_numpy("label").dtype == np.int64

        # Binary input, one output as JSON and one binary; a versioned path.
        outputs = [
            triton.InferRequestedOutput("label", binary_data=False),
            triton.InferRequestedOutput("logits", binary_data=True),
        ]
        result = client.infer("m", [tensor], model_version="1", outputs=outputs)
        label, logits = result.get_response()["outputs"]
        assert label["data"] == expected.argmax(-1).tolist()
        assert logits["parameters"] == {"binary_data_size": 3 * 4 * 4}
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-6)

        # JSON input, binary output.
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=False)
        result = client.infer("m", [tensor], outputs=[triton.InferRequestedOutput("logits")])
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-6)

        # Errors come back as Triton client exceptions with the server's message.
        wrong = triton.InferInput("input", [1, 15], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
        with pytest.raises(InferenceServerException, match="expects 16"):
            client.infer("m", [wrong])
        bad = triton.InferInput("input", [1, 16], "FP32")
        bad.set_data_from_numpy(np.full((1, 16), np.nan, dtype=np.float32))
        with pytest.raises(InferenceServerException, match="data: value at index 0 is nan as FP32"):
            client.infer("m", [bad])
        with pytest.raises(InferenceServerException, match="unknown version '2'"):
            client.infer("m", [tensor], model_version="2")
        client.close()

    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, _):
            await asyncio.to_thread(client_calls, base.removeprefix("http://"))

    run(checks)


def test_tritonclient_token_ids_as_int32_and_int64(lm_export: Path) -> None:
    _, model = load_model(lm_export, CPU)
    prompt = [[5, 6, 7, 8]]
    want = int(model(torch.tensor(prompt))[0, -1].argmax())

    def client_calls(url: str) -> None:
        client = triton.InferenceServerClient(url)
        for datatype, dtype in (("INT64", np.int64), ("INT32", np.int32)):
            tensor = triton.InferInput("input", [1, 4], datatype)
            tensor.set_data_from_numpy(np.array(prompt, dtype=dtype))
            result = client.infer("lm", [tensor])
            assert result.as_numpy("next_token").tolist() == [want], datatype
        client.close()

    async def checks() -> None:
        server = InferenceServer("lm")
        server.attach(load_and_warm(lm_export, CPU, 32))
        async with serving(server) as (base, _):
            await asyncio.to_thread(client_calls, base.removeprefix("http://"))

    run(checks)


def binary_request(header: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def tensor_header(size: int | None, **extra: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "input", "shape": [1, 16], "datatype": "FP32", **extra}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    return {"inputs": [tensor]}


ROW = struct.pack("<16f", *([0.5] * 16))


@pytest.mark.parametrize(
    ("header", "data", "headers", "message"),
    [
        (tensor_header(64), ROW, {"Inference-Header-Content-Length": "x1"}, "must be an integer"),
        (tensor_header(64), ROW, {"Inference-Header-Content-Length": "99999"}, "body has"),
        (
            tensor_header(60),
            ROW[:60],
            None,
            "has 60 bytes of binary data but 16 FP32 values need 64",
        ),
        (tensor_header(64), ROW + b"\0" * 4, None, "4 bytes of binary data that no input claims"),
        (tensor_header(128), ROW, None, "is 128 but only 64 bytes of binary data remain"),
        (tensor_header(-1), ROW, None, "must be a non-negative integer, got -1"),
        (tensor_header(64, data=[0.0] * 16), ROW, None, "both 'data' and binary_data_size"),
        (tensor_header(64), struct.pack("<16f", *([float("inf")] * 16)), None, "is inf as FP32"),
        (
            {**tensor_header(64), "outputs": [{"name": "label", "parameters": {"binary_data": 1}}]},
            ROW,
            None,
            "outputs[0].parameters.binary_data must be true or false, got 1",
        ),
        (
            {**tensor_header(64), "parameters": {"binary_data_output": "yes"}},
            ROW,
            None,
            "parameters.binary_data_output must be true or false",
        ),
        (
            {
                **tensor_header(64),
                "outputs": [{"name": "label", "parameters": {"classification": 2}}],
            },
            ROW,
            None,
            "classification extension is not supported",
        ),
    ],
)
def test_malformed_binary_requests_get_400_naming_the_problem(
    mlp_export: Path,
    header: dict[str, Any],
    data: bytes,
    headers: dict[str, str] | None,
    message: str,
) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        body, default_headers = binary_request(header, data)
        async with serving(server) as (base, s):
            async with s.post(base + INFER, data=body, headers=headers or default_headers) as r:
                payload = await r.json()
                assert r.status == 400, payload
            assert message in payload["error"], payload
            assert server.batcher is not None and server.batcher.arriving == 0

    run(checks)


def test_binary_data_without_the_header_is_explained(mlp_export: Path) -> None:
    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        body, _ = binary_request(tensor_header(64), ROW)
        async with serving(server) as (base, s):
            status, payload, _ = await call(s, "POST", base + INFER, body)
            assert status == 400
            assert payload["error"].startswith("request body is not valid JSON")
            assert payload["error"].endswith(
                "(binary tensor data needs the Inference-Header-Content-Length header)"
            )
            status, payload, _ = await call(s, "POST", base + INFER, tensor_header(64))
            assert status == 400
            assert "no Inference-Header-Content-Length header" in payload["error"]
            status, payload, _ = await call(s, "POST", base + "/v1/models/m:predict", body)
            assert status == 400  # v1 has no binary extension
            headers = {"Inference-Header-Content-Length": "10"}
            async with s.post(base + "/v1/models/m:predict", data=body, headers=headers) as r:
                assert r.status == 400
                assert "a v2 extension, not v1" in (await r.json())["error"]

    run(checks)


def test_json_request_may_ask_for_binary_outputs(mlp_export: Path) -> None:
    _, model = load_model(mlp_export, CPU)
    expected = model(torch.full((1, 16), 0.5))[0]

    async def checks() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        request = {
            "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}],
            "parameters": {"binary_data_output": True},
            "outputs": [
                {"name": "logits"},
                {"name": "label", "parameters": {"binary_data": False}},
            ],
        }
        async with serving(server) as (base, s):
            response = await s.post(base + INFER, json=request)
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/octet-stream"
            length = int(response.headers["Inference-Header-Content-Length"])
            body = await response.read()
        header = json.loads(body[:length])
        logits, label = header["outputs"]
        assert logits["parameters"] == {"binary_data_size": 16} and "data" not in logits
        assert label["data"] == [int(expected.argmax())]
        values = struct.unpack("<4f", body[length:])
        assert torch.allclose(torch.tensor(values), expected, atol=1e-6)

    run(checks)
