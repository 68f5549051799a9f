"""Monitoring: the DCGM exporter, monitors, alert rules and dashboards, and the
consistency between them: every expression parses, every metric it names is
exported by something, every monitor selects what really exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.helpers import base_config, pod_spec, preview_cli, run
from tools.offline import Run
from workloads import dashboards, metric_catalog, monitoring
from workloads.serving import CustomMetric

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN = {"kind": "training", "name": "ft", "team": "vision", "gpus": 1, "memory": "8Gi"}
SERVE = {
    "kind": "inference",
    "name": "ranker",
    "team": "vision",
    "gpus": 1,
    "memory": "8Gi",
    "model": {"uri": "s3://m/r/v1"},
    "minReplicas": 1,
    "latencySloMs": 250,
}
DDP = {
    "kind": "distributed",
    "name": "ddp",
    "team": "vision",
    "nodes": 1,
    "gpus": 1,
    "memory": "8Gi",
}
BATCH = {
    "kind": "batch",
    "name": "scoring",
    "team": "vision",
    "model": {"uri": "s3://m/s/v1"},
    "input": "s3://d/in",
    "output": "s3://d/out",
    "shards": 4,
    "parallelism": 2,
}


def stack(**overrides: Any) -> dict[str, Any]:
    return base_config(
        runtimeImage={"build": {}}, workloads=[TRAIN, SERVE, DDP, BATCH], **overrides
    )


@pytest.fixture(scope="module")
def observed() -> Run:
    return run(stack())


def _custom(r: Run, kind: str, name: str) -> dict[str, Any]:
    return r.manifest(kind, name, "monitoring")


def _alerts(r: Run) -> dict[str, list[dict[str, Any]]]:
    rule = _custom(r, "PrometheusRule", "mlplatform")
    out: dict[str, list[dict[str, Any]]] = {}
    for group in rule["spec"]["groups"]:
        for a in group["rules"]:
            out.setdefault(a["alert"], []).append(a)
    return out


# -- DCGM exporter ----------------------------------------------------------------


def test_dcgm_exporter_daemonset(observed: Run) -> None:
    ds = observed.manifest("DaemonSet", "dcgm-exporter", "kube-system")
    spec = pod_spec(ds)
    (c,) = spec["containers"]
    assert c["image"] == monitoring.DCGM_EXPORTER_IMAGE and "@sha256:" in c["image"]
    assert spec["priorityClassName"] == "system-node-critical"
    keys = {t["key"] for t in spec["tolerations"]}
    assert keys == {"nvidia.com/gpu", "mlplatform.io/capacity-type"}  # spot GPU nodes too
    expressions = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in expressions
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DCGM_EXPORTER_KUBERNETES"] == "true"
    assert env["DCGM_EXPORTER_COLLECTORS"] == "/etc/dcgm-exporter/counters/counters.csv"
    assert env["DCGM_EXPORTER_LISTEN"] == ":9400"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert {
        "name": "pod-resources",
        "mountPath": "/var/lib/kubelet/pod-resources",
        "readOnly": True,
    } in (c["volumeMounts"])
    assert {
        "name": "pod-resources",
        "hostPath": {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"},
    } in (spec["volumes"])


def test_counters_file_is_the_catalog(observed: Run) -> None:
    cm = observed.manifest("ConfigMap", "dcgm-exporter-counters", "kube-system")
    text = cm["data"]["counters.csv"]
    assert text == metric_catalog.dcgm_counters_csv(profiling=True)
    fields = {line.split(",")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert fields == metric_catalog.dcgm_series(profiling=True)
    assert {
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    } <= fields


def test_without_profiling_no_sys_admin_and_no_profiling_panels() -> None:
    r = run(stack(monitoring={"profilingMetrics": False}))
    c = pod_spec(r.manifest("DaemonSet", "dcgm-exporter", "kube-system"))["containers"][0]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    csv = r.manifest("ConfigMap", "dcgm-exporter-counters", "kube-system")["data"]["counters.csv"]
    assert "DCGM_FI_PROF_" not in csv
    gpu = json.loads(
        r.manifest("ConfigMap", "mlplatform-gpu", "monitoring")["data"]["mlplatform-gpu.json"]
    )
    assert "DCGM_FI_PROF_" not in json.dumps(gpu)
    assert len(gpu["panels"]) == len(dashboards.GPU.panels) - 1


def test_dcgm_service_monitor_selects_the_exporter_service(observed: Run) -> None:
    svc = observed.manifest("Service", "dcgm-exporter", "kube-system")
    ds = observed.manifest("DaemonSet", "dcgm-exporter", "kube-system")
    sm = _custom(observed, "ServiceMonitor", "dcgm-exporter")["spec"]
    assert sm["namespaceSelector"] == {"matchNames": ["kube-system"]}
    # The ServiceMonitor must select labels the Service really has ...
    assert sm["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # ... on a port the Service really names, and the Service must reach the pods.
    assert {p["name"] for p in svc["spec"]["ports"]} >= {e["port"] for e in sm["endpoints"]}
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    (endpoint,) = sm["endpoints"]
    assert endpoint["honorLabels"] is True
    # The exporter's own target labels are dropped: with honorLabels they would
    # otherwise label every GPU no pod holds as held by the exporter's pod.
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"},
        {"action": "labeldrop", "regex": "namespace|pod|container"},
    ]


def test_gpu_expressions_count_only_gpus_a_pod_holds(observed: Run) -> None:
    """What is said of a pod or a namespace counts only GPUs a pod holds; unallocated
    GPUs have their own panel. (`pod!=""` alone would match every GPU.)"""
    (idle,) = _alerts(observed)["GpuAllocatedButIdle"]
    assert f"DCGM_FI_DEV_GPU_UTIL{{{metric_catalog.GPU_HELD}}}" in idle["expr"]
    per_pod = [
        (p.title, t.expr)
        for p in dashboards.GPU.panels
        for t in p.targets
        if "{{pod}}" in t.legend or "{{namespace}}" in t.legend
    ]
    assert len(per_pod) == 5
    for title, expr in per_pod:
        assert metric_catalog.GPU_HELD in expr, title
    (unallocated,) = [p for p in dashboards.GPU.panels if p.title.startswith("Unallocated")]
    assert metric_catalog.GPU_UNHELD in unallocated.targets[0].expr
    for where, expr in _expressions(observed):
        assert 'pod!=""}' not in expr.replace(metric_catalog.GPU_HELD, ""), where


# -- workload monitors -----------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
    return True


@pytest.mark.parametrize(
    ("monitor", "kind", "name", "port"),
    [
        ("mlplatform-inference", "Deployment", "ranker", "http"),
        ("mlplatform-training", "Job", "ft", "metrics"),
        ("mlplatform-training", "Job", "ddp", "metrics"),
        ("mlplatform-batch", "Job", "scoring", "metrics"),
    ],
)
def test_pod_monitors_select_the_workload_pods(
    observed: Run, monitor: str, kind: str, name: str, port: str
) -> None:
    pm = _custom(observed, "PodMonitor", monitor)["spec"]
    workload = observed.manifest(kind, name, "vision")
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert _selects(pm["selector"], labels), (pm["selector"], labels)
    assert "vision" in pm["namespaceSelector"]["matchNames"]
    container_ports = {
        p["name"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])
    }
    assert {e["port"] for e in pm["podMetricsEndpoints"]} <= container_ports
    for other in set(POD_MONITORS) - {monitor}:
        assert not _selects(_custom(observed, "PodMonitor", other)["spec"]["selector"], labels)


POD_MONITORS = ("mlplatform-inference", "mlplatform-training", "mlplatform-batch")


@pytest.mark.parametrize("monitor", ["mlplatform-training", "mlplatform-batch"])
def test_job_monitors_label_series_with_the_job_and_shard(observed: Run, monitor: str) -> None:
    """Job-wide numbers are aggregated per Job (`job_name`); batch series name their shard."""
    (endpoint,) = _custom(observed, "PodMonitor", monitor)["spec"]["podMetricsEndpoints"]
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets["job_name"] == ["__meta_kubernetes_pod_label_batch_kubernetes_io_job_name"]
    if monitor == "mlplatform-batch":
        assert targets["shard"] == [
            "__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"
        ]


def test_batch_pods_serve_their_metrics(observed: Run) -> None:
    (c,) = pod_spec(observed.manifest("Job", "scoring", "vision"))["containers"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    assert "--metrics-port=9090" in c["args"]


def test_team_network_policy_admits_the_scrape_ports(observed: Run) -> None:
    scrape = observed.manifest("NetworkPolicy", "allow-monitoring-scrape", "vision")["spec"][
        "ingress"
    ][0]
    assert scrape["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    ports = {p["port"] for p in scrape["ports"]}
    for monitor, kind, name in (
        ("mlplatform-inference", "Deployment", "ranker"),
        ("mlplatform-training", "Job", "ft"),
        ("mlplatform-batch", "Job", "scoring"),
    ):
        names = {
            e["port"]
            for e in _custom(observed, "PodMonitor", monitor)["spec"]["podMetricsEndpoints"]
        }
        container_ports = {
            p["name"]: p["containerPort"]
            for c in pod_spec(observed.manifest(kind, name, "vision"))["containers"]
            for p in c.get("ports", [])
        }
        assert {container_ports[n] for n in names} <= ports


# -- alert rules ------------------------------------------------------------------


ALERTS = {
    "GpuAllocatedButIdle",
    "GpuMemoryNearlyFull",
    "GpuXidError",
    "InferenceLatencyOverSlo",
    "InferenceErrorRatio",
    "HpaAtMaxReplicas",
    "JobFailed",
    "CronJobMissedSchedule",
    "BatchShardStalled",
    "TeamGpuQuotaNearlyUsed",
    "GpuNodeGroupAtMaxSize",
}
# Alerts of the serving presets, generated per vLLM or Triton service.
PRESET_ALERTS = {
    "VllmTimeToFirstTokenOverSlo",
    "VllmInterTokenLatencyOverSlo",
    "VllmKvCacheNearlyFull",
    "VllmQueueBacklog",
    "TritonLatencyOverSlo",
    "TritonErrorRatio",
    "TritonQueueBacklog",
}


def test_alert_rules(observed: Run) -> None:
    alerts = _alerts(observed)
    assert set(alerts) == ALERTS
    (slo,) = alerts["InferenceLatencyOverSlo"]
    assert 'namespace="vision", model="ranker"' in slo["expr"] and slo["expr"].endswith("> 0.25")
    assert slo["for"] == "10m" and slo["labels"]["severity"] == "warning"
    assert slo["labels"] | {"severity": "x"} == {
        "severity": "x",
        "platform": "mlplatform",
        "namespace": "vision",
        "team": "vision",
        "service": "ranker",
        "model": "ranker",
    }
    (node_group,) = alerts["GpuNodeGroupAtMaxSize"]
    assert (
        node_group["expr"] == 'count(kube_node_labels{label_mlplatform_io_node_group="a10g"}) >= 4'
    )
    assert node_group["labels"]["node_group"] == "a10g"
    assert node_group["labels"]["team"] == "platform"
    (jobs,) = alerts["JobFailed"]
    assert 'namespace=~"vision"' in jobs["expr"] and "offset 60m" in jobs["expr"]
    for rules in alerts.values():
        for a in rules:
            assert a["annotations"]["summary"] and a["annotations"]["description"]
            assert a["labels"]["severity"] in ("critical", "warning", "info")
            assert a["annotations"]["runbook_url"] == f"docs/alerts.md#{a['alert'].lower()}"
            # An owner on every alert: a rule label, or one the expression adds.
            assert "team" in a["labels"] or a["expr"].startswith("label_replace("), a["alert"]
    groups = [
        g["name"] for g in _custom(observed, "PrometheusRule", "mlplatform")["spec"]["groups"]
    ]
    assert observed.outputs["monitoring"]["alertGroups"] == groups


def test_alert_settings() -> None:
    r = run(
        stack(
            monitoring={
                "platformTeam": "gpu-infra",
                "runbookUrl": "https://git.example.com/ml/platform/docs/alerts.md",
                "alertmanagerConfigSecret": "alertmanager-routes",
                "alerts": {"jobFailedMinutes": 30, "batchStallMinutes": 20},
            }
        )
    )
    alerts = _alerts(r)
    assert alerts["GpuXidError"][0]["labels"]["team"] == "gpu-infra"
    assert '"team", "gpu-infra", "team", ""' in alerts["GpuAllocatedButIdle"][0]["expr"]
    assert alerts["JobFailed"][0]["annotations"]["runbook_url"] == (
        "https://git.example.com/ml/platform/docs/alerts.md#jobfailed"
    )
    values = r.one("kubernetes:helm.sh/v3:Release", "mlplatform-monitoring-stack").inputs["values"]
    assert values["alertmanager"] == {"alertmanagerSpec": {"configSecret": "alertmanager-routes"}}
    assert "offset 30m" in alerts["JobFailed"][0]["expr"]
    assert alerts["BatchShardStalled"][0]["expr"].count("> 1200") == 1


def _github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    text = heading.strip().lstrip("#").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


ALERTS_DOC = Path(__file__).parents[1] / "docs" / "alerts.md"


def test_every_alert_has_a_runbook() -> None:
    """docs/alerts.md has a section per alert (the runbook_url anchor) saying what to do."""
    doc = ALERTS_DOC.read_text()
    anchors = {_github_anchor(line) for line in doc.splitlines() if line.startswith("#")}
    sections = {block.split("\n", 1)[0].strip(): block for block in doc.split("\n### ")[1:]}
    from workloads import queue_monitoring

    # The preset alerts exist with vLLM or Triton services, the Kueue one with queueing on.
    every_alert = {*ALERTS, *PRESET_ALERTS, queue_monitoring.ALERT}
    for alert in every_alert:
        assert alert.lower() in anchors, f"docs/alerts.md has no section for {alert}"
        assert "**What to do**" in sections[alert], f"{alert}: the runbook says what to do"
    assert set(sections) == every_alert


def test_the_routing_example_routes_by_team() -> None:
    doc = ALERTS_DOC.read_text()
    snippet = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(snippet)
    matchers = [m for r in config["route"]["routes"] for m in r["matchers"]]
    assert any(m.startswith("team=") for m in matchers)
    receivers = {r["name"] for r in config["receivers"]}
    assert {r["receiver"] for r in config["route"]["routes"]} <= receivers


def _expressions(r: Run) -> list[tuple[str, str]]:
    out = []
    for group in _custom(r, "PrometheusRule", "mlplatform")["spec"]["groups"]:
        out += [(f"alert {a['alert']}", a["expr"]) for a in group["rules"]]
    for d in dashboards.DASHBOARDS:
        rendered = json.loads(r.manifest("ConfigMap", d.uid, "monitoring")["data"][f"{d.uid}.json"])
        for panel in rendered["panels"]:
            out += [(f"{d.uid} / {panel['title']}", t["expr"]) for t in panel["targets"]]
        for v in rendered["templating"]["list"]:
            if v["type"] == "query":
                out.append((f"{d.uid} / ${v['name']}", v["definition"]))
    return out


def _metric_names(expr: str) -> set[str]:
    for variable, value in dashboards.GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    if expr.startswith("label_values("):  # a Grafana variable query: label_values(metric, label)
        return {expr.removeprefix("label_values(").split(",")[0].strip()}
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_every_expression_parses_and_uses_exported_metrics(observed: Run) -> None:
    expressions = _expressions(observed)
    assert len(expressions) > 30
    known = metric_catalog.known_series(profiling=True)
    for where, expr in expressions:
        try:
            names = _metric_names(expr)
        except ValueError as exc:
            raise AssertionError(f"{where}: {expr!r} does not parse: {exc}") from None
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= known, f"{where}: {sorted(names - known)} are exported by nothing we run"


def test_the_parser_rejects_broken_promql() -> None:
    with pytest.raises(ValueError):
        _metric_names("sum(rate(mlserve_requests_total[5m]) by")


def test_hpa_custom_metric_is_served_by_the_adapter(observed: Run) -> None:
    release = observed.one("kubernetes:helm.sh/v3:Release", "mlplatform-monitoring-adapter")
    rules = release.inputs["values"]["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == "mlserve_inflight_requests"]
    assert rule["seriesQuery"] == 'mlserve_inflight_requests{namespace!="",pod!=""}'
    assert rule["name"]["matches"] == "^mlserve_inflight_requests$"
    assert rule["metricsQuery"] == "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"
    assert CustomMetric().name is None  # the runtime's queue metric
    assert "mlserve_inflight_requests" in metric_catalog.RUNTIME_SERIES


# -- dashboards --------------------------------------------------------------------


@pytest.mark.parametrize(
    "dashboard", dashboards.DASHBOARDS, ids=[d.uid for d in dashboards.DASHBOARDS]
)
def test_dashboard_json_is_valid(observed: Run, dashboard: dashboards.Dashboard) -> None:
    cm = observed.manifest("ConfigMap", dashboard.uid, "monitoring")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # what the Grafana sidecar selects
    d = json.loads(cm["data"][f"{dashboard.uid}.json"])
    assert (
        d["schemaVersion"] == dashboards.SCHEMA_VERSION
        and d["uid"] == dashboard.uid
        and len(d["uid"]) <= 40
    )
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    (ds,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    cells = set()
    for p in d["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        g = p["gridPos"]
        cell = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cell & cells, f"panel {p['title']!r} overlaps another"
        cells |= cell
        assert g["x"] + g["w"] <= 24
    titles = [p["title"] for p in d["panels"]]
    assert len(titles) == len(set(titles))


def test_dashboards_in_outputs(observed: Run) -> None:
    assert observed.outputs["monitoring"]["dashboards"] == {
        d.uid: d.title for d in dashboards.DASHBOARDS
    }


# -- the stack --------------------------------------------------------------------


def test_stack_releases_are_pinned_and_select_everything(observed: Run) -> None:
    stack_release = observed.one("kubernetes:helm.sh/v3:Release", "mlplatform-monitoring-stack")
    inputs = stack_release.inputs
    assert (inputs["chart"], inputs["version"]) == ("kube-prometheus-stack", "86.3.2")
    assert inputs["repositoryOpts"]["repo"] == "https://prometheus-community.github.io/helm-charts"
    spec = inputs["values"]["prometheus"]["prometheusSpec"]
    for key in (
        "serviceMonitorSelectorNilUsesHelmValues",
        "podMonitorSelectorNilUsesHelmValues",
        "ruleSelectorNilUsesHelmValues",
    ):
        assert spec[key] is False
    sidecar = inputs["values"]["grafana"]["sidecar"]["dashboards"]
    assert (sidecar["label"], sidecar["labelValue"], sidecar["searchNamespace"]) == (
        "grafana_dashboard",
        "1",
        "ALL",
    )
    # kube-state-metrics exports the node-group label the at-max alert reads.
    allow = inputs["values"]["kube-state-metrics"]["metricLabelsAllowlist"][0]
    assert "mlplatform.io/node-group" in allow
    assert spec["storageSpec"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "gp3"
    ns = observed.manifest("Namespace", "monitoring")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # Monitors and rules wait for the chart that installs their CRDs.
    monitor = next(r for r in observed.records if r.name == "mlplatform-monitoring-rules")
    assert "mlplatform-monitoring-stack" in monitor.options["dependsOn"]
    assert observed.outputs["monitoring"]["stack"] == "kube-prometheus-stack 86.3.2"


def test_existing_prometheus_operator() -> None:
    r = run(stack(monitoring={"installStack": False, "namespace": "observability"}))
    # (Karpenter's releases belong to capacity, not monitoring.)
    assert not [x for x in r.by_type("kubernetes:helm.sh/v3:Release") if "monitoring" in x.name]
    assert not [
        m
        for m in r.manifests()
        if m["kind"] == "Namespace" and m["metadata"]["name"] == "observability"
    ]
    assert r.manifest("PrometheusRule", "mlplatform", "observability")
    assert r.outputs["monitoring"]["stack"] is None


def test_custom_resources_are_validated_against_the_operator_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = preview_cli(tmp_path, base_config(), FIXTURES / "bad_monitor_program.py")
    err = capsys.readouterr().err
    assert code == 3
    assert "monitoring/podmonitor-broken.yaml: spec.podMetricsEndpoints: must be array" in err
    plan = (out / "plan.md").read_text()
    assert "validated against prometheus-operator v0.91.0 models" in plan
