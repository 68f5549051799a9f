"""Stack configuration: every invalid config gives one message naming each
problem's key path, exit code 2 in the offline preview, a RunError under Pulumi,
and nothing registered before validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from infra.config_types import ConfigError
from mlplatform.loading import load_settings
from mlplatform.settings import PlatformSettings
from tests.helpers import assert_config_error, base_config
from tools.mocks import PlatformMocks, RecordingMonitor
from tools.offline import ROOT, run_program

GROUP = {"name": "a10g", "instanceTypes": ["g5.2xlarge"], "maxSize": 4}


def group(**fields: Any) -> dict[str, Any]:
    return {**GROUP, **fields}


def team(**fields: Any) -> dict[str, Any]:
    return {"name": "vision", "quota": {"gpus": 4}, **fields}


def cluster(**fields: Any) -> dict[str, Any]:
    return {"mode": "create", "kubernetesVersion": "1.35", **fields}


# (id, config overrides, expected key path, expected words in the message)
BAD_CONFIGS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "min-above-max",
        {"gpuNodeGroups": [group(minSize=5, maxSize=2)]},
        "mlplatform:gpuNodeGroups[0].minSize",
        "greater than maxSize",
    ),
    (
        "desired-out-of-range",
        {"gpuNodeGroups": [group(minSize=1, desiredSize=9, maxSize=4)]},
        "mlplatform:gpuNodeGroups[0].desiredSize",
        "between minSize (1) and maxSize (4)",
    ),
    (
        "cpu-instance-type",
        {"gpuNodeGroups": [group(instanceTypes=["m5.large"])]},
        "mlplatform:gpuNodeGroups[0].instanceTypes[0]",
        "not a supported GPU instance type",
    ),
    (
        "amd-instance-type",
        {"gpuNodeGroups": [group(instanceTypes=["g4ad.xlarge"])]},
        "mlplatform:gpuNodeGroups[0].instanceTypes[0]",
        "not supported (AMD Radeon Pro V520 GPUs",
    ),
    (
        "unknown-gpu-size",
        {"gpuNodeGroups": [group(instanceTypes=["g5.3xlarge"])]},
        "mlplatform:gpuNodeGroups[0].instanceTypes[0]",
        "not a supported size of the g5 family",
    ),
    (
        "mixed-gpu-shapes",
        {"gpuNodeGroups": [group(instanceTypes=["g5.2xlarge", "g5.12xlarge"])]},
        "mlplatform:gpuNodeGroups[0].instanceTypes",
        "same GPU count and model",
    ),
    (
        "non-nvidia-ami",
        {"gpuNodeGroups": [group(amiType="AL2023_x86_64_STANDARD")]},
        "mlplatform:gpuNodeGroups[0].amiType",
        "AL2023_x86_64_NVIDIA",
    ),
    (
        "duplicate-group",
        {"gpuNodeGroups": [group(), group()]},
        "mlplatform:gpuNodeGroups[1].name",
        "already used by gpuNodeGroups[0]",
    ),
    (
        "platform-label",
        {"gpuNodeGroups": [group(labels={"nvidia.com/gpu.present": "false"})]},
        'mlplatform:gpuNodeGroups[0].labels["nvidia.com/gpu.present"]',
        "set by the platform",
    ),
    (
        "team-not-dns-label",
        {"teams": [team(name="Team_A")]},
        "mlplatform:teams[0].name",
        "DNS-1123 label",
    ),
    (
        "duplicate-team",
        {"teams": [team(), team()]},
        "mlplatform:teams[1].name",
        "already used by teams[0]",
    ),
    (
        "reserved-team",
        {"teams": [team(name="kube-system")]},
        "mlplatform:teams[0].name",
        "reserved",
    ),
    (
        "quota-above-capacity",
        {"teams": [team(quota={"gpus": 5})]},
        "mlplatform:teams[0].quota.gpus",
        "exceed what the node groups can ever provide (4)",
    ),
    (
        "gpus-per-container-above-node",
        {"teams": [team(limits={"maxGpusPerContainer": 8})]},
        "mlplatform:teams[0].limits.maxGpusPerContainer",
        "largest GPU node has (1)",
    ),
    (
        "bad-quantity",
        {"teams": [team(quota={"gpus": 1, "memory": "lots"})]},
        "mlplatform:teams[0].quota.memory",
        "not a Kubernetes quantity",
    ),
    (
        "cpu-limits-without-default",
        {"teams": [team(quota={"cpuLimits": "64"})]},
        "mlplatform:teams[0].limits.defaultCpuLimit",
        "required when quota.cpuLimits is set",
    ),
    (
        "request-above-limit",
        {"teams": [team(limits={"defaultMemoryRequest": "2Gi"})]},
        "mlplatform:teams[0].limits.defaultMemoryRequest",
        "greater than limits.defaultMemoryLimit",
    ),
    (
        "unknown-top-level-key",
        {"gpuNodeGroup": [group()]},
        "mlplatform:gpuNodeGroup",
        "did you mean 'gpuNodeGroups'",
    ),
    (
        "unknown-nested-key",
        {"cluster": cluster(vpc={"natGateway": "single"})},
        "mlplatform:cluster.vpc.natGateway",
        "did you mean 'natGateways'",
    ),
    (
        "unsupported-kubernetes",
        {"cluster": cluster(kubernetesVersion="1.29")},
        "mlplatform:cluster.kubernetesVersion",
        "not supported",
    ),
    (
        "endpoint-open-to-internet",
        {"cluster": cluster(endpointPublicAccessCidrs=["0.0.0.0/0"])},
        "mlplatform:cluster.endpointPublicAccessCidrs[0]",
        "whole internet",
    ),
    (
        "not-a-cidr",
        {"cluster": cluster(endpointPublicAccessCidrs=["10.0.0.300/8"])},
        "mlplatform:cluster.endpointPublicAccessCidrs[0]",
        "not a CIDR",
    ),
    (
        "vpc-too-small",
        {"cluster": cluster(vpc={"cidr": "10.0.0.0/24"})},
        "mlplatform:cluster.vpc.cidr",
        "prefix length must be 16 to 20",
    ),
    (
        "kubeconfig-context-in-create-mode",
        {"cluster": cluster(kubeconfigContext="kind-ml")},
        "mlplatform:cluster.kubeconfigContext",
        "only valid with mode: existing",
    ),
    (
        "node-groups-without-aws",
        {"cluster": cluster(mode="existing", kubeconfigContext="kind-ml"), "teams": []},
        "mlplatform:gpuNodeGroups",
        "existingGpuNodes",
    ),
    (
        "existing-without-name",
        {"cluster": cluster(mode="existing")},
        "mlplatform:cluster.name",
        "needs the EKS cluster name",
    ),
    ("missing-region", {"aws:region": None}, "mlplatform:cluster.region", "required"),
    (
        "wrong-type",
        {"gpuNodeGroups": [group(maxSize="four")]},
        "mlplatform:gpuNodeGroups[0].maxSize",
        "valid integer",
    ),
    (
        "missing-required",
        {"gpuNodeGroups": [{"name": "a10g", "instanceTypes": ["g5.2xlarge"]}]},
        "mlplatform:gpuNodeGroups[0].maxSize",
        "required key is missing",
    ),
    (
        "time-slicing-on-bottlerocket",
        {
            "gpuNodeGroups": [group(amiType="BOTTLEROCKET_x86_64_NVIDIA")],
            "devicePlugin": {"timeSlicing": {"replicas": 4}},
        },
        "mlplatform:gpuNodeGroups[0].amiType",
        "Bottlerocket runs its own device plugin",
    ),
    (
        "mig-on-a10g",
        {"devicePlugin": {"migStrategy": "single"}},
        "mlplatform:gpuNodeGroups[0].instanceTypes",
        "A10G GPUs do not support MIG",
    ),
    (
        "unknown-priority-class",
        {"scheduling": {"spotPriorityClasses": ["batch"]}},
        "mlplatform:scheduling.spotPriorityClasses[0]",
        "'batch'",
    ),
]


def _config(overrides: dict[str, Any]) -> dict[str, Any]:
    config = base_config(**{k: v for k, v in overrides.items() if k != "aws:region"})
    if "aws:region" in overrides:
        if overrides["aws:region"] is None:
            del config["aws:region"]
        else:
            config["aws:region"] = overrides["aws:region"]
    return config


def _write_stack(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


@pytest.mark.parametrize(
    ("overrides", "key_path", "words"),
    [c[1:] for c in BAD_CONFIGS],
    ids=[c[0] for c in BAD_CONFIGS],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    key_path: str,
    words: str,
) -> None:
    assert_config_error(tmp_path, capsys, _config(overrides), key_path, words)


def test_every_problem_is_reported_at_once() -> None:
    config = base_config(
        gpuNodeGroups=[
            group(minSize=5, maxSize=2),
            group(name="h100", instanceTypes=["p5.48xlarge"], amiType="x"),
        ],
        teams=[team(name="Bad_Name"), team(name="vision", quota={"gpus": 1, "cpu": "abc"})],
        cluster=cluster(kubernetesVersion="1.2", vpc={"cidr": "10.0.0.0/8"}),
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config, "dev")
    paths = {path for path, _ in info.value.problems}
    assert paths == {
        "mlplatform:gpuNodeGroups[0].minSize",
        "mlplatform:gpuNodeGroups[1].amiType",
        "mlplatform:teams[0].name",
        "mlplatform:teams[1].quota.cpu",
        "mlplatform:cluster.kubernetesVersion",
        "mlplatform:cluster.vpc.cidr",
    }
    message = str(info.value)
    assert message.startswith("invalid stack configuration (6 problems):")
    assert all(f"  {path}: " in message for path in paths)


def test_invalid_config_is_a_run_error_and_registers_nothing() -> None:
    """Under `pulumi up` the program raises a RunError (printed without traceback)
    before a single resource is registered."""
    monitor = RecordingMonitor(PlatformMocks())
    with pytest.raises(ConfigError) as info:
        run_program("dev", base_config(teams=[team(name="Team_A")]), monitor=monitor)
    assert isinstance(info.value, pulumi.RunError)
    assert "mlplatform:teams[0].name" in str(info.value)
    assert monitor.records == []


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path: Path) -> None:
    stack = _write_stack(tmp_path, base_config(gpuNodeGroups=[group(minSize=5, maxSize=2)]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.preview",
            "--stack",
            "bad",
            "--stack-file",
            str(stack),
            "--out",
            str(tmp_path / "build"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "mlplatform:gpuNodeGroups[0].minSize: 5 is greater than maxSize (2)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_json_strings_from_the_pulumi_cli_are_decoded() -> None:
    """The CLI hands structured config to the program as JSON strings."""
    config = {
        "aws:region": "eu-west-1",
        "mlplatform:gpuNodeGroups": (
            '[{"name": "a10g", "instanceTypes": ["g5.xlarge"], "maxSize": 3}]'
        ),
        "mlplatform:teams": '[{"name": "nlp", "quota": {"gpus": 2}}]',
        "mlplatform:environment": "staging",
    }
    settings = load_settings(config, "whatever")
    assert settings.environment == "staging"
    assert settings.cluster.region == "eu-west-1"
    assert settings.gpu_capacity == 3
    assert settings.teams[0].quota.gpus == 2


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings({"aws:region": "us-east-1"}, "prod")
    assert s.environment == "prod"
    assert s.cluster_name == "mlplatform-prod"
    assert s.cluster.mode == "create"
    assert s.cluster.endpoint_public_access_cidrs == []  # private endpoint by default
    assert s.cluster.vpc.nat_gateways == "perAz"
    assert s.cluster.deletion_protection is True
    assert s.device_plugin.mig_strategy == "none"
    assert s.device_plugin.time_slicing.replicas == 1
    assert s.scheduling.spot_priority_classes == ["training-preemptible"]


def test_every_field_is_documented() -> None:
    """The configuration reference (docs/configuration.md) is generated from these descriptions."""
    seen: set[type] = set()

    def walk(model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert field.description, f"{model.__name__}.{name} has no description"
            for sub in _models_in(field.annotation):
                walk(sub)

    walk(PlatformSettings)
    assert len(seen) >= 12


def _models_in(annotation: Any) -> list[type]:
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
