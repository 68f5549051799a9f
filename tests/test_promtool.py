"""The alert rules through Prometheus's own `promtool` (Debian's prometheus 2.42,
installed by `make promtool`):

- `promtool check rules --lint-fatal` on the PrometheusRule of every stack, as the
  offline preview renders it (syntax, and no two rules with the same name and labels);
- `promtool test rules` on the unit tests in tests/promtool/: every alert fires on
  the series it is about, with the labels that identify it and its owner, and stays
  quiet otherwise;
- promtool also evaluates dashboard queries (throughput counted once per Job,
  unallocated GPUs) on the same kind of series.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import base_config, run
from tools import preview
from workloads import dashboards, monitoring

ROOT = Path(__file__).resolve().parents[1]
UNIT_TESTS = Path(__file__).parent / "promtool"
STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))

# The stack the unit tests' rules.yaml is rendered from: two teams, three model
# servers of the runtime (two of one team), a vLLM and a Triton server, one GPU
# node group; default thresholds.
PROMTOOL_STACK = base_config(
    teams=[{"name": "vision", "quota": {"gpus": 4}}, {"name": "ranking", "quota": {"gpus": 2}}],
    gpuNodeGroups=[{"name": "a10g", "instanceTypes": ["g5.2xlarge"], "maxSize": 4}],
    runtimeImage={"build": {}},
    workloads=[
        {
            "kind": "inference",
            "name": name,
            "team": team,
            "memory": "2Gi",
            "model": {"uri": f"s3://models/{name}/v1"},
            "latencySloMs": slo,
        }
        for name, team, slo in (
            ("ranker", "ranking", 250),
            ("embedder", "ranking", 100),
            ("detector", "vision", 500),
        )
    ]
    + [
        {
            "kind": "inference",
            "runtime": "vllm",
            "name": "chat",
            "team": "vision",
            "gpus": 1,
            "memory": "32Gi",
            "minReplicas": 1,
            "model": {"uri": "s3://models/chat/v1"},
        },
        {
            "kind": "inference",
            "runtime": "triton",
            "name": "classifier",
            "team": "ranking",
            "memory": "4Gi",
            "model": {"claim": "triton-models"},
            "latencySloMs": 200,
        },
    ],
)


def promtool() -> str:
    """$PROMTOOL, the copy `make promtool` extracts, or one on PATH."""
    for candidate in (
        os.environ.get("PROMTOOL"),
        str(ROOT / ".promtool" / "usr" / "bin" / "promtool"),
        shutil.which("promtool"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("promtool is not installed: run `make promtool` (make test-infra does)")


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def _rule_file(rule: dict[str, Any], path: Path) -> Path:
    """A PrometheusRule's spec is a Prometheus rule file."""
    assert rule["kind"] == "PrometheusRule"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def test_promtool_is_the_pinned_version() -> None:
    out = _promtool("--version")
    assert out.returncode == 0 and "version 2.42.0" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_every_stacks_rules_pass_promtool_lint(stack: str, tmp_path: Path) -> None:
    assert preview.main(["--stack", stack, "--out", str(tmp_path)]) == 0
    manifests = tmp_path / stack / "manifests" / "monitoring"
    rules = _rule_file(
        yaml.safe_load((manifests / "prometheusrule-mlplatform.yaml").read_text()),
        tmp_path / "rules.yaml",
    )
    out = _promtool("check", "rules", "--lint-fatal", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    rule: dict[str, Any] = run(PROMTOOL_STACK).manifest(
        "PrometheusRule", "mlplatform", "monitoring"
    )
    return rule


@pytest.fixture(scope="module")
def workdir(rules: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/promtool/*.yaml beside the rules they test."""
    directory = tmp_path_factory.mktemp("promtool")
    _rule_file(rules, directory / "rules.yaml")
    for test in UNIT_TESTS.glob("*.yaml"):
        shutil.copy(test, directory / test.name)
    return directory


def _unit_tests() -> list[Path]:
    return sorted(UNIT_TESTS.glob("*.yaml"))


@pytest.mark.parametrize("test_file", _unit_tests(), ids=lambda p: p.name)
def test_promtool_unit_tests(workdir: Path, test_file: Path) -> None:
    out = _promtool("test", "rules", test_file.name, cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr


def _alert_tests() -> list[dict[str, Any]]:
    found = []
    for path in _unit_tests():
        for test in yaml.safe_load(path.read_text())["tests"]:
            found += [{**t, "file": path.name} for t in test.get("alert_rule_test", [])]
    return found


def test_every_alert_is_unit_tested_firing_and_quiet(rules: dict[str, Any]) -> None:
    names = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
    assert names == monitoring_alert_names()
    tests = _alert_tests()
    for name in sorted(names):
        mine = [t for t in tests if t["alertname"] == name]
        assert any(t.get("exp_alerts") for t in mine), f"{name}: no test where it fires"
        assert any(not t.get("exp_alerts") for t in mine), f"{name}: no test where it is quiet"
        for t in mine:
            for alert in t.get("exp_alerts") or []:
                labels = alert["exp_labels"]
                # Who owns it, and what it is about: more than severity and platform.
                assert labels.get("team") and len(labels) > 3, (t["file"], name, labels)
                assert alert["exp_annotations"]["runbook_url"] == f"docs/alerts.md#{name.lower()}"


def monitoring_alert_names() -> set[str]:
    from tests.test_monitoring import ALERTS, PRESET_ALERTS

    return ALERTS | PRESET_ALERTS


def test_two_failing_services_raise_two_alerts_with_distinct_labels() -> None:
    """The unit tests include a case where two services of one team fail at once:
    Alertmanager must get two alerts, not one whose summary the other overwrote."""
    cases = [
        t
        for t in _alert_tests()
        if t["alertname"] in ("InferenceErrorRatio", "InferenceLatencyOverSlo")
        and len(t.get("exp_alerts") or []) >= 2
    ]
    assert {t["alertname"] for t in cases} == {"InferenceErrorRatio", "InferenceLatencyOverSlo"}
    for t in cases:
        labels = [tuple(sorted(a["exp_labels"].items())) for a in t["exp_alerts"]]
        assert len(set(labels)) == len(labels)
        assert len({dict(a)["service"] for a in labels}) == len(labels)
        assert len({dict(a)["team"] for a in labels}) == 1  # the same team: distinct services


# -- dashboard queries, evaluated by promtool --------------------------------------


def _panel(dashboard: dashboards.Dashboard, title: str) -> str:
    (panel,) = [p for p in dashboard.panels if p.title == title]
    (target,) = panel.targets
    expr = target.expr
    for variable, value in dashboards.GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


GPU_SERIES = [
    # (labels, utilisation): two GPUs held by vision pods, one by a pod outside the
    # team namespaces, three no pod holds (labelled as each monitor setup leaves them).
    ('gpu="0", node="node-a", namespace="vision", pod="train-0", container="trainer"', 2),
    ('gpu="1", node="node-a", namespace="vision", pod="train-1", container="trainer"', 80),
    ('gpu="2", node="node-a"', 0),
    ('gpu="3", node="node-a", namespace="kube-system", pod="dcgm-exporter-x7k2p"', 0),
    ('gpu="0", node="node-b", namespace="gpu-operator", pod="nvidia-dcgm-exporter-q8w4z"', 0),
    ('gpu="1", node="node-b", namespace="sandbox", pod="notebook-0", container="jupyter"', 1),
]


def test_dashboard_queries_on_promtool(workdir: Path) -> None:
    held = _panel(dashboards.GPU, "GPUs held by namespace")
    unheld = _panel(dashboards.GPU, "Unallocated GPUs by node (capacity no pod uses)")
    samples = _panel(dashboards.TRAINING, "Samples per second by job")
    records = _panel(dashboards.BATCH, "Records per second by job")
    train = 'namespace="vision", job="monitoring/mlplatform-training", container="trainer"'
    batch = 'namespace="vision", job_name="scoring", job="monitoring/mlplatform-batch"'
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"DCGM_FI_DEV_GPU_UTIL{{{labels}}}", "values": f"{util}x10"}
                    for labels, util in GPU_SERIES
                ]
                + [
                    # A 2-node job: each node's local rank 0 exports the job's samples/s.
                    {
                        "series": f'mltrain_samples_per_second{{{train}, job_name="ddp", '
                        f'pod="ddp-{i}-x"}}',
                        "values": "1000x10",
                    }
                    for i in range(2)
                ]
                + [
                    {
                        "series": f'mltrain_samples_per_second{{{train}, job_name="ft", '
                        'pod="ft-0-x"}',
                        "values": "200x10",
                    },
                    # Two shards of one batch job, 60 and 120 records per minute.
                    {
                        "series": f'mlbatch_records_total{{{batch}, shard="0", pod="scoring-0-a"}}',
                        "values": "0+60x10",
                    },
                    {
                        "series": f'mlbatch_records_total{{{batch}, shard="1", pod="scoring-1-b"}}',
                        "values": "0+120x10",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": held,
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{namespace="vision"}', "value": 2},
                            {"labels": '{namespace="sandbox"}', "value": 1},
                        ],
                    },
                    {
                        "expr": unheld,
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{node="node-a"}', "value": 2},
                            {"labels": '{node="node-b"}', "value": 1},
                        ],
                    },
                    {
                        "expr": samples,
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{namespace="vision", job_name="ddp"}', "value": 1000},
                            {"labels": '{namespace="vision", job_name="ft"}', "value": 200},
                        ],
                    },
                    {
                        "expr": records,
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{namespace="vision", job_name="scoring"}', "value": 3}
                        ],
                    },
                ],
            }
        ],
    }
    (workdir / "dashboards.generated.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    out = _promtool("test", "rules", "dashboards.generated.yml", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_alert_rules_module_is_what_the_unit_tests_render(rules: dict[str, Any]) -> None:
    """The unit tests assume the default thresholds: fail here, not in promtool's output."""
    assert monitoring.AlertThresholds().model_dump() == {
        "gpu_idle_minutes": 30,
        "gpu_idle_utilization": 5,
        "gpu_memory_used_ratio": 0.95,
        "quota_used_ratio": 0.9,
        "inference_error_ratio": 0.05,
        "job_failed_minutes": 60,
        "batch_stall_minutes": 15,
        "kv_cache_used_ratio": 0.95,
        "queue_backlog_per_pod": 20,
    }
    assert rules["metadata"]["name"] == "mlplatform"
