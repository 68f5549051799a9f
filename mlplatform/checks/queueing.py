"""Kueue queueing against the teams and the GPU pools."""

from __future__ import annotations

from infra import catalog
from infra.config_types import Loc
from infra.queueing import CPU_FLAVOR, LOCAL_QUEUE, check_team_quotas
from mlplatform.stack import StackSettings


def problems(s: StackSettings) -> list[tuple[Loc, str]]:
    q = s.queueing
    found: list[tuple[Loc, str]] = []
    for i, w in enumerate(s.workloads):
        if w.queue is None:
            continue
        at: Loc = ("workloads", i, "queue")
        if w.kind == "inference":
            found.append((at, "serving is not queued (it scales with its traffic)"))
        elif not q.active:
            found.append((at, "queueing is off (mlplatform:queueing.enabled)"))
        elif w.queue != LOCAL_QUEUE:
            found.append(
                (
                    at,
                    f"no LocalQueue {w.queue!r} in namespace {w.team!r}; its queues: {LOCAL_QUEUE}",
                )
            )
    if not q.active:
        return found
    for i, w in enumerate(s.workloads):
        if w.mig_profile and w.kind != "inference":
            found.append(
                (
                    ("workloads", i, "migProfile"),
                    "queued jobs ask for whole GPUs: the ClusterQueues cover "
                    f"{catalog.GPU_RESOURCE} only",
                )
            )
    pools = {p.name: p for p in s.gpu_pools}
    for i, group in enumerate(s.gpu_node_groups):
        if group.name == CPU_FLAVOR:
            found.append(
                (
                    ("gpuNodeGroups", i, "name"),
                    f"{CPU_FLAVOR!r} is a Kueue flavor of the platform",
                )
            )
    for i, n in enumerate(s.cluster.existing_gpu_nodes):
        if n.name == CPU_FLAVOR:
            found.append(
                (
                    ("cluster", "existingGpuNodes", i, "name"),
                    f"{CPU_FLAVOR!r} is a Kueue flavor of the platform",
                )
            )
        if n.accelerator is None:
            found.append(
                (
                    ("cluster", "existingGpuNodes", i, "accelerator"),
                    "required with queueing: the pool's ResourceFlavor steers admitted "
                    "pods to these nodes by this label",
                )
            )
    capacity = {name: s.pool_gpus(name) for name in pools}
    quotas = {t.name: t.quota.gpus for t in s.teams}
    found += [(("queueing", *loc), msg) for loc, msg in check_team_quotas(q, capacity, quotas)]
    return found
