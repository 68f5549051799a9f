"""Shared test helpers: a base stack config and runs of the real program under mocks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tools.offline import Run, run_program
from tools.preview import build_preview
from tools.preview import main as preview_main
from tools.result import Preview


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


def preview_cli(
    tmp_path: Path, config: dict[str, Any], program: Path | None = None, stack: str = "fx"
) -> tuple[int, Path]:
    """Run the preview CLI on `config` written as a stack file under `tmp_path`.
    Returns the exit code and the stack's output directory."""
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    argv = ["--stack", stack, "--stack-file", str(path), "--out", str(tmp_path / "build")]
    if program is not None:
        argv += ["--program", str(program)]
    return preview_main(argv), tmp_path / "build" / stack


def assert_config_error(
    tmp_path: Path, capsys: Any, config: dict[str, Any], key_path: str, words: str
) -> None:
    """The preview CLI refuses `config` as a user sees it: exit 2, a line
    `<key_path>: ...` that says `words`, no traceback, nothing written."""
    code, out_dir = preview_cli(tmp_path, config, stack="bad")
    err = capsys.readouterr().err
    assert code == 2, err
    matching = [
        line.strip() for line in err.splitlines() if line.strip().startswith(f"{key_path}:")
    ]
    assert matching, f"no line for {key_path} in:\n{err}"
    assert any(words in line for line in matching), err
    assert "Traceback" not in err
    assert not out_dir.exists(), "nothing is written for an invalid config"


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod spec inside a Deployment/DaemonSet/Job/CronJob manifest."""
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    result: dict[str, Any] = spec["template"]["spec"]
    return result
