"""Monitoring: GPU and workload observability for one environment.

- NVIDIA DCGM exporter as a DaemonSet rendered here (not its Helm chart): the
  offline preview validates every field, the pod spec comes from the platform's
  builder, and the counters file is generated from `workloads.metric_catalog`,
  so every DCGM series an alert or dashboard uses is one the exporter exports.
  It runs in kube-system on GPU nodes: it needs the kubelet's pod-resources
  socket (hostPath) to map GPUs to pods, root to use it, and SYS_ADMIN for the
  profiling (DCGM_FI_PROF_*) fields.
- kube-prometheus-stack (prometheus-operator, Prometheus, Alertmanager, Grafana,
  kube-state-metrics, node-exporter) and prometheus-adapter (the HPA's per-pod
  custom metric) as pinned Helm releases, or an existing Prometheus operator.
- ServiceMonitor for DCGM, PodMonitors for the inference services, the
  training jobs and the batch jobs; PrometheusRules for GPU health, inference
  SLOs, jobs and capacity; Grafana dashboards as ConfigMaps for the Grafana
  sidecar.

Every alert names what it is about and who owns it: its labels identify the
object (`namespace`, `service`/`model`, `job_name`, `pod`, `node_group`...) and
the owning `team` (a team's namespace is named after the team; anything outside
the team namespaces belongs to `platformTeam`), so Alertmanager can route by
team and never merges two objects' alerts. Each links its runbook
(docs/alerts.md). tests/test_promtool.py runs `promtool check rules` on every
stack and the unit tests in tests/promtool/ on every alert.

Pinned versions (and why):
- kube-prometheus-stack 86.3.2 (2026-06-19), prometheus-operator v0.91.0: the
  newest chart on operator v0.91.0, the version whose API the CRD validation of
  the offline preview uses (@kubernetes-models/prometheus-operator 6.0.0, from
  npm). Moving to a newer chart means moving that package with it.
- prometheus-adapter 5.3.0 (adapter v0.12.0): the newest release.
- dcgm-exporter 4.6.1-4.8.4-distroless (September 2026, the newest release)
  by digest, as NVIDIA's GPU Operator v26.7.1 certified bundle pins it
  (redhat-openshift-ecosystem/certified-operators, gpu-operator-certified/26.7.1).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field

from infra import catalog, meta, pod
from infra.config_types import DnsLabel, Quantity, _Model
from workloads import dashboards, metric_catalog

STACK_CHART = "kube-prometheus-stack"
STACK_CHART_VERSION = "86.3.2"
PROMETHEUS_OPERATOR_VERSION = "v0.91.0"
ADAPTER_CHART = "prometheus-adapter"
ADAPTER_CHART_VERSION = "5.3.0"
CHART_REPO = "https://prometheus-community.github.io/helm-charts"
DCGM_EXPORTER_IMAGE = (
    "nvcr.io/nvidia/k8s/dcgm-exporter:4.6.1-4.8.4-distroless"
    "@sha256:148b0c025e5f2850256816fa33754fbf4733b7a086697a95613fc0ba3db5b003"
)
DCGM_PORT = 9400
DCGM_NAMESPACE = "kube-system"
DCGM_NAME = "dcgm-exporter"
KUBELET_POD_RESOURCES = "/var/lib/kubelet/pod-resources"
COUNTERS_DIR = "/etc/dcgm-exporter/counters"
MONITORING_API = "monitoring.coreos.com/v1"
DASHBOARD_LABEL = "grafana_dashboard"
WORKLOAD_KIND_LABEL = f"{catalog.LABEL_PREFIX}/workload-kind"
RUNTIME_LABEL = f"{catalog.LABEL_PREFIX}/serving-runtime"
# Labels the Job controller puts on a Job's pods (Kubernetes >= 1.27).
JOB_NAME_POD_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_POD_LABEL = "batch.kubernetes.io/job-completion-index"


class AlertThresholds(_Model):
    """When the platform's alerts fire."""

    gpu_idle_minutes: int = Field(30, ge=5, description="Minutes a GPU may sit allocated but idle.")
    gpu_idle_utilization: float = Field(
        5, ge=0, le=100, description="'Idle': average utilisation below this (%)."
    )
    gpu_memory_used_ratio: float = Field(
        0.95, gt=0, le=1, description="GPU memory share that counts as nearly full."
    )
    quota_used_ratio: float = Field(
        0.9, gt=0, le=1, description="GPU quota share that counts as nearly used up."
    )
    inference_error_ratio: float = Field(
        0.05, gt=0, le=1, description="5xx share of requests that pages."
    )
    job_failed_minutes: int = Field(
        60,
        ge=5,
        description="How long `JobFailed` fires after a Job fails (the failed Job itself "
        "stays until its ttlSecondsAfterFinished).",
    )
    batch_stall_minutes: int = Field(
        15,
        ge=5,
        description="Minutes a running batch shard may go without writing a record "
        "(model loading included) before `BatchShardStalled` fires.",
    )
    kv_cache_used_ratio: float = Field(
        0.95,
        gt=0,
        le=1,
        description="vLLM: KV-cache share that counts as full (requests get preempted).",
    )
    queue_backlog_per_pod: float = Field(
        20,
        gt=0,
        description="vLLM and Triton: requests waiting per pod, on average over the "
        "service's pods, that count as a backlog the autoscaler does not clear.",
    )


class MonitoringSettings(_Model):
    """Observability of the environment."""

    namespace: DnsLabel = Field(
        "monitoring",
        description="Namespace of Prometheus and Grafana (and of the monitors, rules and "
        "dashboards); team network policies admit scrapes from it.",
    )
    install_stack: bool = Field(
        True,
        description="Install kube-prometheus-stack and prometheus-adapter (pinned Helm "
        "releases). false: use the Prometheus operator the cluster already runs; it must "
        "select monitors, rules and dashboards in all namespaces.",
    )
    dcgm_exporter: bool = Field(True, description="Run the DCGM exporter on GPU nodes.")
    profiling_metrics: bool = Field(
        True,
        description="Export DCGM profiling fields (tensor and engine activity); the exporter "
        "then needs the SYS_ADMIN capability.",
    )
    retention: str = Field(
        "15d", pattern=r"^[0-9]+(ms|s|m|h|d|w|y)$", description="Prometheus retention."
    )
    prometheus_storage: Quantity = Field("100Gi", description="Prometheus volume size.")
    alerts: AlertThresholds = Field(
        default_factory=AlertThresholds, description="Alert thresholds."
    )
    platform_team: DnsLabel = Field(
        "platform",
        description="`team` label of the alerts about shared capacity (GPU node groups, GPU "
        "faults, GPUs outside the team namespaces): the platform owners' Alertmanager route.",
    )
    runbook_url: str = Field(
        "docs/alerts.md",
        min_length=1,
        description="Where the alert runbooks are: each alert's `runbook_url` annotation is "
        "this plus `#<alert name in lower case>` (a section of docs/alerts.md). Set it to that "
        "file's address in your repository browser.",
    )
    alertmanager_config_secret: str | None = Field(
        None,
        description="Secret in the monitoring namespace whose `alertmanager.yaml` is "
        "Alertmanager's configuration: routes by `team`, receivers and their credentials "
        "(docs/alerts.md shows one). Unset: the chart's default, which notifies no one.",
    )


@dataclass(frozen=True)
class InferenceTarget:
    """An inference service the rules watch: where, which model, its latency SLO,
    which server (runtime) and where that server exports its metrics."""

    namespace: str
    name: str
    model: str
    latency_slo_seconds: float
    runtime: str = "mlplatform"
    metrics_port: str | None = "http"  # a container port name; None: not scraped
    metrics_path: str | None = "/metrics"
    ttft_slo_seconds: float = 2.0  # vllm: p95 time to first token
    itl_slo_seconds: float = 0.1  # vllm: p95 inter-token latency


@dataclass(frozen=True)
class MonitoringArgs:
    settings: MonitoringSettings
    environment: str
    team_namespaces: list[str]
    storage_class: str | None
    inference: list[InferenceTarget] = field(default_factory=list)
    node_groups: dict[str, int] = field(default_factory=dict)  # GPU node group -> maxSize
    # The per-pod metrics the adapter serves to HPAs (None: the platform runtime's).
    hpa_metrics: list[metric_catalog.HpaMetric] | None = None


class Monitoring(pulumi.ComponentResource):
    """Outputs: `namespace`, `dashboards` (uid -> title), `alert_groups` (names),
    `installed_stack` (chart and version, or None)."""

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:Monitoring", name, None, opts)
        s = args.settings
        ns = s.namespace
        labels = meta.labels("monitoring", "mlplatform", "monitoring")
        crd_deps: list[pulumi.Resource] = []
        self.installed_stack: str | None = None
        if s.install_stack:
            namespace = k8s.core.v1.Namespace(
                f"{name}-namespace",
                metadata={
                    "name": ns,
                    "labels": {
                        **labels,
                        # node-exporter uses the host's network and PID namespace.
                        "pod-security.kubernetes.io/enforce": "privileged",
                        "pod-security.kubernetes.io/warn": "baseline",
                    },
                },
                opts=pulumi.ResourceOptions(parent=self),
            )
            stack = k8s.helm.v3.Release(
                f"{name}-stack",
                name=STACK_CHART,
                chart=STACK_CHART,
                version=STACK_CHART_VERSION,
                repository_opts={"repo": CHART_REPO},
                namespace=ns,
                values=stack_values(s, args.storage_class),
                timeout=900,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace]),
            )
            k8s.helm.v3.Release(
                f"{name}-adapter",
                name=ADAPTER_CHART,
                chart=ADAPTER_CHART,
                version=ADAPTER_CHART_VERSION,
                repository_opts={"repo": CHART_REPO},
                namespace=ns,
                values=adapter_values(
                    ns,
                    args.hpa_metrics
                    if args.hpa_metrics is not None
                    else list(metric_catalog.RUNTIME_HPA_METRICS["mlplatform"]),
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[stack]),
            )
            crd_deps.append(stack)
            self.installed_stack = f"{STACK_CHART} {STACK_CHART_VERSION}"
        cr_opts = pulumi.ResourceOptions(parent=self, depends_on=crd_deps)
        # What other components' monitors and rules wait for (the CRDs' release).
        self.crd_dependencies: list[pulumi.Resource] = list(crd_deps)

        if s.dcgm_exporter:
            self._dcgm_exporter(name, s)
            self._custom_resource(
                f"{name}-dcgm-monitor",
                "ServiceMonitor",
                "dcgm-exporter",
                ns,
                {
                    "namespaceSelector": {"matchNames": [DCGM_NAMESPACE]},
                    "selector": {"matchLabels": meta.selector(dcgm_labels())},
                    "endpoints": [
                        {
                            "port": "metrics",
                            "interval": "30s",
                            # The exporter's pod/namespace/container labels name the
                            # workload using the GPU; keep them over the target's own.
                            "honorLabels": True,
                            "relabelings": [
                                {
                                    "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                                    "targetLabel": "node",
                                },
                                # ... and drop the target's own (the exporter's pod), which
                                # honorLabels would otherwise give every GPU no pod holds.
                                {"action": "labeldrop", "regex": "namespace|pod|container"},
                            ],
                        }
                    ],
                },
                cr_opts,
            )
        self._custom_resource(
            f"{name}-inference-monitor",
            "PodMonitor",
            "mlplatform-inference",
            ns,
            {
                "namespaceSelector": {"matchNames": sorted(args.team_namespaces)},
                "selector": {
                    "matchLabels": {WORKLOAD_KIND_LABEL: "inference", RUNTIME_LABEL: "mlplatform"}
                },
                "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            },
            cr_opts,
        )
        # Other servers: one monitor each, on the port and path the service declares;
        # `service` names the service on every series (their metrics carry no such label).
        for t in args.inference:
            if t.runtime == "mlplatform" or t.metrics_port is None:
                continue
            self._custom_resource(
                f"{name}-inference-monitor-{t.namespace}-{t.name}",
                "PodMonitor",
                f"inference-{t.namespace}-{t.name}",
                ns,
                {
                    "namespaceSelector": {"matchNames": [t.namespace]},
                    "selector": {
                        "matchLabels": {
                            "app.kubernetes.io/instance": t.name,
                            WORKLOAD_KIND_LABEL: "inference",
                        }
                    },
                    "podMetricsEndpoints": [
                        {
                            "port": t.metrics_port,
                            "path": t.metrics_path or "/metrics",
                            "interval": "15s",
                            "relabelings": [_pod_label_to("app.kubernetes.io/instance", "service")],
                        }
                    ],
                },
                cr_opts,
            )
        self._custom_resource(
            f"{name}-training-monitor",
            "PodMonitor",
            "mlplatform-training",
            ns,
            {
                "namespaceSelector": {"matchNames": sorted(args.team_namespaces)},
                "selector": {
                    "matchExpressions": [
                        {
                            "key": WORKLOAD_KIND_LABEL,
                            "operator": "In",
                            "values": ["training", "distributed-training"],
                        }
                    ]
                },
                "podMetricsEndpoints": [
                    {
                        "port": "metrics",
                        "path": "/metrics",
                        "interval": "30s",
                        "relabelings": [_pod_label_to(JOB_NAME_POD_LABEL, "job_name")],
                    }
                ],
            },
            cr_opts,
        )
        self._custom_resource(
            f"{name}-batch-monitor",
            "PodMonitor",
            "mlplatform-batch",
            ns,
            {
                "namespaceSelector": {"matchNames": sorted(args.team_namespaces)},
                "selector": {"matchLabels": {WORKLOAD_KIND_LABEL: "batch-inference"}},
                "podMetricsEndpoints": [
                    {
                        "port": "metrics",
                        "path": "/metrics",
                        # A pod lives for one shard: batch.py waits for one scrape after
                        # its last update, at most FINAL_SCRAPE_TIMEOUT_S (35 s).
                        "interval": "15s",
                        "relabelings": [
                            _pod_label_to(JOB_NAME_POD_LABEL, "job_name"),
                            _pod_label_to(COMPLETION_INDEX_POD_LABEL, "shard"),
                        ],
                    }
                ],
            },
            cr_opts,
        )

        groups = alert_groups(args)
        self._custom_resource(
            f"{name}-rules", "PrometheusRule", "mlplatform", ns, {"groups": groups}, cr_opts
        )

        for d in dashboards.DASHBOARDS:
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{d.uid}",
                metadata=meta.metadata(
                    d.uid, {**labels, DASHBOARD_LABEL: "1"}, ns, {"grafana_folder": "mlplatform"}
                ),
                data={
                    f"{d.uid}.json": json.dumps(
                        d.render(profiling=s.profiling_metrics), indent=1, sort_keys=True
                    )
                },
                opts=cr_opts,
            )

        self.namespace = ns
        self.dashboards = {d.uid: d.title for d in dashboards.DASHBOARDS}
        self.alert_groups = [g["name"] for g in groups]
        self.register_outputs(
            {
                "namespace": self.namespace,
                "dashboards": self.dashboards,
                "alert_groups": self.alert_groups,
                "installed_stack": self.installed_stack,
            }
        )

    def _custom_resource(
        self,
        resource_name: str,
        kind: str,
        name: str,
        namespace: str,
        spec: dict[str, Any],
        opts: pulumi.ResourceOptions,
    ) -> k8s.apiextensions.CustomResource:
        return k8s.apiextensions.CustomResource(
            resource_name,
            api_version=MONITORING_API,
            kind=kind,
            metadata=meta.metadata(name, meta.labels(name, name, "monitoring"), namespace),
            spec=spec,
            opts=opts,
        )

    def _dcgm_exporter(self, name: str, s: MonitoringSettings) -> None:
        labels = dcgm_labels()
        counters = metric_catalog.dcgm_counters_csv(profiling=s.profiling_metrics)
        k8s.core.v1.ConfigMap(
            f"{name}-dcgm-counters",
            metadata=meta.metadata(f"{DCGM_NAME}-counters", labels, DCGM_NAMESPACE),
            data={"counters.csv": counters},
            opts=pulumi.ResourceOptions(parent=self),
        )
        container = pod.Container(
            name=DCGM_NAME,
            image=DCGM_EXPORTER_IMAGE,
            env={
                "DCGM_EXPORTER_LISTEN": f":{DCGM_PORT}",
                "DCGM_EXPORTER_KUBERNETES": "true",
                "DCGM_EXPORTER_COLLECTORS": f"{COUNTERS_DIR}/counters.csv",
                "NODE_NAME": pod.FieldRef("spec.nodeName"),
            },
            ports={"metrics": DCGM_PORT},
            resources=pod.Resources(cpu="100m", memory="128Mi", memory_limit="512Mi"),
            probes=pod.Probes(
                readiness=pod.HttpProbe("/health", "metrics", period_seconds=15),
                liveness=pod.HttpProbe(
                    "/health",
                    "metrics",
                    period_seconds=30,
                    failure_threshold=5,
                    initial_delay_seconds=30,
                ),
            ),
            mounts=[
                pod.Mount("pod-resources", KUBELET_POD_RESOURCES, read_only=True),
                pod.Mount("counters", COUNTERS_DIR, read_only=True),
            ],
            # The pod-resources socket belongs to root; profiling needs SYS_ADMIN.
            run_as_root=True,
            add_capabilities=["SYS_ADMIN"] if s.profiling_metrics else [],
        )
        template = pod.pod_template(
            pod.PodSpec(
                labels=labels,
                annotations={f"{catalog.LABEL_PREFIX}/counters-sha256": _sha256(counters)},
                containers=[container],
                priority_class="system-node-critical",
                profile="node-daemon",
                gpu_daemon=True,
                volumes=[
                    pod.Volume("pod-resources", host_path=KUBELET_POD_RESOURCES),
                    pod.Volume("counters", config_map=f"{DCGM_NAME}-counters"),
                ],
                scratch_size="256Mi",
            )
        )
        root = "runs as root to read the kubelet's root-owned pod-resources socket (GPU to pod)"
        reasons = {
            "CKV_K8S_11": "no CPU limit: a throttled exporter misses scrapes on busy GPU nodes",
            "CKV_K8S_23": root,
            "CKV_K8S_40": root,
        }
        if s.profiling_metrics:
            sys_admin = "SYS_ADMIN for the DCGM profiling fields (off with profilingMetrics: false)"
            reasons |= {"CKV_K8S_25": sys_admin, "CKV_K8S_39": sys_admin}
        k8s.apps.v1.DaemonSet(
            f"{name}-dcgm-daemonset",
            metadata=meta.metadata(DCGM_NAME, labels, DCGM_NAMESPACE, meta.checkov_skips(reasons)),
            spec={
                "selector": {"matchLabels": meta.selector(labels)},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": template,
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        k8s.core.v1.Service(
            f"{name}-dcgm-service",
            metadata=meta.metadata(DCGM_NAME, labels, DCGM_NAMESPACE),
            spec={
                "type": "ClusterIP",
                "selector": meta.selector(labels),
                "ports": [
                    {
                        "name": "metrics",
                        "port": DCGM_PORT,
                        "targetPort": "metrics",
                        "protocol": "TCP",
                    }
                ],
            },
            opts=pulumi.ResourceOptions(parent=self),
        )


def _meta_label(label: str) -> str:
    """A Kubernetes label as Prometheus service discovery names it."""
    return "".join(c if c.isalnum() else "_" for c in label)


def _pod_label_to(pod_label: str, target: str) -> dict[str, Any]:
    """A relabeling that copies a pod label onto the scraped series."""
    return {
        "sourceLabels": [f"__meta_kubernetes_pod_label_{_meta_label(pod_label)}"],
        "targetLabel": target,
    }


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def dcgm_labels() -> dict[str, str]:
    return meta.labels(DCGM_NAME, DCGM_NAME, "gpu-metrics")


def stack_values(s: MonitoringSettings, storage_class: str | None) -> dict[str, Any]:
    """kube-prometheus-stack values: select monitors, rules and dashboards in
    every namespace, persist Prometheus, expose the node-group label to
    kube-state-metrics (the node-group-at-max alert reads it)."""
    volume: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": s.prometheus_storage}},
    }
    if storage_class:
        volume["storageClassName"] = storage_class
    values: dict[str, Any] = {
        "crds": {"enabled": True},
        "prometheus": {
            "prometheusSpec": {
                "retention": s.retention,
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "storageSpec": {"volumeClaimTemplate": {"spec": volume}},
            }
        },
        "grafana": {
            "defaultDashboardsTimezone": "utc",
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": DASHBOARD_LABEL,
                    "labelValue": "1",
                    "searchNamespace": "ALL",
                    "folderAnnotation": "grafana_folder",
                    "provider": {"foldersFromFilesStructure": True},
                }
            },
        },
        "kube-state-metrics": {
            "metricLabelsAllowlist": [
                f"nodes=[{catalog.NODE_GROUP_LABEL},{catalog.GPU_PRESENT_LABEL}]"
            ]
        },
    }
    if s.alertmanager_config_secret:
        values["alertmanager"] = {
            "alertmanagerSpec": {"configSecret": s.alertmanager_config_secret}
        }
    return values


def adapter_rule(metric: metric_catalog.HpaMetric) -> dict[str, Any]:
    """The prometheus-adapter rule that serves `metric` per pod: a gauge as is,
    a counter as a per-second rate, a histogram as the average observation."""
    series = metric.series + ("_sum" if metric.type == "histogram" else "")
    matchers = "{<<.LabelMatchers>>}"
    if metric.type == "gauge":
        query = f"sum(<<.Series>>{matchers}) by (<<.GroupBy>>)"
    elif metric.type == "counter":
        query = f"sum(rate(<<.Series>>{matchers}[2m])) by (<<.GroupBy>>)"
    else:
        query = (
            f"sum(rate(<<.Series>>{matchers}[2m])) by (<<.GroupBy>>) / "
            f"sum(rate({metric.series}_count{matchers}[2m])) by (<<.GroupBy>>)"
        )
    return {
        "seriesQuery": f'{series}{{namespace!="",pod!=""}}',
        "resources": {
            "overrides": {
                "namespace": {"resource": "namespace"},
                "pod": {"resource": "pod"},
            }
        },
        "name": {"matches": f"^{re.escape(series)}$", "as": metric.name},
        "metricsQuery": query,
    }


def adapter_values(namespace: str, metrics: list[metric_catalog.HpaMetric]) -> dict[str, Any]:
    """prometheus-adapter: serve each per-pod metric an InferenceService HPA may
    name (the known runtimes' queue metrics and the custom servers' own)."""
    return {
        "prometheus": {"url": f"http://{STACK_CHART}-prometheus.{namespace}.svc", "port": 9090},
        "rules": {"default": False, "custom": [adapter_rule(m) for m in metrics]},
    }


SERVED_QUANTILE = 0.95  # the latency SLO is on the p95 of served requests


@dataclass(frozen=True)
class _Rules:
    """What every rule needs: where runbooks live, who owns what."""

    runbook_url: str
    platform_team: str
    team_namespaces: tuple[str, ...]

    def alert(
        self,
        name: str,
        expr: str,
        for_: str,
        severity: str,
        summary: str,
        description: str,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity, "platform": "mlplatform", **(labels or {})},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": f"{self.runbook_url}#{name.lower()}",
            },
        }

    @property
    def teams(self) -> str:
        """A regex of the team namespaces, for `namespace=~`."""
        return "|".join(sorted(self.team_namespaces)) or "none"

    def owned(self, expr: str) -> str:
        """`expr` with a `team` label: the namespace's team for a team namespace (named
        after its team), the platform team for anything else (or no namespace)."""
        return (
            f'label_replace(label_replace({expr}, "team", "$1", "namespace", "({self.teams})"), '
            f'"team", "{self.platform_team}", "team", "")'
        )


def alert_groups(args: MonitoringArgs) -> list[dict[str, Any]]:
    """The PrometheusRule groups. Every metric name used is in metric_catalog.

    Each expression aggregates `by` exactly the labels that identify what the
    alert is about (dropping the scrape target's own: kube-state-metrics' pod,
    service and instance), then gains `team`; per-object rules (a service, a
    node group) carry the object's labels as rule labels.
    """
    a = args.settings.alerts
    r = _Rules(args.settings.runbook_url, args.settings.platform_team, tuple(args.team_namespaces))
    teams = r.teams
    held = metric_catalog.GPU_HELD
    gpu_quota = 'resource="requests.nvidia.com/gpu"'
    gpu = [
        r.alert(
            "GpuAllocatedButIdle",
            r.owned(
                f"avg by (namespace, pod, node) (DCGM_FI_DEV_GPU_UTIL{{{held}}}) "
                f"< {a.gpu_idle_utilization:g}"
            ),
            f"{a.gpu_idle_minutes}m",
            "warning",
            "GPU held by {{ $labels.namespace }}/{{ $labels.pod }} is idle",
            f"Utilisation below {a.gpu_idle_utilization:g}% for {a.gpu_idle_minutes} minutes while "
            "allocated: release it for someone else.",
        ),
        r.alert(
            "GpuMemoryNearlyFull",
            r.owned(
                "max by (node, gpu, namespace, pod) "
                "(DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)) "
                f"> {a.gpu_memory_used_ratio:g}"
            ),
            "10m",
            "warning",
            "GPU memory nearly full on {{ $labels.node }} GPU {{ $labels.gpu }}"
            "{{ with $labels.pod }} (held by {{ $labels.namespace }}/{{ . }}){{ end }}",
            "The next allocation on this GPU will fail with out-of-memory.",
        ),
        r.alert(
            "GpuXidError",
            "max by (node, gpu, namespace, pod) (max_over_time(DCGM_FI_DEV_XID_ERRORS[10m])) > 0",
            "0m",
            "critical",
            "XID {{ $value }} on {{ $labels.node }} GPU {{ $labels.gpu }}",
            "The driver reported a GPU fault; EKS node auto-repair replaces failing nodes.",
            {"team": r.platform_team},
        ),
    ]
    inference = []
    for t in args.inference:
        if t.runtime != "mlplatform":
            continue  # the runtime server's metrics; other servers' below
        sel = f'namespace="{t.namespace}", model="{t.model}"'
        requests = f"rate(mlserve_requests_total{{{sel}}}[5m])"
        # Served requests only: fast rejections (400, 503 of a full queue) would
        # hide slow answers, and slow ones (408 of a stalled upload) are the
        # client's doing; both count in InferenceErrorRatio or not at all.
        served = f'rate(mlserve_request_duration_seconds_bucket{{{sel}, code=~"2.."}}[5m])'
        owner = {"namespace": t.namespace, "team": t.namespace, "service": t.name, "model": t.model}
        inference += [
            r.alert(
                "InferenceLatencyOverSlo",
                f"histogram_quantile({SERVED_QUANTILE:g}, sum by (le, namespace, model) "
                f"({served})) > {t.latency_slo_seconds:g}",
                "10m",
                "warning",
                f"{t.namespace}/{t.name}: p95 latency of served requests over its "
                f"{t.latency_slo_seconds * 1000:g} ms SLO",
                "Scale out (check the HPA), or look at queue depth and batch sizes. "
                "Errors and rejections are not in this number: see InferenceErrorRatio.",
                owner,
            ),
            r.alert(
                "InferenceErrorRatio",
                f'sum by (namespace, model) (rate(mlserve_requests_total{{{sel}, code=~"5.."}}'
                f"[5m])) / sum by (namespace, model) ({requests}) > {a.inference_error_ratio:g}",
                "10m",
                "critical",
                f"{t.namespace}/{t.name}: more than {a.inference_error_ratio:.0%} of requests fail",
                "5xx includes 503s from a full queue: the service is overloaded or broken.",
                owner,
            ),
        ]
    for t in args.inference:
        if t.runtime == "vllm":
            inference += _vllm_alerts(r, a, t)
        elif t.runtime == "triton":
            inference += _triton_alerts(r, a, t)
    hpa = "namespace, horizontalpodautoscaler"
    inference.append(
        r.alert(
            "HpaAtMaxReplicas",
            r.owned(
                f"max by ({hpa}) (kube_horizontalpodautoscaler_status_current_replicas"
                f'{{namespace=~"{teams}"}}) >= on ({hpa}) '
                f"max by ({hpa}) (kube_horizontalpodautoscaler_spec_max_replicas)"
            ),
            "15m",
            "warning",
            "{{ $labels.namespace }}/{{ $labels.horizontalpodautoscaler }} is pinned at "
            "maxReplicas",
            "Demand exceeds what the autoscaler may add: raise maxReplicas or the team's quota.",
        )
    )
    failed = f'kube_job_failed{{namespace=~"{teams}", condition="true"}}'
    jobs = [
        r.alert(
            "JobFailed",
            # Only while the failure is recent: the failed Job itself lingers until
            # its TTL (7 days by default) and would keep the alert firing.
            r.owned(
                f"max by (namespace, job_name) ({failed} > 0) unless on (namespace, job_name) "
                f"max by (namespace, job_name) ({failed} offset {a.job_failed_minutes}m > 0)"
            ),
            "0m",
            "warning",
            "Job {{ $labels.namespace }}/{{ $labels.job_name }} failed",
            "The Job exhausted its retries or hit a FailJob rule (bad input, or a rank crashed). "
            f"Fires for {a.job_failed_minutes} minutes after the failure.",
        ),
        r.alert(
            "CronJobMissedSchedule",
            r.owned(
                "max by (namespace, cronjob) "
                f'(time() - kube_cronjob_next_schedule_time{{namespace=~"{teams}"}}) > 900 '
                "and on (namespace, cronjob) "
                "max by (namespace, cronjob) (kube_cronjob_spec_suspend) == 0"
            ),
            "5m",
            "warning",
            "CronJob {{ $labels.namespace }}/{{ $labels.cronjob }} missed its schedule",
            "A run due over 15 minutes ago did not start (previous run still going, no "
            "capacity, or past startingDeadlineSeconds).",
        ),
        r.alert(
            "BatchShardStalled",
            r.owned(
                "time() - max by (namespace, job_name, shard, pod) "
                f'(mlbatch_last_progress_timestamp_seconds{{namespace=~"{teams}"}}) '
                f"> {a.batch_stall_minutes * 60}"
            ),
            "5m",
            "warning",
            "Batch job {{ $labels.namespace }}/{{ $labels.job_name }} shard {{ $labels.shard }} "
            "makes no progress",
            f"Pod {{{{ $labels.pod }}}} has written no record for over {a.batch_stall_minutes} "
            "minutes (model loading included): a hung read, a stuck device, or a throttled pod.",
        ),
    ]
    quota = "namespace, resourcequota"
    capacity = [
        r.alert(
            "TeamGpuQuotaNearlyUsed",
            r.owned(
                f'max by ({quota}) (kube_resourcequota{{{gpu_quota}, type="used"}}) / '
                f'max by ({quota}) (kube_resourcequota{{{gpu_quota}, type="hard"}} > 0) '
                f"> {a.quota_used_ratio:g}"
            ),
            "30m",
            "info",
            "Team {{ $labels.namespace }} uses {{ $value | humanizePercentage }} of its GPU quota",
            "New GPU pods will be rejected once the quota is used up.",
        ),
    ]
    node_label = "label_" + _meta_label(catalog.NODE_GROUP_LABEL)
    for group, max_size in sorted(args.node_groups.items()):
        capacity.append(
            r.alert(
                "GpuNodeGroupAtMaxSize",
                f'count(kube_node_labels{{{node_label}="{group}"}}) >= {max_size}',
                "30m",
                "warning",
                f"GPU node group {group} is at its maxSize ({max_size})",
                "Pending GPU pods cannot get nodes: raise maxSize or lower demand.",
                {"node_group": group, "team": r.platform_team},
            )
        )
    return [
        {"name": "mlplatform-gpu", "rules": gpu},
        {"name": "mlplatform-inference", "rules": inference},
        {"name": "mlplatform-jobs", "rules": jobs},
        {"name": "mlplatform-capacity", "rules": capacity},
    ]


def _owner(t: InferenceTarget) -> dict[str, str]:
    return {"namespace": t.namespace, "team": t.namespace, "service": t.name, "model": t.model}


def _vllm_alerts(r: _Rules, a: AlertThresholds, t: InferenceTarget) -> list[dict[str, Any]]:
    """vLLM's token latencies (p95 over the service's pods), KV cache and queue.
    The service's PodMonitor puts `service` on every series."""
    sel = f'namespace="{t.namespace}", service="{t.name}"'
    by = "namespace, service"
    where = f"{t.namespace}/{t.name}"

    def p95(histogram: str) -> str:
        return (
            f"histogram_quantile({SERVED_QUANTILE:g}, sum by (le, {by}) "
            f"(rate({histogram}_bucket{{{sel}}}[5m])))"
        )

    return [
        r.alert(
            "VllmTimeToFirstTokenOverSlo",
            f"{p95('vllm:time_to_first_token_seconds')} > {t.ttft_slo_seconds:g}",
            "10m",
            "warning",
            f"{where}: p95 time to first token over its {t.ttft_slo_seconds * 1000:g} ms SLO",
            "Prompts wait before prefill: look at queue depth and KV-cache usage, scale out "
            "(check the HPA) or lower maxModelLen.",
            _owner(t),
        ),
        r.alert(
            "VllmInterTokenLatencyOverSlo",
            f"{p95('vllm:inter_token_latency_seconds')} > {t.itl_slo_seconds:g}",
            "10m",
            "warning",
            f"{where}: p95 inter-token latency over its {t.itl_slo_seconds * 1000:g} ms SLO",
            "Decoding is slow: too many sequences per GPU (batch too large), preemptions from "
            "a full KV cache, or a throttled GPU.",
            _owner(t),
        ),
        r.alert(
            "VllmKvCacheNearlyFull",
            f"max by ({by}, pod) (vllm:kv_cache_usage_perc{{{sel}}}) > {a.kv_cache_used_ratio:g}",
            "15m",
            "warning",
            f"{where}: KV cache of pod {{{{ $labels.pod }}}} is "
            "{{ $value | humanizePercentage }} full",
            "vLLM preempts (and recomputes) running requests when the KV cache is full: "
            "scale out, raise gpuMemoryUtilization or lower maxModelLen.",
            _owner(t),
        ),
        r.alert(
            "VllmQueueBacklog",
            f"avg by ({by}) (vllm:num_requests_waiting{{{sel}}}) > {a.queue_backlog_per_pod:g}",
            "15m",
            "warning",
            f"{where}: {{{{ $value }}}} requests waiting per pod",
            "Requests queue for a slot in the batch: the HPA is at maxReplicas, GPUs for new "
            "replicas are not there (pending pods), or the target is too high.",
            _owner(t),
        ),
    ]


def _triton_alerts(r: _Rules, a: AlertThresholds, t: InferenceTarget) -> list[dict[str, Any]]:
    """Triton's request latency (its counters give the average, not a quantile),
    failures and queue. The service's PodMonitor puts `service` on every series."""
    sel = f'namespace="{t.namespace}", service="{t.name}"'
    by = "namespace, service"
    where = f"{t.namespace}/{t.name}"

    def rate(counter: str) -> str:
        return f"sum by ({by}) (rate({counter}{{{sel}}}[5m]))"

    success = rate("nv_inference_request_success")
    failure = rate("nv_inference_request_failure")
    return [
        r.alert(
            "TritonLatencyOverSlo",
            f"{rate('nv_inference_request_duration_us')} / {success} / 1e6 "
            f"> {t.latency_slo_seconds:g}",
            "10m",
            "warning",
            f"{where}: average request latency over its {t.latency_slo_seconds * 1000:g} ms SLO",
            "Compare queue and compute time (nv_inference_queue_duration_us, "
            "nv_inference_compute_infer_duration_us): queueing means scale out or tune dynamic "
            "batching; compute means a slower model or a busy GPU.",
            _owner(t),
        ),
        r.alert(
            "TritonErrorRatio",
            f"{failure} / ({failure} + {success}) > {a.inference_error_ratio:g}",
            "10m",
            "critical",
            f"{where}: more than {a.inference_error_ratio:.0%} of requests fail",
            "Triton counts failed inference requests per model: see the server's log for the "
            "reason (bad inputs, a backend error, a model that failed to load).",
            _owner(t),
        ),
        r.alert(
            "TritonQueueBacklog",
            f"avg by ({by}) (sum by ({by}, pod) (nv_inference_pending_request_count{{{sel}}})) "
            f"> {a.queue_backlog_per_pod:g}",
            "15m",
            "warning",
            f"{where}: {{{{ $value }}}} requests pending per pod",
            "Requests wait in Triton's scheduler: the HPA is at maxReplicas, new replicas "
            "cannot get GPUs, or the target is too high.",
            _owner(t),
        ),
    ]
