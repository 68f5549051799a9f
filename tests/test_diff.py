"""`make diff` (tools/diff.py): the pure comparison and Markdown, the preview's
exit codes, and real git history in a temporary clone of this project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import diff
from tools.diff import ABSENT
from tools.offline import ROOT

# -- field paths -----------------------------------------------------------------------


def test_changed_paths_name_the_fields() -> None:
    before = {
        "spec": {
            "replicas": 2,
            "hard": {"requests.nvidia.com/gpu": "4"},
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
            "hard": {"requests.nvidia.com/gpu": "8"},
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
        "metadata": {"labels": {"team": "a", "app.kubernetes.io/name": "x"}},
    }
    assert diff.changed_paths(before, after) == [
        ('metadata.labels["app.kubernetes.io/name"]', ABSENT, "x"),
        ('spec.hard["requests.nvidia.com/gpu"]', "4", "8"),
        ("spec.replicas", 2, 3),
        ("spec.template.spec.containers[server].env[Y]", ABSENT, {"name": "Y", "value": "2"}),
        ("spec.template.spec.containers[server].image", "a:1", "a:2"),
        ("spec.template.spec.containers[sidecar]", {"name": "sidecar", "image": "s:1"}, ABSENT),
    ]
    assert diff.changed_paths(before, before) == []


def test_unnamed_lists_are_aligned_not_shifted() -> None:
    assert diff.changed_paths({"args": ["a", "b"]}, {"args": ["a", "c"]}) == [("args[1]", "b", "c")]
    # One item inserted at the front is one change, not every item shifted.
    assert diff.changed_paths(["a", "b", "c"], ["x", "a", "b", "c"]) == [("[0]", ABSENT, "x")]
    assert diff.changed_paths(["a", "b", "c"], ["a", "c"]) == [("[1]", "b", ABSENT)]
    tolerations = [{"key": "gpu", "effect": "NoSchedule"}, {"key": "spot", "effect": "NoSchedule"}]
    changed = [tolerations[0], {"key": "spot", "effect": "NoExecute"}]
    assert diff.changed_paths(tolerations, changed) == [("[1].effect", "NoSchedule", "NoExecute")]


def test_json_documents_and_multi_line_strings() -> None:
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:Get*"}]}
    wider = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*"}]}
    assert diff.changed_paths(
        {"assumeRolePolicy": json.dumps(policy)}, {"assumeRolePolicy": json.dumps(wider)}
    ) == [("assumeRolePolicy.Statement[0].Action", "s3:Get*", "s3:*")]
    script = "set -e\nfetch model\nserve --port 8080\n"
    assert diff.changed_paths({"s": script}, {"s": script.replace("8080", "9090")}) == [
        ("s (line 3)", "serve --port 8080", "serve --port 9090")
    ]
    assert diff.changed_paths({"s": script}, {"s": script + "echo done\n"}) == [
        ("s (line 4)", ABSENT, "echo done")
    ]


def test_options_and_parent_are_compared_but_not_dependencies() -> None:
    records = [
        {
            "type": "t",
            "name": "n",
            "parent": "p1",
            "inputs": {"a": 1},
            "options": {"dependsOn": ["x"], "protect": False},
        }
    ]
    later = [{**records[0], "parent": "p2", "options": {"dependsOn": ["x", "y"], "protect": True}}]
    before, after = diff._resources(records), diff._resources(later)
    assert diff.resource_changes(before[("t", "n")], after[("t", "n")]) == [
        ("(options).protect", False, True),
        ("(parent)", "p1", "p2"),
    ]


def test_values_are_shortened_where_they_differ_and_stay_markdown() -> None:
    before = "x" * 100 + "A" + "y" * 100
    after = "x" * 100 + "B" + "y" * 100
    start = diff.first_difference(before, after)
    assert "A" in diff.short(before, start) and "B" in diff.short(after, start)
    assert len(diff.short(before, start)) <= diff.MAX_VALUE
    assert diff.short("[secret]") == "[secret]"
    line = diff._change_line("data.script", "a\nb`c", ABSENT)
    assert line == "  - `data.script`: `` a\\nb`c `` → ∅"
    assert diff.short("") == '""'


# -- comparing renders --------------------------------------------------------------

QUOTA = "kubernetes:core/v1:ResourceQuota"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
FINDING = {
    "policy": "gpu-node-group",
    "resource": "NodeGroup/ng",
    "level": "mandatory",
    "message": "maxSize 8 exceeds this environment's cap of 4",
}
ADVISORY = {"policy": "spot", "resource": "NodeGroup/ng", "level": "advisory", "message": "m"}


def _quota(namespace: str, gpus: int) -> dict[str, Any]:
    spec = {"hard": {"requests.nvidia.com/gpu": str(gpus), "requests.cpu": "32"}}
    return {"inputs": {"metadata": {"namespace": namespace}, "spec": spec}}


def _render(
    max_size: int,
    quota: int,
    findings: list[dict[str, Any]] | None = None,
    extra: dict[diff.ResourceKey, dict[str, Any]] | None = None,
) -> diff.Render:
    return diff.Render(
        ok=True,
        resources={
            (NODE_GROUP, "ng"): {"inputs": {"scalingConfig": {"maxSize": max_size}}},
            (QUOTA, "vision-quota"): _quota("team-vision", quota),
            **(extra or {}),
        },
        findings=findings or [],
        outputs={
            "gpuCapacity": max_size,
            "gpuNodeGroups": [{"name": "a10g", "maxGpus": max_size}],
            "teamNamespaces": {"vision": "team-vision"},
        },
    )


def test_compare_reports_resources_capacity_quotas_and_findings() -> None:
    before = _render(4, 4, [ADVISORY], {("t", "gone"): {"inputs": {}}})
    after = _render(8, 6, [FINDING], {("t", "new"): {"inputs": {"a": 1}}})
    report = diff.compare("dev", before, after, "origin/main")
    assert report.added == [("t", "new")] and report.removed == [("t", "gone")]
    assert [key for key, _ in report.changed] == [(NODE_GROUP, "ng"), (QUOTA, "vision-quota")]
    assert report.capacity == [
        ("GPU capacity (total)", 4, 8),
        ("node group `a10g` max GPUs", 4, 8),
        ("GPU quotas, all teams", 4, 6),
        ("team `vision` GPU quota", 4, 6),
    ]
    assert report.new_findings == [FINDING] and report.resolved_findings == [ADVISORY]
    text = diff.markdown([report], "origin/main", commit="0123456789abcdef")
    assert text.startswith(
        "### Offline preview diff: `origin/main` (`01234567`) → this change\n\n"
        "- **dev**: 1 added, 1 removed, 2 changed · GPU capacity 4 → 8 (+4) · "
        "1 new policy finding, 1 resolved\n"
    )
    assert "  - `scalingConfig.maxSize`: `4` → `8`" in text
    assert '  - `spec.hard["requests.nvidia.com/gpu"]`: `4` → `6`' in text
    assert "| team `vision` GPU quota | 4 | 6 | +2 |" in text
    assert (
        "- new **mandatory** `gpu-node-group` on `NodeGroup/ng`: maxSize 8 exceeds this "
        "environment's cap of 4" in text
    )
    assert "- resolved **advisory** `spot` on `NodeGroup/ng`: m" in text
    # Resources, then GPU capacity and quotas, then policy findings.
    order = ["##### Added (1)", "##### Removed (1)", "##### Changed (2)", "##### GPU capacity"]
    positions = [text.index(heading) for heading in [*order, "##### Policy findings"]]
    assert positions == sorted(positions)
    assert "truncated" not in text


def test_unchanged_and_unrenderable_stacks() -> None:
    same = diff.compare("dev", _render(4, 4), _render(4, 4))
    text = diff.markdown([same], "main")
    assert "- **dev**: 0 added, 0 removed, 0 changed · 0 new policy findings, 0 resolved" in text
    assert "No resource changes." in text and "Unchanged: 4 GPUs" in text

    new_stack = diff.compare("qa", diff.Render(ok=True, missing=True), _render(4, 4), "main")
    assert new_stack.added == sorted(_render(4, 4).resources) and not new_stack.removed
    assert "`main` has no `Pulumi.qa.yaml`: every resource shows as added." in new_stack.notes
    assert new_stack.capacity[0] == ("GPU capacity (total)", None, 4)

    broken_base = diff.Render(ok=False, error="the offline preview exited 2:\nerror: bad")
    report = diff.compare("dev", broken_base, _render(4, 4), "main")
    assert report.notes[0].startswith("**`main` does not render**, so every resource shows as")
    assert "`the offline preview exited 2: error: bad`" in report.notes[0]

    broken_head = diff.compare("dev", _render(4, 4), diff.Render(ok=False, error="error: ```x"))
    text = diff.markdown([broken_head], "main")
    assert "- **dev**: **the change does not render**" in text
    assert "~~~\nerror: ```x\n~~~" in text

    with pytest.raises(diff.DiffError, match="no stack 'nope'"):
        missing = diff.Render(ok=True, missing=True)
        diff.compare("nope", missing, missing)


def _many(n: int, prefix: str = "cm") -> dict[diff.ResourceKey, dict[str, Any]]:
    return {
        ("kubernetes:core/v1:ConfigMap", f"{prefix}-{i:04d}"): {"inputs": {"data": {"k": "v" * i}}}
        for i in range(n)
    }


def test_truncation_keeps_findings_and_capacity_and_says_what_was_left_out() -> None:
    before = _render(4, 4, [], {k: {"inputs": {"data": {"k": "old"}}} for k in _many(300)})
    after = _render(8, 4, [FINDING], _many(300))
    report = diff.compare("prod", before, after, "main")
    assert len(report.changed) == 301
    text = diff.markdown([report], "main", limit=5000)
    assert len(text) <= 5000
    assert "| GPU capacity (total) | 4 | 8 | +4 |" in text and "new **mandatory**" in text
    shown = [line for line in _section(text, "Changed") if not line.startswith("- …")]
    assert shown[0] == f"- `ng` (`{NODE_GROUP}`)" and 1 < len(shown) < 301
    left = 301 - len(shown)
    assert f"- … {left} more left out (see the notice at the end)" in text
    assert text.rstrip().endswith(
        f"comment limit: {left} resources ({left} changed fields) of `prod` left "
        "out. The full report: Run `make diff BASE=main STACK=prod` locally."
    )
    full = diff.markdown([report], "main", limit=None)
    assert len(re.findall(r"^- `cm-\d{4}`", full, re.MULTILINE)) == 300
    assert "truncated" not in full
    hinted = diff.markdown([report], "main", limit=5000, full_report="the artifacts of [run](u)")
    assert "The full report: the artifacts of [run](u), or run `make diff" in hinted


def test_the_limit_is_shared_small_stacks_stay_whole() -> None:
    small = diff.compare("dev", _render(4, 4), _render(6, 4))
    big = diff.compare("prod", _render(4, 4), _render(4, 4, [], _many(2000)))
    text = diff.markdown([small, big], "main", limit=20_000)
    assert len(text) <= 20_000
    assert "  - `scalingConfig.maxSize`: `4` → `6`" in text  # dev: whole
    assert "of `prod` left out" in text and "of `dev`" not in text
    assert "`make diff BASE=main STACK=prod` locally" in text
    # A resource with very many changed fields shows the first MAX_FIELDS of them.
    wide = {("t", "wide"): {"inputs": {f"f{i:03d}": i for i in range(100)}}}
    grown = {("t", "wide"): {"inputs": {f"f{i:03d}": i + 1 for i in range(100)}}}
    report = diff.compare("dev", _render(4, 4, [], wide), _render(4, 4, [], grown))
    assert f"  - … {100 - diff.MAX_FIELDS} more changed fields" in diff.markdown([report], "m")
    assert "more changed fields" not in diff.markdown([report], "m", limit=None)


# -- the preview's exit codes (a stub preview in a scratch tree) ---------------------

STUB = """
import json, pathlib, sys
args = sys.argv[1:]
stack = args[args.index("--stack") + 1]
out = pathlib.Path(args[args.index("--out") + 1]) / stack
spec = json.loads(pathlib.Path("stub.json").read_text())
if spec["write"]:
    out.mkdir(parents=True)
    (out / "resources.json").write_text(json.dumps(
        [{"type": "t", "name": "n", "parent": None, "inputs": {"a": 1}, "options": {}}]))
    (out / "outputs.json").write_text(json.dumps({"gpuCapacity": 2}))
    (out / "policy.json").write_text("[]")
print(spec["stderr"], file=sys.stderr)
sys.exit(spec["exit"])
"""


@pytest.mark.parametrize(
    ("code", "write", "ok", "schema"),
    [
        (0, True, True, False),
        (1, True, True, False),
        (3, True, True, True),
        (2, False, False, False),
    ],
)
def test_render_reads_what_the_preview_wrote(
    tmp_path: Path, code: int, write: bool, ok: bool, schema: bool
) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("")
    (tmp_path / "tools" / "preview.py").write_text(STUB)
    (tmp_path / "Pulumi.dev.yaml").write_text("config: {}\n")
    stderr = "note\nerror: manifests/x.yaml: spec: bad"
    (tmp_path / "stub.json").write_text(
        json.dumps({"exit": code, "write": write, "stderr": stderr})
    )
    result = diff.render(tmp_path, "dev", tmp_path / "out")
    assert result.ok is ok
    if ok:
        assert result.resources == {("t", "n"): {"inputs": {"a": 1}, "options": {}, "parent": None}}
        assert result.schema_errors == ("error: manifests/x.yaml: spec: bad" if schema else "")
    else:
        assert result.error == f"the offline preview exited {code}:\n{stderr}"
    assert diff.render(tmp_path, "qa", tmp_path / "out2").missing
    (tmp_path / "tools" / "preview.py").unlink()
    assert "no offline preview" in diff.render(tmp_path, "dev", tmp_path / "out3").error


# -- real git history ----------------------------------------------------------------------

GIT_USER = ("-c", "user.email=test@example.com", "-c", "user.name=test")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *GIT_USER, *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone (so `origin/main` exists) of this project's files with one commit on
    top: dev's GPU group grows past its cap, its team quota grows, a training
    workload is added and the ranker's model changes."""
    upstream = tmp_path_factory.mktemp("upstream")
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (upstream / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, upstream / name)
    _git(upstream, "init", "-q", "-b", "main")
    _git(upstream, "add", "-A")
    _git(upstream, "commit", "-qm", "base")
    work = tmp_path_factory.mktemp("work")
    subprocess.run(["git", "clone", "-q", str(upstream), str(work)], check=True)

    def grow(config: dict[str, Any]) -> None:
        config["mlplatform:gpuNodeGroups"][0]["maxSize"] = 6  # dev's cap is 4
        config["mlplatform:teams"][0]["quota"]["gpus"] = 6
        ranker = next(w for w in config["mlplatform:workloads"] if w["name"] == "ranker")
        ranker["model"]["uri"] = "s3://mlplatform-dev-models/ranker/v4"
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

    _edit_dev(work, grow)
    _git(work, "commit", "-qam", "grow dev")
    return work


def _edit_dev(repo: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    path = repo / "Pulumi.dev.yaml"
    doc = yaml.safe_load(path.read_text())
    edit(doc["config"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _clean_env() -> dict[str, str]:
    """No GitHub Actions run to link to, even when the tests run in one."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}


def _run_diff(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.diff", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=_clean_env(),
    )


def _section(text: str, heading: str) -> list[str]:
    """The bullet lines under one `##### heading (n)` of the report."""
    block = text.split(f"##### {heading}", 1)[1].split("\n#####", 1)[0]
    return [line for line in block.splitlines() if line.startswith("- ")]


def test_committed_change_against_origin(work: Path) -> None:
    result = _run_diff(
        work,
        *("--base", "origin/main", "--stack", "dev"),
        *("--out", str(work / "capped.md"), "--full-out", str(work / "full.md")),
        *("--limit", "2500"),
    )
    assert result.returncode == 0, result.stderr
    capped, full = (work / "capped.md").read_text(), (work / "full.md").read_text()
    assert result.stdout == capped
    base = _git(work, "rev-parse", "--short=8", "origin/main").strip()
    assert full.startswith(
        f"### Offline preview diff: `origin/main` (`{base}`) → this change\n\n"
        "- **dev**: 4 added, 0 removed, 4 changed · GPU capacity 4 → 6 (+2) · "
        "1 new policy finding, 0 resolved\n"
    )
    assert _section(full, "Added") == [
        "- `mlplatform-ml-dev-extra-job` (`kubernetes:batch/v1:Job`)",
        "- `mlplatform-ml-dev-extra-checkpoints` (`kubernetes:core/v1:PersistentVolumeClaim`)",
        "- `mlplatform-ml-dev-extra-sa` (`kubernetes:core/v1:ServiceAccount`)",
        "- `mlplatform-ml-dev-extra` (`mlplatform:workloads:TrainingJob`)",
    ]
    assert _section(full, "Changed") == [
        "- `mlplatform-ml-dev-ranker-deployment` (`kubernetes:apps/v1:Deployment`)",
        "- `mlplatform-team-ml-dev-quota` (`kubernetes:core/v1:ResourceQuota`)",
        # dev runs Karpenter: maxSize is the NodePool's GPU limit.
        "- `mlplatform-karpenter-nodepool-l4-spot` (`kubernetes:karpenter.sh/v1:NodePool`)",
        # The alert on a group at its maxSize follows the group's size.
        "- `mlplatform-monitoring-rules` (`kubernetes:monitoring.coreos.com/v1:PrometheusRule`)",
    ]
    for line in (
        '  - `spec.limits["nvidia.com/gpu"]`: `4` → `6`',
        '  - `spec.hard["requests.nvidia.com/gpu"]`: `4` → `6`',
        "  - `spec.template.spec.initContainers[fetch-model].args[0]`: "
        "`s3://mlplatform-dev-models/ranker/v3` → `s3://mlplatform-dev-models/ranker/v4`",
        "| GPU capacity (total) | 4 | 6 | +2 |",
        "| node group `l4-spot` max GPUs | 4 | 6 | +2 |",
        "| team `ml-dev` GPU quota | 4 | 6 | +2 |",
        "- new **mandatory** `gpu-node-pool` on `NodePool/l4-spot`: "
        "GPU limit 6 exceeds this environment's cap of 4 nodes x 1 GPUs",
    ):
        assert line in full
    assert "truncated" not in full and "/tmp" not in full
    # The same report capped at 2,500 characters: capacity and findings stay.
    assert len(capped) <= 2500
    assert "| team `ml-dev` GPU quota | 4 | 6 | +2 |" in capped and "new **mandatory**" in capped
    assert re.search(
        r"\*\*Report truncated\*\* to stay under GitHub's 65,536-character comment limit: "
        r"\d+ resources? \(\d+ changed fields?\) of `dev` left out\. The full report: Run "
        r"`make diff BASE=origin/main STACK=dev` locally\.\n\Z",
        capped,
    )


def test_uncommitted_change_removed_workload_and_a_new_stack(work: Path) -> None:
    original = (work / "Pulumi.dev.yaml").read_text()

    def shrink(config: dict[str, Any]) -> None:
        config["mlplatform:teams"][0]["quota"]["cpu"] = "48"
        workloads = config["mlplatform:workloads"]
        workloads[:] = [w for w in workloads if w["name"] != "ranker-cpu"]

    _edit_dev(work, shrink)
    shutil.copy(work / "Pulumi.dev.yaml", work / "Pulumi.qa.yaml")
    try:
        result = _run_diff(work, "--base", "HEAD", "--stack", "dev", "qa")
    finally:
        (work / "Pulumi.dev.yaml").write_text(original)
        (work / "Pulumi.qa.yaml").unlink()
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.count("- **dev**: 0 added, 7 removed, ") == 1
    assert _section(text, "Removed") == [
        "- `mlplatform-ml-dev-ranker-cpu-deployment` (`kubernetes:apps/v1:Deployment`)",
        "- `mlplatform-ml-dev-ranker-cpu-hpa` "
        "(`kubernetes:autoscaling/v2:HorizontalPodAutoscaler`)",
        "- `mlplatform-ml-dev-ranker-cpu-service` (`kubernetes:core/v1:Service`)",
        "- `mlplatform-ml-dev-ranker-cpu-sa` (`kubernetes:core/v1:ServiceAccount`)",
        "- `mlplatform-ml-dev-ranker-cpu-netpol-ranker-cpu-ingress` "
        "(`kubernetes:networking.k8s.io/v1:NetworkPolicy`)",
        "- `mlplatform-ml-dev-ranker-cpu-pdb` (`kubernetes:policy/v1:PodDisruptionBudget`)",
        "- `mlplatform-ml-dev-ranker-cpu` (`mlplatform:workloads:InferenceService`)",
    ]
    assert '  - `spec.hard["requests.cpu"]`: `32` → `48`' in text
    dev, qa = text.split("#### `dev`", 1)[1].split("#### `qa`", 1)
    assert "| team `ml-dev` GPU quota |" not in dev  # the GPU quota did not change
    assert "> `HEAD` has no `Pulumi.qa.yaml`: every resource shows as added." in qa
    assert "| GPU capacity (total) | - | 6 | new |" in qa
    assert re.search(r"- \*\*qa\*\*: \d{2,} added, 0 removed, 0 changed", text)


def test_bad_base_and_unknown_stack_give_one_message(work: Path) -> None:
    bad = _run_diff(work, "--base", "no-such-branch", "--stack", "dev", "--out", "bad.md")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines()[-1] == (
        f"error: BASE 'no-such-branch' is not a commit in {work} "
        "(a typo, or not fetched yet: git fetch origin)"
    )
    assert "**No report:**" in (work / "bad.md").read_text()
    (work / "bad.md").unlink()
    unknown = _run_diff(work, "--base", "HEAD", "--stack", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[-1] == (
        "error: no stack 'nope': Pulumi.nope.yaml exists neither at BASE nor here"
    )


def test_a_change_that_does_not_render(work: Path) -> None:
    original = (work / "Pulumi.dev.yaml").read_text()
    _edit_dev(work, lambda c: c["mlplatform:teams"][0].update(name="Bad_Name"))
    try:
        result = _run_diff(work, "--base", "HEAD", "--stack", "dev")
    finally:
        (work / "Pulumi.dev.yaml").write_text(original)
    assert result.returncode == 1
    assert "- **dev**: **the change does not render**" in result.stdout
    assert "**This change does not render** (`make preview STACK=dev`):" in result.stdout
    assert "mlplatform:teams[0].name" in result.stdout
    assert result.stderr.splitlines()[-1] == "error: the change does not render for dev"
    assert "Traceback" not in result.stdout + result.stderr


def _workflow_step(work: Path, tmp_path: Path, base_ref: str) -> subprocess.CompletedProcess[str]:
    """preview.yml's offline-diff script, run as GitHub runs it, in the clone."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "preview.yml").read_text())
    steps = workflow["jobs"]["offline-diff"]["steps"]
    step = next(s for s in steps if s.get("name") == "Offline diff of every stack")
    script = tmp_path / "step.sh"
    script.write_text(step["run"])
    venv = work / ".venv"
    if not venv.exists():
        venv.symlink_to(ROOT / ".venv")
    for name in ("diff.md", "diff-full.md"):
        (work / name).unlink(missing_ok=True)
    env = {
        **_clean_env(),
        "BASE_REF": base_ref,
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
    }
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_the_pull_request_workflow_step(work: Path, tmp_path: Path) -> None:
    result = _workflow_step(work, tmp_path, "main")
    assert result.returncode == 0, result.stderr
    comment = (work / "diff.md").read_text()
    assert len(comment) <= diff.DEFAULT_LIMIT < diff.GITHUB_COMMENT_LIMIT
    lines = comment.splitlines()
    assert lines[2].startswith("- **dev**: 4 added, 0 removed, 4 changed")
    assert lines[3:5] == [
        "- **staging**: 0 added, 0 removed, 0 changed · 0 new policy findings, 0 resolved",
        "- **prod**: 0 added, 0 removed, 0 changed · 0 new policy findings, 0 resolved",
    ]
    assert [line for line in lines if line.startswith("#### ")] == [
        "#### `dev`",
        "#### `staging`",
        "#### `prod`",
    ]
    assert (tmp_path / "summary.md").read_text() == (work / "diff-full.md").read_text()


def test_the_pull_request_workflow_step_without_a_base(work: Path, tmp_path: Path) -> None:
    result = _workflow_step(work, tmp_path, "no-such-branch")
    assert result.returncode == 2
    comment = (work / "diff.md").read_text()
    assert comment.startswith("### Offline preview diff: dev, staging, prod\n\n**No report:** ")
    assert "BASE 'origin/no-such-branch' is not a commit" in comment
    assert (tmp_path / "summary.md").read_text() == comment
