"""Workload components: the rendered Jobs, CronJobs, Deployments, Services, HPAs,
PDBs and network openings, and the config errors users can make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import assert_config_error, base_config, pod_spec, run
from tools import preview as preview_cli
from tools.offline import Run
from workloads import cron

ROLE = "arn:aws:iam::123456789012:role/models"


def stack(*workloads: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    config = base_config(
        cluster={"mode": "create", "sharedStorageClass": "efs"},
        gpuNodeGroups=[
            {"name": "l4", "instanceTypes": ["g6.12xlarge"], "maxSize": 2},
            {
                "name": "a10g-spot",
                "instanceTypes": ["g5.12xlarge"],
                "capacityType": "SPOT",
                "maxSize": 2,
            },
        ],
        teams=[{"name": "ml", "quota": {"gpus": 12}}],
        runtimeImage={"build": {}},
        workloads=list(workloads),
    )
    for key, value in overrides.items():
        config[f"mlplatform:{key}"] = value
    return config


TRAIN = {
    "kind": "training",
    "name": "ft",
    "team": "ml",
    "gpus": 1,
    "cpu": "3",
    "memory": "12Gi",
    "iamRoleArn": ROLE,
}
CRON = {
    "kind": "training",
    "name": "nightly",
    "team": "ml",
    "schedule": "0 3 * * *",
    "timeZone": "Europe/Berlin",
    "priorityClass": "training-high",
    "gpus": 2,
    "memory": "8Gi",
    "accelerators": ["nvidia-l4"],
}
DDP = {
    "kind": "distributed",
    "name": "ddp",
    "team": "ml",
    "nodes": 2,
    "gpus": 4,
    "cpu": "40",
    "memory": "160Gi",
    "priorityClass": "training-preemptible",
    "accelerators": ["nvidia-a10g"],
}
SERVE = {
    "kind": "inference",
    "name": "ranker",
    "team": "ml",
    "gpus": 1,
    "memory": "8Gi",
    "model": {"uri": "s3://models/ranker/v3"},
    "iamRoleArn": ROLE,
    "minReplicas": 3,
    "maxReplicas": 6,
    "customMetric": {"name": "mlserve_inflight_requests", "targetAverageValue": "16"},
    "canary": {"weight": 25, "modelUri": "s3://models/ranker/v4"},
}
SERVE_CPU = {
    "kind": "inference",
    "name": "embed",
    "team": "ml",
    "model": {"claim": "models", "subPath": "embed"},
}
BATCH = {
    "kind": "batch",
    "name": "score",
    "team": "ml",
    "model": {"uri": "s3://models/ranker/v3"},
    "input": "s3://data/in",
    "output": "s3://data/out",
    "shards": 16,
    "parallelism": 4,
    "backoffLimitPerIndex": 1,
    "maxFailedIndexes": 2,
}


@pytest.fixture(scope="module")
def all_kinds() -> Run:
    return run(stack(TRAIN, CRON, DDP, SERVE, SERVE_CPU, BATCH))


def _container(manifest: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(manifest)["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


# -- TrainingJob ----------------------------------------------------------------


def test_training_job(all_kinds: Run) -> None:
    job = all_kinds.manifest("Job", "ft", "ml")
    spec = job["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["activeDeadlineSeconds"] == 172800 and spec["ttlSecondsAfterFinished"] == 604800
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
        },
    ]
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["priorityClassName"] == "training-default"
    assert pod["serviceAccountName"] == "ft"
    assert pod["terminationGracePeriodSeconds"] == 120
    c = _container(job)
    assert c["command"] == ["python", "-m", "mlruntime.train"]
    assert "--checkpoint-dir=/checkpoints/$(JOB_NAME)" in c["args"]
    assert "--export-dir=/checkpoints/$(JOB_NAME)/export" in c["args"]
    assert {
        "name": "JOB_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}},
    } in c["env"]
    assert c["resources"] == {
        "requests": {"cpu": "3", "memory": "12Gi"},
        "limits": {"memory": "12Gi", "nvidia.com/gpu": "1"},
    }
    assert (
        c["securityContext"]["readOnlyRootFilesystem"] is True
        and c["securityContext"]["runAsNonRoot"] is True
    )
    assert {"name": "dshm", "emptyDir": {"sizeLimit": "3072Mi", "medium": "Memory"}} in pod[
        "volumes"
    ]
    assert {
        "name": "checkpoints",
        "persistentVolumeClaim": {"claimName": "ft-checkpoints", "readOnly": False},
    } in pod["volumes"]
    # training-default does not tolerate the spot taint: on-demand GPUs only.
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu"]
    rec = all_kinds.one("kubernetes:batch/v1:Job", "mlplatform-ml-ft-job")
    assert rec.options["deleteBeforeReplace"] is True


def test_training_identity_and_storage(all_kinds: Run) -> None:
    sa = all_kinds.manifest("ServiceAccount", "ft", "ml")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE}
    assert sa["automountServiceAccountToken"] is False
    pvc = all_kinds.manifest("PersistentVolumeClaim", "ft-checkpoints", "ml")
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "gp3",
    }
    rec = next(
        r
        for r in all_kinds.kubernetes_objects
        if r.inputs["kind"] == "PersistentVolumeClaim"
        and r.inputs["metadata"]["name"] == "ft-checkpoints"
    )
    assert rec.options["retainOnDelete"] is True  # checkpoints outlive the workload
    # Every workload object waits for its namespace and the priority classes
    # (a dependency on a component is a dependency on each of its children).
    job = all_kinds.one("kubernetes:batch/v1:Job", "mlplatform-ml-ft-job")
    assert {"mlplatform-team-ml-namespace", "mlplatform-priority-classes-training-default"} <= set(
        job.options["dependsOn"]
    )


def test_scheduled_retraining_is_a_cronjob(all_kinds: Run) -> None:
    cj = all_kinds.manifest("CronJob", "nightly", "ml")["spec"]
    assert cj["schedule"] == "0 3 * * *"
    assert cj["timeZone"] == "Europe/Berlin"
    assert cj["concurrencyPolicy"] == "Forbid"
    assert cj["startingDeadlineSeconds"] == 600
    assert cj["successfulJobsHistoryLimit"] == 3 and cj["failedJobsHistoryLimit"] == 3
    c = _container(all_kinds.manifest("CronJob", "nightly", "ml"))
    # Two GPUs on one node: one process per GPU.
    assert c["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=2"]
    pod = pod_spec(all_kinds.manifest("CronJob", "nightly", "ml"))
    assert pod["priorityClassName"] == "training-high"
    assert not [
        m
        for m in all_kinds.manifests()
        if m["kind"] == "Job" and m["metadata"]["name"] == "nightly"
    ]


# -- DistributedTraining ----------------------------------------------------------


def test_distributed_indexed_job(all_kinds: Run) -> None:
    job = all_kinds.manifest("Job", "ddp", "ml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["podFailurePolicy"]["rules"][-1] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]},
    }
    pod = pod_spec(job)
    assert pod["subdomain"] == "ddp"
    c = _container(job)
    assert c["command"][:8] == [
        "torchrun",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=ddp-0.ddp:29400",
        "--rdzv-id=ddp",
        "--rdzv-conf=join_timeout=1800",
        "--max-restarts=3",
    ]
    assert c["command"][-2:] == ["-m", "mlruntime.train"]
    assert {
        "name": "NODE_RANK",
        "valueFrom": {
            "fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            }
        },
    } in c["env"]
    assert {"name": "rendezvous", "containerPort": 29400, "protocol": "TCP"} in c["ports"]
    # Preemptible training may use the spot group.
    assert "mlplatform.io/capacity-type" in [t["key"] for t in pod["tolerations"]]
    zone = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert zone["topologyKey"] == "topology.kubernetes.io/zone"


def test_distributed_headless_service_and_peers(all_kinds: Run) -> None:
    svc = all_kinds.manifest("Service", "ddp", "ml")["spec"]
    assert svc["clusterIP"] == "None"
    assert svc["publishNotReadyAddresses"] is True
    assert svc["selector"] == {"batch.kubernetes.io/job-name": "ddp"}
    assert svc["ports"] == [{"name": "rendezvous", "port": 29400, "targetPort": "rendezvous"}]
    peers = all_kinds.manifest("NetworkPolicy", "ddp-peers", "ml")["spec"]
    selector = {
        "matchLabels": {"app.kubernetes.io/instance": "ddp", "app.kubernetes.io/name": "ddp"}
    }
    assert peers["podSelector"] == selector
    assert peers["ingress"] == [{"from": [{"podSelector": selector}]}]
    assert peers["egress"] == [{"to": [{"podSelector": selector}]}]
    pvc = all_kinds.manifest("PersistentVolumeClaim", "ddp-checkpoints", "ml")["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"] and pvc["storageClassName"] == "efs"


def test_pytorchjob_backend(tmp_path: Path) -> None:
    config = stack(DDP | {"backend": "pytorchjob", "nodes": 3})
    path = tmp_path / "Pulumi.pt.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    assert (
        preview_cli.main(["--stack", "pt", "--stack-file", str(path), "--out", str(tmp_path / "b")])
        == 0
    )
    job = yaml.safe_load((tmp_path / "b/pt/manifests/ml/pytorchjob-ddp.yaml").read_text())
    assert job["apiVersion"] == "kubeflow.org/v1"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "4"
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"
    assert container["command"] == ["torchrun", "--max-restarts=3", "-m", "mlruntime.train"]
    plan = (tmp_path / "b/pt/plan.md").read_text()
    assert "`ml/pytorchjob-ddp.yaml`: no schema for kubeflow.org/v1 PyTorchJob" in plan


# -- InferenceService -------------------------------------------------------------


def test_inference_deployment(all_kinds: Run) -> None:
    dep = all_kinds.manifest("Deployment", "ranker", "ml")
    assert "replicas" not in dep["spec"]  # the HPA owns the count
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = pod_spec(dep)
    assert pod["priorityClassName"] == "serving-critical"
    c = _container(dep, "server")
    assert c["command"] == ["python", "-m", "mlruntime.serve"]
    assert "--model-name=ranker" in c["args"] and "--port=8080" in c["args"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] == 600
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    (fetch,) = pod["initContainers"]
    assert fetch["command"] == ["python", "-m", "mlruntime.fetch"]
    assert fetch["args"] == ["s3://models/ranker/v3", "/models"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert {"name": "model", "emptyDir": {"sizeLimit": "10Gi"}} in pod["volumes"]


def test_inference_hpa_pdb_service(all_kinds: Run) -> None:
    hpa = all_kinds.manifest("HorizontalPodAutoscaler", "ranker", "ml")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ranker",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 6)
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        },
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "mlserve_inflight_requests"},
                "target": {"type": "AverageValue", "averageValue": "16"},
            },
        },
    ]
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    pdb = all_kinds.manifest("PodDisruptionBudget", "ranker", "ml")["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    svc = all_kinds.manifest("Service", "ranker", "ml")["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    assert (
        svc["selector"]
        == pdb["selector"]["matchLabels"]
        == {"app.kubernetes.io/instance": "ranker", "app.kubernetes.io/name": "ranker"}
    )


def test_canary(all_kinds: Run) -> None:
    stable = all_kinds.manifest("Deployment", "ranker", "ml")
    canary = all_kinds.manifest("Deployment", "ranker-canary", "ml")
    # 25 % of the pods at minReplicas 3: ceil(3 * 25 / 75) = 1.
    assert canary["spec"]["replicas"] == 1
    assert stable["spec"]["selector"]["matchLabels"]["mlplatform.io/track"] == "stable"
    assert canary["spec"]["selector"]["matchLabels"]["mlplatform.io/track"] == "canary"
    (fetch,) = pod_spec(canary)["initContainers"]
    assert fetch["args"][0] == "s3://models/ranker/v4"
    svc_selector = all_kinds.manifest("Service", "ranker", "ml")["spec"]["selector"]
    for dep in (stable, canary):  # the Service reaches both tracks
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in svc_selector.items())


def test_inference_ingress_and_outputs(all_kinds: Run) -> None:
    ingress = all_kinds.manifest("NetworkPolicy", "ranker-ingress", "ml")["spec"]
    assert ingress["ingress"] == [
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
            ],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]
    endpoints = all_kinds.outputs["inferenceEndpoints"]
    assert endpoints["ml/ranker"] == {
        "url": "http://ranker.ml.svc.cluster.local",
        "namespace": "ml",
        "serviceName": "ranker",
        "model": "ranker",
        "protocol": "kserve-v2",
        "runtime": "mlplatform",
    }
    assert set(endpoints) == {"ml/ranker", "ml/embed"}


def test_cpu_inference_from_a_claim(all_kinds: Run) -> None:
    dep = all_kinds.manifest("Deployment", "embed", "ml")
    pod = pod_spec(dep)
    assert "tolerations" not in pod and "affinity" not in pod
    assert "initContainers" not in pod
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pod["volumes"]
    c = _container(dep)
    assert {"name": "model", "mountPath": "/models", "readOnly": True, "subPath": "embed"} in c[
        "volumeMounts"
    ]
    assert not any(v["name"] == "dshm" for v in pod["volumes"])


# -- BatchInference ---------------------------------------------------------------


def test_batch_inference(all_kinds: Run) -> None:
    job = all_kinds.manifest("Job", "score", "ml")["spec"]
    assert job["completionMode"] == "Indexed"
    assert (job["completions"], job["parallelism"]) == (16, 4)
    assert (job["backoffLimitPerIndex"], job["maxFailedIndexes"]) == (1, 2)
    assert {
        "action": "FailIndex",
        "onExitCodes": {"containerName": "batch", "operator": "In", "values": [2]},
    } in (job["podFailurePolicy"]["rules"])
    c = _container(all_kinds.manifest("Job", "score", "ml"))
    assert c["command"] == ["python", "-m", "mlruntime.batch"]
    assert {"name": "JOB_COMPLETIONS", "value": "16"} in c["env"]
    assert "--input=s3://data/in" in c["args"] and "--output=s3://data/out" in c["args"]


# -- Network openings derived from the kind -----------------------------------------


def test_openings_follow_the_team_policies() -> None:
    config = stack(TRAIN, SERVE_CPU)
    config["mlplatform:teams"] = [
        {
            "name": "ml",
            "quota": {"gpus": 4},
            "network": {"allowHttpsEgress": False, "allowIntraNamespace": False},
        }
    ]
    r = run(config)
    storage = r.manifest("NetworkPolicy", "ft-object-storage", "ml")["spec"]
    assert storage["egress"][0]["ports"] == [{"protocol": "TCP", "port": 443}]
    ingress = r.manifest("NetworkPolicy", "embed-ingress", "ml")["spec"]
    assert {"podSelector": {}} in ingress["ingress"][0]["from"]
    # With the team's defaults, no per-workload egress policy is needed.
    default = run(stack(TRAIN))
    assert not [m for m in default.manifests() if m["metadata"]["name"] == "ft-object-storage"]


# -- Config errors --------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    (
        "gpus-beyond-largest-node",
        TRAIN | {"gpus": 8},
        {},
        "mlplatform:workloads[0].gpus",
        "the largest node it may use has 4",
    ),
    (
        "unknown-team",
        TRAIN | {"team": "nope"},
        {},
        "mlplatform:workloads[0].team",
        "unknown team 'nope'",
    ),
    (
        "invalid-cron",
        CRON | {"schedule": "0 25 * * *"},
        {},
        "mlplatform:workloads[0].schedule",
        "hour: 25",
    ),
    (
        "cron-wrong-fields",
        CRON | {"schedule": "every night"},
        {},
        "mlplatform:workloads[0].schedule",
        "expected 5",
    ),
    (
        "canary-weight",
        SERVE | {"canary": {"weight": 70, "image": "r.example/x:1"}},
        {},
        "mlplatform:workloads[0].canary.weight",
        "less than or equal to 50",
    ),
    (
        "distributed-nodes-zero",
        DDP | {"nodes": 0},
        {},
        "mlplatform:workloads[0].nodes",
        "greater than or equal to 1",
    ),
    (
        "memory-below-runtime-minimum",
        TRAIN | {"memory": "512Mi"},
        {},
        "mlplatform:workloads[0].memory",
        "below the runtime train program's minimum (1024Mi)",
    ),
    (
        "gpus-over-team-limit",
        CRON | {"gpus": 4},
        {"teams": [{"name": "ml", "quota": {"gpus": 8}, "limits": {"maxGpusPerContainer": 2}}]},
        "mlplatform:workloads[0].gpus",
        "over team 'ml''s limit of 2",
    ),
    (
        "serving-on-spot-only",
        SERVE | {"accelerators": ["nvidia-a10g"]},
        {},
        "mlplatform:workloads[0].gpus",
        "no GPU nodes it may run on",
    ),
    (
        "unknown-accelerator",
        TRAIN | {"accelerators": ["nvidia-b200"]},
        {},
        "mlplatform:workloads[0].accelerators[0]",
        "on no node group",
    ),
    (
        "mig-without-mixed",
        TRAIN | {"migProfile": "1g.10gb"},
        {},
        "mlplatform:workloads[0].migProfile",
        "migStrategy: mixed",
    ),
    (
        "no-runtime-image",
        TRAIN,
        {"runtimeImage": {}},
        "mlplatform:workloads[0].image",
        "set mlplatform:runtimeImage",
    ),
    (
        "rwx-missing",
        DDP,
        {"cluster": {"mode": "create"}},
        "mlplatform:workloads[0].checkpoint.storageClass",
        "ReadWriteMany",
    ),
    (
        "rwo-for-multi-node",
        DDP | {"checkpoint": {"accessMode": "ReadWriteOnce"}},
        {},
        "mlplatform:workloads[0].checkpoint.accessMode",
        "ReadWriteMany",
    ),
    (
        "replicas",
        SERVE | {"minReplicas": 5, "maxReplicas": 2},
        {},
        "mlplatform:workloads[0].minReplicas",
        "greater than maxReplicas",
    ),
    (
        "parallelism",
        BATCH | {"parallelism": 20},
        {},
        "mlplatform:workloads[0].parallelism",
        "more than shards",
    ),
    (
        "shm-above-memory",
        TRAIN | {"shm": "16Gi"},
        {},
        "mlplatform:workloads[0].shm",
        "must be below memory",
    ),
    (
        "command-without-image",
        TRAIN | {"command": ["python", "x.py"]},
        {},
        "mlplatform:workloads[0].command",
        "needs a custom `image`",
    ),
    (
        "latest-image",
        TRAIN | {"image": "pytorch/pytorch:latest", "command": ["x"]},
        {},
        "mlplatform:workloads[0].image",
        "`:latest` is not a pinned version",
    ),
    (
        "untagged-image",
        TRAIN | {"image": "pytorch/pytorch", "command": ["x"]},
        {},
        "mlplatform:workloads[0].image",
        "no tag or digest",
    ),
    (
        "data-without-dataset",
        TRAIN | {"data": "corpus/train"},
        {},
        "mlplatform:workloads[0].dataset",
        "needs a dataset volume",
    ),
    (
        "name-too-long",
        TRAIN | {"name": "a" * 41},
        {},
        "mlplatform:workloads[0].name",
        "longer than 40",
    ),
    (
        "bad-secret-ref",
        TRAIN | {"secretEnv": {"TOKEN": "no-slash"}},
        {},
        "mlplatform:workloads[0].secretEnv.TOKEN",
        "not `<secret>/<key>`",
    ),
    (
        "model-two-sources",
        SERVE | {"model": {"uri": "s3://a/b", "claim": "c"}},
        {},
        "mlplatform:workloads[0].model",
        "exactly one of `uri` or `claim`",
    ),
]


@pytest.mark.parametrize(
    ("workload", "overrides", "key_path", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_workload_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workload: dict[str, Any],
    overrides: dict[str, Any],
    key_path: str,
    words: str,
) -> None:
    assert_config_error(tmp_path, capsys, stack(workload, **overrides), key_path, words)


def test_duplicate_workload_names_in_a_team() -> None:
    from infra.config_types import ConfigError
    from mlplatform.loading import load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(stack(TRAIN, TRAIN | {"kind": "training"}), "dev")
    assert (
        "mlplatform:workloads[1].name",
        "'ft' is already used in team 'ml' by workloads[0]",
    ) in info.value.problems


@pytest.mark.parametrize(
    "schedule",
    [
        "0 3 * * *",
        "*/15 * * * *",
        "0 0 1,15 * mon-fri",
        "@daily",
        "5 4 * jan sun",
        "0 22 * * 1-5",
        "0 0-23/2 * * *",
    ],
)
def test_valid_cron(schedule: str) -> None:
    assert cron.validate(schedule) == schedule


@pytest.mark.parametrize(
    "schedule",
    [
        "",
        "* * * *",
        "60 * * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "@often",
        "5-1 * * * *",
        "*/0 * * * *",
        "TZ=UTC 0 3 * * *",
        "a * * * *",
    ],
)
def test_invalid_cron(schedule: str) -> None:
    with pytest.raises(cron.CronError):
        cron.validate(schedule)


def test_custom_image_needs_no_runtime_image() -> None:
    """A workload with its own image and command runs without the platform image
    (regression: the check once read `model.uri` off a training spec)."""
    custom = TRAIN | {
        "image": "registry.example/trainer:2.1.0",
        "command": ["python", "train.py"],
        "args": ["--fast"],
    }
    config = stack(custom, runtimeImage={})
    r = run(config)
    c = _container(r.manifest("Job", "ft", "ml"))
    assert c["image"] == "registry.example/trainer:2.1.0"
    assert c["command"] == ["python", "train.py"] and c["args"] == ["--fast"]
    assert "ports" not in c  # no runtime metrics port on a custom program
    assert r.outputs["runtimeImage"] is None


def test_scratch_and_mlflow() -> None:
    config = stack(TRAIN, BATCH, mlflow={"trackingUri": "https://mlflow.internal.example"})
    r = run(config)
    batch = pod_spec(r.manifest("Job", "score", "ml"))
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}} in batch["volumes"]
    train = r.manifest("Job", "ft", "ml")
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod_spec(train)["volumes"]
    env = _container(train)["env"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "https://mlflow.internal.example"} in env
    batch_env = {e["name"] for e in _container(r.manifest("Job", "score", "ml"))["env"]}
    assert "MLFLOW_TRACKING_URI" not in batch_env
