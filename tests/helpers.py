"""Shared test helpers: a base stack config and runs of the real program under mocks."""

from __future__ import annotations

import copy
from typing import Any

from tools.offline import Run, run_program
from tools.preview import Preview, build_preview


def base_config(**overrides: Any) -> dict[str, Any]:
    """A small but complete `create`-mode stack; keyword args replace whole keys
    (`gpuNodeGroups=[...]` sets `mlplatform:gpuNodeGroups`)."""
    config: dict[str, Any] = {
        "aws:region": "us-west-2",
        "mlplatform:cluster": {
            "mode": "create",
            "kubernetesVersion": "1.35",
            "endpointPublicAccessCidrs": ["203.0.113.0/24"],
        },
        "mlplatform:gpuNodeGroups": [
            {"name": "a10g", "instanceTypes": ["g5.2xlarge"], "maxSize": 4},
        ],
        "mlplatform:teams": [{"name": "vision", "quota": {"gpus": 4}}],
    }
    for key, value in overrides.items():
        config[f"mlplatform:{key}" if ":" not in key else key] = copy.deepcopy(value)
    return config


def run(config: dict[str, Any] | None = None, stack: str = "test") -> Run:
    return run_program(stack, config if config is not None else base_config())


def preview(config: dict[str, Any] | None = None, stack: str = "test") -> Preview:
    return build_preview(stack, config if config is not None else base_config())


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod spec inside a Deployment/DaemonSet/Job/CronJob manifest."""
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    result: dict[str, Any] = spec["template"]["spec"]
    return result
