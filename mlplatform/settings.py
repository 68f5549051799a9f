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

Each part's model lives beside the component it configures (infra/cluster.py
ClusterSettings, infra/tenancy.py TeamSettings, workloads/serving.py
InferenceServiceSpec, ...). This module only assembles them and runs the checks
that span parts: quota against capacity, workloads against teams and pools.
Loading and error reporting are in `mlplatform/loading.py`. The configuration
reference (docs/configuration.md) is generated from the field descriptions
(`make docs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from infra import catalog, cluster_autoscaler, karpenter, quantity
from infra.capacity import Autoscaler, CapacitySettings
from infra.cluster import ClusterSettings
from infra.config_types import (
    DnsLabel,
    FieldProblems,
    Loc,
    _Model,
    format_loc,
    unknown_key_message,
)
from infra.device_plugin import DevicePluginSettings
from infra.efa import EfaDevicePluginSettings, EfaPod
from infra.gpu_nodes import GpuNodeGroupSettings, advertised_gpus, node_labels
from infra.instances import EfaFabric
from infra.queueing import CPU_FLAVOR, LOCAL_QUEUE, QueueingSettings, check_team_quotas
from infra.scheduling import SchedulingSettings
from infra.tenancy import TeamSettings, is_iam_principal
from policies import rules
from workloads.batch import BatchInferenceSpec
from workloads.common import WorkloadSpec
from workloads.distributed import DistributedTrainingSpec
from workloads.image import RuntimeImageSettings
from workloads.metric_catalog import RUNTIME_HPA_METRICS, HpaMetric
from workloads.monitoring import MonitoringSettings
from workloads.nccl_test import NcclTestSpec
from workloads.runtime import contract
from workloads.serving import InferenceServiceSpec, ServingSettings
from workloads.training import MlflowSettings, TrainingJobSpec

NAMESPACE = "mlplatform"


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
        "(rules: policies/rules.py, listed in docs/policies.md).",
    )

    @field_validator("enforcement")
    @classmethod
    def _known_rules(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[tuple[Loc, str]] = [
            ((name,), unknown_key_message(name, list(rules.RULE_NAMES)).replace("key", "rule", 1))
            for name in value
            if name not in rules.RULES_BY_NAME
        ]
        if problems:
            raise FieldProblems(problems)
        return value


WorkloadSettings = Annotated[
    TrainingJobSpec
    | DistributedTrainingSpec
    | InferenceServiceSpec
    | BatchInferenceSpec
    | NcclTestSpec,
    Field(discriminator="kind"),
]
WORKLOAD_KINDS = ("training", "distributed", "inference", "batch", "nccl-test")


@dataclass(frozen=True)
class GpuPool:
    """Nodes of one GPU shape a workload may land on."""

    name: str
    gpus_per_node: int
    accelerator: str | None
    spot: bool
    efa: EfaFabric | None = None  # the EFA fabric when the pool has it on
    hugepages: str = "5120Mi"
    # Node labels the pool's nodes carry, with the values they may have; None
    # when the stack does not know them all (nodes it does not create).
    labels: Mapping[str, frozenset[str]] | None = None
    mig_capable: bool = False
    mig_mixed: bool = False  # advertises nvidia.com/mig-<profile> (mixed strategy)
    # Time-sliced with failRequestsGreaterThanOne: pods asking >1 GPU are rejected.
    rejects_multi_gpu: bool = False

    def satisfies(self, selector: Mapping[str, str]) -> bool:
        """Could a node of this pool match the node selector?"""
        if self.labels is None:
            return all(
                key != catalog.ACCELERATOR_LABEL or value == self.accelerator
                for key, value in selector.items()
            )
        return all(
            key in ANY_VALUE_LABELS or value in self.labels.get(key, frozenset())
            for key, value in selector.items()
        )


# Labels every node has, with values the stack cannot list (the zone of a node).
ANY_VALUE_LABELS = frozenset({"topology.kubernetes.io/zone", "kubernetes.io/hostname"})


def _known_labels(
    own: Mapping[str, str], instance_types: list[str], spot: bool
) -> dict[str, frozenset[str]]:
    """Labels of a node the stack creates: its own plus the well-known ones
    the kubelet and EKS set."""
    labels = {k: frozenset({v}) for k, v in own.items()}
    labels |= {
        "node.kubernetes.io/instance-type": frozenset(instance_types),
        "kubernetes.io/arch": frozenset({"amd64"}),
        "kubernetes.io/os": frozenset({"linux"}),
        "eks.amazonaws.com/capacityType": frozenset({"SPOT" if spot else "ON_DEMAND"}),
    }
    return labels


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
    gpu_node_groups: list[GpuNodeGroupSettings] = Field(
        [],
        description="GPU node groups: EKS managed node groups, or Karpenter NodePools "
        "under `capacity.autoscaler: karpenter`.",
    )
    capacity: CapacitySettings = Field(
        default_factory=CapacitySettings,
        description="Which autoscaler turns pending GPU pods into nodes.",
    )
    device_plugin: DevicePluginSettings = Field(
        default_factory=DevicePluginSettings, description="NVIDIA device plugin."
    )
    efa_device_plugin: EfaDevicePluginSettings = Field(
        default_factory=EfaDevicePluginSettings,
        description="AWS EFA device plugin, deployed when a GPU node group has EFA on.",
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
    queueing: QueueingSettings = Field(
        default_factory=QueueingSettings, description="Job queueing with Kueue."
    )
    workloads: list[WorkloadSettings] = Field(
        [],
        description="Workloads, each with `kind`: `training`, `distributed`, `inference`, "
        "`batch` or `nccl-test` (the EFA fabric smoke test).",
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
        for i, team in enumerate(self.teams):
            for j, member in enumerate(team.members):
                if not is_iam_principal(member):
                    continue
                if not self.cluster.uses_aws:
                    problems.append(
                        (
                            ("teams", i, "members", j),
                            "IAM principals get access through EKS access entries; with "
                            "cluster.kubeconfigContext list Kubernetes group names instead",
                        )
                    )
                elif member in self.cluster.admin_role_arns:
                    problems.append(
                        (
                            ("teams", i, "members", j),
                            "already a cluster admin (cluster.adminRoleArns): EKS allows one "
                            "access entry per principal",
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
        if (
            dp.mig_strategy == "mixed"
            and self.gpu_node_groups
            and not any(p.mig_capable for p in self.gpu_pools)
        ):
            problems.append(
                (
                    ("devicePlugin", "migStrategy"),
                    "'mixed' needs MIG-capable GPUs (A100, H100, H200) in some node group",
                )
            )
        # `mixed` advertises GPUs without MIG as nvidia.com/gpu, so MIG and plain
        # groups mix; `single` is meant for nodes whose GPUs are all MIG. (A
        # group's own devicePlugin is checked by the group.)
        for i, group in enumerate(self.gpu_node_groups):
            own = group.device_plugin
            if (
                dp.mig_strategy == "single"
                and (own is None or own.mig_strategy is None)
                and not group.instance_type_info.mig_capable
            ):
                problems.append(
                    (
                        ("gpuNodeGroups", i, "instanceTypes"),
                        f"{group.instance_type_info.gpu_model} GPUs do not support MIG "
                        "(devicePlugin.migStrategy is 'single'; use 'mixed' to run "
                        "MIG and plain GPU groups side by side)",
                    )
                )
        for i, group in enumerate(self.gpu_node_groups):
            zones = self.cluster.vpc.availability_zones
            if (
                group.efa_fabric
                and not group.subnet_ids
                and self.cluster.mode == "create"
                and group.efa.subnet_index >= zones
            ):
                problems.append(
                    (
                        ("gpuNodeGroups", i, "efa", "subnetIndex"),
                        f"the cluster has {zones} private subnets (one per zone): "
                        f"use 0-{zones - 1}",
                    )
                )
        problems += self._check_workloads()
        problems += self._check_hpa_metrics()
        problems += self._check_queueing()
        problems += self._check_capacity()
        if problems:
            raise FieldProblems(problems)
        return self

    def _check_capacity(self) -> list[tuple[Loc, str]]:
        """What each autoscaler needs, and group settings that would mean nothing."""
        problems: list[tuple[Loc, str]] = []
        cap = self.capacity
        auto = self.autoscaler
        at: Loc = ("capacity", "autoscaler")
        version = self.cluster.kubernetes_version
        if auto != "none" and not self.cluster.uses_aws:
            problems.append(
                (at, f"{auto} scales EKS capacity; with cluster.kubeconfigContext use `none`")
            )
        if cap.external_autoscaler and auto != "none":
            problems.append(
                (
                    ("capacity", "externalAutoscaler"),
                    f"only with autoscaler: none (this stack installs {auto}; never run two)",
                )
            )
        if auto == "karpenter":
            if self.cluster.mode == "existing" and cap.karpenter.discovery_tag is None:
                problems.append(
                    (
                        ("capacity", "karpenter", "discoveryTag"),
                        "required for Karpenter on an existing cluster: the value of the "
                        f"`{karpenter.DISCOVERY_TAG}` tag on the subnets and security group "
                        "nodes may use (tag them first)",
                    )
                )
            if _minor(version) > _minor(karpenter.MAX_KUBERNETES_VERSION):
                problems.append(
                    (
                        ("cluster", "kubernetesVersion"),
                        f"Karpenter {karpenter.VERSION} supports Kubernetes up to "
                        f"{karpenter.MAX_KUBERNETES_VERSION}",
                    )
                )
            for i, g in enumerate(self.gpu_node_groups):
                if g.min_size > 0:
                    problems.append(
                        (
                            ("gpuNodeGroups", i, "minSize"),
                            "must be 0 under Karpenter: nodes are launched for pending pods, "
                            "there is no minimum (keep capacity warm with a workload's "
                            "minReplicas, or use capacity.autoscaler: cluster-autoscaler)",
                        )
                    )
                if g.desired_size is not None:
                    problems.append(
                        (
                            ("gpuNodeGroups", i, "desiredSize"),
                            "means nothing under Karpenter (it has no node count); remove it",
                        )
                    )
        if (
            auto == "cluster-autoscaler"
            and cluster_autoscaler.image_for(cap.cluster_autoscaler, version) is None
        ):
            problems.append(
                (
                    ("capacity", "clusterAutoscaler", "image"),
                    f"no Cluster Autoscaler release is pinned for Kubernetes {version} "
                    f"(pinned: {', '.join(cluster_autoscaler.IMAGES)}); name an image",
                )
            )
        # Settings of the autoscaler the stack does not run would mean nothing.
        if auto != "karpenter":
            if cap.karpenter.model_fields_set:
                problems.append(
                    (("capacity", "karpenter"), f"Karpenter settings, but the autoscaler is {auto}")
                )
            for i, g in enumerate(self.gpu_node_groups):
                if "role" in g.model_fields_set:
                    problems.append(
                        (
                            ("gpuNodeGroups", i, "role"),
                            f"only Karpenter's consolidation uses it (the autoscaler is {auto})",
                        )
                    )
        if auto != "cluster-autoscaler" and cap.cluster_autoscaler.model_fields_set:
            problems.append(
                (
                    ("capacity", "clusterAutoscaler"),
                    f"Cluster Autoscaler settings, but the autoscaler is {auto}",
                )
            )
        why = {
            "cluster-autoscaler": "the Cluster Autoscaler never grows a group past maxSize",
            "karpenter": "the NodePool's GPU limit would be 0",
            "none": "the group could never have a node",
        }[auto]
        for i, g in enumerate(self.gpu_node_groups):
            if g.max_size < 1:
                problems.append((("gpuNodeGroups", i, "maxSize"), f"must be at least 1: {why}"))
        return problems

    def _check_workloads(self) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        teams = {t.name: t for t in self.teams}
        known_accelerators = {p.accelerator for p in self.gpu_pools if p.accelerator}
        seen: dict[tuple[str, str], int] = {}
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
            reachable = [
                p
                for p in self.pools_for(w.priority_class, w.accelerators)
                if p.satisfies(w.node_selector)
            ]
            if w.mig_profile and not any(p.mig_mixed for p in reachable):
                problems.append(
                    (
                        (*at, "migProfile"),
                        "MIG resources per profile need MIG-capable GPU nodes (A100, H100, "
                        "H200) it may run on with migStrategy: mixed (devicePlugin, or the "
                        "group's own devicePlugin)",
                    )
                )
            shared = [p.name for p in reachable if p.rejects_multi_gpu]
            if shared and w.gpus > 1 and not w.mig_profile:
                problems.append(
                    (
                        (*at, "gpus"),
                        f"{w.gpus} GPUs per pod on time-sliced GPUs (node groups "
                        f"{', '.join(shared)}): the device plugin rejects requests for more "
                        "than one shared GPU (failRequestsGreaterThanOne); ask for 1, keep it "
                        "off those groups (accelerators, nodeSelector), or turn time-slicing off",
                    )
                )
            problems += self._node_selector_problems(w, at)
            if team is not None:
                team_at = ("teams", self.teams.index(team))
                problems += _limit_range_problems(w, at, team, team_at)
                scoped = team.quota.by_priority_class.get(w.priority_class)
                if scoped is not None and scoped.gpus is not None and w.gpus > scoped.gpus:
                    budget = format_loc(
                        (*team_at, "quota", "byPriorityClass", w.priority_class, "gpus")
                    )
                    problems.append(
                        (
                            (*at, "gpus"),
                            f"{w.gpus} GPUs per pod: team {team.name!r} allows "
                            f"{w.priority_class} pods {scoped.gpus} in all ({budget})",
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
            problems += self._check_efa(i, w)
            shared_class = self.cluster.shared_storage_class
            if (
                isinstance(w, DistributedTrainingSpec)
                and w.nodes > 1
                and w.checkpoint.enabled
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

    def _check_queueing(self) -> list[tuple[Loc, str]]:
        q = self.queueing
        problems: list[tuple[Loc, str]] = []
        for i, w in enumerate(self.workloads):
            if w.queue is None:
                continue
            at: Loc = ("workloads", i, "queue")
            if w.kind == "inference":
                problems.append((at, "serving is not queued (it scales with its traffic)"))
            elif not q.active:
                problems.append((at, "queueing is off (mlplatform:queueing.enabled)"))
            elif w.queue != LOCAL_QUEUE:
                problems.append(
                    (
                        at,
                        f"no LocalQueue {w.queue!r} in namespace {w.team!r}; "
                        f"its queues: {LOCAL_QUEUE}",
                    )
                )
        if not q.active:
            return problems
        for i, w in enumerate(self.workloads):
            if w.mig_profile and w.kind != "inference":
                problems.append(
                    (
                        ("workloads", i, "migProfile"),
                        "queued jobs ask for whole GPUs: the ClusterQueues cover "
                        f"{catalog.GPU_RESOURCE} only",
                    )
                )
        pools = {p.name: p for p in self.gpu_pools}
        for i, group in enumerate(self.gpu_node_groups):
            if group.name == CPU_FLAVOR:
                problems.append(
                    (
                        ("gpuNodeGroups", i, "name"),
                        f"{CPU_FLAVOR!r} is a Kueue flavor of the platform",
                    )
                )
        for i, n in enumerate(self.cluster.existing_gpu_nodes):
            if n.name == CPU_FLAVOR:
                problems.append(
                    (
                        ("cluster", "existingGpuNodes", i, "name"),
                        f"{CPU_FLAVOR!r} is a Kueue flavor of the platform",
                    )
                )
            if n.accelerator is None:
                problems.append(
                    (
                        ("cluster", "existingGpuNodes", i, "accelerator"),
                        "required with queueing: the pool's ResourceFlavor steers admitted "
                        "pods to these nodes by this label",
                    )
                )
        capacity = {name: self.pool_gpus(name) for name in pools}
        quotas = {t.name: t.quota.gpus for t in self.teams}
        problems += [
            (("queueing", *loc), msg) for loc, msg in check_team_quotas(q, capacity, quotas)
        ]
        return problems

    def _check_efa(self, i: int, w: object) -> list[tuple[Loc, str]]:
        """EFA requests only on EFA pools, and one EFA shape per workload."""
        if not isinstance(w, (DistributedTrainingSpec, NcclTestSpec)) or not w.gpus:
            return []
        pools = self.pools_for(w.priority_class, w.accelerators)
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
        if self._efa_on(w, pools) and len({(p.efa, p.hugepages) for p in pools}) > 1:
            return [
                (
                    at,
                    "the EFA pools it may use differ in interfaces or huge pages; pin "
                    "`accelerators` to one of them",
                )
            ]
        return []

    @staticmethod
    def _efa_on(w: DistributedTrainingSpec | NcclTestSpec, pools: list[GpuPool]) -> bool:
        if w.efa is not None:
            return w.efa
        return w.nodes > 1 and bool(pools) and all(p.efa is not None for p in pools)

    def efa_for(self, w: object) -> EfaPod | None:
        """What the workload's pods get for the EFA fabric, or None (no EFA)."""
        if not isinstance(w, (DistributedTrainingSpec, NcclTestSpec)) or not w.gpus:
            return None
        pools = self.pools_for(w.priority_class, w.accelerators)
        if not self._efa_on(w, pools) or not pools or pools[0].efa is None:
            return None
        return EfaPod.for_fabric(pools[0].efa, pools[0].hugepages)

    def nccl_threshold(self, w: NcclTestSpec) -> float | None:
        """Bus bandwidth (GB/s) under which the fabric smoke test fails."""
        if w.min_bus_bandwidth is not None:
            return w.min_bus_bandwidth
        pools = self.pools_for(w.priority_class, w.accelerators)
        fabric = pools[0].efa if pools and self.efa_for(w) is not None else None
        return round(fabric.busbw_gbs * w.threshold_fraction, 1) if fabric else None

    def _node_selector_problems(self, w: WorkloadSpec, at: Loc) -> list[tuple[Loc, str]]:
        if not w.node_selector:
            return []
        if w.gpus:
            pools = self.pools_for(w.priority_class, w.accelerators)
            what = "GPU pool it may use"
        else:
            pools = [self.cpu_pool]
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

    # Derived facts -------------------------------------------------------

    def pool_gpus(self, name: str) -> int:
        """`nvidia.com/gpu` a GPU pool can ever advertise (time-slicing included)."""
        for g in self.gpu_node_groups:
            if g.name == name:
                return g.max_size * advertised_gpus(g, self.device_plugin)
        for n in self.cluster.existing_gpu_nodes:
            if n.name == name:
                return n.count * n.gpus_per_node
        raise KeyError(name)

    @property
    def efa_node_groups(self) -> list[GpuNodeGroupSettings]:
        return [g for g in self.gpu_node_groups if g.efa_fabric is not None]

    @property
    def gpu_pools(self) -> list[GpuPool]:
        def mixed(settings: DevicePluginSettings) -> bool:
            return settings.mig_strategy == "mixed"

        def rejects_multi_gpu(settings: DevicePluginSettings) -> bool:
            ts = settings.time_slicing
            return settings.sharing_enabled and ts.fail_requests_greater_than_one

        return [
            GpuPool(
                g.name,
                g.gpus_per_node,
                g.instance_type_info.accelerator,
                g.is_spot,
                efa=g.efa_fabric,
                hugepages=g.efa.hugepages,
                labels=_known_labels(node_labels(g), list(g.instance_types), g.is_spot),
                mig_capable=g.instance_type_info.mig_capable,
                mig_mixed=mixed(g.effective_device_plugin(self.device_plugin)),
                rejects_multi_gpu=rejects_multi_gpu(g.effective_device_plugin(self.device_plugin)),
            )
            for g in self.gpu_node_groups
        ] + [
            GpuPool(
                n.name,
                n.gpus_per_node,
                n.accelerator,
                False,
                mig_capable=True,
                mig_mixed=mixed(self.device_plugin),
                rejects_multi_gpu=rejects_multi_gpu(self.device_plugin),
            )
            for n in self.cluster.existing_gpu_nodes
        ]

    @property
    def cpu_pool(self) -> GpuPool:
        """Where pods without GPUs run: the system node group (create mode), or
        nodes the stack does not know."""
        if self.cluster.mode == "create":
            sysng = self.cluster.system_nodes
            return GpuPool(
                "system",
                0,
                None,
                False,
                labels=_known_labels(
                    {catalog.NODE_ROLE_LABEL: "system"}, list(sysng.instance_types), False
                ),
            )
        return GpuPool("cluster", 0, None, False)

    def pools_for(self, priority_class: str, accelerators: list[str]) -> list[GpuPool]:
        """The GPU pools a pod of this class (and accelerator choice) can land on."""
        spot_ok = priority_class in self.scheduling.spot_priority_classes
        return [
            p
            for p in self.gpu_pools
            if (not accelerators or p.accelerator in accelerators) and (spot_ok or not p.spot)
        ]

    @property
    def autoscaler(self) -> Autoscaler:
        """The autoscaler the stack installs (`capacity.autoscaler` or its default)."""
        return self.capacity.resolved(self.cluster.mode)

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
            external_autoscaler=self.capacity.external_autoscaler,
            network_policy_enforced=bool(self.cluster.network_policy_enforced),
        )

    def _check_hpa_metrics(self) -> list[tuple[Loc, str]]:
        """The adapter serves each metrics API name one way: two services that
        compute the same name differently would get one rule or the other."""
        problems: list[tuple[Loc, str]] = []
        seen: dict[str, tuple[HpaMetric, str]] = {
            m.name: (m, f"the {runtime} runtime")
            for runtime, metrics in RUNTIME_HPA_METRICS.items()
            for m in metrics
        }
        for i, w in enumerate(self.workloads):
            if not isinstance(w, InferenceServiceSpec) or w.runtime != "custom":
                continue
            m = w.hpa_metric
            if m is None:
                continue
            other = seen.get(m.name)
            if other is not None and other[0] != m:
                problems.append(
                    (
                        ("workloads", i, "customMetric", "name"),
                        f"{m.name!r} is already served by {other[1]} as the {other[0].type} "
                        f"{other[0].series!r}: give the metric another name",
                    )
                )
            seen.setdefault(m.name, (m, f"workloads[{i}]"))
        return problems

    def hpa_metrics(self) -> list[HpaMetric]:
        """The per-pod metrics the prometheus-adapter serves: the known runtimes'
        (always), and those custom servers' HPAs name."""
        out = [m for metrics in RUNTIME_HPA_METRICS.values() for m in metrics]
        for w in self.workloads:
            if isinstance(w, InferenceServiceSpec) and (m := w.hpa_metric) and m not in out:
                out.append(m)
        return out

    def _team_inference(self, team: str) -> list[InferenceServiceSpec]:
        return [w for w in self.workloads if isinstance(w, InferenceServiceSpec) and w.team == team]

    def team_serving_ports(self, team: str) -> tuple[int, ...]:
        """The ports team pods may call the team's inference services on."""
        ports = {contract.SERVE_PORT}
        for w in self._team_inference(team):
            ports.update(p.port for p in w.serving_ports)
        return tuple(sorted(ports))

    def team_metrics_ports(self, team: str) -> tuple[int, ...]:
        """The ports Prometheus may scrape in the team's namespace."""
        ports = {contract.SERVE_PORT, contract.TRAIN_METRICS_PORT}
        ports.update(p for w in self._team_inference(team) if (p := w.metrics_port) is not None)
        return tuple(sorted(ports))

    def max_gpus_per_container(self, team: TeamSettings) -> int:
        limit = team.limits.max_gpus_per_container
        return self.largest_node_gpus if limit is None else limit

    def team(self, name: str) -> TeamSettings | None:
        return next((t for t in self.teams if t.name == name), None)


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _limit_range_problems(
    w: WorkloadSpec, at: Loc, team: TeamSettings, team_at: Loc
) -> list[tuple[Loc, str]]:
    """What the team's LimitRange would do to the workload's containers at
    admission: fill in the default CPU limit, then check max, min and the
    limit/request ratios. A pod that breaks one is rejected by the API server
    (the Job or Deployment renders and applies fine and then never runs)."""
    lim = team.limits
    q = quantity.parse
    problems: list[tuple[Loc, str]] = []
    where = format_loc((*team_at, "limits"))
    default_key = "defaultCpuLimit" if lim.default_cpu_limit else "max.cpu"
    for loc, shape in w.container_shapes():
        who = "the platform's model fetcher" if loc == ("model", "uri") else "the container"
        cpu_limit = shape.cpu_limit or lim.effective_default_cpu_limit
        memory_limit = shape.memory_limit or shape.memory
        if shape.cpu_limit is None and cpu_limit is not None and q(shape.cpu) > q(cpu_limit):
            key = (*at, *loc) if loc == ("model", "uri") else (*at, *loc, "cpu")
            problems.append(
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
                problems.append(
                    (
                        limit_at,
                        f"{who}'s {resource} limit {limit} is above the LimitRange max of team "
                        f"{team.name!r} ({where}.max.{resource}: {high})",
                    )
                )
            elif high is not None and q(request) > q(high):
                problems.append(
                    (
                        key,
                        f"{who}'s {resource} request {request} is above the LimitRange max of team "
                        f"{team.name!r} ({where}.max.{resource}: {high})",
                    )
                )
            if low is not None and q(request) < q(low):
                problems.append(
                    (
                        key,
                        f"{who}'s {resource} request {request} is below the LimitRange min of team "
                        f"{team.name!r} ({where}.min.{resource}: {low})",
                    )
                )
            if ratio is not None and limit is not None and q(limit) > q(ratio) * q(request):
                problems.append(
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
            problems.append(
                (
                    (*at, "checkpoint", "size"),
                    f"{size} is {'above' if bound == 'max' else 'below'} the PVC {bound} of team "
                    f"{team.name!r} ({where}.pvc.{bound}: {value}): the claim would be rejected",
                )
            )
    return problems


def _checkpoint_size(w: WorkloadSpec) -> str | None:
    """Size of the checkpoint PVC the workload creates, if it creates one."""
    if isinstance(w, (TrainingJobSpec, DistributedTrainingSpec)):
        c = w.checkpoint
        if c.enabled and c.claim is None:
            return c.size
    return None


def _unique(names: list[str], key: str) -> list[tuple[Loc, str]]:
    seen: dict[str, int] = {}
    problems: list[tuple[Loc, str]] = []
    for i, name in enumerate(names):
        if name in seen:
            problems.append(((key, i, "name"), f"{name!r} is already used by {key}[{seen[name]}]"))
        else:
            seen[name] = i
    return problems
