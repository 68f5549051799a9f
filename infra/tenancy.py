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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field, model_validator

from infra import catalog, meta, quantity
from infra.config_types import Cidr, DnsLabel, FieldProblems, Loc, Quantity, _Model


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
        self.limit_range = k8s.core.v1.LimitRange(
            f"{name}-limits",
            metadata=meta.metadata("team-limits", labels, ns_name),
            spec={"limits": limit_range_limits(team, args.max_gpus_per_container)},
            opts=child,
        )
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
    return hard


def limit_range_limits(team: TeamSettings, max_gpus: int) -> list[dict[str, Any]]:
    lim = team.limits
    default = {"memory": lim.default_memory_limit, catalog.GPU_RESOURCE: "0"}
    if lim.default_cpu_limit is not None:
        default["cpu"] = lim.default_cpu_limit
    return [
        {
            "type": "Container",
            "default": default,
            "defaultRequest": {
                "cpu": lim.default_cpu_request,
                "memory": lim.default_memory_request,
                catalog.GPU_RESOURCE: "0",
            },
            "max": {catalog.GPU_RESOURCE: str(max_gpus)},
        }
    ]


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
