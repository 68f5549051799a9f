"""Capacity: which autoscaler turns pending GPU pods into nodes.

`mlplatform:capacity.autoscaler`, one per cluster (two would react to the same
pending pod):

- `karpenter` (default in `create` mode): infra/karpenter.py; each GPU group
  becomes a NodePool and an EC2NodeClass, no managed node group.
- `cluster-autoscaler`: the GPU groups are EKS managed node groups
  (infra/gpu_nodes.py) that infra/cluster_autoscaler.py scales.
- `none` (default in `existing` mode): managed node groups at their configured
  sizes; the cluster's own autoscaler, if any, is declared with
  `externalAutoscaler`.

The checks that need the cluster and the groups are in
mlplatform/settings.py (`_check_capacity`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infra.cluster_autoscaler import ClusterAutoscalerSettings
from infra.config_types import _Model
from infra.karpenter import KarpenterSettings

Autoscaler = Literal["karpenter", "cluster-autoscaler", "none"]


class CapacitySettings(_Model):
    """How GPU capacity follows demand."""

    autoscaler: Autoscaler | None = Field(
        None,
        description="`karpenter`, `cluster-autoscaler` or `none`. Default: `karpenter` in "
        "`create` mode, `none` in `existing` mode (the cluster's own autoscaler). "
        "Karpenter: GPU groups become NodePools, nodes are launched for pending pods. "
        "`cluster-autoscaler`: GPU groups are managed node groups the autoscaler resizes. "
        "`none`: groups stay at their sizes.",
    )
    karpenter: KarpenterSettings = Field(
        default_factory=KarpenterSettings, description="Karpenter settings."
    )
    cluster_autoscaler: ClusterAutoscalerSettings = Field(
        default_factory=ClusterAutoscalerSettings, description="Cluster Autoscaler settings."
    )
    external_autoscaler: bool = Field(
        False,
        description="`autoscaler: none` only: the cluster already runs a Cluster Autoscaler "
        "that discovers the stack's node groups by their tags. Without it, a GPU group at "
        "`minSize: 0` is capacity that never appears (a mandatory policy finding).",
    )

    def resolved(self, cluster_mode: str) -> Autoscaler:
        if self.autoscaler is not None:
            return self.autoscaler
        return "karpenter" if cluster_mode == "create" else "none"
