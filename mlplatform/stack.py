"""The stack configuration: every part's model under `mlplatform:`, and the
facts derived across them (GPU pools, capacity, serving ports, policy
thresholds). The checks that span parts are in mlplatform/checks/ (they read
StackSettings); mlplatform/settings.py's PlatformSettings runs them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator

from infra import catalog
from infra.capacity import Autoscaler, CapacitySettings
from infra.cluster import ClusterSettings
from infra.config_types import DnsLabel, FieldProblems, Loc, _Model, unknown_key_message
from infra.device_plugin import DevicePluginSettings
from infra.efa import EfaDevicePluginSettings, EfaPod
from infra.gpu_nodes import GpuNodeGroupSettings, advertised_gpus, node_labels
from infra.instances import EfaFabric
from infra.queueing import QueueingSettings
from infra.scheduling import SchedulingSettings
from infra.tenancy import TeamSettings
from policies import rules
from workloads.batch import BatchInferenceSpec
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
        "(rules: policies/rules/, listed in docs/policies.md).",
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


class StackSettings(_Model):
    """Every part's model under the `mlplatform:` config namespace, and the facts
    derived across them; PlatformSettings adds the cross-part checks."""

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

    @staticmethod
    def uses_efa(w: DistributedTrainingSpec | NcclTestSpec, pools: list[GpuPool]) -> bool:
        """Whether its pods ask for EFA: its `efa`, else multi-node on all-EFA pools."""
        if w.efa is not None:
            return w.efa
        return w.nodes > 1 and bool(pools) and all(p.efa is not None for p in pools)

    def efa_for(self, w: object) -> EfaPod | None:
        """What the workload's pods get for the EFA fabric, or None (no EFA)."""
        if not isinstance(w, (DistributedTrainingSpec, NcclTestSpec)) or not w.gpus:
            return None
        pools = self.pools_for(w.priority_class, w.accelerators)
        if not self.uses_efa(w, pools) or not pools or pools[0].efa is None:
            return None
        return EfaPod.for_fabric(pools[0].efa, pools[0].hugepages)

    def nccl_threshold(self, w: NcclTestSpec) -> float | None:
        """Bus bandwidth (GB/s) under which the fabric smoke test fails."""
        if w.min_bus_bandwidth is not None:
            return w.min_bus_bandwidth
        pools = self.pools_for(w.priority_class, w.accelerators)
        fabric = pools[0].efa if pools and self.efa_for(w) is not None else None
        return round(fabric.busbw_gbs * w.threshold_fraction, 1) if fabric else None

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
