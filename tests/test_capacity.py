"""GPU capacity: Karpenter (NodePools, EC2NodeClasses, controller, IAM, interruption
queue), the Cluster Autoscaler (Deployment, RBAC, IRSA), IMDSv2 on every node,
the vpc-cni add-on with network policy enforcement, bad capacity settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra import cluster_autoscaler, karpenter
from infra.config_types import ConfigError
from mlplatform.loading import load_settings
from tests.helpers import base_config, preview_cli, run
from tools.mocks import PlatformMocks, RecordingMonitor
from tools.offline import Run, run_program

GROUPS = [
    {
        "name": "l40s",
        "instanceTypes": ["g6e.2xlarge", "g6e.4xlarge"],
        "maxSize": 4,
        "role": "serving",
    },
    {"name": "a10g-spot", "instanceTypes": ["g5.12xlarge"], "capacityType": "SPOT", "maxSize": 2},
]


@pytest.fixture(scope="module")
def karpenter_run() -> Run:
    return run(
        base_config(
            gpuNodeGroups=GROUPS,
            teams=[{"name": "vision", "quota": {"gpus": 12}}],
            capacity={"autoscaler": "karpenter"},
        )
    )


@pytest.fixture(scope="module")
def ca_run() -> Run:
    # `role` is Karpenter's: the Cluster Autoscaler stack leaves it out.
    groups = [{k: v for k, v in g.items() if k != "role"} for g in GROUPS]
    return run(
        base_config(
            gpuNodeGroups=groups,
            teams=[{"name": "vision", "quota": {"gpus": 12}}],
            capacity={"autoscaler": "cluster-autoscaler"},
        )
    )


# -- Karpenter -----------------------------------------------------------------


def test_karpenter_is_the_default_in_create_mode() -> None:
    s = load_settings(base_config(), "t")
    assert s.autoscaler == "karpenter"
    existing = base_config(cluster={"mode": "existing", "name": "shared", "region": "us-west-2"})
    assert load_settings(existing, "t").autoscaler == "none"


def test_karpenter_replaces_managed_gpu_node_groups(karpenter_run: Run) -> None:
    groups = [r.name for r in karpenter_run.by_type("aws:eks/nodeGroup:NodeGroup")]
    assert groups == ["mlplatform-cluster-system-nodes"]
    assert not karpenter_run.by_type("aws:autoscaling/tag:Tag")
    pools = karpenter_run.outputs["gpuNodeGroups"]
    assert [(p["name"], p["nodeGroupName"], p["maxGpus"]) for p in pools] == [
        ("l40s", "l40s", 4),
        ("a10g-spot", "a10g-spot", 8),
    ]


def test_node_pool_mirrors_scheduling(karpenter_run: Run) -> None:
    spot = karpenter_run.manifest("NodePool", "a10g-spot")["spec"]
    tmpl = spot["template"]["spec"]
    assert tmpl["taints"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "value": "true"},
        {"effect": "NoSchedule", "key": "mlplatform.io/capacity-type", "value": "spot"},
    ]
    reqs = {r["key"]: r["values"] for r in tmpl["requirements"]}
    assert reqs["node.kubernetes.io/instance-type"] == ["g5.12xlarge"]
    assert reqs["karpenter.sh/capacity-type"] == ["spot"]
    assert spot["limits"] == {"nvidia.com/gpu": "8"}  # maxSize 2 x 4 A10G
    assert spot["template"]["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert spot["template"]["metadata"]["labels"]["k8s.amazonaws.com/accelerator"] == "nvidia-a10g"
    assert tmpl["nodeClassRef"] == {
        "group": "karpenter.k8s.aws",
        "kind": "EC2NodeClass",
        "name": "a10g-spot",
    }
    # Training pool: only empty nodes go.
    assert spot["disruption"]["consolidationPolicy"] == "WhenEmpty"
    serving = karpenter_run.manifest("NodePool", "l40s")["spec"]
    assert serving["disruption"] == {
        "budgets": [{"nodes": "10%"}],
        "consolidateAfter": "10m",
        "consolidationPolicy": "WhenEmptyOrUnderutilized",
    }
    assert serving["template"]["spec"]["taints"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "value": "true"}
    ]
    assert serving["limits"] == {"nvidia.com/gpu": "4"}


def test_node_class_locks_metadata_and_encrypts_root(karpenter_run: Run) -> None:
    spec = karpenter_run.manifest("EC2NodeClass", "l40s")["spec"]
    assert spec["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
    assert spec["metadataOptions"] == {
        "httpEndpoint": "enabled",
        "httpProtocolIPv6": "disabled",
        "httpPutResponseHopLimit": 1,
        "httpTokens": "required",
    }
    assert spec["blockDeviceMappings"] == [
        {
            "deviceName": "/dev/xvda",
            "ebs": {
                "deleteOnTermination": True,
                "encrypted": True,
                "volumeSize": "200Gi",
                "volumeType": "gp3",
            },
        }
    ]
    tag = {"tags": {"karpenter.sh/discovery": "mlplatform-test"}}
    assert spec["subnetSelectorTerms"] == [tag]
    assert spec["securityGroupSelectorTerms"] == [tag]
    role = karpenter_run.one("aws:iam/role:Role", "mlplatform-karpenter-node-role")
    assert spec["role"] == role.inputs.get("name", spec["role"])


def test_discovery_tags_on_subnets_and_cluster_security_group(karpenter_run: Run) -> None:
    private = [r for r in karpenter_run.by_type("aws:ec2/subnet:Subnet") if "private" in r.name]
    assert private and all(
        r.inputs["tags"]["karpenter.sh/discovery"] == "mlplatform-test" for r in private
    )
    tag = karpenter_run.one("aws:ec2/tag:Tag", "mlplatform-cluster-cluster-sg-discovery")
    assert tag.inputs["key"] == "karpenter.sh/discovery"
    assert tag.inputs["resourceId"].startswith("sg-")


def test_controller_release_and_crds_first(karpenter_run: Run) -> None:
    releases = {r.name: r for r in karpenter_run.by_type("kubernetes:helm.sh/v3:Release")}
    crds = releases["mlplatform-karpenter-crds"]
    ctl = releases["mlplatform-karpenter-controller"]
    assert crds.inputs["chart"] == "oci://public.ecr.aws/karpenter/karpenter-crd"
    assert ctl.inputs["chart"] == "oci://public.ecr.aws/karpenter/karpenter"
    assert crds.inputs["version"] == ctl.inputs["version"] == karpenter.VERSION
    assert ctl.inputs["skipCrds"] is True
    assert "mlplatform-karpenter-crds" in ctl.options["dependsOn"]
    values = ctl.inputs["values"]
    assert values["settings"]["clusterName"] == "mlplatform-test"
    queue = karpenter_run.one("aws:sqs/queue:Queue", "mlplatform-karpenter-interruption")
    assert values["settings"]["interruptionQueue"] == queue.inputs.get("name") or values[
        "settings"
    ]["interruptionQueue"].startswith("mlplatform-karpenter-interruption")
    assert values["nodeSelector"]["mlplatform.io/node-role"] == "system"
    assert values["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )
    assert values["controller"]["image"]["digest"] == karpenter.CONTROLLER_IMAGE_DIGEST
    # The pools wait for the CRDs and the controller.
    for kind in ("nodepool", "nodeclass"):
        cr = next(r for r in karpenter_run.records if r.name == f"mlplatform-karpenter-{kind}-l40s")
        assert {"mlplatform-karpenter-crds", "mlplatform-karpenter-controller"} <= set(
            cr.options["dependsOn"]
        )


def test_interruption_queue_rules_and_iam(karpenter_run: Run) -> None:
    queue = karpenter_run.one("aws:sqs/queue:Queue", "mlplatform-karpenter-interruption")
    assert queue.inputs["sqsManagedSseEnabled"] is True
    rules = karpenter_run.by_type("aws:cloudwatch/eventRule:EventRule")
    patterns = {json.loads(r.inputs["eventPattern"])["detail-type"][0] for r in rules}
    assert patterns == {
        "AWS Health Event",
        "EC2 Spot Instance Interruption Warning",
        "EC2 Instance Rebalance Recommendation",
        "EC2 Instance State-change Notification",
        "EC2 Capacity Reservation Instance Interruption Warning",
    }
    assert len(karpenter_run.by_type("aws:cloudwatch/eventTarget:EventTarget")) == len(rules)
    entry = karpenter_run.one("aws:eks/accessEntry:AccessEntry", "mlplatform-karpenter-node-access")
    assert entry.inputs["type"] == "EC2_LINUX"
    trust = json.loads(
        karpenter_run.one("aws:iam/role:Role", "mlplatform-karpenter-controller-role").inputs[
            "assumeRolePolicy"
        ]
    )
    cond = trust["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:karpenter" in cond.values()
    policies = {
        r.name: json.loads(r.inputs["policy"])
        for r in karpenter_run.by_type("aws:iam/policy:Policy")
    }
    assert len(policies) == 5
    lifecycle = policies["mlplatform-karpenter-node-lifecycle"]["Statement"]
    deletion = next(s for s in lifecycle if s["Sid"] == "AllowScopedDeletion")
    assert deletion["Condition"]["StringEquals"] == {
        "aws:ResourceTag/kubernetes.io/cluster/mlplatform-test": "owned"
    }


# -- Cluster Autoscaler --------------------------------------------------------


def test_cluster_autoscaler_deployment(ca_run: Run) -> None:
    d = ca_run.manifest("Deployment", "cluster-autoscaler", "kube-system")
    pod = d["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == cluster_autoscaler.IMAGES["1.35"]
    cmd = c["command"]
    assert (
        "--node-group-auto-discovery=asg:tag=k8s.io/cluster-autoscaler/enabled,"
        "k8s.io/cluster-autoscaler/mlplatform-test"
    ) in cmd
    assert "--expander=least-waste" in cmd
    assert "--balance-similar-node-groups" in cmd
    assert "--skip-nodes-with-local-storage=false" in cmd
    assert pod["nodeSelector"] == {"mlplatform.io/node-role": "system"}
    assert pod["serviceAccountName"] == "cluster-autoscaler"
    assert pod["priorityClassName"] == "system-cluster-critical"
    sa = ca_run.manifest("ServiceAccount", "cluster-autoscaler", "kube-system")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    policy = json.loads(
        ca_run.one("aws:iam/rolePolicy:RolePolicy", "mlplatform-cluster-autoscaler-policy").inputs[
            "policy"
        ]
    )
    scale = next(s for s in policy["Statement"] if s["Sid"] == "ScaleOwnGroups")
    assert scale["Condition"]["StringEquals"] == {
        "aws:ResourceTag/k8s.io/cluster-autoscaler/mlplatform-test": "owned"
    }
    # The GPU groups stay managed node groups with their discovery tags.
    assert len(ca_run.by_type("aws:eks/nodeGroup:NodeGroup")) == 3


def test_autoscaler_image_follows_cluster_minor() -> None:
    r = run(
        base_config(
            cluster={
                "mode": "create",
                "kubernetesVersion": "1.34",
                "endpointPublicAccessCidrs": ["203.0.113.0/24"],
            },
            capacity={"autoscaler": "cluster-autoscaler"},
        )
    )
    d = r.manifest("Deployment", "cluster-autoscaler", "kube-system")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v1.34.5")


# -- Nodes and network ---------------------------------------------------------


@pytest.mark.parametrize("which", ["karpenter", "cluster-autoscaler"])
def test_every_node_requires_imdsv2_hop_limit_1(
    which: str, karpenter_run: Run, ca_run: Run
) -> None:
    r = karpenter_run if which == "karpenter" else ca_run
    templates = {t.urn: t for t in r.by_type("aws:ec2/launchTemplate:LaunchTemplate")}
    for lt in templates.values():
        assert lt.inputs["metadataOptions"]["httpTokens"] == "required"
        assert lt.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
        for device in lt.inputs["blockDeviceMappings"]:
            assert device["ebs"]["encrypted"] == "true"
            assert device["ebs"]["volumeType"] == "gp3"
    node_groups = r.by_type("aws:eks/nodeGroup:NodeGroup")
    assert node_groups
    for ng in node_groups:
        assert ng.inputs["launchTemplate"]["id"].startswith("lt-")
        assert "diskSize" not in ng.inputs
    for m in r.manifests():
        if m["kind"] == "EC2NodeClass":
            assert m["spec"]["metadataOptions"]["httpPutResponseHopLimit"] == 1


def test_vpc_cni_enforces_network_policies_before_workloads(karpenter_run: Run) -> None:
    addon = karpenter_run.one("aws:eks/addon:Addon", "mlplatform-cluster-vpc-cni")
    assert json.loads(addon.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    assert addon.inputs["serviceAccountRoleArn"].startswith("arn:aws:iam::")
    provider = karpenter_run.one("pulumi:providers:kubernetes", "mlplatform-cluster-k8s")
    assert "mlplatform-cluster-vpc-cni" in provider.options["dependsOn"]
    system = karpenter_run.one("aws:eks/nodeGroup:NodeGroup", "mlplatform-cluster-system-nodes")
    assert "mlplatform-cluster-vpc-cni" in system.options["dependsOn"]


# -- Bad input -----------------------------------------------------------------


def _problems(config: dict[str, Any]) -> str:
    monitor = RecordingMonitor(PlatformMocks())
    with pytest.raises(ConfigError) as info:
        run_program("bad", config, monitor=monitor)
    assert monitor.records == []  # nothing registered
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (
            {"gpuNodeGroups": [{"name": "g", "instanceTypes": ["m7i.xlarge"], "maxSize": 2}]},
            "mlplatform:gpuNodeGroups[0].instanceTypes[0]",
        ),
        (
            {
                "gpuNodeGroups": [
                    {
                        "name": "g",
                        "instanceTypes": ["g5.xlarge"],
                        "maxSize": 2,
                        "labels": {"karpenter.sh/capacity-type": "spot"},
                    }
                ]
            },
            'mlplatform:gpuNodeGroups[0].labels["karpenter.sh/capacity-type"]',
        ),
        (
            {
                "gpuNodeGroups": [
                    {"name": "g", "instanceTypes": ["g5.xlarge"], "minSize": 1, "maxSize": 2}
                ]
            },
            "mlplatform:gpuNodeGroups[0].minSize",
        ),
        (
            {
                "gpuNodeGroups": [
                    {"name": "g", "instanceTypes": ["g5.xlarge"], "desiredSize": 0, "maxSize": 2}
                ]
            },
            "mlplatform:gpuNodeGroups[0].desiredSize",
        ),
        (
            {
                "cluster": {"mode": "existing", "name": "shared"},
                "capacity": {"autoscaler": "karpenter"},
            },
            "mlplatform:capacity.karpenter.discoveryTag",
        ),
        (
            {
                "cluster": {"mode": "existing", "kubeconfigContext": "kind"},
                "gpuNodeGroups": [],
                "capacity": {"autoscaler": "karpenter"},
            },
            "mlplatform:capacity.autoscaler",
        ),
        (
            {
                "capacity": {"autoscaler": "cluster-autoscaler"},
                "gpuNodeGroups": [{"name": "g", "instanceTypes": ["g5.xlarge"], "maxSize": 0}],
            },
            "mlplatform:gpuNodeGroups[0].maxSize",
        ),
        (
            {
                "cluster": {
                    "mode": "create",
                    "kubernetesVersion": "1.37",
                    "endpointPublicAccessCidrs": ["203.0.113.0/24"],
                },
                "capacity": {"autoscaler": "cluster-autoscaler"},
            },
            "mlplatform:capacity.clusterAutoscaler.image",
        ),
        (
            {"capacity": {"autoscaler": "karpenter", "externalAutoscaler": True}},
            "mlplatform:capacity.externalAutoscaler",
        ),
        (
            {"cluster": {"mode": "create", "networkPolicyEnforced": False}},
            "mlplatform:cluster.networkPolicyEnforced",
        ),
        (
            {
                "capacity": {
                    "autoscaler": "cluster-autoscaler",
                    "karpenter": {"amiVersion": "latest"},
                },
            },
            "mlplatform:capacity.karpenter",
        ),
        (
            {
                "capacity": {
                    "autoscaler": "karpenter",
                    "clusterAutoscaler": {"expander": "random"},
                },
            },
            "mlplatform:capacity.clusterAutoscaler",
        ),
        (
            {
                "capacity": {"autoscaler": "cluster-autoscaler"},
                "gpuNodeGroups": [
                    {"name": "g", "instanceTypes": ["g5.xlarge"], "maxSize": 2, "role": "serving"}
                ],
            },
            "mlplatform:gpuNodeGroups[0].role",
        ),
        (
            {
                "capacity": {
                    "autoscaler": "cluster-autoscaler",
                    "clusterAutoscaler": {"expander": "price"},
                }
            },
            "mlplatform:capacity.clusterAutoscaler.expander",
        ),
    ],
)
def test_bad_capacity_settings_name_the_key(overrides: dict[str, Any], key: str) -> None:
    message = _problems(base_config(**overrides))
    assert key in message, message


def test_bad_capacity_settings_exit_2(tmp_path: Path) -> None:
    config = base_config(
        gpuNodeGroups=[{"name": "g", "instanceTypes": ["g5.xlarge"], "minSize": 1, "maxSize": 2}]
    )
    code, out = preview_cli(tmp_path, config)
    assert code == 2
    assert not out.exists()


def test_existing_cluster_declares_its_network_policy_engine(tmp_path: Path) -> None:
    existing = {"mode": "existing", "kubeconfigContext": "kind-ml", "kubernetesVersion": "1.35"}
    teams = [{"name": "vision", "quota": {"gpus": 0}}]
    code, out = preview_cli(tmp_path, base_config(cluster=existing, gpuNodeGroups=[], teams=teams))
    findings = json.loads((out / "policy.json").read_text())
    assert code == 1
    assert [f["policy"] for f in findings if f["level"] == "mandatory"] == [
        "network-policy-enforced"
    ]
    code, out = preview_cli(
        tmp_path,
        base_config(
            cluster={**existing, "networkPolicyEnforced": True}, gpuNodeGroups=[], teams=teams
        ),
    )
    assert code == 0, (out / "policy.json").read_text()


# -- Policy rules on capacity ----------------------------------------------------


def test_autoscaler_rule_sees_karpenter_external_and_double_autoscalers() -> None:
    from policies import rules
    from tests.test_policies import (
        CLUSTER_AUTOSCALER,
        GPU_NODES,
        KARPENTER_RELEASE,
        node_pool,
        quota,
    )

    def found(resources: list[Any], **cfg: Any) -> list[str]:
        return [
            f.message
            for f in rules.evaluate(resources, rules.PolicyConfig(**cfg))
            if f.policy == "gpu-capacity-autoscaled"
        ]

    assert found([node_pool(), KARPENTER_RELEASE]) == []
    assert found([GPU_NODES], external_autoscaler=True) == []
    assert any("both" in m for m in found([KARPENTER_RELEASE, CLUSTER_AUTOSCALER]))
    # NodePool GPU limits are capacity: quotas must fit them.
    over = [
        f.message
        for f in rules.evaluate([node_pool(limit="8"), quota(12)], rules.PolicyConfig())
        if f.policy == "gpu-quota-capacity"
    ]
    assert over and "capacity 8" in over[0]
    assert not [
        f
        for f in rules.evaluate(
            [node_pool(limit="8"), quota(12)], rules.PolicyConfig(gpu_quota_overcommit=1.5)
        )
        if f.policy == "gpu-quota-capacity"
    ]
