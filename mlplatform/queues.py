"""What the Queueing component needs from the whole stack: the GPU pools as
Kueue flavors (labels and taints from the one source of truth, infra/gpu_nodes.py
and infra/scheduling.py), each team's quotas, the integrations the workloads
use, and which queue a workload's jobs go to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi

from infra import catalog, scheduling
from infra.gpu_nodes import node_labels
from infra.queueing import (
    BATCH_JOB,
    LOCAL_QUEUE,
    PYTORCH_JOB,
    QueueingArgs,
    QueuePool,
    team_queue,
)
from mlplatform.settings import PlatformSettings
from workloads.common import WorkloadSpec
from workloads.distributed import DistributedTrainingSpec


def pools(s: PlatformSettings) -> list[QueuePool]:
    out = [
        QueuePool(
            g.name,
            s.pool_gpus(g.name),
            node_labels(g),
            tuple(scheduling.gpu_node_taints(g.is_spot)),
        )
        for g in s.gpu_node_groups
    ]
    out += [
        QueuePool(
            n.name,
            s.pool_gpus(n.name),
            {catalog.ACCELERATOR_LABEL: n.accelerator} if n.accelerator else {},
            (scheduling.GPU_TAINT,),
        )
        for n in s.cluster.existing_gpu_nodes
    ]
    return out


def frameworks(s: PlatformSettings) -> list[str]:
    """Kueue integrations: batch/job always; the Kubeflow PyTorchJob one only
    when a workload renders PyTorchJobs (deprecated in Kueue 0.19)."""
    out = [BATCH_JOB]
    if any(
        isinstance(w, DistributedTrainingSpec) and w.backend == "pytorchjob" for w in s.workloads
    ):
        out.append(PYTORCH_JOB)
    return out


def queueing_args(
    s: PlatformSettings, team_dependencies: Mapping[str, Sequence[pulumi.Resource]]
) -> QueueingArgs:
    return QueueingArgs(
        settings=s.queueing,
        pools=pools(s),
        teams=[
            team_queue(
                t.name, t.name, t.quota.cpu, t.quota.memory, s.queueing.teams.get(t.name, {})
            )
            for t in s.teams
        ],
        frameworks=frameworks(s),
        system_node_selector=(
            {catalog.NODE_ROLE_LABEL: "system"} if s.cluster.mode == "create" else {}
        ),
        team_dependencies=team_dependencies,
    )


def queue_name(s: PlatformSettings, spec: WorkloadSpec) -> str | None:
    """The LocalQueue a workload's jobs wait in, or None (not queued: queueing
    off, or serving, which scales with its traffic and never waits in a queue)."""
    if not s.queueing.active or spec.kind == "inference":  # type: ignore[attr-defined]
        return None
    return spec.queue or LOCAL_QUEUE
