"""What every workload shares: the spec fields users declare, the platform
context the components receive, and the helpers that turn both into
ServiceAccounts, PVCs, pod specs and network openings.

A workload's network openings are derived from its kind and what it uses
(object storage, peers, the gateway), never written by hand per workload.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import pulumi
import pulumi_kubernetes as k8s
from pydantic import AfterValidator, Field, field_validator, model_validator

from infra import catalog, kueue_api, meta, pod, quantity, scheduling
from infra.config_types import DnsLabel, FieldProblems, Loc, PriorityClassName, Quantity, _Model
from workloads import cron
from workloads.runtime import contract

# Job pods are named <job>-<index>-<5 random>; an Indexed Job's hostname is
# <job>-<index>. 40 characters leave room for both under the 63 limit.
MAX_NAME_LENGTH = 40
LINK_LOCAL = "169.254.0.0/16"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[a-f0-9]{64})?$")
_SECRET_REF = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Downward API fields an environment variable may take (`fieldRef`).
FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.podIP",
)
_FIELD_MAP = re.compile(r"^metadata\.(labels|annotations)\['[^']+'\]$")


def _workload_name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{value!r} is longer than {MAX_NAME_LENGTH} characters")
    return value


def _image(value: str) -> str:
    if not _IMAGE.match(value):
        raise ValueError(f"{value!r} is not an image reference")
    last = value.split("@", 1)[0].rsplit("/", 1)[-1]
    if "@" not in value and ":" not in last:
        raise ValueError(f"{value!r} has no tag or digest; pin it (`:1.2.3` or `@sha256:...`)")
    if last.endswith(":latest"):
        raise ValueError(f"{value!r}: `:latest` is not a pinned version")
    return value


WorkloadName = Annotated[DnsLabel, AfterValidator(_workload_name)]
ImageRef = Annotated[str, AfterValidator(_image)]

# Volume names the platform may use in a workload's pods (each kind says which
# it uses, and where it mounts them: `platform_mounts()`).
RESERVED_VOLUMES = frozenset(
    {pod.SCRATCH_VOLUME, pod.SHM_VOLUME, "checkpoints", "dataset", "model", "data"}
)
RESERVED_CONTAINERS = frozenset({"trainer", "pytorch", "server", "batch", "fetch-model"})
# Label and annotation prefixes the platform or Kubernetes owns on pods.
RESERVED_LABEL_PREFIXES = (f"{catalog.LABEL_PREFIX}/", "kubernetes.io/", "k8s.io/")
RESERVED_ANNOTATION_PREFIXES = ("app.kubernetes.io/", f"{catalog.LABEL_PREFIX}/")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _abs_path(value: str) -> str:
    if not value.startswith("/") or ".." in value.split("/") or value.rstrip("/") == "":
        raise ValueError(f"{value!r} is not an absolute path below /")
    return value.rstrip("/")


def _rel_path(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"{value!r}: give a relative path without '..'")
    return value


AbsPath = Annotated[str, AfterValidator(_abs_path)]
RelPath = Annotated[str, AfterValidator(_rel_path)]


def _check_key_values(
    value: Mapping[str, str], what: str, *, reserved: tuple[str, ...], check_value: bool
) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for k, v in value.items():
        if not _LABEL_KEY.match(k) or len(k.split("/", 1)[0]) > 253:
            problems.append(((k,), f"not a valid {what} key"))
        elif k.startswith(reserved) or (
            "/" in k and k.split("/", 1)[0].endswith(tuple("." + r.rstrip("/") for r in reserved))
        ):
            problems.append(((k,), f"{what}s with this prefix are set by the platform"))
        if check_value and not _LABEL_VALUE.match(v):
            problems.append(((k,), f"{v!r} is not a valid label value (63 characters at most)"))
    return problems


@dataclass(frozen=True)
class ContainerShape:
    """A container's CPU and memory as the spec sets them (None: not set)."""

    cpu: str
    cpu_limit: str | None
    memory: str
    memory_limit: str | None


# The platform's model fetcher (an init container of serving and batch pods).
FETCH_CPU = "500m"
FETCH_MEMORY = "1Gi"
FETCH_SHAPE = ContainerShape(FETCH_CPU, None, FETCH_MEMORY, None)


class PodVolume(_Model):
    """A volume mounted into the workload's main container. Exactly one source:
    `configMap`, `secret`, `persistentVolumeClaim` or `emptyDir`."""

    name: DnsLabel = Field(
        description="Volume name, unique in the workload; not one the platform uses in "
        "that workload (" + ", ".join(sorted(RESERVED_VOLUMES)) + ", by kind)."
    )
    mount_path: AbsPath | None = Field(
        None,
        description="Where the main container sees it (absolute path). Unset: only the "
        "init containers and sidecars that list it in `volumeMounts` see it.",
    )
    sub_path: RelPath | None = Field(None, description="Mount only this file or directory of it.")
    read_only: bool = Field(
        False, description="Mount read-only (ConfigMaps and Secrets are read-only anyway)."
    )
    config_map: DnsLabel | None = Field(None, description="ConfigMap name in the team namespace.")
    secret: DnsLabel | None = Field(None, description="Secret name in the team namespace.")
    persistent_volume_claim: DnsLabel | None = Field(
        None, description="PersistentVolumeClaim name in the team namespace."
    )
    empty_dir: Quantity | None = Field(
        None, description="An emptyDir of this size limit (e.g. `20Gi`), gone with the pod."
    )
    memory: bool = Field(
        False,
        description="With `emptyDir`: keep it in RAM (tmpfs); it counts against the "
        "container's memory limit.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PodVolume:
        sources = [self.config_map, self.secret, self.persistent_volume_claim, self.empty_dir]
        if sum(s is not None for s in sources) != 1:
            raise FieldProblems(
                [((), "set exactly one of configMap, secret, persistentVolumeClaim, emptyDir")]
            )
        if self.memory and self.empty_dir is None:
            raise FieldProblems([(("memory",), "only an emptyDir can be in memory")])
        return self

    def volume(self) -> pod.Volume:
        return pod.Volume(
            self.name,
            claim=self.persistent_volume_claim,
            claim_read_only=self.read_only,
            empty_dir=self.empty_dir,
            memory=self.memory,
            config_map=self.config_map,
            secret=self.secret,
        )

    def mount(self) -> pod.Mount | None:
        if self.mount_path is None:
            return None
        return pod.Mount(self.name, self.mount_path, self.read_only, self.sub_path)


class ContainerMount(_Model):
    """Where an init container or sidecar sees one of the workload's `volumes`."""

    volume: DnsLabel = Field(description="Name of a volume in the workload's `volumes`.")
    mount_path: AbsPath = Field(description="Mount path in this container.")
    sub_path: RelPath | None = Field(None, description="Mount only this part of the volume.")
    read_only: bool = Field(False, description="Mount read-only.")


class ExtraContainer(_Model):
    """An init container (runs to completion before the main container) or a
    native sidecar (starts first, runs beside it, never keeps a Job alive).
    Same hardening as the main container; no GPUs."""

    name: DnsLabel = Field(
        description="Container name, unique in the pod; not "
        + ", ".join(sorted(RESERVED_CONTAINERS))
        + "."
    )
    image: ImageRef = Field(description="Image, pinned by tag or digest (required).")
    command: list[str] | None = Field(None, description="Command. Default: the image's.")
    args: list[str] = Field([], description="Arguments.")
    env: dict[str, str] = Field({}, description="Environment variables.")
    secret_env: dict[str, str] = Field(
        {}, description="Environment variables from Secrets: `NAME: <secret>/<key>`."
    )
    working_dir: AbsPath | None = Field(None, description="Working directory.")
    cpu: Quantity = Field("100m", description="CPU request.")
    memory: Quantity = Field("256Mi", description="Memory request, and limit unless `memoryLimit`.")
    cpu_limit: Quantity | None = Field(None, description="CPU limit. Default: none.")
    memory_limit: Quantity | None = Field(None, description="Memory limit (>= `memory`).")
    ports: dict[DnsLabel, Annotated[int, Field(ge=1, le=65535)]] = Field(
        {}, description="Sidecars: named TCP ports (`name: port`)."
    )
    volume_mounts: list[ContainerMount] = Field(
        [], description="Which of the workload's `volumes` this container mounts, and where."
    )
    writable_root_filesystem: bool = Field(
        False, description="Let the image write to its root filesystem (default read-only)."
    )

    @model_validator(mode="after")
    def _check_container(self) -> ExtraContainer:
        problems: list[tuple[Loc, str]] = _env_problems(self.env, self.secret_env)
        problems += _limit_problems(self.cpu, self.cpu_limit, self.memory, self.memory_limit)
        if self.name in RESERVED_CONTAINERS:
            problems.append((("name",), f"{self.name!r} is a name the platform uses"))
        if problems:
            raise FieldProblems(problems)
        return self

    def container(self, *, sidecar: bool) -> pod.Container:
        env: dict[str, pod.EnvValue] = {}
        if not self.writable_root_filesystem:
            env["HOME"] = contract.SCRATCH_DIR
        env.update(self.env)
        env.update(_secret_env(self.secret_env))
        return pod.Container(
            name=self.name,
            image=self.image,
            command=self.command,
            args=self.args,
            env=env,
            ports=self.ports,
            working_dir=self.working_dir,
            resources=pod.Resources(
                cpu=self.cpu,
                memory=self.memory,
                memory_limit=self.memory_limit,
                cpu_limit=self.cpu_limit,
            ),
            mounts=[
                pod.Mount(m.volume, m.mount_path, m.read_only, m.sub_path)
                for m in self.volume_mounts
            ],
            writable_root_filesystem=self.writable_root_filesystem,
            sidecar=sidecar,
        )


def _env_problems(env: dict[str, str], secret_env: dict[str, str]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = [
        (("env", k), "not a valid environment variable name") for k in env if not _ENV_NAME.match(k)
    ]
    for k, v in secret_env.items():
        if not _ENV_NAME.match(k):
            problems.append((("secretEnv", k), "not a valid environment variable name"))
        if not _SECRET_REF.match(v):
            problems.append((("secretEnv", k), f"{v!r} is not `<secret>/<key>`"))
    return problems


def _limit_problems(
    cpu: str, cpu_limit: str | None, memory: str, memory_limit: str | None
) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    if cpu_limit is not None and quantity.parse(cpu_limit) < quantity.parse(cpu):
        problems.append((("cpuLimit",), f"{cpu_limit} is below the CPU request ({cpu})"))
    if memory_limit is not None and quantity.parse(memory_limit) < quantity.parse(memory):
        problems.append(
            (("memoryLimit",), f"{memory_limit} is below the memory request ({memory})")
        )
    return problems


def _secret_env(secret_env: Mapping[str, str]) -> dict[str, pod.EnvValue]:
    out: dict[str, pod.EnvValue] = {}
    for name, ref in secret_env.items():
        secret, key = ref.split("/", 1)
        out[name] = pod.SecretRef(secret, key)
    return out


class VolumeSource(_Model):
    """An existing PersistentVolumeClaim, mounted read-only."""

    claim: DnsLabel = Field(description="PersistentVolumeClaim name in the team namespace.")
    sub_path: str | None = Field(None, description="Mount only this sub-directory.")


class ModelSource(_Model):
    """Where a serving or batch workload loads its model (exported by train.py)."""

    uri: str | None = Field(
        None,
        description="`s3://bucket/prefix` copied into the pod by an init container "
        "(credentials from the workload's IRSA role).",
    )
    claim: DnsLabel | None = Field(None, description="Or a PersistentVolumeClaim holding it.")
    sub_path: str | None = Field(None, description="Sub-directory of the claim.")
    cache_size: Quantity = Field(
        "10Gi", description="Size limit of the emptyDir the init container fills."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.uri is None) == (self.claim is None):
            raise FieldProblems([((), "set exactly one of `uri` or `claim`")])
        if self.uri is not None and not self.uri.startswith("s3://"):
            raise FieldProblems([(("uri",), f"{self.uri!r} is not an s3:// URI")])
        return self


class Scheduled(_Model):
    """Fields of workloads that can run on a schedule (a CronJob instead of a Job)."""

    schedule: str | None = Field(
        None,
        description="Cron schedule (e.g. `0 3 * * *`): a CronJob instead of a Job. "
        "concurrencyPolicy Forbid: a run never overlaps the previous one.",
    )
    time_zone: str = Field("Etc/UTC", description="Time zone of `schedule` (IANA name).")
    starting_deadline_seconds: int = Field(
        600,
        ge=10,
        description="A run that could not start within this is skipped (and alerted on).",
    )
    suspend: bool = Field(
        False, description="With `schedule`: create the CronJob suspended (no runs start)."
    )
    successful_jobs_history_limit: int = Field(
        3, ge=0, le=100, description="With `schedule`: finished Jobs kept."
    )
    failed_jobs_history_limit: int = Field(
        3, ge=0, le=100, description="With `schedule`: failed Jobs kept (for their logs)."
    )

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            return cron.validate(value)
        except cron.CronError as exc:
            raise ValueError(f"invalid cron schedule: {exc}") from None

    @model_validator(mode="after")
    def _check_scheduled(self) -> Scheduled:
        if self.schedule is None:
            unused = [
                key
                for key, field in (
                    ("suspend", "suspend"),
                    ("successfulJobsHistoryLimit", "successful_jobs_history_limit"),
                    ("failedJobsHistoryLimit", "failed_jobs_history_limit"),
                    ("startingDeadlineSeconds", "starting_deadline_seconds"),
                    ("timeZone", "time_zone"),
                )
                if field in self.model_fields_set
            ]
            if unused:
                raise FieldProblems([((key,), "only applies with `schedule`") for key in unused])
        return self


def cron_job_spec(
    spec: Scheduled, job_spec: Mapping[str, Any], labels: Mapping[str, str]
) -> dict[str, Any]:
    """A CronJob spec running `job_spec` on the spec's schedule, never overlapping."""
    assert spec.schedule is not None
    out: dict[str, Any] = {
        "schedule": spec.schedule,
        "timeZone": spec.time_zone,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": spec.starting_deadline_seconds,
        "successfulJobsHistoryLimit": spec.successful_jobs_history_limit,
        "failedJobsHistoryLimit": spec.failed_jobs_history_limit,
        "jobTemplate": {"metadata": {"labels": dict(labels)}, "spec": dict(job_spec)},
    }
    if spec.suspend:
        out["suspend"] = True
    return out


def job_or_cron_job(
    name: str,
    spec: Any,
    ctx: WorkloadContext,
    labels: Mapping[str, str],
    job_spec: Mapping[str, Any],
    service_account: pulumi.Resource,
    parent: pulumi.Resource,
) -> k8s.batch.v1.Job | k8s.batch.v1.CronJob:
    """A Job, or a CronJob of it when the spec has a `schedule`, with the
    workload's metadata (queue labels included)."""
    metadata = object_metadata(spec, ctx, labels)
    if spec.schedule:
        return k8s.batch.v1.CronJob(
            f"{name}-cronjob",
            metadata=metadata,
            # Kueue reads the queue label on each Job the CronJob creates.
            spec=cron_job_spec(spec, job_spec, {**labels, **queue_labels(spec, ctx)}),
            opts=ctx.opts(parent, service_account),
        )
    # Job templates are immutable: a change replaces the Job, and the fixed
    # name means the old one must go first.
    return k8s.batch.v1.Job(
        f"{name}-job",
        metadata=metadata,
        spec=dict(job_spec),
        opts=ctx.opts(parent, service_account, delete_before_replace=True),
    )


class WorkloadSpec(_Model):
    """Fields every workload has."""

    name: WorkloadName = Field(
        description=f"Workload name (DNS-1123 label, at most {MAX_NAME_LENGTH} characters), "
        "unique in its team."
    )
    team: DnsLabel = Field(description="Team (namespace) the workload runs in.")
    image: ImageRef | None = Field(
        None,
        description="Container image. Default: the platform runtime image "
        "(`mlplatform:runtimeImage`). Must carry a tag or digest, never `:latest`.",
    )
    command: list[str] | None = Field(
        None,
        description="Container command, replacing the runtime entrypoint (needs `image`).",
    )
    args: list[str] = Field([], description="Extra arguments after the entrypoint's own.")
    env: dict[str, str] = Field({}, description="Environment variables.")
    secret_env: dict[str, str] = Field(
        {},
        description="Environment variables from Secrets: `NAME: <secret>/<key>`.",
    )
    field_env: dict[str, str] = Field(
        {},
        description="Environment variables from the pod itself (downward API): `NAME: "
        "<field path>`, e.g. `WORKER_ID: metadata.name`, `NODE: spec.nodeName`, "
        "`metadata.labels['<key>']`.",
    )
    cpu: Quantity = Field(
        "2",
        description="CPU request (no CPU limit unless `cpuLimit`: throttling slows input "
        "pipelines).",
    )
    memory: Quantity = Field(
        "8Gi", description="Memory request, and the limit unless `memoryLimit` is set."
    )
    cpu_limit: Quantity | None = Field(
        None,
        description="CPU limit (>= `cpu`). Default: none, or the team LimitRange's "
        "default CPU limit when it has one.",
    )
    memory_limit: Quantity | None = Field(
        None, description="Memory limit (>= `memory`). Default: `memory`."
    )
    gpus: int = Field(
        0, ge=0, le=16, description="GPUs per pod (per node for distributed training)."
    )
    mig_profile: str | None = Field(
        None,
        pattern=r"^[1-7]g\.[0-9]+gb$",
        description="Ask for MIG slices `nvidia.com/mig-<profile>` (e.g. `1g.10gb`) instead "
        "of whole GPUs; needs `devicePlugin.migStrategy: mixed`.",
    )
    accelerators: list[str] = Field(
        [],
        description="Only run on these GPU models (`k8s.amazonaws.com/accelerator` values, "
        "e.g. `nvidia-h100`). Default: any GPU node.",
    )
    shm: Quantity | None = Field(
        None,
        description="/dev/shm size (a memory emptyDir, counted in `memory`). Default: a "
        "quarter of `memory`.",
    )
    priority_class: PriorityClassName = Field(
        "training-default", description="PriorityClass (serving defaults to `serving-critical`)."
    )
    iam_role_arn: str | None = Field(
        None,
        pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
        description="IAM role for the workload's ServiceAccount (IRSA): object storage access.",
    )
    termination_grace_period_seconds: int = Field(
        60, ge=0, le=3600, description="Time between SIGTERM and SIGKILL."
    )
    scratch: Quantity = Field(
        "1Gi",
        description="Size of the writable /tmp emptyDir (the root filesystem is read-only).",
    )
    queue: DnsLabel | None = Field(
        None,
        description="Kueue LocalQueue of the team namespace the job waits in. Default, when "
        "`mlplatform:queueing` is on: the team's `default` queue. Serving is never queued.",
    )
    volumes: list[PodVolume] = Field(
        [],
        description="Extra volumes mounted into the main container: ConfigMaps, Secrets, "
        "PVCs, sized emptyDirs.",
    )
    init_containers: list[ExtraContainer] = Field(
        [],
        description="Init containers, run in order before the main container (after the "
        "platform's own, such as the model fetcher).",
    )
    sidecars: list[ExtraContainer] = Field(
        [],
        description="Native sidecars (init containers with `restartPolicy: Always`): start "
        "before everything else, run beside the main container, end with the pod and never "
        "keep a Job from completing (Kubernetes >= 1.29).",
    )
    working_dir: AbsPath | None = Field(
        None, description="Working directory of the main container. Default: the image's."
    )
    labels: dict[str, str] = Field(
        {},
        description="Extra labels on the pods and the workload object (not under "
        "`mlplatform.io/`, `kubernetes.io/` or `k8s.io/`).",
    )
    annotations: dict[str, str] = Field(
        {},
        description='Extra pod annotations (e.g. `karpenter.sh/do-not-disrupt: "true"`); '
        "not under `app.kubernetes.io/` or `mlplatform.io/`.",
    )
    node_selector: dict[str, str] = Field(
        {},
        description="Only run on nodes with these labels. Each must be carried by a node "
        "pool the workload may use (`gpuNodeGroups[].labels`, the platform's node labels, "
        "`node.kubernetes.io/instance-type`, ...); checked at preview.",
    )
    writable_root_filesystem: bool = Field(
        False,
        description="Let the main container write to its root filesystem (for images that "
        "write to their working directory or install at start). Still Pod Security "
        "`restricted`; the default is read-only.",
    )
    run_as_user: int | None = Field(
        None,
        ge=1,
        description=f"Run the pod as this non-zero uid (e.g. the user your image is built "
        f"for). Default: {pod.NON_ROOT_UID}.",
    )
    run_as_group: int | None = Field(
        None,
        ge=1,
        description=f"Run as this non-zero gid (also the volumes' fsGroup). Default: "
        f"{pod.NON_ROOT_GID}.",
    )

    @field_validator("secret_env")
    @classmethod
    def _check_secret_env(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[tuple[Loc, str]] = [
            ((k,), f"{v!r} is not `<secret>/<key>`")
            for k, v in value.items()
            if not _SECRET_REF.match(v)
        ]
        problems += [
            ((k,), "not a valid environment variable name") for k in value if not _ENV_NAME.match(k)
        ]
        if problems:
            raise FieldProblems(problems)
        return value

    @field_validator("field_env")
    @classmethod
    def _check_field_env(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[tuple[Loc, str]] = [
            ((k,), "not a valid environment variable name") for k in value if not _ENV_NAME.match(k)
        ]
        problems += [
            (
                (k,),
                f"{v!r} is not a downward API field (" + ", ".join(FIELD_PATHS) + ", or "
                "metadata.labels['<key>'] / metadata.annotations['<key>'])",
            )
            for k, v in value.items()
            if v not in FIELD_PATHS and not _FIELD_MAP.match(v)
        ]
        if problems:
            raise FieldProblems(problems)
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[tuple[Loc, str]] = [
            ((k,), "not a valid environment variable name") for k in value if not _ENV_NAME.match(k)
        ]
        if problems:
            raise FieldProblems(problems)
        return value

    @model_validator(mode="after")
    def _check_common(self) -> WorkloadSpec:
        problems: list[tuple[Loc, str]] = []
        problems += _limit_problems(self.cpu, self.cpu_limit, self.memory, self.memory_limit)
        problems += self._pod_setting_problems()
        if self.command is not None and self.image is None and self._own_command_needs_image:
            problems.append((("command",), "a custom command needs a custom `image`"))
        if self.mig_profile and self.gpus == 0:
            problems.append((("gpus",), "set the number of MIG slices (>= 1) with migProfile"))
        if self.accelerators and self.gpus == 0:
            problems.append((("accelerators",), "only GPU workloads choose accelerators"))
        if self.shm is not None and quantity.parse(self.shm) >= quantity.parse(self.memory):
            problems.append(
                (("shm",), f"{self.shm} must be below memory ({self.memory}): it counts against it")
            )
        if self.uses_runtime:
            floor = contract.MIN_MEMORY_MIB[self.runtime_program]
            if quantity.mebibytes(self.memory) < floor:
                problems.append(
                    (
                        ("memory",),
                        f"{self.memory} is below the runtime {self.runtime_program} "
                        f"program's minimum ({floor}Mi)",
                    )
                )
        if problems:
            raise FieldProblems(problems)
        return self

    def _pod_setting_problems(self) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        names: dict[str, int] = {}
        paths: dict[str, int] = {}
        for i, v in enumerate(self.volumes):
            if v.name in self.platform_mounts():
                problems.append(
                    (("volumes", i, "name"), f"{v.name!r} is a volume the platform uses")
                )
            elif v.name in names:
                problems.append(
                    (
                        ("volumes", i, "name"),
                        f"{v.name!r} is already used by volumes[{names[v.name]}]",
                    )
                )
            names.setdefault(v.name, i)
            if v.mount_path is None:
                continue
            if v.mount_path in self.platform_mounts().values():
                problems.append(
                    (
                        ("volumes", i, "mountPath"),
                        f"{v.mount_path} is mounted by the platform in this workload",
                    )
                )
            elif v.mount_path in paths:
                problems.append(
                    (
                        ("volumes", i, "mountPath"),
                        f"{v.mount_path} is already used by volumes[{paths[v.mount_path]}]",
                    )
                )
            paths.setdefault(v.mount_path, i)
        containers: dict[str, str] = {}
        for key, extras in (("sidecars", self.sidecars), ("initContainers", self.init_containers)):
            for i, c in enumerate(extras):
                if c.name in containers:
                    problems.append(
                        ((key, i, "name"), f"{c.name!r} is already used by {containers[c.name]}")
                    )
                containers.setdefault(c.name, f"{key}[{i}]")
                for j, m in enumerate(c.volume_mounts):
                    if m.volume not in names:
                        problems.append(
                            (
                                (key, i, "volumeMounts", j, "volume"),
                                f"{m.volume!r} is not in this workload's volumes",
                            )
                        )
        problems += [
            (("labels", *loc), msg)
            for loc, msg in _check_key_values(
                self.labels, "label", reserved=RESERVED_LABEL_PREFIXES, check_value=True
            )
        ]
        problems += [
            (("annotations", *loc), msg)
            for loc, msg in _check_key_values(
                self.annotations,
                "annotation",
                reserved=RESERVED_ANNOTATION_PREFIXES,
                check_value=False,
            )
        ]
        problems += [
            (("nodeSelector", *loc), msg)
            for loc, msg in _check_key_values(
                self.node_selector, "node label", reserved=(), check_value=True
            )
        ]
        return problems

    # Facts derived from the spec ------------------------------------------

    @property
    def _own_command_needs_image(self) -> bool:
        """Whether a `command` without an `image` is this check's business (a kind
        with its own rules for `command` says no)."""
        return True

    def platform_mounts(self) -> dict[str, str]:
        """Volume name -> path the platform mounts in this workload's main container."""
        return {pod.SCRATCH_VOLUME: contract.SCRATCH_DIR, pod.SHM_VOLUME: "/dev/shm"}

    @property
    def extra_containers(self) -> list[tuple[Loc, ExtraContainer]]:
        """Sidecars and init containers, each with its key path."""
        out: list[tuple[Loc, ExtraContainer]] = [
            (("sidecars", i), c) for i, c in enumerate(self.sidecars)
        ]
        out += [(("initContainers", i), c) for i, c in enumerate(self.init_containers)]
        return out

    def container_shapes(self) -> list[tuple[Loc, ContainerShape]]:
        """Every container the workload's pods run, with the key path that sets its
        resources: what LimitRange checks need."""
        main = ContainerShape(self.cpu, self.cpu_limit, self.memory, self.memory_limit)
        shapes: list[tuple[Loc, ContainerShape]] = [((), main)]
        shapes += [
            (loc, ContainerShape(c.cpu, c.cpu_limit, c.memory, c.memory_limit))
            for loc, c in self.extra_containers
        ]
        return shapes

    @property
    def checkov_reasons(self) -> dict[str, str]:
        """Why this workload's pods fail some generic checkov checks, by check."""
        reasons = {
            "CKV_K8S_11": "no CPU limit by design: CFS quota throttling stalls data loaders, "
            "tokenizers and batchers; CPU is bounded by requests and the team ResourceQuota"
        }
        if self.writable_root_filesystem or any(
            c.writable_root_filesystem for _, c in self.extra_containers
        ):
            reasons["CKV_K8S_22"] = (
                "writableRootFilesystem opted in by the workload: its image writes outside "
                "its volumes (still non-root, no privilege escalation, capabilities dropped)"
            )
        if self.secret_env or any(c.secret_env for _, c in self.extra_containers):
            reasons["CKV_K8S_35"] = (
                "secretEnv chosen by the workload: its program reads these values from the "
                "environment (mount the Secret as a volume, or use IRSA, to avoid it)"
            )
        if self.run_as_user is not None and self.run_as_user < 10000:
            reasons["CKV_K8S_40"] = (
                f"runAsUser {self.run_as_user} set by the workload: the uid its image is "
                "built for (non-zero, runAsNonRoot enforced)"
            )
        return reasons

    # Facts derived from the spec (GPU, memory) -------------------------------

    # The runtime program a kind runs (its memory floor comes from the contract).
    runtime_program: ClassVar[str] = "train"

    @property
    def uses_runtime(self) -> bool:
        return self.command is None

    @property
    def needs_runtime_image(self) -> bool:
        """Runs the platform image: as its program, or to fetch its model."""
        return self.uses_runtime

    @property
    def gpu_resource(self) -> str:
        return (
            f"{catalog.MIG_RESOURCE_PREFIX}{self.mig_profile}"
            if self.mig_profile
            else catalog.GPU_RESOURCE
        )

    @property
    def shm_size(self) -> str:
        if self.shm is not None:
            return self.shm
        return f"{max(64, int(quantity.mebibytes(self.memory) // 4))}Mi"

    @property
    def object_storage_uris(self) -> list[str]:
        return []

    @property
    def uses_object_storage(self) -> bool:
        return bool(self.iam_role_arn or self.object_storage_uris)

    @property
    def gpus_per_pod(self) -> int:
        return self.gpus

    @property
    def pods(self) -> int:
        """Pods that run at once at the workload's steady state."""
        return 1


class ReadsModel(WorkloadSpec):
    """A workload whose main container reads an exported model at contract.MODEL_DIR,
    from a claim or fetched from S3 by an init container (model_pod_parts)."""

    if TYPE_CHECKING:  # each kind declares the field, with its own description
        model: ModelSource | None

    @property
    def needs_runtime_image(self) -> bool:
        return self.uses_runtime or (self.model is not None and self.model.uri is not None)

    def platform_mounts(self) -> dict[str, str]:
        mounts = super().platform_mounts()
        if self.model is not None:
            mounts["model"] = contract.MODEL_DIR
        return mounts

    def container_shapes(self) -> list[tuple[Loc, ContainerShape]]:
        shapes = super().container_shapes()
        if self.model is not None and self.model.uri is not None:
            shapes.append((("model", "uri"), FETCH_SHAPE))
        return shapes

    @property
    def model_uris(self) -> list[str]:
        return [self.model.uri] if self.model is not None and self.model.uri else []


@dataclass(frozen=True)
class WorkloadContext:
    """What a workload component needs to know about the platform around it."""

    environment: str
    namespace: str
    runtime_image: pulumi.Input[str]
    spot_priority_classes: Sequence[str] = ()
    storage_class: str | None = None  # ReadWriteOnce volumes (EBS)
    shared_storage_class: str | None = None  # ReadWriteMany volumes (EFS), if any
    gateway_namespace: str = "gateway"
    mlflow_tracking_uri: str | None = None
    team_allows_https_egress: bool = True
    team_allows_intra_namespace: bool = True
    # What every object of the workload waits for (the team namespace, the
    # priority classes): a component's dependencies do not reach its children.
    depends_on: Sequence[pulumi.Resource] = ()
    # The Kueue LocalQueue the workload's jobs wait in; None: not queued
    # (queueing off, or serving).
    queue_name: str | None = None

    def opts(
        self, parent: pulumi.Resource, *after: pulumi.Resource, **kw: Any
    ) -> pulumi.ResourceOptions:
        """Options of a workload's child resource."""
        return pulumi.ResourceOptions(parent=parent, depends_on=[*self.depends_on, *after], **kw)


def queue_labels(spec: WorkloadSpec, ctx: WorkloadContext) -> dict[str, str]:
    """The labels that put a job in its Kueue queue, at its platform priority
    (the WorkloadPriorityClasses carry the PriorityClasses' names and values);
    empty when the workload is not queued."""
    if ctx.queue_name is None:
        return {}
    return {
        kueue_api.QUEUE_NAME_LABEL: ctx.queue_name,
        kueue_api.PRIORITY_CLASS_LABEL: spec.priority_class,
    }


def suspended(ctx: WorkloadContext) -> dict[str, Any]:
    """`suspend: true` for a queued Job: it is created suspended and Kueue
    unsuspends it once the whole job is admitted (Kueue's webhook would set it
    too; saying it here means no pod can start if the webhook is bypassed)."""
    return {"suspend": True} if ctx.queue_name is not None else {}


def object_metadata(
    spec: WorkloadSpec, ctx: WorkloadContext, labels: Mapping[str, str], name: str | None = None
) -> dict[str, Any]:
    """Metadata of a workload's Job, CronJob or Deployment: its labels (and the
    spec's extra ones, and the queue labels of a queued job), and the reasoned
    checkov waivers its pods need."""
    return meta.metadata(
        name or spec.name,
        {**spec.labels, **labels, **queue_labels(spec, ctx)},
        ctx.namespace,
        meta.checkov_skips(spec.checkov_reasons),
    )


def workload_labels(spec: WorkloadSpec, component: str, **extra: str) -> dict[str, str]:
    return meta.labels(
        spec.name,
        spec.name,
        component,
        **{catalog.TEAM_LABEL: spec.team, f"{catalog.LABEL_PREFIX}/workload-kind": component},
        **extra,
    )


def container_env(
    spec: WorkloadSpec, extra: Mapping[str, pod.EnvValue] | None = None
) -> dict[str, pod.EnvValue]:
    env: dict[str, pod.EnvValue] = {}
    if spec.uses_runtime or not spec.writable_root_filesystem:
        # The root filesystem is read-only: HOME and caches go to the /tmp emptyDir
        # (an own image may set its own HOME in `env`).
        env["HOME"] = contract.SCRATCH_DIR
    env.update(extra or {})
    env.update(spec.env)
    env.update(_secret_env(spec.secret_env))
    env.update({name: pod.FieldRef(path) for name, path in spec.field_env.items()})
    return env


def resources(spec: WorkloadSpec) -> pod.Resources:
    return pod.Resources(
        cpu=spec.cpu,
        memory=spec.memory,
        cpu_limit=spec.cpu_limit,
        memory_limit=spec.memory_limit,
        gpus=spec.gpus,
        gpu_resource=spec.gpu_resource,
    )


def image_of(spec: WorkloadSpec, ctx: WorkloadContext) -> pulumi.Input[str]:
    return spec.image or ctx.runtime_image


def entrypoint(
    spec: WorkloadSpec, runtime_command: Sequence[str], runtime_args: Sequence[str]
) -> tuple[list[str] | None, list[str]]:
    """(command, args): the runtime program with the platform's arguments, or the
    user's own command; `args` from the spec go last either way."""
    if spec.uses_runtime:
        return [*runtime_command], [*runtime_args, *spec.args]
    return list(spec.command or []), list(spec.args)


def pod_spec(
    spec: WorkloadSpec,
    ctx: WorkloadContext,
    labels: Mapping[str, str],
    containers: Sequence[pod.Container],
    **kw: Any,
) -> dict[str, Any]:
    """The pod template of a workload: the platform pod builder with the
    workload's identity, priority and GPU placement, and the spec's pod settings
    (volumes, init containers, sidecars, labels, annotations, node selector,
    identity, root filesystem). `containers` are the main ones: they get the
    spec's volumes and working directory. Training pods carry
    `karpenter.sh/do-not-disrupt`: consolidation never stops a run."""
    if getattr(spec, "kind", None) in ("training", "distributed"):
        kw["annotations"] = {
            scheduling.DO_NOT_DISRUPT_ANNOTATION: "true",
            **kw.get("annotations", {}),
        }
    mounts = [m for v in spec.volumes if (m := v.mount()) is not None]
    main = [
        dataclasses.replace(
            c,
            mounts=[*c.mounts, *mounts],
            working_dir=spec.working_dir or c.working_dir,
            writable_root_filesystem=spec.writable_root_filesystem,
        )
        for c in containers
    ]
    init = [
        *[c.container(sidecar=True) for c in spec.sidecars],
        *kw.pop("init_containers", ()),
        *[c.container(sidecar=False) for c in spec.init_containers],
    ]
    volumes = [*kw.pop("volumes", ()), *[v.volume() for v in spec.volumes]]
    annotations = {**kw.pop("annotations", {}), **spec.annotations}
    return pod.pod_template(
        pod.PodSpec(
            labels={**spec.labels, **labels},
            containers=main,
            init_containers=init,
            volumes=volumes,
            annotations=annotations,
            node_selector=spec.node_selector,
            priority_class=spec.priority_class,
            spot_priority_classes=ctx.spot_priority_classes,
            accelerators=spec.accelerators,
            service_account=spec.name,
            termination_grace_period_seconds=spec.termination_grace_period_seconds,
            scratch_size=spec.scratch,
            run_as_user=spec.run_as_user or pod.NON_ROOT_UID,
            run_as_group=spec.run_as_group or pod.NON_ROOT_GID,
            **kw,
        )
    )


def service_account(
    name: str,
    spec: WorkloadSpec,
    ctx: WorkloadContext,
    labels: Mapping[str, str],
    parent: pulumi.Resource,
) -> k8s.core.v1.ServiceAccount:
    """One ServiceAccount per workload: its own identity, and its IRSA role if any.
    The token is not mounted: IRSA's webhook projects its own."""
    annotations = {IRSA_ANNOTATION: spec.iam_role_arn} if spec.iam_role_arn else None
    return k8s.core.v1.ServiceAccount(
        f"{name}-sa",
        metadata=meta.metadata(spec.name, dict(labels), ctx.namespace, annotations),
        automount_service_account_token=False,
        opts=ctx.opts(parent),
    )


def network_policies(
    kind: Literal["training", "distributed", "inference", "batch"],
    spec: WorkloadSpec,
    ctx: WorkloadContext,
    selector: Mapping[str, str],
    *,
    serving_ports: Sequence[int] = (),
) -> dict[str, dict[str, Any]]:
    """The openings a workload needs beyond its team's policies, by kind:

    - inference: ingress on its serving ports (HTTP and gRPC, not a port that
      only serves metrics) from the gateway namespace (and from its own
      namespace when the team does not already allow that);
    - distributed: all traffic between the job's own pods (rendezvous, NCCL
      and gloo use ephemeral ports), even where the team forbids
      intra-namespace traffic;
    - anything that reads object storage: HTTPS egress, when the team's
      policies do not open it already.
    """
    pods = {"matchLabels": dict(selector)}
    policies: dict[str, dict[str, Any]] = {}
    if kind == "inference":
        assert serving_ports
        sources: list[dict[str, Any]] = [
            {
                "namespaceSelector": {
                    "matchLabels": {catalog.NAMESPACE_NAME_LABEL: ctx.gateway_namespace}
                }
            }
        ]
        if not ctx.team_allows_intra_namespace:
            sources.append({"podSelector": {}})
        policies[f"{spec.name}-ingress"] = {
            "podSelector": pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": sources,
                    "ports": [{"protocol": "TCP", "port": port} for port in serving_ports],
                }
            ],
        }
    if kind == "distributed":
        peers = [{"podSelector": pods}]
        policies[f"{spec.name}-peers"] = {
            "podSelector": pods,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": peers}],
            "egress": [{"to": peers}],
        }
    if spec.uses_object_storage and not ctx.team_allows_https_egress:
        policies[f"{spec.name}-object-storage"] = {
            "podSelector": pods,
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [LINK_LOCAL]}}],
                    "ports": [{"protocol": "TCP", "port": 443}],
                }
            ],
        }
    return policies


def open_network(
    kind: Literal["training", "distributed", "inference", "batch"],
    name: str,
    spec: WorkloadSpec,
    ctx: WorkloadContext,
    labels: Mapping[str, str],
    parent: pulumi.Resource,
    *,
    serving_ports: Sequence[int] = (),
) -> list[k8s.networking.v1.NetworkPolicy]:
    """Create the NetworkPolicies `network_policies()` derives for the workload."""
    policies = network_policies(
        kind, spec, ctx, meta.selector(dict(labels)), serving_ports=serving_ports
    )
    return [
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol-{policy_name}",
            metadata=meta.metadata(policy_name, dict(labels), ctx.namespace),
            spec=policy,
            opts=ctx.opts(parent),
        )
        for policy_name, policy in policies.items()
    ]


def model_pod_parts(
    source: ModelSource | None, ctx: WorkloadContext, spec: WorkloadSpec
) -> tuple[list[pod.Volume], list[pod.Container], list[pod.Mount]]:
    """model_volume() as lists to build a pod from: all empty without a model."""
    if source is None:
        return [], [], []
    volumes, init, mount = model_volume(source, ctx, spec)
    return volumes, init, [mount]


def model_volume(
    source: ModelSource, ctx: WorkloadContext, spec: WorkloadSpec
) -> tuple[list[pod.Volume], list[pod.Container], pod.Mount]:
    """Volumes, init containers and the mount that put the model at /models."""
    if source.claim is not None:
        volume = pod.Volume("model", claim=source.claim, claim_read_only=True)
        return (
            [volume],
            [],
            pod.Mount("model", contract.MODEL_DIR, read_only=True, sub_path=source.sub_path),
        )
    fetch = pod.Container(
        name="fetch-model",
        image=ctx.runtime_image,  # type: ignore[arg-type]
        command=["python", "-m", contract.FETCH_MODULE],
        args=[str(source.uri), contract.MODEL_DIR],
        env={"HOME": contract.SCRATCH_DIR},
        resources=pod.Resources(cpu=FETCH_CPU, memory=FETCH_MEMORY),
        mounts=[pod.Mount("model", contract.MODEL_DIR)],
    )
    volume = pod.Volume("model", empty_dir=source.cache_size)
    return [volume], [fetch], pod.Mount("model", contract.MODEL_DIR, read_only=True)


def checkpoint_claim(
    name: str,
    spec_name: str,
    size: str,
    storage_class: str | None,
    access_mode: str,
    ctx: WorkloadContext,
    labels: Mapping[str, str],
    parent: pulumi.Resource,
) -> k8s.core.v1.PersistentVolumeClaim:
    """A PVC for checkpoints. Kept when the workload is removed from the stack:
    checkpoints outlive the job that wrote them (delete the PVC by hand)."""
    spec: dict[str, Any] = {
        "accessModes": [access_mode],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return k8s.core.v1.PersistentVolumeClaim(
        f"{name}-checkpoints",
        metadata=meta.metadata(f"{spec_name}-checkpoints", dict(labels), ctx.namespace),
        spec=spec,
        opts=ctx.opts(parent, retain_on_delete=True),
    )
