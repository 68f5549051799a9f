"""Karpenter: GPU nodes launched for pending pods (`capacity.autoscaler: karpenter`).

Karpenter watches for pods the scheduler cannot place, picks the cheapest
instance type one of its NodePools allows that fits them (taints tolerated,
required affinity satisfied, GPUs per pod), and launches it directly with EC2
Fleet: no Auto Scaling group and no node template to keep in sync. A node is
removed when the disruption policy of its pool says so.

What this module makes, per stack:
- the controller, as the pinned Helm release of its OCI chart, on the system
  nodes (never on nodes it manages), with its CRDs from the separate
  `karpenter-crd` chart of the same version, installed first;
- the controller's IAM role through IRSA, scoped to this cluster as the
  upstream CloudFormation template scopes it (see CONTROLLER_POLICIES);
- one node IAM role with an EKS access entry of type `EC2_LINUX`;
- the interruption queue: SQS, fed by EventBridge rules for spot interruption
  warnings, rebalance recommendations, instance state changes, scheduled
  (AWS Health) changes and capacity reservation interruptions, named in the
  chart's `settings.interruptionQueue`, so Karpenter drains a node before AWS
  takes it;
- per GPU group of `mlplatform:gpuNodeGroups`, an EC2NodeClass (AL2023 or
  Bottlerocket alias, subnets and security groups by discovery tag, encrypted
  gp3 root, IMDSv2 with hop limit 1) and a NodePool (instance types, capacity
  type, the group's labels, the GPU and spot taints of infra/scheduling.py, a
  limit of `maxSize` x GPUs per node, consolidation by the group's `role`);
- per EFA group (infra/efa.py), also its `EfaPoolFabric` (cluster placement
  group, self-referencing security group), and in the EC2NodeClass every EFA
  interface (`networkInterfaces`), the placement group
  (`placementGroupSelector`), the fabric's security group beside the cluster's,
  and the pool's one subnet; the NodePool requires that subnet's zone; a
  NodeOverlay tells Karpenter the nodes have the huge pages EFA pods request
  (Karpenter knows no huge pages of any instance type), with the controller's
  `nodeOverlay` feature gate on. `networkInterfaces` and
  `placementGroupSelector` exist since Karpenter 1.11 (pkg/apis/v1/ec2nodeclass.go
  at the pinned commit: `interfaceType` is `interface` or `efa-only`, and card 0
  device 0 must be an `interface`).

Pins (checked in the aws/karpenter-provider-aws repository, main at
1d927085, "docs: update for patch release v1.14.1", 2026-08-21, the newest
release there):
- chart version 1.14.1 (`charts/karpenter/Chart.yaml`, and the v1.14 getting
  started guide's KARPENTER_VERSION); the chart supports Kubernetes up to 1.36
  (website/content/en/docs/upgrading/compatibility.md);
- controller image by digest, as that commit's `charts/karpenter/values.yaml`
  pins it. The OCI chart's own digest is not recorded in the repository and
  could not be checked offline: the chart is pinned by version (its signature
  can be verified with the `cosign verify` command of the getting started
  guide);
- IAM policies and EventBridge rules from
  website/content/en/v1.14/getting-started/getting-started-with-karpenter/cloudformation.yaml.

IRSA, not EKS Pod Identity, for the controller: every other role of the
platform (EBS and EFS CSI drivers, VPC CNI, Cluster Autoscaler, workloads) is
IRSA through the cluster's OIDC provider, which `existing` mode already
requires; Pod Identity would add the pod identity agent add-on (a DaemonSet on
every node, GPU nodes included) for one role.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pydantic import Field, field_validator

from infra import catalog, efa, iam, instances, meta, nodes, scheduling
from infra.config_types import _Model
from infra.gpu_nodes import GpuNodeGroupSettings, node_labels

VERSION = "1.14.1"
CHART = "oci://public.ecr.aws/karpenter/karpenter"
CRD_CHART = "oci://public.ecr.aws/karpenter/karpenter-crd"
CONTROLLER_IMAGE_TAG = VERSION
CONTROLLER_IMAGE_DIGEST = "sha256:723130949e4cab989461ff07d1be4cd781d63515432494641b33c235f300ae23"
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"
# Newest Kubernetes minor the pinned release supports.
MAX_KUBERNETES_VERSION = "1.36"

NODEPOOL_API = "karpenter.sh/v1"
NODEOVERLAY_API = "karpenter.sh/v1alpha1"
ZONE_LABEL = "topology.kubernetes.io/zone"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
NODECLASS_API = "karpenter.k8s.aws/v1"
NODECLASS_GROUP = "karpenter.k8s.aws"
DISCOVERY_TAG = "karpenter.sh/discovery"
DO_NOT_DISRUPT = scheduling.DO_NOT_DISRUPT_ANNOTATION
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"

_DURATION = re.compile(r"^(\d+(s|m|h))+$")


class KarpenterSettings(_Model):
    """Karpenter (`capacity.autoscaler: karpenter`)."""

    ami_version: str = Field(
        "latest",
        description="Version part of the EC2NodeClass AMI alias (`al2023@<version>` or "
        "`bottlerocket@<version>`; Karpenter picks the NVIDIA variant for GPU instances). "
        "`latest` follows new AMIs (nodes drift to them, one budget at a time); pin a "
        "release such as `v20260801` (AL2023) or `v1.46.0` (Bottlerocket) for reproducible "
        "nodes.",
    )
    discovery_tag: str | None = Field(
        None,
        description=f"Value of the `{DISCOVERY_TAG}` tag on the subnets and security groups "
        "Karpenter launches nodes into. Default in `create` mode: the cluster name (the "
        "stack tags its private subnets and the cluster security group). Required in "
        "`existing` mode: tag your node subnets and security group first.",
    )
    consolidate_after: str = Field(
        "10m",
        description="How long a node must stay empty (or, in serving pools, "
        "underutilized) before Karpenter removes it. Idle GPU cost versus the minutes a "
        "new node takes to start.",
    )
    serving_disruption_budget: str = Field(
        "10%",
        description="Most nodes of a `serving` pool Karpenter may disrupt at once "
        "(a count or a percentage).",
    )
    expire_after: str = Field(
        "720h",
        description="Node lifetime before replacement (security patches). A node whose "
        "pods carry `karpenter.sh/do-not-disrupt` (training) waits for them to finish.",
    )
    controller_replicas: int = Field(
        2, ge=1, le=3, description="Controller replicas (one leader; the others stand by)."
    )

    @field_validator("ami_version")
    @classmethod
    def _check_ami_version(cls, value: str) -> str:
        if value != "latest" and not re.fullmatch(r"v\d+(\.\d+)*", value):
            raise ValueError(f"{value!r}: use `latest` or a version such as v20260801")
        return value

    @field_validator("consolidate_after", "expire_after")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"{value!r} is not a duration such as 10m or 720h")
        return value

    @field_validator("serving_disruption_budget")
    @classmethod
    def _check_budget(cls, value: str) -> str:
        if not re.fullmatch(r"(\d+|\d{1,3}%)", value) or value in ("0", "0%"):
            raise ValueError(f"{value!r}: a node count or percentage above zero")
        return value


# ---------------------------------------------------------------------------
# The custom resources (pure: the tests and the capacity checks use them)
# ---------------------------------------------------------------------------


def ami_alias(group: GpuNodeGroupSettings, settings: KarpenterSettings) -> str:
    family = "bottlerocket" if group.is_bottlerocket else "al2023"
    return f"{family}@{settings.ami_version}"


def node_class_spec(
    group: GpuNodeGroupSettings,
    settings: KarpenterSettings,
    *,
    role: pulumi.Input[str],
    discovery_tag: str,
    efa_pool: efa.KarpenterEfa | None = None,
) -> dict[str, Any]:
    """EC2NodeClass spec of a GPU group. An EFA group (`efa_pool`, required when
    the group has EFA on) launches into its one subnet, with the fabric's security
    group beside the cluster's, every EFA interface and its placement group."""
    fabric = group.efa_fabric
    if (fabric is None) != (efa_pool is None):
        raise ValueError(f"EC2NodeClass {group.name}: EFA pool details without EFA, or not given")
    subnets: list[dict[str, Any]] = (
        [{"id": efa_pool.subnet_id}]
        if efa_pool is not None
        else [{"id": subnet} for subnet in group.subnet_ids]
        if group.subnet_ids
        else [{"tags": {DISCOVERY_TAG: discovery_tag}}]
    )
    security_groups: list[dict[str, Any]] = [{"tags": {DISCOVERY_TAG: discovery_tag}}]
    if efa_pool is not None:
        security_groups.append({"id": efa_pool.security_group_id})
    spec: dict[str, Any] = {
        "role": role,
        "amiSelectorTerms": [{"alias": ami_alias(group, settings)}],
        "subnetSelectorTerms": subnets,
        "securityGroupSelectorTerms": security_groups,
        "metadataOptions": {
            "httpEndpoint": "enabled",
            "httpProtocolIPv6": "disabled",
            "httpPutResponseHopLimit": nodes.IMDS_HOP_LIMIT,
            "httpTokens": "required",
        },
        "blockDeviceMappings": [
            {
                "deviceName": device,
                "ebs": {
                    "volumeSize": f"{size}Gi",
                    "volumeType": "gp3",
                    "encrypted": True,
                    "deleteOnTermination": True,
                },
            }
            for device, size in nodes.volumes(group.disk_size_gib, group.is_bottlerocket)
        ],
        "tags": {catalog.NODE_GROUP_LABEL: group.name},
    }
    if fabric is not None and efa_pool is not None:
        spec.update(
            efa.karpenter_node_class_fields(fabric, group.efa, efa_pool.placement_group_name)
        )
    return spec


def capacity_types(group: GpuNodeGroupSettings) -> list[str]:
    """`karpenter.sh/capacity-type` values a pool may launch: spot or on-demand, and
    `reserved` when an EFA pool names a capacity reservation (Karpenter launches
    into it only when the NodePool allows reserved capacity)."""
    if group.is_spot:
        return ["spot"]
    if group.efa_fabric is not None and group.efa.capacity_reservation_id:
        return ["reserved", "on-demand"]
    return ["on-demand"]


def node_pool_spec(
    group: GpuNodeGroupSettings,
    settings: KarpenterSettings,
    zone: pulumi.Input[str] | None = None,
) -> dict[str, Any]:
    """NodePool spec of a GPU group: what it may launch, how it is tainted and
    labelled (the same as a managed node group's nodes), its GPU limit and how
    its nodes are removed. `zone`: the one zone of an EFA pool (its subnet's)."""
    taints = scheduling.gpu_node_taints(group.is_spot)
    zones = [{"key": ZONE_LABEL, "operator": "In", "values": [zone]}] if zone is not None else []
    pool = {
        "template": {
            "metadata": {"labels": node_labels(group)},
            "spec": {
                "nodeClassRef": {
                    "group": NODECLASS_GROUP,
                    "kind": "EC2NodeClass",
                    "name": group.name,
                },
                "requirements": [
                    {
                        "key": INSTANCE_TYPE_LABEL,
                        "operator": "In",
                        "values": list(group.instance_types),
                    },
                    {
                        "key": CAPACITY_TYPE_LABEL,
                        "operator": "In",
                        "values": capacity_types(group),
                    },
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                    {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                    *zones,
                ],
                "taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in taints],
                "expireAfter": settings.expire_after,
            },
        },
        "disruption": disruption(group, settings),
        # maxSize under Karpenter: the most GPUs the pool may hold at once.
        "limits": {catalog.GPU_RESOURCE: str(group.max_gpus)},
    }
    check_node_pool(group.name, pool)
    return pool


def disruption(group: GpuNodeGroupSettings, settings: KarpenterSettings) -> dict[str, Any]:
    """Training pools: a node goes only when empty (a running job is never moved
    to save money; its pods also carry `karpenter.sh/do-not-disrupt`). Serving
    pools: also when underutilized (replicas move, behind their PDB), a budget
    of nodes at a time."""
    if group.role == "serving":
        return {
            "consolidationPolicy": "WhenEmptyOrUnderutilized",
            "consolidateAfter": settings.consolidate_after,
            "budgets": [{"nodes": settings.serving_disruption_budget}],
        }
    return {
        "consolidationPolicy": "WhenEmpty",
        "consolidateAfter": settings.consolidate_after,
        "budgets": [{"nodes": "1"}],
    }


def check_node_pool(name: str, spec: Mapping[str, Any]) -> None:
    """Refuse to render a NodePool that would launch GPU-less nodes or spot
    nodes without the spot taint (settings validation rejects both first)."""
    template = spec["template"]["spec"]
    requirements = {r["key"]: r for r in template["requirements"]}
    types = requirements.get(INSTANCE_TYPE_LABEL, {}).get("values", [])
    if not types or any(instances.lookup(t) is None for t in types):
        raise ValueError(f"NodePool {name}: instance types {types} are not all GPU types")
    capacity = requirements.get(CAPACITY_TYPE_LABEL, {}).get("values", ["on-demand"])
    taint_keys = {t["key"] for t in template.get("taints", [])}
    if "spot" in capacity and catalog.SPOT_TAINT_KEY not in taint_keys:
        raise ValueError(
            f"NodePool {name}: spot capacity without the {scheduling.SPOT_TAINT} taint"
        )
    if catalog.GPU_TAINT_KEY not in taint_keys:
        raise ValueError(f"NodePool {name}: GPU nodes without the {scheduling.GPU_TAINT} taint")


# ---------------------------------------------------------------------------
# IAM and the interruption queue
# ---------------------------------------------------------------------------

# EventBridge rules feeding the interruption queue (name suffix -> pattern).
INTERRUPTION_EVENTS: dict[str, dict[str, list[str]]] = {
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot-interruption": {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Spot Instance Interruption Warning"],
    },
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state-change": {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
    },
    "capacity-reservation-interruption": {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"],
    },
}


def controller_policies(
    *,
    partition: str,
    region: str,
    account: str,
    cluster: str,
    node_role_arn: str,
    queue_arn: str,
) -> dict[str, dict[str, Any]]:
    """The controller's IAM policies by name, as the upstream CloudFormation
    template (v1.14) writes them, for one cluster, region and account."""
    ec2 = f"arn:{partition}:ec2:{region}"
    owned = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"}
    nodepool_tagged = {"aws:ResourceTag/karpenter.sh/nodepool": "*"}
    request_owned = {
        f"aws:RequestTag/kubernetes.io/cluster/{cluster}": "owned",
        "aws:RequestTag/eks:eks-cluster-name": cluster,
    }
    launched = [
        f"{ec2}:*:{kind}/*"
        for kind in (
            "fleet",
            "instance",
            "volume",
            "network-interface",
            "launch-template",
            "spot-instances-request",
        )
    ]
    profile = f"arn:{partition}:iam::{account}:instance-profile/*"
    region_tag = {"aws:ResourceTag/topology.kubernetes.io/region": region}
    nodeclass_tagged = {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"}

    def doc(*statements: dict[str, Any]) -> dict[str, Any]:
        return {"Version": "2012-10-17", "Statement": list(statements)}

    return {
        "node-lifecycle": doc(
            {
                "Sid": "AllowScopedEC2InstanceAccessActions",
                "Effect": "Allow",
                "Resource": [
                    f"{ec2}::image/*",
                    f"{ec2}::snapshot/*",
                    f"{ec2}:*:security-group/*",
                    f"{ec2}:*:subnet/*",
                    f"{ec2}:*:capacity-reservation/*",
                    f"{ec2}:*:placement-group/*",
                ],
                "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
            },
            {
                "Sid": "AllowScopedEC2LaunchTemplateAccessActions",
                "Effect": "Allow",
                "Resource": f"{ec2}:*:launch-template/*",
                "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
                "Condition": {"StringEquals": owned, "StringLike": nodepool_tagged},
            },
            {
                "Sid": "AllowScopedEC2InstanceActionsWithTags",
                "Effect": "Allow",
                "Resource": launched,
                "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
                "Condition": {
                    "StringEquals": request_owned,
                    "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
                },
            },
            {
                "Sid": "AllowScopedResourceCreationTagging",
                "Effect": "Allow",
                "Resource": launched,
                "Action": "ec2:CreateTags",
                "Condition": {
                    "StringEquals": {
                        **request_owned,
                        "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"],
                    },
                    "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
                },
            },
            {
                "Sid": "AllowScopedResourceTagging",
                "Effect": "Allow",
                "Resource": f"{ec2}:*:instance/*",
                "Action": "ec2:CreateTags",
                "Condition": {
                    "StringEquals": owned,
                    "StringLike": nodepool_tagged,
                    "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster},
                    "ForAllValues:StringEquals": {
                        "aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]
                    },
                },
            },
            {
                "Sid": "AllowScopedDeletion",
                "Effect": "Allow",
                "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"],
                "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
                "Condition": {"StringEquals": owned, "StringLike": nodepool_tagged},
            },
        ),
        "iam-integration": doc(
            {
                "Sid": "AllowPassingInstanceRole",
                "Effect": "Allow",
                "Resource": node_role_arn,
                "Action": "iam:PassRole",
                "Condition": {
                    "StringEquals": {
                        "iam:PassedToService": ["ec2.amazonaws.com", "ec2.amazonaws.com.cn"]
                    }
                },
            },
            {
                "Sid": "AllowScopedInstanceProfileCreationActions",
                "Effect": "Allow",
                "Resource": profile,
                "Action": ["iam:CreateInstanceProfile"],
                "Condition": {
                    "StringEquals": {
                        **request_owned,
                        "aws:RequestTag/topology.kubernetes.io/region": region,
                    },
                    "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"},
                },
            },
            {
                "Sid": "AllowScopedInstanceProfileTagActions",
                "Effect": "Allow",
                "Resource": profile,
                "Action": ["iam:TagInstanceProfile"],
                "Condition": {
                    "StringEquals": {
                        **owned,
                        **region_tag,
                        **request_owned,
                        "aws:RequestTag/topology.kubernetes.io/region": region,
                    },
                    "StringLike": {
                        **nodeclass_tagged,
                        "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*",
                    },
                },
            },
            {
                "Sid": "AllowScopedInstanceProfileActions",
                "Effect": "Allow",
                "Resource": profile,
                "Action": [
                    "iam:AddRoleToInstanceProfile",
                    "iam:RemoveRoleFromInstanceProfile",
                    "iam:DeleteInstanceProfile",
                ],
                "Condition": {
                    "StringEquals": {**owned, **region_tag},
                    "StringLike": nodeclass_tagged,
                },
            },
        ),
        "eks-integration": doc(
            {
                "Sid": "AllowAPIServerEndpointDiscovery",
                "Effect": "Allow",
                "Resource": f"arn:{partition}:eks:{region}:{account}:cluster/{cluster}",
                "Action": "eks:DescribeCluster",
            }
        ),
        "interruption": doc(
            {
                "Sid": "AllowInterruptionQueueActions",
                "Effect": "Allow",
                "Resource": queue_arn,
                "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
            }
        ),
        "resource-discovery": doc(
            {
                "Sid": "AllowRegionalReadActions",
                "Effect": "Allow",
                "Resource": "*",
                "Action": [
                    "ec2:DescribeCapacityReservations",
                    "ec2:DescribeImages",
                    "ec2:DescribeInstances",
                    "ec2:DescribeInstanceStatus",
                    "ec2:DescribeInstanceTypeOfferings",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplates",
                    "ec2:DescribePlacementGroups",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSpotPriceHistory",
                    "ec2:DescribeSubnets",
                ],
                "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
            },
            {
                "Sid": "AllowSSMReadActions",
                "Effect": "Allow",
                "Resource": f"arn:{partition}:ssm:{region}::parameter/aws/service/*",
                "Action": "ssm:GetParameter",
            },
            {
                "Sid": "AllowPricingReadActions",
                "Effect": "Allow",
                "Resource": "*",
                "Action": "pricing:GetProducts",
            },
            {
                "Sid": "AllowUnscopedInstanceProfileListAction",
                "Effect": "Allow",
                "Resource": "*",
                "Action": "iam:ListInstanceProfiles",
            },
            {
                "Sid": "AllowInstanceProfileReadActions",
                "Effect": "Allow",
                "Resource": profile,
                "Action": "iam:GetInstanceProfile",
            },
        ),
    }


def _policy_json(name: str) -> Callable[[dict[str, dict[str, Any]]], str]:
    def pick(policies: dict[str, dict[str, Any]]) -> str:
        return json.dumps(policies[name])

    return pick


def queue_policy(queue_arn: str) -> str:
    """Lets EventBridge (and SQS) send to the queue; refuses anything over plain HTTP."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "EC2InterruptionPolicy",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                },
                {
                    "Sid": "DenyHTTP",
                    "Effect": "Deny",
                    "Action": "sqs:*",
                    "Resource": queue_arn,
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    "Principal": "*",
                },
            ],
        }
    )


# ---------------------------------------------------------------------------
# The component
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KarpenterArgs:
    settings: KarpenterSettings
    groups: Sequence[GpuNodeGroupSettings]
    cluster_name: pulumi.Input[str]
    cluster_name_plain: str
    region: str
    partition: pulumi.Input[str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer_url: pulumi.Input[str]
    discovery_tag: str
    # Where the controller runs (the system nodes in `create` mode).
    node_selector: Mapping[str, str] | None = None
    # EFA groups only: the VPC of the fabric's security group, and the cluster's
    # node subnets (one per zone, in zone order) an EFA pool picks its one from.
    vpc_id: pulumi.Input[str] | None = None
    subnet_ids: pulumi.Input[list[str]] = field(default_factory=list)


class Karpenter(pulumi.ComponentResource):
    """Karpenter's controller, IAM, interruption queue, and a NodePool and an
    EC2NodeClass per GPU group. Needs the `aws` and `kubernetes` providers.

    Outputs: `version`, `node_role_arn`, `controller_role_arn`, `queue_name`,
    `node_pools` (group -> NodePool name).
    """

    def __init__(
        self, name: str, args: KarpenterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:capacity:Karpenter", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        account = aws.get_caller_identity_output(
            opts=pulumi.InvokeOutputOptions(parent=self)
        ).account_id

        self.node_role = iam.node_role(f"{name}-node-role", args.partition, parent=self)
        # Nodes Karpenter launches join through an access entry (managed node
        # groups get theirs from EKS).
        access = aws.eks.AccessEntry(
            f"{name}-node-access",
            cluster_name=args.cluster_name,
            principal_arn=self.node_role.arn,
            type="EC2_LINUX",
            opts=child,
        )

        self.queue = aws.sqs.Queue(
            f"{name}-interruption",
            message_retention_seconds=300,
            sqs_managed_sse_enabled=True,
            opts=child,
        )
        aws.sqs.QueuePolicy(
            f"{name}-interruption",
            queue_url=self.queue.url,
            policy=self.queue.arn.apply(queue_policy),
            opts=child,
        )
        for suffix, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(
                f"{name}-{suffix}",
                description=f"Karpenter interruption queue of {args.cluster_name_plain}: {suffix}",
                event_pattern=json.dumps(pattern),
                opts=child,
            )
            aws.cloudwatch.EventTarget(
                f"{name}-{suffix}",
                rule=rule.name,
                arn=self.queue.arn,
                target_id="KarpenterInterruptionQueueTarget",
                opts=child,
            )

        self.controller_role = aws.iam.Role(
            f"{name}-controller-role",
            assume_role_policy=iam.irsa_trust_policy(
                args.oidc_provider_arn, args.oidc_issuer_url, NAMESPACE, SERVICE_ACCOUNT
            ),
            description=f"Karpenter controller of {args.cluster_name_plain}",
            opts=child,
        )
        policies = pulumi.Output.all(
            args.partition, account, self.node_role.arn, self.queue.arn
        ).apply(
            lambda v: controller_policies(
                partition=v[0],
                region=args.region,
                account=v[1],
                cluster=args.cluster_name_plain,
                node_role_arn=v[2],
                queue_arn=v[3],
            )
        )
        attachments = []
        for policy_name in (
            "node-lifecycle",
            "iam-integration",
            "eks-integration",
            "interruption",
            "resource-discovery",
        ):
            policy = aws.iam.Policy(
                f"{name}-{policy_name}",
                description=f"Karpenter {policy_name} of {args.cluster_name_plain}",
                policy=policies.apply(_policy_json(policy_name)),
                opts=child,
            )
            attachments.append(
                aws.iam.RolePolicyAttachment(
                    f"{name}-{policy_name}",
                    role=self.controller_role.name,
                    policy_arn=policy.arn,
                    opts=child,
                )
            )

        labels = meta.labels("karpenter", "karpenter", "capacity")
        # CRDs first, as their own release: the controller chart is installed
        # without them, and the NodePools wait for both.
        self.crds = k8s.helm.v3.Release(
            f"{name}-crds",
            name="karpenter-crd",
            chart=CRD_CHART,
            version=VERSION,
            namespace=NAMESPACE,
            opts=child,
        )
        self.release = k8s.helm.v3.Release(
            f"{name}-controller",
            name="karpenter",
            chart=CHART,
            version=VERSION,
            namespace=NAMESPACE,
            skip_crds=True,
            values=controller_values(
                s,
                cluster_name=args.cluster_name,
                queue_name=self.queue.name,
                role_arn=self.controller_role.arn,
                region=args.region,
                node_selector=args.node_selector,
                labels=labels,
                node_overlay=any(g.efa_fabric is not None for g in args.groups),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.crds, access, *attachments]),
        )
        pools_opts = pulumi.ResourceOptions(parent=self, depends_on=[self.crds, self.release])
        self.node_classes: dict[str, k8s.apiextensions.CustomResource] = {}
        self.node_pools: dict[str, k8s.apiextensions.CustomResource] = {}
        self.efa_fabrics: dict[str, efa.EfaPoolFabric] = {}
        self.node_overlays: dict[str, k8s.apiextensions.CustomResource] = {}
        for group in args.groups:
            group_labels = meta.labels(
                "gpu-node-pool", group.name, "capacity", **{catalog.NODE_GROUP_LABEL: group.name}
            )
            efa_pool = self._efa_pool(name, group, args)
            self.node_classes[group.name] = k8s.apiextensions.CustomResource(
                f"{name}-nodeclass-{group.name}",
                api_version=NODECLASS_API,
                kind="EC2NodeClass",
                metadata=meta.metadata(group.name, group_labels),
                spec=node_class_spec(
                    group,
                    s,
                    role=self.node_role.name,
                    discovery_tag=args.discovery_tag,
                    efa_pool=efa_pool,
                ),
                opts=pools_opts,
            )
            self.node_pools[group.name] = k8s.apiextensions.CustomResource(
                f"{name}-nodepool-{group.name}",
                api_version=NODEPOOL_API,
                kind="NodePool",
                metadata=meta.metadata(group.name, group_labels),
                spec=node_pool_spec(group, s, zone=efa_pool.zone if efa_pool else None),
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[self.crds, self.release, self.node_classes[group.name]],
                ),
            )

            if efa_pool is not None:
                # Karpenter knows no huge pages: without this, EFA pods (which request
                # them) fit no instance type of the pool and no node is launched.
                self.node_overlays[group.name] = k8s.apiextensions.CustomResource(
                    f"{name}-nodeoverlay-{group.name}",
                    api_version=NODEOVERLAY_API,
                    kind="NodeOverlay",
                    metadata=meta.metadata(f"{group.name}-efa-hugepages", group_labels),
                    spec=efa.karpenter_hugepages_overlay(group.name, group.efa.hugepages),
                    opts=pools_opts,
                )

        self.version = VERSION
        self.node_role_arn = self.node_role.arn
        self.controller_role_arn = self.controller_role.arn
        self.queue_name = self.queue.name
        self.node_pool_names = {g.name: g.name for g in args.groups}
        self.register_outputs(
            {
                "version": self.version,
                "node_role_arn": self.node_role_arn,
                "controller_role_arn": self.controller_role_arn,
                "queue_name": self.queue_name,
                "node_pools": self.node_pool_names,
            }
        )

    def _efa_pool(
        self, name: str, group: GpuNodeGroupSettings, args: KarpenterArgs
    ) -> efa.KarpenterEfa | None:
        """The fabric of an EFA group (placement group, security group) and where
        its nodes go: one subnet and that subnet's zone."""
        if group.efa_fabric is None:
            return None
        if args.vpc_id is None:
            raise ValueError(f"EFA pool {group.name}: the cluster's VPC is unknown")
        fabric = efa.EfaPoolFabric(
            f"{name}-efa-{group.name}",
            efa.EfaFabricArgs(
                group_name=group.name,
                cluster_name=args.cluster_name_plain,
                vpc_id=args.vpc_id,
                settings=group.efa,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.efa_fabrics[group.name] = fabric
        subnet = efa.pool_subnets(
            list(group.subnet_ids) or args.subnet_ids,
            bool(group.subnet_ids),
            group.efa.subnet_index,
        ).apply(lambda ids: ids[0])
        zone = aws.ec2.get_subnet_output(
            id=subnet, opts=pulumi.InvokeOutputOptions(parent=self)
        ).availability_zone
        return efa.KarpenterEfa(
            subnet_id=subnet,
            zone=zone,
            security_group_id=fabric.security_group_id,
            placement_group_name=fabric.placement_group_name,
        )


def controller_values(
    s: KarpenterSettings,
    *,
    cluster_name: pulumi.Input[str],
    queue_name: pulumi.Input[str],
    role_arn: pulumi.Input[str],
    region: str,
    node_selector: Mapping[str, str] | None,
    labels: Mapping[str, str],
    node_overlay: bool = False,
) -> dict[str, Any]:
    """Helm values of the controller chart (charts/karpenter/values.yaml, v1.14.1).
    `node_overlay` turns on the alpha `nodeOverlay` feature gate (EFA pools'
    huge pages)."""
    settings: dict[str, Any] = {"clusterName": cluster_name, "interruptionQueue": queue_name}
    if node_overlay:
        settings["featureGates"] = {"nodeOverlay": True}
    return {
        "settings": settings,
        "serviceAccount": {
            "name": SERVICE_ACCOUNT,
            "annotations": {"eks.amazonaws.com/role-arn": role_arn},
        },
        "additionalLabels": dict(labels),
        "replicas": s.controller_replicas,
        # The chart's own affinity keeps it off nodes Karpenter manages; this
        # puts it on the system nodes as well.
        "nodeSelector": {"kubernetes.io/os": "linux", **(node_selector or {})},
        "controller": {
            "image": {"tag": CONTROLLER_IMAGE_TAG, "digest": CONTROLLER_IMAGE_DIGEST},
            # Nodes allow one metadata hop: pods cannot ask IMDS for the region.
            "env": [{"name": "AWS_REGION", "value": region}],
            "resources": {
                "requests": {"cpu": "1", "memory": "1Gi"},
                "limits": {"memory": "1Gi"},
            },
        },
        "logLevel": "info",
    }
