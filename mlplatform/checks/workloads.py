"""Workloads against their team, the GPU pools, EFA and the team's LimitRange."""

from __future__ import annotations

from infra import quantity
from infra.config_types import Loc, format_loc
from infra.tenancy import TeamSettings
from mlplatform.stack import StackSettings
from workloads.common import WorkloadSpec
from workloads.distributed import DistributedTrainingSpec
from workloads.nccl_test import NcclTestSpec
from workloads.training import TrainingJobSpec


def problems(s: StackSettings) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    teams = {t.name: t for t in s.teams}
    known_accelerators = {p.accelerator for p in s.gpu_pools if p.accelerator}
    seen: dict[tuple[str, str], int] = {}
    if s.runtime_image.build is not None and not s.cluster.uses_aws:
        found.append(
            (
                ("runtimeImage", "build"),
                "building needs ECR (AWS); use `ref` with a kubeconfig context",
            )
        )
    for i, w in enumerate(s.workloads):
        at = ("workloads", i)
        team = teams.get(w.team)
        if team is None:
            found.append(
                (
                    (*at, "team"),
                    f"unknown team {w.team!r}; teams: {', '.join(sorted(teams)) or 'none'}",
                )
            )
        key = (w.team, w.name)
        if key in seen:
            found.append(
                (
                    (*at, "name"),
                    f"{w.name!r} is already used in team {w.team!r} by workloads[{seen[key]}]",
                )
            )
        seen.setdefault(key, i)
        if w.needs_runtime_image and not s.runtime_image.configured:
            found.append(
                (
                    (*at, "image"),
                    "runs the platform runtime image: set mlplatform:runtimeImage "
                    "(`ref` or `build`) or give the workload its own image and command",
                )
            )
        for j, acc in enumerate(w.accelerators):
            if acc not in known_accelerators:
                found.append(
                    (
                        (*at, "accelerators", j),
                        f"{acc!r} is on no node group; the stack has "
                        f"{', '.join(sorted(known_accelerators)) or 'no labelled GPU nodes'}",
                    )
                )
        reachable = [
            p for p in s.pools_for(w.priority_class, w.accelerators) if p.satisfies(w.node_selector)
        ]
        if w.mig_profile and not any(p.mig_mixed for p in reachable):
            found.append(
                (
                    (*at, "migProfile"),
                    "MIG resources per profile need MIG-capable GPU nodes (A100, H100, "
                    "H200) it may run on with migStrategy: mixed (devicePlugin, or the "
                    "group's own devicePlugin)",
                )
            )
        shared = [p.name for p in reachable if p.rejects_multi_gpu]
        if shared and w.gpus > 1 and not w.mig_profile:
            found.append(
                (
                    (*at, "gpus"),
                    f"{w.gpus} GPUs per pod on time-sliced GPUs (node groups "
                    f"{', '.join(shared)}): the device plugin rejects requests for more "
                    "than one shared GPU (failRequestsGreaterThanOne); ask for 1, keep it "
                    "off those groups (accelerators, nodeSelector), or turn time-slicing off",
                )
            )
        found += _node_selector_problems(s, w, at)
        if team is not None:
            team_at = ("teams", s.teams.index(team))
            found += _limit_range_problems(w, at, team, team_at)
            scoped = team.quota.by_priority_class.get(w.priority_class)
            if scoped is not None and scoped.gpus is not None and w.gpus > scoped.gpus:
                budget = format_loc(
                    (*team_at, "quota", "byPriorityClass", w.priority_class, "gpus")
                )
                found.append(
                    (
                        (*at, "gpus"),
                        f"{w.gpus} GPUs per pod: team {team.name!r} allows "
                        f"{w.priority_class} pods {scoped.gpus} in all ({budget})",
                    )
                )
        if w.gpus and not w.mig_profile:
            pools = s.pools_for(w.priority_class, w.accelerators)
            if not pools:
                found.append(
                    (
                        (*at, "gpus"),
                        f"no GPU nodes it may run on (priority class {w.priority_class!r} "
                        "does not tolerate spot, or no group has the accelerators asked for)",
                    )
                )
            else:
                largest = max(p.gpus_per_node for p in pools)
                if w.gpus > largest:
                    found.append(
                        (
                            (*at, "gpus"),
                            f"{w.gpus} GPUs per pod: the largest node it may use has {largest}",
                        )
                    )
            if team is not None and w.gpus > s.max_gpus_per_container(team):
                found.append(
                    (
                        (*at, "gpus"),
                        f"{w.gpus} is over team {team.name!r}'s limit of "
                        f"{s.max_gpus_per_container(team)} GPUs per container",
                    )
                )
        found += _efa_problems(s, i, w)
        shared_class = s.cluster.shared_storage_class
        if (
            isinstance(w, DistributedTrainingSpec)
            and w.nodes > 1
            and w.checkpoint.enabled
            and w.checkpoint.claim is None
            and not (w.checkpoint.storage_class or shared_class)
        ):
            found.append(
                (
                    (*at, "checkpoint", "storageClass"),
                    "nodes share checkpoints: name a ReadWriteMany class here or set "
                    "cluster.sharedStorageClass (or use an existing RWX claim)",
                )
            )
    return found


def _efa_problems(s: StackSettings, i: int, w: object) -> list[tuple[Loc, str]]:
    """EFA requests only on EFA pools, and one EFA shape per workload."""
    if not isinstance(w, (DistributedTrainingSpec, NcclTestSpec)) or not w.gpus:
        return []
    pools = s.pools_for(w.priority_class, w.accelerators)
    if not pools:
        return []  # reported as "no GPU nodes it may run on"
    at: Loc = ("workloads", i, "efa")
    plain = [p.name for p in pools if p.efa is None]
    if w.efa and plain:
        return [
            (
                at,
                f"EFA requests on pools without EFA ({', '.join(plain)}); pin "
                "`accelerators` to EFA pools or set efa: false",
            )
        ]
    if s.uses_efa(w, pools) and len({(p.efa, p.hugepages) for p in pools}) > 1:
        return [
            (
                at,
                "the EFA pools it may use differ in interfaces or huge pages; pin "
                "`accelerators` to one of them",
            )
        ]
    return []


def _node_selector_problems(s: StackSettings, w: WorkloadSpec, at: Loc) -> list[tuple[Loc, str]]:
    if not w.node_selector:
        return []
    if w.gpus:
        pools = s.pools_for(w.priority_class, w.accelerators)
        what = "GPU pool it may use"
    else:
        pools = [s.cpu_pool]
        what = "node pool for pods without GPUs (the system nodes)"
    if any(p.satisfies(w.node_selector) for p in pools):
        return []
    carried = sorted(
        {f"{k}={v}" for p in pools for k, vs in (p.labels or {}).items() for v in vs}
        - {f"{k}={v}" for k, v in w.node_selector.items()}
    )
    wanted = ", ".join(f"{k}={v}" for k, v in w.node_selector.items())
    return [
        (
            (*at, "nodeSelector"),
            f"no {what} has all of {wanted}; the pod would never schedule "
            f"(labels on offer: {', '.join(carried[:8]) or 'none known'}"
            + (", ..." if len(carried) > 8 else "")
            + ")",
        )
    ]


def _limit_range_problems(
    w: WorkloadSpec, at: Loc, team: TeamSettings, team_at: Loc
) -> list[tuple[Loc, str]]:
    """What the team's LimitRange would do to the workload's containers at
    admission: fill in the default CPU limit, then check max, min and the
    limit/request ratios. A pod that breaks one is rejected by the API server
    (the Job or Deployment renders and applies fine and then never runs)."""
    lim = team.limits
    q = quantity.parse
    found: list[tuple[Loc, str]] = []
    where = format_loc((*team_at, "limits"))
    default_key = "defaultCpuLimit" if lim.default_cpu_limit else "max.cpu"
    for loc, shape in w.container_shapes():
        who = "the platform's model fetcher" if loc == ("model", "uri") else "the container"
        cpu_limit = shape.cpu_limit or lim.effective_default_cpu_limit
        memory_limit = shape.memory_limit or shape.memory
        if shape.cpu_limit is None and cpu_limit is not None and q(shape.cpu) > q(cpu_limit):
            key = (*at, *loc) if loc == ("model", "uri") else (*at, *loc, "cpu")
            found.append(
                (
                    key,
                    f"{who} requests {shape.cpu} CPU but sets no CPU limit, so the LimitRange "
                    f"of team {team.name!r} gives it {cpu_limit} ({where}.{default_key}) "
                    "and the API server rejects the pod (request above limit); set cpuLimit "
                    f">= {shape.cpu} or raise {where}.{default_key}",
                )
            )
            continue
        checks = (
            ("cpu", shape.cpu, cpu_limit, shape.cpu_limit, "cpuLimit"),
            ("memory", shape.memory, memory_limit, shape.memory_limit, "memoryLimit"),
        )
        for resource, request, limit, own_limit, limit_key in checks:
            fetcher = loc == ("model", "uri")
            key = (*at, *loc) if fetcher else (*at, *loc, resource)
            limit_at = (*at, *loc, limit_key) if own_limit is not None and not fetcher else key
            high, low = getattr(lim.max, resource), getattr(lim.min, resource)
            ratio = getattr(lim.max_limit_request_ratio, resource)
            if high is not None and limit is not None and q(limit) > q(high):
                found.append(
                    (
                        limit_at,
                        f"{who}'s {resource} limit {limit} is above the LimitRange max of team "
                        f"{team.name!r} ({where}.max.{resource}: {high})",
                    )
                )
            elif high is not None and q(request) > q(high):
                found.append(
                    (
                        key,
                        f"{who}'s {resource} request {request} is above the LimitRange max of team "
                        f"{team.name!r} ({where}.max.{resource}: {high})",
                    )
                )
            if low is not None and q(request) < q(low):
                found.append(
                    (
                        key,
                        f"{who}'s {resource} request {request} is below the LimitRange min of team "
                        f"{team.name!r} ({where}.min.{resource}: {low})",
                    )
                )
            if ratio is not None and limit is not None and q(limit) > q(ratio) * q(request):
                found.append(
                    (
                        key,
                        f"{who}'s {resource} limit {limit} is more than {ratio}x its request "
                        f"{request} (team {team.name!r}: {where}.maxLimitRequestRatio.{resource})",
                    )
                )
    size = _checkpoint_size(w)
    for bound, value in (("max", lim.pvc.max), ("min", lim.pvc.min)):
        if size is None or value is None:
            continue
        if (bound == "max" and q(size) > q(value)) or (bound == "min" and q(size) < q(value)):
            found.append(
                (
                    (*at, "checkpoint", "size"),
                    f"{size} is {'above' if bound == 'max' else 'below'} the PVC {bound} of team "
                    f"{team.name!r} ({where}.pvc.{bound}: {value}): the claim would be rejected",
                )
            )
    return found


def _checkpoint_size(w: WorkloadSpec) -> str | None:
    """Size of the checkpoint PVC the workload creates, if it creates one."""
    if isinstance(w, (TrainingJobSpec, DistributedTrainingSpec)):
        c = w.checkpoint
        if c.enabled and c.claim is None:
            return c.size
    return None
