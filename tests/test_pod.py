"""The one pod builder: security defaults, resources, GPU placement, volumes."""

from __future__ import annotations

import pytest

from infra import pod
from tools.schema import SchemaValidator


def _container(**kw: object) -> pod.Container:
    fields: dict[str, object] = {
        "name": "main",
        "image": "registry.example/img@sha256:" + "a" * 64,
        "resources": pod.Resources(cpu="2", memory="8Gi"),
    }
    fields.update(kw)
    return pod.Container(**fields)  # type: ignore[arg-type]


def _spec(**kw: object) -> pod.PodSpec:
    fields: dict[str, object] = {
        "labels": {"app.kubernetes.io/name": "x"},
        "containers": [_container()],
        "priority_class": "training-default",
    }
    fields.update(kw)
    return pod.PodSpec(**fields)  # type: ignore[arg-type]


def test_restricted_defaults() -> None:
    t = pod.pod_template(_spec())
    spec = t["spec"]
    assert spec["securityContext"] == {
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    c = spec["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    # A read-only root needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in spec["volumes"]
    assert "tolerations" not in spec and "affinity" not in spec


def test_resources_put_gpus_in_limits_only() -> None:
    r = pod.Resources(cpu="4", memory="16Gi", gpus=2).manifest()
    assert r == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"},
    }
    mig = pod.Resources(
        cpu="1", memory="4Gi", gpus=1, gpu_resource="nvidia.com/mig-1g.10gb"
    ).manifest()
    assert mig["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    with pytest.raises(ValueError, match="not an NVIDIA GPU resource"):
        pod.Resources(cpu="1", memory="1Gi", gpus=1, gpu_resource="amd.com/gpu").manifest()


def test_gpu_pods_get_placement_from_scheduling() -> None:
    gpu = _container(resources=pod.Resources(cpu="8", memory="32Gi", gpus=1))
    spec = pod.pod_template(
        _spec(
            containers=[gpu],
            priority_class="training-preemptible",
            spot_priority_classes=["training-preemptible"],
            accelerators=["nvidia-l4"],
        )
    )["spec"]
    keys = [t["key"] for t in spec["tolerations"]]
    assert keys == ["nvidia.com/gpu", "mlplatform.io/capacity-type"]
    expressions = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchExpressions"]
    assert {
        "key": "k8s.amazonaws.com/accelerator",
        "operator": "In",
        "values": ["nvidia-l4"],
    } in expressions


def test_shm_is_a_sized_memory_volume() -> None:
    t = pod.pod_template(_spec(shm_size="8Gi"))
    assert {"name": "dshm", "emptyDir": {"sizeLimit": "8Gi", "medium": "Memory"}} in t["spec"][
        "volumes"
    ]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in t["spec"]["containers"][0]["volumeMounts"]


def test_env_probes_ports_and_volumes() -> None:
    c = _container(
        env={
            "A": "1",
            "TOKEN": pod.SecretRef("creds", "token"),
            "NODE": pod.FieldRef("spec.nodeName"),
        },
        ports={"http": 8080},
        probes=pod.Probes(readiness=pod.HttpProbe("/ready", "http")),
        mounts=[pod.Mount("data", "/data", read_only=True)],
    )
    t = pod.pod_template(
        _spec(containers=[c], volumes=[pod.Volume("data", claim="datasets", claim_read_only=True)])
    )
    out = t["spec"]["containers"][0]
    assert out["env"] == [
        {"name": "A", "value": "1"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    assert out["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert out["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert {
        "name": "data",
        "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True},
    } in t["spec"]["volumes"]


def test_restricted_profile_refuses_host_access() -> None:
    with pytest.raises(ValueError, match="hostPath"):
        pod.pod_template(_spec(volumes=[pod.Volume("h", host_path="/var/run")]))
    with pytest.raises(ValueError, match="root"):
        pod.pod_template(_spec(containers=[_container(run_as_root=True)]))
    with pytest.raises(ValueError, match="unique"):
        pod.pod_template(_spec(containers=[_container(), _container()]))
    with pytest.raises(ValueError, match="exactly one source"):
        pod.pod_template(_spec(volumes=[pod.Volume("x", claim="a", empty_dir="1Gi")]))


def test_init_containers_count_towards_gpus() -> None:
    spec = _spec(
        init_containers=[
            _container(name="warmup", resources=pod.Resources(cpu="1", memory="1Gi", gpus=2))
        ],
        containers=[_container(resources=pod.Resources(cpu="1", memory="1Gi", gpus=1))],
    )
    assert spec.gpus == 2


def test_rendered_pod_is_schema_valid() -> None:
    template = pod.pod_template(
        _spec(
            shm_size="1Gi",
            containers=[
                _container(
                    resources=pod.Resources(cpu="1", memory="1Gi", gpus=1),
                    ports={"http": 8080},
                    probes=pod.Probes(liveness=pod.HttpProbe("/live", 8080)),
                )
            ],
        )
    )
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": template["spec"],
    }
    assert SchemaValidator("1.35").validate(manifest) == []
