"""Scheduling: the platform's PriorityClasses and the only code that writes GPU
taints, tolerations and node affinities.

Node groups take their taints from `gpu_node_taints()`; pods take the matching
tolerations and affinity from `gpu_placement()` (workloads) or
`gpu_daemon_placement()` (node daemons such as the device plugin). Keeping both
sides here is what guarantees they agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field

from infra import catalog, meta
from infra.config_types import PriorityClassName, _Model


class SchedulingSettings(_Model):
    """Placement rules shared by every workload."""

    spot_priority_classes: list[PriorityClassName] = Field(
        ["training-preemptible"],
        description="Priority classes whose GPU pods tolerate the spot taint and so may "
        "run on SPOT node groups. Only work that checkpoints and can lose a node "
        "belongs there; dev may list more to use a single spot group.",
    )


NO_SCHEDULE = catalog.NO_SCHEDULE_EFFECT
# Karpenter never voluntarily disrupts (consolidates, drifts) a node running a
# pod with this annotation: training pods carry it, so saving money never
# kills a run (workloads/common.py sets it on training and distributed pods).
DO_NOT_DISRUPT_ANNOTATION = "karpenter.sh/do-not-disrupt"
ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str = NO_SCHEDULE

    @property
    def aws_effect(self) -> str:
        """The effect as the EKS node group API spells it."""
        return {
            "NoSchedule": "NO_SCHEDULE",
            "NoExecute": "NO_EXECUTE",
            "PreferNoSchedule": "PREFER_NO_SCHEDULE",
        }[self.effect]

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"

    def toleration(self) -> dict[str, Any]:
        # Exists (not Equal): a change of the taint's value must not strand pods.
        return {"key": self.key, "operator": "Exists", "effect": self.effect}


GPU_TAINT = Taint(catalog.GPU_TAINT_KEY, catalog.GPU_TAINT_VALUE)
SPOT_TAINT = Taint(catalog.SPOT_TAINT_KEY, catalog.SPOT_TAINT_VALUE)


def gpu_node_taints(spot: bool) -> list[Taint]:
    """Taints of a GPU node group: every GPU node repels pods that asked for no
    GPU; spot nodes also repel GPU pods that cannot lose their node."""
    return [GPU_TAINT, SPOT_TAINT] if spot else [GPU_TAINT]


def tolerates_spot(priority_class: str, spot_priority_classes: Sequence[str]) -> bool:
    return priority_class in spot_priority_classes


def gpu_placement(
    *,
    priority_class: str,
    spot_priority_classes: Sequence[str],
    accelerators: Sequence[str] = (),
) -> dict[str, Any]:
    """`tolerations` and `affinity` for a pod that asks for GPUs.

    The pod tolerates the GPU taint (and the spot taint when its priority class
    may run on spot) and requires a node labelled `nvidia.com/gpu.present=true`,
    optionally of the given accelerator models (`k8s.amazonaws.com/accelerator`).
    """
    tolerations = [GPU_TAINT.toleration()]
    if tolerates_spot(priority_class, spot_priority_classes):
        tolerations.append(SPOT_TAINT.toleration())
    expressions = [
        {"key": catalog.GPU_PRESENT_LABEL, "operator": "In", "values": ["true"]},
    ]
    if accelerators:
        expressions.append(
            {"key": catalog.ACCELERATOR_LABEL, "operator": "In", "values": sorted(accelerators)}
        )
    return {"tolerations": tolerations, "affinity": _required_node_affinity(expressions)}


def gpu_daemon_placement(
    *, skip_host_device_plugin: bool = False, skip_device_plugin_values: Sequence[str] = ()
) -> dict[str, Any]:
    """Placement of a per-GPU-node daemon (device plugin, DCGM exporter): every GPU
    node, spot or not, and nothing else. `skip_host_device_plugin` leaves out nodes
    whose OS runs the device plugin itself (Bottlerocket NVIDIA);
    `skip_device_plugin_values` also those whose device plugin label has one of
    these values (pools with their own device plugin config)."""
    expressions: list[dict[str, Any]] = [
        {"key": catalog.GPU_PRESENT_LABEL, "operator": "In", "values": ["true"]},
    ]
    if skip_host_device_plugin:
        # NotIn also matches nodes without the label (clusters not built by us).
        expressions.append(
            {
                "key": catalog.DEVICE_PLUGIN_LABEL,
                "operator": "NotIn",
                "values": ["host", *skip_device_plugin_values],
            }
        )
    return {
        "tolerations": [GPU_TAINT.toleration(), SPOT_TAINT.toleration()],
        "affinity": _required_node_affinity(expressions),
    }


def efa_node_affinity() -> dict[str, Any]:
    """Required node affinity for a daemon of EFA nodes only (the EFA device plugin):
    nodes labelled `mlplatform.io/efa=true` by their node group or NodePool."""
    return _required_node_affinity(
        [{"key": catalog.EFA_LABEL, "operator": "In", "values": ["true"]}]
    )


def same_zone_affinity(match_labels: dict[str, str]) -> dict[str, Any]:
    """Keep the pods matching `match_labels` in one availability zone: DDP traffic
    between zones is slower and billed. The first pod matches its own term, so it
    schedules anywhere and pins the zone for the rest."""
    return {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": dict(match_labels)}, "topologyKey": ZONE_LABEL}
            ]
        }
    }


def _required_node_affinity(expressions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


class PriorityClasses(pulumi.ComponentResource):
    """The platform's PriorityClasses (`infra.catalog.PRIORITY_CLASSES`).

    Outputs: `names` (class name -> PriorityClass name), the same strings
    workloads put in `priorityClassName`.
    """

    names: dict[str, str]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:scheduling:PriorityClasses", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.classes = {
            spec.name: k8s.scheduling.v1.PriorityClass(
                f"{name}-{spec.name}",
                metadata=meta.metadata(
                    spec.name, meta.labels("priority-class", spec.name, "scheduling")
                ),
                value=spec.value,
                global_default=False,
                preemption_policy=spec.preemption_policy,
                description=spec.description,
                opts=child,
            )
            for spec in catalog.PRIORITY_CLASSES
        }
        self.names = {spec.name: spec.name for spec in catalog.PRIORITY_CLASSES}
        self.register_outputs({"names": self.names})
