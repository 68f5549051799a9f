"""Cluster modes: create (VPC, EKS, OIDC, system nodes, add-ons), existing EKS by
name, and any cluster by kubeconfig context (no AWS at all)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.network import allocate_subnets
from tests.helpers import base_config, run
from tools.offline import Run


@pytest.fixture(scope="module")
def created() -> Run:
    return run(
        base_config(
            cluster={
                "mode": "create",
                "kubernetesVersion": "1.35",
                "endpointPublicAccessCidrs": ["203.0.113.0/24"],
                "adminRoleArns": ["arn:aws:iam::123456789012:role/platform-admins"],
                "vpc": {"availabilityZones": 3, "natGateways": "perAz"},
            }
        )
    )


def test_vpc_has_private_and_public_subnets_per_zone_with_nat(created: Run) -> None:
    subnets = created.by_type("aws:ec2/subnet:Subnet")
    private = [s for s in subnets if "private" in s.name]
    public = [s for s in subnets if "public" in s.name]
    assert len(private) == len(public) == 3
    assert len({s.inputs["availabilityZone"] for s in private}) == 3
    assert all(s.inputs["tags"]["kubernetes.io/role/internal-elb"] == "1" for s in private)
    assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in public)
    assert len(created.by_type("aws:ec2/natGateway:NatGateway")) == 3
    routes = [r for r in created.by_type("aws:ec2/routeTable:RouteTable") if "private" in r.name]
    assert len(routes) == 3
    assert all(r.inputs["routes"][0]["natGatewayId"].startswith("nat-") for r in routes)
    assert len({r.inputs["routes"][0]["natGatewayId"] for r in routes}) == 3


def test_single_nat_gateway_for_dev() -> None:
    r = run(base_config(cluster={"vpc": {"availabilityZones": 2, "natGateways": "single"}}))
    assert len(r.by_type("aws:ec2/natGateway:NatGateway")) == 1
    private_routes = [t for t in r.by_type("aws:ec2/routeTable:RouteTable") if "private" in t.name]
    assert len({t.inputs["routes"][0]["natGatewayId"] for t in private_routes}) == 1


def test_eks_endpoint_is_private_plus_listed_cidrs(created: Run) -> None:
    eks = created.one("aws:eks/cluster:Cluster", "mlplatform-cluster-eks")
    vpc = eks.inputs["vpcConfig"]
    assert eks.inputs["name"] == "mlplatform-test"
    assert eks.inputs["version"] == "1.35"
    assert vpc["endpointPrivateAccess"] is True
    assert vpc["endpointPublicAccess"] is True
    assert vpc["publicAccessCidrs"] == ["203.0.113.0/24"]
    assert len(vpc["subnetIds"]) == 3 and all(s.startswith("subnet-") for s in vpc["subnetIds"])
    assert eks.inputs["accessConfig"] == {
        "authenticationMode": "API",
        "bootstrapClusterCreatorAdminPermissions": True,
    }
    assert eks.inputs["enabledClusterLogTypes"] == ["api", "audit", "authenticator"]
    assert eks.inputs["encryptionConfig"]["resources"] == ["secrets"]
    assert eks.inputs["encryptionConfig"]["provider"]["keyArn"].startswith("arn:aws:kms:")
    assert eks.inputs["deletionProtection"] is True


def test_endpoint_without_cidrs_is_private_only() -> None:
    r = run(base_config(cluster={"mode": "create"}))
    vpc = r.one("aws:eks/cluster:Cluster", "mlplatform-cluster-eks").inputs["vpcConfig"]
    assert vpc["endpointPublicAccess"] is False
    assert vpc.get("publicAccessCidrs") is None  # null: AWS keeps no public CIDRs


def test_oidc_provider_and_ebs_csi_irsa(created: Run) -> None:
    oidc = created.one(
        "aws:iam/openIdConnectProvider:OpenIdConnectProvider", "mlplatform-cluster-oidc"
    )
    assert oidc.inputs["url"].startswith("https://oidc.eks.us-west-2.amazonaws.com/id/")
    assert oidc.inputs["clientIdLists"] == ["sts.amazonaws.com"]
    role = created.one("aws:iam/role:Role", "mlplatform-cluster-ebs-csi-role")
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
    host = oidc.inputs["url"].removeprefix("https://")
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Principal"]["Federated"].endswith(f":oidc-provider/{host}")
    assert trust["Condition"]["StringEquals"][f"{host}:sub"] == (
        "system:serviceaccount:kube-system:ebs-csi-controller-sa"
    )
    addons = {a.inputs["addonName"]: a for a in created.by_type("aws:eks/addon:Addon")}
    assert set(addons) == {
        "aws-ebs-csi-driver",
        "eks-node-monitoring-agent",
        "metrics-server",
        "vpc-cni",
    }
    ebs_arn = addons["aws-ebs-csi-driver"].inputs["serviceAccountRoleArn"]
    assert ebs_arn.startswith("arn:aws:iam::123456789012:role/mlplatform-cluster-ebs-csi-role-")


def test_system_node_group_and_admin_access(created: Run) -> None:
    system = created.one("aws:eks/nodeGroup:NodeGroup", "mlplatform-cluster-system-nodes")
    assert system.inputs["amiType"] == "AL2023_x86_64_STANDARD"
    assert system.inputs["labels"] == {"mlplatform.io/node-role": "system"}
    assert "taints" not in system.inputs
    assert system.inputs["scalingConfig"] == {"minSize": 2, "desiredSize": 2, "maxSize": 4}
    entry = created.one("aws:eks/accessEntry:AccessEntry", "mlplatform-cluster-admin-0")
    assert entry.inputs["principalArn"] == "arn:aws:iam::123456789012:role/platform-admins"
    policy = created.one(
        "aws:eks/accessPolicyAssociation:AccessPolicyAssociation", "mlplatform-cluster-admin-0"
    )
    assert policy.inputs["policyArn"].endswith(
        ":eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
    )
    assert policy.inputs["accessScope"] == {"type": "cluster"}


def test_kubeconfig_is_secret_and_uses_aws_cli_token(created: Run) -> None:
    assert created.outputs["kubeconfig"] == "[secret]"
    assert "kubeconfig" in created.secret_outputs
    provider = created.one("pulumi:providers:kubernetes", "mlplatform-cluster-k8s")
    assert provider.inputs["kubeconfig"] == "[secret]"


def test_kubeconfig_content() -> None:
    from infra.cluster import kubeconfig

    out = kubeconfig("c1", "https://x.eks.amazonaws.com", "Q0E=", "eu-west-1")
    import pulumi
    from pulumi.runtime.sync_await import _sync_await

    assert isinstance(out, pulumi.Output)
    doc = json.loads(_sync_await(out.future()))
    exec_ = doc["users"][0]["user"]["exec"]
    assert exec_["command"] == "aws"
    assert exec_["args"] == [
        "--region",
        "eu-west-1",
        "eks",
        "get-token",
        "--cluster-name",
        "c1",
        "--output",
        "json",
    ]
    assert doc["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0E="


def test_gp3_storage_class_is_default_and_encrypted(created: Run) -> None:
    sc = created.manifest("StorageClass", "gp3")
    assert sc["provisioner"] == "ebs.csi.aws.com"
    assert sc["parameters"] == {"encrypted": "true", "type": "gp3"}
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"


def test_aws_provider_region_and_default_tags(created: Run) -> None:
    provider = created.one("pulumi:providers:aws", "mlplatform-aws")
    assert provider.inputs["region"] == "us-west-2"
    default_tags = provider.inputs["defaultTags"]  # provider config travels as JSON
    tags = (json.loads(default_tags) if isinstance(default_tags, str) else default_tags)["tags"]
    assert tags == {"Project": "mlplatform", "Environment": "test", "ManagedBy": "pulumi"}
    aws_records = [r for r in created.records if r.type.startswith("aws:")]
    assert aws_records and all(r.options.get("provider") == "mlplatform-aws" for r in aws_records)


def test_existing_eks_cluster_by_name() -> None:
    r = run(
        base_config(cluster={"mode": "existing", "name": "shared-gpu", "kubernetesVersion": "1.34"})
    )
    types = {rec.type for rec in r.records}
    assert "aws:eks/cluster:Cluster" not in types
    assert "aws:ec2/vpc:Vpc" not in types
    ng = r.one("aws:eks/nodeGroup:NodeGroup", "mlplatform-gpu-a10g-nodes")
    assert ng.inputs["clusterName"] == "shared-gpu"
    assert ng.inputs["version"] == "1.34"
    # Default subnets: the ones the existing cluster reports.
    assert len(ng.inputs["subnetIds"]) == 3 and all(
        s.startswith("subnet-") for s in ng.inputs["subnetIds"]
    )
    assert r.outputs["oidcProviderArn"].startswith(
        "arn:aws:iam::123456789012:oidc-provider/oidc.eks."
    )
    assert r.outputs["clusterMode"] == "existing"


def test_existing_eks_with_explicit_subnets() -> None:
    r = run(
        base_config(
            cluster={"mode": "existing", "name": "shared", "subnetIds": ["subnet-a", "subnet-b"]}
        )
    )
    ng = r.one("aws:eks/nodeGroup:NodeGroup", "mlplatform-gpu-a10g-nodes")
    assert ng.inputs["subnetIds"] == ["subnet-a", "subnet-b"]


def test_kubeconfig_context_mode_creates_no_aws_resources() -> None:
    config = base_config(
        cluster={
            "mode": "existing",
            "kubeconfigContext": "kind-ml",
            "existingGpuNodes": [{"name": "rtx", "count": 2, "gpusPerNode": 1}],
        },
        gpuNodeGroups=[],
        teams=[{"name": "vision", "quota": {"gpus": 2}}],
    )
    del config["aws:region"]
    r = run(config)
    assert not [
        rec
        for rec in r.records
        if rec.type.startswith("aws:") or rec.type == "pulumi:providers:aws"
    ]
    provider = r.one("pulumi:providers:kubernetes", "mlplatform-cluster-k8s")
    assert provider.inputs["context"] == "kind-ml"
    assert r.outputs["clusterMode"] == "kubeconfig"
    assert r.outputs["gpuCapacity"] == 2
    assert r.outputs["kubeconfig"] is None
    k8s = [rec for rec in r.records if rec.type.startswith("kubernetes:")]
    assert k8s and all(rec.options.get("provider") == "mlplatform-cluster-k8s" for rec in k8s)


@given(
    prefix=st.integers(min_value=16, max_value=20),
    zones=st.integers(min_value=2, max_value=6),
    base=st.sampled_from(["10.0.0.0", "172.16.0.0", "192.168.0.0", "10.128.0.0"]),
)
def test_subnet_allocation_is_disjoint_and_inside_the_vpc(
    prefix: int, zones: int, base: str
) -> None:
    vpc = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    private, public = allocate_subnets(str(vpc), zones)
    nets = [ipaddress.ip_network(n) for n in private + public]
    assert len(private) == len(public) == zones
    assert all(n.subnet_of(vpc) for n in nets)  # type: ignore[arg-type]
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert not a.overlaps(b)
    # Private subnets get an eighth of the VPC each: room for pod IPs.
    assert all(ipaddress.ip_network(p).prefixlen == prefix + 3 for p in private)
    assert all(ipaddress.ip_network(p).prefixlen == prefix + 6 for p in public)
