"""Queueing rules (Kueue): the checks themselves live in policies/queue_sim.py."""

from __future__ import annotations

from collections.abc import Iterator

from infra import catalog
from policies import queue_sim
from policies.rules.core import PolicyConfig, Resource, rule


def team_namespaces_in(resources: list[Resource]) -> set[str]:
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
    teams = team_namespaces_in(resources)
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
