"""Pod settings every workload kind takes from config (volumes, init containers,
sidecars, identity, node selection, limits), the team settings around them
(LimitRange bounds, PVC sizes, quotas per priority class, team access), the
scheduled and autoscaling options, and the traps that used to render fine and
fail on the cluster: each one now a config error with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import pod
from policies import rules
from policies.rules import PolicyConfig, Resource
from tests.helpers import assert_config_error, base_config, pod_spec, run
from tools import preview as preview_cli
from tools.offline import Run

ROLE = "arn:aws:iam::123456789012:role/models"
IMAGE = "registry.example/trainer:2.4.1"


def stack(*workloads: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    config = base_config(
        cluster={"mode": "create", "sharedStorageClass": "efs"},
        gpuNodeGroups=[
            {
                "name": "l4",
                "instanceTypes": ["g6.12xlarge"],
                "maxSize": 2,
                "labels": {"example.com/pool": "l4"},
            },
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


POD_SETTINGS: dict[str, Any] = {
    "volumes": [
        {"name": "script", "configMap": "training-script", "mountPath": "/app", "readOnly": True},
        {"name": "creds", "secret": "hf-token", "mountPath": "/secrets/hf", "readOnly": True},
        {"name": "corpus", "persistentVolumeClaim": "corpus", "mountPath": "/corpus"},
        {"name": "cache", "emptyDir": "20Gi", "mountPath": "/cache"},
        {
            "name": "settings",
            "configMap": "training-script",
            "mountPath": "/etc/app/settings.yaml",
            "subPath": "settings.yaml",
        },
    ],
    "initContainers": [
        {
            "name": "prepare",
            "image": "busybox:1.36",
            "command": ["sh", "-c", "cp -r /corpus/raw /cache/"],
            "volumeMounts": [
                {"volume": "corpus", "mountPath": "/corpus", "readOnly": True},
                {"volume": "cache", "mountPath": "/cache"},
            ],
        }
    ],
    "sidecars": [
        {
            "name": "log-shipper",
            "image": "fluent/fluent-bit:3.1.9",
            "cpu": "50m",
            "memory": "64Mi",
            "cpuLimit": "200m",
            "ports": {"metrics": 2020},
        }
    ],
    "workingDir": "/app",
    "labels": {"example.com/cost-center": "research"},
    "annotations": {"karpenter.sh/do-not-disrupt": "true"},
    "nodeSelector": {"example.com/pool": "l4"},
    "cpu": "4",
    "cpuLimit": "8",
    "memory": "16Gi",
    "memoryLimit": "24Gi",
}
TRAIN = {
    "kind": "training",
    "name": "ft",
    "team": "ml",
    "gpus": 1,
    "image": IMAGE,
    "command": ["python", "train.py"],
    "writableRootFilesystem": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    **POD_SETTINGS,
}
SMOKE = {
    "kind": "training",
    "name": "gpu-smoke",
    "team": "ml",
    "gpus": 1,
    "image": "nvidia/cuda:12.4.1-base-ubuntu22.04",
    "command": ["nvidia-smi"],
    "checkpoint": False,
}
DDP_OPERATOR = {
    "kind": "distributed",
    "name": "ddp-op",
    "team": "ml",
    "backend": "pytorchjob",
    "nodes": 2,
    "gpus": 4,
    "cpu": "40",
    "memory": "160Gi",
    "priorityClass": "training-preemptible",
    "accelerators": ["nvidia-a10g"],
    "sidecars": [{"name": "proxy", "image": "envoyproxy/envoy:v1.31.2"}],
}
SERVE = {
    "kind": "inference",
    "name": "ranker",
    "team": "ml",
    "model": {"uri": "s3://models/ranker/v3"},
    "iamRoleArn": ROLE,
    "cpu": "2",
    "memory": "4Gi",
    "memoryLimit": "6Gi",
    "targetCpuUtilization": None,
    "targetMemoryUtilization": 80,
    "behavior": {
        "scaleDown": {
            "stabilizationWindowSeconds": 600,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
        }
    },
    "volumes": [{"name": "tokenizer", "configMap": "tokenizer", "mountPath": "/tokenizer"}],
    "sidecars": [{"name": "envoy", "image": "envoyproxy/envoy:v1.31.2", "ports": {"proxy": 8081}}],
}
BATCH = {
    "kind": "batch",
    "name": "nightly-score",
    "team": "ml",
    "model": {"uri": "s3://models/ranker/v3"},
    "input": "s3://data/in",
    "output": "s3://data/out",
    "iamRoleArn": ROLE,
    "shards": 8,
    "parallelism": 2,
    "schedule": "0 1 * * *",
    "suspend": True,
    "successfulJobsHistoryLimit": 1,
    "failedJobsHistoryLimit": 5,
    "initContainers": [{"name": "wait-upstream", "image": "busybox:1.36", "command": ["true"]}],
}


OWN_SERVER = {
    "kind": "inference",
    "name": "tf-serving",
    "team": "ml",
    "image": "tensorflow/serving:2.13.0-gpu",
    "command": ["/usr/bin/tf_serving_entrypoint.sh"],
    "port": 8501,
    "readinessPath": "/v1/models/text_classifier",
    "livenessPath": "/v1/models/text_classifier",
    "volumes": [
        {"name": "models", "persistentVolumeClaim": "model-storage", "mountPath": "/models"}
    ],
    "minReplicas": 2,
}
OWN_BATCH = {
    "kind": "batch",
    "name": "own-batch",
    "team": "ml",
    "image": IMAGE,
    "command": ["python", "batch_inference.py"],
    "input": "s3://data/in",
    "output": "s3://data/out",
    "iamRoleArn": ROLE,
    "shards": 7,
    "parallelism": 7,
}


@pytest.fixture(scope="module")
def rendered() -> Run:
    return run(stack(TRAIN, SMOKE, DDP_OPERATOR, SERVE, BATCH, OWN_SERVER, OWN_BATCH))


def test_own_server_port_probes_and_no_model(rendered: Run) -> None:
    dep = rendered.manifest("Deployment", "tf-serving", "ml")
    c = _main(dep)
    assert c["ports"] == [{"name": "http", "containerPort": 8501, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/models/text_classifier", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v1/models/text_classifier"
    assert {"name": "models", "mountPath": "/models"} in c["volumeMounts"]
    assert "initContainers" not in pod_spec(dep)
    netpol = rendered.manifest("NetworkPolicy", "tf-serving-ingress", "ml")
    assert netpol["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8501}]
    job = rendered.manifest("Job", "own-batch", "ml")
    assert "initContainers" not in pod_spec(job)
    assert job["spec"]["completions"] == 7


def _main(manifest: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = pod_spec(manifest)["containers"][0]
    return result


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_volumes_are_mounted_in_the_main_container(rendered: Run) -> None:
    pod = pod_spec(rendered.manifest("Job", "ft", "ml"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["script"] == {"name": "script", "configMap": {"name": "training-script"}}
    assert volumes["creds"] == {"name": "creds", "secret": {"secretName": "hf-token"}}
    assert volumes["corpus"] == {
        "name": "corpus",
        "persistentVolumeClaim": {"claimName": "corpus", "readOnly": False},
    }
    assert volumes["cache"] == {"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}}
    mounts = _main(rendered.manifest("Job", "ft", "ml"))["volumeMounts"]
    assert {"name": "script", "mountPath": "/app", "readOnly": True} in mounts
    assert {"name": "cache", "mountPath": "/cache"} in mounts
    assert {
        "name": "settings",
        "mountPath": "/etc/app/settings.yaml",
        "subPath": "settings.yaml",
    } in mounts
    # The platform's own mounts stay.
    assert {"name": "tmp", "mountPath": "/tmp"} in mounts
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in mounts


def test_init_containers_and_native_sidecars(rendered: Run) -> None:
    pod = pod_spec(rendered.manifest("Job", "ft", "ml"))
    init = pod["initContainers"]
    # Sidecars first (they serve everything after them), then the user's init containers.
    assert [c["name"] for c in init] == ["log-shipper", "prepare"]
    sidecar, prepare = init
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "64Mi", "cpu": "200m"},
    }
    assert sidecar["ports"] == [{"name": "metrics", "containerPort": 2020, "protocol": "TCP"}]
    assert "restartPolicy" not in prepare
    assert {"name": "corpus", "mountPath": "/corpus", "readOnly": True} in prepare["volumeMounts"]
    for c in init:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert _env(c)["HOME"] == "/tmp"
    # Serving: the model fetcher stays, after the sidecar.
    serve = pod_spec(rendered.manifest("Deployment", "ranker", "ml"))
    assert [c["name"] for c in serve["initContainers"]] == ["envoy", "fetch-model"]


def test_identity_root_filesystem_and_resources(rendered: Run) -> None:
    job = rendered.manifest("Job", "ft", "ml")
    pod = pod_spec(job)
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["runAsGroup"] == 1000
    assert pod["securityContext"]["fsGroup"] == 1000
    c = _main(job)
    assert c["workingDir"] == "/app"
    assert c["securityContext"]["readOnlyRootFilesystem"] is False
    assert (
        c["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["runAsUser"] == 1000
    )
    assert c["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"memory": "24Gi", "cpu": "8", "nvidia.com/gpu": "1"},
    }
    # A writable root needs no HOME override: the image's own HOME works.
    assert "HOME" not in _env(c)
    annotations = job["metadata"]["annotations"].values()
    assert any(a.startswith("CKV_K8S_22=writableRootFilesystem") for a in annotations)
    assert any(a.startswith("CKV_K8S_40=runAsUser 1000") for a in annotations)


def test_labels_annotations_and_node_selector(rendered: Run) -> None:
    job = rendered.manifest("Job", "ft", "ml")
    assert job["metadata"]["labels"]["example.com/cost-center"] == "research"
    template = job["spec"]["template"]
    assert template["metadata"]["labels"]["example.com/cost-center"] == "research"
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "ft"
    assert template["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    assert template["spec"]["nodeSelector"] == {"example.com/pool": "l4"}
    # GPU placement is still the platform's.
    assert template["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_own_image_gets_a_writable_home_and_no_checkpoint_claim(rendered: Run) -> None:
    job = rendered.manifest("Job", "gpu-smoke", "ml")
    c = _main(job)
    assert _env(c)["HOME"] == "/tmp"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    pod = pod_spec(job)
    assert "checkpoints" not in {v["name"] for v in pod["volumes"]}
    claims = [
        m["metadata"]["name"] for m in rendered.manifests() if m["kind"] == "PersistentVolumeClaim"
    ]
    assert "gpu-smoke-checkpoints" not in claims and "ft-checkpoints" in claims


def test_runtime_without_checkpoint_writes_to_scratch() -> None:
    r = run(stack({"kind": "training", "name": "quick", "team": "ml", "checkpoint": False}))
    c = _main(r.manifest("Job", "quick", "ml"))
    assert "--checkpoint-dir=/tmp/checkpoints/$(JOB_NAME)" in c["args"]
    assert not [m for m in r.manifests() if m["kind"] == "PersistentVolumeClaim"]


def test_pytorchjob_reads_job_name_from_the_operator_label(rendered: Run) -> None:
    job = next(m for m in rendered.manifests() if m["kind"] == "PyTorchJob")
    for role in ("Master", "Worker"):
        pod = job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
        env = _env(pod["containers"][0])
        assert env["JOB_NAME"] == {
            "fieldRef": {"fieldPath": "metadata.labels['training.kubeflow.org/job-name']"}
        }
        assert pod["initContainers"][0]["restartPolicy"] == "Always"


def test_scheduled_batch_inference_is_a_suspended_cronjob(rendered: Run) -> None:
    cj = rendered.manifest("CronJob", "nightly-score", "ml")["spec"]
    assert cj["schedule"] == "0 1 * * *" and cj["suspend"] is True
    assert cj["successfulJobsHistoryLimit"] == 1 and cj["failedJobsHistoryLimit"] == 5
    assert cj["concurrencyPolicy"] == "Forbid"
    job = cj["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == 8
    names = [c["name"] for c in job["template"]["spec"]["initContainers"]]
    assert names == ["fetch-model", "wait-upstream"]
    assert not [
        m
        for m in rendered.manifests()
        if m["kind"] == "Job" and m["metadata"]["name"] == "nightly-score"
    ]


def test_hpa_on_memory_with_own_behavior(rendered: Run) -> None:
    hpa = rendered.manifest("HorizontalPodAutoscaler", "ranker", "ml")["spec"]
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "memory",
                "target": {"type": "Utilization", "averageUtilization": 80},
            },
        }
    ]
    down = hpa["behavior"]["scaleDown"]
    assert down == {
        "stabilizationWindowSeconds": 600,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
    }
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0  # platform default


def test_rendered_manifests_pass_the_schema_and_policies(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.pods.yaml"
    config = stack(TRAIN, SMOKE, DDP_OPERATOR, SERVE, BATCH, OWN_SERVER, OWN_BATCH)
    path.write_text(yaml.safe_dump({"config": config}))
    code = preview_cli.main(
        ["--stack", "pods", "--stack-file", str(path), "--out", str(tmp_path / "b")]
    )
    assert code == 0
    assert yaml.safe_load((tmp_path / "b" / "pods" / "policy.json").read_text()) == []


# -- Team settings ----------------------------------------------------------------

TEAM = {
    "name": "ml",
    "quota": {
        "gpus": 12,
        "byPriorityClass": {
            "serving-critical": {"gpus": 4, "pods": 20},
            "training-preemptible": {"gpus": 8, "cpu": "24", "memory": "96Gi"},
        },
    },
    "limits": {
        "defaultCpuLimit": "4",
        "max": {"cpu": "48", "memory": "192Gi"},
        "min": {"cpu": "50m", "memory": "64Mi"},
        "maxLimitRequestRatio": {"cpu": "16", "memory": "2"},
        "pvc": {"min": "1Gi", "max": "500Gi"},
    },
    "members": ["arn:aws:iam::123456789012:role/ml-engineers", "ml-oncall"],
}


@pytest.fixture(scope="module")
def team_run() -> Run:
    other = {"name": "vision", "members": ["arn:aws:iam::123456789012:role/ml-engineers"]}
    return run(stack(teams=[TEAM, other]))


def test_limit_range_bounds_and_pvc_sizes(team_run: Run) -> None:
    container, pvc = team_run.manifest("LimitRange", "team-limits", "ml")["spec"]["limits"]
    assert container["max"] == {"cpu": "48", "memory": "192Gi", "nvidia.com/gpu": "4"}
    assert container["min"] == {"cpu": "50m", "memory": "64Mi"}
    assert container["maxLimitRequestRatio"] == {"cpu": "16", "memory": "2"}
    assert container["default"]["cpu"] == "4"
    assert pvc == {
        "type": "PersistentVolumeClaim",
        "min": {"storage": "1Gi"},
        "max": {"storage": "500Gi"},
    }


def test_quota_per_priority_class(team_run: Run) -> None:
    serving = team_run.manifest("ResourceQuota", "team-quota-serving-critical", "ml")["spec"]
    assert serving == {
        "hard": {"requests.nvidia.com/gpu": "4", "pods": "20"},
        "scopeSelector": {
            "matchExpressions": [
                {"scopeName": "PriorityClass", "operator": "In", "values": ["serving-critical"]}
            ]
        },
    }
    pre = team_run.manifest("ResourceQuota", "team-quota-training-preemptible", "ml")["spec"]
    assert pre["hard"] == {
        "requests.nvidia.com/gpu": "8",
        "requests.cpu": "24",
        "requests.memory": "96Gi",
    }
    # The team-wide quota still caps the sum.
    assert (
        team_run.manifest("ResourceQuota", "team-quota", "ml")["spec"]["hard"][
            "requests.nvidia.com/gpu"
        ]
        == "12"
    )


def test_scoped_quotas_are_not_counted_as_capacity() -> None:
    def quota(name: str, gpus: str, scoped: bool) -> Resource:
        spec: dict[str, Any] = {"hard": {"requests.nvidia.com/gpu": gpus}}
        if scoped:
            spec["scopeSelector"] = {
                "matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In", "values": ["x"]}
                ]
            }
        return Resource(
            "kubernetes:core/v1:ResourceQuota",
            name,
            {"kind": "ResourceQuota", "metadata": {"name": name, "namespace": "t"}, "spec": spec},
        )

    cfg = PolicyConfig(existing_gpu_capacity=8)
    ok = [quota("team", "8", False), quota("scoped", "8", True)]
    assert list(rules.gpu_quota_capacity(ok, cfg)) == []
    assert list(rules.gpu_quota_capacity([quota("a", "8", False), quota("b", "1", False)], cfg))


def test_team_access_entries_and_role_binding(team_run: Run) -> None:
    entries = team_run.by_type("aws:eks/accessEntry:AccessEntry")
    team_entries = [e for e in entries if "team-access" in e.name]
    # One entry per principal, however many teams it is in.
    assert len(team_entries) == 1
    assert team_entries[0].inputs["principalArn"] == "arn:aws:iam::123456789012:role/ml-engineers"
    assert team_entries[0].inputs["type"] == "STANDARD"
    assert team_entries[0].inputs["kubernetesGroups"] == [
        "mlplatform:team:ml",
        "mlplatform:team:vision",
    ]
    (assoc,) = [
        a
        for a in team_run.by_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
        if "team-access" in a.name
    ]
    assert assoc.inputs["policyArn"].endswith(":eks::aws:cluster-access-policy/AmazonEKSEditPolicy")
    assert assoc.inputs["accessScope"] == {"type": "namespace", "namespaces": ["ml", "vision"]}
    binding = team_run.manifest("RoleBinding", "team-edit", "ml")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "edit",
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ml-oncall"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "mlplatform:team:ml"},
    ]
    vision = team_run.manifest("RoleBinding", "team-edit", "vision")
    assert [s["name"] for s in vision["subjects"]] == ["mlplatform:team:vision"]


def test_groups_only_on_a_cluster_without_aws() -> None:
    config = base_config(
        cluster={"mode": "existing", "kubeconfigContext": "kind-ml"},
        gpuNodeGroups=[],
        teams=[{"name": "ml", "members": ["ml-devs"]}],
    )
    r = run(config)
    assert r.manifest("RoleBinding", "team-edit", "ml")["subjects"][0]["name"] == "ml-devs"
    assert not r.by_type("aws:eks/accessEntry:AccessEntry")


# -- Fleets ----------------------------------------------------------------------


def test_mixed_mig_and_plain_gpu_groups() -> None:
    config = stack(
        {
            "kind": "inference",
            "name": "small",
            "team": "ml",
            "model": {"uri": "s3://m/small"},
            "iamRoleArn": ROLE,
            "gpus": 1,
            "migProfile": "1g.10gb",
            "accelerators": ["nvidia-a100"],
        },
        {
            "kind": "training",
            "name": "plain",
            "team": "ml",
            "gpus": 1,
            "accelerators": ["nvidia-l4"],
        },
        gpuNodeGroups=[
            {"name": "a100", "instanceTypes": ["p4d.24xlarge"], "maxSize": 1},
            {"name": "l4", "instanceTypes": ["g6.xlarge"], "maxSize": 4},
        ],
        devicePlugin={"migStrategy": "mixed"},
    )
    r = run(config)
    serve = _main(r.manifest("Deployment", "small", "ml"))
    assert serve["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    plain = _main(r.manifest("Job", "plain", "ml"))
    assert plain["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_p3_is_a_gpu_instance_type() -> None:
    r = run(
        stack(
            gpuNodeGroups=[{"name": "v100", "instanceTypes": ["p3.8xlarge"], "maxSize": 3}],
            teams=[{"name": "ml", "quota": {"gpus": 12}}],
            # Managed node groups (under Karpenter the group is a NodePool).
            capacity={"autoscaler": "cluster-autoscaler"},
        )
    )
    (group,) = [
        g
        for g in r.by_type("aws:eks/nodeGroup:NodeGroup")
        if g.inputs["instanceTypes"] == ["p3.8xlarge"]
    ]
    assert group.inputs["labels"]["k8s.amazonaws.com/accelerator"] == "nvidia-tesla-v100"


# -- Policies see every pod template ----------------------------------------------


def _cr(kind: str, spec: dict[str, Any], api: str = "example.com/v1") -> Resource:
    return Resource(
        f"kubernetes:{api}:{kind}",
        f"r-{kind}",
        {
            "apiVersion": api,
            "kind": kind,
            "metadata": {"name": "x", "namespace": "team"},
            "spec": spec,
        },
    )


GPU_IN_REQUESTS = {
    "name": "main",
    "image": "registry.example/app:1.0",
    "resources": {"requests": {"nvidia.com/gpu": "1", "cpu": "1", "memory": "1Gi"}},
}


@pytest.mark.parametrize(
    ("kind", "spec", "where"),
    [
        (
            "SomeTrainer",
            {"workers": {"count": 2, "template": {"spec": {"containers": [GPU_IN_REQUESTS]}}}},
            "spec.workers.template.spec",
        ),
        (
            "JobSet",
            {
                "replicatedJobs": [
                    {
                        "name": "w",
                        "replicas": 2,
                        "template": {
                            "spec": {
                                "parallelism": 4,
                                "template": {"spec": {"containers": [GPU_IN_REQUESTS]}},
                            }
                        },
                    }
                ]
            },
            "spec.replicatedJobs[0].template.spec.template.spec",
        ),
        (
            "LeaderWorkerSet",
            {
                "leaderWorkerTemplate": {
                    "size": 4,
                    "workerTemplate": {"spec": {"containers": [GPU_IN_REQUESTS]}},
                }
            },
            "spec.leaderWorkerTemplate.workerTemplate.spec",
        ),
        (
            "Workflow",
            {"templates": [{"name": "train", "container": GPU_IN_REQUESTS}]},
            "spec.templates[0]",
        ),
    ],
)
def test_walker_finds_gpu_requests_in_custom_resources(
    kind: str, spec: dict[str, Any], where: str
) -> None:
    res = _cr(kind, spec)
    (template,) = rules.pod_templates(res)
    assert template.where == where
    findings = list(rules.gpu_in_limits(res, PolicyConfig()))
    assert findings and "sets no limit" in findings[0]


def test_walker_multiplies_replicas() -> None:
    spec = {
        "replicatedJobs": [
            {
                "replicas": 2,
                "template": {
                    "spec": {
                        "parallelism": 4,
                        "template": {"spec": {"containers": [GPU_IN_REQUESTS]}},
                    }
                },
            }
        ]
    }
    (t,) = rules.pod_templates(_cr("JobSet", spec))
    assert t.replicas == 8


# -- Bad configurations: exit 2, the key path, no traceback --------------------------

TRAIN_MIN = {
    "kind": "training",
    "name": "t",
    "team": "ml",
    "gpus": 1,
    "cpu": "16",
    "memory": "32Gi",
}
BAD: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    (
        "cpu-limit-trap",
        TRAIN_MIN,
        {"teams": [{"name": "ml", "quota": {"gpus": 12}, "limits": {"defaultCpuLimit": "2"}}]},
        "mlplatform:workloads[0].cpu",
        "gives it 2 (teams[0].limits.defaultCpuLimit)",
    ),
    (
        "cpu-limit-trap-from-max",
        TRAIN_MIN,
        {"teams": [{"name": "ml", "quota": {"gpus": 12}, "limits": {"max": {"cpu": "8"}}}]},
        "mlplatform:workloads[0].cpu",
        "gives it 8 (teams[0].limits.max.cpu)",
    ),
    (
        "cpu-limit-trap-sidecar",
        TRAIN_MIN | {"cpuLimit": "16", "sidecars": [{"name": "s", "image": "a/b:1", "cpu": "3"}]},
        {"teams": [{"name": "ml", "quota": {"gpus": 12}, "limits": {"defaultCpuLimit": "2"}}]},
        "mlplatform:workloads[0].sidecars[0].cpu",
        "rejects the pod",
    ),
    (
        "memory-above-team-max",
        TRAIN_MIN | {"memory": "256Gi"},
        {"teams": [{"name": "ml", "quota": {"gpus": 12}, "limits": {"max": {"memory": "192Gi"}}}]},
        "mlplatform:workloads[0].memory",
        "above the LimitRange max of team 'ml'",
    ),
    (
        "cpu-limit-above-team-max",
        TRAIN_MIN | {"cpuLimit": "64"},
        {"teams": [{"name": "ml", "quota": {"gpus": 12}, "limits": {"max": {"cpu": "48"}}}]},
        "mlplatform:workloads[0].cpuLimit",
        "above the LimitRange max of team 'ml'",
    ),
    (
        "limit-ratio",
        TRAIN_MIN | {"memoryLimit": "128Gi"},
        {
            "teams": [
                {
                    "name": "ml",
                    "quota": {"gpus": 12},
                    "limits": {"maxLimitRequestRatio": {"memory": "2"}},
                }
            ]
        },
        "mlplatform:workloads[0].memory",
        "more than 2x its request",
    ),
    (
        "checkpoint-above-pvc-max",
        TRAIN_MIN | {"checkpoint": {"size": "1Ti"}},
        {"teams": [{"name": "ml", "quota": {"gpus": 12}, "limits": {"pvc": {"max": "500Gi"}}}]},
        "mlplatform:workloads[0].checkpoint.size",
        "above the PVC max of team 'ml'",
    ),
    (
        "ratio-without-cpu-default",
        TRAIN_MIN,
        {
            "teams": [
                {
                    "name": "ml",
                    "quota": {"gpus": 12},
                    "limits": {"maxLimitRequestRatio": {"cpu": "4"}},
                }
            ]
        },
        "mlplatform:teams[0].limits.maxLimitRequestRatio.cpu",
        "needs a default CPU limit",
    ),
    (
        "default-above-max",
        TRAIN_MIN,
        {
            "teams": [
                {
                    "name": "ml",
                    "quota": {"gpus": 12},
                    "limits": {"defaultCpuLimit": "8", "max": {"cpu": "4"}},
                }
            ]
        },
        "mlplatform:teams[0].limits.defaultCpuLimit",
        "above max.cpu",
    ),
    (
        "time-sliced-multi-gpu",
        TRAIN_MIN | {"gpus": 2},
        {"devicePlugin": {"timeSlicing": {"replicas": 4}}},
        "mlplatform:workloads[0].gpus",
        "failRequestsGreaterThanOne",
    ),
    (
        "node-selector-no-pool",
        TRAIN_MIN | {"nodeSelector": {"example.com/pool": "h100"}},
        {},
        "mlplatform:workloads[0].nodeSelector",
        "would never schedule",
    ),
    (
        "node-selector-pool-not-allowed",
        # The a10g pool is spot: training-default may not go there.
        TRAIN_MIN | {"nodeSelector": {"node.kubernetes.io/instance-type": "g5.12xlarge"}},
        {},
        "mlplatform:workloads[0].nodeSelector",
        "no GPU pool it may use",
    ),
    (
        "node-selector-cpu-pod-on-gpu-label",
        {"kind": "training", "name": "c", "team": "ml", "nodeSelector": {"example.com/pool": "l4"}},
        {},
        "mlplatform:workloads[0].nodeSelector",
        "the system nodes",
    ),
    (
        "memory-limit-below-request",
        TRAIN_MIN | {"memoryLimit": "16Gi"},
        {},
        "mlplatform:workloads[0].memoryLimit",
        "below the memory request",
    ),
    (
        "cpu-limit-below-request",
        TRAIN_MIN | {"cpuLimit": "8"},
        {},
        "mlplatform:workloads[0].cpuLimit",
        "below the CPU request",
    ),
    (
        "run-as-root",
        TRAIN_MIN | {"runAsUser": 0},
        {},
        "mlplatform:workloads[0].runAsUser",
        "greater than or equal to 1",
    ),
    (
        "reserved-volume",
        TRAIN_MIN | {"volumes": [{"name": "checkpoints", "emptyDir": "1Gi", "mountPath": "/x"}]},
        {},
        "mlplatform:workloads[0].volumes[0].name",
        "a volume the platform uses",
    ),
    (
        "reserved-mount-path",
        TRAIN_MIN | {"volumes": [{"name": "x", "emptyDir": "1Gi", "mountPath": "/tmp"}]},
        {},
        "mlplatform:workloads[0].volumes[0].mountPath",
        "mounted by the platform",
    ),
    (
        "volume-two-sources",
        TRAIN_MIN
        | {"volumes": [{"name": "x", "emptyDir": "1Gi", "secret": "s", "mountPath": "/x"}]},
        {},
        "mlplatform:workloads[0].volumes[0]",
        "exactly one of",
    ),
    (
        "mount-of-unknown-volume",
        TRAIN_MIN
        | {
            "initContainers": [
                {
                    "name": "i",
                    "image": "a/b:1",
                    "volumeMounts": [{"volume": "nope", "mountPath": "/n"}],
                }
            ]
        },
        {},
        "mlplatform:workloads[0].initContainers[0].volumeMounts[0].volume",
        "not in this workload's volumes",
    ),
    (
        "duplicate-container-name",
        TRAIN_MIN
        | {
            "sidecars": [{"name": "a", "image": "a/b:1"}],
            "initContainers": [{"name": "a", "image": "a/b:1"}],
        },
        {},
        "mlplatform:workloads[0].initContainers[0].name",
        "already used by sidecars[0]",
    ),
    (
        "platform-container-name",
        TRAIN_MIN | {"sidecars": [{"name": "fetch-model", "image": "a/b:1"}]},
        {},
        "mlplatform:workloads[0].sidecars[0].name",
        "a name the platform uses",
    ),
    (
        "unpinned-sidecar",
        TRAIN_MIN | {"sidecars": [{"name": "s", "image": "a/b"}]},
        {},
        "mlplatform:workloads[0].sidecars[0].image",
        "no tag or digest",
    ),
    (
        "platform-label",
        TRAIN_MIN | {"labels": {"mlplatform.io/team": "other"}},
        {},
        'mlplatform:workloads[0].labels["mlplatform.io/team"]',
        "set by the platform",
    ),
    (
        "relative-working-dir",
        TRAIN_MIN | {"workingDir": "app"},
        {},
        "mlplatform:workloads[0].workingDir",
        "not an absolute path",
    ),
    (
        "runtime-server-without-model",
        {"kind": "inference", "name": "s", "team": "ml"},
        {},
        "mlplatform:workloads[0].model",
        "needs a model",
    ),
    (
        "port-on-runtime-server",
        SERVE | {"port": 9000},
        {},
        "mlplatform:workloads[0].port",
        "only for an own server",
    ),
    (
        "training-may-mount-models",
        TRAIN_MIN | {"volumes": [{"name": "m", "emptyDir": "1Gi", "mountPath": "/checkpoints"}]},
        {},
        "mlplatform:workloads[0].volumes[0].mountPath",
        "mounted by the platform in this workload",
    ),
    (
        "suspend-without-schedule",
        TRAIN_MIN | {"suspend": True},
        {},
        "mlplatform:workloads[0].suspend",
        "only applies with `schedule`",
    ),
    (
        "hpa-without-metric",
        SERVE | {"targetCpuUtilization": None, "targetMemoryUtilization": None},
        {},
        "mlplatform:workloads[0].targetCpuUtilization",
        "the HPA needs a metric",
    ),
    (
        "scoped-quota-over-team",
        TRAIN_MIN,
        {
            "teams": [
                {
                    "name": "ml",
                    "quota": {"gpus": 4, "byPriorityClass": {"training-default": {"gpus": 8}}},
                }
            ]
        },
        'mlplatform:teams[0].quota.byPriorityClass["training-default"].gpus',
        "more than the team's gpus quota",
    ),
    (
        "pod-over-scoped-quota",
        TRAIN_MIN | {"gpus": 4},
        {
            "teams": [
                {
                    "name": "ml",
                    "quota": {"gpus": 12, "byPriorityClass": {"training-default": {"gpus": 2}}},
                }
            ]
        },
        "mlplatform:workloads[0].gpus",
        "allows training-default pods 2 in all",
    ),
    (
        "bad-member",
        TRAIN_MIN,
        {"teams": [{"name": "ml", "quota": {"gpus": 12}, "members": ["system:masters"]}]},
        "mlplatform:teams[0].members[0]",
        "groups under `system:`",
    ),
    (
        "member-is-admin",
        TRAIN_MIN,
        {
            "cluster": {
                "mode": "create",
                "adminRoleArns": ["arn:aws:iam::123456789012:role/admin"],
            },
            "teams": [
                {
                    "name": "ml",
                    "quota": {"gpus": 12},
                    "members": ["arn:aws:iam::123456789012:role/admin"],
                }
            ],
        },
        "mlplatform:teams[0].members[0]",
        "already a cluster admin",
    ),
    (
        "mig-single-with-plain-group",
        TRAIN_MIN,
        {"devicePlugin": {"migStrategy": "single"}},
        "mlplatform:gpuNodeGroups[0].instanceTypes",
        "use 'mixed'",
    ),
]


@pytest.mark.parametrize(
    ("workload", "overrides", "key_path", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workload: dict[str, Any],
    overrides: dict[str, Any],
    key_path: str,
    words: str,
) -> None:
    assert_config_error(tmp_path, capsys, stack(workload, **overrides), key_path, words)


def test_a_volume_without_mount_path_is_only_where_listed() -> None:
    workload = {
        "kind": "training",
        "name": "logs",
        "team": "ml",
        "volumes": [
            {"name": "logs", "emptyDir": "1Gi", "mountPath": "/logs"},
            {"name": "shipper-config", "configMap": "fluent-bit-config"},
        ],
        "sidecars": [
            {
                "name": "shipper",
                "image": "fluent/fluent-bit:3.2.4",
                "volumeMounts": [
                    {"volume": "logs", "mountPath": "/logs", "readOnly": True},
                    {"volume": "shipper-config", "mountPath": "/fluent-bit/etc"},
                ],
            }
        ],
    }
    pod = pod_spec(run(stack(workload)).manifest("Job", "logs", "ml"))
    main = [m["name"] for m in pod["containers"][0]["volumeMounts"]]
    assert "logs" in main and "shipper-config" not in main
    sidecar = [m["name"] for m in pod["initContainers"][0]["volumeMounts"]]
    assert {"logs", "shipper-config"} <= set(sidecar)
    assert "shipper-config" in {v["name"] for v in pod["volumes"]}


# -- Per-pool device plugin settings -------------------------------------------------

POOLS = [
    {
        "name": "l4",
        "instanceTypes": ["g6.xlarge"],
        "maxSize": 4,
        "devicePlugin": {"timeSlicing": {"replicas": 4}},
    },
    {
        "name": "a100",
        "instanceTypes": ["p4d.24xlarge"],
        "maxSize": 1,
        "devicePlugin": {"migStrategy": "mixed"},
    },
    {"name": "h100", "instanceTypes": ["p5.48xlarge"], "maxSize": 1},
]


def test_per_pool_device_plugin_configs() -> None:
    workloads = [
        {
            "kind": "training",
            "name": "whole",
            "team": "ml",
            "gpus": 8,
            "accelerators": ["nvidia-h100"],
        },
        {"kind": "training", "name": "slice", "team": "ml", "gpus": 1, "migProfile": "1g.5gb"},
        {
            "kind": "training",
            "name": "shared",
            "team": "ml",
            "gpus": 1,
            "accelerators": ["nvidia-l4"],
        },
    ]
    config = stack(*workloads, gpuNodeGroups=POOLS, teams=[{"name": "ml", "quota": {"gpus": 16}}])
    # Karpenter (the default): each NodePool labels its nodes for their DaemonSet.
    pools = {
        p.inputs["spec"]["template"]["metadata"]["labels"]["mlplatform.io/node-group"]: p
        for p in run(config).by_type("kubernetes:karpenter.sh/v1:NodePool")
    }
    for pool, value in (("l4", "daemonset-l4"), ("a100", "daemonset-a100"), ("h100", "daemonset")):
        labels = pools[pool].inputs["spec"]["template"]["metadata"]["labels"]
        assert labels["mlplatform.io/nvidia-device-plugin"] == value
    # Managed node groups under the Cluster Autoscaler: the same labels, and the
    # autoscaler's node template.
    r = run({**config, "mlplatform:capacity": {"autoscaler": "cluster-autoscaler"}})
    default = r.manifest("DaemonSet", "nvidia-device-plugin", "kube-system")
    (term,) = pod_spec(default)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert {
        "key": "mlplatform.io/nvidia-device-plugin",
        "operator": "NotIn",
        "values": ["host", "daemonset-a100", "daemonset-l4"],
    } in term["matchExpressions"]
    for pool in ("l4", "a100"):
        ds = r.manifest("DaemonSet", f"nvidia-device-plugin-{pool}", "kube-system")
        assert pod_spec(ds)["nodeSelector"] == {
            "mlplatform.io/nvidia-device-plugin": f"daemonset-{pool}"
        }
    l4 = yaml.safe_load(
        r.manifest("ConfigMap", "nvidia-device-plugin-l4-config", "kube-system")["data"][
            "config.yaml"
        ]
    )
    assert l4["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]
    assert l4["flags"]["migStrategy"] == "none"
    a100 = yaml.safe_load(
        r.manifest("ConfigMap", "nvidia-device-plugin-a100-config", "kube-system")["data"][
            "config.yaml"
        ]
    )
    assert a100["flags"]["migStrategy"] == "mixed" and "sharing" not in a100
    default_config = yaml.safe_load(
        r.manifest("ConfigMap", "nvidia-device-plugin-config", "kube-system")["data"]["config.yaml"]
    )
    assert default_config["flags"]["migStrategy"] == "none"
    groups = {
        g.inputs["labels"].get("mlplatform.io/node-group"): g
        for g in r.by_type("aws:eks/nodeGroup:NodeGroup")
    }
    assert groups["l4"].inputs["labels"]["mlplatform.io/nvidia-device-plugin"] == "daemonset-l4"
    assert groups["h100"].inputs["labels"]["mlplatform.io/nvidia-device-plugin"] == "daemonset"
    # The autoscaler's template counts the l4 group's slices.
    tags = {
        t.inputs["tag"]["key"]: t.inputs["tag"]["value"]
        for t in r.by_type("aws:autoscaling/tag:Tag")
        if "gpu-l4" in t.name
    }
    assert tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] == "4"


@pytest.mark.parametrize(
    ("workload", "groups", "key_path", "words"),
    [
        (
            TRAIN_MIN | {"gpus": 2},
            POOLS,
            "mlplatform:workloads[0].gpus",
            "time-sliced GPUs (node groups l4)",
        ),
        (
            TRAIN_MIN | {"gpus": 1, "migProfile": "1g.5gb", "accelerators": ["nvidia-h100"]},
            POOLS,
            "mlplatform:workloads[0].migProfile",
            "migStrategy: mixed",
        ),
        (
            TRAIN_MIN,
            [POOLS[0] | {"devicePlugin": {"migStrategy": "mixed"}}],
            "mlplatform:gpuNodeGroups[0].devicePlugin.migStrategy",
            "L4 GPUs do not support MIG",
        ),
        (
            TRAIN_MIN,
            [POOLS[0] | {"amiType": "BOTTLEROCKET_x86_64_NVIDIA"}],
            "mlplatform:gpuNodeGroups[0].devicePlugin",
            "Bottlerocket runs its own device plugin",
        ),
    ],
    ids=["multi-gpu-on-sliced-pool", "mig-off-mixed-pools", "mig-on-l4", "bottlerocket"],
)
def test_bad_pool_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workload: dict[str, Any],
    groups: list[dict[str, Any]],
    key_path: str,
    words: str,
) -> None:
    config = stack(workload, gpuNodeGroups=groups, teams=[{"name": "ml", "quota": {"gpus": 4}}])
    assert_config_error(tmp_path, capsys, config, key_path, words)


def test_multi_gpu_pod_kept_off_the_sliced_pool_is_fine() -> None:
    workload = TRAIN_MIN | {"gpus": 2, "accelerators": ["nvidia-h100"]}
    r = run(stack(workload, gpuNodeGroups=POOLS, teams=[{"name": "ml", "quota": {"gpus": 16}}]))
    assert r.manifest("Job", "t", "ml")


def test_field_env_and_team_object_counts() -> None:
    workload = {
        "kind": "training",
        "name": "fe",
        "team": "ml",
        "fieldEnv": {"WORKER_ID": "metadata.name", "POOL": "metadata.labels['example.com/pool']"},
    }
    team = {"name": "ml", "quota": {"gpus": 4, "cronJobs": 10, "services": 20}}
    r = run(stack(workload, teams=[team]))
    env = _env(_main(r.manifest("Job", "fe", "ml")))
    assert env["WORKER_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POOL"] == {"fieldRef": {"fieldPath": "metadata.labels['example.com/pool']"}}
    hard = r.manifest("ResourceQuota", "team-quota", "ml")["spec"]["hard"]
    assert hard["count/cronjobs.batch"] == "10" and hard["services"] == "20"


def test_bad_field_env() -> None:
    from workloads.training import TrainingJobSpec

    with pytest.raises(ValueError, match="not a downward API field"):
        TrainingJobSpec.model_validate(
            {"kind": "training", "name": "x", "team": "ml", "fieldEnv": {"A": "spec.containers"}}
        )


def test_python_api_takes_the_same_pod_settings() -> None:
    """The settings are fields of the specs: Python callers build the same pods."""
    from workloads import common
    from workloads.training import TrainingJobSpec

    spec = TrainingJobSpec(
        kind="training",
        name="py",
        team="ml",
        image=IMAGE,
        command=["python", "train.py"],
        gpus=1,
        checkpoint=False,
        volumes=[
            common.PodVolume(name="code", config_map="training-code", mount_path="/app"),
            common.PodVolume(name="cache", empty_dir="10Gi", mount_path="/cache"),
        ],
        sidecars=[common.ExtraContainer(name="proxy", image="envoyproxy/envoy:v1.31.2")],
        working_dir="/app",
        node_selector={"example.com/pool": "l4"},
        cpu_limit="4",
        run_as_user=1000,
    )
    ctx = common.WorkloadContext(environment="test", namespace="ml", runtime_image="")
    main = pod.Container(
        name="trainer", image=IMAGE, resources=common.resources(spec), command=spec.command
    )
    template = common.pod_spec(spec, ctx, {"app.kubernetes.io/name": "py"}, [main])
    pod_spec_ = template["spec"]
    assert pod_spec_["nodeSelector"] == {"example.com/pool": "l4"}
    assert pod_spec_["securityContext"]["runAsUser"] == 1000
    assert pod_spec_["initContainers"][0]["restartPolicy"] == "Always"
    c = pod_spec_["containers"][0]
    assert c["workingDir"] == "/app"
    assert c["resources"]["limits"]["cpu"] == "4"
    assert {"name": "cache", "mountPath": "/cache"} in c["volumeMounts"]
