"""The offline preview: every shipped stack previews cleanly, artifacts are
complete, schema failures exit 3, custom resources are never silently skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import base_config, preview_cli, run
from tools import preview
from tools.offline import ROOT

STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))
FIXTURES = Path(__file__).parent / "fixtures"


def test_the_three_environments_exist() -> None:
    assert {"dev", "staging", "prod"} <= set(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_stack_previews_cleanly(
    stack: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = preview.main(["--stack", stack, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = tmp_path / stack
    resources = json.loads((out / "resources.json").read_text())
    outputs = json.loads((out / "outputs.json").read_text())
    manifests = sorted((out / "manifests").rglob("*.yaml"))
    assert json.loads((out / "policy.json").read_text()) == []
    k8s_objects = [
        r for r in resources if r["type"].startswith("kubernetes:") and "kind" in r["inputs"]
    ]
    assert len(manifests) == len(k8s_objects) > 10
    for path in manifests:
        doc = yaml.safe_load(path.read_text())
        folder = doc["metadata"].get("namespace", "_cluster")
        assert (
            path.relative_to(out / "manifests").as_posix()
            == f"{folder}/{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        )
    assert outputs["environment"] == stack
    assert outputs["kubeconfig"] == "[secret]"
    plan = (out / "plan.md").read_text()
    assert f"| **total** |  |  |  |  |  | **{outputs['gpuCapacity']}** |" in plan
    assert "0 failed" in plan


def test_resources_json_records_parents_and_options(tmp_path: Path) -> None:
    assert preview.main(["--stack", "dev", "--out", str(tmp_path)]) == 0
    resources = json.loads((tmp_path / "dev" / "resources.json").read_text())
    by_name = {r["name"]: r for r in resources}
    assert by_name["mlplatform"]["type"] == "mlplatform:platform:Platform"
    assert by_name["mlplatform-cluster"]["parent"] == "mlplatform"
    ng = by_name["mlplatform-cluster-system-nodes"]
    assert ng["parent"] == "mlplatform-cluster"
    assert ng["options"]["ignoreChanges"] == ["scalingConfig.desiredSize"]
    assert ng["inputs"]["scalingConfig"]["maxSize"] == 3  # an int, not 3.0
    pool = by_name["mlplatform-karpenter-nodepool-l4-spot"]
    assert pool["parent"] == "mlplatform-karpenter"
    assert "mlplatform-karpenter-controller" in pool["options"]["dependsOn"]
    provider = by_name["mlplatform-cluster-k8s"]
    assert provider["inputs"]["kubeconfig"] == "[secret]"


def test_manifests_keep_integers(tmp_path: Path) -> None:
    assert preview.main(["--stack", "dev", "--out", str(tmp_path)]) == 0
    pc = yaml.safe_load(
        (tmp_path / "dev/manifests/_cluster/priorityclass-serving-critical.yaml").read_text()
    )
    assert pc["value"] == 1_000_000 and isinstance(pc["value"], int)
    text = (tmp_path / "dev/manifests/_cluster/priorityclass-serving-critical.yaml").read_text()
    assert text.startswith(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\n"
        "metadata:\n  name: serving-critical\n"
    )


def test_schema_failure_exits_3_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = preview_cli(tmp_path, base_config(), FIXTURES / "bad_manifest_program.py")
    err = capsys.readouterr().err
    assert code == 3
    assert "apps/deployment-web.yaml: spec.template.spec.containers[0]: unknown field" in err
    assert "'resource' was unexpected" in err
    assert "FAILED `apps/deployment-web.yaml`" in (out / "plan.md").read_text()


def test_custom_resources_are_listed_as_unvalidated(tmp_path: Path) -> None:
    code, out = preview_cli(tmp_path, base_config(), FIXTURES / "custom_resource_program.py")
    assert code == 0
    plan = (out / "plan.md").read_text()
    assert "- `apps/widget-w.yaml`: no schema for example.com/v1 Widget" in plan


def test_missing_stack_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert preview.main(["--stack", "nope", "--stack-file", str(tmp_path / "none.yaml")]) == 2
    assert "no such stack file" in capsys.readouterr().err


def test_records_are_in_a_stable_order() -> None:
    """Registration order under the mocks varies from run to run; the run's
    records (and so resources.json, plan.md and the findings) come sorted."""
    records = run().records
    keys = [(r.type, r.name) for r in records]
    assert len(keys) > 20 and keys == sorted(keys)


def test_plan_names_the_groups_that_time_slice(tmp_path: Path) -> None:
    """A group's own time-slicing shows in plan.md even when the stack's is off."""
    config = base_config()
    config["mlplatform:gpuNodeGroups"] = [
        {"name": "whole", "instanceTypes": ["g5.2xlarge"], "maxSize": 2},
        {
            "name": "notebooks",
            "instanceTypes": ["g6.xlarge"],
            "maxSize": 2,
            "devicePlugin": {"timeSlicing": {"replicas": 4}},
        },
    ]
    code, out = preview_cli(tmp_path, config)
    assert code == 0
    plan = (out / "plan.md").read_text()
    assert "maxSize; time-slicing: `notebooks` 4 slices per GPU." in plan
    assert "`whole`" not in plan.split("time-slicing:")[1].split("\n")[0]
