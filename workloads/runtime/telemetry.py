"""Where train.py's progress goes: JSON lines, Prometheus gauges, MLflow.

Each sink fails soft: a port already in use, MLflow missing or its server
down costs a warning, never the training run.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .common import emit

log = logging.getLogger("mlruntime.telemetry")


class PrometheusSink:
    """The contract.TRAIN_METRICS gauges, served on /metrics of `port`."""

    def __init__(self, port: int) -> None:
        from prometheus_client import (  # noqa: PLC0415 (only the exporting rank needs it)
            CollectorRegistry,
            Counter,
            Gauge,
            start_http_server,
        )

        self.registry = CollectorRegistry()
        self.step = Gauge("mltrain_step", "Optimizer steps completed", registry=self.registry)
        self.loss = Gauge("mltrain_loss", "Training loss (mean over ranks)", registry=self.registry)
        self.samples = Gauge(
            "mltrain_samples_per_second", "Samples/s, all ranks", registry=self.registry
        )
        self.gpu_memory = Gauge(
            "mltrain_gpu_memory_allocated_bytes",
            "torch.cuda.memory_allocated() of this process",
            registry=self.registry,
        )
        self.checkpoints = Counter(
            "mltrain_checkpoints", "Checkpoints written", registry=self.registry
        )
        self.server = None
        try:
            self.server, _ = start_http_server(port, registry=self.registry)
        except OSError as exc:
            log.warning("metrics disabled: cannot listen on port %d: %s", port, exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


class MlflowSink:
    """Logs params and metrics to MLFLOW_TRACKING_URI; resumes the same run."""

    def __init__(self, run_id: str | None, run_name: str, params: dict[str, Any]) -> None:
        self.run_id: str | None = None
        try:
            import mlflow  # noqa: PLC0415 (optional, and slow to import)
        except ImportError:
            log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed; not logging")
            return
        self.mlflow = mlflow
        try:
            run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
            self.run_id = run.info.run_id
            if run_id is None:
                mlflow.log_params(params)
        except Exception as exc:
            self._disable(exc)

    def _disable(self, exc: Exception) -> None:
        log.warning("MLflow logging disabled after an error: %s", exc)
        self.run_id = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run_id is None:
            return
        try:
            self.mlflow.log_metrics(metrics, step=step)
        except Exception as exc:
            self._disable(exc)

    def close(self, status: str) -> None:
        if self.run_id is None:
            return
        try:
            self.mlflow.end_run(status=status)
        except Exception as exc:
            self._disable(exc)


class Telemetry:
    """One call per logged step fans out to every enabled sink."""

    def __init__(
        self,
        *,
        rank: int,
        local_rank: int,
        metrics_port: int,
        mlflow_run_id: str | None,
        run_name: str,
        params: dict[str, Any],
    ) -> None:
        self.rank = rank
        self.prometheus = PrometheusSink(metrics_port) if metrics_port and local_rank == 0 else None
        self.mlflow = (
            MlflowSink(mlflow_run_id, run_name, params)
            if rank == 0 and os.environ.get("MLFLOW_TRACKING_URI")
            else None
        )

    @property
    def mlflow_run_id(self) -> str | None:
        return self.mlflow.run_id if self.mlflow else None

    def step(self, step: int, loss: float, samples_per_s: float, **extra: Any) -> None:
        if self.prometheus:
            self.prometheus.step.set(step)
            self.prometheus.loss.set(loss)
            self.prometheus.samples.set(samples_per_s)
            self.prometheus.gpu_memory.set(extra.get("gpu_memory_bytes", 0))
        if self.rank != 0:
            return
        emit("step", step=step, loss=loss, samples_per_s=round(samples_per_s, 2), **extra)
        if self.mlflow:
            self.mlflow.log({"loss": loss, "samples_per_s": samples_per_s}, step)

    def checkpoint(self, step: int, path: str) -> None:
        if self.prometheus:
            self.prometheus.checkpoints.inc()
        if self.rank == 0:
            emit("checkpoint", step=step, path=path)

    def close(self, status: str) -> None:
        if self.mlflow:
            self.mlflow.close(status)
        if self.prometheus:
            self.prometheus.close()
