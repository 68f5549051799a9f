"""`make diff`: the pure comparison, and real git history in a temporary repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import diff
from tools.offline import ROOT

# -- the comparison ----------------------------------------------------------------


def test_changed_paths_name_the_fields() -> None:
    before = {
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "server", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                        {"name": "sidecar", "image": "s:1"},
                    ]
                }
            },
        },
        "metadata": {"labels": {"team": "a"}},
    }
    after = {
        "spec": {
            "replicas": 3,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "a:2",
                            "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                        },
                    ]
                }
            },
        },
        "metadata": {"labels": {"team": "a", "tier": "gold"}},
    }
    paths = {p: (b, a) for p, b, a in diff.changed_paths(before, after)}
    assert paths == {
        "metadata.labels.tier": (..., "gold"),
        "spec.replicas": (2, 3),
        "spec.template.spec.containers[server].image": ("a:1", "a:2"),
        "spec.template.spec.containers[server].env[Y]": (..., {"name": "Y", "value": "2"}),
        "spec.template.spec.containers[sidecar]": ({"name": "sidecar", "image": "s:1"}, ...),
    }
    assert diff.changed_paths(before, before) == []
    assert diff.changed_paths({"args": ["a", "b"]}, {"args": ["a", "c"]}) == [("args[1]", "b", "c")]


def test_long_values_show_where_they_differ() -> None:
    before = "x" * 100 + "A" + "y" * 100
    after = "x" * 100 + "B" + "y" * 100
    start = diff.first_difference(before, after)
    assert "A" in diff.short(before, start) and "B" in diff.short(after, start)
    assert len(diff.short(before, start)) <= diff.MAX_VALUE + 1
    assert diff.short("[secret]") == "[secret]"


def _render(
    resources: dict[tuple[str, str], dict], capacity: int, findings: list[dict] | None = None
) -> diff.Render:
    return diff.Render(
        ok=True,
        resources=resources,
        findings=findings or [],
        outputs={"gpuCapacity": capacity, "gpuNodeGroups": [{"name": "a10g", "maxGpus": capacity}]},
    )


QUOTA = "kubernetes:core/v1:ResourceQuota"
FINDING = {
    "policy": "gpu-node-group",
    "resource": "NodeGroup/ng",
    "level": "mandatory",
    "message": "too big",
}


def test_compare_reports_capacity_quotas_and_findings() -> None:
    def quota(gpus: int) -> dict:
        return {
            "metadata": {"namespace": "vision"},
            "spec": {"hard": {"requests.nvidia.com/gpu": str(gpus)}},
        }

    before = _render({(QUOTA, "q"): quota(4), ("t", "gone"): {}}, 4, [FINDING])
    after = _render({(QUOTA, "q"): quota(8), ("t", "new"): {"a": 1}}, 8)
    report = diff.compare("dev", "origin/main", before, after)
    assert report.added == [("t", "new")] and report.removed == [("t", "gone")]
    assert report.capacity == [
        ("GPU capacity (total)", 4, 8),
        ("node group `a10g`", 4, 8),
        ("team `vision` GPU quota", 4, 8),
    ]
    assert report.resolved_findings == [FINDING] and report.new_findings == []
    text = diff.markdown(report)
    assert "**1 added, 1 removed, 1 changed** · 0 new policy findings, 1 resolved" in text
    assert "| GPU capacity (total) | 4 | 8 | +4 |" in text
    assert "  - `spec.hard.requests.nvidia.com/gpu`: `4` → `8`" in text
    assert "- resolved `gpu-node-group` on `NodeGroup/ng`" in text


def test_markdown_is_truncated_with_a_notice() -> None:
    resources = {
        ("kubernetes:v1:ConfigMap", f"cm-{i:04d}"): {"data": {"k": "v" * 50}} for i in range(2000)
    }
    report = diff.compare("prod", "main", _render({}, 0), _render(resources, 0))
    text = diff.markdown(report, limit=5000)
    assert len(text) <= 5000
    assert (
        "**Report truncated:**" in text and "run `make diff BASE=main STACK=prod` locally" in text
    )
    full = diff.markdown(report)
    assert len(full) < diff.GITHUB_COMMENT_LIMIT
    assert "more lines left out" in full  # 2000 resources do not fit a comment either


# -- real git history ------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's working tree as a fresh repository with one commit."""
    target = tmp_path_factory.mktemp("repo")
    files = _git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / name)
    _git(target, "init", "-q", "-b", "main")
    _git(target, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A")
    _git(target, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "base")
    return target


def _run_diff(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.diff", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _edit_dev(repo: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    path = repo / "Pulumi.dev.yaml"
    doc = yaml.safe_load(path.read_text())
    edit(doc["config"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_diff_of_a_committed_change(repo: Path) -> None:
    def grow(config: dict) -> None:
        config["mlplatform:gpuNodeGroups"][0]["maxSize"] = 6  # over dev's cap of 4: a new finding
        config["mlplatform:teams"][0]["quota"]["gpus"] = 6
        config["mlplatform:workloads"].append(
            {
                "kind": "training",
                "name": "extra",
                "team": "ml-dev",
                "gpus": 1,
                "cpu": "3",
                "memory": "12Gi",
            }
        )

    _edit_dev(repo, grow)
    _git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qam", "grow dev")
    result = _run_diff(repo, "--base", "HEAD~1", "--stack", "dev", "--out", str(repo / "report.md"))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text == (repo / "report.md").read_text()
    assert text.startswith("### Offline preview diff: `dev` (`HEAD~1` → this change)")
    assert "| GPU capacity (total) | 4 | 6 | +2 |" in text
    assert "| team `ml-dev` GPU quota | 4 | 6 | +2 |" in text
    assert "  - `scalingConfig.maxSize`: `4` → `6`" in text
    assert "- `mlplatform-ml-dev-extra-job` (kubernetes:batch/v1:Job)" in text  # added
    assert (
        "new **mandatory** `gpu-node-group`" in text
        and "exceeds this environment's cap of 4" in text
    )
    # Nothing unrelated shows up as changed: no absolute paths, no random names.
    assert "/tmp" not in text and "mlplatform-diff-" not in text


def test_diff_of_an_uncommitted_change_and_its_revert(repo: Path) -> None:
    original = (repo / "Pulumi.dev.yaml").read_text()
    _edit_dev(repo, lambda c: c["mlplatform:teams"][0]["quota"].update(cpu="48"))
    try:
        result = _run_diff(repo, "--base", "HEAD", "--stack", "dev")
        assert result.returncode == 0, result.stderr
        assert "**0 added, 0 removed, 1 changed**" in result.stdout
        assert "  - `spec.hard.requests.cpu`: `32` → `48`" in result.stdout
    finally:
        (repo / "Pulumi.dev.yaml").write_text(original)
    same = _run_diff(repo, "--base", "HEAD", "--stack", "dev")
    assert "**0 added, 0 removed, 0 changed**" in same.stdout
    assert "No changes to the stack's resources." in same.stdout


def test_bad_ref_and_new_stack(repo: Path) -> None:
    bad = _run_diff(repo, "--base", "no-such-branch", "--stack", "dev")
    assert bad.returncode == 2
    assert "'no-such-branch' is not a commit" in bad.stderr and "Traceback" not in bad.stderr
    shutil.copy(repo / "Pulumi.dev.yaml", repo / "Pulumi.qa.yaml")
    try:
        new = _run_diff(repo, "--base", "HEAD", "--stack", "qa")
        assert new.returncode == 0, new.stderr
        assert "BASE `HEAD` has no Pulumi.qa.yaml: everything shows as added." in new.stdout
        assert "0 removed, 0 changed" in new.stdout
    finally:
        (repo / "Pulumi.qa.yaml").unlink()


def test_a_change_that_does_not_render(repo: Path) -> None:
    original = (repo / "Pulumi.dev.yaml").read_text()
    _edit_dev(repo, lambda c: c["mlplatform:teams"][0].update(name="Bad_Name"))
    try:
        result = _run_diff(repo, "--base", "HEAD", "--stack", "dev")
    finally:
        (repo / "Pulumi.dev.yaml").write_text(original)
    assert result.returncode == 1
    assert "**This change does not render.**" in result.stdout
    assert "mlplatform:teams[0].name" in result.stdout
