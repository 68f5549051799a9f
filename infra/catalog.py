"""Well-known names of the platform: labels, taints, GPU resources, priority classes.

Pure data with no third-party imports, so the settings model, the components,
the offline preview and the policy pack (its own virtualenv) all read the same
names. Only `infra/scheduling.py` turns these into tolerations and affinities.
"""

from __future__ import annotations

from dataclasses import dataclass

PART_OF = "mlplatform"
MANAGED_BY = "pulumi"
LABEL_PREFIX = "mlplatform.io"

# GPU resources as the NVIDIA device plugin advertises them.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_SHARED_RESOURCE = "nvidia.com/gpu.shared"  # time-slicing with renameByDefault
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"  # mixed MIG strategy: nvidia.com/mig-1g.10gb, ...


def is_gpu_resource(resource_name: str) -> bool:
    return resource_name in (
        GPU_RESOURCE,
        GPU_SHARED_RESOURCE,
    ) or resource_name.startswith(MIG_RESOURCE_PREFIX)


# Elastic Fabric Adapter (infra/efa.py): the resource the AWS EFA device plugin
# advertises, and the label EFA node groups carry (the plugin's DaemonSet selects it).
EFA_RESOURCE = "vpc.amazonaws.com/efa"
EFA_LABEL = f"{LABEL_PREFIX}/efa"
# AWS publishes the EFA device plugin in Amazon EKS's ECR registries by tag only:
# the one image the `image-pinned` rule lets run by tag with a stated waiver.
EFA_DEVICE_PLUGIN_REPOSITORY = "eks/aws-efa-k8s-device-plugin"
EFA_DEVICE_PLUGIN_REGISTRY = r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"
HUGEPAGES_2MI_RESOURCE = "hugepages-2Mi"
# Resources Kueue leaves out of quota (its Configuration's
# resources.excludeResourcePrefixes): an EFA pod takes its node's interfaces and
# huge pages with the node's GPUs, which the queues already count. Without this,
# Kueue cannot admit a job that asks for them (no ClusterQueue covers them).
QUEUE_EXCLUDED_RESOURCE_PREFIXES = (EFA_RESOURCE, "hugepages-")
# Karpenter does not consolidate or drift a node whose pods carry this annotation.
DO_NOT_DISRUPT_ANNOTATION = "karpenter.sh/do-not-disrupt"

# Node labels and taints every GPU node group carries.
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"  # not set by GFD: the node group sets it
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"  # Cluster Autoscaler's GPU label on AWS
NODE_GROUP_LABEL = f"{LABEL_PREFIX}/node-group"
DEVICE_PLUGIN_LABEL = f"{LABEL_PREFIX}/nvidia-device-plugin"  # "daemonset" or "host"
CAPACITY_TYPE_LABEL = f"{LABEL_PREFIX}/capacity-type"  # "on-demand" or "spot"
NODE_ROLE_LABEL = f"{LABEL_PREFIX}/node-role"  # "system" on the system node group

NO_SCHEDULE_EFFECT = "NoSchedule"
GPU_TAINT_KEY = GPU_RESOURCE
GPU_TAINT_VALUE = "true"
# Spot GPU nodes carry a second taint: only priority classes the environment
# lists in `scheduling.spotPriorityClasses` tolerate it.
SPOT_TAINT_KEY = CAPACITY_TYPE_LABEL
SPOT_TAINT_VALUE = "spot"

# Namespaces whose labels the network policies select on.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
TEAM_LABEL = f"{LABEL_PREFIX}/team"

SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "default")


@dataclass(frozen=True)
class PriorityClassSpec:
    name: str
    value: int
    preemption_policy: str  # PreemptLowerPriority | Never
    description: str
    preemptible: bool  # may run on capacity that can vanish (spot) and be preempted


# Values leave room between classes for operators to add their own, and stay far
# below system-cluster-critical (2e9). No class is globalDefault: a pod with no
# class gets priority 0, below all of these.
PRIORITY_CLASSES: tuple[PriorityClassSpec, ...] = (
    PriorityClassSpec(
        "serving-critical",
        1_000_000,
        "PreemptLowerPriority",
        "Online inference. Preempts any training pod so serving can scale out under load.",
        preemptible=False,
    ),
    PriorityClassSpec(
        "training-high",
        100_000,
        "PreemptLowerPriority",
        "Deadline-bound training (release candidates, scheduled retraining). "
        "Preempts default and preemptible training.",
        preemptible=False,
    ),
    PriorityClassSpec(
        "training-default",
        10_000,
        "PreemptLowerPriority",
        "Ordinary training and batch inference. Preempts only preemptible training.",
        preemptible=False,
    ),
    PriorityClassSpec(
        "training-preemptible",
        1_000,
        "Never",
        "Opportunistic training that checkpoints often: never preempts others, is "
        "preempted first, and may run on spot capacity.",
        preemptible=True,
    ),
)
PRIORITY_CLASS_NAMES: tuple[str, ...] = tuple(p.name for p in PRIORITY_CLASSES)
PRIORITY_CLASS_BY_NAME = {p.name: p for p in PRIORITY_CLASSES}

# Classes the platform's own node daemons use (they live in kube-system).
SYSTEM_PRIORITY_CLASSES = ("system-node-critical", "system-cluster-critical")
