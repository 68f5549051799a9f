"""Monitoring of the Kueue queues: a ServiceMonitor for Kueue's metrics, one
alert (a queue stuck with pending workloads) and one dashboard panel (pending
and admitted workloads per queue). Kept apart from workloads/monitoring.py:
it exists only when `mlplatform:queueing` is on.

Metric names are Kueue v0.19.2's (pkg/metrics/metrics.go):
`kueue_pending_workloads{cluster_queue, status="active"|"inadmissible"}`,
`kueue_admitted_active_workloads{cluster_queue}` and the counter
`kueue_admitted_workloads_total{cluster_queue}`. Kueue exports no per-workload
age, so the alert reads "this queue has had pending workloads and admitted
none for N minutes": then its oldest pending workload has waited at least N.

Kueue serves metrics over HTTPS (:8443) behind Kubernetes authn/authz: the
scraper presents its service account token, which kube-prometheus-stack's
Prometheus role may use for `get /metrics`. The certificate is Kueue's own
self-signed one, so the scrape does not verify it (in-cluster traffic).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import meta
from workloads import dashboards

MONITORING_API = "monitoring.coreos.com/v1"
DASHBOARD_LABEL = "grafana_dashboard"

KUEUE_SERIES: frozenset[str] = frozenset(
    {
        "kueue_pending_workloads",
        "kueue_admitted_active_workloads",
        "kueue_admitted_workloads_total",
    }
)

DASHBOARD = dashboards.Dashboard(
    uid="mlplatform-queueing",
    title="mlplatform / Queues",
    description="Kueue: workloads pending and admitted per team queue (ClusterQueue).",
    panels=(
        dashboards.Panel(
            "Workloads pending and admitted per queue",
            (
                dashboards.Target(
                    "sum by (cluster_queue, status) (kueue_pending_workloads)",
                    "{{cluster_queue}} pending ({{status}})",
                ),
                dashboards.Target(
                    "sum by (cluster_queue) (kueue_admitted_active_workloads)",
                    "{{cluster_queue}} admitted",
                ),
            ),
            description="Pending: waiting for quota (active) or found not to fit until "
            "something changes (inadmissible). Admitted: running or starting.",
        ),
    ),
)


ALERT = "KueueWorkloadPendingTooLong"


def alert_group(pending_minutes: int, runbook_url: str = "docs/alerts.md") -> dict[str, Any]:
    """The `mlplatform-queueing` PrometheusRule group. Like the platform's other
    alerts, it names what it is about (`cluster_queue`) and who owns it: each
    team's ClusterQueue is named after the team, so `team` is the queue's name."""
    window = f"{pending_minutes}m"
    stuck = (
        "sum by (cluster_queue) (kueue_pending_workloads) > 0 unless on "
        "(cluster_queue) sum by (cluster_queue) "
        f"(increase(kueue_admitted_workloads_total[{window}])) > 0"
    )
    return {
        "name": "mlplatform-queueing",
        "rules": [
            {
                "alert": ALERT,
                "expr": f'label_replace({stuck}, "team", "$1", "cluster_queue", "(.+)")',
                "for": window,
                "labels": {"severity": "warning", "platform": "mlplatform"},
                "annotations": {
                    "summary": "Queue {{ $labels.cluster_queue }} has admitted nothing for "
                    f"{pending_minutes} minutes while workloads wait",
                    "description": "Its oldest pending workload has waited at least "
                    f"{pending_minutes} minutes. `kubectl get workloads -n <team>` shows why "
                    "(quota used up, no flavor fits, or the pool cannot scale).",
                    "runbook_url": f"{runbook_url}#{ALERT.lower()}",
                },
            }
        ],
    }


@dataclass(frozen=True)
class QueueMonitoringArgs:
    monitoring_namespace: str
    kueue_namespace: str
    pending_minutes: int
    runbook_url: str
    metrics_service_labels: dict[str, str]
    metrics_port: str
    # The releases installing the CRDs (prometheus-operator's) and Kueue itself.
    depends_on: Sequence[pulumi.Resource] = ()


class QueueMonitoring(pulumi.ComponentResource):
    """ServiceMonitor, alert rule and dashboard for Kueue.

    Outputs: `dashboard` (uid -> title), `alert_group` (name).
    """

    def __init__(
        self, name: str, args: QueueMonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:QueueMonitoring", name, None, opts)
        ns = args.monitoring_namespace
        labels = meta.labels("kueue", "mlplatform", "monitoring")
        child = pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on))
        k8s.apiextensions.CustomResource(
            f"{name}-monitor",
            api_version=MONITORING_API,
            kind="ServiceMonitor",
            metadata=meta.metadata("kueue", labels, ns),
            spec={
                "namespaceSelector": {"matchNames": [args.kueue_namespace]},
                "selector": {"matchLabels": dict(args.metrics_service_labels)},
                "endpoints": [
                    {
                        "port": args.metrics_port,
                        "path": "/metrics",
                        "scheme": "https",
                        "interval": "30s",
                        "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
                        "tlsConfig": {"insecureSkipVerify": True},
                    }
                ],
            },
            opts=child,
        )
        group = alert_group(args.pending_minutes, args.runbook_url)
        k8s.apiextensions.CustomResource(
            f"{name}-rules",
            api_version=MONITORING_API,
            kind="PrometheusRule",
            metadata=meta.metadata("mlplatform-queueing", labels, ns),
            spec={"groups": [group]},
            opts=child,
        )
        k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata=meta.metadata(
                DASHBOARD.uid,
                {**labels, DASHBOARD_LABEL: "1"},
                ns,
                {"grafana_folder": "mlplatform"},
            ),
            data={
                f"{DASHBOARD.uid}.json": json.dumps(DASHBOARD.render(), indent=1, sort_keys=True)
            },
            opts=child,
        )
        self.dashboard = {DASHBOARD.uid: DASHBOARD.title}
        self.alert_group = group["name"]
        self.register_outputs({"dashboard": self.dashboard, "alert_group": self.alert_group})
