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
- ServiceMonitor for DCGM, PodMonitors for the inference services and the
  training jobs; PrometheusRules for GPU health, inference SLOs, jobs and
  capacity; Grafana dashboards as ConfigMaps for the Grafana sidecar.

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


@dataclass(frozen=True)
class InferenceTarget:
    """An inference service the rules watch: where, which model, its latency SLO."""

    namespace: str
    name: str
    model: str
    latency_slo_seconds: float


@dataclass(frozen=True)
class MonitoringArgs:
    settings: MonitoringSettings
    environment: str
    team_namespaces: list[str]
    storage_class: str | None
    inference: list[InferenceTarget] = field(default_factory=list)
    node_groups: dict[str, int] = field(default_factory=dict)  # GPU node group -> maxSize


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
                values=adapter_values(ns),
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
                                }
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
                "selector": {"matchLabels": {WORKLOAD_KIND_LABEL: "inference"}},
                "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
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
                "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
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
    return {
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


def adapter_values(namespace: str) -> dict[str, Any]:
    """prometheus-adapter: serve the runtime's in-flight requests per pod as the
    custom metric the InferenceService HPAs scale on."""
    return {
        "prometheus": {"url": f"http://{STACK_CHART}-prometheus.{namespace}.svc", "port": 9090},
        "rules": {
            "default": False,
            "custom": [
                {
                    "seriesQuery": 'mlserve_inflight_requests{namespace!="",pod!=""}',
                    "resources": {
                        "overrides": {
                            "namespace": {"resource": "namespace"},
                            "pod": {"resource": "pod"},
                        }
                    },
                    "name": {"matches": "^(.*)$", "as": "${1}"},
                    "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
                }
            ],
        },
    }


def _alert(
    name: str, expr: str, for_: str, severity: str, summary: str, description: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, "platform": "mlplatform"},
        "annotations": {"summary": summary, "description": description},
    }


def alert_groups(args: MonitoringArgs) -> list[dict[str, Any]]:
    """The PrometheusRule groups. Every metric name used is in metric_catalog."""
    a = args.settings.alerts
    teams = "|".join(sorted(args.team_namespaces)) or "none"
    gpu_quota = 'resource="requests.nvidia.com/gpu"'
    gpu = [
        _alert(
            "GpuAllocatedButIdle",
            'avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{pod!=""}) '
            f"< {a.gpu_idle_utilization:g}",
            f"{a.gpu_idle_minutes}m",
            "warning",
            "GPU held by {{ $labels.namespace }}/{{ $labels.pod }} is idle",
            f"Utilisation below {a.gpu_idle_utilization:g}% for {a.gpu_idle_minutes} minutes while "
            "allocated: release it for someone else.",
        ),
        _alert(
            "GpuMemoryNearlyFull",
            "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) "
            f"> {a.gpu_memory_used_ratio:g}",
            "10m",
            "warning",
            "GPU memory nearly full on {{ $labels.node }} GPU {{ $labels.gpu }}",
            "The next allocation will fail with out-of-memory.",
        ),
        _alert(
            "GpuXidError",
            "max_over_time(DCGM_FI_DEV_XID_ERRORS[10m]) > 0",
            "0m",
            "critical",
            "XID {{ $value }} on {{ $labels.node }} GPU {{ $labels.gpu }}",
            "The driver reported a GPU fault; EKS node auto-repair replaces failing nodes.",
        ),
    ]
    inference = []
    for t in args.inference:
        sel = f'namespace="{t.namespace}", model="{t.model}"'
        inference += [
            _alert(
                "InferenceLatencyOverSlo",
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(mlserve_request_duration_seconds_bucket{{{sel}}}[5m]))) "
                f"> {t.latency_slo_seconds:g}",
                "10m",
                "warning",
                f"{t.namespace}/{t.name}: p95 latency over its "
                f"{t.latency_slo_seconds * 1000:g} ms SLO",
                "Scale out (check the HPA), or look at queue depth and batch sizes.",
            ),
            _alert(
                "InferenceErrorRatio",
                f'sum(rate(mlserve_requests_total{{{sel}, code=~"5.."}}[5m])) / '
                f"sum(rate(mlserve_requests_total{{{sel}}}[5m])) > {a.inference_error_ratio:g}",
                "10m",
                "critical",
                f"{t.namespace}/{t.name}: more than {a.inference_error_ratio:.0%} of requests fail",
                "5xx includes 503s from a full queue: the service is overloaded or broken.",
            ),
        ]
    inference.append(
        _alert(
            "HpaAtMaxReplicas",
            f'kube_horizontalpodautoscaler_status_current_replicas{{namespace=~"{teams}"}} >= on '
            "(namespace, horizontalpodautoscaler) kube_horizontalpodautoscaler_spec_max_replicas",
            "15m",
            "warning",
            "{{ $labels.namespace }}/{{ $labels.horizontalpodautoscaler }} is pinned at "
            "maxReplicas",
            "Demand exceeds what the autoscaler may add: raise maxReplicas or the team's quota.",
        )
    )
    jobs = [
        _alert(
            "JobFailed",
            f'kube_job_failed{{namespace=~"{teams}", condition="true"}} > 0',
            "0m",
            "warning",
            "Job {{ $labels.namespace }}/{{ $labels.job_name }} failed",
            "The Job exhausted its retries or hit a FailJob rule (bad input, or a rank crashed).",
        ),
        _alert(
            "CronJobMissedSchedule",
            f'(time() - kube_cronjob_next_schedule_time{{namespace=~"{teams}"}}) > 900 '
            "and on (namespace, cronjob) kube_cronjob_spec_suspend == 0",
            "5m",
            "warning",
            "CronJob {{ $labels.namespace }}/{{ $labels.cronjob }} missed its schedule",
            "A run due over 15 minutes ago did not start (previous run still going, no "
            "capacity, or past startingDeadlineSeconds).",
        ),
    ]
    capacity = [
        _alert(
            "TeamGpuQuotaNearlyUsed",
            f'kube_resourcequota{{{gpu_quota}, type="used"}} / ignoring (type) '
            f'(kube_resourcequota{{{gpu_quota}, type="hard"}} > 0) > {a.quota_used_ratio:g}',
            "30m",
            "info",
            "Team {{ $labels.namespace }} uses {{ $value | humanizePercentage }} of its GPU quota",
            "New GPU pods will be rejected once the quota is used up.",
        ),
    ]
    node_label = "label_" + "".join(c if c.isalnum() else "_" for c in catalog.NODE_GROUP_LABEL)
    for group, max_size in sorted(args.node_groups.items()):
        capacity.append(
            _alert(
                "GpuNodeGroupAtMaxSize",
                f'count(kube_node_labels{{{node_label}="{group}"}}) >= {max_size}',
                "30m",
                "warning",
                f"GPU node group {group} is at its maxSize ({max_size})",
                "Pending GPU pods cannot get nodes: raise maxSize or lower demand.",
            )
        )
    return [
        {"name": "mlplatform-gpu", "rules": gpu},
        {"name": "mlplatform-inference", "rules": inference},
        {"name": "mlplatform-jobs", "rules": jobs},
        {"name": "mlplatform-capacity", "rules": capacity},
    ]
