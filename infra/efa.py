"""EFA: the Elastic Fabric Adapter fabric of p4d/p5-class GPU pools.

What a pool needs for NCCL to run over EFA instead of TCP sockets on the VPC
network (docs/efa.md has the details and sources):

- every EFA interface the instance type has, attached at launch: on managed
  node groups through the launch template (`efa_launch_template_args()`), on
  Karpenter through the EC2NodeClass (`karpenter_node_class_fields()`);
- one availability zone and a cluster placement group (`EfaPoolFabric`);
- a security group that allows all traffic to and from itself (`EfaPoolFabric`);
- the AWS EFA device plugin, which advertises `vpc.amazonaws.com/efa`
  (`EfaDevicePlugin`, a DaemonSet on EFA nodes only);
- pods that request the interfaces and the huge pages libfabric uses, and the
  libfabric/NCCL environment (`EfaPod`, applied by workloads/distributed.py
  and workloads/nccl_test.py through the one pod builder).

Interface layouts (AWS EC2 User Guide, "Maximize network bandwidth on Amazon
EC2 instances with multiple network cards"; terraform-aws-eks
`enable_efa_support`): for launch templates, card 0 device 0 is an EFA with
ENA (`efa`, the node's IP traffic) and every other card gets one `efa-only`
interface at device index 1; Karpenter's EC2NodeClass only accepts
`interface` and `efa-only`, so there card 0 device 0 is a plain ENA interface
with an `efa-only` beside it at device index 1, and the other cards carry an
`efa-only` interface at device index 0 (the User Guide's current layout).
Either way a node has as many EFA devices as network cards.

Karpenter (checked in aws/karpenter-provider-aws): it attaches one EFA per
network card when a pod requests `vpc.amazonaws.com/efa`; since v1.11.0 the
EC2NodeClass has `networkInterfaces` (explicit layouts, `efa-only`) and
`placementGroupSelector` (an existing placement group by name or id), so
EFA pools work on either provisioning path. The placement group and the
security group are created here in both cases.

Wiring, per path: a managed node group (infra/gpu_nodes.py) creates an
`EfaPoolFabric` and merges `efa_launch_template_args()` into its launch
template. A Karpenter pool creates the same `EfaPoolFabric`, adds
`karpenter_node_class_fields()` to its EC2NodeClass spec (subnet selector: the
pool's one subnet; security groups: the fabric's and the cluster's) and
`node_labels()` to its NodePool template, so the EFA device plugin lands there.

Pure helpers first (no resources), then the components.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pydantic import Field

from infra import catalog, instances, meta, pod, scheduling
from infra.config_types import Loc, Quantity, _Model
from infra.instances import EfaFabric

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


class EfaSettings(_Model):
    """EFA fabric of one GPU node group (p4d, p4de, p5, p5e, p5en)."""

    enabled: bool | None = Field(
        None,
        description="Attach every EFA interface of the instance type, one zone, a cluster "
        "placement group and a self-referencing security group. Default: on for instance "
        "types with EFA in the instance table (p4d, p4de, p5, p5e, p5en); `true` on any "
        "other type is an error.",
    )
    subnet_index: int = Field(
        0,
        ge=0,
        description="Without `subnetIds`, the pool uses this one of the cluster's private "
        "subnets (one per zone, in zone order): EFA traffic does not cross zones. Pick the "
        "zone that has the capacity (or the reservation).",
    )
    placement_group: bool = Field(
        True,
        description="Launch the nodes into a cluster placement group (lowest latency). "
        "Turn off when a capacity reservation was not made in one, or launches fail "
        "with InsufficientInstanceCapacity.",
    )
    capacity_reservation_id: str | None = Field(
        None,
        pattern=r"^cr-[0-9a-z]+$",
        description="Launch into this On-Demand Capacity Reservation or Capacity Block "
        "(`cr-...`): p5 capacity is usually reserved. Its zone must be the pool's zone.",
    )
    capacity_block: bool = Field(
        False,
        description="The reservation is a Capacity Block for ML (market type "
        "`capacity-block`; needs `capacityReservationId`).",
    )
    hugepages: Quantity = Field(
        "5120Mi",
        description="2 MiB huge pages each pod on the pool requests (requests = limits): "
        "libfabric's EFA provider registers its buffers in them. 5120Mi is what AWS's "
        "EKS examples request.",
    )


class EfaDevicePluginSettings(_Model):
    """The AWS EFA Kubernetes device plugin (kube-system DaemonSet on EFA nodes)."""

    image: str | None = Field(
        None,
        description="Device plugin image. Default: AWS's "
        f"`{'602401143452'}.dkr.ecr.<region>.amazonaws.com/eks/aws-efa-k8s-device-plugin:"
        "v0.5.20` (the eks-charts chart v0.5.30 default) in the cluster's region. Pin it "
        "by digest where the environment requires digests.",
    )
    digest_waiver: str | None = Field(
        None,
        min_length=10,
        description="Why the image runs by tag where `policy.requireImageDigests` is on: "
        "the reason is written on the DaemonSet and the `image-pinned` rule accepts the "
        "tag for this kube-system DaemonSet only. Drop it once the image is pinned by digest.",
    )


DEVICE_PLUGIN_VERSION = "v0.5.20"
# Amazon EKS's image account in most regions (us-east-1, us-west-2, eu-west-1, ...);
# a few regions use another account: set efaDevicePlugin.image there.
EKS_IMAGE_ACCOUNT = "602401143452"


def resolve_fabric(settings: EfaSettings, instance_types: Sequence[str]) -> EfaFabric | None:
    """The EFA layout of a group's nodes when EFA is on: asked for, or by default
    when every instance type has EFA in the instance table."""
    infos = [instances.lookup(n) for n in instance_types]
    capable = bool(infos) and all(i is not None and i.efa is not None for i in infos)
    enabled = settings.enabled if settings.enabled is not None else capable
    first = infos[0] if infos else None
    return first.efa if enabled and first is not None else None


def group_problems(
    settings: EfaSettings, instance_types: Sequence[str], subnet_ids: Sequence[str]
) -> list[tuple[Loc, str]]:
    """Configuration errors of a node group's EFA settings (key paths relative
    to the group)."""
    known = [t for n in instance_types if (t := instances.lookup(n))]
    if not known:
        return []  # reported by the instance type check
    problems: list[tuple[Loc, str]] = []
    missing = [t.name for t in known if t.efa is None]
    if settings.enabled and missing:
        problems.append(
            (
                ("efa", "enabled"),
                f"{', '.join(missing)} has no EFA the platform supports; EFA types: "
                + ", ".join(sorted(instances.EFA_FABRICS)),
            )
        )
    enabled = resolve_fabric(settings, instance_types) is not None
    if enabled and len({t.efa for t in known}) > 1:
        problems.append(
            (
                ("instanceTypes",),
                "an EFA group's types need one network-card layout (the launch template "
                "lists every interface); use one group per type",
            )
        )
    if enabled and len(subnet_ids) > 1:
        problems.append(
            (
                ("subnetIds",),
                "an EFA pool lives in one availability zone: give one subnet (or set "
                "efa.enabled: false)",
            )
        )
    if (settings.capacity_block or settings.capacity_reservation_id) and not enabled:
        problems.append((("efa",), "capacity reservations here are for EFA groups"))
    if settings.capacity_block and not settings.capacity_reservation_id:
        problems.append(
            (("efa", "capacityBlock"), "a Capacity Block needs efa.capacityReservationId")
        )
    return problems


def device_plugin_image(settings: EfaDevicePluginSettings, region: str | None) -> str:
    if settings.image:
        return settings.image
    where = region or "us-west-2"
    return (
        f"{EKS_IMAGE_ACCOUNT}.dkr.ecr.{where}.amazonaws.com/"
        f"{catalog.EFA_DEVICE_PLUGIN_REPOSITORY}:{DEVICE_PLUGIN_VERSION}"
    )


# ---------------------------------------------------------------------------
# Pure helpers: interfaces, launch template, EC2NodeClass, pods
# ---------------------------------------------------------------------------


def network_interfaces(
    fabric: EfaFabric, security_group_ids: pulumi.Input[Sequence[pulumi.Input[str]]]
) -> list[dict[str, Any]]:
    """Launch-template `network_interfaces` for all of an instance type's EFA devices:
    card 0 device 0 `efa` (EFA with ENA: the node's IP traffic), then one `efa-only`
    interface at device index 1 on every other card. The subnet comes from the node
    group (EKS rejects a subnet in the launch template)."""
    out: list[dict[str, Any]] = []
    for card in range(fabric.network_cards):
        out.append(
            {
                "network_card_index": card,
                "device_index": 0 if card == 0 else 1,
                "interface_type": "efa" if card == 0 else "efa-only",
                "delete_on_termination": "true",
                "associate_public_ip_address": "false",
                "security_groups": security_group_ids,
            }
        )
    return out


def efa_launch_template_args(
    fabric: EfaFabric,
    settings: EfaSettings,
    security_group_ids: pulumi.Input[Sequence[pulumi.Input[str]]],
    placement_group_name: pulumi.Input[str] | None,
) -> dict[str, Any]:
    """The arguments an `aws.ec2.LaunchTemplate` of an EFA node group adds (merge them
    into the group's own template: metadata options, block devices, tags). With
    network interfaces the template must not set `vpc_security_group_ids`: the
    security groups go on each interface."""
    args: dict[str, Any] = {"network_interfaces": network_interfaces(fabric, security_group_ids)}
    if placement_group_name is not None:
        args["placement"] = {"group_name": placement_group_name}
    if settings.capacity_reservation_id:
        args["capacity_reservation_specification"] = {
            "capacity_reservation_target": {
                "capacity_reservation_id": settings.capacity_reservation_id
            }
        }
    if settings.capacity_block:
        args["instance_market_options"] = {"market_type": "capacity-block"}
    return args


def karpenter_network_interfaces(fabric: EfaFabric) -> list[dict[str, Any]]:
    """EC2NodeClass `spec.networkInterfaces` (Karpenter >= 1.11) for all EFA devices:
    ENA on card 0 device 0, `efa-only` at card 0 device 1 and at device 0 of every
    other card (Karpenter's CRD requires `interface` as the primary)."""
    out: list[dict[str, Any]] = [
        {"networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "interface"},
        {"networkCardIndex": 0, "deviceIndex": 1, "interfaceType": "efa-only"},
    ]
    out += [
        {"networkCardIndex": card, "deviceIndex": 0, "interfaceType": "efa-only"}
        for card in range(1, fabric.network_cards)
    ]
    return out


def karpenter_node_class_fields(
    fabric: EfaFabric, settings: EfaSettings, placement_group_name: pulumi.Input[str] | None
) -> dict[str, Any]:
    """What an EFA pool's EC2NodeClass `spec` adds (Karpenter >= 1.11). Its
    `subnetSelectorTerms` must select the pool's one subnet, and its
    `securityGroupSelectorTerms` must include the fabric's security group."""
    fields: dict[str, Any] = {"networkInterfaces": karpenter_network_interfaces(fabric)}
    if placement_group_name is not None:
        fields["placementGroupSelector"] = {"name": placement_group_name}
    if settings.capacity_reservation_id:
        fields["capacityReservationSelectorTerms"] = [{"id": settings.capacity_reservation_id}]
    return fields


def node_labels() -> dict[str, str]:
    """Labels of EFA nodes: the EFA device plugin's DaemonSet selects them."""
    return {catalog.EFA_LABEL: "true"}


@dataclass(frozen=True)
class EfaPod:
    """What a pod on an EFA pool asks for and sets, from the pool's instance type."""

    interfaces: int  # vpc.amazonaws.com/efa per pod (the whole node's)
    gpudirect_rdma: bool
    hugepages: str = "5120Mi"

    @classmethod
    def for_fabric(cls, fabric: EfaFabric, hugepages: str = "5120Mi") -> EfaPod:
        return cls(fabric.network_cards, fabric.gpudirect_rdma, hugepages)

    def extended_resources(self) -> dict[str, str]:
        """Extended resources, requests = limits (Kubernetes requires it for both)."""
        return {
            catalog.EFA_RESOURCE: str(self.interfaces),
            catalog.HUGEPAGES_2MI_RESOURCE: self.hugepages,
        }

    def env(self) -> dict[str, str]:
        """libfabric and NCCL environment (aws-ofi-nccl's documented settings)."""
        env = {
            # Use the EFA provider, never fall back to libfabric's TCP/sockets providers.
            "FI_PROVIDER": "efa",
            # Fork safety for registered memory (DataLoader workers fork).
            "FI_EFA_FORK_SAFE": "1",
            # NCCL's bootstrap and out-of-band traffic: the pod's ENA interface
            # (aws-samples/awsome-distributed-training nccl-tests image).
            "NCCL_SOCKET_IFNAME": "^lo,docker,veth",
        }
        if self.gpudirect_rdma:
            # GPUDirect RDMA: the NIC reads and writes GPU memory (p4d and later).
            env["FI_EFA_USE_DEVICE_RDMA"] = "1"
        return env

    def annotations(self) -> dict[str, str]:
        """A multi-node job loses all ranks' progress when one node goes: keep
        Karpenter from consolidating or drifting its nodes while it runs."""
        return {catalog.DO_NOT_DISRUPT_ANNOTATION: "true"}


# ---------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EfaFabricArgs:
    group_name: str
    cluster_name: str
    vpc_id: pulumi.Input[str]
    settings: EfaSettings


class EfaPoolFabric(pulumi.ComponentResource):
    """The placement group and the security group of one EFA pool.

    Outputs: `security_group_id`, `placement_group_name` (None when off).
    """

    def __init__(
        self, name: str, args: EfaFabricArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:infra:EfaFabric", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        label = f"{args.cluster_name}-{args.group_name}-efa"
        self.placement_group: aws.ec2.PlacementGroup | None = None
        self.placement_group_name: pulumi.Output[str] | None = None
        if args.settings.placement_group:
            self.placement_group = aws.ec2.PlacementGroup(
                f"{name}-placement",
                name=label,
                strategy="cluster",
                tags={"Name": label},
                opts=child,
            )
            self.placement_group_name = self.placement_group.name
        # EFA's OS-bypass traffic only flows between members of a security group
        # that allows all traffic to and from itself (EC2 User Guide, efa-start).
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            name=label,
            description=f"EFA traffic between the nodes of {args.group_name}",
            vpc_id=args.vpc_id,
            ingress=[
                {
                    "description": "all traffic from the pool's own EFA interfaces",
                    "protocol": "-1",
                    "from_port": 0,
                    "to_port": 0,
                    "self": True,
                }
            ],
            egress=[
                {
                    "description": "all traffic to the pool's own EFA interfaces",
                    "protocol": "-1",
                    "from_port": 0,
                    "to_port": 0,
                    "self": True,
                }
            ],
            tags={"Name": label},
            opts=child,
        )
        self.security_group_id = self.security_group.id
        self.register_outputs(
            {
                "security_group_id": self.security_group_id,
                "placement_group_name": self.placement_group_name,
            }
        )


def pool_subnets(
    subnet_ids: pulumi.Input[list[str]], own_subnets: bool, index: int
) -> pulumi.Output[list[str]]:
    """The one subnet of an EFA pool: the group's own (validated to be one), or
    the `index`-th of the cluster's node subnets (one per zone, in zone order)."""

    def pick(ids: list[str]) -> list[str]:
        if own_subnets:
            return list(ids)
        if index >= len(ids):
            raise pulumi.RunError(f"efa.subnetIndex {index}: the cluster has {len(ids)} subnets")
        return [ids[index]]

    return pulumi.Output.from_input(subnet_ids).apply(pick)


def security_group_ids(
    fabric: EfaPoolFabric, cluster_security_group_id: pulumi.Input[str] | None
) -> list[pulumi.Input[str]]:
    """Security groups of every EFA interface of a managed node group: interfaces in
    a launch template replace the groups EKS would attach, so they list the cluster
    security group (node traffic) and the fabric's (EFA traffic)."""
    groups: list[pulumi.Input[str]] = [fabric.security_group_id]
    if cluster_security_group_id is not None:
        groups.insert(0, cluster_security_group_id)
    return groups


@dataclass(frozen=True)
class KarpenterEfa:
    """Where an EFA pool under Karpenter lives: its one subnet and that subnet's
    zone, the fabric's security group and placement group (from `EfaPoolFabric`)."""

    subnet_id: pulumi.Input[str]
    zone: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    placement_group_name: pulumi.Input[str] | None


def karpenter_hugepages_overlay(node_pool: str, hugepages: str) -> dict[str, Any]:
    """NodeOverlay spec (karpenter.sh/v1alpha1) that tells Karpenter's scheduling
    simulation the EFA pool's nodes have `hugepages-2Mi`: Karpenter knows no huge
    pages of any instance type (aws/karpenter-provider-aws#3315,
    kubernetes-sigs/karpenter#751), so without it a pod that requests them (every
    EFA pod) fits no instance type and no node is launched. Needs the controller's
    `nodeOverlay` feature gate (alpha in 1.14)."""
    return {
        "requirements": [{"key": "karpenter.sh/nodepool", "operator": "In", "values": [node_pool]}],
        "capacity": {catalog.HUGEPAGES_2MI_RESOURCE: hugepages},
    }


NAMESPACE = "kube-system"
NAME = "aws-efa-k8s-device-plugin"
KUBELET_DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"
INFINIBAND_DEVICES = "/dev/infiniband"
DIGEST_WAIVER_ANNOTATION = f"{catalog.LABEL_PREFIX}/digest-waiver"


def device_plugin_exceptions(image_has_digest: bool, waiver: str | None) -> dict[str, str]:
    """Why the plugin fails some generic container checks (checkov annotations)."""
    root = (
        "runs as root to create its socket in the kubelet's root-owned device-plugins "
        "directory and read the EFA device nodes"
    )
    no_http = "the plugin serves no HTTP endpoint; the kubelet tracks it over its gRPC socket"
    reasons = {
        "CKV_K8S_8": no_http,
        "CKV_K8S_9": no_http,
        "CKV_K8S_11": "no CPU limit: a throttled plugin delays EFA allocation on the node",
        "CKV_K8S_23": root,
        "CKV_K8S_40": root,
    }
    if not image_has_digest and waiver:
        # Both checks ask for what a digest gives: an image that cannot change.
        reasons["CKV_K8S_43"] = waiver.replace("=", ":")
        reasons["CKV_K8S_15"] = waiver.replace("=", ":")
    return meta.checkov_skips(reasons)


@dataclass(frozen=True)
class EfaDevicePluginArgs:
    settings: EfaDevicePluginSettings
    region: str | None


class EfaDevicePlugin(pulumi.ComponentResource):
    """The AWS EFA device plugin DaemonSet in kube-system, on EFA nodes only.

    Rendered here rather than from the eks-charts chart so the preview shows and
    validates it, and hardened as far as GPU nodes allow: the chart (v0.5.30)
    runs it privileged with hostNetwork since v0.5.9, for the Neuron-EFA topology
    on Trainium/Inferentia nodes (eks-charts#1245); before that it ran with
    privilege escalation off and every capability dropped, which is what it gets
    here. It stays root (its socket goes in the root-owned kubelet directory)
    with two hostPaths: the kubelet's device-plugin directory (registration) and
    /dev/infiniband (the EFA device nodes it enumerates and hands to pods).

    Outputs: `daemonset_name`, `namespace`, `image`.
    """

    def __init__(
        self, name: str, args: EfaDevicePluginArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:infra:EfaDevicePlugin", name, None, opts)
        labels = meta.labels(NAME, NAME, "device-plugin")
        image = device_plugin_image(args.settings, args.region)
        has_digest = "@sha256:" in image
        annotations = device_plugin_exceptions(has_digest, args.settings.digest_waiver)
        template_annotations: dict[str, str] = {
            f"{catalog.LABEL_PREFIX}/hostpath-device-plugins": "the kubelet's device-plugin "
            "directory: the plugin registers its socket there",
            f"{catalog.LABEL_PREFIX}/hostpath-infiniband": "/dev/infiniband: the EFA "
            "device nodes the plugin enumerates; pods get only the ones allocated to them",
        }
        if not has_digest and args.settings.digest_waiver:
            template_annotations[DIGEST_WAIVER_ANNOTATION] = args.settings.digest_waiver
        container = pod.Container(
            name=NAME,
            image=image,
            resources=pod.Resources(cpu="10m", memory="32Mi", memory_limit="128Mi"),
            mounts=[
                pod.Mount("device-plugins", KUBELET_DEVICE_PLUGINS),
                pod.Mount("infiniband", INFINIBAND_DEVICES, read_only=True),
            ],
            run_as_root=True,
        )
        template = pod.pod_template(
            pod.PodSpec(
                labels=labels,
                annotations=template_annotations,
                containers=[container],
                priority_class="system-node-critical",
                profile="node-daemon",
                gpu_daemon=True,
                # Only EFA nodes: this replaces the GPU daemon's node affinity.
                pod_affinity=scheduling.efa_node_affinity(),
                volumes=[
                    pod.Volume("device-plugins", host_path=KUBELET_DEVICE_PLUGINS),
                    pod.Volume("infiniband", host_path=INFINIBAND_DEVICES),
                ],
                scratch_size="64Mi",
            )
        )
        self.daemonset = k8s.apps.v1.DaemonSet(
            f"{name}-daemonset",
            metadata=meta.metadata(NAME, labels, NAMESPACE, annotations),
            spec={
                "selector": {"matchLabels": meta.selector(labels)},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": template,
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.daemonset_name = NAME
        self.namespace = NAMESPACE
        self.image = image
        self.register_outputs(
            {"daemonset_name": self.daemonset_name, "namespace": self.namespace, "image": image}
        )


def apply(efa: EfaPod | None, container: pod.Container) -> pod.Container:
    """The container with the EFA interfaces and huge pages in its resources
    (requests = limits) and the libfabric/NCCL environment (the workload's own
    environment wins). Unchanged without EFA."""
    if efa is None:
        return container
    resources = replace(
        container.resources, extended={**container.resources.extended, **efa.extended_resources()}
    )
    return replace(container, resources=resources, env={**efa.env(), **container.env})


def pod_annotations(efa: EfaPod | None) -> dict[str, str]:
    return efa.annotations() if efa else {}
