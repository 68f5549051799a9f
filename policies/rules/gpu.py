"""GPU rules: GPUs in limits, per-pod and per-node counts, scheduling onto GPU
nodes, priority classes, spot placement, quotas against capacity, node groups."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from infra import catalog, instances, quantity
from policies.rules.core import (
    GPU_NODES,
    GPU_TAINT,
    PolicyConfig,
    Resource,
    gpu_amounts,
    gpus_per_pod,
    pod_containers,
    pod_templates,
    requires_gpu_nodes,
    rule,
    tolerates_taint,
)


@rule(
    "gpu-in-limits",
    description="A container that asks for nvidia.com/gpu or a nvidia.com/mig-* resource sets it "
    "in limits (Kubernetes takes extended-resource requests from limits; requests "
    "alone are rejected or ignored).",
    enforcement="mandatory",
    severity="high",
    remediation="Put the GPU count in resources.limits (requests may be omitted or equal).",
)
def gpu_in_limits(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        for key, c in pod_containers(t.spec):
            requests, limits = gpu_amounts(c, "requests"), gpu_amounts(c, "limits")
            for name, amount in requests.items():
                where = f"{t.where}.{key} {c.get('name')!r}"
                if name not in limits:
                    yield f"{where} requests {name} but sets no limit for it"
                elif limits[name] != amount:
                    yield f"{where}: {name} request {amount:g} != limit {limits[name]:g}"


@rule(
    "gpu-per-pod-max",
    description="GPUs per pod do not exceed the environment's maximum.",
    enforcement="mandatory",
    severity="high",
    remediation="Ask for fewer GPUs per pod (use distributed training across pods), or raise "
    "mlplatform:policy.maxGpusPerPod for the environment.",
    config_keys=("maxGpusPerPod",),
)
def gpu_per_pod_max(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        n = gpus_per_pod(t.spec)
        if n > cfg.max_gpus_per_pod:
            allowed = cfg.max_gpus_per_pod
            yield f"{t.where} asks for {n} GPUs per pod; this environment allows {allowed}"


@rule(
    "gpu-pod-fits-node",
    description="GPUs per pod do not exceed the GPUs of the largest instance type in the stack.",
    enforcement="mandatory",
    severity="high",
    remediation="Ask for at most as many GPUs as the largest GPU node has, or add a node group of "
    "a larger instance type.",
    config_keys=("existingLargestNodeGpus",),
    stack=True,
)
def gpu_pod_fits_node(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    largest = max(
        [cfg.existing_largest_node_gpus]
        + [g for _, g, _ in gpu_node_groups_in(resources)]
        + [g for _, g, _ in gpu_node_pools_in(resources)],
        default=0,
    )
    for res in resources:
        for t in pod_templates(res):
            n = gpus_per_pod(t.spec)
            if n > largest:
                yield (
                    res,
                    f"{t.where} asks for {n} GPUs per pod; the largest GPU node in the stack has "
                    f"{largest}",
                )


@rule(
    "gpu-scheduling",
    description="GPU pods tolerate the nvidia.com/gpu taint and require GPU nodes; pods without "
    "GPUs do not tolerate it (they would take GPU nodes' CPU and memory and keep them "
    "from scaling down). DaemonSets (node agents) may tolerate it.",
    enforcement="mandatory",
    severity="medium",
    remediation="Build pod specs with infra/pod.py, which takes tolerations and affinity from "
    "infra/scheduling.py.",
)
def gpu_scheduling(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        gpus = gpus_per_pod(t.spec)
        tolerates = tolerates_taint(t.spec, catalog.GPU_TAINT_KEY)
        if gpus:
            if not tolerates:
                yield f"{t.where} asks for GPUs but does not tolerate the {GPU_TAINT} taint"
            if not requires_gpu_nodes(t.spec):
                yield f"{t.where} asks for GPUs but does not require nodes labelled {GPU_NODES}"
        elif tolerates and res.kind != "DaemonSet":
            yield f"{t.where} asks for no GPU but tolerates the {GPU_TAINT} taint"


@rule(
    "gpu-priority-class",
    description="GPU pods carry one of the platform's priority classes.",
    enforcement="mandatory",
    severity="medium",
    remediation=f"Set priorityClassName to one of {', '.join(catalog.PRIORITY_CLASS_NAMES)}.",
)
def gpu_priority_class(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        if (
            gpus_per_pod(t.spec)
            and t.spec.get("priorityClassName") not in catalog.PRIORITY_CLASS_NAMES
        ):
            cls = t.spec.get("priorityClassName")
            yield f"{t.where} asks for GPUs with priorityClassName {cls!r}"


@rule(
    "gpu-spot-placement",
    description="Only the priority classes the environment allows on spot tolerate the spot taint, "
    "so only preemptible work lands on SPOT GPU nodes.",
    enforcement="mandatory",
    severity="medium",
    remediation="Use a priority class listed in mlplatform:scheduling.spotPriorityClasses, or drop "
    "the spot toleration.",
    config_keys=("spotPriorityClasses",),
)
def gpu_spot_placement(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if res.kind == "DaemonSet":
        return
    for t in pod_templates(res):
        if (
            tolerates_taint(t.spec, catalog.SPOT_TAINT_KEY)
            and t.spec.get("priorityClassName") not in cfg.spot_priority_classes
        ):
            allowed = ", ".join(cfg.spot_priority_classes)
            yield (
                f"{t.where} tolerates the spot taint with priorityClassName "
                f"{t.spec.get('priorityClassName')!r} (spot allows {allowed})"
            )


@rule(
    "gpu-system-namespaces",
    description="No GPU pods in default or kube-system (the platform's daemons there ask for no "
    "GPUs).",
    enforcement="mandatory",
    severity="medium",
    remediation="Run GPU workloads in a team namespace, under its quota.",
)
def gpu_system_namespaces(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    ns = res.namespace or "default"
    if ns in ("default", "kube-system"):
        for t in pod_templates(res):
            if gpus_per_pod(t.spec):
                yield f"{t.where} asks for GPUs in namespace {ns!r}"


@rule(
    "gpu-namespace-quota",
    description="Every namespace that runs GPU pods has a ResourceQuota on "
    "requests.nvidia.com/gpu.",
    enforcement="mandatory",
    severity="high",
    remediation="Declare the namespace as a team in mlplatform:teams (it gets a GPU quota).",
    stack=True,
)
def gpu_namespace_quota(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    quota_namespaces = {
        res.namespace or "default"
        for res in resources
        if res.is_kubernetes
        and res.kind == "ResourceQuota"
        and f"requests.{catalog.GPU_RESOURCE}"
        in (((res.props.get("spec") or {}).get("hard")) or {})
    }
    for res in resources:
        ns = res.namespace or "default"
        if any(gpus_per_pod(t.spec) for t in pod_templates(res)) and ns not in quota_namespaces:
            yield (
                res,
                f"runs GPU pods in namespace {ns!r}, which has no "
                f"requests.{catalog.GPU_RESOURCE} quota",
            )


def gpu_node_groups_in(resources: list[Resource]) -> Iterator[tuple[Resource, int, int]]:
    """(node group, GPUs per node, maxSize) of the stack's GPU node groups."""
    for res in resources:
        if res.type != "aws:eks/nodeGroup:NodeGroup":
            continue
        types = res.props.get("instanceTypes") or []
        known = [t for n in types if (t := instances.lookup(n))]
        if not known:
            continue
        max_size = ((res.props.get("scalingConfig") or {}).get("maxSize")) or 0
        yield res, max(t.gpus for t in known), int(max_size)


def gpu_node_pools_in(resources: list[Resource]) -> Iterator[tuple[Resource, int, int]]:
    """(NodePool, GPUs per node, GPU limit) of the stack's Karpenter GPU NodePools
    (limit 0 when the pool sets none)."""
    for res in resources:
        if not (res.is_kubernetes and res.kind == "NodePool"):
            continue
        spec = res.props.get("spec") or {}
        known = [t for n in node_pool_instance_types(spec) if (t := instances.lookup(n))]
        if not known:
            continue
        limit = (spec.get("limits") or {}).get(catalog.GPU_RESOURCE)
        yield res, max(t.gpus for t in known), int(quantity.parse(limit)) if limit else 0


def node_pool_instance_types(spec: Mapping[str, Any]) -> list[str]:
    template = ((spec.get("template") or {}).get("spec")) or {}
    for r in template.get("requirements") or []:
        if r.get("key") == "node.kubernetes.io/instance-type" and r.get("operator") == "In":
            return list(r.get("values") or [])
    return []


def gpu_capacity(resources: list[Resource], cfg: PolicyConfig) -> int:
    """GPUs the stack can ever have: node groups at maxSize, NodePool GPU limits,
    and the existing nodes the config declares."""
    return (
        cfg.existing_gpu_capacity
        + sum(g * m for _, g, m in gpu_node_groups_in(resources))
        + sum(limit for _, _, limit in gpu_node_pools_in(resources))
    )


def _scoped(res: Resource) -> bool:
    """A quota for some pods only (scopes, scopeSelector): a budget inside the
    namespace's, not more capacity."""
    spec = res.props.get("spec") or {}
    return bool(spec.get("scopes") or spec.get("scopeSelector"))


@rule(
    "gpu-quota-capacity",
    description="The sum of team GPU quotas stays within the GPU capacity (node groups at "
    "maxSize, Karpenter NodePool GPU limits) times the allowed overcommit.",
    enforcement="mandatory",
    severity="medium",
    remediation="Lower team GPU quotas, raise node group maxSize (the NodePool GPU limit under "
    "Karpenter), or raise mlplatform:policy.gpuQuotaOvercommit.",
    config_keys=("gpuQuotaOvercommit", "existingGpuCapacity"),
    stack=True,
)
def gpu_quota_capacity(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    total = 0.0
    for res in resources:
        if res.is_kubernetes and res.kind == "ResourceQuota" and not _scoped(res):
            hard = ((res.props.get("spec") or {}).get("hard")) or {}
            value = hard.get(f"requests.{catalog.GPU_RESOURCE}")
            if value is not None:
                total += float(quantity.parse(value))
    capacity = gpu_capacity(resources, cfg)
    allowed = capacity * cfg.gpu_quota_overcommit
    if total > allowed:
        yield (
            None,
            (
                f"team GPU quotas add up to {total:g}, more than capacity {capacity} x overcommit "
                f"{cfg.gpu_quota_overcommit:g} = {allowed:g}"
            ),
        )


@rule(
    "gpu-always-on-demand",
    description="Always-on GPU demand (serving replicas at their minimum times GPUs per pod) fits "
    "the GPU capacity.",
    enforcement="mandatory",
    severity="high",
    remediation="Lower minReplicas or GPUs per replica, or add GPU capacity: replicas beyond it "
    "never schedule.",
    config_keys=("existingGpuCapacity",),
    stack=True,
)
def gpu_always_on_demand(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    hpa_min = {}
    for res in resources:
        if res.is_kubernetes and res.kind == "HorizontalPodAutoscaler":
            spec = res.props.get("spec") or {}
            target = spec.get("scaleTargetRef") or {}
            hpa_min[(res.namespace, target.get("kind"), target.get("name"))] = (
                spec.get("minReplicas") or 1
            )
    demand = 0
    for res in resources:
        if res.is_kubernetes and res.kind in ("Deployment", "StatefulSet"):
            meta = res.props.get("metadata") or {}
            spec = res.props.get("spec") or {}
            replicas = hpa_min.get(
                (res.namespace, res.kind, meta.get("name")), spec.get("replicas") or 1
            )
            for t in pod_templates(res):
                demand += int(replicas) * gpus_per_pod(t.spec)
    capacity = gpu_capacity(resources, cfg)
    if demand > capacity:
        yield (
            None,
            f"serving needs {demand} GPUs at minimum replicas; the stack can provide {capacity}",
        )


@rule(
    "gpu-node-group",
    description="GPU node groups use an NVIDIA AMI and GPU instance types only, stay within the "
    "environment's maxSize cap, and SPOT groups carry the spot taint (so only "
    "preemptible work lands there).",
    enforcement="mandatory",
    severity="high",
    remediation="Use AL2023_x86_64_NVIDIA or BOTTLEROCKET_x86_64_NVIDIA, GPU instance types of one "
    "shape, maxSize within mlplatform:policy.maxGpuNodeGroupSize; create node groups "
    "with infra/gpu_nodes.py.",
    config_keys=("maxGpuNodeGroupSize",),
)
def gpu_node_group(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if res.type != "aws:eks/nodeGroup:NodeGroup":
        return
    props = res.props
    types = props.get("instanceTypes") or []
    labels = props.get("labels") or {}
    gpu_types = [t for t in types if instances.lookup(t)]
    if not gpu_types and labels.get(catalog.GPU_PRESENT_LABEL) != "true":
        return  # a CPU node group
    ami = props.get("amiType")
    if ami is not None and "NVIDIA" not in ami:
        yield f"GPU node group uses AMI type {ami!r}, which has no NVIDIA driver"
    for t in types:
        if not instances.lookup(t):
            yield f"instance type {t!r} in a GPU node group has no GPU"
    max_size = (props.get("scalingConfig") or {}).get("maxSize")
    if max_size is not None and max_size > cfg.max_gpu_node_group_size:
        cap = cfg.max_gpu_node_group_size
        yield f"maxSize {max_size:g} exceeds this environment's cap of {cap}"
    taints = props.get("taints") or []
    keys = {t.get("key") for t in taints}
    if catalog.GPU_TAINT_KEY not in keys:
        yield f"GPU nodes lack the {GPU_TAINT} taint: pods without GPUs would land on them"
    if props.get("capacityType") == "SPOT" and catalog.SPOT_TAINT_KEY not in keys:
        yield (
            f"SPOT GPU node group lacks the {catalog.SPOT_TAINT_KEY} taint: "
            "non-preemptible work would land on it"
        )
