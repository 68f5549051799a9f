"""The openings of a team namespace's default deny are narrow: the team's pods
reach only the team's inference services (on their HTTP port), only Prometheus
pods scrape, and HTTPS egress stays out of the cluster's own network."""

from __future__ import annotations

from typing import Any

import pytest

from infra.tenancy import PRIVATE_RANGES, TeamSettings, network_policies
from tests.helpers import base_config, run

SERVE, METRICS = 8080, 9090


def policies(**network: Any) -> dict[str, dict[str, Any]]:
    team = TeamSettings.model_validate({"name": "t", "network": network})
    return network_policies(
        team, "monitoring", (SERVE, METRICS), serving_ports=(SERVE,), cluster_cidrs=("10.1.0.0/16",)
    )


def test_same_namespace_opens_only_the_serving_port_to_inference_pods() -> None:
    same = policies()["allow-same-namespace"]
    ports = [{"protocol": "TCP", "port": SERVE}]
    assert same["ingress"] == [{"from": [{"podSelector": {}}], "ports": ports}]
    assert same["egress"] == [
        {
            "to": [{"podSelector": {"matchLabels": {"mlplatform.io/workload-kind": "inference"}}}],
            "ports": ports,
        }
    ]
    assert "allow-same-namespace" not in policies(allowIntraNamespace=False)


def test_scrapes_come_only_from_prometheus_pods() -> None:
    (rule,) = policies()["allow-monitoring-scrape"]["ingress"]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]


@pytest.mark.parametrize(
    ("network", "excluded"),
    [
        ({}, ["169.254.0.0/16", "10.1.0.0/16"]),
        ({"allowHttpsToClusterNetwork": True}, ["169.254.0.0/16"]),
    ],
)
def test_https_egress_stays_out_of_the_cluster_network(
    network: dict[str, Any], excluded: list[str]
) -> None:
    (rule,) = policies(**network)["allow-https-egress"]["egress"]
    assert rule["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": excluded}}]


def test_unknown_cluster_network_excludes_every_private_range() -> None:
    team = TeamSettings.model_validate({"name": "t"})
    (rule,) = network_policies(team, "monitoring", (METRICS,))["allow-https-egress"]["egress"]
    assert rule["to"][0]["ipBlock"]["except"] == ["169.254.0.0/16", *PRIVATE_RANGES]


def test_stack_uses_its_vpc_cidr() -> None:
    r = run(
        base_config(
            cluster={
                "mode": "create",
                "kubernetesVersion": "1.35",
                "endpointPublicAccessCidrs": ["203.0.113.0/24"],
                "vpc": {"cidr": "10.42.0.0/16"},
            }
        )
    )
    https = r.manifest("NetworkPolicy", "allow-https-egress", "vision")["spec"]["egress"][0]
    assert https["to"][0]["ipBlock"]["except"] == ["169.254.0.0/16", "10.42.0.0/16"]
