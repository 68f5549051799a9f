"""NVIDIA device plugin DaemonSet and config; priority classes; GPU placement helpers."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from infra import catalog, scheduling
from tests.helpers import base_config, pod_spec, run
from tools.offline import Run


@pytest.fixture(scope="module")
def default_run() -> Run:
    return run()


def _config_file(r: Run) -> dict:  # type: ignore[type-arg]
    cm = r.manifest("ConfigMap", "nvidia-device-plugin-config", "kube-system")
    return yaml.safe_load(cm["data"]["config.yaml"])


def test_daemonset_runs_only_on_gpu_nodes_in_kube_system(default_run: Run) -> None:
    ds = default_run.manifest("DaemonSet", "nvidia-device-plugin", "kube-system")
    spec = pod_spec(ds)
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert {
        "key": "mlplatform.io/capacity-type",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in spec["tolerations"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]},
                # Bottlerocket nodes run the plugin themselves.
                {
                    "key": "mlplatform.io/nvidia-device-plugin",
                    "operator": "NotIn",
                    "values": ["host"],
                },
            ]
        }
    ]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_daemonset_is_hardened_as_far_as_it_runs(default_run: Run) -> None:
    spec = pod_spec(default_run.manifest("DaemonSet", "nvidia-device-plugin", "kube-system"))
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    assert spec["automountServiceAccountToken"] is False
    host_paths = [v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v]
    assert host_paths == ["/var/lib/kubelet/device-plugins"]
    assert container["image"].startswith("nvcr.io/nvidia/k8s-device-plugin:v0.20.1@sha256:")
    assert container["args"] == ["--config-file=/etc/nvidia-device-plugin/config.yaml"]
    assert container["resources"]["limits"] == {"memory": "256Mi"}


def test_default_config_has_no_sharing(default_run: Run) -> None:
    config = _config_file(default_run)
    assert config["version"] == "v1"
    assert config["flags"]["migStrategy"] == "none"
    assert config["flags"]["failOnInitError"] is True
    assert "sharing" not in config


def test_time_slicing_and_mig_from_settings() -> None:
    r = run(
        base_config(
            gpuNodeGroups=[{"name": "a100", "instanceTypes": ["p4d.24xlarge"], "maxSize": 1}],
            teams=[],
            devicePlugin={
                "migStrategy": "mixed",
                "timeSlicing": {"replicas": 4, "renameByDefault": True},
            },
        )
    )
    config = _config_file(r)
    assert config["flags"]["migStrategy"] == "mixed"
    assert config["sharing"]["timeSlicing"] == {
        "renameByDefault": True,
        "failRequestsGreaterThanOne": True,
        "resources": [{"name": "nvidia.com/gpu", "replicas": 4}],
    }
    # MIG: NVML needs SYS_ADMIN to see MIG devices (only then).
    container = pod_spec(r.manifest("DaemonSet", "nvidia-device-plugin", "kube-system"))[
        "containers"
    ][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert {"name": "NVIDIA_MIG_MONITOR_DEVICES", "value": "all"} in container["env"]
    # The plugin reads its config at start: the pod template carries its hash.
    ds = r.manifest("DaemonSet", "nvidia-device-plugin", "kube-system")
    cm = r.manifest("ConfigMap", "nvidia-device-plugin-config", "kube-system")
    expected = hashlib.sha256(cm["data"]["config.yaml"].encode()).hexdigest()
    assert (
        ds["spec"]["template"]["metadata"]["annotations"]["mlplatform.io/config-sha256"] == expected
    )


def test_device_plugin_can_be_turned_off() -> None:
    r = run(base_config(devicePlugin={"enabled": False}))
    daemonsets = {m["metadata"]["name"] for m in r.manifests() if m["kind"] == "DaemonSet"}
    assert "nvidia-device-plugin" not in daemonsets
    assert "dcgm-exporter" in daemonsets  # monitoring stays


def test_priority_classes(default_run: Run) -> None:
    classes = {
        m["metadata"]["name"]: m for m in default_run.manifests() if m["kind"] == "PriorityClass"
    }
    assert set(classes) == {
        "serving-critical",
        "training-high",
        "training-default",
        "training-preemptible",
    }
    values = [
        classes[n]["value"]
        for n in ("serving-critical", "training-high", "training-default", "training-preemptible")
    ]
    assert values == sorted(values, reverse=True)
    assert all(v < 1_000_000_000 for v in values)  # below the system classes
    assert classes["training-preemptible"]["preemptionPolicy"] == "Never"
    assert classes["serving-critical"]["preemptionPolicy"] == "PreemptLowerPriority"
    assert not any(c["globalDefault"] for c in classes.values())
    assert all(c["description"] for c in classes.values())
    assert default_run.outputs["priorityClasses"] == sorted(classes)


def test_gpu_placement_for_workloads() -> None:
    placement = scheduling.gpu_placement(
        priority_class="training-default",
        spot_priority_classes=["training-preemptible"],
        accelerators=["nvidia-h100", "nvidia-a100"],
    )
    assert placement["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    expressions = placement["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in expressions
    assert {
        "key": "k8s.amazonaws.com/accelerator",
        "operator": "In",
        "values": ["nvidia-a100", "nvidia-h100"],
    } in expressions


def test_only_listed_priority_classes_tolerate_spot() -> None:
    spot = scheduling.SPOT_TAINT.toleration()
    preemptible = scheduling.gpu_placement(
        priority_class="training-preemptible", spot_priority_classes=["training-preemptible"]
    )
    serving = scheduling.gpu_placement(
        priority_class="serving-critical", spot_priority_classes=["training-preemptible"]
    )
    assert spot in preemptible["tolerations"]
    assert spot not in serving["tolerations"]


def test_node_taints_match_tolerations() -> None:
    """The two sides of scheduling come from one module and must agree."""
    for spot in (False, True):
        taints = scheduling.gpu_node_taints(spot)
        daemon = scheduling.gpu_daemon_placement()["tolerations"]
        for taint in taints:
            assert taint.toleration() in daemon
    assert [t.key for t in scheduling.gpu_node_taints(True)] == [
        catalog.GPU_TAINT_KEY,
        catalog.SPOT_TAINT_KEY,
    ]


def test_no_other_module_writes_gpu_tolerations() -> None:
    """Taints, tolerations and node affinities are spelled out only in
    infra/scheduling.py; everything else calls it."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    markers = ("NoSchedule", "nodeAffinity", '"Exists"', "NO_SCHEDULE")
    offenders = [
        f"{path.relative_to(root)}: {marker}"
        for path in [*root.glob("infra/*.py"), *root.glob("workloads/*.py")]
        # settings: field docs only; catalog: the constants scheduling.py uses;
        # kueue_api: Kueue's API enums (a schema model that places nothing)
        if path.name not in ("scheduling.py", "settings.py", "catalog.py", "kueue_api.py")
        for marker in markers
        if marker in path.read_text()
    ]
    assert offenders == []
