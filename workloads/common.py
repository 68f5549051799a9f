"""What every workload shares: the spec fields users declare, the platform
context the components receive, and the helpers that turn both into
ServiceAccounts, PVCs, pod specs and network openings.

A workload's network openings are derived from its kind and what it uses
(object storage, peers, the gateway), never written by hand per workload.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import pulumi
import pulumi_kubernetes as k8s
from pydantic import AfterValidator, Field, field_validator, model_validator

from infra import catalog, kueue_api, meta, pod, quantity, scheduling
from infra.config_types import DnsLabel, FieldProblems, Loc, PriorityClassName, Quantity, _Model
from workloads.runtime import contract

# Job pods are named <job>-<index>-<5 random>; an Indexed Job's hostname is
# <job>-<index>. 40 characters leave room for both under the 63 limit.
MAX_NAME_LENGTH = 40
LINK_LOCAL = "169.254.0.0/16"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[a-f0-9]{64})?$")
_SECRET_REF = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    cpu: Quantity = Field(
        "2", description="CPU request (no CPU limit: throttling slows input pipelines)."
    )
    memory: Quantity = Field("8Gi", description="Memory request and limit.")
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
        if self.command is not None and self.image is None:
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

    # Facts derived from the spec ------------------------------------------

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


# The one security exception of every workload, stated once: see checkov_skips.
NO_CPU_LIMIT = meta.checkov_skips(
    {
        "CKV_K8S_11": "no CPU limit by design: CFS quota throttling stalls data loaders, "
        "tokenizers and batchers; CPU is bounded by requests and the team ResourceQuota"
    }
)


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
    """Metadata of a workload's Job, CronJob or Deployment (with the queue labels
    of a queued job)."""
    return meta.metadata(
        name or spec.name, {**labels, **queue_labels(spec, ctx)}, ctx.namespace, NO_CPU_LIMIT
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
    if spec.uses_runtime:
        # The root filesystem is read-only: caches go to the /tmp emptyDir.
        env["HOME"] = contract.SCRATCH_DIR
    env.update(extra or {})
    env.update(spec.env)
    for name, ref in spec.secret_env.items():
        secret, key = ref.split("/", 1)
        env[name] = pod.SecretRef(secret, key)
    return env


def resources(spec: WorkloadSpec) -> pod.Resources:
    return pod.Resources(
        cpu=spec.cpu, memory=spec.memory, gpus=spec.gpus, gpu_resource=spec.gpu_resource
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
    workload's identity, priority and GPU placement. Training pods carry
    `karpenter.sh/do-not-disrupt`: consolidation never stops a run."""
    if getattr(spec, "kind", None) in ("training", "distributed"):
        kw["annotations"] = {
            scheduling.DO_NOT_DISRUPT_ANNOTATION: "true",
            **kw.get("annotations", {}),
        }
    return pod.pod_template(
        pod.PodSpec(
            labels=labels,
            containers=containers,
            priority_class=spec.priority_class,
            spot_priority_classes=ctx.spot_priority_classes,
            accelerators=spec.accelerators,
            service_account=spec.name,
            termination_grace_period_seconds=spec.termination_grace_period_seconds,
            scratch_size=spec.scratch,
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
    http_port: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The openings a workload needs beyond its team's policies, by kind:

    - inference: ingress on its HTTP port from the gateway namespace (and from
      its own namespace when the team does not already allow that);
    - distributed: all traffic between the job's own pods (rendezvous, NCCL
      and gloo use ephemeral ports), even where the team forbids
      intra-namespace traffic;
    - anything that reads object storage: HTTPS egress, when the team's
      policies do not open it already.
    """
    pods = {"matchLabels": dict(selector)}
    policies: dict[str, dict[str, Any]] = {}
    if kind == "inference":
        assert http_port is not None
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
            "ingress": [{"from": sources, "ports": [{"protocol": "TCP", "port": http_port}]}],
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
    http_port: int | None = None,
) -> list[k8s.networking.v1.NetworkPolicy]:
    """Create the NetworkPolicies `network_policies()` derives for the workload."""
    policies = network_policies(kind, spec, ctx, meta.selector(dict(labels)), http_port=http_port)
    return [
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol-{policy_name}",
            metadata=meta.metadata(policy_name, dict(labels), ctx.namespace),
            spec=policy,
            opts=ctx.opts(parent),
        )
        for policy_name, policy in policies.items()
    ]


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
        resources=pod.Resources(cpu="500m", memory="1Gi"),
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
