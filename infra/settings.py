"""PlatformSettings: the whole stack configuration as one typed, validated model.

Every key lives under the `mlplatform:` config namespace, in camelCase, e.g.

    config:
      mlplatform:cluster:
        mode: create
        kubernetesVersion: "1.35"
      mlplatform:gpuNodeGroups:
        - name: a10g
          instanceTypes: [g5.2xlarge]
          maxSize: 4

Unknown keys are rejected. Validation collects every problem, each with its
full key path (`mlplatform:gpuNodeGroups[1].maxSize: ...`), and fails once,
before any resource is registered. The README's configuration reference is
generated from the field descriptions here (`make docs`).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from infra import catalog, instances, quantity
from infra.config_types import (
    Cidr,
    ConfigError,
    DnsLabel,
    FieldProblems,
    Loc,
    PriorityClassName,
    Quantity,
    _Model,
    check_scaling,
    format_loc,
)
from policies import rules
from workloads.batch import BatchInferenceSpec
from workloads.distributed import DistributedTrainingSpec
from workloads.image import RuntimeImageSettings
from workloads.monitoring import MonitoringSettings
from workloads.serving import InferenceServiceSpec
from workloads.training import TrainingJobSpec

NAMESPACE = "mlplatform"

# EKS versions this release is tested against (kubernetes-validate ships their
# schemas). Indexed Jobs with backoffLimitPerIndex need >= 1.33 (GA there).
SUPPORTED_KUBERNETES_VERSIONS = ("1.33", "1.34", "1.35", "1.36", "1.37")


# ---------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------


class VpcSettings(_Model):
    """The VPC created in `create` mode."""

    cidr: Cidr = Field(
        "10.0.0.0/16",
        description="IPv4 CIDR of the VPC. A /16 leaves room for /19 private subnets "
        "(8,190 pod IPs each with the VPC CNI). Prefix length 16 to 20.",
    )
    availability_zones: int = Field(
        3,
        ge=2,
        le=6,
        description="Number of availability zones to spread subnets over (2 to 6; "
        "EKS requires subnets in at least 2).",
    )
    nat_gateways: Literal["single", "perAz"] = Field(
        "perAz",
        description="`perAz`: one NAT gateway per zone, so a zone outage does not cut "
        "egress for the others. `single`: one NAT gateway (cheaper; for dev).",
    )

    @field_validator("cidr")
    @classmethod
    def _check_prefix(cls, cidr: str) -> str:
        prefix = ipaddress.ip_network(cidr).prefixlen
        if not 16 <= prefix <= 20:
            raise ValueError(f"prefix length must be 16 to 20, got /{prefix}")
        return cidr


class SystemNodeGroupSettings(_Model):
    """The small CPU node group for cluster add-ons and CPU pods (`create` mode)."""

    instance_types: list[str] = Field(
        ["m7i.xlarge"],
        min_length=1,
        description="Instance types (4 vCPU / 16 GiB holds CoreDNS, the EBS CSI "
        "controller and a monitoring stack).",
    )
    min_size: int = Field(
        2, ge=1, description="Minimum nodes (>= 1; 2 keeps CoreDNS highly available)."
    )
    desired_size: int | None = Field(None, description="Initial nodes. Default: `minSize`.")
    max_size: int = Field(4, ge=1, description="Maximum nodes.")
    disk_size_gib: int = Field(
        50, alias="diskSizeGiB", ge=20, le=16384, description="Root volume size in GiB."
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> SystemNodeGroupSettings:
        check_scaling(self.min_size, self.desired_size, self.max_size)
        return self


class ExistingGpuNodesSettings(_Model):
    """GPU nodes that already exist in the cluster (not created by this stack).
    Used for capacity planning and quota checks."""

    name: DnsLabel = Field(description="A name for this pool (used in the plan).")
    count: int = Field(ge=0, description="Maximum number of such nodes.")
    gpus_per_node: int = Field(ge=1, le=16, description="GPUs per node.")
    accelerator: str | None = Field(
        None,
        description="Value of the nodes' `k8s.amazonaws.com/accelerator` label, if any.",
    )


class ClusterSettings(_Model):
    """Which cluster the platform runs on."""

    mode: Literal["create", "existing"] = Field(
        "create",
        description="`create`: a new VPC and EKS cluster. `existing`: an EKS cluster "
        "found by `name`, or any cluster by `kubeconfigContext`.",
    )
    name: DnsLabel | None = Field(
        None,
        description="EKS cluster name. Default in `create` mode: `mlplatform-<environment>`. "
        "Required in `existing` mode unless `kubeconfigContext` is set.",
    )
    kubeconfig_context: str | None = Field(
        None,
        description="`existing` mode only: use this context of the default kubeconfig "
        "($KUBECONFIG or ~/.kube/config) and create no AWS resources at all (on-prem, kind). "
        "Cannot be combined with `gpuNodeGroups`.",
    )
    region: str | None = Field(
        None,
        description="AWS region. Default: the `aws:region` config value. Required "
        "whenever AWS resources are created.",
    )
    kubernetes_version: str = Field(
        "1.35",
        description=f"Kubernetes minor version ({', '.join(SUPPORTED_KUBERNETES_VERSIONS)}). "
        "Manifests are schema-validated against it; in `existing` mode give the "
        "cluster's version.",
    )
    endpoint_public_access_cidrs: list[Cidr] = Field(
        [],
        description="CIDRs allowed to reach the public API endpoint. Empty (default): "
        "the endpoint is private to the VPC. `0.0.0.0/0` is rejected.",
    )
    admin_role_arns: list[str] = Field(
        [],
        description="IAM role ARNs granted cluster-admin through EKS access entries "
        "(the identity running `pulumi up` is admin already).",
    )
    control_plane_logs: list[
        Literal["api", "audit", "authenticator", "controllerManager", "scheduler"]
    ] = Field(
        ["api", "audit", "authenticator"],
        description="Control-plane log types sent to CloudWatch.",
    )
    secrets_encryption: bool = Field(
        True,
        description="Envelope-encrypt Kubernetes Secrets with a customer-managed KMS key "
        "(rotation on).",
    )
    deletion_protection: bool = Field(
        True,
        description="EKS deletion protection (`create` mode): the cluster cannot be "
        "deleted until this is turned off. Turn it off for throwaway dev clusters.",
    )
    storage_class: str = Field(
        "gp3",
        description="StorageClass for checkpoint and model PVCs. `create` mode installs "
        "the EBS CSI driver and an encrypted `gp3` class; in `existing` mode name one "
        "the cluster has.",
    )
    shared_storage_class: str | None = Field(
        None,
        description="ReadWriteMany StorageClass for checkpoints shared by the nodes of a "
        "distributed run. In `create` mode, setting it creates an encrypted EFS file "
        "system, the EFS CSI driver and a class of this name; in `existing` mode name one "
        "the cluster has. Unset: multi-node training needs an existing RWX claim.",
    )
    vpc: VpcSettings = Field(default_factory=VpcSettings, description="VPC (`create` mode).")
    system_nodes: SystemNodeGroupSettings = Field(
        default_factory=SystemNodeGroupSettings,
        description="System node group (`create` mode).",
    )
    subnet_ids: list[str] = Field(
        [],
        description="`existing` EKS mode: subnets for the GPU node groups. Default: the "
        "cluster's own subnets.",
    )
    existing_gpu_nodes: list[ExistingGpuNodesSettings] = Field(
        [],
        description="GPU nodes the cluster already has, counted as capacity.",
    )

    @field_validator("kubernetes_version", mode="before")
    @classmethod
    def _check_version(cls, version: Any) -> str:
        # YAML reads 1.30 as a float; accept it but compare as text.
        text = str(version)
        if text not in SUPPORTED_KUBERNETES_VERSIONS:
            raise ValueError(
                f"{text!r} is not supported; use one of {', '.join(SUPPORTED_KUBERNETES_VERSIONS)}"
            )
        return text

    @field_validator("endpoint_public_access_cidrs")
    @classmethod
    def _check_public_cidrs(cls, cidrs: list[str]) -> list[str]:
        problems: list[tuple[Loc, str]] = [
            (
                (i,),
                f"{cidr} opens the API endpoint to the whole internet; list the CIDRs "
                "of your offices, VPN or CI runners",
            )
            for i, cidr in enumerate(cidrs)
            if ipaddress.ip_network(cidr).prefixlen == 0
        ]
        if problems:
            raise FieldProblems(problems)
        return cidrs

    @model_validator(mode="after")
    def _check(self) -> ClusterSettings:
        problems: list[tuple[Loc, str]] = []
        if self.kubeconfig_context and self.mode != "existing":
            problems.append((("kubeconfigContext",), "only valid with mode: existing"))
        if self.mode == "existing" and not self.kubeconfig_context and not self.name:
            problems.append(
                (
                    ("name",),
                    "mode: existing needs the EKS cluster name (or kubeconfigContext)",
                )
            )
        if self.subnet_ids and self.mode != "existing":
            problems.append(
                (
                    ("subnetIds",),
                    "only valid with mode: existing (create mode makes its own subnets)",
                )
            )
        if self.uses_aws and not self.region:
            problems.append(
                (
                    ("region",),
                    "required (or set `aws:region`) when AWS resources are managed",
                )
            )
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def uses_aws(self) -> bool:
        return not (self.mode == "existing" and self.kubeconfig_context)


# ---------------------------------------------------------------------------
# GPU node groups and the device plugin
# ---------------------------------------------------------------------------

AmiType = Literal["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"]


class GpuNodeGroupSettings(_Model):
    """One EKS managed node group of GPU instances."""

    name: DnsLabel = Field(description="Node group name, unique in the stack (a DNS-1123 label).")
    instance_types: list[str] = Field(
        min_length=1,
        description="GPU instance types. All must have the same GPU count and model, "
        "since the autoscaler builds one node template per group. Known families: "
        + ", ".join(instances.GPU_FAMILIES)
        + ".",
    )
    ami_type: AmiType = Field(
        "AL2023_x86_64_NVIDIA",
        description="`AL2023_x86_64_NVIDIA` (NVIDIA driver and container toolkit; the "
        "platform's device plugin DaemonSet runs on it) or `BOTTLEROCKET_x86_64_NVIDIA` "
        "(ships its own device plugin; the DaemonSet skips these nodes).",
    )
    capacity_type: Literal["ON_DEMAND", "SPOT"] = Field(
        "ON_DEMAND",
        description="`SPOT` nodes get the taint `mlplatform.io/capacity-type=spot:NoSchedule`; "
        "only priority classes in `scheduling.spotPriorityClasses` tolerate it.",
    )
    min_size: int = Field(0, ge=0, description="Minimum nodes; 0 lets the group scale to zero.")
    desired_size: int | None = Field(
        None,
        description="Initial nodes. Default: `minSize`. Later changes by the cluster "
        "autoscaler are not reverted by `pulumi up`.",
    )
    max_size: int = Field(ge=1, description="Maximum nodes (required).")
    disk_size_gib: int = Field(
        200,
        alias="diskSizeGiB",
        ge=50,
        le=16384,
        description="Root volume in GiB; CUDA images are large, 200 fits several.",
    )
    labels: dict[str, str] = Field({}, description="Extra node labels.")
    subnet_ids: list[str] = Field(
        [],
        description="Subnets for this group (e.g. one zone with a capacity reservation). "
        "Default: the cluster's private subnets.",
    )

    @field_validator("instance_types")
    @classmethod
    def _check_instance_types(cls, names: list[str]) -> list[str]:
        problems: list[tuple[Loc, str]] = []
        for i, name in enumerate(names):
            if instances.lookup(name) is None:
                family = name.split(".", 1)[0]
                hint = (
                    f"unknown size of the {family} family"
                    if family in instances.GPU_FAMILIES
                    else "not a GPU instance type; known GPU families: "
                    + ", ".join(instances.GPU_FAMILIES)
                )
                problems.append(((i,), f"{name!r}: {hint}"))
        shapes = {(t.gpus, t.gpu_model) for n in names if (t := instances.lookup(n))}
        if len(shapes) > 1:
            got = ", ".join(f"{g}x {m}" for g, m in sorted(shapes))
            problems.append(
                (
                    (),
                    "all instance types of a group need the same GPU count and model "
                    f"(got {got}); use one group per shape",
                )
            )
        if problems:
            raise FieldProblems(problems)
        return names

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        reserved = (catalog.GPU_PRESENT_LABEL, catalog.ACCELERATOR_LABEL)
        problems: list[tuple[Loc, str]] = [
            ((key,), "this label is set by the platform")
            for key in labels
            if key.startswith(catalog.LABEL_PREFIX) or key in reserved
        ]
        if problems:
            raise FieldProblems(problems)
        return labels

    @model_validator(mode="after")
    def _check_sizes(self) -> GpuNodeGroupSettings:
        check_scaling(self.min_size, self.desired_size, self.max_size)
        return self

    @property
    def instance_type_info(self) -> instances.GpuInstanceType:
        info = instances.lookup(self.instance_types[0])
        assert info is not None  # validated
        return info

    @property
    def gpus_per_node(self) -> int:
        return self.instance_type_info.gpus

    @property
    def max_gpus(self) -> int:
        return self.max_size * self.gpus_per_node

    @property
    def is_spot(self) -> bool:
        return self.capacity_type == "SPOT"

    @property
    def is_bottlerocket(self) -> bool:
        return self.ami_type.startswith("BOTTLEROCKET")


class TimeSlicingSettings(_Model):
    """GPU time-slicing: several pods share one GPU in turns (no memory or fault isolation)."""

    replicas: int = Field(
        1,
        ge=1,
        le=48,
        description="Pods per physical GPU. 1 (default) turns time-slicing off.",
    )
    rename_by_default: bool = Field(
        False,
        description="Advertise shared GPUs as `nvidia.com/gpu.shared` so pods opt in "
        "explicitly instead of getting a slice where they asked for a GPU.",
    )
    fail_requests_greater_than_one: bool = Field(
        True,
        description="Reject pods asking for more than one shared GPU (more slices "
        "give no more compute).",
    )


# NVIDIA k8s-device-plugin v0.20.1 (September 2026, the newest release: v0.20.0
# plus fixes), tag and digest as NVIDIA's GPU Operator v26.7.1 pins it in its
# certified OLM bundle: redhat-openshift-ecosystem/certified-operators,
# operators/gpu-operator-certified/26.7.1/manifests/, the ClusterServiceVersion's
# relatedImages (device-plugin-image).
DEVICE_PLUGIN_IMAGE = (
    "nvcr.io/nvidia/k8s-device-plugin:v0.20.1"
    "@sha256:27c1b2553a690ca3d29889dcd61df97525d46f58272c0be8dc63c2b18f120075"
)


class DevicePluginSettings(_Model):
    """NVIDIA k8s-device-plugin (kube-system DaemonSet on GPU nodes)."""

    enabled: bool = Field(
        True,
        description="Deploy the DaemonSet. Turn off only when something else (the GPU "
        "Operator, Bottlerocket) advertises `nvidia.com/gpu` on every GPU node.",
    )
    image: str = Field(
        DEVICE_PLUGIN_IMAGE,
        description="Device plugin image, pinned by tag and digest (v0.20.1: the newest "
        "release, the one NVIDIA's GPU Operator v26.7.1 ships).",
    )
    mig_strategy: Literal["none", "single", "mixed"] = Field(
        "none",
        description="How MIG devices are advertised: `none`, `single` (all "
        "`nvidia.com/gpu`), `mixed` (`nvidia.com/mig-<profile>`). Needs MIG-capable "
        "GPUs (A100, H100, H200) partitioned by an operator.",
    )
    time_slicing: TimeSlicingSettings = Field(
        default_factory=TimeSlicingSettings, description="GPU time-slicing."
    )

    @property
    def sharing_enabled(self) -> bool:
        return self.time_slicing.replicas > 1


# ---------------------------------------------------------------------------
# Scheduling and tenancy
# ---------------------------------------------------------------------------


class SchedulingSettings(_Model):
    """Placement rules shared by every workload."""

    spot_priority_classes: list[PriorityClassName] = Field(
        ["training-preemptible"],
        description="Priority classes whose GPU pods tolerate the spot taint and so may "
        "run on SPOT node groups. Only work that checkpoints and can lose a node "
        "belongs there; dev may list more to use a single spot group.",
    )


class TeamQuota(_Model):
    """The team namespace's ResourceQuota."""

    gpus: int = Field(
        0,
        ge=0,
        description="`requests.nvidia.com/gpu` (extended resources accept only the "
        "`requests.` prefix; requests equal limits for GPUs).",
    )
    overcommit: bool = Field(
        False,
        description="Allow `gpus` above the GPUs the node groups can ever provide.",
    )
    cpu: Quantity = Field("32", description="`requests.cpu`.")
    cpu_limits: Quantity | None = Field(
        None,
        description="`limits.cpu`. Unset by default: a limits.cpu quota forces a CPU "
        "limit on every container, and CFS throttling slows data loading.",
    )
    memory: Quantity = Field("128Gi", description="`requests.memory`.")
    memory_limits: Quantity | None = Field(None, description="`limits.memory`. Default: `memory`.")
    pods: int = Field(50, ge=1, description="`pods`.")
    persistent_volume_claims: int = Field(10, ge=0, description="`persistentvolumeclaims`.")
    storage: Quantity = Field("1Ti", description="`requests.storage` over all PVCs.")
    jobs: int = Field(20, ge=0, description="`count/jobs.batch`.")


class TeamLimits(_Model):
    """The team namespace's LimitRange (per-container defaults and maxima)."""

    default_cpu_request: Quantity = Field(
        "250m", description="CPU request for containers that set none."
    )
    default_memory_request: Quantity = Field(
        "512Mi", description="Memory request for containers that set none."
    )
    default_memory_limit: Quantity = Field(
        "1Gi", description="Memory limit for containers that set none."
    )
    default_cpu_limit: Quantity | None = Field(
        None,
        description="CPU limit for containers that set none. Required when "
        "`quota.cpuLimits` is set.",
    )
    max_gpus_per_container: int | None = Field(
        None,
        ge=0,
        description="Most GPUs one container may ask for. Default: the GPUs of the "
        "largest instance type in the stack.",
    )


class TeamNetwork(_Model):
    """The openings in the namespace's default-deny NetworkPolicy."""

    allow_dns: bool = Field(True, description="Egress to CoreDNS (UDP/TCP 53).")
    allow_intra_namespace: bool = Field(True, description="Traffic between pods of the namespace.")
    allow_monitoring_scrape: bool = Field(
        True,
        description="Ingress from the monitoring namespace to the metrics ports.",
    )
    allow_https_egress: bool = Field(
        True,
        description="Egress on TCP 443 anywhere except link-local (instance metadata): "
        "object storage, registries, package mirrors.",
    )
    egress_cidrs: list[Cidr] = Field(
        [], description="Extra CIDRs the namespace may reach on any port."
    )


class TeamSettings(_Model):
    """A team: one namespace with quota, limits and network policies."""

    name: DnsLabel = Field(description="Team name; also the namespace name.")
    quota: TeamQuota = Field(default_factory=TeamQuota, description="ResourceQuota.")
    limits: TeamLimits = Field(default_factory=TeamLimits, description="LimitRange.")
    network: TeamNetwork = Field(default_factory=TeamNetwork, description="NetworkPolicies.")

    @model_validator(mode="after")
    def _check(self) -> TeamSettings:
        problems: list[tuple[Loc, str]] = []
        if self.quota.cpu_limits is not None and self.limits.default_cpu_limit is None:
            problems.append(
                (
                    ("limits", "defaultCpuLimit"),
                    "required when quota.cpuLimits is set, or "
                    "containers without a CPU limit are rejected",
                )
            )
        pairs = [
            (
                ("limits", "defaultMemoryRequest"),
                self.limits.default_memory_request,
                "limits.defaultMemoryLimit",
                self.limits.default_memory_limit,
            ),
        ]
        if self.limits.default_cpu_limit is not None:
            pairs.append(
                (
                    ("limits", "defaultCpuRequest"),
                    self.limits.default_cpu_request,
                    "limits.defaultCpuLimit",
                    self.limits.default_cpu_limit,
                )
            )
        for loc, request, limit_name, limit in pairs:
            if quantity.parse(request) > quantity.parse(limit):
                problems.append((loc, f"{request} is greater than {limit_name} ({limit})"))
        if problems:
            raise FieldProblems(problems)
        return self


Enforcement = Literal["mandatory", "advisory", "disabled"]


class PolicySettings(_Model):
    """Thresholds and enforcement of the policy pack for this environment. The
    offline preview applies them; `make policy-config` writes the same values to
    policies/config/<stack>.json for `pulumi preview --policy-pack-config`."""

    max_gpus_per_pod: int | None = Field(
        None, ge=1, description="Most GPUs one pod may hold. Default: the largest GPU node's count."
    )
    max_gpu_node_group_size: int = Field(
        16, ge=1, description="Largest maxSize a GPU node group may have (a cost guard rail)."
    )
    gpu_quota_overcommit: float = Field(
        1.0,
        ge=1.0,
        le=10.0,
        description="Team GPU quotas may add up to capacity times this (1.0: no overcommit).",
    )
    require_image_digests: bool = Field(
        False, description="Every image must be pinned by digest (`@sha256:`), not only by tag."
    )
    allow_load_balancers: bool = Field(
        False,
        description="Allow Services of type LoadBalancer (else traffic enters via the gateway).",
    )
    enforcement: dict[str, Enforcement] = Field(
        {},
        description="Override a rule's enforcement: `rule-name: mandatory|advisory|disabled` "
        "(rules: policies/rules.py, listed in the README).",
    )

    @field_validator("enforcement")
    @classmethod
    def _known_rules(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[tuple[Loc, str]] = [
            ((name,), _unknown_key_message(name, list(rules.RULE_NAMES)).replace("key", "rule", 1))
            for name in value
            if name not in rules.RULES_BY_NAME
        ]
        if problems:
            raise FieldProblems(problems)
        return value


class MlflowSettings(_Model):
    """Experiment tracking for the runtime's train.py."""

    tracking_uri: str | None = Field(
        None,
        description="MLFLOW_TRACKING_URI given to every training workload (train.py logs "
        "metrics and parameters there). The teams' network policies must let pods reach it.",
    )


class ServingSettings(_Model):
    """How inference services are reached."""

    gateway_namespace: DnsLabel = Field(
        "gateway",
        description="Namespace of the ingress gateway (Envoy Gateway, Istio, NGINX, ...): "
        "inference services admit traffic from it.",
    )


WorkloadSettings = Annotated[
    TrainingJobSpec | DistributedTrainingSpec | InferenceServiceSpec | BatchInferenceSpec,
    Field(discriminator="kind"),
]
WORKLOAD_KINDS = ("training", "distributed", "inference", "batch")


@dataclass(frozen=True)
class GpuPool:
    """Nodes of one GPU shape a workload may land on."""

    name: str
    gpus_per_node: int
    accelerator: str | None
    spot: bool


# ---------------------------------------------------------------------------
# The whole stack
# ---------------------------------------------------------------------------


class PlatformSettings(_Model):
    """Everything under the `mlplatform:` config namespace."""

    environment: DnsLabel = Field(
        description="Environment name (dev, staging, prod, ...) used in names, labels, "
        "tags and policy thresholds. Default: the stack name.",
    )
    cluster: ClusterSettings = Field(default_factory=ClusterSettings, description="The cluster.")
    gpu_node_groups: list[GpuNodeGroupSettings] = Field([], description="GPU node groups.")
    device_plugin: DevicePluginSettings = Field(
        default_factory=DevicePluginSettings, description="NVIDIA device plugin."
    )
    scheduling: SchedulingSettings = Field(
        default_factory=SchedulingSettings, description="Scheduling."
    )
    teams: list[TeamSettings] = Field([], description="Teams, one namespace each.")
    monitoring: MonitoringSettings = Field(
        default_factory=MonitoringSettings, description="Monitoring."
    )
    tags: dict[str, str] = Field({}, description="Extra tags on every AWS resource.")
    runtime_image: RuntimeImageSettings = Field(
        default_factory=RuntimeImageSettings,
        description="The runtime image workloads run unless they name their own.",
    )
    serving: ServingSettings = Field(default_factory=ServingSettings, description="Serving.")
    mlflow: MlflowSettings = Field(
        default_factory=MlflowSettings, description="Experiment tracking."
    )
    policy: PolicySettings = Field(default_factory=PolicySettings, description="Policy thresholds.")
    workloads: list[WorkloadSettings] = Field(
        [],
        description="Workloads, each with `kind`: `training`, `distributed`, `inference` "
        "or `batch`.",
    )

    @model_validator(mode="after")
    def _check(self) -> PlatformSettings:
        problems: list[tuple[Loc, str]] = []
        problems += _unique([g.name for g in self.gpu_node_groups], "gpuNodeGroups")
        problems += _unique([t.name for t in self.teams], "teams")
        reserved = {*catalog.SYSTEM_NAMESPACES, self.monitoring.namespace}
        for i, team in enumerate(self.teams):
            if team.name in reserved or team.name.startswith("kube-"):
                problems.append(
                    (
                        ("teams", i, "name"),
                        f"{team.name!r} is reserved for the platform",
                    )
                )
        if self.gpu_node_groups and not self.cluster.uses_aws:
            problems.append(
                (
                    ("gpuNodeGroups",),
                    "GPU node groups are EKS managed node groups; with "
                    "cluster.kubeconfigContext describe the cluster's GPU nodes in "
                    "cluster.existingGpuNodes instead",
                )
            )
        largest = self.largest_node_gpus
        capacity = self.gpu_capacity
        for i, team in enumerate(self.teams):
            if team.quota.gpus > capacity and not team.quota.overcommit:
                problems.append(
                    (
                        ("teams", i, "quota", "gpus"),
                        f"{team.quota.gpus} GPUs exceed what the node groups can ever "
                        f"provide ({capacity}); lower it or set quota.overcommit: true",
                    )
                )
            limit = team.limits.max_gpus_per_container
            if limit is not None and limit > largest:
                problems.append(
                    (
                        ("teams", i, "limits", "maxGpusPerContainer"),
                        f"{limit} is more than the largest GPU node has ({largest})",
                    )
                )
        dp = self.device_plugin
        if dp.sharing_enabled or dp.mig_strategy != "none":
            for i, group in enumerate(self.gpu_node_groups):
                if group.is_bottlerocket:
                    problems.append(
                        (
                            ("gpuNodeGroups", i, "amiType"),
                            "Bottlerocket runs its own device plugin, so "
                            "devicePlugin.timeSlicing/migStrategy would not apply to it; "
                            "use AL2023_x86_64_NVIDIA or turn sharing off",
                        )
                    )
        if dp.mig_strategy != "none":
            for i, group in enumerate(self.gpu_node_groups):
                if not group.instance_type_info.mig_capable:
                    problems.append(
                        (
                            ("gpuNodeGroups", i, "instanceTypes"),
                            f"{group.instance_type_info.gpu_model} GPUs do not support MIG "
                            f"(devicePlugin.migStrategy is {dp.mig_strategy!r})",
                        )
                    )
        problems += self._check_workloads()
        if problems:
            raise FieldProblems(problems)
        return self

    def _check_workloads(self) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        teams = {t.name: t for t in self.teams}
        known_accelerators = {p.accelerator for p in self.gpu_pools if p.accelerator}
        seen: dict[tuple[str, str], int] = {}
        dp = self.device_plugin
        if self.runtime_image.build is not None and not self.cluster.uses_aws:
            problems.append(
                (
                    ("runtimeImage", "build"),
                    "building needs ECR (AWS); use `ref` with a kubeconfig context",
                )
            )
        for i, w in enumerate(self.workloads):
            at = ("workloads", i)
            team = teams.get(w.team)
            if team is None:
                problems.append(
                    (
                        (*at, "team"),
                        f"unknown team {w.team!r}; teams: {', '.join(sorted(teams)) or 'none'}",
                    )
                )
            key = (w.team, w.name)
            if key in seen:
                problems.append(
                    (
                        (*at, "name"),
                        f"{w.name!r} is already used in team {w.team!r} by workloads[{seen[key]}]",
                    )
                )
            seen.setdefault(key, i)
            if w.needs_runtime_image and not self.runtime_image.configured:
                problems.append(
                    (
                        (*at, "image"),
                        "runs the platform runtime image: set mlplatform:runtimeImage "
                        "(`ref` or `build`) or give the workload its own image and command",
                    )
                )
            for j, acc in enumerate(w.accelerators):
                if acc not in known_accelerators:
                    problems.append(
                        (
                            (*at, "accelerators", j),
                            f"{acc!r} is on no node group; the stack has "
                            f"{', '.join(sorted(known_accelerators)) or 'no labelled GPU nodes'}",
                        )
                    )
            if w.mig_profile and dp.mig_strategy != "mixed":
                problems.append(
                    (
                        (*at, "migProfile"),
                        "MIG resources per profile need devicePlugin.migStrategy: mixed",
                    )
                )
            if w.gpus and not w.mig_profile:
                pools = self.pools_for(w.priority_class, w.accelerators)
                if not pools:
                    problems.append(
                        (
                            (*at, "gpus"),
                            f"no GPU nodes it may run on (priority class {w.priority_class!r} "
                            "does not tolerate spot, or no group has the accelerators asked for)",
                        )
                    )
                else:
                    largest = max(p.gpus_per_node for p in pools)
                    if w.gpus > largest:
                        problems.append(
                            (
                                (*at, "gpus"),
                                f"{w.gpus} GPUs per pod: the largest node it may use has {largest}",
                            )
                        )
                if team is not None and w.gpus > self.max_gpus_per_container(team):
                    problems.append(
                        (
                            (*at, "gpus"),
                            f"{w.gpus} is over team {team.name!r}'s limit of "
                            f"{self.max_gpus_per_container(team)} GPUs per container",
                        )
                    )
            shared_class = self.cluster.shared_storage_class
            if (
                isinstance(w, DistributedTrainingSpec)
                and w.nodes > 1
                and w.checkpoint.claim is None
                and not (w.checkpoint.storage_class or shared_class)
            ):
                problems.append(
                    (
                        (*at, "checkpoint", "storageClass"),
                        "nodes share checkpoints: name a ReadWriteMany class here or set "
                        "cluster.sharedStorageClass (or use an existing RWX claim)",
                    )
                )
        return problems

    # Derived facts -------------------------------------------------------

    @property
    def gpu_pools(self) -> list[GpuPool]:
        return [
            GpuPool(g.name, g.gpus_per_node, g.instance_type_info.accelerator, g.is_spot)
            for g in self.gpu_node_groups
        ] + [
            GpuPool(n.name, n.gpus_per_node, n.accelerator, False)
            for n in self.cluster.existing_gpu_nodes
        ]

    def pools_for(self, priority_class: str, accelerators: list[str]) -> list[GpuPool]:
        """The GPU pools a pod of this class (and accelerator choice) can land on."""
        spot_ok = priority_class in self.scheduling.spot_priority_classes
        return [
            p
            for p in self.gpu_pools
            if (not accelerators or p.accelerator in accelerators) and (spot_ok or not p.spot)
        ]

    @property
    def cluster_name(self) -> str:
        return self.cluster.name or f"mlplatform-{self.environment}"

    @property
    def gpu_capacity(self) -> int:
        """Physical GPUs the stack can ever have: node groups at maxSize plus existing nodes."""
        return sum(g.max_gpus for g in self.gpu_node_groups) + sum(
            n.count * n.gpus_per_node for n in self.cluster.existing_gpu_nodes
        )

    @property
    def largest_node_gpus(self) -> int:
        return max(
            [g.gpus_per_node for g in self.gpu_node_groups]
            + [n.gpus_per_node for n in self.cluster.existing_gpu_nodes],
            default=0,
        )

    def policy_config(self) -> rules.PolicyConfig:
        """The policy rules' thresholds for this environment."""
        p = self.policy
        existing = self.cluster.existing_gpu_nodes
        return rules.PolicyConfig(
            max_gpus_per_pod=p.max_gpus_per_pod or self.largest_node_gpus,
            max_gpu_node_group_size=p.max_gpu_node_group_size,
            gpu_quota_overcommit=p.gpu_quota_overcommit,
            require_image_digests=p.require_image_digests,
            allow_load_balancers=p.allow_load_balancers,
            spot_priority_classes=tuple(self.scheduling.spot_priority_classes),
            existing_gpu_capacity=sum(n.count * n.gpus_per_node for n in existing),
            existing_largest_node_gpus=max((n.gpus_per_node for n in existing), default=0),
        )

    def max_gpus_per_container(self, team: TeamSettings) -> int:
        limit = team.limits.max_gpus_per_container
        return self.largest_node_gpus if limit is None else limit

    def team(self, name: str) -> TeamSettings | None:
        return next((t for t in self.teams if t.name == name), None)


def _unique(names: list[str], key: str) -> list[tuple[Loc, str]]:
    seen: dict[str, int] = {}
    problems: list[tuple[Loc, str]] = []
    for i, name in enumerate(names):
        if name in seen:
            problems.append(((key, i, "name"), f"{name!r} is already used by {key}[{seen[name]}]"))
        else:
            seen[name] = i
    return problems


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_settings(config: Mapping[str, Any], stack: str) -> PlatformSettings:
    """Build settings from a flat Pulumi config mapping (`"mlplatform:teams" -> value`).

    Values may be parsed objects (the offline preview, tests) or the JSON strings
    Pulumi hands a program for structured config. Raises ConfigError naming every
    problem with its key path.
    """
    data: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    known = {field.alias or name: name for name, field in PlatformSettings.model_fields.items()}
    for full_key, raw in config.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        if key not in known:
            problems.append((full_key, _unknown_key_message(key, list(known))))
            continue
        data[key] = _decode(raw)
    data.setdefault("environment", stack)
    cluster = data.get("cluster")
    region = config.get("aws:region")
    if isinstance(cluster, dict) and "region" not in cluster and region:
        data["cluster"] = {**cluster, "region": region}
    elif cluster is None and region:
        data["cluster"] = {"region": region}
    try:
        settings = PlatformSettings.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def load_from_pulumi() -> PlatformSettings:
    """Settings from the running Pulumi program's config."""
    merged: dict[str, Any] = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    return load_settings(merged, pulumi.get_stack())


def _decode(raw: Any) -> Any:
    if isinstance(raw, str) and raw[:1] in ("{", "["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _problems_from(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblems):
            for rel, msg in cause.problems:
                problems.append((_key_path(loc + rel), msg))
            continue
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tag = (err.get("ctx") or {}).get("tag")
            kinds = ", ".join(WORKLOAD_KINDS)
            message = (
                f"unknown kind {tag!r}; use one of {kinds}"
                if tag
                else f"`kind` is missing ({kinds})"
            )
            problems.append((_key_path((*loc, "kind")), message))
            continue
        problems.append((_key_path(loc), _message(err, loc)))
    return problems


def _key_path(loc: Loc) -> str:
    """`mlplatform:<path>`, without the union tags pydantic puts in locations
    (`workloads[0].training.gpus` is shown as `workloads[0].gpus`)."""
    shown = [
        part
        for k, part in enumerate(loc)
        if not (
            k >= 2
            and part in WORKLOAD_KINDS
            and loc[k - 2] == "workloads"
            and isinstance(loc[k - 1], int)
        )
    ]
    return f"{NAMESPACE}:{format_loc(tuple(shown))}"


def _message(err: Any, loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
        return _unknown_key_message(str(loc[-1]), allowed)
    if kind == "missing":
        return "required key is missing"
    msg: str = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind in ("literal_error", "enum"):
        return f"{err.get('input')!r}: {msg[0].lower()}{msg[1:]}"
    return msg


def _unknown_key_message(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (allowed: {', '.join(sorted(allowed))})"


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The settings model class found by following `loc` (aliases, list indices)."""
    current: Any = PlatformSettings
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for n, f in current.model_fields.items() if (f.alias or n) == part),
                None,
            )
            if field is None:
                return None
            current = field.annotation
            continue
        # A tagged union member: the tag names the model.
        members = [m for m in typing.get_args(current) if isinstance(m, type)]
        current = next((m for m in members if _tag_of(m) == part), None)
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
            else:
                return tp
        else:
            return tp


def _tag_of(model: type) -> str | None:
    field = getattr(model, "model_fields", {}).get("kind")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return args[0] if args else None
