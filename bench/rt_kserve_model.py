"""Serve an mlruntime export with KServe's ModelServer, for bench/serve_bench.py.

Runs in its own venv (kserve and its pins stay out of the runtime image) with
the repository root on PYTHONPATH, so it uses the same Predictor as
mlruntime.serve: the comparison is about the serving layer, not the model.

    .venv-kserve/bin/python bench/rt_kserve_model.py --model-dir D --model_name m \\
        --http_port 8081 --enable_grpc false
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import kserve
import torch

from workloads.runtime.device import configure_cpu_threads
from workloads.runtime.inference import Predictor, output_rows


class RuntimeModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.predictor: Predictor | None = None

    def load(self) -> bool:
        self.predictor = Predictor.load(self.model_dir, torch.device("cpu"))
        self.ready = True
        return True

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        assert self.predictor is not None
        sample = self.predictor.parse_instances(payload["instances"])
        (outputs,) = self.predictor.predict([sample])
        return {"predictions": output_rows(outputs)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model-dir", type=Path, required=True)
    args, _ = parser.parse_known_args()
    configure_cpu_threads(reserve=1)  # the same thread budget as mlruntime.serve
    model = RuntimeModel(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False).start([model])
