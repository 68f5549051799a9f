"""What every rule builds on: the resources as the engine sees them, the
thresholds (PolicyConfig), the rule registry and evaluate(), and the one
walker that finds pod templates in any workload object."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from infra import catalog, quantity

Enforcement = Literal["mandatory", "advisory", "disabled"]
Severity = Literal["critical", "high", "medium", "low"]


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


def pod_containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers"):
        for c in pod.get(key) or []:
            yield key, c


def gpu_amounts(container: Mapping[str, Any], section: str) -> dict[str, float]:
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
    main = sum(sum(gpu_amounts(c, "limits").values()) for c in pod.get("containers") or [])
    init = max(
        (sum(gpu_amounts(c, "limits").values()) for c in pod.get("initContainers") or []),
        default=0,
    )
    return int(max(main, init))


def tolerates_taint(pod: Mapping[str, Any], key: str) -> bool:
    for t in pod.get("tolerations") or []:
        if t.get("operator") == "Exists" and not t.get("key"):
            return True  # tolerates every taint
        if t.get("key") == key and t.get("effect") in (None, "", catalog.NO_SCHEDULE_EFFECT):
            return True
    return False


def requires_gpu_nodes(pod: Mapping[str, Any]) -> bool:
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
