"""GpuNodeGroup: one EKS managed node group of GPU instances that can scale from zero
(the `cluster-autoscaler` and `none` capacity modes; under Karpenter the same
settings become a NodePool and an EC2NodeClass, infra/karpenter.py).

Nodes boot from a launch template that requires IMDSv2 with hop limit 1 and
encrypts the gp3 root volume (infra/nodes.py). EFA groups (infra/efa.py) add
every EFA interface, the placement group and any reservation to that same
template, and run in one subnet.

The Cluster Autoscaler builds a template node for a group with no nodes from
tags on its Auto Scaling group: GPU count, labels and taints. EKS copies a
managed node group's own tags to neither the ASG nor the instances, so each
template tag is an `aws.autoscaling.Tag` on the ASG the node group reports.
https://github.com/kubernetes/autoscaler/blob/master/cluster-autoscaler/cloudprovider/aws/README.md
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_aws as aws
from pydantic import Field, field_validator, model_validator

from infra import catalog, efa, iam, instances, nodes, scheduling
from infra.config_types import DnsLabel, FieldProblems, Loc, _Model, check_scaling
from infra.device_plugin import (
    DevicePluginSettings,
    PoolDevicePluginSettings,
    TimeSlicingSettings,
    pool_label_value,
)
from infra.efa import EfaSettings

AmiType = Literal["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"]


class GpuNodeGroupSettings(_Model):
    """One pool of GPU nodes of one shape: an EKS managed node group, or a Karpenter
    NodePool and EC2NodeClass under `capacity.autoscaler: karpenter`."""

    name: DnsLabel = Field(description="Node group name, unique in the stack (a DNS-1123 label).")
    instance_types: list[str] = Field(
        min_length=1,
        description="GPU instance types. All must have the same GPU count and model, "
        "since the autoscaler builds one node template per group. Known families: "
        + ", ".join(instances.GPU_FAMILIES)
        + ".",
    )
    ami_type: AmiType = Field(
        "AL2023_x86_64_NVIDIA",
        description="`AL2023_x86_64_NVIDIA` (NVIDIA driver and container toolkit; the "
        "platform's device plugin DaemonSet runs on it) or `BOTTLEROCKET_x86_64_NVIDIA` "
        "(ships its own device plugin; the DaemonSet skips these nodes).",
    )
    capacity_type: Literal["ON_DEMAND", "SPOT"] = Field(
        "ON_DEMAND",
        description=f"`SPOT` nodes get the taint `{scheduling.SPOT_TAINT}`; "
        "only priority classes in `scheduling.spotPriorityClasses` tolerate it.",
    )
    min_size: int = Field(
        0,
        ge=0,
        description="Minimum nodes; 0 lets the group scale to zero. Under Karpenter it must "
        "be 0: nodes come from pending pods, not from a size (keep capacity warm with a "
        "workload's `minReplicas`).",
    )
    desired_size: int | None = Field(
        None,
        description="Initial nodes. Default: `minSize`. Later changes by the cluster "
        "autoscaler are not reverted by `pulumi up`. Not valid under Karpenter.",
    )
    max_size: int = Field(
        ge=0,
        description="Maximum nodes (required, at least 1). Under Karpenter it caps the pool: the "
        "NodePool's `limits` on `nvidia.com/gpu` are `maxSize` x GPUs per node.",
    )
    role: Literal["training", "serving"] = Field(
        "training",
        description="What the pool is for; sets Karpenter's consolidation. `training`: a "
        "node is removed only when empty. `serving`: also when underutilized, at most "
        "`capacity.karpenter.servingDisruptionBudget` of the pool at a time (training pods "
        "on it are kept by `karpenter.sh/do-not-disrupt`). Only used under Karpenter.",
    )
    disk_size_gib: int = Field(
        200,
        alias="diskSizeGiB",
        ge=50,
        le=16384,
        description="Root volume in GiB; CUDA images are large, 200 fits several.",
    )
    labels: dict[str, str] = Field({}, description="Extra node labels.")
    device_plugin: PoolDevicePluginSettings | None = Field(
        None,
        description="This group's own MIG strategy and/or time-slicing instead of the "
        "stack-wide `devicePlugin` ones (its nodes get their own device plugin DaemonSet). "
        "E.g. time-slice an L4 group for notebooks while A100s run MIG and H100s stay whole.",
    )
    subnet_ids: list[str] = Field(
        [],
        description="Subnets for this group (e.g. one zone with a capacity reservation). "
        "Default: the cluster's private subnets (EFA groups: one of them, `efa.subnetIndex`).",
    )
    efa: EfaSettings = Field(
        default_factory=EfaSettings,
        description="EFA fabric for multi-node training (p4d, p4de, p5, p5e, p5en): "
        "interfaces, one zone, placement group, security group. See docs/efa.md.",
    )

    @field_validator("instance_types")
    @classmethod
    def _check_instance_types(cls, names: list[str]) -> list[str]:
        problems: list[tuple[Loc, str]] = []
        for i, name in enumerate(names):
            if instances.lookup(name) is None:
                family = name.split(".", 1)[0]
                if family in instances.GPU_FAMILIES:
                    hint = f"not a supported size of the {family} family"
                elif family in instances.UNSUPPORTED_ACCELERATED_FAMILIES:
                    hint = f"not supported ({instances.UNSUPPORTED_ACCELERATED_FAMILIES[family]})"
                else:
                    hint = "not a supported GPU instance type; supported families: " + ", ".join(
                        instances.GPU_FAMILIES
                    )
                problems.append(((i,), f"{name!r}: {hint}"))
        shapes = {(t.gpus, t.gpu_model) for n in names if (t := instances.lookup(n))}
        if len(shapes) > 1:
            got = ", ".join(f"{g}x {m}" for g, m in sorted(shapes))
            problems.append(
                (
                    (),
                    "all instance types of a group need the same GPU count and model "
                    f"(got {got}); use one group per shape",
                )
            )
        if problems:
            raise FieldProblems(problems)
        return names

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        reserved = (catalog.GPU_PRESENT_LABEL, catalog.ACCELERATOR_LABEL)
        problems: list[tuple[Loc, str]] = [
            ((key,), "this label is set by the platform")
            for key in labels
            if key.startswith(catalog.LABEL_PREFIX) or key in reserved
        ]
        for key in labels:
            if key in CAPACITY_TYPE_LABELS:
                # A spot label without the spot taint would put non-preemptible
                # work on capacity that can vanish.
                problems.append(
                    (
                        (key,),
                        "the capacity type comes from `capacityType` (SPOT also sets the "
                        f"{scheduling.SPOT_TAINT} taint); do not label it",
                    )
                )
            elif _domain(key).endswith(RESTRICTED_LABEL_DOMAINS):
                problems.append(
                    (
                        (key,),
                        "labels of the kubernetes.io, k8s.io and Karpenter domains are reserved",
                    )
                )
        if problems:
            raise FieldProblems(problems)
        return labels

    @model_validator(mode="after")
    def _check_sizes(self) -> GpuNodeGroupSettings:
        check_scaling(self.min_size, self.desired_size, self.max_size)
        return self

    @model_validator(mode="after")
    def _check_efa(self) -> GpuNodeGroupSettings:
        problems = efa.group_problems(self.efa, self.instance_types, self.subnet_ids)
        if problems:
            raise FieldProblems(problems)
        return self

    @model_validator(mode="after")
    def _check_device_plugin(self) -> GpuNodeGroupSettings:
        own = self.device_plugin
        if own is None:
            return self
        if self.is_bottlerocket:
            raise FieldProblems(
                [
                    (
                        ("devicePlugin",),
                        "Bottlerocket runs its own device plugin; these would not apply",
                    )
                ]
            )
        info = instances.lookup(self.instance_types[0])
        if own.mig_strategy in ("single", "mixed") and info and not info.mig_capable:
            raise FieldProblems(
                [(("devicePlugin", "migStrategy"), f"{info.gpu_model} GPUs do not support MIG")]
            )
        return self

    @property
    def instance_type_info(self) -> instances.GpuInstanceType:
        info = instances.lookup(self.instance_types[0])
        assert info is not None  # validated
        return info

    @property
    def gpus_per_node(self) -> int:
        return self.instance_type_info.gpus

    @property
    def max_gpus(self) -> int:
        return self.max_size * self.gpus_per_node

    @property
    def is_spot(self) -> bool:
        return self.capacity_type == "SPOT"

    @property
    def is_bottlerocket(self) -> bool:
        return self.ami_type.startswith("BOTTLEROCKET")

    @property
    def efa_fabric(self) -> instances.EfaFabric | None:
        """The EFA layout of the group's nodes when EFA is on (infra/efa.py)."""
        return efa.resolve_fabric(self.efa, self.instance_types)

    def effective_device_plugin(self, stack: DevicePluginSettings) -> DevicePluginSettings:
        """The device plugin settings this group's nodes run with."""
        return self.device_plugin.apply_to(stack) if self.device_plugin else stack


# Labels that say a node is spot or on-demand, set by EKS and Karpenter themselves.
CAPACITY_TYPE_LABELS = ("eks.amazonaws.com/capacityType", "karpenter.sh/capacity-type")
# Node label domains Kubernetes, EKS and Karpenter own (Karpenter's NodePool
# CRD rejects most of them in a template's labels).
RESTRICTED_LABEL_DOMAINS = ("kubernetes.io", "k8s.io", "karpenter.sh", "karpenter.k8s.aws")


def _domain(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


CA_PREFIX = "k8s.io/cluster-autoscaler"


def node_labels(group: GpuNodeGroupSettings) -> dict[str, str]:
    """Kubernetes labels of the group's nodes."""
    info = group.instance_type_info
    return {
        **group.labels,
        # GFD does not set this one; the device plugin DaemonSet selects on it.
        catalog.GPU_PRESENT_LABEL: "true",
        # Without it the autoscaler counts a fresh node as GPU-less until the
        # device plugin reports, and scales up again (autoscaler#3164).
        catalog.ACCELERATOR_LABEL: info.accelerator,
        catalog.NODE_GROUP_LABEL: group.name,
        catalog.DEVICE_PLUGIN_LABEL: "host"
        if group.is_bottlerocket
        else pool_label_value(group.name)
        if group.device_plugin
        else "daemonset",
        catalog.CAPACITY_TYPE_LABEL: "spot" if group.is_spot else "on-demand",
        **(efa.node_labels() if group.efa_fabric else {}),
    }


def time_slicing(
    group: GpuNodeGroupSettings, device_plugin: DevicePluginSettings
) -> TimeSlicingSettings | None:
    """The time-slicing the group's nodes run with (the stack's or the group's own),
    or None: off, or Bottlerocket, whose own device plugin does not apply it."""
    plugin = group.effective_device_plugin(device_plugin)
    if plugin.sharing_enabled and not group.is_bottlerocket:
        return plugin.time_slicing
    return None


def advertised_gpus(group: GpuNodeGroupSettings, device_plugin: DevicePluginSettings) -> int:
    """`nvidia.com/gpu` a node of the group advertises (time-slicing multiplies it
    unless the shared GPUs are renamed to `nvidia.com/gpu.shared`)."""
    ts = time_slicing(group, device_plugin)
    if ts is not None and not ts.rename_by_default:
        return group.gpus_per_node * ts.replicas
    return group.gpus_per_node


def autoscaler_tags(
    cluster_name: str, group: GpuNodeGroupSettings, device_plugin: DevicePluginSettings
) -> dict[str, str]:
    """Cluster Autoscaler discovery and node-template tags for the group's ASG."""
    tags = {
        f"{CA_PREFIX}/enabled": "true",
        f"{CA_PREFIX}/{cluster_name}": "owned",
        f"{CA_PREFIX}/node-template/resources/{catalog.GPU_RESOURCE}": str(
            advertised_gpus(group, device_plugin)
        ),
    }
    fabric = group.efa_fabric
    if fabric:
        # EFA pods ask for these too: without them the autoscaler does not scale
        # an empty EFA group up for them.
        tags[f"{CA_PREFIX}/node-template/resources/{catalog.EFA_RESOURCE}"] = str(
            fabric.network_cards
        )
        tags[f"{CA_PREFIX}/node-template/resources/{catalog.HUGEPAGES_2MI_RESOURCE}"] = (
            group.efa.hugepages
        )
    for key, value in node_labels(group).items():
        tags[f"{CA_PREFIX}/node-template/label/{key}"] = value
    for taint in scheduling.gpu_node_taints(group.is_spot):
        tags[f"{CA_PREFIX}/node-template/taint/{taint.key}"] = f"{taint.value}:{taint.effect}"
    return tags


def _asg_name(resources: Sequence[Any] | None) -> str:
    """The Auto Scaling group EKS made for the node group (one per group)."""
    groups = (resources or [None])[0]
    asgs = getattr(groups, "autoscaling_groups", None) or []
    if not asgs or not asgs[0].name:
        raise pulumi.RunError("the EKS node group reports no Auto Scaling group")
    return str(asgs[0].name)


def _slug(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


@dataclass(frozen=True)
class GpuNodeGroupArgs:
    group: GpuNodeGroupSettings
    device_plugin: DevicePluginSettings
    cluster_name: pulumi.Input[str]
    cluster_name_plain: str  # for tag keys, which must be known strings
    kubernetes_version: str
    subnet_ids: pulumi.Input[list[str]]
    partition: pulumi.Input[str]
    # EFA groups only: where the fabric's security group lives, and the cluster
    # security group the nodes keep (interfaces in a launch template replace it).
    vpc_id: pulumi.Input[str] | None = None
    cluster_security_group_id: pulumi.Input[str] | None = None


class GpuNodeGroup(pulumi.ComponentResource):
    """An EKS managed GPU node group with its IAM role and autoscaler tags.

    Outputs: `node_group_name`, `asg_name`, `role_arn`, `gpus_per_node`,
    `max_gpus`, `instance_types`, `efa_interfaces` (0 without EFA).
    """

    def __init__(
        self, name: str, args: GpuNodeGroupArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:infra:GpuNodeGroup", name, None, opts)
        group = args.group
        self.role = iam.node_role(f"{name}-role", args.partition, parent=self)
        subnet_ids: pulumi.Input[list[str]] = args.subnet_ids
        efa_args: dict[str, Any] | None = None
        self.efa_fabric: efa.EfaPoolFabric | None = None
        fabric = group.efa_fabric
        if fabric is not None:
            # EFA: the pool's placement group and security group, every interface
            # in the group's one launch template, and one subnet (one zone).
            assert args.vpc_id is not None
            self.efa_fabric = efa.EfaPoolFabric(
                f"{name}-efa",
                efa.EfaFabricArgs(
                    group_name=group.name,
                    cluster_name=args.cluster_name_plain,
                    vpc_id=args.vpc_id,
                    settings=group.efa,
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            efa_args = efa.efa_launch_template_args(
                fabric,
                group.efa,
                efa.security_group_ids(self.efa_fabric, args.cluster_security_group_id),
                self.efa_fabric.placement_group_name,
            )
            subnet_ids = efa.pool_subnets(
                args.subnet_ids, bool(group.subnet_ids), group.efa.subnet_index
            )
        self.launch_template = nodes.launch_template(
            f"{name}-lt",
            disk_size_gib=group.disk_size_gib,
            bottlerocket=group.is_bottlerocket,
            tags={"Name": f"{args.cluster_name_plain}-{group.name}"},
            extra=efa_args,
            parent=self,
        )
        desired = group.desired_size if group.desired_size is not None else group.min_size
        self.node_group = aws.eks.NodeGroup(
            f"{name}-nodes",
            cluster_name=args.cluster_name,
            node_role_arn=self.role.arn,
            subnet_ids=subnet_ids,
            version=args.kubernetes_version,
            ami_type=group.ami_type,
            capacity_type=group.capacity_type,
            instance_types=list(group.instance_types),
            # The root volume and instance metadata options live in the template
            # (EKS rejects disk_size next to a launch template).
            launch_template={
                "id": self.launch_template.id,
                "version": self.launch_template.latest_version.apply(str),
            },
            scaling_config={
                "min_size": group.min_size,
                "desired_size": desired,
                "max_size": group.max_size,
            },
            # One node at a time: GPU capacity is scarce and jobs are long.
            update_config={"max_unavailable": 1},
            # EKS replaces nodes whose GPUs fail health checks (XID errors, ...),
            # reported by the node monitoring agent add-on.
            node_repair_config={"enabled": True},
            labels=node_labels(group),
            taints=[
                {"key": t.key, "value": t.value, "effect": t.aws_effect}
                for t in scheduling.gpu_node_taints(group.is_spot)
            ],
            tags={"Name": f"{args.cluster_name_plain}-{group.name}"},
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.role],
                # The cluster autoscaler owns the current size after creation.
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        self.asg_name = self.node_group.resources.apply(_asg_name)
        self.asg_tags = [
            aws.autoscaling.Tag(
                f"{name}-asg-{_slug(key)}",
                autoscaling_group_name=self.asg_name,
                tag={"key": key, "value": value, "propagate_at_launch": False},
                opts=pulumi.ResourceOptions(parent=self),
            )
            for key, value in autoscaler_tags(
                args.cluster_name_plain, group, args.device_plugin
            ).items()
        ]
        self.node_group_name = self.node_group.node_group_name
        self.efa_interfaces = group.efa_fabric.network_cards if group.efa_fabric else 0
        self.role_arn = self.role.arn
        self.gpus_per_node = group.gpus_per_node
        self.max_gpus = group.max_gpus
        self.instance_types = list(group.instance_types)
        self.register_outputs(
            {
                "node_group_name": self.node_group_name,
                "asg_name": self.asg_name,
                "role_arn": self.role_arn,
                "gpus_per_node": self.gpus_per_node,
                "max_gpus": self.max_gpus,
                "instance_types": self.instance_types,
                "efa_interfaces": self.efa_interfaces,
            }
        )
