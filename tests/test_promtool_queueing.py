"""The Kueue alert through promtool, like the platform's other alerts
(tests/test_promtool.py): lint, and unit tests that it fires for the stuck
team's queue with the labels that route it to that team, and stays quiet for
queues that admit work or have nothing pending."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.test_promtool import _promtool
from workloads import queue_monitoring

UNIT_TESTS = Path(__file__).parent / "promtool" / "queueing"


def _rules(directory: Path) -> Path:
    path = directory / "queueing-rules.yaml"
    group = queue_monitoring.alert_group(30)
    path.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    return path


def test_queueing_rules_pass_promtool_lint(tmp_path: Path) -> None:
    out = _promtool("check", "rules", "--lint-fatal", str(_rules(tmp_path)))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_queueing_alert_unit_tests(tmp_path: Path) -> None:
    _rules(tmp_path)
    tests = sorted(UNIT_TESTS.glob("*.yaml"))
    assert tests
    for test in tests:
        shutil.copy(test, tmp_path / test.name)
        out = _promtool("test", "rules", test.name, cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_alert_is_tested_firing_and_quiet_with_its_team() -> None:
    cases = [
        case
        for test in sorted(UNIT_TESTS.glob("*.yaml"))
        for t in yaml.safe_load(test.read_text())["tests"]
        for case in t["alert_rule_test"]
    ]
    mine = [c for c in cases if c["alertname"] == queue_monitoring.ALERT]
    assert any(c["exp_alerts"] for c in mine) and any(not c["exp_alerts"] for c in mine)
    for case in mine:
        for alert in case["exp_alerts"]:
            assert alert["exp_labels"]["team"] == alert["exp_labels"]["cluster_queue"]
