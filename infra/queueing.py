"""Queueing: Kueue, so every GPU job waits in a queue, is admitted whole or not
at all, in priority order, with idle quota lent across teams.

Objects (all `kueue.x-k8s.io/v1beta2`, Kueue v0.19.2; see infra/kueue_api.py):

- one ResourceFlavor per GPU pool (`mlplatform:gpuNodeGroups[]` and
  `cluster.existingGpuNodes[]`), named after the pool. Its `nodeLabels` are the
  pool's node-group and accelerator labels (from `gpu_nodes.node_labels()`):
  Kueue injects them as a nodeSelector into the pods it admits on that flavor,
  so a job runs on the pool whose quota it was charged. Its `nodeTaints` are
  the pool's taints (from `scheduling.gpu_node_taints()`): a job gets the
  flavor only if it tolerates them, so spot pools stay for the spot priority
  classes, exactly as the scheduler would decide. One more flavor, `cpu`,
  without labels, carries the team's CPU and memory;
- one ClusterQueue per team, all in one cohort: nominal GPUs per flavor,
  borrowing and lending limits from `mlplatform:queueing.teams`; CPU and memory
  nominal equal to the team's ResourceQuota (never lent or borrowed). Admission
  only from the team's namespace. Preemption: within the team by priority, and
  a team always reclaims its lent nominal quota;
- one LocalQueue `default` per team namespace. Kueue puts every Job created in
  the namespace without a queue label into the LocalQueue named `default`, so
  jobs a team submits by hand are queued too;
- WorkloadPriorityClasses with the names and values of the platform's four
  PriorityClasses (infra/catalog.py), which jobs name with
  `kueue.x-k8s.io/priority-class`.

Kueue does not read ResourceQuota (kueue#1403): the team's quota stays the
hard ceiling, and the settings check that nominal plus borrowing never exceed
it.

The Helm chart (pinned) installs the CRDs, the controller and its webhooks; the
queue objects depend on the release.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field, model_validator

from infra import catalog, kueue_api, meta, quantity, scheduling
from infra.config_types import DnsLabel, FieldProblems, Loc, _Model

# Newest stable release: tag v0.19.2 (2026-08-20) of kubernetes-sigs/kueue, whose
# charts/kueue/Chart.yaml is version 0.19.2 / appVersion v0.19.2; the release
# pipeline publishes the chart to the OCI registry below with the image
# registry.k8s.io/kueue/kueue:v0.19.2.
CHART = "oci://registry.k8s.io/kueue/charts/kueue"
CHART_VERSION = "0.19.2"
IMAGE_REPOSITORY = "registry.k8s.io/kueue/kueue"
IMAGE_TAG = kueue_api.KUEUE_VERSION
RELEASE_NAME = "kueue"
METRICS_PORT_NAME = "https"
# Labels of the chart's metrics Service (charts/kueue/templates/_helpers.tpl).
METRICS_SERVICE_LABELS = {
    "app.kubernetes.io/name": "kueue",
    "app.kubernetes.io/component": "metrics-service",
}
CPU_FLAVOR = "cpu"
CAPACITY_ANNOTATION = f"{catalog.LABEL_PREFIX}/gpu-capacity"
LOCAL_QUEUE = "default"  # the name Kueue defaults unlabelled jobs to
BATCH_JOB = "batch/job"
PYTORCH_JOB = "kubeflow.org/pytorchjob"


class FlavorQuota(_Model):
    """A team's GPUs in one pool (a ResourceFlavor of its ClusterQueue)."""

    gpus: int = Field(
        ge=0, description="Nominal `nvidia.com/gpu` quota: guaranteed, reclaimed by preemption."
    )
    borrowing_limit: int = Field(
        0,
        ge=0,
        description="GPUs the team may borrow in this pool beyond `gpus` from quota other "
        "teams leave idle (0: none). The team's ResourceQuota must cover nominal plus borrowing.",
    )
    lending_limit: int | None = Field(
        None,
        ge=0,
        description="GPUs of `gpus` other teams may borrow while idle. Default: all of them.",
    )

    @model_validator(mode="after")
    def _check(self) -> FlavorQuota:
        if self.lending_limit is not None and self.lending_limit > self.gpus:
            raise FieldProblems([(("lendingLimit",), f"more than gpus ({self.gpus})")])
        return self


class WaitForPodsReadySettings(_Model):
    """Kueue's all-or-nothing safety net: an admitted job whose pods are not all
    running within the timeout is evicted and requeued, releasing its quota."""

    timeout_minutes: int = Field(
        20,
        ge=5,
        le=240,
        description="Time an admitted job has for all its pods to run. GPU pools scale from "
        "zero: a node takes 5-8 minutes to join and a CUDA image several more to pull, so "
        "20 minutes leaves about twice that before a job is evicted.",
    )
    recovery_timeout_minutes: int | None = Field(
        None,
        ge=1,
        description="Time a running job may miss a pod (e.g. a spot node reclaimed and "
        "replaced) before it is evicted and requeued. Default: `timeoutMinutes`.",
    )
    backoff_base_seconds: int = Field(
        120,
        ge=1,
        description="First requeue delay after an eviction; it doubles with each retry.",
    )
    backoff_max_seconds: int = Field(1800, ge=1, description="Longest requeue delay (30 minutes).")
    backoff_limit_count: int | None = Field(
        None,
        ge=0,
        description="Requeues before a job is deactivated. Default: unlimited (it stays "
        "queued; the long-pending alert tells).",
    )


class QueueingSettings(_Model):
    """Kueue job queueing (`mlplatform:queueing`)."""

    enabled: bool = Field(
        False,
        description="Install Kueue and queue every job of the team namespaces. false: "
        "jobs are admitted by the ResourceQuota alone (no queue, no gang admission).",
    )
    install_only: bool = Field(
        False,
        description="Install Kueue (its CRDs) but create no queue objects and leave jobs "
        "unqueued: the first `pulumi up` on an existing cluster without the Kueue CRDs "
        "(docs/queueing.md). Set it back to false for the second.",
    )
    namespace: DnsLabel = Field("kueue-system", description="Namespace of the Kueue controller.")
    cohort: DnsLabel = Field(
        "mlplatform", description="Cohort of every team's ClusterQueue (they lend to each other)."
    )
    controller_replicas: int = Field(
        2,
        ge=1,
        le=5,
        description="Kueue controller replicas (its webhooks must answer for any Job to be "
        "created; >1 adds a PodDisruptionBudget).",
    )
    teams: dict[DnsLabel, dict[DnsLabel, FlavorQuota]] = Field(
        {},
        description="Per team, per GPU pool (a `gpuNodeGroups` or `cluster.existingGpuNodes` "
        "name): `{gpus, borrowingLimit, lendingLimit}`. A team with GPU quota needs at "
        "least one pool.",
    )
    wait_for_pods_ready: WaitForPodsReadySettings = Field(
        default_factory=WaitForPodsReadySettings, description="All-or-nothing admission."
    )
    pending_alert_minutes: int = Field(
        120,
        ge=5,
        description="Alert when a ClusterQueue has had pending workloads and admitted none "
        "for this long.",
    )

    @property
    def active(self) -> bool:
        """Queue objects exist and jobs carry the queue label."""
        return self.enabled and not self.install_only


@dataclass(frozen=True)
class QueuePool:
    """A GPU pool as Kueue sees it: a ResourceFlavor."""

    name: str
    gpus: int  # nvidia.com/gpu the pool can ever advertise
    node_labels: Mapping[str, str]
    taints: tuple[scheduling.Taint, ...]


# Node labels that tell pools apart; the rest of a node's labels are not needed
# for the injected nodeSelector (and a flavor may have at most 8).
FLAVOR_LABEL_KEYS = (catalog.NODE_GROUP_LABEL, catalog.ACCELERATOR_LABEL)


def flavor_labels(node_labels: Mapping[str, str]) -> dict[str, str]:
    return {k: node_labels[k] for k in FLAVOR_LABEL_KEYS if k in node_labels}


@dataclass(frozen=True)
class TeamQueue:
    """What a team's ClusterQueue is built from."""

    team: str
    namespace: str
    cpu: str  # the team ResourceQuota's requests.cpu
    memory: str  # ... and requests.memory
    flavors: Mapping[str, FlavorQuota]


# ---------------------------------------------------------------------------
# The objects (plain manifests, checked against infra/kueue_api.py)
# ---------------------------------------------------------------------------


def _checked(manifest: dict[str, Any]) -> dict[str, Any]:
    problems = kueue_api.validate(manifest)
    if problems:  # a bug in this module, not a user error
        raise ValueError(
            f"invalid {manifest['kind']} {manifest['metadata']['name']}: "
            + "; ".join(f"{p}: {m}" for p, m in problems)
        )
    return manifest


def _labels(name: str) -> dict[str, str]:
    return meta.labels("kueue", name, "queueing")


def resource_flavor(pool: QueuePool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeLabels": flavor_labels(pool.node_labels),
        "nodeTaints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in pool.taints],
    }
    return _checked(
        {
            "apiVersion": kueue_api.API_VERSION,
            "kind": "ResourceFlavor",
            "metadata": {
                "name": pool.name,
                "labels": _labels(pool.name),
                # What the pool can ever provide: the policy rules check the
                # nominal quotas and the jobs against it.
                "annotations": {CAPACITY_ANNOTATION: str(pool.gpus)},
            },
            "spec": {k: v for k, v in spec.items() if v},
        }
    )


def cpu_flavor() -> dict[str, Any]:
    return _checked(
        {
            "apiVersion": kueue_api.API_VERSION,
            "kind": "ResourceFlavor",
            "metadata": {"name": CPU_FLAVOR, "labels": _labels(CPU_FLAVOR)},
            "spec": {},
        }
    )


def cluster_queue(team: TeamQueue, cohort: str) -> dict[str, Any]:
    groups: list[dict[str, Any]] = []
    if team.flavors:
        groups.append(
            {
                "coveredResources": [catalog.GPU_RESOURCE],
                "flavors": [
                    {
                        "name": flavor,
                        "resources": [
                            {
                                "name": catalog.GPU_RESOURCE,
                                "nominalQuota": str(q.gpus),
                                "borrowingLimit": str(q.borrowing_limit),
                                **(
                                    {"lendingLimit": str(q.lending_limit)}
                                    if q.lending_limit is not None
                                    else {}
                                ),
                            }
                        ],
                    }
                    for flavor, q in team.flavors.items()
                ],
            }
        )
    # CPU and memory: the team's own, as its ResourceQuota has them.
    groups.append(
        {
            "coveredResources": ["cpu", "memory"],
            "flavors": [
                {
                    "name": CPU_FLAVOR,
                    "resources": [
                        {"name": r, "nominalQuota": v, "borrowingLimit": "0", "lendingLimit": "0"}
                        for r, v in (("cpu", team.cpu), ("memory", team.memory))
                    ],
                }
            ],
        }
    )
    return _checked(
        {
            "apiVersion": kueue_api.API_VERSION,
            "kind": "ClusterQueue",
            "metadata": {"name": team.team, "labels": _labels(team.team)},
            "spec": {
                "cohortName": cohort,
                "namespaceSelector": {
                    "matchLabels": {catalog.NAMESPACE_NAME_LABEL: team.namespace}
                },
                # Older jobs that do not fit do not block younger ones that do.
                "queueingStrategy": "BestEffortFIFO",
                "preemption": {
                    # A higher-priority job of the team evicts its lower ones.
                    "withinClusterQueue": "LowerPriority",
                    # Lent quota comes back when its owner needs it, whatever the
                    # borrower's priority: borrowed GPUs are always revocable.
                    "reclaimWithinCohort": "Any",
                    # A borrowing job never evicts another team's work.
                    "borrowWithinCohort": {"policy": "Never"},
                },
                "stopPolicy": "None",
                "resourceGroups": groups,
            },
        }
    )


def local_queue(team: TeamQueue) -> dict[str, Any]:
    return _checked(
        {
            "apiVersion": kueue_api.API_VERSION,
            "kind": "LocalQueue",
            "metadata": {
                "name": LOCAL_QUEUE,
                "namespace": team.namespace,
                "labels": _labels(team.team),
            },
            "spec": {"clusterQueue": team.team, "stopPolicy": "None"},
        }
    )


def workload_priority_classes() -> list[dict[str, Any]]:
    return [
        _checked(
            {
                "apiVersion": kueue_api.API_VERSION,
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": p.name, "labels": _labels(p.name)},
                "value": p.value,
                "description": f"Queue order of the PriorityClass {p.name}: {p.description}",
            }
        )
        for p in catalog.PRIORITY_CLASSES
    ]


def manager_config(settings: QueueingSettings, frameworks: Sequence[str]) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2): the chart's defaults,
    plus waitForPodsReady, the integrations used and only labelled jobs managed."""
    w = settings.wait_for_pods_ready
    requeue: dict[str, Any] = {
        "timestamp": "Eviction",
        "backoffBaseSeconds": w.backoff_base_seconds,
        "backoffMaxSeconds": w.backoff_max_seconds,
    }
    if w.backoff_limit_count is not None:
        requeue["backoffLimitCount"] = w.backoff_limit_count
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": ":8081"},
        "metrics": {"bindAddress": ":8443"},
        "webhook": {"port": 9443},
        "leaderElection": {"leaderElect": True, "resourceName": "c1f6bfd2.kueue.x-k8s.io"},
        "controller": {
            "groupKindConcurrency": {
                "Job.batch": 5,
                "Pod": 5,
                "Workload.kueue.x-k8s.io": 10,
                "LocalQueue.kueue.x-k8s.io": 5,
                "ClusterQueue.kueue.x-k8s.io": 5,
                "ResourceFlavor.kueue.x-k8s.io": 1,
            }
        },
        "clientConnection": {"qps": 300, "burst": 500},
        "waitForPodsReady": {
            "timeout": f"{w.timeout_minutes}m",
            "recoveryTimeout": f"{w.recovery_timeout_minutes or w.timeout_minutes}m",
            # Admitted jobs fit the quota, and the quota fits the pools: they all get
            # nodes in the end, so admissions need not wait for each other.
            "blockAdmission": False,
            "requeuingStrategy": requeue,
        },
        # Jobs without the label run as before, except in team namespaces, where the
        # `default` LocalQueue catches them.
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(frameworks)},
        # Quota is GPUs, CPU and memory; what comes with a GPU node (EFA
        # interfaces, huge pages) is not queued, or EFA jobs could never be admitted.
        "resources": {"excludeResourcePrefixes": list(catalog.QUEUE_EXCLUDED_RESOURCE_PREFIXES)},
    }


def helm_values(
    settings: QueueingSettings, frameworks: Sequence[str], system_node_selector: Mapping[str, str]
) -> dict[str, Any]:
    replicas = settings.controller_replicas
    manager: dict[str, Any] = {
        "image": {
            "repository": IMAGE_REPOSITORY,
            "tag": IMAGE_TAG,
            "pullPolicy": "IfNotPresent",
        },
        # No Job can be created while the webhooks are down.
        "priorityClassName": "system-cluster-critical",
    }
    controller: dict[str, Any] = {
        "replicas": replicas,
        "manager": manager,
        "podDisruptionBudget": {"enabled": replicas > 1, "minAvailable": 1},
    }
    if system_node_selector:
        controller["nodeSelector"] = dict(system_node_selector)
    return {
        # The platform renders its own ServiceMonitor (validated offline).
        "enablePrometheus": False,
        "enableKueueViz": False,
        "controllerManager": controller,
        "managerConfig": {
            # JSON is YAML: the chart puts this text in the manager's ConfigMap.
            "controllerManagerConfigYaml": json.dumps(
                manager_config(settings, frameworks), indent=2, sort_keys=True
            )
        },
    }


# ---------------------------------------------------------------------------
# The component
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueingArgs:
    settings: QueueingSettings
    pools: Sequence[QueuePool]
    teams: Sequence[TeamQueue]
    frameworks: Sequence[str] = (BATCH_JOB,)
    system_node_selector: Mapping[str, str] = field(default_factory=dict)
    # Resources the LocalQueue of a team waits for (its namespace), by team.
    team_dependencies: Mapping[str, Sequence[pulumi.Resource]] = field(default_factory=dict)


class Queueing(pulumi.ComponentResource):
    """Kueue and the platform's queues.

    Outputs: `release` (chart and version), `cluster_queues` (team -> ClusterQueue),
    `local_queues` (team -> "<namespace>/<LocalQueue>"), `flavors` (names).
    """

    def __init__(
        self, name: str, args: QueueingArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:queueing:Queueing", name, None, opts)
        s = args.settings
        labels = _labels("kueue")
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": s.namespace,
                "labels": {
                    **labels,
                    # The controller meets the restricted standard (non-root, no
                    # privilege escalation, all capabilities dropped, RuntimeDefault).
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.release = k8s.helm.v3.Release(
            f"{name}-kueue",
            name=RELEASE_NAME,
            chart=CHART,
            version=CHART_VERSION,
            namespace=s.namespace,
            values=helm_values(s, args.frameworks, args.system_node_selector),
            timeout=600,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace]),
        )
        self.local_queue_resources: dict[str, pulumi.Resource] = {}
        self.cluster_queues: dict[str, str] = {}
        self.local_queues: dict[str, str] = {}
        self.flavors: list[str] = []
        if s.active:
            # Custom resources of the CRDs the release installs.
            after = pulumi.ResourceOptions(parent=self, depends_on=[self.release])
            flavors = [resource_flavor(p) for p in args.pools] + [cpu_flavor()]
            flavor_resources = [
                self._custom(f"{name}-flavor-{f['metadata']['name']}", f, after) for f in flavors
            ]
            for wpc in workload_priority_classes():
                self._custom(f"{name}-priority-{wpc['metadata']['name']}", wpc, after)
            for team in args.teams:
                cq = cluster_queue(team, s.cohort)
                cq_resource = self._custom(
                    f"{name}-cq-{team.team}",
                    cq,
                    pulumi.ResourceOptions(
                        parent=self, depends_on=[self.release, *flavor_resources]
                    ),
                )
                lq = local_queue(team)
                self.local_queue_resources[team.team] = self._custom(
                    f"{name}-lq-{team.team}",
                    lq,
                    pulumi.ResourceOptions(
                        parent=self,
                        depends_on=[
                            self.release,
                            cq_resource,
                            *args.team_dependencies.get(team.team, ()),
                        ],
                    ),
                )
                self.cluster_queues[team.team] = team.team
                self.local_queues[team.team] = f"{team.namespace}/{LOCAL_QUEUE}"
            self.flavors = [f["metadata"]["name"] for f in flavors]
        self.release_name = f"{CHART}:{CHART_VERSION}"
        self.register_outputs(
            {
                "release": self.release_name,
                "cluster_queues": self.cluster_queues,
                "local_queues": self.local_queues,
                "flavors": self.flavors,
            }
        )

    def _custom(
        self, resource_name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions
    ) -> pulumi.CustomResource:
        return KubernetesObject(resource_name, manifest, opts)


class KubernetesObject(pulumi.CustomResource):
    """A custom resource given as a whole manifest. The SDK's
    `apiextensions.CustomResource` takes only `spec`, and a WorkloadPriorityClass
    has top-level fields (`value`, `description`); the type token is the same
    (`kubernetes:<apiVersion>:<kind>`), so the provider treats both alike."""

    def __init__(
        self, resource_name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions
    ) -> None:
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(version=k8s._utilities.get_version())
        )
        super().__init__(
            f"kubernetes:{manifest['apiVersion']}:{manifest['kind']}",
            resource_name,
            dict(manifest),
            opts,
        )


def team_queue(
    team: str, namespace: str, cpu: str, memory: str, flavors: Mapping[str, FlavorQuota]
) -> TeamQueue:
    return TeamQueue(team, namespace, quantity.normalize(cpu), quantity.normalize(memory), flavors)


def check_team_quotas(
    settings: QueueingSettings,
    pools: Mapping[str, int],
    team_gpu_quota: Mapping[str, int],
) -> list[tuple[Loc, str]]:
    """Problems of `queueing.teams` against the pools (name -> GPUs) and the teams'
    ResourceQuota GPUs, with key paths relative to `queueing`."""
    problems: list[tuple[Loc, str]] = []
    if not settings.active:
        return problems
    for team, flavors in settings.teams.items():
        if team not in team_gpu_quota:
            problems.append(
                (
                    ("teams", team),
                    f"no team {team!r} in mlplatform:teams "
                    f"(teams: {', '.join(sorted(team_gpu_quota)) or 'none'})",
                )
            )
            continue
        for pool in flavors:
            if pool not in pools:
                problems.append(
                    (
                        ("teams", team, pool),
                        f"no GPU pool {pool!r}; pools: {', '.join(sorted(pools)) or 'none'}",
                    )
                )
        ceiling = team_gpu_quota[team]
        total = sum(q.gpus + q.borrowing_limit for q in flavors.values())
        if total > ceiling:
            problems.append(
                (
                    ("teams", team),
                    f"nominal plus borrowing GPUs add up to {total}, more than the team's "
                    f"ResourceQuota ({ceiling}, teams[].quota.gpus), which Kueue does not "
                    "see: admitted pods would be rejected",
                )
            )
    cohort_total: dict[str, int] = {}
    for flavors in settings.teams.values():
        for pool, q in flavors.items():
            cohort_total[pool] = cohort_total.get(pool, 0) + q.gpus
    for team, flavors in settings.teams.items():
        for pool, q in flavors.items():
            total = cohort_total.get(pool, 0)
            reach = q.gpus + q.borrowing_limit
            if q.borrowing_limit and reach > total:
                problems.append(
                    (
                        ("teams", team, pool, "borrowingLimit"),
                        f"{q.borrowing_limit}: nominal plus borrowing ({reach}) "
                        f"is above the cohort's total in {pool!r} ({total}); at most "
                        f"{total - q.gpus} can ever be borrowed",
                    )
                )
    for team, gpus in team_gpu_quota.items():
        if gpus > 0 and not settings.teams.get(team):
            problems.append(
                (
                    ("teams", team),
                    f"team {team!r} has a GPU quota ({gpus}) but no GPU pool to draw from: "
                    "give it at least one pool with its nominal GPUs",
                )
            )
    return problems
