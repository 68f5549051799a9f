"""DistributedTraining: N nodes x M GPUs under torchrun.

Default backend `indexed-job` needs no operator:
- an Indexed Job with completions = parallelism = nodes: pod i is `<job>-i`
  and has completion index i;
- a headless Service `<job>` (selector `batch.kubernetes.io/job-name`,
  `publishNotReadyAddresses: true`) and the pods' `subdomain` make node 0
  reachable at `<job>-0.<job>` before any pod is Ready;
- torchrun's c10d rendezvous is hosted on node 0 (`--rdzv-endpoint`); c10d
  assigns ranks itself (torch ignores `--node-rank` outside static
  rendezvous), so the completion index is exported as NODE_RANK for logs and
  tooling, and global ranks may change across restarts (checkpoints are per
  rank, resume does not depend on which node a rank lands on);
- fail fast: podFailurePolicy fails the whole Job when any rank's container
  exits non-zero, so the other ranks are stopped instead of waiting on a dead
  peer until the NCCL timeout. Disruptions (preemption, spot reclaim, drain)
  are ignored: the pod is recreated with the same index, the surviving
  torchrun agents restart their workers (`--max-restarts`) and rendezvous
  again, and training resumes from the checkpoint. The one case that still
  ends the run: losing node 0, which hosts the rendezvous store; rerun it and
  it resumes;
- all pods in one availability zone, and a network policy that lets the
  job's pods reach each other on any port (NCCL and gloo use ephemeral ports).

Backend `pytorchjob` renders a Kubeflow PyTorchJob (training-operator v1)
from the same spec for clusters that run the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field, model_validator

from infra import efa, meta, pod, scheduling
from infra.config_types import FieldProblems, Loc
from infra.efa import EfaPod
from workloads import common
from workloads.runtime import contract
from workloads.training import (
    JOB_NAME_LABEL,
    PYTORCHJOB_NAME_LABEL,
    TRAINER,
    TrainingSpecBase,
    ensure_checkpoint_claim,
    pod_failure_policy,
    training_env,
    training_volumes,
)

COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


class DistributedTrainingSpec(TrainingSpecBase):
    """Multi-node PyTorch training (kind `distributed`)."""

    kind: Literal["distributed"] = Field(description="`distributed`.")
    nodes: int = Field(ge=1, le=256, description="Number of nodes (pods), >= 1.")
    backend: Literal["indexed-job", "pytorchjob"] = Field(
        "indexed-job",
        description="`indexed-job` (no operator needed) or `pytorchjob` (Kubeflow "
        "training-operator v1).",
    )
    max_restarts: int = Field(
        3,
        ge=0,
        le=100,
        description="torchrun `--max-restarts`: worker restarts after a peer is replaced.",
    )
    rendezvous_timeout_seconds: int = Field(
        1800,
        ge=60,
        description="How long ranks wait for each other. GPU nodes that scale from zero "
        "take minutes to join (p5 about ten).",
    )
    same_zone: bool = Field(True, description="Keep all nodes in one availability zone.")
    efa: bool | None = Field(
        None,
        description="Run NCCL over the pool's EFA fabric (docs/efa.md): the pods request "
        "every EFA interface of the node and huge pages, and get the libfabric "
        "environment. Default: on for more than one node when every GPU pool the "
        "workload may use has EFA. `true` with a pool without EFA is an error.",
    )

    @model_validator(mode="after")
    def _check_distributed(self) -> DistributedTrainingSpec:
        problems: list[tuple[Loc, str]] = []
        if (
            self.nodes > 1
            and self.checkpoint.enabled
            and self.checkpoint.claim is None
            and self.checkpoint.access_mode == "ReadWriteOnce"
        ):
            problems.append(
                (
                    ("checkpoint", "accessMode"),
                    "ranks on other nodes must read the checkpoints: use ReadWriteMany "
                    "(or an existing RWX claim)",
                )
            )
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def checkpoint_access_mode(self) -> str:
        return self.checkpoint.access_mode or (
            "ReadWriteMany" if self.nodes > 1 else "ReadWriteOnce"
        )

    @property
    def procs_per_node(self) -> int:
        return max(1, self.gpus)

    @property
    def pods(self) -> int:
        return self.nodes

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def torchrun_args(spec: DistributedTrainingSpec, rendezvous_host: str) -> list[str]:
    return [
        f"--nnodes={spec.nodes}",
        f"--nproc-per-node={spec.procs_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous_host}:{contract.RENDEZVOUS_PORT}",
        f"--rdzv-id={spec.name}",
        f"--rdzv-conf=join_timeout={spec.rendezvous_timeout_seconds}",
        f"--max-restarts={spec.max_restarts}",
    ]


def rendezvous_service(
    name: str,
    job_name: str,
    labels: Mapping[str, str],
    ctx: common.WorkloadContext,
    parent: pulumi.Resource,
) -> k8s.core.v1.Service:
    """The headless Service that gives an Indexed Job's pods their DNS names:
    rank 0 is `<job>-0.<job>`, where torchrun's c10d store listens."""
    return k8s.core.v1.Service(
        f"{name}-rendezvous",
        metadata=meta.metadata(job_name, dict(labels), ctx.namespace),
        spec={
            "clusterIP": "None",
            # Rank 0's DNS name must resolve before it is Ready: the ranks
            # rendezvous long before any of them could pass a probe.
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME_LABEL: job_name},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": contract.RENDEZVOUS_PORT,
                    "targetPort": "rendezvous",
                }
            ],
        },
        opts=ctx.opts(parent),
    )


def indexed_job_spec(
    nodes: int,
    backoff_limit: int,
    active_deadline_seconds: int | None,
    ttl_seconds_after_finished: int | None,
    container: str,
    template: Mapping[str, Any],
    ctx: common.WorkloadContext,
) -> dict[str, Any]:
    """The spec of a multi-node Indexed Job: one pod per node, any rank's crash
    fails the whole Job (no rank waits on a dead peer), one Kueue workload."""
    return {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": backoff_limit,
        "activeDeadlineSeconds": active_deadline_seconds,
        "ttlSecondsAfterFinished": ttl_seconds_after_finished,
        "podFailurePolicy": pod_failure_policy(container, fail_job_on_any_crash=True),
        # Never two pods with one index (and one hostname) at a time.
        "podReplacementPolicy": "Failed",
        "template": dict(template),
        # One Kueue workload: all the ranks are admitted together.
        **common.suspended(ctx),
    }


@dataclass(frozen=True)
class DistributedTrainingArgs:
    spec: DistributedTrainingSpec
    context: common.WorkloadContext
    # The EFA fabric of the pool it runs on (resolved by the settings), or None.
    efa: EfaPod | None = None


class DistributedTraining(pulumi.ComponentResource):
    """Distributed PyTorch training.

    Outputs: `job_name`, `namespace`, `checkpoint_claim`, `backend`,
    `rendezvous_endpoint` (None for pytorchjob), `world_size`.
    """

    def __init__(
        self, name: str, args: DistributedTrainingArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:DistributedTraining", name, None, opts)
        spec, ctx = args.spec, args.context
        labels = common.workload_labels(spec, "distributed-training")
        sa = common.service_account(name, spec, ctx, labels, self)
        claim = ensure_checkpoint_claim(name, spec, ctx, labels, self)
        volumes, mounts = training_volumes(spec, claim)
        checkpoint_dir = f"{spec.checkpoint_root}/$(JOB_NAME)"
        job_name_label = JOB_NAME_LABEL if spec.backend == "indexed-job" else PYTORCHJOB_NAME_LABEL
        env = {
            **training_env(ctx, job_name_label),
            "NCCL_DEBUG": "WARN",
            # Surface a dead peer as an error (and a torchrun restart), not a hang.
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        }
        pod_affinity = (
            scheduling.same_zone_affinity(meta.selector(labels))
            if spec.same_zone and spec.nodes > 1
            else None
        )
        # What both backends' pods share.
        pods: dict[str, Any] = {
            "volumes": volumes,
            "shm_size": spec.shm_size,
            "restart_policy": "Never",
            "pod_affinity": pod_affinity,
            "annotations": efa.pod_annotations(args.efa),
        }
        self.backend = spec.backend
        self.rendezvous_endpoint: str | None = None
        replace = ctx.opts(self, sa, delete_before_replace=True)

        if spec.backend == "indexed-job":
            host = f"{spec.name}-0.{spec.name}"
            self.rendezvous_endpoint = f"{host}:{contract.RENDEZVOUS_PORT}"
            runtime = ["torchrun", *torchrun_args(spec, host), "-m", contract.TRAIN_MODULE]
            command, cargs = common.entrypoint(spec, runtime, spec.runtime_args(checkpoint_dir))
            env["NODE_RANK"] = pod.FieldRef(
                f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
            )
            container = efa.apply(
                args.efa, self._container(spec, ctx, command, cargs, env, mounts, rendezvous=True)
            )
            template = common.pod_spec(spec, ctx, labels, [container], subdomain=spec.name, **pods)
            self.service = rendezvous_service(name, spec.name, labels, ctx, self)
            self.job: Any = k8s.batch.v1.Job(
                f"{name}-job",
                metadata=common.object_metadata(spec, ctx, labels),
                spec=indexed_job_spec(
                    spec.nodes,
                    spec.backoff_limit,
                    spec.active_deadline_seconds,
                    spec.ttl_seconds_after_finished,
                    TRAINER,
                    template,
                    ctx,
                ),
                opts=replace,
            )
        else:
            runtime = [
                "torchrun",
                f"--max-restarts={spec.max_restarts}",
                "-m",
                contract.TRAIN_MODULE,
            ]
            command, cargs = common.entrypoint(spec, runtime, spec.runtime_args(checkpoint_dir))
            # The operator names pods <job>-master-0 / <job>-worker-i and sets
            # MASTER_ADDR, PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK.
            container = efa.apply(
                args.efa,
                self._container(
                    spec, ctx, command, cargs, env, mounts, rendezvous=False, name="pytorch"
                ),
            )
            template = common.pod_spec(spec, ctx, labels, [container], **pods)
            # ExitCode: retry on signals (128+, e.g. preemption), not on errors.
            replicas: dict[str, Any] = {
                "Master": {"replicas": 1, "restartPolicy": "ExitCode", "template": template}
            }
            if spec.nodes > 1:
                replicas["Worker"] = {
                    "replicas": spec.nodes - 1,
                    "restartPolicy": "ExitCode",
                    "template": template,
                }
            self.job = k8s.apiextensions.CustomResource(
                f"{name}-pytorchjob",
                api_version="kubeflow.org/v1",
                kind="PyTorchJob",
                metadata=meta.metadata(
                    spec.name, {**labels, **common.queue_labels(spec, ctx)}, ctx.namespace
                ),
                spec={
                    "nprocPerNode": str(spec.procs_per_node),
                    "runPolicy": {
                        "cleanPodPolicy": "Running",
                        **common.suspended(ctx),
                        "backoffLimit": spec.backoff_limit,
                        "activeDeadlineSeconds": spec.active_deadline_seconds,
                        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
                    },
                    "pytorchReplicaSpecs": replicas,
                },
                opts=replace,
            )
        common.open_network("distributed", name, spec, ctx, labels, self)
        self.job_name = spec.name
        self.namespace = ctx.namespace
        self.checkpoint_claim = claim
        self.world_size = spec.world_size
        self.register_outputs(
            {
                "job_name": self.job_name,
                "namespace": self.namespace,
                "checkpoint_claim": self.checkpoint_claim,
                "backend": self.backend,
                "rendezvous_endpoint": self.rendezvous_endpoint,
                "world_size": self.world_size,
            }
        )

    @staticmethod
    def _container(
        spec: DistributedTrainingSpec,
        ctx: common.WorkloadContext,
        command: list[str] | None,
        args: list[str],
        env: dict[str, pod.EnvValue],
        mounts: list[pod.Mount],
        *,
        rendezvous: bool,
        name: str = TRAINER,
    ) -> pod.Container:
        ports = {"metrics": contract.TRAIN_METRICS_PORT} if spec.uses_runtime else {}
        if rendezvous:
            ports["rendezvous"] = contract.RENDEZVOUS_PORT
        return pod.Container(
            name=name,
            image=common.image_of(spec, ctx),  # type: ignore[arg-type]
            command=command,
            args=args,
            env=common.container_env(spec, env),
            ports=ports,
            resources=common.resources(spec),
            mounts=mounts,
        )
