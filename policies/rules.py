"""The platform's policy rules: pure functions over resources as the Pulumi engine
sees them (type token, camelCase props).

One set of rules, two runners:
- `policies/__main__.py` wraps them into a Pulumi PolicyPack
  (`pulumi preview --policy-pack policies --policy-pack-config policies/config/<stack>.json`);
- the offline preview (`tools/policy.py`) runs them on the props the mocks record
  and writes `build/<stack>/policy.json`.

Nothing here imports Pulumi: the pack's virtualenv has only pulumi-policy, and the
tests call the rules directly. During a real preview some props are still unknown
(None): a rule that cannot see a value does not guess, it skips that check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from infra import catalog, instances, quantity
from policies import queue_sim

Enforcement = Literal["mandatory", "advisory", "disabled"]
Severity = Literal["critical", "high", "medium", "low"]


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """A resource as a policy sees it."""

    type: str  # "kubernetes:apps/v1:Deployment", "aws:eks/nodeGroup:NodeGroup"
    name: str  # the Pulumi resource name
    props: Mapping[str, Any]

    @property
    def is_kubernetes(self) -> bool:
        return self.type.startswith("kubernetes:") and "kind" in self.props

    @property
    def kind(self) -> str:
        return str(self.props.get("kind") or self.type.rsplit(":", 1)[-1])

    @property
    def namespace(self) -> str | None:
        meta = self.props.get("metadata") or {}
        return meta.get("namespace")

    @property
    def label(self) -> str:
        """How findings name the resource: `namespace/Kind/name` for Kubernetes objects."""
        if self.is_kubernetes:
            meta = self.props.get("metadata") or {}
            ns = meta.get("namespace")
            name = meta.get("name") or self.name
            return f"{ns}/{self.kind}/{name}" if ns else f"{self.kind}/{name}"
        return f"{self.type.rsplit(':', 1)[-1]}/{self.name}"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class PolicyConfig:
    """Per-environment thresholds. The offline preview builds it from the stack
    settings (`mlplatform:policy`); the policy pack reads the same values, by
    their camelCase names, from `--policy-pack-config` (policies/config/<stack>.json,
    generated from those settings)."""

    max_gpus_per_pod: int = 8
    max_gpu_node_group_size: int = 16
    gpu_quota_overcommit: float = 1.0
    require_image_digests: bool = False
    allow_load_balancers: bool = False
    spot_priority_classes: tuple[str, ...] = ("training-preemptible",)
    existing_gpu_capacity: int = 0  # GPUs on nodes the stack does not create
    existing_largest_node_gpus: int = 0
    # The cluster runs its own autoscaler for the stack's node groups.
    external_autoscaler: bool = False
    # The cluster enforces NetworkPolicies by means the stack does not manage.
    network_policy_enforced: bool = False

    @classmethod
    def keys(cls) -> dict[str, str]:
        """camelCase config key -> field name."""
        return {_camel(f.name): f.name for f in fields(cls)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PolicyConfig:
        """From camelCase policy config (unknown keys, such as enforcementLevel, ignored)."""
        kwargs = {
            name: values[key] for key, name in cls.keys().items() if values.get(key) is not None
        }
        if "spot_priority_classes" in kwargs:
            kwargs["spot_priority_classes"] = tuple(kwargs["spot_priority_classes"])
        return cls(**kwargs)

    def as_mapping(self) -> dict[str, Any]:
        out = {key: getattr(self, name) for key, name in self.keys().items()}
        out["spotPriorityClasses"] = list(self.spot_priority_classes)
        return out


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------

ResourceCheck = Callable[[Resource, PolicyConfig], Iterable[str]]
StackCheck = Callable[[list[Resource], PolicyConfig], Iterable[tuple[Resource | None, str]]]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    enforcement: Enforcement  # the default; stacks may override
    severity: Severity
    remediation: str
    config_keys: tuple[str, ...] = ()
    resource_check: ResourceCheck | None = None
    stack_check: StackCheck | None = None


@dataclass(frozen=True)
class Finding:
    policy: str
    resource: str
    level: Enforcement
    severity: Severity
    message: str
    remediation: str

    def as_dict(self) -> dict[str, str]:
        return {
            "policy": self.policy,
            "resource": self.resource,
            "level": self.level,
            "severity": self.severity,
            "message": self.message,
            "remediation": self.remediation,
        }


RULES: list[Rule] = []
GPU_TAINT = catalog.GPU_TAINT_KEY
GPU_NODES = f"{catalog.GPU_PRESENT_LABEL}=true"


def rule(
    name: str,
    *,
    description: str,
    enforcement: Enforcement,
    severity: Severity,
    remediation: str,
    config_keys: tuple[str, ...] = (),
    stack: bool = False,
) -> Callable[[Callable[..., Iterable[Any]]], Callable[..., Iterable[Any]]]:
    """Register a check function as a rule."""

    def register(fn: Callable[..., Iterable[Any]]) -> Callable[..., Iterable[Any]]:
        RULES.append(
            Rule(
                name=name,
                description=description,
                enforcement=enforcement,
                severity=severity,
                remediation=remediation,
                config_keys=config_keys,
                resource_check=None if stack else fn,
                stack_check=fn if stack else None,
            )
        )
        return fn

    return register


def evaluate(
    resources: list[Resource],
    config: PolicyConfig,
    enforcement: Mapping[str, Enforcement] | None = None,
) -> list[Finding]:
    """Run every rule (resource rules on each resource, then stack rules)."""
    levels = enforcement or {}
    findings: list[Finding] = []
    for r in RULES:
        level = levels.get(r.name, r.enforcement)
        if level == "disabled":
            continue
        if r.resource_check is not None:
            for res in resources:
                for message in r.resource_check(res, config):
                    findings.append(
                        Finding(r.name, res.label, level, r.severity, message, r.remediation)
                    )
        if r.stack_check is not None:
            for res_or_none, message in r.stack_check(resources, config):
                label = res_or_none.label if res_or_none is not None else "stack"
                findings.append(Finding(r.name, label, level, r.severity, message, r.remediation))
    return findings


# ---------------------------------------------------------------------------
# Reading pods out of workload objects
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PodTemplate:
    where: str  # "spec.template.spec" (for messages)
    spec: Mapping[str, Any]
    replicas: int | None = None  # pods this template runs at once, if known


def pod_templates(res: Resource) -> list[PodTemplate]:
    """The pod specs a Kubernetes object runs (empty for non-workloads), found by
    shape wherever they sit: Deployments, StatefulSets, DaemonSets, Jobs,
    CronJobs, PyTorchJob/TFJob replica specs, JobSet replicated jobs,
    LeaderWorkerSet leader and worker templates, and any custom resource that
    embeds a pod spec (a mapping with a `containers` list), or an Argo Workflow
    template's single `container`/`script`.

    `replicas` multiplies the `replicas`/`parallelism`/`size` met on the way
    down (1 where none is set, as Kubernetes defaults it; None when one is
    unknown during a real preview)."""
    if not res.is_kubernetes:
        return []
    spec = res.props.get("spec") or {}
    if res.kind == "Pod":
        return [PodTemplate("spec", spec, 1)]
    found: list[PodTemplate] = []
    _walk(spec, "spec", 1, found)
    return found


_WALK_DEPTH = 12  # deep enough for CronJob -> Job -> template and JobSet nesting


def _walk(
    node: Any, path: str, replicas: int | None, out: list[PodTemplate], depth: int = 0
) -> None:
    if depth > _WALK_DEPTH:
        return
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", replicas, out, depth + 1)
        return
    if not isinstance(node, Mapping):
        return
    if _is_pod_spec(node):
        out.append(PodTemplate(path, node, replicas))
        return
    argo = _argo_pod(node)
    if argo is not None:
        out.append(PodTemplate(path, argo, replicas))
        return
    count = replicas
    for key in ("replicas", "parallelism", "size"):
        value = node.get(key)
        if key in node and not isinstance(value, bool):
            count = (
                None if count is None or not isinstance(value, (int, float)) else count * int(value)
            )
            break
    for key, value in node.items():
        if key in ("metadata", "status", "selector"):
            continue
        _walk(value, f"{path}.{key}", count, out, depth + 1)


def _is_pod_spec(node: Mapping[str, Any]) -> bool:
    containers = node.get("containers")
    return isinstance(containers, list) and all(isinstance(c, Mapping) for c in containers)


def _argo_pod(node: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """An Argo Workflow template runs one `container` (or `script`) plus sidecars:
    read it as the pod spec it becomes (its placement fields are the pod's)."""
    main = node.get("container") or node.get("script")
    if not isinstance(main, Mapping) or "image" not in main:
        return None
    pod = {k: v for k, v in node.items() if k not in ("container", "script", "sidecars")}
    pod["containers"] = [main, *[c for c in node.get("sidecars") or [] if isinstance(c, Mapping)]]
    return pod


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers"):
        for c in pod.get(key) or []:
            yield key, c


def _gpu_amounts(container: Mapping[str, Any], section: str) -> dict[str, float]:
    values = ((container.get("resources") or {}).get(section)) or {}
    out = {}
    for name, value in values.items():
        if catalog.is_gpu_resource(name) and value is not None:
            try:
                out[name] = float(quantity.parse(value))
            except quantity.QuantityError:
                out[name] = float("nan")
    return out


def gpus_per_pod(pod: Mapping[str, Any]) -> int:
    """GPUs a pod holds: max(largest init container, sum of containers), from limits."""
    main = sum(sum(_gpu_amounts(c, "limits").values()) for c in pod.get("containers") or [])
    init = max(
        (sum(_gpu_amounts(c, "limits").values()) for c in pod.get("initContainers") or []),
        default=0,
    )
    return int(max(main, init))


def _tolerates(pod: Mapping[str, Any], key: str) -> bool:
    for t in pod.get("tolerations") or []:
        if t.get("operator") == "Exists" and not t.get("key"):
            return True  # tolerates every taint
        if t.get("key") == key and t.get("effect") in (None, "", catalog.NO_SCHEDULE_EFFECT):
            return True
    return False


def _requires_gpu_nodes(pod: Mapping[str, Any]) -> bool:
    selector = pod.get("nodeSelector") or {}
    if selector.get(catalog.GPU_PRESENT_LABEL) == "true":
        return True
    affinity = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = affinity.get("nodeSelectorTerms") or []
    return bool(terms) and all(
        any(
            e.get("key") == catalog.GPU_PRESENT_LABEL
            and e.get("operator") == "In"
            and e.get("values") == ["true"]
            for e in term.get("matchExpressions") or []
        )
        for term in terms
    )


# ---------------------------------------------------------------------------
# GPU rules
# ---------------------------------------------------------------------------


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
        for key, c in _containers(t.spec):
            requests, limits = _gpu_amounts(c, "requests"), _gpu_amounts(c, "limits")
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
        + [g for _, g, _ in _gpu_node_groups(resources)]
        + [g for _, g, _ in _gpu_node_pools(resources)],
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
    remediation="Build pod specs with workloads/pod.py, which takes tolerations and affinity from "
    "infra/scheduling.py.",
)
def gpu_scheduling(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        gpus = gpus_per_pod(t.spec)
        tolerates = _tolerates(t.spec, catalog.GPU_TAINT_KEY)
        if gpus:
            if not tolerates:
                yield f"{t.where} asks for GPUs but does not tolerate the {GPU_TAINT} taint"
            if not _requires_gpu_nodes(t.spec):
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
            _tolerates(t.spec, catalog.SPOT_TAINT_KEY)
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


def _gpu_node_groups(resources: list[Resource]) -> Iterator[tuple[Resource, int, int]]:
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


def _gpu_node_pools(resources: list[Resource]) -> Iterator[tuple[Resource, int, int]]:
    """(NodePool, GPUs per node, GPU limit) of the stack's Karpenter GPU NodePools
    (limit 0 when the pool sets none)."""
    for res in resources:
        if not (res.is_kubernetes and res.kind == "NodePool"):
            continue
        spec = res.props.get("spec") or {}
        known = [t for n in _node_pool_instance_types(spec) if (t := instances.lookup(n))]
        if not known:
            continue
        limit = (spec.get("limits") or {}).get(catalog.GPU_RESOURCE)
        yield res, max(t.gpus for t in known), int(quantity.parse(limit)) if limit else 0


def _node_pool_instance_types(spec: Mapping[str, Any]) -> list[str]:
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
        + sum(g * m for _, g, m in _gpu_node_groups(resources))
        + sum(limit for _, _, limit in _gpu_node_pools(resources))
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


# ---------------------------------------------------------------------------
# Hygiene rules
# ---------------------------------------------------------------------------


@rule(
    "container-resources",
    description="Every container sets CPU and memory requests and a memory limit.",
    enforcement="mandatory",
    severity="medium",
    remediation="Set resources.requests.cpu, resources.requests.memory and "
    "resources.limits.memory.",
)
def container_resources(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        for key, c in _containers(t.spec):
            r = c.get("resources") or {}
            requests, limits = r.get("requests") or {}, r.get("limits") or {}
            missing = [
                n
                for n, ok in (
                    ("requests.cpu", "cpu" in requests),
                    ("requests.memory", "memory" in requests),
                    ("limits.memory", "memory" in limits),
                )
                if not ok
            ]
            if missing:
                yield f"{t.where}.{key} {c.get('name')!r} sets no {', '.join(missing)}"


@rule(
    "image-pinned",
    description="Images are pinned: never `:latest` or untagged; by digest where the environment "
    "requires it. One narrow waiver: the AWS EFA device plugin (published by tag only in "
    "Amazon EKS's ECR) may run by version tag in its kube-system DaemonSet when the pod "
    "template states why (mlplatform.io/digest-waiver).",
    enforcement="mandatory",
    severity="high",
    remediation="Pin a version tag, or `@sha256:` digest where "
    "mlplatform:policy.requireImageDigests is set.",
    config_keys=("requireImageDigests",),
)
def image_pinned(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        for key, c in _containers(t.spec):
            image = c.get("image")
            if not isinstance(image, str) or not image:
                continue  # unknown until the image is built
            name = c.get("name")
            last = image.split("@", 1)[0].rsplit("/", 1)[-1]
            if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
                yield f"{t.where}.{key} {name!r} runs {image!r}, which is not pinned to a version"
            elif (
                cfg.require_image_digests
                and "@sha256:" not in image
                and not _digest_waived(res, image)
            ):
                yield f"{t.where}.{key} {name!r} runs {image!r}: this environment requires a digest"


DIGEST_WAIVER_ANNOTATION = f"{catalog.LABEL_PREFIX}/digest-waiver"
# The images a digest waiver may cover: the AWS EFA device plugin from Amazon
# EKS's ECR registries, which publish it by tag only.
_WAIVABLE_IMAGE = re.compile(
    rf"^{catalog.EFA_DEVICE_PLUGIN_REGISTRY}/{re.escape(catalog.EFA_DEVICE_PLUGIN_REPOSITORY)}"
    r":v\d+(\.\d+)*$"
)


def _digest_waived(res: Resource, image: str) -> bool:
    """The EFA device plugin's kube-system DaemonSet, running AWS's image by a version
    tag, whose pod template states why (mlplatform:efaDevicePlugin.digestWaiver).
    Only the digest requirement is waived, for that image only."""
    if res.kind != "DaemonSet" or res.namespace != "kube-system":
        return False
    if not _WAIVABLE_IMAGE.match(image):
        return False
    template = ((res.props.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return bool((template.get("annotations") or {}).get(DIGEST_WAIVER_ANNOTATION))


def _is_inference(res: Resource) -> bool:
    labels = ((res.props.get("metadata") or {}).get("labels")) or {}
    return (
        res.kind == "Deployment"
        and labels.get(f"{catalog.LABEL_PREFIX}/workload-kind") == "inference"
    )


@rule(
    "inference-readiness",
    description="Inference services have readiness and liveness probes on every serving "
    "container, on ports the container declares.",
    enforcement="mandatory",
    severity="medium",
    remediation="Add a readinessProbe and a livenessProbe (the runtime serves /v2/health/ready "
    "once the model is loaded; an own server declares `probes` on its `ports`).",
)
def inference_readiness(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if not _is_inference(res):
        return
    for t in pod_templates(res):
        for c in t.spec.get("containers") or []:
            name = c.get("name")
            for kind in ("readinessProbe", "livenessProbe"):
                if not c.get(kind):
                    yield f"{t.where}.containers {name!r} has no {kind}"
            ports = c.get("ports") or []
            declared = {p.get("name") for p in ports} | {p.get("containerPort") for p in ports}
            if not ports:
                continue
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind) or {}
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = (probe.get(handler) or {}).get("port")
                    if port is not None and port not in declared:
                        yield (
                            f"{t.where}.containers {name!r}: the {kind} checks port {port!r}, "
                            "which the container does not declare"
                        )


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


@rule(
    "inference-pdb",
    description="Inference services have a PodDisruptionBudget covering their pods.",
    enforcement="mandatory",
    severity="medium",
    remediation="Add a PodDisruptionBudget selecting the Deployment's pods (InferenceService "
    "creates one).",
    stack=True,
)
def inference_pdb(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    pdbs = [
        (res.namespace, (res.props.get("spec") or {}).get("selector") or {})
        for res in resources
        if res.is_kubernetes and res.kind == "PodDisruptionBudget"
    ]
    for res in resources:
        if not _is_inference(res):
            continue
        labels = (((res.props.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
            "labels"
        ) or {}
        if not any(ns == res.namespace and _selects(sel, labels) for ns, sel in pdbs):
            yield res, "no PodDisruptionBudget selects this inference service's pods"


@rule(
    "job-limits",
    description="Jobs set backoffLimit (or backoffLimitPerIndex) and activeDeadlineSeconds or "
    "ttlSecondsAfterFinished.",
    enforcement="mandatory",
    severity="medium",
    remediation="Set backoffLimit and activeDeadlineSeconds (a stuck job holds GPUs) or "
    "ttlSecondsAfterFinished.",
)
def job_limits(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if not res.is_kubernetes or res.kind not in ("Job", "CronJob"):
        return
    spec = res.props.get("spec") or {}
    if res.kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    if spec.get("backoffLimit") is None and spec.get("backoffLimitPerIndex") is None:
        yield "no backoffLimit: the default (6) retries crashes silently"
    if spec.get("activeDeadlineSeconds") is None and spec.get("ttlSecondsAfterFinished") is None:
        yield "neither activeDeadlineSeconds nor ttlSecondsAfterFinished is set"


@rule(
    "namespace-default-deny",
    description="Every team namespace has a default-deny NetworkPolicy (all pods, ingress and "
    "egress, no rules).",
    enforcement="mandatory",
    severity="high",
    remediation="Declare the team in mlplatform:teams (TeamNamespace creates `default-deny`).",
    stack=True,
)
def namespace_default_deny(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    denied = set()
    for res in resources:
        if res.is_kubernetes and res.kind == "NetworkPolicy":
            spec = res.props.get("spec") or {}
            if (
                spec.get("podSelector") in ({}, None)
                and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"}
                and not spec.get("ingress")
                and not spec.get("egress")
            ):
                denied.add(res.namespace)
    for res in resources:
        if res.is_kubernetes and res.kind == "Namespace":
            meta = res.props.get("metadata") or {}
            if catalog.TEAM_LABEL in (meta.get("labels") or {}) and meta.get("name") not in denied:
                yield res, f"team namespace {meta.get('name')!r} has no default-deny NetworkPolicy"


_ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
    "name",
}


@rule(
    "pod-security-restricted",
    description="Pods outside kube-system meet the Pod Security Standard `restricted`.",
    enforcement="mandatory",
    severity="critical",
    remediation="Build pods with workloads/pod.py (non-root, no privilege escalation, capabilities "
    "dropped, RuntimeDefault seccomp, no host namespaces or hostPath).",
)
def pod_security_restricted(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if res.namespace == "kube-system":
        return
    for t in pod_templates(res):
        pod = t.spec
        psc = pod.get("securityContext") or {}
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(host):
                yield f"{t.where}.{host} is true"
        for v in pod.get("volumes") or []:
            bad = set(v) - _ALLOWED_VOLUMES
            if bad:
                yield f"{t.where}.volumes {v.get('name')!r} uses {', '.join(sorted(bad))}"
        pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
        for key, c in _containers(pod):
            sc = c.get("securityContext") or {}
            where = f"{t.where}.{key} {c.get('name')!r}"
            if sc.get("privileged"):
                yield f"{where} is privileged"
            if sc.get("allowPrivilegeEscalation") is not False:
                yield f"{where} does not set allowPrivilegeEscalation: false"
            non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            if non_root is not True or sc.get("runAsUser", psc.get("runAsUser")) == 0:
                yield f"{where} may run as root (runAsNonRoot is not true)"
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                yield f"{where} does not drop ALL capabilities"
            extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
            if extra:
                yield f"{where} adds capabilities {', '.join(sorted(extra))}"
            seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
            if seccomp not in ("RuntimeDefault", "Localhost"):
                yield f"{where} has no RuntimeDefault seccomp profile"
            if any(p.get("hostPort") for p in c.get("ports") or []):
                yield f"{where} uses a hostPort"


@rule(
    "no-load-balancer",
    description="No Services of type LoadBalancer unless the environment allows them (traffic "
    "enters through the gateway).",
    enforcement="mandatory",
    severity="medium",
    remediation="Use a ClusterIP Service behind the platform gateway, or set "
    "mlplatform:policy.allowLoadBalancers.",
    config_keys=("allowLoadBalancers",),
)
def no_load_balancer(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if (
        res.is_kubernetes
        and res.kind == "Service"
        and (res.props.get("spec") or {}).get("type") == "LoadBalancer"
    ) and not cfg.allow_load_balancers:
        yield "Service of type LoadBalancer (a cloud load balancer per service)"


# ---------------------------------------------------------------------------
# Queueing rules (Kueue; the checks live in policies/queue_sim.py)
# ---------------------------------------------------------------------------


def _team_namespaces(resources: list[Resource]) -> set[str]:
    return {
        str((res.props.get("metadata") or {}).get("name"))
        for res in resources
        if res.is_kubernetes
        and res.kind == "Namespace"
        and catalog.TEAM_LABEL in (((res.props.get("metadata") or {}).get("labels")) or {})
    }


@rule(
    "queue-gpu-jobs",
    description="When the stack runs Kueue, every GPU Job, CronJob or PyTorchJob in a team "
    "namespace names an existing LocalQueue (kueue.x-k8s.io/queue-name) and a batch Job is "
    "created suspended, so it waits for admission instead of grabbing GPUs past the queue.",
    enforcement="mandatory",
    severity="high",
    remediation="Render jobs with the workload components (they add the label and suspend: "
    "true), or set the label to the namespace's LocalQueue (`default`).",
    stack=True,
)
def queue_gpu_jobs(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    model = queue_sim.read(resources)
    if not model.enabled:
        return
    teams = _team_namespaces(resources)
    for w in model.workloads:
        if not w.gpus or w.namespace not in teams:
            continue
        if not w.explicit_queue:
            yield w.resource, f"runs {w.gpus} GPUs without the {queue_sim.QUEUE_LABEL} label"
        elif (w.namespace, w.queue) not in model.local_queues:
            yield (
                w.resource,
                f"names LocalQueue {w.queue!r}, which does not exist in namespace {w.namespace!r}",
            )
        if (
            w.resource.kind == "Job"
            and (w.resource.props.get("spec") or {}).get("suspend") is not True
        ):
            yield w.resource, "a queued Job must be created with spec.suspend: true"


@rule(
    "queue-nominal-capacity",
    description="The ClusterQueues' nominal GPU quotas in each GPU pool's flavor add up to no "
    "more than the pool can provide (times the allowed overcommit): nominal quota is a "
    "promise that must have nodes behind it.",
    enforcement="mandatory",
    severity="high",
    remediation="Lower nominal GPUs in mlplatform:queueing.teams, raise the pool's maxSize, or "
    "raise mlplatform:policy.gpuQuotaOvercommit.",
    config_keys=("gpuQuotaOvercommit",),
    stack=True,
)
def queue_nominal_capacity(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    model = queue_sim.read(resources)
    flavor_res = {
        str((r.props.get("metadata") or {}).get("name")): r
        for r in resources
        if r.props.get("apiVersion") == queue_sim.API and r.props.get("kind") == "ResourceFlavor"
    }
    for name, flavor in sorted(model.flavors.items()):
        if flavor.gpu_capacity is None:
            continue
        total = sum(
            (
                q.nominal
                for cq in model.cluster_queues.values()
                for (f, r), q in cq.quotas.items()
                if f == name and catalog.is_gpu_resource(r)
            ),
            start=queue_sim.Decimal(0),
        )
        allowed = flavor.gpu_capacity * queue_sim.Decimal(str(cfg.gpu_quota_overcommit))
        if total > allowed:
            yield (
                flavor_res.get(name),
                f"nominal GPU quotas in flavor {name!r} add up to {total:g}; the pool provides "
                f"{flavor.gpu_capacity:g} (overcommit {cfg.gpu_quota_overcommit:g})",
            )


@rule(
    "queue-borrowing-cohort",
    description="No ClusterQueue may borrow so much that it can take a GPU pool's whole cohort "
    "quota: the other teams would wait for preemption to get their own quota back.",
    enforcement="advisory",
    severity="low",
    remediation="Lower borrowingLimit in mlplatform:queueing.teams below what the other teams "
    "hold in that pool, or give them lendingLimits.",
    stack=True,
)
def queue_borrowing_cohort(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    model = queue_sim.read(resources)
    by_name = {
        str((r.props.get("metadata") or {}).get("name")): r
        for r in resources
        if r.props.get("apiVersion") == queue_sim.API and r.props.get("kind") == "ClusterQueue"
    }
    for cq in model.cluster_queues.values():
        if not cq.cohort:
            continue
        for (flavor, resource), q in sorted(cq.quotas.items()):
            if q.borrowing is not None and q.borrowing == 0:
                continue
            total = sum(
                (
                    o.quotas[(flavor, resource)].nominal
                    for o in model.cluster_queues.values()
                    if o.cohort == cq.cohort and (flavor, resource) in o.quotas
                ),
                start=queue_sim.Decimal(0),
            )
            if total > q.nominal and (q.borrowing is None or q.nominal + q.borrowing >= total):
                reach = (
                    "unlimited borrowing"
                    if q.borrowing is None
                    else (f"nominal {q.nominal:g} + borrowing {q.borrowing:g}")
                )
                yield (
                    by_name.get(cq.name),
                    f"{reach} of {resource} in {flavor!r} reaches the cohort's whole {total:g}",
                )


@rule(
    "queue-admissible",
    description="Every queued job can ever be admitted: for some choice of flavors its pods fit "
    "its ClusterQueue's nominal quota plus what it may borrow, and the GPU pool's capacity "
    "(a simulation of Kueue's admission, policies/queue_sim.py). A job that cannot waits "
    "forever.",
    enforcement="mandatory",
    severity="high",
    remediation="Give the team more nominal GPUs or borrowing in that pool (within its "
    "ResourceQuota), let the job use another pool, or make it smaller.",
    stack=True,
)
def queue_admissible(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    model = queue_sim.read(resources)
    if not model.enabled:
        return
    for v in queue_sim.never_admitted(model):
        queue = v.cluster_queue or v.workload.queue
        yield (
            v.workload.resource,
            f"can never be admitted by queue {queue!r}: {v.never}",
        )


# ---------------------------------------------------------------------------
# Capacity and node rules
# ---------------------------------------------------------------------------


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
            for _, c in _containers(t.spec)
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
    for res, _, _ in _gpu_node_groups(resources):
        min_size = ((res.props.get("scalingConfig") or {}).get("minSize")) or 0
        if min_size == 0 and not (ca or cfg.external_autoscaler):
            yield (
                res,
                "GPU node group at minSize 0 with no autoscaler: its nodes never start and "
                "GPU pods stay Pending",
            )
    if not karpenter:
        for res, _, _ in _gpu_node_pools(resources):
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
    types = _node_pool_instance_types(spec)
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
    team_namespaces = _team_namespaces(resources)
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


# ---------------------------------------------------------------------------
# EFA fabric rules
# ---------------------------------------------------------------------------

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
        for _, c in _containers(pod)
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
    for res, _, _ in _gpu_node_groups(resources):
        known = [i for n in res.props.get("instanceTypes") or [] if (i := instances.lookup(n))]
        accelerator = (res.props.get("labels") or {}).get(catalog.ACCELERATOR_LABEL)
        groups.append((accelerator, all(i.efa is not None for i in known)))
    for res, _, _ in _gpu_node_pools(resources):
        spec = res.props.get("spec") or {}
        known = [i for n in _node_pool_instance_types(spec) if (i := instances.lookup(n))]
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


RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)
RULES_BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}
assert len(RULE_NAMES) == len(set(RULE_NAMES)), "rule names must be unique"

__all__ = [
    "RULES",
    "RULES_BY_NAME",
    "RULE_NAMES",
    "Finding",
    "PolicyConfig",
    "Resource",
    "Rule",
    "evaluate",
    "gpu_capacity",
    "gpus_per_pod",
    "pod_templates",
]
