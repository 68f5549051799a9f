"""Team namespaces: Pod Security, quota, limit range, network policies."""

from __future__ import annotations

import pytest

from tests.helpers import base_config, run
from tools.offline import Run


@pytest.fixture(scope="module")
def teams() -> Run:
    return run(
        base_config(
            gpuNodeGroups=[{"name": "a100", "instanceTypes": ["p4d.24xlarge"], "maxSize": 2}],
            teams=[
                {
                    "name": "vision",
                    "quota": {
                        "gpus": 8,
                        "cpu": "96",
                        "memory": "512Gi",
                        "storage": "4Ti",
                        "jobs": 30,
                    },
                },
                {
                    "name": "nlp",
                    "quota": {"gpus": 32, "overcommit": True, "cpuLimits": "128"},
                    "limits": {"defaultCpuLimit": "2", "maxGpusPerContainer": 4},
                    "network": {
                        "allowHttpsEgress": False,
                        "allowMonitoringScrape": False,
                        "egressCidrs": ["10.20.0.0/16"],
                    },
                },
            ],
            monitoring={"namespace": "observability"},
        )
    )


def test_namespace_enforces_restricted_pod_security(teams: Run) -> None:
    ns = teams.manifest("Namespace", "vision")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "v1.35"
    assert labels["mlplatform.io/team"] == "vision"
    assert labels["app.kubernetes.io/part-of"] == "mlplatform"


def test_quota(teams: Run) -> None:
    hard = teams.manifest("ResourceQuota", "team-quota", "vision")["spec"]["hard"]
    assert hard == {
        "requests.nvidia.com/gpu": "8",
        "requests.cpu": "96",
        "requests.memory": "512Gi",
        "limits.memory": "512Gi",
        "pods": "50",
        "persistentvolumeclaims": "10",
        "requests.storage": "4Ti",
        "count/jobs.batch": "30",
        "services.loadbalancers": "0",
        "services.nodeports": "0",
    }
    nlp = teams.manifest("ResourceQuota", "team-quota", "nlp")["spec"]["hard"]
    assert nlp["requests.nvidia.com/gpu"] == "32"  # overcommitted on purpose
    assert nlp["limits.cpu"] == "128"
    assert "limits.nvidia.com/gpu" not in nlp  # extended resources take only requests.


def test_limit_range(teams: Run) -> None:
    (limits,) = teams.manifest("LimitRange", "team-limits", "vision")["spec"]["limits"]
    assert limits["type"] == "Container"
    assert limits["max"] == {"nvidia.com/gpu": "8"}  # largest node: p4d.24xlarge
    # GPUs default to 0 so a `max` does not reject CPU-only containers.
    assert limits["default"] == {"memory": "1Gi", "nvidia.com/gpu": "0"}
    assert limits["defaultRequest"] == {"cpu": "250m", "memory": "512Mi", "nvidia.com/gpu": "0"}
    (nlp,) = teams.manifest("LimitRange", "team-limits", "nlp")["spec"]["limits"]
    assert nlp["max"] == {"nvidia.com/gpu": "4"}
    assert nlp["default"]["cpu"] == "2"


def _policies(run: Run, ns: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {
        m["metadata"]["name"]: m["spec"]
        for m in run.manifests()
        if m["kind"] == "NetworkPolicy" and m["metadata"]["namespace"] == ns
    }


def test_default_network_policies(teams: Run) -> None:
    policies = _policies(teams, "vision")
    assert set(policies) == {
        "default-deny",
        "allow-dns",
        "allow-same-namespace",
        "allow-monitoring-scrape",
        "allow-https-egress",
    }
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dns = policies["allow-dns"]["egress"][0]
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert {"protocol": "UDP", "port": 53} in dns["ports"]
    scrape = policies["allow-monitoring-scrape"]["ingress"][0]
    assert scrape["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "observability"
    }
    assert {p["port"] for p in scrape["ports"]} == {8080, 9090}
    https = policies["allow-https-egress"]["egress"][0]
    assert https["ports"] == [{"protocol": "TCP", "port": 443}]
    # Not instance metadata, not the cluster's own VPC (tests/test_network_openings.py).
    assert https["to"] == [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16", "10.0.0.0/16"]}}
    ]


def test_openings_are_configurable(teams: Run) -> None:
    policies = _policies(teams, "nlp")
    assert set(policies) == {
        "default-deny",
        "allow-dns",
        "allow-same-namespace",
        "allow-egress-cidrs",
    }
    assert policies["allow-egress-cidrs"]["egress"] == [
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}
    ]


def test_team_objects_wait_for_their_namespace(teams: Run) -> None:
    quota = next(
        r
        for r in teams.kubernetes_objects
        if r.inputs["kind"] == "ResourceQuota" and r.inputs["metadata"]["namespace"] == "vision"
    )
    assert "mlplatform-team-vision-namespace" in quota.options["dependsOn"]
    assert teams.outputs["teamNamespaces"] == {"vision": "vision", "nlp": "nlp"}
