"""The stack outputs contract: every stack's outputs match the typed model and the
generated JSON schema, secrets stay secret, and the example consumers work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pulumi
import pytest
from pulumi.runtime.mocks import MockResourceArgs

from mlplatform.outputs import SECRET_OUTPUTS, SECRET_PLACEHOLDER, StackOutputs
from tools import preview as preview_cli
from tools.mocks import PlatformMocks, RecordingMonitor
from tools.offline import ROOT, read_stack_config, run_program, stack_file

STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))
SCHEMA = json.loads((ROOT / "docs" / "stack-outputs.schema.json").read_text())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    for stack in STACKS:
        assert preview_cli.main(["--stack", stack, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_outputs_match_the_contract_and_schema(rendered: Path, stack: str) -> None:
    outputs = json.loads((rendered / stack / "outputs.json").read_text())
    jsonschema.validate(outputs, SCHEMA)  # what consumers in any language can check
    contract = StackOutputs.model_validate(outputs)
    assert contract.environment == stack
    assert contract.gpu_capacity == sum(g.max_gpus for g in contract.gpu_node_groups)
    for key, endpoint in contract.inference_endpoints.items():
        assert key == f"{endpoint.namespace}/{endpoint.service_name}"
        assert (
            endpoint.url == f"http://{endpoint.service_name}.{endpoint.namespace}.svc.cluster.local"
        )
        assert contract.workloads[key].kind == "inference"


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_stay_secret(rendered: Path, stack: str) -> None:
    outputs = json.loads((rendered / stack / "outputs.json").read_text())
    assert outputs["kubeconfig"] == SECRET_PLACEHOLDER
    # The kubeconfig's content appears in no artifact: not in the outputs, the
    # recorded provider inputs or any manifest.
    for path in (rendered / stack).rglob("*"):
        if path.is_file():
            assert "client.authentication.k8s.io" not in path.read_text(), path


def test_secret_outputs_are_exactly_the_declared_ones() -> None:
    run = run_program("prod", read_stack_config(stack_file("prod")))
    assert run.secret_outputs == SECRET_OUTPUTS
    schema_secrets = {k for k, v in SCHEMA["properties"].items() if v.get("x-secret")}
    assert schema_secrets == SECRET_OUTPUTS


def test_schema_rejects_a_broken_output(rendered: Path) -> None:
    outputs = json.loads((rendered / "prod" / "outputs.json").read_text())
    del outputs["inferenceEndpoints"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(outputs, SCHEMA)
    outputs = json.loads((rendered / "prod" / "outputs.json").read_text())
    outputs["gpuCapacity"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(outputs, SCHEMA)


# -- the example consumers ------------------------------------------------------------


def test_read_outputs_example(rendered: Path, tmp_path: Path) -> None:
    script = ROOT / "examples" / "read_outputs.py"
    ok = subprocess.run(
        [sys.executable, str(script), "--file", str(rendered / "prod/outputs.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        "ranking/ranker: http://ranker.ranking.svc.cluster.local/v2/models/ranker/infer (kserve-v2)"
        in ok.stdout
    )
    assert "dashboard mlplatform / GPUs (uid mlplatform-gpu)" in ok.stdout
    broken = tmp_path / "broken.json"
    outputs = json.loads((rendered / "prod/outputs.json").read_text())
    outputs["clusterMode"] = "serverless"
    broken.write_text(json.dumps(outputs))
    bad = subprocess.run(
        [sys.executable, str(script), "--file", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        bad.returncode == 1 and "break the contract" in bad.stderr and "clusterMode" in bad.stderr
    )


class StackReferenceMocks(PlatformMocks):
    """Mocks where a StackReference returns a platform stack's outputs."""

    def __init__(self, outputs: dict[str, Any]) -> None:
        super().__init__()
        self.platform_outputs = outputs

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        if args.typ == "pulumi:pulumi:StackReference":
            name = args.inputs.get("name", args.name)
            return name, {
                "name": name,
                "outputs": self.platform_outputs,
                "secretOutputNames": ["kubeconfig"],
            }
        return super().new_resource(args)


def _consumer(rendered: Path, service: str) -> Any:
    outputs = json.loads((rendered / "prod/outputs.json").read_text())
    outputs["kubeconfig"] = (
        '{"apiVersion": "v1", "kind": "Config"}'  # a real stack hands the secret over
    )
    monitor = RecordingMonitor(StackReferenceMocks(outputs))
    config = {
        "mlplatform-consumer:platformStack": "myorg/mlplatform/prod",
        "mlplatform-consumer:inferenceService": service,
    }
    return run_program(
        "prod", config, ROOT / "examples" / "consumer" / "__main__.py", monitor=monitor
    )


def test_stack_reference_consumer(rendered: Path) -> None:
    run = _consumer(rendered, "ranking/ranker")
    cm = run.manifest("ConfigMap", "model-endpoint", "ranking")
    assert cm["data"] == {
        "MODEL_URL": "http://ranker.ranking.svc.cluster.local",
        "MODEL_NAME": "ranker",
        "MODEL_PROTOCOL": "kserve-v2",
    }
    assert run.outputs["modelUrl"] == "http://ranker.ranking.svc.cluster.local"
    provider = run.one("pulumi:providers:kubernetes", "platform")
    assert provider.inputs["kubeconfig"] == SECRET_PLACEHOLDER  # still secret downstream


def test_stack_reference_consumer_names_a_missing_service(rendered: Path) -> None:
    with pytest.raises(pulumi.RunError, match="'ranking/nope' is not an inference endpoint"):
        _consumer(rendered, "ranking/nope")
