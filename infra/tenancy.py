"""TeamNamespace: one namespace per team with its guard rails.

- Namespace with Pod Security Admission `restricted` enforced (and audited and
  warned), pinned to the cluster's minor version so an upgrade cannot tighten
  or loosen it unannounced.
- ResourceQuota: GPUs (`requests.nvidia.com/gpu`: extended resources accept
  only the `requests.` prefix, and requests equal limits for them), CPU,
  memory, pods, PVCs, storage, Jobs; no LoadBalancer or NodePort Services.
- LimitRange: defaults for containers that set nothing, and the per-container
  GPU maximum. A LimitRange `max` rejects containers without that limit, so
  GPUs default to a limit of 0: CPU-only pods stay admissible and a container
  that asks for GPUs only in `requests` is rejected (requests > limits).
- NetworkPolicies: deny all ingress and egress, then one policy per opening,
  each switchable in settings, so `kubectl get netpol` reads as a list of
  what is allowed.
- Optional: ResourceQuotas per priority class (`scopeSelector`), LimitRange
  max/min/ratio and PVC size bounds.
- Access: a RoleBinding `team-edit` (ClusterRole `edit`) for the team's
  Kubernetes groups; IAM members get EKS access entries (`TeamAccess`, built by
  the composition root across teams) with the namespace-scoped edit policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pydantic import Field, model_validator

from infra import catalog, meta, quantity
from infra.config_types import (
    Cidr,
    DnsLabel,
    FieldProblems,
    Loc,
    PriorityClassName,
    Quantity,
    _Model,
)


class ScopedQuota(_Model):
    """A ResourceQuota for the pods of one priority class (`scopeSelector`
    PriorityClass In): a budget inside the team's, such as GPUs for serving apart
    from GPUs for training. Unset fields are not limited by it."""

    gpus: int | None = Field(None, ge=0, description="`requests.nvidia.com/gpu`.")
    cpu: Quantity | None = Field(None, description="`requests.cpu`.")
    memory: Quantity | None = Field(None, description="`requests.memory`.")
    pods: int | None = Field(None, ge=0, description="`pods`.")

    def hard(self) -> dict[str, str]:
        hard: dict[str, str] = {}
        if self.gpus is not None:
            hard[f"requests.{catalog.GPU_RESOURCE}"] = str(self.gpus)
        if self.cpu is not None:
            hard["requests.cpu"] = self.cpu
        if self.memory is not None:
            hard["requests.memory"] = self.memory
        if self.pods is not None:
            hard["pods"] = str(self.pods)
        return hard


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
    cron_jobs: int | None = Field(None, ge=0, description="`count/cronjobs.batch`. Default: none.")
    services: int | None = Field(None, ge=0, description="`services`. Default: none.")
    by_priority_class: dict[PriorityClassName, ScopedQuota] = Field(
        {},
        description="Extra ResourceQuotas per priority class (`team-quota-<class>`, scoped "
        "with `scopeSelector` PriorityClass In), e.g. `serving-critical: {gpus: 2}` and "
        "`training-default: {gpus: 6}`; the team quota above still caps the sum.",
    )

    @model_validator(mode="after")
    def _check_scoped(self) -> TeamQuota:
        problems: list[tuple[Loc, str]] = []
        for pc, scoped in self.by_priority_class.items():
            if not scoped.hard():
                problems.append(
                    (("byPriorityClass", pc), "limits nothing: set gpus, cpu, memory or pods")
                )
            for key, value, team_value in (
                ("gpus", scoped.gpus, self.gpus),
                ("pods", scoped.pods, self.pods),
            ):
                if value is not None and value > team_value:
                    problems.append(
                        (
                            ("byPriorityClass", pc, key),
                            f"{value} is more than the team's {key} quota ({team_value})",
                        )
                    )
            for key, q, team_q in (
                ("cpu", scoped.cpu, self.cpu),
                ("memory", scoped.memory, self.memory),
            ):
                if q is not None and quantity.parse(q) > quantity.parse(team_q):
                    problems.append(
                        (
                            ("byPriorityClass", pc, key),
                            f"{q} is more than the team's {key} quota ({team_q})",
                        )
                    )
        if problems:
            raise FieldProblems(problems)
        return self


class ResourceBounds(_Model):
    """CPU and memory per container (LimitRange `max`, `min`)."""

    cpu: Quantity | None = Field(None, description="CPU.")
    memory: Quantity | None = Field(None, description="Memory.")

    def manifest(self) -> dict[str, str]:
        return {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v is not None}


class LimitRatios(_Model):
    """LimitRange `maxLimitRequestRatio`: how far a container's limit may exceed
    its request (e.g. `cpu: 4`)."""

    cpu: Quantity | None = Field(
        None, description="Most CPU limit / request (needs a default CPU limit or `max.cpu`)."
    )
    memory: Quantity | None = Field(None, description="Most memory limit / request.")

    def manifest(self) -> dict[str, str]:
        return {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v is not None}


class PvcLimits(_Model):
    """LimitRange for PersistentVolumeClaims: size bounds of each claim."""

    min: Quantity | None = Field(None, description="Smallest claim (`requests.storage`).")
    max: Quantity | None = Field(None, description="Largest claim (`requests.storage`).")


class TeamLimits(_Model):
    """The team namespace's LimitRange (per-container defaults and bounds, PVC sizes)."""

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
    max: ResourceBounds = Field(
        default_factory=ResourceBounds,
        description="Largest CPU and memory one container may request or be limited to. "
        "`max.cpu` also becomes the default CPU limit when `defaultCpuLimit` is unset "
        "(Kubernetes defaults it so).",
    )
    min: ResourceBounds = Field(
        default_factory=ResourceBounds,
        description="Smallest CPU and memory request a container may make.",
    )
    max_limit_request_ratio: LimitRatios = Field(
        default_factory=LimitRatios, description="Most limit / request per container."
    )
    pvc: PvcLimits = Field(
        default_factory=PvcLimits, description="Size bounds of each PersistentVolumeClaim."
    )

    @property
    def effective_default_cpu_limit(self) -> str | None:
        """The CPU limit the API server gives a container that sets none."""
        return self.default_cpu_limit or self.max.cpu

    @property
    def effective_default_memory_limit(self) -> str:
        return self.default_memory_limit


class TeamNetwork(_Model):
    """The openings in the namespace's default-deny NetworkPolicy."""

    allow_dns: bool = Field(True, description="Egress to CoreDNS (UDP/TCP 53).")
    allow_intra_namespace: bool = Field(
        True,
        description="Pods of the namespace may call the namespace's inference services on "
        "their HTTP port. Nothing else between pods: a distributed job opens its ranks to "
        "each other itself, so a CronJob cannot reach a DDP job's rendezvous port.",
    )
    allow_monitoring_scrape: bool = Field(
        True,
        description="Ingress to the metrics ports from the Prometheus pods (label "
        "`app.kubernetes.io/name: prometheus`) of the monitoring namespace, nothing else "
        "of that namespace.",
    )
    allow_https_egress: bool = Field(
        True,
        description="Egress on TCP 443 anywhere except link-local (instance metadata) and "
        "the cluster's own network (the VPC CIDR in `create` mode, all RFC 1918 ranges "
        "otherwise): object storage, registries, package mirrors.",
    )
    allow_https_to_cluster_network: bool = Field(
        False,
        description="Let the HTTPS egress opening reach the cluster's own network too "
        "(internal services, VPC interface endpoints).",
    )
    egress_cidrs: list[Cidr] = Field(
        [], description="Extra CIDRs the namespace may reach on any port."
    )


_IAM_PRINCIPAL = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/.+$")
_GROUP = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.:@]*$")


def is_iam_principal(member: str) -> bool:
    return bool(_IAM_PRINCIPAL.match(member))


class TeamSettings(_Model):
    """A team: one namespace with quota, limits, network policies and access."""

    name: DnsLabel = Field(description="Team name; also the namespace name.")
    members: list[str] = Field(
        [],
        description="Who may work in the team's namespace (and nowhere else): IAM role or "
        "user ARNs become EKS access entries with `AmazonEKSEditPolicy` scoped to the "
        "namespace (EKS clusters); other entries are Kubernetes group names bound to the "
        "`edit` ClusterRole by a RoleBinding `team-edit` (any cluster, e.g. groups from an "
        "OIDC identity provider).",
    )
    quota: TeamQuota = Field(default_factory=TeamQuota, description="ResourceQuota.")
    limits: TeamLimits = Field(default_factory=TeamLimits, description="LimitRange.")
    network: TeamNetwork = Field(default_factory=TeamNetwork, description="NetworkPolicies.")

    @property
    def iam_members(self) -> list[str]:
        return [m for m in self.members if is_iam_principal(m)]

    @property
    def group_members(self) -> list[str]:
        return [m for m in self.members if not is_iam_principal(m)]

    @model_validator(mode="after")
    def _check(self) -> TeamSettings:
        problems: list[tuple[Loc, str]] = []
        for i, member in enumerate(self.members):
            if member.startswith("arn:") and not is_iam_principal(member):
                problems.append((("members", i), f"{member!r} is not an IAM role or user ARN"))
            elif not member.startswith("arn:") and (
                not _GROUP.match(member) or member.startswith("system:")
            ):
                problems.append(
                    (
                        ("members", i),
                        f"{member!r} is neither an IAM role/user ARN nor a Kubernetes group "
                        "name (groups under `system:` are Kubernetes' own)",
                    )
                )
        if len(set(self.members)) != len(self.members):
            problems.append((("members",), "lists a member twice"))
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
        problems += _bounds_problems(self.limits)
        if problems:
            raise FieldProblems(problems)
        return self


def _bounds_problems(lim: TeamLimits) -> list[tuple[Loc, str]]:
    """A LimitRange whose own defaults break its bounds rejects every pod that
    relies on them: check the defaults against max, min and the ratios."""
    problems: list[tuple[Loc, str]] = []
    q = quantity.parse
    defaults = (
        ("cpu", "defaultCpuRequest", lim.default_cpu_request, lim.default_cpu_limit),
        ("memory", "defaultMemoryRequest", lim.default_memory_request, lim.default_memory_limit),
    )
    for resource, request_key, request, limit in defaults:
        high = getattr(lim.max, resource)
        low = getattr(lim.min, resource)
        if high is not None and low is not None and q(low) > q(high):
            problems.append(
                (("limits", "min", resource), f"{low} is above max.{resource} ({high})")
            )
        if high is not None:
            for key, value in ((request_key, request), (f"default{resource.title()}Limit", limit)):
                if value is not None and q(value) > q(high):
                    problems.append((("limits", key), f"{value} is above max.{resource} ({high})"))
        if low is not None and q(request) < q(low):
            problems.append((("limits", request_key), f"{request} is below min.{resource} ({low})"))
        ratio = getattr(lim.max_limit_request_ratio, resource)
        effective_limit = limit if resource == "memory" else lim.effective_default_cpu_limit
        if ratio is not None:
            if effective_limit is None:
                problems.append(
                    (
                        ("limits", "maxLimitRequestRatio", resource),
                        "needs a default CPU limit (defaultCpuLimit or max.cpu): containers "
                        "without a CPU limit would be rejected",
                    )
                )
            elif q(effective_limit) > q(ratio) * q(request):
                problems.append(
                    (
                        ("limits", "maxLimitRequestRatio", resource),
                        f"the defaults ({request} request, {effective_limit} limit) exceed "
                        f"this ratio ({ratio})",
                    )
                )
    if lim.pvc.min is not None and lim.pvc.max is not None and q(lim.pvc.min) > q(lim.pvc.max):
        problems.append(
            (("limits", "pvc", "min"), f"{lim.pvc.min} is above pvc.max ({lim.pvc.max})")
        )
    return problems


# Instance metadata (IMDS) and other link-local endpoints stay unreachable from
# team pods: credentials come from IRSA, never from the node role.
LINK_LOCAL = "169.254.0.0/16"
# The cluster's network when the stack does not know its VPC range.
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
# prometheus-operator labels the Prometheus pods it runs with this (the only
# monitoring pods that scrape).
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
WORKLOAD_KIND_LABEL = f"{catalog.LABEL_PREFIX}/workload-kind"


@dataclass(frozen=True)
class TeamNamespaceArgs:
    team: TeamSettings
    kubernetes_version: str  # "1.35": pins the Pod Security standard version
    max_gpus_per_container: int
    monitoring_namespace: str
    # Ports the monitoring namespace may scrape (the runtime's metrics ports,
    # given by the composition root).
    metrics_ports: tuple[int, ...]
    # The inference services' HTTP port (team pods may call it).
    serving_ports: tuple[int, ...] = ()
    # The cluster's own network, kept out of the HTTPS egress opening. Empty:
    # not known (existing clusters), all RFC 1918 ranges are kept out.
    cluster_cidrs: tuple[str, ...] = ()


class TeamNamespace(pulumi.ComponentResource):
    """A team's namespace with quota, limits and network policies.

    Outputs: `namespace` (name), `quota_name`, `limit_range_name`, `network_policy_names`.
    """

    def __init__(
        self, name: str, args: TeamNamespaceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:tenancy:TeamNamespace", name, None, opts)
        team = args.team
        ns_name = team.name
        labels = meta.labels(
            "team-namespace", team.name, "tenancy", **{catalog.TEAM_LABEL: team.name}
        )
        pss_version = f"v{args.kubernetes_version}"
        pss = {
            f"pod-security.kubernetes.io/{mode}{suffix}": value
            for mode in ("enforce", "audit", "warn")
            for suffix, value in (("", "restricted"), ("-version", pss_version))
        }
        self.namespace_resource = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={"name": ns_name, "labels": {**labels, **pss}},
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Everything else waits for the namespace and is deleted before it.
        child = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace_resource])

        self.quota = k8s.core.v1.ResourceQuota(
            f"{name}-quota",
            metadata=meta.metadata("team-quota", labels, ns_name),
            spec={"hard": quota_hard(team)},
            opts=child,
        )
        self.scoped_quotas = [
            k8s.core.v1.ResourceQuota(
                f"{name}-{quota_name}",
                metadata=meta.metadata(quota_name, labels, ns_name),
                spec=spec,
                opts=child,
            )
            for quota_name, spec in scoped_quotas(team).items()
        ]
        self.limit_range = k8s.core.v1.LimitRange(
            f"{name}-limits",
            metadata=meta.metadata("team-limits", labels, ns_name),
            spec={"limits": limit_range_limits(team, args.max_gpus_per_container)},
            opts=child,
        )
        groups = [*team.group_members]
        if team.iam_members:
            groups.append(team_group(team.name))
        if groups:
            # Kubernetes' aggregated `edit` role: workloads, config and secrets of
            # the namespace, and the custom resources whose operators aggregate
            # into it (PyTorchJob, ...); no RBAC, quota or namespace changes.
            self.role_binding: k8s.rbac.v1.RoleBinding | None = k8s.rbac.v1.RoleBinding(
                f"{name}-edit",
                metadata=meta.metadata("team-edit", labels, ns_name),
                role_ref={
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "edit",
                },
                subjects=[
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}
                    for group in groups
                ],
                opts=child,
            )
        else:
            self.role_binding = None
        self.network_policies = {
            policy_name: k8s.networking.v1.NetworkPolicy(
                f"{name}-netpol-{policy_name}",
                metadata=meta.metadata(policy_name, labels, ns_name),
                spec=spec,
                opts=child,
            )
            for policy_name, spec in network_policies(
                team,
                args.monitoring_namespace,
                args.metrics_ports,
                serving_ports=args.serving_ports,
                cluster_cidrs=args.cluster_cidrs,
            ).items()
        }
        self.namespace = ns_name
        self.quota_name = "team-quota"
        self.limit_range_name = "team-limits"
        self.network_policy_names = sorted(self.network_policies)
        self.register_outputs(
            {
                "namespace": self.namespace,
                "quota_name": self.quota_name,
                "limit_range_name": self.limit_range_name,
                "network_policy_names": self.network_policy_names,
            }
        )


def quota_hard(team: TeamSettings) -> dict[str, str]:
    q = team.quota
    hard = {
        f"requests.{catalog.GPU_RESOURCE}": str(q.gpus),
        "requests.cpu": q.cpu,
        "requests.memory": q.memory,
        "limits.memory": q.memory_limits or q.memory,
        "pods": str(q.pods),
        "persistentvolumeclaims": str(q.persistent_volume_claims),
        "requests.storage": q.storage,
        "count/jobs.batch": str(q.jobs),
        # Exposure goes through the platform's gateway, never a per-team cloud LB.
        "services.loadbalancers": "0",
        "services.nodeports": "0",
    }
    if q.cpu_limits is not None:
        hard["limits.cpu"] = q.cpu_limits
    if q.cron_jobs is not None:
        hard["count/cronjobs.batch"] = str(q.cron_jobs)
    if q.services is not None:
        hard["services"] = str(q.services)
    return hard


def limit_range_limits(team: TeamSettings, max_gpus: int) -> list[dict[str, Any]]:
    lim = team.limits
    default = {"memory": lim.default_memory_limit, catalog.GPU_RESOURCE: "0"}
    if lim.default_cpu_limit is not None:
        default["cpu"] = lim.default_cpu_limit
    container: dict[str, Any] = {
        "type": "Container",
        "default": default,
        "defaultRequest": {
            "cpu": lim.default_cpu_request,
            "memory": lim.default_memory_request,
            catalog.GPU_RESOURCE: "0",
        },
        "max": {**lim.max.manifest(), catalog.GPU_RESOURCE: str(max_gpus)},
    }
    if lim.min.manifest():
        container["min"] = lim.min.manifest()
    if lim.max_limit_request_ratio.manifest():
        container["maxLimitRequestRatio"] = lim.max_limit_request_ratio.manifest()
    items = [container]
    pvc = {
        k: {"storage": v} for k, v in (("min", lim.pvc.min), ("max", lim.pvc.max)) if v is not None
    }
    if pvc:
        items.append({"type": "PersistentVolumeClaim", **pvc})
    return items


def scoped_quotas(team: TeamSettings) -> dict[str, dict[str, Any]]:
    """ResourceQuota specs by name, one per priority class with its own budget."""
    return {
        f"team-quota-{pc}": {
            "hard": scoped.hard(),
            "scopeSelector": {
                "matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In", "values": [pc]}
                ]
            },
        }
        for pc, scoped in sorted(team.quota.by_priority_class.items())
    }


def network_policies(
    team: TeamSettings,
    monitoring_namespace: str,
    metrics_ports: Sequence[int],
    *,
    serving_ports: Sequence[int] = (),
    cluster_cidrs: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """NetworkPolicy specs by name: default deny, then each enabled opening."""
    net = team.network
    everything: dict[str, Any] = {}
    policies: dict[str, dict[str, Any]] = {
        "default-deny": {"podSelector": everything, "policyTypes": ["Ingress", "Egress"]},
    }
    if net.allow_dns:
        policies["allow-dns"] = {
            "podSelector": everything,
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {catalog.NAMESPACE_NAME_LABEL: "kube-system"}
                            },
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                }
            ],
        }
    if net.allow_intra_namespace and serving_ports:
        # Clients in the team reach the team's inference pods on their HTTP port,
        # and only there: egress is limited to inference pods, ingress to that port.
        ports = [{"protocol": "TCP", "port": port} for port in serving_ports]
        policies["allow-same-namespace"] = {
            "podSelector": everything,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": everything}], "ports": ports}],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": {WORKLOAD_KIND_LABEL: "inference"}}}],
                    "ports": ports,
                }
            ],
        }
    if net.allow_monitoring_scrape:
        policies["allow-monitoring-scrape"] = {
            "podSelector": everything,
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {catalog.NAMESPACE_NAME_LABEL: monitoring_namespace}
                            },
                            "podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": port} for port in metrics_ports],
                }
            ],
        }
    if net.allow_https_egress:
        excluded = [LINK_LOCAL]
        if not net.allow_https_to_cluster_network:
            excluded += list(cluster_cidrs or PRIVATE_RANGES)
        policies["allow-https-egress"] = {
            "podSelector": everything,
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {"ipBlock": {"cidr": "0.0.0.0/0", "except": excluded}},
                    ],
                    "ports": [{"protocol": "TCP", "port": 443}],
                }
            ],
        }
    if net.egress_cidrs:
        policies["allow-egress-cidrs"] = {
            "podSelector": everything,
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": cidr}} for cidr in net.egress_cidrs]}],
        }
    return policies


EDIT_POLICY = "AmazonEKSEditPolicy"


def team_group(team: str) -> str:
    """The Kubernetes group a team's IAM members get through their access entry
    (bound to `edit` in the team namespace): EKS's access policies grant the
    built-in kinds only, the group's RoleBinding also the aggregated custom ones."""
    return f"mlplatform:team:{team}"


@dataclass(frozen=True)
class TeamAccessArgs:
    cluster_name: pulumi.Input[str]
    partition: pulumi.Input[str]
    # IAM principal ARN -> the team namespaces it may edit.
    principals: Mapping[str, Sequence[str]]


class TeamAccess(pulumi.ComponentResource):
    """EKS access entries for the teams' IAM members: one entry per principal
    (in its teams' Kubernetes groups, see `team_group`) and one
    `AmazonEKSEditPolicy` association scoped to that principal's team namespaces
    (EKS allows one association per principal and policy, so a member of two
    teams gets one association naming both).

    Outputs: `principals` (ARN -> namespaces).
    """

    def __init__(
        self, name: str, args: TeamAccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:tenancy:TeamAccess", name, None, opts)
        self.entries: list[aws.eks.AccessEntry] = []
        for principal, namespaces in sorted(args.principals.items()):
            slug = _principal_slug(principal)
            entry = aws.eks.AccessEntry(
                f"{name}-{slug}",
                cluster_name=args.cluster_name,
                principal_arn=principal,
                type="STANDARD",
                kubernetes_groups=[team_group(ns) for ns in sorted(namespaces)],
                opts=pulumi.ResourceOptions(parent=self),
            )
            aws.eks.AccessPolicyAssociation(
                f"{name}-{slug}-edit",
                cluster_name=args.cluster_name,
                principal_arn=principal,
                policy_arn=pulumi.Output.concat(
                    "arn:", args.partition, f":eks::aws:cluster-access-policy/{EDIT_POLICY}"
                ),
                access_scope={"type": "namespace", "namespaces": sorted(namespaces)},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]),
            )
            self.entries.append(entry)
        self.principals = {p: sorted(ns) for p, ns in args.principals.items()}
        self.register_outputs({"principals": self.principals})


def _principal_slug(arn: str) -> str:
    """`arn:aws:iam::123456789012:role/ml/eng` -> `123456789012-role-ml-eng`."""
    account, resource = arn.split(":")[4], arn.split(":", 5)[5]
    return re.sub(r"[^a-z0-9]+", "-", f"{account}-{resource}".lower()).strip("-")
