"""EFA fabric: interface layouts per instance type, both provisioning paths (a
managed node group's one launch template under the Cluster Autoscaler, an
EC2NodeClass + NodePool + NodeOverlay under Karpenter), one zone, placement and
security groups, the EFA device plugin, pods on EFA pools, the fabric smoke
test, and the configuration errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import efa, instances
from infra.efa import EfaPod, EfaSettings
from tests.helpers import assert_config_error, base_config, pod_spec, preview, run
from tools.offline import Run

P5 = {
    "name": "h100",
    "instanceTypes": ["p5.48xlarge"],
    "maxSize": 4,
    "diskSizeGiB": 500,
}
L40S = {"name": "l40s", "instanceTypes": ["g6e.12xlarge"], "maxSize": 2}
DIST = {
    "kind": "distributed",
    "name": "pretrain",
    "team": "research",
    "nodes": 2,
    "gpus": 8,
    "cpu": "90",
    "memory": "512Gi",
    "accelerators": ["nvidia-h100"],
    "priorityClass": "training-high",
}
NCCL = {
    "kind": "nccl-test",
    "name": "fabric-check",
    "team": "research",
    "nodes": 2,
    "gpus": 8,
    "cpu": "16",
    "memory": "64Gi",
    "accelerators": ["nvidia-h100"],
}


def stack(
    *workloads: dict[str, Any],
    groups: list[dict[str, Any]] | None = None,
    autoscaler: str = "cluster-autoscaler",
) -> dict[str, Any]:
    return base_config(
        cluster={"mode": "create", "sharedStorageClass": "efs"},
        capacity={"autoscaler": autoscaler},
        gpuNodeGroups=groups if groups is not None else [P5, L40S],
        teams=[{"name": "research", "quota": {"gpus": 32, "overcommit": True}}],
        runtimeImage={"build": {}},
        workloads=list(workloads),
    )


@pytest.fixture(scope="module")
def efa_run() -> Run:
    """Managed node groups resized by the Cluster Autoscaler."""
    return run(stack(DIST, NCCL))


@pytest.fixture(scope="module")
def karpenter_run() -> Run:
    """The same pools as Karpenter NodePools."""
    return run(stack(DIST, NCCL, autoscaler="karpenter"))


# -- the instance table and the pure helpers ---------------------------------------


@pytest.mark.parametrize(
    ("instance_type", "cards", "gbps"),
    [
        ("p4d.24xlarge", 4, 400),
        ("p4de.24xlarge", 4, 400),
        ("p5.48xlarge", 32, 3200),
        ("p5e.48xlarge", 32, 3200),
        ("p5en.48xlarge", 16, 3200),
    ],
)
def test_interface_counts_per_instance_type(instance_type: str, cards: int, gbps: int) -> None:
    fabric = instances.efa_fabric(instance_type)
    assert fabric is not None
    assert (fabric.network_cards, fabric.fabric_gbps) == (cards, gbps)
    nics = efa.network_interfaces(fabric, ["sg-1"])
    assert len(nics) == cards
    # Card 0: EFA with ENA at device 0 (the node's IP traffic); the others: EFA-only.
    assert nics[0]["interface_type"] == "efa" and nics[0]["device_index"] == 0
    assert all(n["interface_type"] == "efa-only" and n["device_index"] == 1 for n in nics[1:])
    assert [n["network_card_index"] for n in nics] == list(range(cards))
    # Karpenter's layout: ENA primary plus one EFA-only per card: as many EFA devices.
    kar = efa.karpenter_network_interfaces(fabric)
    assert sum(n["interfaceType"] == "efa-only" for n in kar) == cards
    assert kar[0] == {"networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "interface"}


def test_types_without_efa() -> None:
    for name in ("g6.xlarge", "g6e.12xlarge", "g5.48xlarge", "p5.4xlarge"):
        info = instances.lookup(name)
        assert info is not None and info.efa is None and not info.efa_capable


def test_launch_template_args_with_reservation_and_capacity_block() -> None:
    fabric = instances.EFA_FABRICS["p4d.24xlarge"]
    settings = EfaSettings(capacity_reservation_id="cr-0123abcd", capacity_block=True)
    args = efa.efa_launch_template_args(fabric, settings, ["sg-a", "sg-b"], "pg-name")
    assert args["placement"] == {"group_name": "pg-name"}
    assert args["capacity_reservation_specification"] == {
        "capacity_reservation_target": {"capacity_reservation_id": "cr-0123abcd"}
    }
    assert args["instance_market_options"] == {"market_type": "capacity-block"}
    assert all(n["security_groups"] == ["sg-a", "sg-b"] for n in args["network_interfaces"])
    fields = efa.karpenter_node_class_fields(fabric, settings, "pg-name")
    assert fields["placementGroupSelector"] == {"name": "pg-name"}
    assert fields["capacityReservationSelectorTerms"] == [{"id": "cr-0123abcd"}]


def test_pod_env_and_resources() -> None:
    pod = EfaPod.for_fabric(instances.EFA_FABRICS["p5.48xlarge"])
    assert pod.extended_resources() == {"vpc.amazonaws.com/efa": "32", "hugepages-2Mi": "5120Mi"}
    assert pod.env() == {
        "FI_PROVIDER": "efa",
        "FI_EFA_FORK_SAFE": "1",
        "FI_EFA_USE_DEVICE_RDMA": "1",
        "NCCL_SOCKET_IFNAME": "^lo,docker,veth",
    }
    assert pod.annotations() == {"karpenter.sh/do-not-disrupt": "true"}


# -- the node group -----------------------------------------------------------------


def test_efa_node_group_has_one_launch_template_with_imdsv2_and_interfaces(
    efa_run: Run,
) -> None:
    ng = efa_run.one("aws:eks/nodeGroup:NodeGroup", "mlplatform-gpu-h100-nodes")
    assert len(ng.inputs["subnetIds"]) == 1
    assert "diskSize" not in ng.inputs  # the launch template sizes the volume
    assert ng.inputs["labels"]["mlplatform.io/efa"] == "true"
    # ONE launch template for the group: infra/nodes.py's, with the EFA arguments merged in.
    templates = [
        r
        for r in efa_run.by_type("aws:ec2/launchTemplate:LaunchTemplate")
        if efa_run.parent_name(r) == "mlplatform-gpu-h100"
    ]
    assert [t.name for t in templates] == ["mlplatform-gpu-h100-lt"]
    (lt,) = templates
    assert ng.inputs["launchTemplate"]["id"].startswith("lt-")
    assert ng.inputs["launchTemplate"]["version"] == "1"
    assert lt.inputs["metadataOptions"]["httpTokens"] == "required"
    assert lt.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert lt.inputs["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 500
    assert lt.inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"
    nics = lt.inputs["networkInterfaces"]
    assert len(nics) == 32
    assert nics[0]["interfaceType"] == "efa" and nics[0]["deviceIndex"] == 0
    assert {n["interfaceType"] for n in nics[1:]} == {"efa-only"}
    assert [n["networkCardIndex"] for n in nics] == list(range(32))
    sg = efa_run.one("aws:ec2/securityGroup:SecurityGroup", "mlplatform-gpu-h100-efa-sg")
    assert sg.inputs["ingress"][0]["self"] is True and sg.inputs["ingress"][0]["protocol"] == "-1"
    assert sg.inputs["egress"][0]["self"] is True and sg.inputs["egress"][0]["protocol"] == "-1"
    # Each interface keeps the cluster security group and joins the EFA one.
    assert all(len(n["securityGroups"]) == 2 for n in nics)
    assert "vpcSecurityGroupIds" not in lt.inputs
    pg = efa_run.one("aws:ec2/placementGroup:PlacementGroup", "mlplatform-gpu-h100-efa-placement")
    assert pg.inputs["strategy"] == "cluster"
    assert lt.inputs["placement"] == {"groupName": pg.inputs["name"]}


def test_launch_template_refuses_to_override_what_every_node_needs() -> None:
    import pulumi

    from infra import nodes

    with pytest.raises(ValueError, match="metadata_options"):
        nodes.launch_template(
            "x",
            disk_size_gib=100,
            extra={"metadata_options": {"http_tokens": "optional"}},
            parent=pulumi.ComponentResource("t:t:T", "x"),
        )


def test_non_efa_group_is_unchanged(efa_run: Run) -> None:
    ng = efa_run.one("aws:eks/nodeGroup:NodeGroup", "mlplatform-gpu-l40s-nodes")
    lt = efa_run.one("aws:ec2/launchTemplate:LaunchTemplate", "mlplatform-gpu-l40s-lt")
    assert "networkInterfaces" not in lt.inputs and "placement" not in lt.inputs
    assert "mlplatform.io/efa" not in ng.inputs["labels"]
    assert len(ng.inputs["subnetIds"]) == 3


def test_autoscaler_knows_the_efa_resources(efa_run: Run) -> None:
    tags = {
        t.inputs["tag"]["key"]: t.inputs["tag"]["value"]
        for t in efa_run.by_type("aws:autoscaling/tag:Tag")
        if efa_run.parent_name(t) == "mlplatform-gpu-h100"
    }
    ca = "k8s.io/cluster-autoscaler/node-template"
    assert tags[f"{ca}/resources/vpc.amazonaws.com/efa"] == "32"
    assert tags[f"{ca}/resources/hugepages-2Mi"] == "5120Mi"
    assert tags[f"{ca}/label/mlplatform.io/efa"] == "true"


def test_efa_device_plugin_daemonset(efa_run: Run) -> None:
    ds = efa_run.manifest("DaemonSet", "aws-efa-k8s-device-plugin", "kube-system")
    spec = pod_spec(ds)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "mlplatform.io/efa", "operator": "In", "values": ["true"]}]}
    ]
    (c,) = spec["containers"]
    assert c["image"].endswith("/eks/aws-efa-k8s-device-plugin:v0.5.20")
    assert ".dkr.ecr.us-west-2.amazonaws.com" in c["image"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc and not spec.get("hostNetwork")
    assert {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v} == {
        "/var/lib/kubelet/device-plugins",
        "/dev/infiniband",
    }
    assert "mlplatform.io/hostpath-infiniband" in ds["spec"]["template"]["metadata"]["annotations"]


def test_nvidia_plugin_never_takes_efa_devices(efa_run: Run) -> None:
    cm = efa_run.manifest("ConfigMap", "nvidia-device-plugin-config", "kube-system")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["flags"]["mofedEnabled"] is False


def test_no_efa_plugin_without_efa_groups() -> None:
    r = run(stack(groups=[L40S]))
    assert not [m for m in r.manifests() if m["metadata"]["name"] == "aws-efa-k8s-device-plugin"]
    assert not r.by_type("aws:ec2/placementGroup:PlacementGroup")
    assert not any("networkInterfaces" in t.inputs for t in r.by_type(LT))


# -- Karpenter ------------------------------------------------------------------------

LT = "aws:ec2/launchTemplate:LaunchTemplate"


def test_karpenter_node_class_has_the_fabric(karpenter_run: Run) -> None:
    spec = karpenter_run.manifest("EC2NodeClass", "h100")["spec"]
    nics = spec["networkInterfaces"]
    # Karpenter's CRD: the primary (card 0, device 0) is an ENA `interface`; one
    # `efa-only` per network card (card 0 at device 1): 32 EFA devices on p5.
    assert nics[0] == {"networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "interface"}
    assert {n["interfaceType"] for n in nics} == {"interface", "efa-only"}
    efa_only = [n for n in nics if n["interfaceType"] == "efa-only"]
    assert sorted(n["networkCardIndex"] for n in efa_only) == list(range(32))
    # The CRD's CEL rules (the npm models do not check them): unique card/device
    # pairs and at most one efa-only interface per card.
    pairs = [(n["networkCardIndex"], n["deviceIndex"]) for n in nics]
    assert len(pairs) == len(set(pairs))
    cards = [n["networkCardIndex"] for n in efa_only]
    assert len(cards) == len(set(cards))
    pg = karpenter_run.one(
        "aws:ec2/placementGroup:PlacementGroup", "mlplatform-karpenter-efa-h100-placement"
    )
    assert pg.inputs["strategy"] == "cluster"
    assert spec["placementGroupSelector"] == {"name": pg.inputs["name"]}
    sg = karpenter_run.one(
        "aws:ec2/securityGroup:SecurityGroup", "mlplatform-karpenter-efa-h100-sg"
    )
    assert sg.inputs["ingress"][0]["self"] is True
    terms = spec["securityGroupSelectorTerms"]
    assert {"tags": {"karpenter.sh/discovery": "mlplatform-test"}} in terms
    assert [t for t in terms if "id" in t] == [{"id": t["id"]} for t in terms if "id" in t]
    assert len([t for t in terms if str(t.get("id", "")).startswith("sg-")]) == 1
    # One subnet (the first private subnet: efa.subnetIndex 0) and IMDSv2 as everywhere.
    (subnet,) = spec["subnetSelectorTerms"]
    assert subnet["id"].startswith("subnet-")
    assert spec["metadataOptions"]["httpTokens"] == "required"
    assert spec["metadataOptions"]["httpPutResponseHopLimit"] == 1


def test_karpenter_node_pool_is_one_zone_and_labelled_for_the_plugin(karpenter_run: Run) -> None:
    pool = karpenter_run.manifest("NodePool", "h100")["spec"]["template"]
    reqs = {r["key"]: r["values"] for r in pool["spec"]["requirements"]}
    subnets = [
        r
        for r in karpenter_run.by_type("aws:ec2/subnet:Subnet")
        if r.inputs.get("tags", {}).get("kubernetes.io/role/internal-elb")
    ]
    first_zone = sorted(subnets, key=lambda r: r.name)[0].inputs["availabilityZone"]
    assert reqs["topology.kubernetes.io/zone"] == [first_zone]
    assert pool["metadata"]["labels"]["mlplatform.io/efa"] == "true"
    # The EFA device plugin selects exactly that label.
    ds = karpenter_run.manifest("DaemonSet", "aws-efa-k8s-device-plugin", "kube-system")
    affinity = pod_spec(ds)["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "mlplatform.io/efa", "operator": "In", "values": ["true"]}
    ]
    # The plain pool is untouched.
    l40s = karpenter_run.manifest("NodePool", "l40s")["spec"]["template"]
    assert "topology.kubernetes.io/zone" not in {r["key"] for r in l40s["spec"]["requirements"]}
    assert "networkInterfaces" not in karpenter_run.manifest("EC2NodeClass", "l40s")["spec"]


def test_karpenter_knows_the_huge_pages(karpenter_run: Run) -> None:
    overlay = karpenter_run.manifest("NodeOverlay", "h100-efa-hugepages")
    assert overlay["apiVersion"] == "karpenter.sh/v1alpha1"
    assert overlay["spec"]["capacity"] == {"hugepages-2Mi": "5120Mi"}
    assert overlay["spec"]["requirements"] == [
        {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["h100"]}
    ]
    release = karpenter_run.one("kubernetes:helm.sh/v3:Release", "mlplatform-karpenter-controller")
    assert release.inputs["values"]["settings"]["featureGates"] == {"nodeOverlay": True}
    # No managed node group, no launch template of ours for the EFA pool.
    assert not [r for r in karpenter_run.by_type("aws:eks/nodeGroup:NodeGroup") if "h100" in r.name]


def test_karpenter_controller_may_use_placement_groups() -> None:
    from infra import karpenter

    policies = karpenter.controller_policies(
        partition="aws",
        region="us-west-2",
        account="123456789012",
        cluster="c",
        node_role_arn="arn:aws:iam::123456789012:role/n",
        queue_arn="arn:aws:sqs:us-west-2:123456789012:q",
    )
    launch = policies["node-lifecycle"]["Statement"][0]
    assert "arn:aws:ec2:us-west-2:*:placement-group/*" in launch["Resource"]
    assert "arn:aws:ec2:us-west-2:*:security-group/*" in launch["Resource"]
    reads = policies["resource-discovery"]["Statement"][0]["Action"]
    assert {"ec2:DescribePlacementGroups", "ec2:DescribeCapacityReservations"} <= set(reads)


def test_karpenter_reservation_allows_reserved_capacity() -> None:
    r = run(
        stack(
            groups=[{**P5, "efa": {"capacityReservationId": "cr-0123abcd"}}],
            autoscaler="karpenter",
        )
    )
    spec = r.manifest("EC2NodeClass", "h100")["spec"]
    assert spec["capacityReservationSelectorTerms"] == [{"id": "cr-0123abcd"}]
    reqs = {
        x["key"]: x["values"]
        for x in r.manifest("NodePool", "h100")["spec"]["template"]["spec"]["requirements"]
    }
    assert reqs["karpenter.sh/capacity-type"] == ["reserved", "on-demand"]


def test_karpenter_without_efa_pools_leaves_the_feature_gate_off() -> None:
    r = run(stack(groups=[L40S], autoscaler="karpenter"))
    release = r.one("kubernetes:helm.sh/v3:Release", "mlplatform-karpenter-controller")
    assert "featureGates" not in release.inputs["values"]["settings"]
    assert not [m for m in r.manifests() if m["kind"] == "NodeOverlay"]


# -- pods ---------------------------------------------------------------------------


def test_distributed_pods_request_efa_and_get_the_environment(efa_run: Run) -> None:
    job = efa_run.manifest("Job", "pretrain", "research")
    spec = pod_spec(job)
    (c,) = spec["containers"]
    for section in ("requests", "limits"):
        assert c["resources"][section]["vpc.amazonaws.com/efa"] == "32"
        assert c["resources"][section]["hugepages-2Mi"] == "5120Mi"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FI_PROVIDER"] == "efa"
    assert env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert env["FI_EFA_FORK_SAFE"] == "1"
    assert env["NCCL_SOCKET_IFNAME"] == "^lo,docker,veth"
    assert job["spec"]["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == (
        "true"
    )
    # One zone, and Pod Security `restricted` still holds: no host network, no privilege.
    affinity = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity[0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert not spec.get("hostNetwork")
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["runAsNonRoot"] is True
    assert not any("hostPath" in v for v in spec["volumes"])


def test_workload_env_wins_over_efa_defaults() -> None:
    r = run(stack({**DIST, "env": {"NCCL_SOCKET_IFNAME": "eth0"}}))
    (c,) = pod_spec(r.manifest("Job", "pretrain", "research"))["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NCCL_SOCKET_IFNAME"] == "eth0" and env["FI_PROVIDER"] == "efa"


def test_efa_off_leaves_pods_as_before() -> None:
    r = run(stack({**DIST, "efa": False}))
    (c,) = pod_spec(r.manifest("Job", "pretrain", "research"))["containers"]
    assert "vpc.amazonaws.com/efa" not in c["resources"]["limits"]
    assert not any(e["name"].startswith("FI_") for e in c["env"])


def test_unpinned_workload_on_mixed_pools_is_not_on_efa() -> None:
    """Without `accelerators` it may land on the L40S pool: no EFA requests."""
    unpinned = {k: v for k, v in DIST.items() if k != "accelerators"} | {"gpus": 4}
    r = run(stack(unpinned))
    (c,) = pod_spec(r.manifest("Job", "pretrain", "research"))["containers"]
    assert "vpc.amazonaws.com/efa" not in c["resources"]["limits"]


# -- the smoke test -------------------------------------------------------------------


def test_nccl_test_manifest(efa_run: Run) -> None:
    job = efa_run.manifest("Job", "fabric-check", "research")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 2
    assert job["spec"]["backoffLimit"] == 0
    spec = pod_spec(job)
    assert spec["subdomain"] == "fabric-check"
    (c,) = spec["containers"]
    assert c["command"][0] == "torchrun"
    assert "--nnodes=2" in c["command"] and "--nproc-per-node=8" in c["command"]
    assert c["command"][-1] == "mlruntime.nccl_test"
    # Threshold: p5's 2-node reference (437 GB/s) x 0.8.
    assert "--min-busbw=349.6" in c["args"] and "--max-bytes=2G" in c["args"]
    assert c["resources"]["limits"]["vpc.amazonaws.com/efa"] == "32"
    svc = efa_run.manifest("Service", "fabric-check", "research")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert efa_run.manifest("NetworkPolicy", "fabric-check-peers", "research")


def test_nccl_test_explicit_threshold_and_no_efa() -> None:
    check = {**NCCL, "minBusBandwidth": 40, "efa": False}
    r = run(stack(check))
    (c,) = pod_spec(r.manifest("Job", "fabric-check", "research"))["containers"]
    assert "--min-busbw=40" in c["args"]
    assert "vpc.amazonaws.com/efa" not in c["resources"]["limits"]


def test_plan_lists_the_fabric(tmp_path: Path) -> None:
    from tools.plan import render
    from tools.preview import build_preview

    text = render(build_preview("test", stack(DIST, NCCL)))
    assert (
        "| h100 | p5.48xlarge | 32 | 3,200 Gbps | yes | launch template (`efa` + `efa-only` "
        "interfaces) | private subnet 0 | placement group |"
    ) in text
    assert "| research/pretrain | distributed | 2 | yes (32 interfaces" in text
    assert "| research/fabric-check | nccl-test | 2 | yes" in text and "349.6 GB/s" in text
    karpenter = render(build_preview("test", stack(DIST, NCCL, autoscaler="karpenter")))
    assert (
        "| h100 | p5.48xlarge | 32 | 3,200 Gbps | yes | EC2NodeClass `networkInterfaces` "
        "(ENA + 32 `efa-only`), NodeOverlay `hugepages-2Mi: 5120Mi` | private subnet 0 |"
    ) in karpenter


# -- configuration errors -------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "efa-on-a-type-without-efa",
        {"gpuNodeGroups": [{**L40S, "efa": {"enabled": True}}]},
        "mlplatform:gpuNodeGroups[0].efa.enabled",
        "has no EFA",
    ),
    (
        "efa-group-in-two-subnets",
        {"gpuNodeGroups": [{**P5, "subnetIds": ["subnet-a", "subnet-b"]}]},
        "mlplatform:gpuNodeGroups[0].subnetIds",
        "one availability zone",
    ),
    (
        "efa-group-of-two-layouts",
        {
            "gpuNodeGroups": [
                {**P5, "instanceTypes": ["p5e.48xlarge", "p5en.48xlarge"]},
            ]
        },
        "mlplatform:gpuNodeGroups[0].instanceTypes",
        "one network-card layout",
    ),
    (
        "capacity-block-without-reservation",
        {"gpuNodeGroups": [{**P5, "efa": {"capacityBlock": True}}]},
        "mlplatform:gpuNodeGroups[0].efa.capacityBlock",
        "needs efa.capacityReservationId",
    ),
    (
        "bad-reservation-id",
        {"gpuNodeGroups": [{**P5, "efa": {"capacityReservationId": "res-1"}}]},
        "mlplatform:gpuNodeGroups[0].efa.capacityReservationId",
        "cr-",
    ),
    (
        "efa-subnet-index-past-the-zones",
        {"gpuNodeGroups": [{**P5, "efa": {"subnetIndex": 3}}]},
        "mlplatform:gpuNodeGroups[0].efa.subnetIndex",
        "3 private subnets",
    ),
    (
        "efa-requests-on-a-non-efa-pool",
        {"workloads": [{**DIST, "accelerators": ["nvidia-l40s"], "gpus": 4, "efa": True}]},
        "mlplatform:workloads[0].efa",
        "EFA requests on pools without EFA (l40s)",
    ),
    (
        "nccl-test-on-one-node",
        {"workloads": [{**NCCL, "nodes": 1}]},
        "mlplatform:workloads[0].nodes",
        "greater than or equal to 2",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "key_path", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_efa_config_exits_2_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    key_path: str,
    words: str,
) -> None:
    config = stack()
    for key, value in overrides.items():
        config[f"mlplatform:{key}"] = value
    assert_config_error(tmp_path, capsys, config, key_path, words)


def test_smoke_test_is_in_the_outputs_contract(efa_run: Run) -> None:
    from mlplatform.outputs import StackOutputs

    outputs = StackOutputs.model_validate(efa_run.outputs)
    assert outputs.workloads["research/fabric-check"].kind == "nccl-test"


def test_queued_smoke_test_is_one_suspended_kueue_workload() -> None:
    """With queueing on, the fabric smoke test waits in its team's queue like a
    distributed job: queue label, created suspended, all nodes admitted together."""
    config = stack(DIST, NCCL, autoscaler="karpenter")
    config["mlplatform:teams"] = [
        {"name": "research", "quota": {"gpus": 32, "cpu": "256", "memory": "2Ti"}}
    ]
    config["mlplatform:queueing"] = {
        "enabled": True,
        "teams": {"research": {"h100": {"gpus": 32}}},
    }
    p = preview(config)
    assert p.exit_code == 0, p.findings
    for job in ("pretrain", "fabric-check"):
        manifest = p.run.manifest("Job", job, "research")
        assert manifest["spec"]["suspend"] is True
        assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "default"
        assert manifest["spec"]["completions"] == manifest["spec"]["parallelism"] == 2
