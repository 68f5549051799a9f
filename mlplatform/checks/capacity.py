"""The autoscaler against the cluster and the node groups."""

from __future__ import annotations

from infra import cluster_autoscaler, karpenter
from infra.config_types import Loc
from mlplatform.stack import StackSettings


def problems(s: StackSettings) -> list[tuple[Loc, str]]:
    """What each autoscaler needs, and group settings that would mean nothing."""
    found: list[tuple[Loc, str]] = []
    cap = s.capacity
    auto = s.autoscaler
    at: Loc = ("capacity", "autoscaler")
    version = s.cluster.kubernetes_version
    if auto != "none" and not s.cluster.uses_aws:
        found.append((at, f"{auto} scales EKS capacity; with cluster.kubeconfigContext use `none`"))
    if cap.external_autoscaler and auto != "none":
        found.append(
            (
                ("capacity", "externalAutoscaler"),
                f"only with autoscaler: none (this stack installs {auto}; never run two)",
            )
        )
    if auto == "karpenter":
        if s.cluster.mode == "existing" and cap.karpenter.discovery_tag is None:
            found.append(
                (
                    ("capacity", "karpenter", "discoveryTag"),
                    "required for Karpenter on an existing cluster: the value of the "
                    f"`{karpenter.DISCOVERY_TAG}` tag on the subnets and security group "
                    "nodes may use (tag them first)",
                )
            )
        if _minor(version) > _minor(karpenter.MAX_KUBERNETES_VERSION):
            found.append(
                (
                    ("cluster", "kubernetesVersion"),
                    f"Karpenter {karpenter.VERSION} supports Kubernetes up to "
                    f"{karpenter.MAX_KUBERNETES_VERSION}",
                )
            )
        for i, g in enumerate(s.gpu_node_groups):
            if g.min_size > 0:
                found.append(
                    (
                        ("gpuNodeGroups", i, "minSize"),
                        "must be 0 under Karpenter: nodes are launched for pending pods, "
                        "there is no minimum (keep capacity warm with a workload's "
                        "minReplicas, or use capacity.autoscaler: cluster-autoscaler)",
                    )
                )
            if g.desired_size is not None:
                found.append(
                    (
                        ("gpuNodeGroups", i, "desiredSize"),
                        "means nothing under Karpenter (it has no node count); remove it",
                    )
                )
    if (
        auto == "cluster-autoscaler"
        and cluster_autoscaler.image_for(cap.cluster_autoscaler, version) is None
    ):
        found.append(
            (
                ("capacity", "clusterAutoscaler", "image"),
                f"no Cluster Autoscaler release is pinned for Kubernetes {version} "
                f"(pinned: {', '.join(cluster_autoscaler.IMAGES)}); name an image",
            )
        )
    # Settings of the autoscaler the stack does not run would mean nothing.
    if auto != "karpenter":
        if cap.karpenter.model_fields_set:
            found.append(
                (("capacity", "karpenter"), f"Karpenter settings, but the autoscaler is {auto}")
            )
        for i, g in enumerate(s.gpu_node_groups):
            if "role" in g.model_fields_set:
                found.append(
                    (
                        ("gpuNodeGroups", i, "role"),
                        f"only Karpenter's consolidation uses it (the autoscaler is {auto})",
                    )
                )
    if auto != "cluster-autoscaler" and cap.cluster_autoscaler.model_fields_set:
        found.append(
            (
                ("capacity", "clusterAutoscaler"),
                f"Cluster Autoscaler settings, but the autoscaler is {auto}",
            )
        )
    why = {
        "cluster-autoscaler": "the Cluster Autoscaler never grows a group past maxSize",
        "karpenter": "the NodePool's GPU limit would be 0",
        "none": "the group could never have a node",
    }[auto]
    for i, g in enumerate(s.gpu_node_groups):
        if g.max_size < 1:
            found.append((("gpuNodeGroups", i, "maxSize"), f"must be at least 1: {why}"))
    return found


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))
