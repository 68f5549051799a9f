"""EFA fabric rules: multi-node GPU pods on EFA nodes of one zone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from infra import catalog, instances
from policies.rules.core import (
    PodTemplate,
    PolicyConfig,
    Resource,
    gpus_per_pod,
    pod_containers,
    pod_templates,
    rule,
)
from policies.rules.gpu import gpu_node_groups_in, gpu_node_pools_in, node_pool_instance_types

_DISTRIBUTED_KINDS = ("distributed-training", "nccl-test")


def _multi_node_gpu_templates(res: Resource) -> list[PodTemplate]:
    """Pod templates of a multi-node distributed job (Indexed Job of a distributed
    workload, or a PyTorchJob) that ask for GPUs."""
    if not res.is_kubernetes:
        return []
    templates = pod_templates(res)
    if res.kind == "PyTorchJob":
        pods = sum(int(t.replicas or 0) for t in templates)
    elif res.kind == "Job":
        labels = ((res.props.get("metadata") or {}).get("labels")) or {}
        if labels.get(f"{catalog.LABEL_PREFIX}/workload-kind") not in _DISTRIBUTED_KINDS:
            return []
        pods = int((res.props.get("spec") or {}).get("parallelism") or 0)
    else:
        return []
    return [t for t in templates if gpus_per_pod(t.spec)] if pods > 1 else []


def _required_accelerators(pod: Mapping[str, Any]) -> set[str] | None:
    """Accelerator models a pod's required node affinity allows (None: any)."""
    affinity = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    allowed: set[str] | None = None
    for term in affinity.get("nodeSelectorTerms") or []:
        for e in term.get("matchExpressions") or []:
            if e.get("key") == catalog.ACCELERATOR_LABEL and e.get("operator") == "In":
                allowed = (allowed or set()) | set(e.get("values") or [])
    return allowed


def _requests_efa(pod: Mapping[str, Any]) -> bool:
    return any(
        ((c.get("resources") or {}).get("limits") or {}).get(catalog.EFA_RESOURCE)
        for _, c in pod_containers(pod)
    )


@rule(
    "efa-multi-node",
    description="A distributed job of more than one node that runs on EFA-capable instance "
    "types (p4d, p4de, p5, p5e, p5en) requests the EFA interfaces: without them NCCL "
    "falls back to TCP sockets on the VPC network, several times slower.",
    enforcement="mandatory",
    severity="high",
    remediation="Turn EFA on for the node group (`efa.enabled`, the default on these types) "
    "and leave the workload's `efa` unset or true; pods then request vpc.amazonaws.com/efa.",
    stack=True,
)
def efa_multi_node(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    groups = []  # (accelerator label, EFA-capable) of node groups and NodePools
    for res, _, _ in gpu_node_groups_in(resources):
        known = [i for n in res.props.get("instanceTypes") or [] if (i := instances.lookup(n))]
        accelerator = (res.props.get("labels") or {}).get(catalog.ACCELERATOR_LABEL)
        groups.append((accelerator, all(i.efa is not None for i in known)))
    for res, _, _ in gpu_node_pools_in(resources):
        spec = res.props.get("spec") or {}
        known = [i for n in node_pool_instance_types(spec) if (i := instances.lookup(n))]
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        accelerator = labels.get(catalog.ACCELERATOR_LABEL)
        groups.append((accelerator, all(i.efa is not None for i in known)))
    if not groups:
        return
    for res in resources:
        for t in _multi_node_gpu_templates(res):
            allowed = _required_accelerators(t.spec)
            eligible = [efa for acc, efa in groups if allowed is None or acc in allowed]
            if eligible and all(eligible) and not _requests_efa(t.spec):
                yield (
                    res,
                    f"{t.where} runs on several EFA-capable nodes without requesting "
                    f"{catalog.EFA_RESOURCE}",
                )


@rule(
    "efa-single-zone",
    description="An EFA pool lives in one availability zone: a managed node group in one "
    "subnet; under Karpenter an EC2NodeClass with EFA interfaces that selects one subnet by "
    "id, and a NodePool of EFA nodes that requires one topology.kubernetes.io/zone. EFA "
    "traffic does not cross zones, and a cluster placement group is one zone.",
    enforcement="mandatory",
    severity="high",
    remediation="Give the group one subnet (`subnetIds`) or leave it to `efa.subnetIndex` "
    "(infra/efa.py renders the one subnet and its zone on both paths).",
)
def efa_single_zone(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if res.type == "aws:eks/nodeGroup:NodeGroup":
        if (res.props.get("labels") or {}).get(catalog.EFA_LABEL) != "true":
            return
        subnets = res.props.get("subnetIds")
        if isinstance(subnets, list) and len(subnets) > 1:
            yield f"EFA node group spans {len(subnets)} subnets; EFA pools need one zone"
        return
    if not res.is_kubernetes:
        return
    spec = res.props.get("spec") or {}
    if res.kind == "EC2NodeClass":
        nics = spec.get("networkInterfaces") or []
        if not any(n.get("interfaceType") == "efa-only" for n in nics):
            return
        terms = spec.get("subnetSelectorTerms") or []
        if len(terms) != 1 or not terms[0].get("id"):
            yield (
                "EC2NodeClass with EFA interfaces selects its subnets by tags or several "
                "terms; EFA pools need one subnet (by id) in one zone"
            )
    elif res.kind == "NodePool":
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if labels.get(catalog.EFA_LABEL) != "true":
            return
        zones = [
            r
            for r in (template.get("spec") or {}).get("requirements") or []
            if r.get("key") == "topology.kubernetes.io/zone"
        ]
        if not any(r.get("operator") == "In" and len(r.get("values") or []) == 1 for r in zones):
            yield (
                "NodePool of EFA nodes does not require one topology.kubernetes.io/zone; "
                "Karpenter could launch its nodes in several zones"
            )
