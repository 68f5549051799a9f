"""Inference services by runtime: the vLLM and Triton presets and own (`custom`)
servers render their ports, probes, metrics endpoints, HPA metric, adapter rule,
monitors and network openings; bad runtime config exits 2 with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_config_error, pod_spec, run
from tests.test_workloads import ROLE, stack
from tools.offline import Run
from workloads import serving

VLLM = {
    "kind": "inference",
    "runtime": "vllm",
    "name": "chat",
    "team": "ml",
    "gpus": 4,
    "cpu": "16",
    "memory": "96Gi",
    "accelerators": ["nvidia-l4"],
    "model": {"uri": "s3://models/llm/v1", "cacheSize": "60Gi"},
    "modelName": "llama",
    "iamRoleArn": ROLE,
    "minReplicas": 1,
    "maxReplicas": 2,
    "targetCpuUtilization": None,
    "customMetric": {"targetAverageValue": "4"},
    "vllm": {"maxModelLen": 32768, "gpuMemoryUtilization": 0.85},
    "args": ["--max-num-seqs=64"],
}
TRITON = {
    "kind": "inference",
    "runtime": "triton",
    "name": "vision",
    "team": "ml",
    "gpus": 1,
    "memory": "16Gi",
    "model": {"claim": "triton-repo", "subPath": "repo"},
    "minReplicas": 2,
    "maxReplicas": 4,
    "customMetric": {"name": "nv_inference_pending_request_count", "targetAverageValue": "10"},
}
CUSTOM = {
    "kind": "inference",
    "runtime": "custom",
    "name": "tfs",
    "team": "ml",
    "image": "tensorflow/serving:2.17.0",
    "args": ["--port=8500", "--rest_api_port=8501"],
    "ports": [
        {"name": "rest", "port": 8501},
        {"name": "grpc", "port": 8500, "protocol": "grpc"},
        {"name": "prom", "port": 9102},
    ],
    "probes": {
        "startup": {"path": "/v1/models/m", "port": "rest", "failureThreshold": 60},
        "readiness": {"path": "/v1/models/m", "periodSeconds": 5},
        "liveness": {"grpc": True, "periodSeconds": 15, "failureThreshold": 4},
    },
    "metrics": {"port": "prom", "path": "/monitoring/prometheus/metrics"},
    "customMetric": {
        "name": "tfs_request_latency",
        "series": ":tensorflow:serving:request_latency",
        "type": "histogram",
        "targetAverageValue": "50m",
    },
}


@pytest.fixture(scope="module")
def presets() -> Run:
    return run(stack(VLLM, TRITON, CUSTOM))


def _container(r: Run, name: str) -> dict[str, Any]:
    (c,) = pod_spec(r.manifest("Deployment", name, "ml"))["containers"]
    return c


def _adapter_rules(r: Run) -> dict[str, dict[str, Any]]:
    release = r.one("kubernetes:helm.sh/v3:Release", "mlplatform-monitoring-adapter")
    return {rule["name"]["as"]: rule for rule in release.inputs["values"]["rules"]["custom"]}


def _monitor(r: Run, name: str) -> dict[str, Any]:
    m: dict[str, Any] = r.manifest("PodMonitor", name, "monitoring")
    return m["spec"]


def _hpa_metric(r: Run, name: str) -> dict[str, Any]:
    (m,) = [
        m
        for m in r.manifest("HorizontalPodAutoscaler", name, "ml")["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    return m["pods"]


def test_vllm_preset(presets: Run) -> None:
    c = _container(presets, "chat")
    assert c["image"] == serving.VLLM_IMAGE and "@sha256:" in c["image"]
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == [
        "/models",
        "--served-model-name=llama",
        "--host=0.0.0.0",
        "--port=8000",
        "--tensor-parallel-size=4",  # = gpus
        "--max-model-len=32768",
        "--gpu-memory-utilization=0.85",
        "--max-num-seqs=64",
    ]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for kind in ("startup", "readiness", "liveness"):
        assert c[f"{kind}Probe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == "/tmp" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CACHE_ROOT"].startswith("/tmp/") and env["VLLM_NO_USAGE_STATS"] == "1"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    pod = pod_spec(presets.manifest("Deployment", "chat", "ml"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == serving.VLLM_SCRATCH
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model"] == {"name": "model", "emptyDir": {"sizeLimit": "60Gi"}}
    assert [i["name"] for i in pod["initContainers"]] == ["fetch-model"]
    annotations = presets.manifest("Deployment", "chat", "ml")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/port"] == "8000"
    # HPA on vLLM's queue, served by the adapter from the vllm:* series.
    hpa = presets.manifest("HorizontalPodAutoscaler", "chat", "ml")["spec"]
    assert [m["type"] for m in hpa["metrics"]] == ["Pods"]
    assert _hpa_metric(presets, "chat") == {
        "metric": {"name": "vllm_num_requests_waiting"},
        "target": {"type": "AverageValue", "averageValue": "4"},
    }
    rule = _adapter_rules(presets)["vllm_num_requests_waiting"]
    assert rule["seriesQuery"] == 'vllm:num_requests_waiting{namespace!="",pod!=""}'
    assert rule["name"]["matches"] == "^vllm:num_requests_waiting$"
    monitor = _monitor(presets, "inference-ml-chat")
    assert monitor["namespaceSelector"] == {"matchNames": ["ml"]}
    assert monitor["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "chat"
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["relabelings"][0]["targetLabel"] == "service"
    svc = presets.manifest("Service", "chat", "ml")["spec"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["ports"]] == [("http", 80, "http")]
    assert presets.outputs["inferenceEndpoints"]["ml/chat"]["protocol"] == "openai"


def test_triton_preset(presets: Run) -> None:
    c = _container(presets, "vision")
    assert c["image"] == serving.TRITON_IMAGE and "@sha256:" in c["image"]
    assert c["command"] == ["tritonserver"]
    assert "--model-repository=/models" in c["args"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {"name": "model", "mountPath": "/models", "readOnly": True, "subPath": "repo"} in c[
        "volumeMounts"
    ]
    # The Service carries HTTP (as 80) and gRPC, not the metrics port.
    svc = presets.manifest("Service", "vision", "ml")["spec"]
    assert [(p["name"], p["port"], p["appProtocol"]) for p in svc["ports"]] == [
        ("http", 80, "http"),
        ("grpc", 8001, "kubernetes.io/h2c"),
    ]
    ingress = presets.manifest("NetworkPolicy", "vision-ingress", "ml")["spec"]["ingress"]
    assert [p["port"] for p in ingress[0]["ports"]] == [8000, 8001]
    (endpoint,) = _monitor(presets, "inference-ml-vision")["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert _hpa_metric(presets, "vision")["metric"] == {
        "name": "nv_inference_pending_request_count"
    }
    assert "nv_inference_pending_request_count" in _adapter_rules(presets)


def test_custom_server(presets: Run) -> None:
    c = _container(presets, "tfs")
    assert "command" not in c  # the image's entrypoint
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/models/m", "port": "rest"}
    assert c["readinessProbe"]["periodSeconds"] == 5
    assert c["startupProbe"]["failureThreshold"] == 60
    # gRPC probes take a port number (Kubernetes has no named gRPC probe port).
    assert c["livenessProbe"]["grpc"] == {"port": 8500}
    assert c["livenessProbe"]["failureThreshold"] == 4
    svc = presets.manifest("Service", "tfs", "ml")["spec"]
    assert [(p["name"], p["port"]) for p in svc["ports"]] == [("rest", 80), ("grpc", 8500)]
    (endpoint,) = _monitor(presets, "inference-ml-tfs")["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("prom", "/monitoring/prometheus/metrics")
    # The team admits Prometheus on each service's metrics port, clients on the
    # serving ports.
    scrape = presets.manifest("NetworkPolicy", "allow-monitoring-scrape", "ml")["spec"]
    scraped = {p["port"] for p in scrape["ingress"][0]["ports"]}
    assert {8000, 8002, 9102} <= scraped
    same_ns = presets.manifest("NetworkPolicy", "allow-same-namespace", "ml")["spec"]
    assert {8501, 8500, 8000, 8001} <= {p["port"] for p in same_ns["ingress"][0]["ports"]}
    # A histogram is served as its average: sum / count.
    rule = _adapter_rules(presets)["tfs_request_latency"]
    assert rule["seriesQuery"] == ':tensorflow:serving:request_latency_sum{namespace!="",pod!=""}'
    assert ":tensorflow:serving:request_latency_count{<<.LabelMatchers>>}" in rule["metricsQuery"]
    assert _hpa_metric(presets, "tfs")["metric"] == {"name": "tfs_request_latency"}
    out = presets.outputs["inferenceEndpoints"]["ml/tfs"]
    assert (out["protocol"], out["runtime"]) == ("custom", "custom")


def test_alerts_only_for_runtimes_whose_metrics_are_known(presets: Run) -> None:
    rule = presets.manifest("PrometheusRule", "mlplatform", "monitoring")
    by_service: dict[str, set[str]] = {}
    for group in rule["spec"]["groups"]:
        for a in group["rules"]:
            service = a["labels"].get("service")
            if service:
                by_service.setdefault(service, set()).add(a["alert"])
    assert by_service == {
        "chat": {
            "VllmTimeToFirstTokenOverSlo",
            "VllmInterTokenLatencyOverSlo",
            "VllmKvCacheNearlyFull",
            "VllmQueueBacklog",
        },
        "vision": {"TritonLatencyOverSlo", "TritonErrorRatio", "TritonQueueBacklog"},
    }  # the custom server exports names the platform does not know: no alerts


def test_a_counter_metric_is_a_rate() -> None:
    r = run(
        stack(
            CUSTOM
            | {
                "customMetric": {
                    "name": "http_requests",
                    "series": "http_requests_total",
                    "type": "counter",
                    "targetAverageValue": "100",
                }
            }
        )
    )
    rule = _adapter_rules(r)["http_requests"]
    assert rule["metricsQuery"] == (
        "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)"
    )


BAD = [
    (
        "unknown-hpa-metric",
        {
            "kind": "inference",
            "name": "s",
            "team": "ml",
            "model": {"uri": "s3://m/v1"},
            "customMetric": {"name": "inference_request_duration_seconds"},
        },
        "mlplatform:workloads[0].customMetric.name",
        "no adapter rule serves 'inference_request_duration_seconds'",
    ),
    (
        "custom-metric-without-type",
        CUSTOM | {"customMetric": {"name": "tfs_request_latency"}},
        "mlplatform:workloads[0].customMetric.type",
        "required with runtime `custom`",
    ),
    (
        "custom-metric-not-scraped",
        {k: v for k, v in CUSTOM.items() if k != "metrics"},
        "mlplatform:workloads[0].customMetric",
        "declare `metrics`",
    ),
    (
        "probe-on-undeclared-port",
        CUSTOM
        | {
            "probes": {
                "readiness": {"path": "/ready", "port": "web"},
                "liveness": {"tcp": True},
            }
        },
        "mlplatform:workloads[0].probes.readiness.port",
        "'web' is not a declared port (ports: rest, grpc, prom)",
    ),
    (
        "grpc-probe-on-http-port",
        CUSTOM
        | {"probes": {"readiness": {"path": "/r"}, "liveness": {"grpc": True, "port": "rest"}}},
        "mlplatform:workloads[0].probes.liveness.port",
        "a gRPC probe needs",
    ),
    (
        "metrics-on-undeclared-port",
        CUSTOM | {"metrics": {"port": "metrics"}},
        "mlplatform:workloads[0].metrics.port",
        "not a declared port",
    ),
    (
        "two-checks-in-one-probe",
        CUSTOM | {"probes": {"readiness": {"path": "/r", "tcp": True}, "liveness": {"tcp": True}}},
        "mlplatform:workloads[0].probes.readiness",
        "exactly one of",
    ),
    (
        "vllm-without-gpus",
        VLLM | {"gpus": 0, "accelerators": []},
        "mlplatform:workloads[0].gpus",
        "the vllm runtime needs GPUs",
    ),
    (
        "vllm-without-model",
        {k: v for k, v in VLLM.items() if k != "model"},
        "mlplatform:workloads[0].model",
        "the vllm runtime needs a model",
    ),
    (
        "vllm-hpa-on-another-runtimes-metric",
        VLLM | {"customMetric": {"name": "mlserve_inflight_requests"}},
        "mlplatform:workloads[0].customMetric.name",
        "it serves vllm_num_requests_waiting",
    ),
    (
        "ports-on-a-preset",
        TRITON | {"ports": [{"name": "http", "port": 9000}]},
        "mlplatform:workloads[0].ports",
        "only for an own server",
    ),
    (
        "command-on-a-preset",
        VLLM | {"command": ["python", "-m", "vllm.entrypoints.openai.api_server"]},
        "mlplatform:workloads[0].command",
        "use runtime `custom`",
    ),
    (
        "custom-without-image",
        {k: v for k, v in CUSTOM.items() if k != "image"},
        "mlplatform:workloads[0].image",
        "set `image`",
    ),
    (
        "vllm-settings-on-triton",
        TRITON | {"vllm": {"maxModelLen": 4096}},
        "mlplatform:workloads[0].vllm",
        "only with runtime `vllm`",
    ),
    (
        "duplicate-port-name",
        CUSTOM | {"ports": [{"name": "rest", "port": 8501}, {"name": "rest", "port": 8502}]},
        "mlplatform:workloads[0].ports[1].name",
        "declared twice",
    ),
    (
        "grpc-only-server-without-probes",
        {k: v for k, v in CUSTOM.items() if k not in ("probes", "metrics", "customMetric")}
        | {"ports": [{"name": "grpc", "port": 9000, "protocol": "grpc"}]},
        "mlplatform:workloads[0].probes",
        "declare `probes`",
    ),
    (
        "port-and-ports",
        CUSTOM | {"port": 8080},
        "mlplatform:workloads[0].port",
        "not both",
    ),
]


@pytest.mark.parametrize(
    ("workload", "key_path", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_runtime_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workload: dict[str, Any],
    key_path: str,
    words: str,
) -> None:
    assert_config_error(tmp_path, capsys, stack(workload), key_path, words)


def test_one_metric_name_is_served_one_way() -> None:
    from infra.config_types import ConfigError
    from mlplatform.loading import load_settings

    other = CUSTOM | {
        "name": "tfs2",
        "customMetric": {"name": "tfs_request_latency", "type": "gauge", "series": "x"},
    }
    with pytest.raises(ConfigError) as info:
        load_settings(stack(CUSTOM, other), "dev")
    ((path, message),) = info.value.problems
    assert path == "mlplatform:workloads[1].customMetric.name"
    assert "already served by workloads[0] as the histogram" in message
    shadow = CUSTOM | {
        "customMetric": {"name": "vllm_num_requests_waiting", "type": "gauge", "series": "q"}
    }
    with pytest.raises(ConfigError) as info:
        load_settings(stack(shadow), "dev")
    assert "already served by the vllm runtime" in info.value.problems[0][1]


def test_legacy_own_server_keys_still_mean_custom() -> None:
    """`command` + `port`/`readinessPath`/`livenessPath` (the keys before
    `runtime`) keep rendering the same server, now as runtime `custom`."""
    r = run(
        stack(
            {
                "kind": "inference",
                "name": "gunicorn",
                "team": "ml",
                "image": "registry.example.com/app:1.0.0",
                "command": ["gunicorn", "app:app"],
                "port": 8000,
                "readinessPath": "/ready",
                "livenessPath": "/health",
            }
        )
    )
    c = _container(r, "gunicorn")
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    labels = r.manifest("Deployment", "gunicorn", "ml")["metadata"]["labels"]
    assert labels[serving.RUNTIME_LABEL] == "custom"
    # Not scraped unless it declares `metrics`: no monitor, no alerts.
    assert not [m for m in r.manifests() if m["metadata"]["name"] == "inference-ml-gunicorn"]
