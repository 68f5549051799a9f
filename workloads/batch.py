"""BatchInference: an Indexed Job over S shards with P pods at a time (a
CronJob of that Job with `schedule`). Pod i
processes shard `JOB_COMPLETION_INDEX` of `JOB_COMPLETIONS` and writes its
results atomically per shard (workloads/runtime/batch.py), so a retried or
re-run shard never duplicates or drops a record.

Retries are per index (`backoffLimitPerIndex`): a bad shard fails alone while
the others finish, and `maxFailedIndexes` says how many failed shards end the
Job early. A shard whose input is invalid (runtime exit code 2) is not retried
(FailIndex); a preempted pod is replaced without counting (Ignore).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pulumi
from pydantic import Field, model_validator

from infra import pod
from infra.config_types import FieldProblems, Loc, Quantity
from workloads import common
from workloads.runtime import contract

WORKER = "batch"


class BatchInferenceSpec(common.ReadsModel, common.Scheduled):
    """Offline inference over sharded input (kind `batch`); with `schedule`, a
    CronJob that runs it again on each tick (shards are rewritten atomically, so a
    re-run replaces the previous results)."""

    runtime_program: ClassVar[str] = "batch"

    kind: Literal["batch"] = Field(description="`batch`.")
    model: common.ModelSource | None = Field(
        None,
        description="Where the model comes from, mounted read-only at /models. Required "
        "for the runtime program; optional for an own `image` + `command`.",
    )
    input: str = Field(
        description="`s3://bucket/prefix`, or a path inside `volume` (mounted at /data)."
    )
    output: str = Field(description="`s3://bucket/prefix`, or a path inside `volume`.")
    volume: common.VolumeSource | None = Field(
        None, description="PVC mounted read-write at /data for local input and output paths."
    )
    shards: int = Field(ge=1, le=100_000, description="Number of shards (Job completions).")
    parallelism: int = Field(4, ge=1, description="Shards processed at once (pods).")
    batch_size: int = Field(256, ge=1, description="Records per forward pass (`--batch-size`).")
    backoff_limit_per_index: int = Field(2, ge=0, le=100, description="Retries of each shard.")
    max_failed_indexes: int = Field(
        0, ge=0, description="Failed shards tolerated before the whole Job fails (0: the first)."
    )
    memory: Quantity = Field(
        "4Gi", description="Memory request, and the limit unless `memoryLimit` is set."
    )
    scratch: Quantity = Field(
        "10Gi",
        description="/tmp emptyDir: a shard's output is staged there before its single "
        "upload to S3, so make it larger than the biggest shard's output.",
    )
    active_deadline_seconds: int = Field(86_400, ge=60, description="Wall-clock limit (24 h).")
    ttl_seconds_after_finished: int = Field(
        604_800, ge=0, description="Delete the finished Job after (7 days)."
    )

    @model_validator(mode="after")
    def _check_batch(self) -> BatchInferenceSpec:
        problems: list[tuple[Loc, str]] = []
        if self.model is None and self.uses_runtime:
            problems.append((("model",), "the runtime program needs a model (`uri` or `claim`)"))
        if self.parallelism > self.shards:
            problems.append(
                (("parallelism",), f"{self.parallelism} is more than shards ({self.shards})")
            )
        if self.max_failed_indexes >= self.shards:
            problems.append((("maxFailedIndexes",), f"must be below shards ({self.shards})"))
        for key, value in (("input", self.input), ("output", self.output)):
            if not value.startswith("s3://"):
                if self.volume is None:
                    problems.append(
                        ((key,), f"{value!r} is not s3://; a local path needs `volume`")
                    )
                elif value.startswith("/") or ".." in value.split("/"):
                    problems.append(((key,), f"{value!r}: give a path relative to the volume"))
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def pods(self) -> int:
        return self.parallelism

    def platform_mounts(self) -> dict[str, str]:
        mounts = super().platform_mounts()
        if self.volume is not None:
            mounts["data"] = contract.DATA_DIR
        return mounts

    @property
    def object_storage_uris(self) -> list[str]:
        data = [u for u in (self.input, self.output) if u.startswith("s3://")]
        return self.model_uris + data

    def location(self, value: str) -> str:
        return value if value.startswith("s3://") else f"{contract.DATA_DIR}/{value}"

    def runtime_args(self) -> list[str]:
        return [
            f"--model-dir={contract.MODEL_DIR}",
            f"--input={self.location(self.input)}",
            f"--output={self.location(self.output)}",
            f"--batch-size={self.batch_size}",
            f"--metrics-port={contract.BATCH_METRICS_PORT}",
        ]


@dataclass(frozen=True)
class BatchInferenceArgs:
    spec: BatchInferenceSpec
    context: common.WorkloadContext


class BatchInference(pulumi.ComponentResource):
    """Sharded batch inference as an Indexed Job.

    Outputs: `job_name`, `namespace`, `shards`, `output`, `schedule` (None for a Job).
    """

    def __init__(
        self, name: str, args: BatchInferenceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:BatchInference", name, None, opts)
        spec, ctx = args.spec, args.context
        labels = common.workload_labels(spec, "batch-inference")
        sa = common.service_account(name, spec, ctx, labels, self)
        volumes, init, mounts = common.model_pod_parts(spec.model, ctx, spec)
        if spec.volume is not None:
            volumes.append(pod.Volume("data", claim=spec.volume.claim))
            mounts.append(pod.Mount("data", contract.DATA_DIR, sub_path=spec.volume.sub_path))
        command, cargs = common.entrypoint(
            spec, ["python", "-m", contract.BATCH_MODULE], spec.runtime_args()
        )
        container = pod.Container(
            name=WORKER,
            image=common.image_of(spec, ctx),  # type: ignore[arg-type]
            command=command,
            args=cargs,
            # JOB_COMPLETION_INDEX is set by the Job controller; the shard count is ours.
            env=common.container_env(spec, {"JOB_COMPLETIONS": str(spec.shards)}),
            ports={"metrics": contract.BATCH_METRICS_PORT} if spec.uses_runtime else {},
            resources=common.resources(spec),
            mounts=mounts,
        )
        template = common.pod_spec(
            spec,
            ctx,
            labels,
            [container],
            init_containers=init,
            volumes=volumes,
            shm_size=spec.shm_size if spec.gpus else None,
            restart_policy="Never",
        )
        job_spec: dict[str, Any] = {
            "completionMode": "Indexed",
            "completions": spec.shards,
            "parallelism": spec.parallelism,
            "backoffLimitPerIndex": spec.backoff_limit_per_index,
            "maxFailedIndexes": spec.max_failed_indexes,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                    {
                        "action": "FailIndex",
                        "onExitCodes": {
                            "containerName": WORKER,
                            "operator": "In",
                            "values": [contract.EXIT_USAGE],
                        },
                    },
                ]
            },
            "podReplacementPolicy": "Failed",
            "template": template,
            **common.suspended(ctx),
        }
        self.job = common.job_or_cron_job(name, spec, ctx, labels, job_spec, sa, self)
        common.open_network("batch", name, spec, ctx, labels, self)
        self.job_name = spec.name
        self.namespace = ctx.namespace
        self.shards = spec.shards
        self.output = spec.location(spec.output)
        self.schedule = spec.schedule
        self.register_outputs(
            {
                "job_name": self.job_name,
                "namespace": self.namespace,
                "shards": self.shards,
                "output": self.output,
                "schedule": self.schedule,
            }
        )
