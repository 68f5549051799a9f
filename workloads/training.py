"""TrainingJob: one training run on one node (one or several GPUs), as a
`batch/v1` Job, or a CronJob when `schedule` is set (scheduled retraining).

Preemption and crashes are told apart by the Job's podFailurePolicy:
- a pod the cluster disrupted (preempted by a higher priority class, evicted,
  node drained or reclaimed by spot) has the `DisruptionTarget` condition: the
  failure is ignored, not counted against `backoffLimit`, and the replacement
  resumes from the newest checkpoint;
- exit code 2 is the runtime's "bad arguments or input": the Job fails at once;
- any other failure counts against `backoffLimit`.
The termination grace period gives train.py time to write a checkpoint on
SIGTERM (it exits 143 afterwards).

Checkpoints go to `/checkpoints/<job name>` on a PVC (created, or an existing
claim): a Job's retries resume there, and each run of a CronJob starts fresh
in its own directory instead of finding the last night's run finished.
`checkpoint: false` skips the PVC for jobs that need none (they write to /tmp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import pulumi
from pydantic import BeforeValidator, Field, field_validator, model_validator

from infra import pod
from infra.config_types import DnsLabel, FieldProblems, PriorityClassName, Quantity, _Model
from workloads import common
from workloads.runtime import contract

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller
# Kubeflow training-operator v1 labels a PyTorchJob's pods with this one (it sets
# no `batch.kubernetes.io/job-name`: those pods belong to no Job).
PYTORCHJOB_NAME_LABEL = "training.kubeflow.org/job-name"
TRAINER = "trainer"


class MlflowSettings(_Model):
    """Experiment tracking for the runtime's train.py."""

    tracking_uri: str | None = Field(
        None,
        description="MLFLOW_TRACKING_URI given to every training workload (train.py logs "
        "metrics and parameters there). The teams' network policies must let pods reach it.",
    )


class CheckpointSpec(_Model):
    """Checkpoint storage: a PVC the workload creates, or an existing claim.
    `checkpoint: false` turns it off (a smoke test, a job that resumes from nothing)."""

    enabled: bool = Field(
        True,
        description="`false` (or `checkpoint: false`): no PVC; checkpoints and the export "
        "go to the pod's /tmp and are lost with it, and a preempted run starts over.",
    )
    claim: DnsLabel | None = Field(
        None, description="Use this existing PersistentVolumeClaim instead of creating one."
    )
    size: Quantity = Field("50Gi", description="Size of the created PVC.")
    storage_class: str | None = Field(
        None,
        description="StorageClass of the created PVC. Default: `cluster.storageClass`; "
        "multi-node training needs a ReadWriteMany class (`cluster.sharedStorageClass`).",
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] | None = Field(
        None,
        description="Default: ReadWriteOnce, or ReadWriteMany for training on several nodes.",
    )


def _checkpoint_shorthand(value: Any) -> Any:
    """`checkpoint: false` / `true` as shorthands of `{enabled: ...}`."""
    if isinstance(value, bool):
        return {"enabled": value}
    return value


class TrainingSpecBase(common.WorkloadSpec):
    """Fields of single-node and distributed training."""

    runtime_program: ClassVar[str] = "train"

    architecture: Literal["transformer", "mlp"] = Field(
        "transformer",
        description="Reference model the runtime trains (`--model`): a decoder-only "
        "transformer language model or an MLP classifier.",
    )
    data: str = Field(
        "synthetic",
        description="`synthetic`, or a path inside the `dataset` volume (mounted at /data).",
    )
    dataset: common.VolumeSource | None = Field(
        None, description="Dataset PVC, mounted read-only at /data."
    )
    steps: int = Field(1000, ge=1, description="Optimizer steps (`--steps`).")
    batch_size: int = Field(32, ge=1, description="Batch size per process (`--batch-size`).")
    checkpoint_every: int = Field(
        200, ge=0, description="Checkpoint every N steps; 0: only on stop/end."
    )
    checkpoint: Annotated[CheckpointSpec, BeforeValidator(_checkpoint_shorthand)] = Field(
        default_factory=CheckpointSpec,
        description="Checkpoint storage; `false` for none (no PVC).",
    )
    backoff_limit: int = Field(
        3, ge=0, le=100, description="Retries after crashes (preemptions are not counted)."
    )
    active_deadline_seconds: int = Field(
        172_800, ge=60, description="Wall-clock limit of the whole run (default 48 h)."
    )
    ttl_seconds_after_finished: int = Field(
        604_800,
        ge=0,
        description="Delete the finished Job (and its pods' logs) after this (7 days).",
    )
    termination_grace_period_seconds: int = Field(
        120,
        ge=30,
        le=3600,
        description="SIGTERM to SIGKILL: time to write a checkpoint when preempted. "
        "Under torchrun (several GPUs) the workers get at most 30 s of it.",
    )
    priority_class: PriorityClassName = Field("training-default", description="PriorityClass.")

    @field_validator("data")
    @classmethod
    def _check_data(cls, value: str) -> str:
        if value != "synthetic" and (value.startswith("/") or ".." in value.split("/")):
            raise ValueError(f"{value!r}: give a path relative to the dataset volume")
        return value

    @property
    def checkpoint_access_mode(self) -> str:
        return self.checkpoint.access_mode or "ReadWriteOnce"

    def platform_mounts(self) -> dict[str, str]:
        mounts = super().platform_mounts()
        if self.checkpoint.enabled:
            mounts["checkpoints"] = contract.CHECKPOINT_DIR
        if self.dataset is not None:
            mounts["dataset"] = contract.DATA_DIR
        return mounts

    @property
    def checkpoint_root(self) -> str:
        """Where checkpoints go: the PVC, or the pod's scratch space without one."""
        if self.checkpoint.enabled:
            return contract.CHECKPOINT_DIR
        return f"{contract.SCRATCH_DIR}/checkpoints"

    def runtime_args(self, checkpoint_dir: str) -> list[str]:
        data = self.data if self.data == "synthetic" else f"{contract.DATA_DIR}/{self.data}"
        return [
            f"--model={self.architecture}",
            f"--data={data}",
            f"--steps={self.steps}",
            f"--batch-size={self.batch_size}",
            f"--checkpoint-dir={checkpoint_dir}",
            f"--checkpoint-every={self.checkpoint_every}",
            f"--export-dir={checkpoint_dir}/export",
            f"--metrics-port={contract.TRAIN_METRICS_PORT}",
        ]

    @model_validator(mode="after")
    def _check_training(self) -> TrainingSpecBase:
        if self.data != "synthetic" and self.dataset is None:
            raise FieldProblems([(("dataset",), f"data {self.data!r} needs a dataset volume")])
        return self


class TrainingJobSpec(TrainingSpecBase, common.Scheduled):
    """A training Job (kind `training`), or a CronJob with `schedule`."""

    kind: Literal["training"] = Field(description="`training`.")


def pod_failure_policy(container: str, *, fail_job_on_any_crash: bool) -> dict[str, Any]:
    """Ignore disruptions (preemption, eviction, spot), fail at once on exit 2
    (bad input), and, for multi-node jobs, on any crash (peers would hang)."""
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": container,
                "operator": "In",
                "values": [contract.EXIT_USAGE],
            },
        },
    ]
    if fail_job_on_any_crash:
        rules.append(
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "NotIn",
                    "values": [contract.EXIT_OK],
                },
            }
        )
    return {"rules": rules}


def training_volumes(
    spec: TrainingSpecBase, claim_name: str | None
) -> tuple[list[pod.Volume], list[pod.Mount]]:
    volumes: list[pod.Volume] = []
    mounts: list[pod.Mount] = []
    if claim_name is not None:
        volumes.append(pod.Volume("checkpoints", claim=claim_name))
        mounts.append(pod.Mount("checkpoints", contract.CHECKPOINT_DIR))
    if spec.dataset is not None:
        volumes.append(pod.Volume("dataset", claim=spec.dataset.claim, claim_read_only=True))
        mounts.append(
            pod.Mount("dataset", contract.DATA_DIR, read_only=True, sub_path=spec.dataset.sub_path)
        )
    return volumes, mounts


def training_env(
    ctx: common.WorkloadContext, job_name_label: str = JOB_NAME_LABEL
) -> dict[str, pod.EnvValue]:
    """JOB_NAME from the label the controller puts on its pods (the Job
    controller's, or the training operator's for a PyTorchJob), and the MLflow
    server train.py logs to when the platform has one."""
    env: dict[str, pod.EnvValue] = {
        "JOB_NAME": pod.FieldRef(f"metadata.labels['{job_name_label}']")
    }
    if ctx.mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = ctx.mlflow_tracking_uri
    return env


def ensure_checkpoint_claim(
    name: str,
    spec: TrainingSpecBase,
    ctx: common.WorkloadContext,
    labels: dict[str, str],
    parent: pulumi.Resource,
) -> str | None:
    """The claim to mount: the existing one, a PVC created here, or none."""
    if not spec.checkpoint.enabled:
        return None
    if spec.checkpoint.claim:
        return spec.checkpoint.claim
    shared = spec.checkpoint_access_mode == "ReadWriteMany"
    storage_class = spec.checkpoint.storage_class or (
        ctx.shared_storage_class if shared else ctx.storage_class
    )
    common.checkpoint_claim(
        name,
        spec.name,
        spec.checkpoint.size,
        storage_class,
        spec.checkpoint_access_mode,
        ctx,
        labels,
        parent,
    )
    return f"{spec.name}-checkpoints"


@dataclass(frozen=True)
class TrainingJobArgs:
    spec: TrainingJobSpec
    context: common.WorkloadContext


class TrainingJob(pulumi.ComponentResource):
    """A training Job or CronJob with its ServiceAccount, checkpoint PVC and
    network openings.

    Outputs: `job_name`, `namespace`, `checkpoint_claim`, `schedule` (None for a Job).
    """

    def __init__(
        self, name: str, args: TrainingJobArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:TrainingJob", name, None, opts)
        spec, ctx = args.spec, args.context
        labels = common.workload_labels(spec, "training")
        sa = common.service_account(name, spec, ctx, labels, self)
        claim = ensure_checkpoint_claim(name, spec, ctx, labels, self)
        checkpoint_dir = f"{spec.checkpoint_root}/$(JOB_NAME)"
        if spec.gpus > 1:
            # One process per GPU on this node.
            runtime = [
                "torchrun",
                "--standalone",
                f"--nproc-per-node={spec.gpus}",
                "-m",
                contract.TRAIN_MODULE,
            ]
        else:
            runtime = ["python", "-m", contract.TRAIN_MODULE]
        command, cargs = common.entrypoint(spec, runtime, spec.runtime_args(checkpoint_dir))
        volumes, mounts = training_volumes(spec, claim)
        container = pod.Container(
            name=TRAINER,
            image=common.image_of(spec, ctx),  # type: ignore[arg-type]
            command=command,
            args=cargs,
            env=common.container_env(spec, training_env(ctx)),
            ports={"metrics": contract.TRAIN_METRICS_PORT} if spec.uses_runtime else {},
            resources=common.resources(spec),
            mounts=mounts,
        )
        template = common.pod_spec(
            spec,
            ctx,
            labels,
            [container],
            volumes=volumes,
            shm_size=spec.shm_size,
            restart_policy="Never",
        )
        job_spec: dict[str, Any] = {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "podFailurePolicy": pod_failure_policy(TRAINER, fail_job_on_any_crash=False),
            # A replacement starts only once the old pod is gone (no two trainers
            # writing the same checkpoint directory).
            "podReplacementPolicy": "Failed",
            "template": template,
            **common.suspended(ctx),
        }
        self.job = common.job_or_cron_job(name, spec, ctx, labels, job_spec, sa, self)
        common.open_network("training", name, spec, ctx, labels, self)
        self.job_name = spec.name
        self.namespace = ctx.namespace
        self.checkpoint_claim = claim
        self.schedule = spec.schedule
        self.register_outputs(
            {
                "job_name": self.job_name,
                "namespace": self.namespace,
                "checkpoint_claim": self.checkpoint_claim,
                "schedule": self.schedule,
            }
        )
