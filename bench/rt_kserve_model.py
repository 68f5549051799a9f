"""Serve an mlruntime export with KServe's ModelServer, for bench/serve_bench.py.

Runs in its own venv (kserve and its pins stay out of the runtime image) with
the repository root on PYTHONPATH, so it uses the same Predictor (parsing,
validation, forward pass) as mlruntime.serve: the comparison is about the
serving layer, not the model. v1 and v2 (JSON and binary tensor data).

KServe's per-request logging is off, as mlruntime.serve has none: the
uvicorn access log, the two "kserve.trace" timing lines of its timing
middleware and the latency log (together about 40% of KServe's throughput
on a small model). `--request-logs` turns the first two back on, to measure
what they cost.

    .venv-kserve/bin/python bench/rt_kserve_model.py --model-dir D --model_name m \\
        --http_port 8081 --enable_grpc false
"""

from __future__ import annotations

import argparse
import logging
import uuid
from pathlib import Path
from typing import Any

import kserve
import torch
from kserve import InferOutput, InferRequest, InferResponse

from workloads.runtime.device import configure_cpu_threads
from workloads.runtime.inference import Predictor, RawData, output_rows


class RuntimeModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.predictor: Predictor | None = None

    def load(self) -> bool:
        self.predictor = Predictor.load(self.model_dir, torch.device("cpu"))
        self.ready = True
        return True

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        assert self.predictor is not None
        if isinstance(payload, InferRequest):
            return self._predict_v2(payload)
        sample = self.predictor.parse_instances(payload["instances"])
        (outputs,) = self.predictor.predict([sample])
        return {"predictions": output_rows(outputs)}

    def _predict_v2(self, request: InferRequest) -> InferResponse:
        assert self.predictor is not None
        (tensor,) = request.inputs
        binary = bool(tensor.parameters and "binary_data_size" in tensor.parameters)
        data = RawData(tensor.as_numpy().tobytes()) if binary else tensor.data
        spec = {"name": tensor.name, "shape": tensor.shape, "datatype": tensor.datatype}
        sample = self.predictor.parse_v2([{**spec, "data": data}])
        (outputs,) = self.predictor.predict([sample])
        as_binary = request.use_binary_outputs
        infer_outputs = []
        for spec in self.predictor.output_specs():
            values = outputs[spec.name]
            output = InferOutput(spec.name, list(values.shape), spec.datatype)
            output.set_data_from_numpy(values.numpy(), binary_data=as_binary)
            infer_outputs.append(output)
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),  # as mlruntime.serve does
            model_name=self.name,
            infer_outputs=infer_outputs,
            use_binary_outputs=as_binary,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument(
        "--request-logs", action="store_true", help="keep the access log and timing lines"
    )
    args, _ = parser.parse_known_args()
    configure_cpu_threads(reserve=1)  # the same thread budget as mlruntime.serve
    model = RuntimeModel(args.model_name, args.model_dir)
    model.load()
    server = kserve.ModelServer(
        http_port=args.http_port, enable_grpc=False, enable_latency_logging=False
    )
    if not args.request_logs:
        # uvicorn logs each request when the "uvicorn.access" logger has handlers
        # (KServe's logging config gives it one); none, and it skips the work.
        access = logging.getLogger("uvicorn.access")
        access.handlers.clear()
        access.propagate = False
        # KServe's timing middleware logs two INFO lines per request here.
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([model])
