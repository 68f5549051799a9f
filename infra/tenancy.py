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

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import catalog, meta
from infra.settings import TeamSettings
from workloads.runtime import contract

# Instance metadata (IMDS) and other link-local endpoints stay unreachable from
# team pods: credentials come from IRSA, never from the node role.
LINK_LOCAL = "169.254.0.0/16"


@dataclass(frozen=True)
class TeamNamespaceArgs:
    team: TeamSettings
    kubernetes_version: str  # "1.35": pins the Pod Security standard version
    max_gpus_per_container: int
    monitoring_namespace: str


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
            for policy_name, spec in network_policies(team, args.monitoring_namespace).items()
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


def network_policies(team: TeamSettings, monitoring_namespace: str) -> dict[str, dict[str, Any]]:
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
    if net.allow_intra_namespace:
        same_namespace = [{"podSelector": everything}]
        policies["allow-same-namespace"] = {
            "podSelector": everything,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": same_namespace}],
            "egress": [{"to": same_namespace}],
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
                            }
                        }
                    ],
                    "ports": [
                        {"protocol": "TCP", "port": contract.SERVE_PORT},
                        {"protocol": "TCP", "port": contract.TRAIN_METRICS_PORT},
                    ],
                }
            ],
        }
    if net.allow_https_egress:
        policies["allow-https-egress"] = {
            "podSelector": everything,
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {"ipBlock": {"cidr": "0.0.0.0/0", "except": [LINK_LOCAL]}},
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
