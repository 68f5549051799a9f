"""The metric catalog the alerts and dashboards are checked against
(workloads/metric_catalog.py) names only series the runtime really exports."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from workloads import metric_catalog
from workloads.runtime.batch import BatchMetrics
from workloads.runtime.serve import InferenceServer, load_and_warm
from workloads.runtime.telemetry import PrometheusSink

from .conftest import free_port
from .test_serve import CPU, GOOD, call, run, serving


def _series(exposition: str) -> set[str]:
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def test_model_server_exports_every_catalog_series(mlp_export: Path) -> None:
    exported: set[str] = set()

    async def scrape() -> None:
        server = InferenceServer("m")
        server.attach(load_and_warm(mlp_export, CPU, 32))
        async with serving(server) as (base, s):
            await call(s, "POST", base + "/v1/models/m:predict", {"instances": GOOD})
            _, metrics, _ = await call(s, "GET", base + "/metrics")
        exported.update(_series(metrics))

    run(scrape)
    wanted = {n for n in metric_catalog.RUNTIME_SERIES if n.startswith("mlserve_")}
    assert wanted, "the catalog lists serving series"
    assert wanted <= exported, sorted(wanted - exported)


def test_trainer_exports_every_catalog_series() -> None:
    port = free_port()
    sink = PrometheusSink(port)
    try:
        sink.step.set(3)
        sink.loss.set(1.5)
        sink.checkpoints.inc()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            exported = _series(response.read().decode())
    finally:
        sink.close()
    wanted = {n for n in metric_catalog.RUNTIME_SERIES if n.startswith("mltrain_")}
    assert wanted, "the catalog lists training series"
    assert wanted <= exported, sorted(wanted - exported)


def test_batch_exports_every_catalog_series() -> None:
    port = free_port()
    metrics = BatchMetrics(port)
    try:
        metrics.shard_started(files=2)
        metrics.written(8, files_done=1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            exported = _series(response.read().decode())
    finally:
        metrics.close()
    wanted = {n for n in metric_catalog.RUNTIME_SERIES if n.startswith("mlbatch_")}
    assert wanted, "the catalog lists batch series"
    assert wanted <= exported, sorted(wanted - exported)
