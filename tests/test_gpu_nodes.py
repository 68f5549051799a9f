"""GPU node groups: node group inputs, IAM role, autoscaler tags on the ASG (the
`cluster-autoscaler` capacity mode; Karpenter pools are in test_capacity.py)."""

from __future__ import annotations

import pytest

from infra import instances
from tests.helpers import base_config, run
from tools.offline import Run

CA = {"autoscaler": "cluster-autoscaler"}


@pytest.fixture(scope="module")
def two_groups() -> Run:
    return run(
        base_config(
            gpuNodeGroups=[
                {
                    "name": "l40s",
                    "instanceTypes": ["g6e.12xlarge", "g6e.24xlarge"],
                    "minSize": 1,
                    "maxSize": 3,
                },
                {
                    "name": "h100-spot",
                    "instanceTypes": ["p5.48xlarge"],
                    "capacityType": "SPOT",
                    "maxSize": 2,
                    "diskSizeGiB": 500,
                    "labels": {"team": "research"},
                    "amiType": "BOTTLEROCKET_x86_64_NVIDIA",
                    # The default launch template path (EFA pools: tests/test_efa.py).
                    "efa": {"enabled": False},
                },
            ],
            teams=[{"name": "research", "quota": {"gpus": 16}}],
            capacity=CA,
        )
    )


def test_node_group_inputs(two_groups: Run) -> None:
    ng = two_groups.one("aws:eks/nodeGroup:NodeGroup", "mlplatform-gpu-l40s-nodes")
    assert ng.inputs["amiType"] == "AL2023_x86_64_NVIDIA"
    assert ng.inputs["capacityType"] == "ON_DEMAND"
    assert ng.inputs["instanceTypes"] == ["g6e.12xlarge", "g6e.24xlarge"]
    assert ng.inputs["scalingConfig"] == {"minSize": 1, "desiredSize": 1, "maxSize": 3}
    # Root volume and metadata options come from the group's launch template.
    lt = two_groups.one("aws:ec2/launchTemplate:LaunchTemplate", "mlplatform-gpu-l40s-lt")
    assert ng.inputs["launchTemplate"] == {
        "id": lt.inputs.get("id", ng.inputs["launchTemplate"]["id"]),
        "version": "1",
    }
    assert lt.inputs["blockDeviceMappings"] == [
        {
            "deviceName": "/dev/xvda",
            "ebs": {
                "deleteOnTermination": "true",
                "encrypted": "true",
                "volumeSize": 200,
                "volumeType": "gp3",
            },
        }
    ]
    assert lt.inputs["metadataOptions"]["httpTokens"] == "required"
    assert lt.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert ng.inputs["clusterName"] == "mlplatform-test"
    assert ng.inputs["nodeRepairConfig"] == {"enabled": True}
    assert ng.inputs["labels"] == {
        "nvidia.com/gpu.present": "true",
        "k8s.amazonaws.com/accelerator": "nvidia-l40s",
        "mlplatform.io/node-group": "l40s",
        "mlplatform.io/nvidia-device-plugin": "daemonset",
        "mlplatform.io/capacity-type": "on-demand",
    }
    assert ng.inputs["taints"] == [
        {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
    ]
    # The autoscaler owns the size after creation: `pulumi up` must not reset it.
    assert ng.options["ignoreChanges"] == ["scalingConfig.desiredSize"]


def test_spot_bottlerocket_group(two_groups: Run) -> None:
    ng = two_groups.one("aws:eks/nodeGroup:NodeGroup", "mlplatform-gpu-h100-spot-nodes")
    assert ng.inputs["capacityType"] == "SPOT"
    assert ng.inputs["amiType"] == "BOTTLEROCKET_x86_64_NVIDIA"
    lt = two_groups.one("aws:ec2/launchTemplate:LaunchTemplate", "mlplatform-gpu-h100-spot-lt")
    # Bottlerocket: a small OS volume and the data volume of diskSizeGiB.
    assert [
        (d["deviceName"], d["ebs"]["volumeSize"]) for d in lt.inputs["blockDeviceMappings"]
    ] == [
        ("/dev/xvda", 4),
        ("/dev/xvdb", 500),
    ]
    assert ng.inputs["scalingConfig"] == {"minSize": 0, "desiredSize": 0, "maxSize": 2}
    assert ng.inputs["labels"]["mlplatform.io/nvidia-device-plugin"] == "host"
    assert ng.inputs["labels"]["mlplatform.io/capacity-type"] == "spot"
    assert ng.inputs["labels"]["team"] == "research"
    assert {
        "key": "mlplatform.io/capacity-type",
        "value": "spot",
        "effect": "NO_SCHEDULE",
    } in ng.inputs["taints"]


def test_node_role_has_the_worker_policies(two_groups: Run) -> None:
    role = two_groups.one("aws:iam/role:Role", "mlplatform-gpu-l40s-role")
    assert '"Service": "ec2.amazonaws.com"' in role.inputs["assumeRolePolicy"]
    attached = {
        a.inputs["policyArn"].rsplit("/", 1)[-1]
        for a in two_groups.by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if two_groups.parent_name(a) == "mlplatform-gpu-l40s"
    }
    assert attached == {
        "AmazonEKSWorkerNodePolicy",
        "AmazonEKS_CNI_Policy",
        "AmazonEC2ContainerRegistryPullOnly",
    }


def _asg_tags(run: Run, group: str) -> dict[str, tuple[str, str]]:
    tags = [
        t
        for t in run.by_type("aws:autoscaling/tag:Tag")
        if run.parent_name(t) == f"mlplatform-gpu-{group}"
    ]
    return {
        t.inputs["tag"]["key"]: (t.inputs["tag"]["value"], t.inputs["autoscalingGroupName"])
        for t in tags
    }


def test_autoscaler_tags_are_on_the_reported_asg(two_groups: Run) -> None:
    tags = _asg_tags(two_groups, "l40s")
    ca = "k8s.io/cluster-autoscaler"
    assert tags[f"{ca}/enabled"][0] == "true"
    assert tags[f"{ca}/mlplatform-test"][0] == "owned"
    assert tags[f"{ca}/node-template/resources/nvidia.com/gpu"][0] == "4"
    assert tags[f"{ca}/node-template/label/nvidia.com/gpu.present"][0] == "true"
    assert tags[f"{ca}/node-template/label/k8s.amazonaws.com/accelerator"][0] == "nvidia-l40s"
    assert tags[f"{ca}/node-template/taint/nvidia.com/gpu"][0] == "true:NoSchedule"
    # Every tag goes on the ASG the node group reported (the mock reports eks-<name>-...).
    asg_names = {asg for _, asg in tags.values()}
    assert len(asg_names) == 1
    (asg,) = asg_names
    assert asg.startswith("eks-mlplatform-gpu-l40s-nodes-")
    assert all(
        t.inputs["tag"]["propagateAtLaunch"] is False
        for t in two_groups.by_type("aws:autoscaling/tag:Tag")
    )


def test_spot_taint_is_in_the_node_template(two_groups: Run) -> None:
    tags = _asg_tags(two_groups, "h100-spot")
    ca = "k8s.io/cluster-autoscaler/node-template"
    assert tags[f"{ca}/taint/mlplatform.io/capacity-type"][0] == "spot:NoSchedule"
    assert tags[f"{ca}/resources/nvidia.com/gpu"][0] == "8"


def test_time_slicing_multiplies_the_advertised_gpus() -> None:
    r = run(base_config(devicePlugin={"timeSlicing": {"replicas": 4}}, capacity=CA))
    tags = _asg_tags(r, "a10g")
    assert tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"][0] == "4"
    r = run(
        base_config(
            devicePlugin={"timeSlicing": {"replicas": 4, "renameByDefault": True}}, capacity=CA
        )
    )
    tags = _asg_tags(r, "a10g")
    assert tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"][0] == "1"


def test_outputs_report_capacity_from_the_instance_table(two_groups: Run) -> None:
    groups = {g["name"]: g for g in two_groups.outputs["gpuNodeGroups"]}
    assert groups["l40s"]["gpusPerNode"] == 4 and groups["l40s"]["maxGpus"] == 12
    assert groups["h100-spot"]["gpusPerNode"] == 8 and groups["h100-spot"]["maxGpus"] == 16
    assert two_groups.outputs["gpuCapacity"] == 28
    assert groups["l40s"]["nodeGroupName"].startswith("mlplatform-gpu-l40s-nodes-")


def test_instance_table_covers_the_families() -> None:
    for family in ("g5", "g6", "g6e", "p4d", "p5"):
        assert family in instances.GPU_FAMILIES
    assert instances.lookup("p5.48xlarge") == instances.GpuInstanceType(
        "p5.48xlarge",
        8,
        "H100",
        80,
        192,
        2048,
        "nvidia-h100",
        instances.EFA_FABRICS["p5.48xlarge"],
    )
    assert instances.lookup("p4d.24xlarge").gpus == 8  # type: ignore[union-attr]
    assert instances.lookup("g5.48xlarge").total_gpu_memory_gib == 192  # type: ignore[union-attr]
    assert instances.lookup("g6e.xlarge").memory_gib == 32  # type: ignore[union-attr]
    assert instances.lookup("p5.48xlarge").mig_capable  # type: ignore[union-attr]
    assert not instances.lookup("g6.xlarge").mig_capable  # type: ignore[union-attr]
    assert instances.max_gpus_per_instance(["g5.xlarge", "g5.12xlarge", "m5.large"]) == 4
