"""Every metric name the platform's alerts and dashboards may use, and who exports it.

One list, five sources:
- the runtime (workloads/runtime: serve.py, train.py, batch.py), from the
  contract, checked against the real programs' /metrics by
  tests/runtime/test_metric_catalog.py;
- the DCGM exporter, whose counters file the platform ships (DCGM_COUNTERS
  becomes its ConfigMap), so nothing outside this list is ever exported;
- kube-state-metrics (the names below are from its documentation for v2.x,
  https://github.com/kubernetes/kube-state-metrics/tree/main/docs/metrics);
- vLLM (the `vllm` serving preset, vllm/vllm-openai v0.29.0): the V1 engine's
  Prometheus metrics as vLLM's docs list them (docs/design/metrics.md,
  docs/usage/metrics.md; defined in vllm/v1/metrics/loggers.py). The names keep
  their `vllm:` prefix: a colon is legal in a Prometheus metric name
  (`[a-zA-Z_:][a-zA-Z0-9_:]*`) and Prometheus scrapes them unchanged; only the
  custom metrics API name of an HPA is spelled without it;
- Triton Inference Server (the `triton` preset, 26.08): its metrics
  documentation (server docs/user_guide/metrics.md), per model and version.

Pure Python: the runtime's test venv imports it without Pulumi.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workloads.runtime import contract

# DCGM exporter counters: (field, Prometheus type, help). DCGM_FI_PROF_* need
# the exporter's SYS_ADMIN capability (profiling); the rest do not.
DCGM_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Rows remapped for uncorrectable errors.",
    ),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "Total NVLink bandwidth counter."),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
    (
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
    ),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Ratio of cycles the device memory interface is active."),
)
PROFILING_PREFIX = "DCGM_FI_PROF_"

# Which DCGM series are about a GPU a pod holds. The exporter labels those with
# the pod's `pod`/`namespace`/`container`; a GPU no pod holds gets no such
# labels from it, and a monitor with honorLabels then fills them in with the
# exporter's own (`pod="dcgm-exporter-..."`, `namespace="kube-system"`), so
# `pod!=""` alone matches every GPU. The platform's ServiceMonitor drops the
# exporter's own target labels (unheld GPUs carry no pod at all); excluding the
# exporter's pod names as well keeps the selectors right for an exporter scraped
# by a monitor that keeps them (the GPU Operator's, `nvidia-dcgm-exporter-...`).
DCGM_EXPORTER_POD_PATTERN = ".*dcgm-exporter.*"
GPU_HELD = f'pod!="", pod!~"{DCGM_EXPORTER_POD_PATTERN}"'
GPU_UNHELD = f'pod=~"|{DCGM_EXPORTER_POD_PATTERN}"'

# kube-state-metrics series the alerts and dashboards read.
KUBE_STATE_METRICS: frozenset[str] = frozenset(
    {
        "kube_horizontalpodautoscaler_status_current_replicas",
        "kube_horizontalpodautoscaler_spec_max_replicas",
        "kube_job_failed",
        "kube_job_status_succeeded",
        "kube_job_status_failed",
        "kube_job_spec_completions",
        "kube_cronjob_next_schedule_time",
        "kube_cronjob_spec_suspend",
        "kube_resourcequota",
        "kube_node_labels",
        "kube_deployment_status_replicas_available",
    }
)

# vLLM (labels: model_name, engine). Histograms in seconds; kv_cache_usage_perc
# is a fraction (0-1) despite its name.
VLLM_METRICS: dict[str, str] = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prompt_tokens_total": "counter",
    "vllm:generation_tokens_total": "counter",
    "vllm:request_success_total": "counter",  # label finished_reason
    "vllm:num_preemptions_total": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
}
# Triton (labels: model, version). Durations are cumulative counters in
# microseconds; pending_request_count is the requests waiting in the scheduler.
TRITON_METRICS: dict[str, str] = {
    "nv_inference_request_success": "counter",
    "nv_inference_request_failure": "counter",  # label reason (newer releases)
    "nv_inference_count": "counter",
    "nv_inference_exec_count": "counter",
    "nv_inference_request_duration_us": "counter",
    "nv_inference_queue_duration_us": "counter",
    "nv_inference_compute_infer_duration_us": "counter",
    "nv_inference_pending_request_count": "gauge",
}


@dataclass(frozen=True)
class HpaMetric:
    """A per-pod metric an HPA may scale on, and how the Prometheus adapter
    computes it: `gauge` as is, `counter` as a per-second rate, `histogram` as
    the average observation (sum / count)."""

    name: str  # as the custom metrics API serves it: what an HPA names
    series: str  # the Prometheus series (a histogram's base name)
    type: Literal["gauge", "counter", "histogram"]


# The metrics each known serving runtime's HPA may name; the first is the
# default (the queue: requests waiting for the server).
RUNTIME_HPA_METRICS: dict[str, tuple[HpaMetric, ...]] = {
    "mlplatform": (HpaMetric("mlserve_inflight_requests", "mlserve_inflight_requests", "gauge"),),
    "vllm": (
        HpaMetric("vllm_num_requests_waiting", "vllm:num_requests_waiting", "gauge"),
        HpaMetric("vllm_num_requests_running", "vllm:num_requests_running", "gauge"),
        HpaMetric("vllm_kv_cache_usage_perc", "vllm:kv_cache_usage_perc", "gauge"),
    ),
    "triton": (
        HpaMetric(
            "nv_inference_pending_request_count", "nv_inference_pending_request_count", "gauge"
        ),
    ),
}

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _series(metrics: dict[str, str]) -> set[str]:
    """Series names a Prometheus client exposes for metrics of these types."""
    names: set[str] = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names.update(name + s for s in _HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names


RUNTIME_SERIES: frozenset[str] = frozenset(
    _series(contract.SERVE_METRICS)
    | _series(contract.TRAIN_METRICS)
    | _series(contract.BATCH_METRICS)
)
SERVING_PRESET_SERIES: frozenset[str] = frozenset(_series(VLLM_METRICS) | _series(TRITON_METRICS))


def dcgm_series(profiling: bool = True) -> frozenset[str]:
    return frozenset(
        name for name, _, _ in DCGM_COUNTERS if profiling or not name.startswith(PROFILING_PREFIX)
    )


def known_series(profiling: bool = True) -> frozenset[str]:
    """Every series name an expression of the platform may reference."""
    return RUNTIME_SERIES | SERVING_PRESET_SERIES | dcgm_series(profiling) | KUBE_STATE_METRICS


def dcgm_counters_csv(profiling: bool = True) -> str:
    """The DCGM exporter's counters file (`-f` / DCGM_EXPORTER_COLLECTORS)."""
    lines = ["# Generated by mlplatform (workloads/metric_catalog.py). Format: field, type, help."]
    for name, kind, help_text in DCGM_COUNTERS:
        if profiling or not name.startswith(PROFILING_PREFIX):
            lines.append(f"{name}, {kind}, {help_text}")
    return "\n".join(lines) + "\n"
