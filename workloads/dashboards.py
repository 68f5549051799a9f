"""Grafana dashboards of the platform, as dashboard JSON (schemaVersion 39).

Each dashboard picks its Prometheus through a `datasource` variable, so it works
with whatever the Grafana sidecar provisions; panel ids are unique and the layout
is a two-column grid. Every expression is PromQL over names in
`workloads.metric_catalog` (tests parse each one and check the names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workloads.metric_catalog import GPU_HELD, GPU_UNHELD, PROFILING_PREFIX

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's own variables, which no PromQL parser knows: what tests substitute.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$namespace": ".*",
    "$node": ".*",
    "$job": ".*",
}


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    stack: bool = False


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    namespace_variable: str | None = None  # metric to list namespaces from
    node_variable: bool = False
    job_variable: str | None = None  # metric to list Jobs (its `job_name` label) from
    tags: tuple[str, ...] = field(default=("mlplatform",))

    def panels_for(self, profiling: bool) -> tuple[Panel, ...]:
        """Without DCGM profiling, panels on DCGM_FI_PROF_* fields would stay empty."""
        if profiling:
            return self.panels
        return tuple(
            p for p in self.panels if not any(PROFILING_PREFIX in t.expr for t in p.targets)
        )

    def render(self, profiling: bool = True) -> dict[str, Any]:
        variables: list[dict[str, Any]] = [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
            }
        ]
        if self.namespace_variable:
            variables.append(
                _query_variable("namespace", f"label_values({self.namespace_variable}, namespace)")
            )
        if self.node_variable:
            variables.append(_query_variable("node", "label_values(DCGM_FI_DEV_GPU_UTIL, node)"))
        if self.job_variable:
            variables.append(_query_variable("job", f"label_values({self.job_variable}, job_name)"))
        panels = []
        for i, p in enumerate(self.panels_for(profiling)):
            panels.append(
                {
                    "id": i + 1,
                    "type": p.kind,
                    "title": p.title,
                    "description": p.description,
                    "datasource": DATASOURCE,
                    "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
                    "fieldConfig": {
                        "defaults": {
                            "unit": p.unit,
                            "custom": {"stacking": {"mode": "normal" if p.stack else "none"}},
                        },
                        "overrides": [],
                    },
                    "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
                    "targets": [
                        {
                            "refId": chr(ord("A") + j),
                            "expr": t.expr,
                            "legendFormat": t.legend,
                            "datasource": DATASOURCE,
                        }
                        for j, t in enumerate(p.targets)
                    ],
                }
            )
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": False,
            "timezone": "utc",
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": variables},
            "annotations": {"list": []},
            "panels": panels,
        }


def _query_variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "refresh": 2,
        "current": {},
        "hide": 0,
    }


def _t(expr: str, legend: str) -> Target:
    return Target(expr, legend)


NS = 'namespace=~"$namespace"'
BY_MODEL = "sum by (namespace, model)"
ERRORS = NS + ', code=~"5.."'
NOT_SERVED = NS + ', code!~"2.."'
SERVED = NS + ', code=~"2.."'
POD_LEGEND = "{{namespace}}/{{pod}}"
MODEL_LEGEND = "{{namespace}}/{{model}}"
JOB_LEGEND = "{{namespace}}/{{job_name}}"
BY_JOB = "max by (namespace, job_name)"  # one series per Job, however many pods export it
JOB = NS + ', job_name=~"$job"'


def _rate(metric: str, selector: str = NS) -> str:
    return f"rate({metric}{{{selector}}}[$__rate_interval])"


def _quota(resource: str, kind: str) -> str:
    return f'sum by (namespace) (kube_resourcequota{{{NS}, resource="{resource}", type="{kind}"}})'


def _quota_share(resource: str) -> str:
    """Used over hard, only where a hard limit exists (no division by zero)."""
    return f"{_quota(resource, 'used')} / ({_quota(resource, 'hard')} > 0)"


GPU = Dashboard(
    uid="mlplatform-gpu",
    title="mlplatform / GPUs",
    description="GPU utilisation, memory, power and health per node and per pod (DCGM exporter).",
    node_variable=True,
    panels=(
        Panel(
            "GPU utilisation by node",
            (_t('avg by (node) (DCGM_FI_DEV_GPU_UTIL{node=~"$node"})', "{{node}}"),),
            unit="percent",
        ),
        Panel(
            "GPU utilisation by pod",
            (_t(f"avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{{{GPU_HELD}}})", POD_LEGEND),),
            unit="percent",
            description="GPUs a pod holds. Unallocated GPUs are in their own panel.",
        ),
        Panel(
            "GPUs held by namespace",
            (_t(f"count by (namespace) (DCGM_FI_DEV_GPU_UTIL{{{GPU_HELD}}})", "{{namespace}}"),),
            stack=True,
        ),
        Panel(
            "Unallocated GPUs by node (capacity no pod uses)",
            (
                _t(
                    f'count by (node) (DCGM_FI_DEV_GPU_UTIL{{{GPU_UNHELD}, node=~"$node"}})',
                    "{{node}}",
                ),
            ),
            stack=True,
            description="GPUs no pod holds: paid-for capacity, not a team's waste. Scale-down "
            "(Cluster Autoscaler or Karpenter) should remove nodes whose GPUs stay here.",
        ),
        Panel(
            "GPU memory used by pod",
            (_t(f"sum by (namespace, pod) (DCGM_FI_DEV_FB_USED{{{GPU_HELD}}})", POD_LEGEND),),
            unit="decmbytes",
        ),
        Panel(
            "GPU memory used by node (share)",
            (
                _t(
                    'sum by (node) (DCGM_FI_DEV_FB_USED{node=~"$node"}) / sum by (node) '
                    '(DCGM_FI_DEV_FB_USED{node=~"$node"} + DCGM_FI_DEV_FB_FREE{node=~"$node"})',
                    "{{node}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Power by node",
            (_t('sum by (node) (DCGM_FI_DEV_POWER_USAGE{node=~"$node"})', "{{node}}"),),
            unit="watt",
        ),
        Panel(
            "Power by pod",
            (_t(f"sum by (namespace, pod) (DCGM_FI_DEV_POWER_USAGE{{{GPU_HELD}}})", POD_LEGEND),),
            unit="watt",
        ),
        Panel(
            "Tensor pipe active by pod",
            (
                _t(
                    f"avg by (namespace, pod) (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{GPU_HELD}}})",
                    POD_LEGEND,
                ),
            ),
            unit="percentunit",
            description="Share of cycles the tensor cores work: how well mixed precision pays.",
        ),
        Panel(
            "Temperature (max by node)",
            (_t('max by (node) (DCGM_FI_DEV_GPU_TEMP{node=~"$node"})', "{{node}}"),),
            unit="celsius",
        ),
        Panel(
            "XID errors",
            (
                _t(
                    "max by (node, gpu) (max_over_time(DCGM_FI_DEV_XID_ERRORS[$__rate_interval]))",
                    "{{node}} GPU {{gpu}}",
                ),
            ),
            description="Last XID error code per GPU; non-zero means a driver-reported fault.",
        ),
    ),
)

INFERENCE = Dashboard(
    uid="mlplatform-inference",
    title="mlplatform / Inference",
    description="Request rate, errors, latency quantiles, batch sizes and queues of the model "
    "servers.",
    namespace_variable="mlserve_requests_total",
    panels=(
        Panel(
            "Requests per second",
            (_t(f"{BY_MODEL} ({_rate('mlserve_requests_total')})", MODEL_LEGEND),),
            unit="reqps",
        ),
        Panel(
            "Error ratio (5xx)",
            (
                _t(
                    f"{BY_MODEL} ({_rate('mlserve_requests_total', ERRORS)}) / "
                    f"{BY_MODEL} ({_rate('mlserve_requests_total')})",
                    MODEL_LEGEND,
                ),
            ),
            unit="percentunit",
            description="5xx, the 503s of a full queue included (the InferenceErrorRatio alert).",
        ),
        Panel(
            "Responses other than 2xx by code",
            (
                _t(
                    f"sum by (namespace, model, code) "
                    f"({_rate('mlserve_requests_total', NOT_SERVED)})",
                    MODEL_LEGEND + " {{code}}",
                ),
            ),
            unit="reqps",
            description="Rejections (400, 404, 413, 503) and failures, apart from served requests.",
        ),
        Panel(
            "Latency p50 / p95 / p99",
            tuple(
                _t(
                    f"histogram_quantile({q}, sum by (le, namespace, model) "
                    f"({_rate('mlserve_request_duration_seconds_bucket', SERVED)}))",
                    f"p{int(q * 100)} {MODEL_LEGEND}",
                )
                for q in (0.5, 0.95, 0.99)
            ),
            unit="s",
            description="Served (2xx) requests, as the latency alert sees them; "
            "rejections and failures are in the panel above.",
        ),
        Panel(
            "Mean batch size",
            (
                _t(
                    f"{BY_MODEL} ({_rate('mlserve_batch_size_sum')}) / "
                    f"{BY_MODEL} ({_rate('mlserve_batch_size_count')})",
                    MODEL_LEGEND,
                ),
            ),
            description="Rows per forward pass: how much the dynamic batcher coalesces.",
        ),
        Panel("Queue depth", (_t(f"{BY_MODEL} (mlserve_queue_depth{{{NS}}})", MODEL_LEGEND),)),
        Panel(
            "In-flight requests per pod",
            (_t(f"mlserve_inflight_requests{{{NS}}}", POD_LEGEND),),
            description="The HPA's per-pod custom metric.",
        ),
    ),
)

TRAINING = Dashboard(
    uid="mlplatform-training",
    title="mlplatform / Training",
    description="Throughput, loss, progress and GPU memory of the runtime's training jobs.",
    namespace_variable="mltrain_step",
    panels=(
        Panel(
            "Samples per second by job",
            (_t(f"{BY_JOB} (mltrain_samples_per_second{{{NS}}})", JOB_LEGEND),),
            description="All ranks of the job. Every node's local rank 0 exports the same "
            "job-wide number: it is counted once.",
        ),
        Panel("Loss", (_t(f"{BY_JOB} (mltrain_loss{{{NS}}})", JOB_LEGEND),)),
        Panel("Step", (_t(f"{BY_JOB} (mltrain_step{{{NS}}})", JOB_LEGEND),)),
        Panel(
            "GPU memory allocated",
            (_t(f"mltrain_gpu_memory_allocated_bytes{{{NS}}}", POD_LEGEND),),
            unit="bytes",
            description="Of each node's local rank 0 process.",
        ),
        Panel(
            "Checkpoints written",
            (_t(f"{BY_JOB} (increase(mltrain_checkpoints_total{{{NS}}}[1h]))", JOB_LEGEND),),
        ),
    ),
)

BATCH = Dashboard(
    uid="mlplatform-batch",
    title="mlplatform / Batch inference",
    description="Progress, throughput, stalls and failures of the batch inference jobs: "
    "a pod per shard (batch.py), and the Job's shard counts (kube-state-metrics).",
    namespace_variable="mlbatch_records_total",
    job_variable="mlbatch_records_total",
    panels=(
        Panel(
            "Records per second by job",
            (
                _t(
                    f"sum by (namespace, job_name) ({_rate('mlbatch_records_total', JOB)})",
                    JOB_LEGEND,
                ),
            ),
            stack=True,
        ),
        Panel(
            "Rows per second by shard",
            (_t(f"mlbatch_rows_per_second{{{JOB}}}", "{{job_name}} shard {{shard}}"),),
            description="Each shard's mean since its first forward pass.",
        ),
        Panel(
            "Shards done / total",
            (
                _t(f"{BY_JOB} (kube_job_status_succeeded{{{JOB}}})", JOB_LEGEND + " done"),
                _t(f"{BY_JOB} (kube_job_spec_completions{{{JOB}}})", JOB_LEGEND + " total"),
            ),
        ),
        Panel(
            "Failed shard pods",
            (
                _t(f"{BY_JOB} (kube_job_status_failed{{{JOB}}})", JOB_LEGEND + " pods"),
                _t(
                    "sum by (namespace, job_name) "
                    f'(increase(mlbatch_shards_total{{{JOB}, outcome="failed"}}[1h]))',
                    JOB_LEGEND + " reported (1h)",
                ),
            ),
            description="Failed pods (retried up to backoffLimitPerIndex) and the failures "
            "the program reported before exiting.",
        ),
        Panel(
            "Shard progress (input files done)",
            (
                _t(
                    f"mlbatch_input_files_done{{{JOB}}} / (mlbatch_input_files{{{JOB}}} > 0)",
                    "{{job_name}} shard {{shard}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Time since last progress",
            (
                _t(
                    f"time() - mlbatch_last_progress_timestamp_seconds{{{JOB}}}",
                    "{{job_name}} shard {{shard}}",
                ),
            ),
            unit="s",
            description="The BatchShardStalled alert fires when this stays above its limit.",
        ),
    ),
)

GPU_QUOTA = "requests.nvidia.com/gpu"
QUOTAS = Dashboard(
    uid="mlplatform-quotas",
    title="mlplatform / Team quotas",
    description="GPU, CPU and memory quota use per team namespace.",
    namespace_variable="kube_resourcequota",
    panels=(
        Panel(
            "GPU quota used / hard",
            (
                _t(_quota(GPU_QUOTA, "used"), "{{namespace}} used"),
                _t(_quota(GPU_QUOTA, "hard"), "{{namespace}} hard"),
            ),
        ),
        Panel(
            "GPU quota use (share)",
            (_t(_quota_share(GPU_QUOTA), "{{namespace}}"),),
            unit="percentunit",
        ),
        Panel(
            "CPU requests quota use (share)",
            (_t(_quota_share("requests.cpu"), "{{namespace}}"),),
            unit="percentunit",
        ),
        Panel(
            "Memory requests quota use (share)",
            (_t(_quota_share("requests.memory"), "{{namespace}}"),),
            unit="percentunit",
        ),
    ),
)

BY_SERVICE = "sum by (namespace, service)"
SERVICE_LEGEND = "{{namespace}}/{{service}}"


def _quantiles(histogram: str) -> tuple[Target, ...]:
    return tuple(
        _t(
            f"histogram_quantile({q}, sum by (le, namespace, service) "
            f"({_rate(histogram + '_bucket')}))",
            f"p{int(q * 100)} {SERVICE_LEGEND}",
        )
        for q in (0.5, 0.95, 0.99)
    )


# The serving presets' servers: their PodMonitors put `service` on every series.
VLLM = Dashboard(
    uid="mlplatform-vllm",
    title="mlplatform / LLM serving (vLLM)",
    description="Time to first token, inter-token latency, KV-cache usage, queue depth and "
    "token throughput of the vLLM services.",
    namespace_variable="vllm:num_requests_running",
    panels=(
        Panel(
            "Time to first token p50 / p95 / p99",
            _quantiles("vllm:time_to_first_token_seconds"),
            unit="s",
            description="Queueing and prefill (the VllmTimeToFirstTokenOverSlo alert: p95).",
        ),
        Panel(
            "Inter-token latency p50 / p95 / p99",
            _quantiles("vllm:inter_token_latency_seconds"),
            unit="s",
            description="Time between two generated tokens (VllmInterTokenLatencyOverSlo: p95).",
        ),
        Panel(
            "KV-cache usage by pod",
            (
                _t(
                    f"max by (namespace, service, pod) (vllm:kv_cache_usage_perc{{{NS}}})",
                    POD_LEGEND,
                ),
            ),
            unit="percentunit",
            description="Full means preemptions (VllmKvCacheNearlyFull).",
        ),
        Panel(
            "Requests waiting and running",
            (
                _t(
                    f"{BY_SERVICE} (vllm:num_requests_waiting{{{NS}}})", "waiting " + SERVICE_LEGEND
                ),
                _t(
                    f"{BY_SERVICE} (vllm:num_requests_running{{{NS}}})", "running " + SERVICE_LEGEND
                ),
            ),
            description="Waiting is what the HPA scales on (vllm_num_requests_waiting per pod).",
        ),
        Panel(
            "Tokens per second",
            (
                _t(
                    f"{BY_SERVICE} ({_rate('vllm:prompt_tokens_total')})",
                    "prompt " + SERVICE_LEGEND,
                ),
                _t(
                    f"{BY_SERVICE} ({_rate('vllm:generation_tokens_total')})",
                    "generated " + SERVICE_LEGEND,
                ),
            ),
        ),
        Panel(
            "End-to-end request latency p50 / p95 / p99",
            _quantiles("vllm:e2e_request_latency_seconds"),
            unit="s",
        ),
    ),
)

TRITON = Dashboard(
    uid="mlplatform-triton",
    title="mlplatform / Triton",
    description="Requests, failures, latency (queue and compute) and pending requests of the "
    "Triton services, per model.",
    namespace_variable="nv_inference_request_success",
    panels=(
        Panel(
            "Successful requests per second by model",
            (
                _t(
                    f"sum by (namespace, service, model) ({_rate('nv_inference_request_success')})",
                    SERVICE_LEGEND + " {{model}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Failed requests per second by model",
            (
                _t(
                    f"sum by (namespace, service, model) ({_rate('nv_inference_request_failure')})",
                    SERVICE_LEGEND + " {{model}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Average latency: queue and compute",
            (
                _t(
                    f"{BY_SERVICE} ({_rate('nv_inference_queue_duration_us')}) / "
                    f"{BY_SERVICE} ({_rate('nv_inference_request_success')}) / 1e6",
                    "queue " + SERVICE_LEGEND,
                ),
                _t(
                    f"{BY_SERVICE} ({_rate('nv_inference_compute_infer_duration_us')}) / "
                    f"{BY_SERVICE} ({_rate('nv_inference_request_success')}) / 1e6",
                    "compute " + SERVICE_LEGEND,
                ),
                _t(
                    f"{BY_SERVICE} ({_rate('nv_inference_request_duration_us')}) / "
                    f"{BY_SERVICE} ({_rate('nv_inference_request_success')}) / 1e6",
                    "request " + SERVICE_LEGEND,
                ),
            ),
            unit="s",
            description="Triton's cumulative duration counters over its request count: "
            "averages (TritonLatencyOverSlo uses the request line).",
        ),
        Panel(
            "Mean batch size (inferences per execution)",
            (
                _t(
                    f"{BY_SERVICE} ({_rate('nv_inference_count')}) / "
                    f"{BY_SERVICE} ({_rate('nv_inference_exec_count')})",
                    SERVICE_LEGEND,
                ),
            ),
            description="How much dynamic batching coalesces.",
        ),
        Panel(
            "Pending requests by pod",
            (
                _t(
                    f"sum by (namespace, service, pod) "
                    f"(nv_inference_pending_request_count{{{NS}}})",
                    POD_LEGEND,
                ),
            ),
            description="What the HPA scales on (nv_inference_pending_request_count per pod).",
        ),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (GPU, INFERENCE, VLLM, TRITON, TRAINING, BATCH, QUOTAS)
