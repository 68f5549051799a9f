"""Capacity and node rules: an autoscaler for every GPU pool, NodePools,
IMDSv2, and NetworkPolicies that are enforced."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from infra import catalog, instances, quantity
from policies.rules.core import (
    GPU_TAINT,
    PolicyConfig,
    Resource,
    pod_containers,
    pod_templates,
    rule,
)
from policies.rules.gpu import gpu_node_groups_in, gpu_node_pools_in, node_pool_instance_types
from policies.rules.queueing import team_namespaces_in


def _karpenter_installed(resources: list[Resource]) -> bool:
    return any(
        res.type == "kubernetes:helm.sh/v3:Release"
        and str(res.props.get("chart") or "").rstrip("/").endswith("/karpenter")
        for res in resources
    )


def _cluster_autoscaler_installed(resources: list[Resource]) -> bool:
    return any(
        res.is_kubernetes
        and res.kind == "Deployment"
        and any(
            "/cluster-autoscaler:" in str(c.get("image") or "")
            or "/cluster-autoscaler@" in str(c.get("image") or "")
            for t in pod_templates(res)
            for _, c in pod_containers(t.spec)
        )
        for res in resources
    )


@rule(
    "gpu-capacity-autoscaled",
    description="GPU capacity that starts at zero has an autoscaler to bring it up: a GPU node "
    "group at minSize 0 needs the Cluster Autoscaler (the stack's or the cluster's own), a "
    "NodePool needs Karpenter; and never both autoscalers at once.",
    enforcement="mandatory",
    severity="high",
    remediation="Set mlplatform:capacity.autoscaler (karpenter or cluster-autoscaler), or "
    "declare capacity.externalAutoscaler when the cluster runs its own.",
    config_keys=("externalAutoscaler",),
    stack=True,
)
def gpu_capacity_autoscaled(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    karpenter = _karpenter_installed(resources)
    ca = _cluster_autoscaler_installed(resources)
    if karpenter and ca:
        yield None, "Karpenter and the Cluster Autoscaler would both react to the same pending pods"
    for res, _, _ in gpu_node_groups_in(resources):
        min_size = ((res.props.get("scalingConfig") or {}).get("minSize")) or 0
        if min_size == 0 and not (ca or cfg.external_autoscaler):
            yield (
                res,
                "GPU node group at minSize 0 with no autoscaler: its nodes never start and "
                "GPU pods stay Pending",
            )
    if not karpenter:
        for res, _, _ in gpu_node_pools_in(resources):
            yield res, "NodePool without Karpenter: nothing launches its nodes"


@rule(
    "gpu-node-pool",
    description="Karpenter GPU NodePools allow GPU instance types only, carry the nvidia.com/gpu "
    "taint (and the spot taint when they may launch spot), and set a GPU limit within the "
    "environment's cap.",
    enforcement="mandatory",
    severity="high",
    remediation="Create NodePools with infra/karpenter.py from mlplatform:gpuNodeGroups.",
    config_keys=("maxGpuNodeGroupSize",),
)
def gpu_node_pool(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if not (res.is_kubernetes and res.kind == "NodePool"):
        return
    spec = res.props.get("spec") or {}
    template = ((spec.get("template") or {}).get("spec")) or {}
    labels = ((((spec.get("template") or {}).get("metadata")) or {}).get("labels")) or {}
    types = node_pool_instance_types(spec)
    known = [t for n in types if (t := instances.lookup(n))]
    if not known and labels.get(catalog.GPU_PRESENT_LABEL) != "true":
        return  # a CPU pool
    if not types:
        yield "GPU NodePool does not restrict node.kubernetes.io/instance-type to GPU types"
    for name in types:
        if not instances.lookup(name):
            yield f"instance type {name!r} in a GPU NodePool has no GPU"
    keys = {t.get("key") for t in template.get("taints") or []}
    if catalog.GPU_TAINT_KEY not in keys:
        yield f"GPU nodes lack the {GPU_TAINT} taint: pods without GPUs would land on them"
    capacity_types = ["on-demand"]
    for r in template.get("requirements") or []:
        if r.get("key") == "karpenter.sh/capacity-type":
            capacity_types = list(r.get("values") or [])
    if "spot" in capacity_types and catalog.SPOT_TAINT_KEY not in keys:
        yield (
            f"NodePool may launch spot nodes without the {catalog.SPOT_TAINT_KEY} taint: "
            "non-preemptible work would land on them"
        )
    limit = (spec.get("limits") or {}).get(catalog.GPU_RESOURCE)
    if limit is None:
        yield f"no limits.{catalog.GPU_RESOURCE}: the pool could grow without bound"
    elif known:
        gpus = max(t.gpus for t in known)
        cap = cfg.max_gpu_node_group_size * gpus
        if float(quantity.parse(limit)) > cap:
            yield (
                f"GPU limit {limit} exceeds this environment's cap of "
                f"{cfg.max_gpu_node_group_size} nodes x {gpus} GPUs"
            )


@rule(
    "node-imdsv2",
    description="Every node the stack creates requires IMDSv2 with a hop limit of 1, so pods "
    "cannot take the node role's credentials (managed node groups through a launch "
    "template, Karpenter through the EC2NodeClass).",
    enforcement="mandatory",
    severity="high",
    remediation="Create node groups with infra/nodes.py's launch template and EC2NodeClasses "
    "with infra/karpenter.py (metadataOptions httpTokens: required, hop limit 1).",
)
def node_imdsv2(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    options: Mapping[str, Any] | None = None
    if res.type == "aws:eks/nodeGroup:NodeGroup":
        if not res.props.get("launchTemplate"):
            yield ("node group uses the EKS default launch template (IMDSv1 allowed, hop limit 2)")
        return
    if res.type == "aws:ec2/launchTemplate:LaunchTemplate":
        options = res.props.get("metadataOptions") or {}
        tokens, hops = options.get("httpTokens"), options.get("httpPutResponseHopLimit")
    elif res.is_kubernetes and res.kind == "EC2NodeClass":
        options = (res.props.get("spec") or {}).get("metadataOptions") or {}
        tokens = options.get("httpTokens", "required")  # Karpenter's defaults
        hops = options.get("httpPutResponseHopLimit", 1)
    else:
        return
    if options.get("httpEndpoint") == "disabled":
        return
    if tokens != "required":
        yield f"instance metadata allows IMDSv1 (httpTokens {tokens!r})"
    if hops is None or hops > 1:
        yield f"instance metadata hop limit {hops} lets pods reach the node role's credentials"


def _vpc_cni_enforces(res: Resource) -> bool:
    try:
        values = json.loads(res.props.get("configurationValues") or "{}")
    except (TypeError, ValueError):
        return False
    return isinstance(values, dict) and str(values.get("enableNetworkPolicy")).lower() == "true"


def _vpc_cni_addons(resources: list[Resource]) -> list[Resource]:
    return [
        res
        for res in resources
        if res.type == "aws:eks/addon:Addon" and res.props.get("addonName") == "vpc-cni"
    ]


@rule(
    "network-policy-enforced",
    description="Team isolation (NetworkPolicies in team namespaces) is only declared where "
    "something enforces it: the vpc-cni add-on with enableNetworkPolicy, or a cluster the "
    "config says enforces NetworkPolicies.",
    enforcement="mandatory",
    severity="high",
    remediation="In create mode the stack manages vpc-cni with enforcement on; on an existing "
    "cluster enable a network policy engine and set mlplatform:cluster.networkPolicyEnforced.",
    config_keys=("networkPolicyEnforced",),
    stack=True,
)
def network_policy_enforced(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    addons = _vpc_cni_addons(resources)
    for res in addons:
        if not _vpc_cni_enforces(res):
            yield res, "the vpc-cni add-on leaves NetworkPolicy enforcement off"
    if cfg.network_policy_enforced or any(_vpc_cni_enforces(res) for res in addons):
        return
    team_namespaces = team_namespaces_in(resources)
    isolated = sorted(
        {
            str(res.namespace)
            for res in resources
            if res.is_kubernetes
            and res.kind == "NetworkPolicy"
            and res.namespace in team_namespaces
        }
    )
    if isolated:
        yield (
            None,
            f"team namespaces {', '.join(isolated)} declare NetworkPolicies, "
            "but nothing in this cluster enforces them: every pod can still reach every other",
        )
