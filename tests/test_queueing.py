"""Queueing with Kueue: the objects rendered from the stack config, the jobs
that use them, the Kueue models that validate them offline, the bad inputs that
stop the preview, and the admission simulation."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from infra import catalog, kueue_api, quantity, scheduling
from infra.config_types import ConfigError
from infra.gpu_nodes import node_labels
from infra.queueing import CHART, CHART_VERSION, LOCAL_QUEUE
from mlplatform.loading import load_settings
from policies import queue_sim
from tests.helpers import assert_config_error, base_config, pod_spec, preview, preview_cli
from tools.offline import read_stack_config, stack_file
from tools.policy import resources
from tools.result import Preview

QUEUE = kueue_api.QUEUE_NAME_LABEL
GPU = catalog.GPU_RESOURCE


def queued_config(**overrides: Any) -> dict[str, Any]:
    """Two pools (on-demand L40S, spot A10G), two teams, queueing on."""
    config = base_config(
        gpuNodeGroups=[
            {"name": "l40s", "instanceTypes": ["g6e.2xlarge"], "maxSize": 4},
            {
                "name": "a10g-spot",
                "instanceTypes": ["g5.12xlarge"],
                "capacityType": "SPOT",
                "maxSize": 2,
            },
        ],
        teams=[
            {"name": "research", "quota": {"gpus": 9, "cpu": "96", "memory": "384Gi"}},
            {"name": "vision", "quota": {"gpus": 3}},
        ],
        runtimeImage={"ref": "registry.example/runtime@sha256:" + "b" * 64},
        queueing={
            "enabled": True,
            "teams": {
                "research": {"a10g-spot": {"gpus": 8}, "l40s": {"gpus": 1}},
                "vision": {"l40s": {"gpus": 2, "borrowingLimit": 1}},
            },
        },
        workloads=[
            {"kind": "training", "name": "ft", "team": "research", "gpus": 1, "memory": "16Gi"},
            {
                "kind": "training",
                "name": "nightly",
                "team": "vision",
                "gpus": 1,
                "memory": "16Gi",
                "schedule": "0 3 * * *",
                "priorityClass": "training-high",
            },
            {
                "kind": "distributed",
                "name": "ddp",
                "team": "research",
                "nodes": 2,
                "gpus": 4,
                "memory": "64Gi",
                "accelerators": ["nvidia-a10g"],
                "priorityClass": "training-preemptible",
                "checkpoint": {"storageClass": "efs"},
            },
            {
                "kind": "batch",
                "name": "score",
                "team": "vision",
                "gpus": 1,
                "memory": "16Gi",
                "model": {"uri": "s3://m/v1"},
                "input": "s3://d/in",
                "output": "s3://d/out",
                "shards": 8,
                "parallelism": 2,
            },
            {
                "kind": "inference",
                "name": "ranker",
                "team": "vision",
                "gpus": 1,
                "memory": "16Gi",
                "model": {"uri": "s3://m/v1"},
            },
        ],
    )
    for key, value in overrides.items():
        config[f"mlplatform:{key}"] = copy.deepcopy(value)
    return config


@pytest.fixture(scope="module")
def queued() -> Preview:
    return preview(queued_config())


def _manifests(p: Preview, kind: str) -> dict[str, dict[str, Any]]:
    return {
        (m["metadata"].get("namespace", "") + "/" + m["metadata"]["name"]).lstrip("/"): m
        for m in p.manifests.values()
        if m["kind"] == kind
    }


# ---------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------


def test_one_flavor_per_pool_with_the_pools_labels_and_taints(queued: Preview) -> None:
    flavors = _manifests(queued, "ResourceFlavor")
    assert set(flavors) == {"l40s", "a10g-spot", "cpu"}
    for group in queued.settings.gpu_node_groups:
        spec = flavors[group.name]["spec"]
        labels = node_labels(group)
        assert spec["nodeLabels"] == {
            catalog.NODE_GROUP_LABEL: labels[catalog.NODE_GROUP_LABEL],
            catalog.ACCELERATOR_LABEL: labels[catalog.ACCELERATOR_LABEL],
        }
        assert spec["nodeTaints"] == [
            {"key": t.key, "value": t.value, "effect": t.effect}
            for t in scheduling.gpu_node_taints(group.is_spot)
        ]
        capacity = flavors[group.name]["metadata"]["annotations"][queue_sim.CAPACITY_ANNOTATION]
        assert int(capacity) == group.max_gpus
    assert flavors["cpu"]["spec"] == {}


def test_one_cluster_queue_per_team_in_one_cohort(queued: Preview) -> None:
    cqs = _manifests(queued, "ClusterQueue")
    assert set(cqs) == {"research", "vision"}
    vision = cqs["vision"]["spec"]
    assert vision["cohortName"] == "mlplatform"
    assert vision["namespaceSelector"] == {"matchLabels": {catalog.NAMESPACE_NAME_LABEL: "vision"}}
    assert vision["preemption"] == {
        "withinClusterQueue": "LowerPriority",
        "reclaimWithinCohort": "Any",
        "borrowWithinCohort": {"policy": "Never"},
    }
    gpu_group, cpu_group = vision["resourceGroups"]
    assert gpu_group == {
        "coveredResources": [GPU],
        "flavors": [
            {
                "name": "l40s",
                "resources": [{"name": GPU, "nominalQuota": "2", "borrowingLimit": "1"}],
            }
        ],
    }
    assert cpu_group["coveredResources"] == ["cpu", "memory"]
    assert [f["name"] for f in cpu_group["flavors"]] == ["cpu"]


def test_local_queue_per_team_namespace_and_priority_classes(queued: Preview) -> None:
    lqs = _manifests(queued, "LocalQueue")
    assert {k: m["spec"]["clusterQueue"] for k, m in lqs.items()} == {
        f"research/{LOCAL_QUEUE}": "research",
        f"vision/{LOCAL_QUEUE}": "vision",
    }
    wpcs = _manifests(queued, "WorkloadPriorityClass")
    assert {k: m["value"] for k, m in wpcs.items()} == {
        p.name: p.value for p in catalog.PRIORITY_CLASSES
    }


def test_resource_quota_stays_a_ceiling_over_nominal_plus_borrowing() -> None:
    """Kueue does not read ResourceQuota (kueue#1403): for every stack that queues,
    each team's ResourceQuota covers its nominal plus borrowing GPUs, and its CPU
    and memory nominal quota equals the ResourceQuota."""
    checked = 0
    for stack in ("dev", "staging", "prod"):
        settings = load_settings(read_stack_config(stack_file(stack)), stack)
        if not settings.queueing.active:
            continue
        p = preview(read_stack_config(stack_file(stack)), stack)
        quotas = {
            m["metadata"]["namespace"]: m["spec"]["hard"]
            for m in _manifests(p, "ResourceQuota").values()
        }
        for name, cq in _manifests(p, "ClusterQueue").items():
            hard = quotas[name]
            reach = Decimal(0)
            for group in cq["spec"]["resourceGroups"]:
                for flavor in group["flavors"]:
                    for r in flavor["resources"]:
                        top = quantity.parse(r["nominalQuota"]) + quantity.parse(
                            r.get("borrowingLimit", "0")
                        )
                        if r["name"] == GPU:
                            reach += top
                        else:
                            assert top == quantity.parse(hard[f"requests.{r['name']}"])
            assert reach <= quantity.parse(hard[f"requests.{GPU}"]), (stack, name)
            checked += 1
    assert checked >= 4  # staging's two teams and prod's three


def test_kueue_release_is_pinned_on_system_nodes_with_wait_for_pods_ready(
    queued: Preview,
) -> None:
    (release,) = [
        r
        for r in queued.run.records
        if r.type == "kubernetes:helm.sh/v3:Release" and r.inputs.get("chart") == CHART
    ]
    assert release.inputs["version"] == CHART_VERSION
    values = release.inputs["values"]
    manager = values["controllerManager"]
    assert manager["nodeSelector"] == {catalog.NODE_ROLE_LABEL: "system"}
    assert manager["manager"]["image"] == {
        "repository": "registry.k8s.io/kueue/kueue",
        "tag": kueue_api.KUEUE_VERSION,
        "pullPolicy": "IfNotPresent",
    }
    config = json.loads(values["managerConfig"]["controllerManagerConfigYaml"])
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    assert config["waitForPodsReady"]["timeout"] == "20m"
    assert config["waitForPodsReady"]["requeuingStrategy"]["backoffBaseSeconds"] == 120
    assert config["manageJobsWithoutQueueName"] is False
    assert config["integrations"]["frameworks"] == ["batch/job"]
    # What comes with a GPU node is not queued: EFA jobs ask for it.
    assert config["resources"]["excludeResourcePrefixes"] == ["vpc.amazonaws.com/efa", "hugepages-"]


def test_queue_objects_wait_for_the_release_that_installs_their_crds(queued: Preview) -> None:
    release = next(
        r
        for r in queued.run.records
        if r.type == "kubernetes:helm.sh/v3:Release" and r.inputs.get("chart") == CHART
    )
    kueue = [r for r in queued.run.records if r.type.startswith("kubernetes:kueue.x-k8s.io/")]
    assert kueue
    for r in kueue:
        assert release.name in r.options.get("dependsOn", []), r.name


def test_pytorchjob_integration_only_when_a_workload_uses_it() -> None:
    config = queued_config()
    ddp = config["mlplatform:workloads"][2]
    ddp["backend"] = "pytorchjob"
    p = preview(config)
    release = next(r for r in p.run.records if r.inputs.get("chart") == CHART)
    frameworks = json.loads(
        release.inputs["values"]["managerConfig"]["controllerManagerConfigYaml"]
    )
    assert frameworks["integrations"]["frameworks"] == ["batch/job", "kubeflow.org/pytorchjob"]
    job = next(m for m in p.manifests.values() if m["kind"] == "PyTorchJob")
    assert job["metadata"]["labels"][QUEUE] == LOCAL_QUEUE
    assert job["spec"]["runPolicy"]["suspend"] is True


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------


def test_every_job_is_queued_suspended_at_its_priority(queued: Preview) -> None:
    jobs = _manifests(queued, "Job")
    assert set(jobs) == {"research/ft", "research/ddp", "vision/score"}
    for m in jobs.values():
        assert m["metadata"]["labels"][QUEUE] == LOCAL_QUEUE
        assert m["spec"]["suspend"] is True
        assert (
            m["metadata"]["labels"][kueue_api.PRIORITY_CLASS_LABEL]
            == pod_spec(m)["priorityClassName"]
        )
    # The distributed job is one Indexed Job: one Kueue workload, all ranks at once.
    assert jobs["research/ddp"]["spec"]["completionMode"] == "Indexed"
    cron = _manifests(queued, "CronJob")["vision/nightly"]
    assert cron["spec"]["jobTemplate"]["metadata"]["labels"][QUEUE] == LOCAL_QUEUE
    assert cron["spec"]["jobTemplate"]["spec"]["suspend"] is True


def test_serving_stays_outside_the_queue(queued: Preview) -> None:
    deployment = _manifests(queued, "Deployment")["vision/ranker"]
    assert QUEUE not in deployment["metadata"]["labels"]
    assert "suspend" not in deployment["spec"]


def test_queueing_off_changes_nothing() -> None:
    config = queued_config(queueing={"enabled": False})
    p = preview(config)
    assert not [m for m in p.manifests.values() if m["apiVersion"].startswith("kueue.x-k8s.io")]
    assert not [r for r in p.run.records if r.inputs.get("chart") == CHART]
    for m in _manifests(p, "Job").values():
        assert QUEUE not in m["metadata"]["labels"] and "suspend" not in m["spec"]


def test_install_only_installs_kueue_without_queues() -> None:
    p = preview(queued_config(queueing={"enabled": True, "installOnly": True}))
    assert [r for r in p.run.records if r.inputs.get("chart") == CHART]
    assert not [m for m in p.manifests.values() if m["apiVersion"].startswith("kueue.x-k8s.io")]
    assert all(QUEUE not in m["metadata"]["labels"] for m in _manifests(p, "Job").values())


# ---------------------------------------------------------------------------
# Offline validation against the Kueue models
# ---------------------------------------------------------------------------


def test_kueue_objects_are_validated_by_the_projects_models(queued: Preview) -> None:
    kueue = [p for p, m in queued.manifests.items() if m["apiVersion"] == kueue_api.API_VERSION]
    assert kueue and all(p in queued.crd_validated for p in kueue)
    assert all("Kueue v0.19.2 models" in queued.crd_validated[p] for p in kueue)
    assert queued.schema_problems == {}


CQ: dict[str, Any] = {
    "apiVersion": kueue_api.API_VERSION,
    "kind": "ClusterQueue",
    "metadata": {"name": "team"},
    "spec": {
        "cohortName": "c",
        "resourceGroups": [
            {
                "coveredResources": [GPU],
                "flavors": [{"name": "h100", "resources": [{"name": GPU, "nominalQuota": "8"}]}],
            }
        ],
    },
}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m["spec"].update(cohort="c"), "Extra inputs are not permitted"),  # v1beta1 name
        (
            lambda m: (
                m["spec"].pop("cohortName")
                and m["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0].update(
                    borrowingLimit="1"
                )
            ),
            "borrowingLimit must be nil when cohort is empty",
        ),
        (
            lambda m: m["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0].update(
                lendingLimit="9"
            ),
            "lendingLimit must be less than or equal to nominalQuota",
        ),
        (
            lambda m: m["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0].update(
                name="cpu"
            ),
            "must match coveredResources",
        ),
        (lambda m: m["spec"].update(queueingStrategy="FIFO"), "StrictFIFO"),
        (
            lambda m: m["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0].update(
                nominalQuota="-1"
            ),
            "quantity",
        ),
        (lambda m: m["metadata"].update(namespace="x"), "cluster-scoped"),
    ],
    ids=[
        "v1beta1-field",
        "borrow-without-cohort",
        "lending-over-nominal",
        "resource-order",
        "enum",
        "negative",
        "namespaced",
    ],
)
def test_kueue_models_reject_what_kueue_rejects(change: Any, words: str) -> None:
    assert kueue_api.validate(copy.deepcopy(CQ)) == []
    bad = copy.deepcopy(CQ)
    change(bad)
    problems = kueue_api.validate(bad)
    assert any(words in msg for _, msg in problems), problems


def test_kueue_models_cover_flavors_local_queues_and_priority_classes() -> None:
    flavor = {
        "apiVersion": kueue_api.API_VERSION,
        "kind": "ResourceFlavor",
        "metadata": {"name": "f"},
        "spec": {"nodeTaints": [{"key": "a", "effect": "NoSchedule"}] * 2},
    }
    assert any("duplicate nodeTaint" in m for _, m in kueue_api.validate(flavor))
    lq = {
        "apiVersion": kueue_api.API_VERSION,
        "kind": "LocalQueue",
        "metadata": {"name": "default"},
        "spec": {"clusterQueue": "team"},
    }
    assert any("namespaced" in m for _, m in kueue_api.validate(lq))
    wpc = {
        "apiVersion": kueue_api.API_VERSION,
        "kind": "WorkloadPriorityClass",
        "metadata": {"name": "p"},
        "value": 2**31,
    }
    assert [p for p, _ in kueue_api.validate(wpc)] == ["value"]


# ---------------------------------------------------------------------------
# Bad input: exit 2 with the key path, nothing written
# ---------------------------------------------------------------------------


def _teams(**teams: Any) -> dict[str, Any]:
    return {"enabled": True, "teams": teams}


BAD = [
    (
        "team-without-pool",
        {"queueing": _teams(research={"a10g-spot": {"gpus": 8}, "l40s": {"gpus": 1}})},
        "mlplatform:queueing.teams.vision",
        "no GPU pool to draw from",
    ),
    (
        "borrowing-above-cohort",
        {
            "queueing": _teams(
                research={"a10g-spot": {"gpus": 8}, "l40s": {"gpus": 1}},
                vision={"l40s": {"gpus": 1, "borrowingLimit": 2}},
            )
        },
        "mlplatform:queueing.teams.vision.l40s.borrowingLimit",
        "above the cohort's total",
    ),
    (
        "over-the-resource-quota",
        {
            "queueing": _teams(
                research={"a10g-spot": {"gpus": 8}, "l40s": {"gpus": 1}},
                vision={"l40s": {"gpus": 3, "borrowingLimit": 1}},
            )
        },
        "mlplatform:queueing.teams.vision",
        "more than the team's ResourceQuota",
    ),
    (
        "unknown-pool",
        {"queueing": _teams(research={"a100": {"gpus": 8}}, vision={"l40s": {"gpus": 1}})},
        "mlplatform:queueing.teams.research.a100",
        "no GPU pool 'a100'",
    ),
    (
        "unknown-team",
        {
            "queueing": _teams(
                ops={"l40s": {"gpus": 1}},
                research={"l40s": {"gpus": 1}},
                vision={"l40s": {"gpus": 1}},
            )
        },
        "mlplatform:queueing.teams.ops",
        "no team 'ops'",
    ),
    (
        "lending-over-nominal",
        {
            "queueing": _teams(
                research={"l40s": {"gpus": 1, "lendingLimit": 2}}, vision={"l40s": {"gpus": 1}}
            )
        },
        "mlplatform:queueing.teams.research.l40s.lendingLimit",
        "more than gpus",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "key_path", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_queueing_config_exits_2_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    key_path: str,
    words: str,
) -> None:
    assert_config_error(tmp_path, capsys, queued_config(**overrides), key_path, words)


def _with_queue(queue: str, index: int = 0, **queueing: Any) -> dict[str, Any]:
    config = queued_config()
    config["mlplatform:workloads"][index]["queue"] = queue
    config["mlplatform:queueing"].update(queueing)
    return config


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (_with_queue("research"), "no LocalQueue 'research' in namespace 'research'"),
        (_with_queue("default", enabled=False), "queueing is off"),
        (_with_queue("default", index=4), "serving is not queued"),
    ],
    ids=["missing-queue", "queueing-off", "serving"],
)
def test_a_workload_naming_a_queue_that_does_not_exist_is_a_config_error(
    config: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(config, "test")
    assert [m for p, m in info.value.problems if p.endswith(".queue")] == [
        next(m for _, m in info.value.problems if words in m)
    ]


def test_existing_pools_need_an_accelerator_label_to_be_queued() -> None:
    config = base_config(
        cluster={
            "mode": "existing",
            "kubeconfigContext": "kind",
            "existingGpuNodes": [{"name": "lab", "count": 2, "gpusPerNode": 4}],
        },
        gpuNodeGroups=[],
        queueing={"enabled": True, "teams": {"vision": {"lab": {"gpus": 4}}}},
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config, "test")
    assert [p for p, _ in info.value.problems] == [
        "mlplatform:cluster.existingGpuNodes[0].accelerator"
    ]
    config["mlplatform:cluster"]["existingGpuNodes"][0]["accelerator"] = "nvidia-a100"
    p = preview(config)
    flavor = _manifests(p, "ResourceFlavor")["lab"]
    assert flavor["spec"]["nodeLabels"] == {catalog.ACCELERATOR_LABEL: "nvidia-a100"}
    release = next(r for r in p.run.records if r.inputs.get("chart") == CHART)
    assert "nodeSelector" not in release.inputs["values"]["controllerManager"]


# ---------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------


def test_shipped_stacks_admit_every_job() -> None:
    for stack in ("staging", "prod"):
        p = preview(read_stack_config(stack_file(stack)), stack)
        verdicts = queue_sim.check(queue_sim.read(resources(p.run)))
        assert verdicts and not [v for v in verdicts if v.never], stack
        assert p.findings == [] and p.exit_code == 0, p.findings


def test_a_job_bigger_than_nominal_plus_borrowing_is_named_and_fails_the_preview(
    tmp_path: Path,
) -> None:
    """The 32-GPU job in a team whose nominal + borrowing is 24 never starts."""
    config = read_stack_config(stack_file("prod"))
    config["mlplatform:queueing"]["teams"]["research"] = {"h100": {"gpus": 24}}
    code, out = preview_cli(tmp_path, config)
    assert code == 1
    findings = json.loads((out / "policy.json").read_text())
    (finding,) = [f for f in findings if f["policy"] == "queue-admissible"]
    assert finding["resource"] == "research/Job/llm-pretrain"
    assert finding["level"] == "mandatory"
    assert "needs 32 nvidia.com/gpu in 'h100' (at most 24" in finding["message"]
    assert "**never**" in (out / "plan.md").read_text()


def test_borrowing_counts_toward_what_a_job_can_ever_get(queued: Preview) -> None:
    model = queue_sim.read(resources(queued.run))
    vision = model.cluster_queues["vision"]
    cap = queue_sim.limits(model, vision)
    # nominal 2 + min(borrowing 1, research's 1 lendable)
    assert cap[("l40s", GPU)] == 3


def test_admission_order_follows_priority_and_spot_stays_for_preemptible(queued: Preview) -> None:
    verdicts = queue_sim.check(queue_sim.read(resources(queued.run)))
    order = [v.workload.label for v in verdicts]
    assert order[0] == "vision/CronJob/nightly"  # training-high first
    assert order[-1] == "research/Job/ddp"  # training-preemptible last
    by_label = {v.workload.label: v for v in verdicts}
    assert by_label["research/Job/ddp"].flavors == {"main": "a10g-spot"}
    assert by_label["research/Job/ft"].flavors == {"main": "l40s"}  # does not tolerate spot
    assert by_label["vision/Job/score"].fits_nominal


def test_a_job_that_tolerates_no_flavor_is_never_admitted() -> None:
    """A non-preemptible job in a team whose only pool is spot: the flavor's
    spot taint is not tolerated."""
    config = queued_config(
        queueing=_teams(
            research={"a10g-spot": {"gpus": 8}, "l40s": {"gpus": 1}},
            vision={"a10g-spot": {"gpus": 0}},
        ),
    )
    config["mlplatform:teams"][1]["quota"]["gpus"] = 0
    config["mlplatform:workloads"] = [
        w for w in config["mlplatform:workloads"] if w["team"] == "research"
    ]
    config["mlplatform:workloads"][0]["priorityClass"] = "training-high"
    config["mlplatform:queueing"]["teams"]["research"] = {"a10g-spot": {"gpus": 8}}
    config["mlplatform:teams"][0]["quota"]["gpus"] = 8
    p = preview(config)
    (finding,) = [f for f in p.findings if f["policy"] == "queue-admissible"]
    assert finding["resource"] == "research/Job/ft"
    assert "taints not tolerated" in finding["message"]


# ---------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------


def _names(expr: str) -> set[str]:
    import promql_parser

    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_kueue_metrics_are_scraped_alerted_on_and_charted(queued: Preview) -> None:
    from infra.queueing import METRICS_PORT_NAME, METRICS_SERVICE_LABELS
    from workloads import queue_monitoring

    monitor = queued.run.manifest("ServiceMonitor", "kueue", "monitoring")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kueue-system"]}
    assert monitor["spec"]["selector"] == {"matchLabels": METRICS_SERVICE_LABELS}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME and endpoint["scheme"] == "https"

    rule = queued.run.manifest("PrometheusRule", "mlplatform-queueing", "monitoring")
    ((alert,),) = [g["rules"] for g in rule["spec"]["groups"]]
    assert alert["alert"] == "KueueWorkloadPendingTooLong"
    assert alert["for"] == f"{queued.settings.queueing.pending_alert_minutes}m"
    assert _names(alert["expr"]) <= queue_monitoring.KUEUE_SERIES

    cm = queued.run.manifest("ConfigMap", queue_monitoring.DASHBOARD.uid, "monitoring")
    dashboard = json.loads(cm["data"][f"{queue_monitoring.DASHBOARD.uid}.json"])
    (panel,) = dashboard["panels"]
    for target in panel["targets"]:
        assert _names(target["expr"]) <= queue_monitoring.KUEUE_SERIES
    # Custom resources of the monitoring CRDs wait for the release that installs them.
    record = queued.run.one(
        "kubernetes:monitoring.coreos.com/v1:PrometheusRule", "mlplatform-queue-monitoring-rules"
    )
    assert "mlplatform-monitoring-stack" in record.options["dependsOn"]
    assert "mlplatform-queueing-kueue" in record.options["dependsOn"]


def test_pending_alert_threshold_is_configurable() -> None:
    from workloads import queue_monitoring

    group = queue_monitoring.alert_group(45)
    assert group["rules"][0]["for"] == "45m"
    assert "[45m]" in group["rules"][0]["expr"]


def test_plan_shows_the_queueing_table_and_warns_when_serving_has_no_room(queued: Preview) -> None:
    from tools import plan

    text = plan.render(queued)
    assert "## Queueing" in text
    assert "| vision | l40s | 2 | 1 | all |" in text
    assert "| 1 | `vision/CronJob/nightly` | 100000 |" in text
    # The ranker's 2 GPUs at minReplicas; 1 L40S is left outside the queues.
    assert "More than the 1 GPUs outside the queues" in text
    config = queued_config()
    config["mlplatform:queueing"]["teams"]["vision"] = {"l40s": {"gpus": 1}}
    assert "would compete for nodes" not in plan.render(preview(config))
