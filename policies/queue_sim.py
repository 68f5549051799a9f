"""A small, exact check of a stack's Kueue setup: can every queued job ever be
admitted, and in what order would they be admitted if all arrived at once.

Pure (no Pulumi, no pydantic): it reads the resources as the policy rules see
them (ResourceFlavors, ClusterQueues, LocalQueues, WorkloadPriorityClasses and
the Jobs, CronJobs and PyTorchJobs), so the same code runs in the policy pack,
in the offline preview and in plan.md's queueing table.

What Kueue does, and this module repeats (Kueue v0.19, `kueue.x-k8s.io/v1beta2`):

- a job's queue is its `kueue.x-k8s.io/queue-name` label, or `default` when the
  namespace has a LocalQueue of that name; the LocalQueue names the ClusterQueue;
- each pod set (a Job's pods; a PyTorchJob's Master and Worker) needs, per
  resource, pods x max(largest init container, sum of containers); the pods of
  all pod sets are admitted together (one workload);
- a flavor fits a pod set when the pod set tolerates the flavor's NoSchedule and
  NoExecute taints and its nodeSelector / required node affinity agree with the
  flavor's nodeLabels (on that flavor's own label keys);
- a ClusterQueue can hold at most, per flavor and resource, its nominal quota
  plus min(borrowingLimit, what the rest of the cohort can lend: each other
  member's lendingLimit, or its whole nominal quota); and a GPU pool never runs
  more than its capacity (the `mlplatform.io/gpu-capacity` annotation the
  platform writes on each pool's flavor).

A job whose demand exceeds that for every choice of flavors is never admitted:
it waits in its queue forever. The admission order is Kueue's order within a
cohort when everything is pending: higher priority first, then older (here,
where creation times are unknown: by name); each job is admitted if it fits
beside those before it, or else waits.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from infra import catalog, quantity

API = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
DEFAULT_QUEUE = "default"
CAPACITY_ANNOTATION = f"{catalog.LABEL_PREFIX}/gpu-capacity"
JOB_KINDS = ("Job", "CronJob", "PyTorchJob")
INF = Decimal("Infinity")


def _meta(props: Mapping[str, Any]) -> Mapping[str, Any]:
    return props.get("metadata") or {}


def _is(props: Mapping[str, Any], kind: str) -> bool:
    return props.get("apiVersion") == API and props.get("kind") == kind


def _q(value: Any) -> Decimal:
    try:
        return quantity.parse(value)
    except (quantity.QuantityError, TypeError):
        return Decimal(0)


@dataclass(frozen=True)
class Flavor:
    name: str
    node_labels: Mapping[str, str]
    taints: tuple[tuple[str, str], ...]  # (key, effect) of NoSchedule/NoExecute taints
    gpu_capacity: Decimal | None  # None: not a GPU pool (or unknown)


@dataclass(frozen=True)
class Quota:
    nominal: Decimal
    borrowing: Decimal | None  # None: unlimited
    lending: Decimal | None  # None: all of nominal


@dataclass(frozen=True)
class ClusterQueue:
    name: str
    cohort: str | None
    namespaces: frozenset[str] | None  # None: any namespace ({} selector)
    groups: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (resources, flavors)
    quotas: Mapping[tuple[str, str], Quota]  # (flavor, resource) -> quota

    def flavors(self) -> list[str]:
        return [f for _, flavors in self.groups for f in flavors]


@dataclass(frozen=True)
class PodSet:
    name: str
    count: int
    requests: Mapping[str, Decimal]  # per pod
    spec: Mapping[str, Any]


@dataclass
class Workload:
    label: str  # namespace/Kind/name, as findings name resources
    namespace: str
    queue: str | None  # LocalQueue name
    explicit_queue: bool
    priority: int
    order: int
    pod_sets: list[PodSet]
    gpus: int
    resource: Any = None  # the policy Resource it came from


@dataclass
class Verdict:
    workload: Workload
    cluster_queue: str | None = None
    flavors: dict[str, str] = field(default_factory=dict)  # pod set -> GPU (or first) flavor
    never: str | None = None  # why it can never be admitted
    fits_nominal: bool = False
    position: int = 0
    admitted_at_once: bool = False


@dataclass
class Model:
    flavors: dict[str, Flavor]
    cluster_queues: dict[str, ClusterQueue]
    local_queues: dict[tuple[str, str], str]  # (namespace, name) -> ClusterQueue
    workloads: list[Workload]

    @property
    def enabled(self) -> bool:
        return bool(self.cluster_queues)


# ---------------------------------------------------------------------------
# Reading the resources
# ---------------------------------------------------------------------------


def _pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    def of(c: Mapping[str, Any]) -> dict[str, Decimal]:
        r = c.get("resources") or {}
        requests, limits = r.get("requests") or {}, r.get("limits") or {}
        # Kubernetes defaults a missing request to the limit.
        names = set(requests) | set(limits)
        return {n: _q(requests.get(n, limits.get(n))) for n in names}

    total: dict[str, Decimal] = {}
    for c in pod.get("containers") or []:
        for n, v in of(c).items():
            total[n] = total.get(n, Decimal(0)) + v
    for c in pod.get("initContainers") or []:
        for n, v in of(c).items():
            total[n] = max(total.get(n, Decimal(0)), v)
    return {n: v for n, v in total.items() if v > 0}


def _pod_sets(kind: str, spec: Mapping[str, Any]) -> list[PodSet]:
    def pod_set(name: str, template: Mapping[str, Any] | None, count: int) -> list[PodSet]:
        pod = (template or {}).get("spec")
        if not pod:
            return []
        return [PodSet(name, count, _pod_requests(pod), pod)]

    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
        kind = "Job"
    if kind == "Job":
        parallelism = int(spec.get("parallelism") or 1)
        completions = spec.get("completions")
        count = min(parallelism, int(completions)) if completions else parallelism
        return pod_set("main", spec.get("template"), count)
    out: list[PodSet] = []
    for role, replica in (spec.get("pytorchReplicaSpecs") or {}).items():
        out += pod_set(
            role.lower(), (replica or {}).get("template"), int(replica.get("replicas") or 1)
        )
    return out


def _queue_labels(kind: str, props: Mapping[str, Any]) -> Mapping[str, str]:
    if kind == "CronJob":
        template = ((props.get("spec") or {}).get("jobTemplate")) or {}
        return (template.get("metadata") or {}).get("labels") or {}
    return _meta(props).get("labels") or {}


def excluded_prefixes(resources: Iterable[Any]) -> tuple[str, ...]:
    """`resources.excludeResourcePrefixes` of the Kueue Configuration the stack's
    Kueue release is given (infra/queueing.py): resources Kueue does not queue."""
    for res in resources:
        if getattr(res, "type", None) != "kubernetes:helm.sh/v3:Release":
            continue
        if not str(res.props.get("chart") or "").rstrip("/").endswith("/kueue"):
            continue
        text = ((res.props.get("values") or {}).get("managerConfig") or {}).get(
            "controllerManagerConfigYaml"
        )
        try:
            config = json.loads(text) if isinstance(text, str) else {}
        except ValueError:
            config = {}
        found = ((config or {}).get("resources") or {}).get("excludeResourcePrefixes") or []
        return tuple(str(x) for x in found)
    return ()


def read(resources: Iterable[Any]) -> Model:
    """The queueing model of a stack, from policy Resources (`.props`, `.kind`)."""
    resources = list(resources)
    excluded = excluded_prefixes(resources)
    flavors: dict[str, Flavor] = {}
    cqs: dict[str, ClusterQueue] = {}
    lqs: dict[tuple[str, str], str] = {}
    wpcs: dict[str, int] = {}
    pcs: dict[str, int] = {p.name: p.value for p in catalog.PRIORITY_CLASSES}
    for res in resources:
        p = res.props
        name = str(_meta(p).get("name") or "")
        if _is(p, "ResourceFlavor"):
            spec = p.get("spec") or {}
            capacity = (_meta(p).get("annotations") or {}).get(CAPACITY_ANNOTATION)
            flavors[name] = Flavor(
                name,
                dict(spec.get("nodeLabels") or {}),
                tuple(
                    (t.get("key"), t.get("effect"))
                    for t in spec.get("nodeTaints") or []
                    if t.get("effect") in ("NoSchedule", "NoExecute")
                ),
                _q(capacity) if capacity is not None else None,
            )
        elif _is(p, "ClusterQueue"):
            spec = p.get("spec") or {}
            selector = spec.get("namespaceSelector")
            if selector is None:
                namespaces: frozenset[str] | None = frozenset()
            else:
                match = (selector.get("matchLabels") or {}).get(catalog.NAMESPACE_NAME_LABEL)
                namespaces = frozenset([match]) if match else None
            groups = []
            quotas: dict[tuple[str, str], Quota] = {}
            for g in spec.get("resourceGroups") or []:
                covered = tuple(g.get("coveredResources") or [])
                names = []
                for f in g.get("flavors") or []:
                    names.append(f.get("name"))
                    for r in f.get("resources") or []:
                        borrow, lend = r.get("borrowingLimit"), r.get("lendingLimit")
                        quotas[(f.get("name"), r.get("name"))] = Quota(
                            _q(r.get("nominalQuota")),
                            _q(borrow) if borrow is not None else None,
                            _q(lend) if lend is not None else None,
                        )
                groups.append((covered, tuple(names)))
            cqs[name] = ClusterQueue(
                name, spec.get("cohortName") or None, namespaces, tuple(groups), quotas
            )
        elif _is(p, "LocalQueue"):
            lqs[(str(_meta(p).get("namespace")), name)] = str(
                (p.get("spec") or {}).get("clusterQueue")
            )
        elif _is(p, "WorkloadPriorityClass"):
            wpcs[name] = int(p.get("value") or 0)
        elif res.kind == "PriorityClass" and p.get("value") is not None:
            pcs[name] = int(p["value"])
    workloads: list[Workload] = []
    for res in resources:
        p = res.props
        if not res.is_kubernetes or res.kind not in JOB_KINDS:
            continue
        ns = str(res.namespace or "default")
        labels = _queue_labels(res.kind, p)
        queue = labels.get(QUEUE_LABEL)
        explicit = queue is not None
        if queue is None and (ns, DEFAULT_QUEUE) in lqs and res.kind != "PyTorchJob":
            queue = DEFAULT_QUEUE  # Kueue defaults batch Jobs to the `default` LocalQueue
        sets = _pod_sets(res.kind, p.get("spec") or {})
        if excluded:
            sets = [
                replace(
                    ps,
                    requests={r: v for r, v in ps.requests.items() if not r.startswith(excluded)},
                )
                for ps in sets
            ]
        gpus = int(
            sum(
                ps.count * ps.requests.get(r, Decimal(0))
                for ps in sets
                for r in ps.requests
                if catalog.is_gpu_resource(r)
            )
        )
        if wpc := labels.get(PRIORITY_LABEL):
            priority = wpcs.get(wpc, 0)
        else:
            classes = {ps.spec.get("priorityClassName") for ps in sets} - {None}
            priority = max((pcs.get(str(n), 0) for n in classes), default=0)
        workloads.append(
            Workload(res.label, ns, queue, explicit, priority, len(workloads), sets, gpus, res)
        )
    return Model(flavors, cqs, lqs, workloads)


# ---------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------


def _tolerates(pod: Mapping[str, Any], key: str, effect: str) -> bool:
    for t in pod.get("tolerations") or []:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("operator") == "Exists" and not t.get("key"):
            return True
        if t.get("key") == key:
            return True
    return False


def _label_terms(pod: Mapping[str, Any]) -> list[list[tuple[str, str, list[str]]]]:
    """The pod's node constraints as OR-ed terms of (key, operator, values)."""
    selector = [(k, "In", [v]) for k, v in (pod.get("nodeSelector") or {}).items()]
    required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = [
        [
            (e.get("key"), e.get("operator"), list(e.get("values") or []))
            for e in t.get("matchExpressions") or []
        ]
        for t in required.get("nodeSelectorTerms") or []
    ]
    return [selector + t for t in terms] if terms else [selector]


def _matches(expr: tuple[str, str, list[str]], labels: Mapping[str, str]) -> bool:
    key, op, values = expr
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return True  # Gt/Lt: not used by the platform; do not guess


def flavor_fits(pod: Mapping[str, Any], flavor: Flavor) -> bool:
    """Kueue's flavor selection (scheduler/flavorassigner, checkFlavorForPodSets):
    the flavor's NoSchedule/NoExecute taints are tolerated, and the pod's
    nodeSelector and required node affinity agree with the flavor's nodeLabels,
    considering only the label keys this flavor has."""
    keys = set(flavor.node_labels)
    if not all(_tolerates(pod, k, e) for k, e in flavor.taints):
        return False
    return any(
        all(_matches(e, flavor.node_labels) for e in term if e[0] in keys)
        for term in _label_terms(pod)
    )


def limits(model: Model, cq: ClusterQueue) -> dict[tuple[str, str], Decimal]:
    """Most of each (flavor, resource) the ClusterQueue can ever hold."""
    out: dict[tuple[str, str], Decimal] = {}
    for key, q in cq.quotas.items():
        lendable = Decimal(0)
        if cq.cohort:
            for other in model.cluster_queues.values():
                if other.name != cq.name and other.cohort == cq.cohort and key in other.quotas:
                    o = other.quotas[key]
                    lendable += o.nominal if o.lending is None else min(o.lending, o.nominal)
        borrow = lendable if q.borrowing is None else min(q.borrowing, lendable)
        limit = q.nominal + borrow
        flavor = model.flavors.get(key[0])
        if flavor and flavor.gpu_capacity is not None and catalog.is_gpu_resource(key[1]):
            limit = min(limit, flavor.gpu_capacity)
        out[key] = limit
    return out


def _assignments(
    model: Model, cq: ClusterQueue, w: Workload
) -> tuple[list[dict[tuple[str, str], Decimal]], list[dict[str, str]], str | None]:
    """Every way to give the workload's pod sets flavors: the demand per
    (flavor, resource) and the GPU flavor per pod set of each; or why none exists."""
    per_set: list[list[tuple[dict[tuple[str, str], Decimal], str]]] = []
    for ps in w.pod_sets:
        options: list[tuple[dict[tuple[str, str], Decimal], str]] = [({}, "")]
        for resource in ps.requests:
            if not any(resource in covered for covered, _ in cq.groups):
                return [], [], f"asks for {resource}, which ClusterQueue {cq.name!r} does not cover"
        for covered, flavors in cq.groups:
            needed = {r: ps.requests[r] * ps.count for r in covered if r in ps.requests}
            if not needed:
                continue
            fitting = [
                f for f in flavors if f in model.flavors and flavor_fits(ps.spec, model.flavors[f])
            ]
            if not fitting:
                return (
                    [],
                    [],
                    (
                        f"pod set {ps.name!r} fits none of the flavors {', '.join(flavors)} "
                        "(taints not tolerated or node labels that do not match)"
                    ),
                )
            gpu_group = any(catalog.is_gpu_resource(r) for r in covered)
            options = [
                (
                    {**demand, **{(f, r): v for r, v in needed.items()}},
                    f if gpu_group or not name else name,
                )
                for demand, name in options
                for f in fitting
            ]
        per_set.append(options)
    demands: list[dict[tuple[str, str], Decimal]] = []
    names: list[dict[str, str]] = []
    for combo in itertools.product(*per_set):
        total: dict[tuple[str, str], Decimal] = {}
        for demand, _ in combo:
            for k, v in demand.items():
                total[k] = total.get(k, Decimal(0)) + v
        demands.append(total)
        names.append({ps.name: flavor for ps, (_, flavor) in zip(w.pod_sets, combo, strict=True)})
    return demands, names, None


def _fmt(v: Decimal, resource: str) -> str:
    if resource == "memory":
        return f"{v / 2**30:g}Gi"
    return f"{v:g}"


def check(model: Model) -> list[Verdict]:
    """A verdict per queued workload, in admission order."""
    verdicts: list[Verdict] = []
    usage: dict[str, dict[tuple[str, str], Decimal]] = {n: {} for n in model.cluster_queues}
    queued = [w for w in model.workloads if w.queue is not None]
    for w in sorted(queued, key=lambda w: (-w.priority, w.label)):
        v = Verdict(w, position=len(verdicts) + 1)
        verdicts.append(v)
        cq_name = model.local_queues.get((w.namespace, str(w.queue)))
        if cq_name is None:
            v.never = f"its LocalQueue {w.queue!r} does not exist in namespace {w.namespace!r}"
            continue
        cq = model.cluster_queues.get(cq_name)
        if cq is None:
            v.never = (
                f"LocalQueue {w.queue!r} points at ClusterQueue {cq_name!r}, which does not exist"
            )
            continue
        v.cluster_queue = cq.name
        if cq.namespaces is not None and w.namespace not in cq.namespaces:
            v.never = (
                f"ClusterQueue {cq.name!r} does not admit workloads from namespace {w.namespace!r}"
            )
            continue
        demands, names, why = _assignments(model, cq, w)
        if why:
            v.never = why
            continue
        cap = limits(model, cq)
        feasible = [
            (d, n)
            for d, n in zip(demands, names, strict=True)
            if all(x <= cap.get(k, 0) for k, x in d.items())
        ]
        if not feasible:
            best = min(demands, key=lambda d: sum(1 for k, x in d.items() if x > cap.get(k, 0)))
            over = [
                f"{_fmt(x, r)} {r} in {f!r} (at most {_fmt(cap.get((f, r), Decimal(0)), r)}: "
                f"nominal plus what it may borrow)"
                for (f, r), x in sorted(best.items())
                if x > cap.get((f, r), 0)
            ]
            v.never = "needs " + "; ".join(over)
            continue
        # Kueue takes the first flavor (in ClusterQueue order) that fits.
        demand, v.flavors = feasible[0]
        v.fits_nominal = all(x <= cq.quotas[k].nominal for k, x in demand.items())
        v.admitted_at_once = _admit(model, cq, demand, usage)
    return verdicts


def _admit(
    model: Model,
    cq: ClusterQueue,
    demand: Mapping[tuple[str, str], Decimal],
    usage: dict[str, dict[tuple[str, str], Decimal]],
) -> bool:
    """Admit the demand now if the quota allows it beside what is admitted. Per
    (flavor, resource): each member keeps nominal minus lendingLimit for itself;
    the rest of every member's nominal is the cohort's shared pool, which what
    members use beyond their own part draws on."""
    for key, x in demand.items():
        q = cq.quotas[key]
        mine = usage[cq.name].get(key, Decimal(0)) + x
        if mine > q.nominal and q.borrowing is not None and mine - q.nominal > q.borrowing:
            return False
        members = [
            m
            for m in model.cluster_queues.values()
            if key in m.quotas and (m.name == cq.name or (cq.cohort and m.cohort == cq.cohort))
        ]
        shared = Decimal(0)
        drawn = Decimal(0)
        for m in members:
            mq = m.quotas[key]
            lendable = mq.nominal if mq.lending is None else min(mq.lending, mq.nominal)
            shared += lendable
            used = mine if m.name == cq.name else usage[m.name].get(key, Decimal(0))
            drawn += max(Decimal(0), used - (mq.nominal - lendable))
        if drawn > shared:
            return False
        flavor = model.flavors.get(key[0])
        if flavor and flavor.gpu_capacity is not None and catalog.is_gpu_resource(key[1]):
            in_pool = sum(u.get(key, Decimal(0)) for u in usage.values()) + x
            if in_pool > flavor.gpu_capacity:
                return False
    for key, x in demand.items():
        usage[cq.name][key] = usage[cq.name].get(key, Decimal(0)) + x
    return True


def never_admitted(model: Model) -> list[Verdict]:
    return [v for v in check(model) if v.never]


__all__: Sequence[str] = (
    "Model",
    "Verdict",
    "check",
    "flavor_fits",
    "limits",
    "never_admitted",
    "read",
)
