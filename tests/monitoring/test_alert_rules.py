"""The alert rules (monitoring/prometheus/taskdb-alerts.yml) under `promtool test rules`: the incident's 0 -> 51
series fires TaskdbClaimableSurge at once, a steady queue of the same size stays quiet, and every alert has a case
where it fires. Debian's prometheus package ships promtool (scripts/setup installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from taskdb import doctor

RULES_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
RULES = RULES_DIR / "taskdb-alerts.yml"
TESTS = RULES_DIR / "taskdb-alerts_test.yml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool: apt-get install prometheus (scripts/setup)")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def alerts() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE)


def test_the_rules_load_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout
    tested = promtool("test", "rules", TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_names_what_doctor_checks() -> None:
    assert alerts() == [
        "TaskdbQueuedTaskTooOld",
        "TaskdbClaimableSurge",
        "TaskdbCleanupLate",
        "TaskdbFlaggedTaskQueued",
        "TaskdbExporterDown",
    ]
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", TESTS.read_text()))
    assert firing == set(alerts())
    checks = {value for name, value in vars(doctor).items() if name.startswith("CHECK_")}
    named = re.findall(r"^\s+doctor_check: (\w+)$", RULES.read_text(), re.MULTILINE)
    assert named and set(named) <= checks


def test_the_surge_tests_would_catch_a_rule_that_misses_the_incident(tmp_path: Path) -> None:
    """The unit tests can fail: with a threshold above the incident's 51 (or a window too long to stay quiet for a
    growing queue) promtool says which case broke."""
    for broken in (
        "min_over_time(taskdb_claimable_tasks[1m]) >= 60",
        "min_over_time(taskdb_claimable_tasks[10m]) >= 40",
    ):
        rules = RULES.read_text().replace("min_over_time(taskdb_claimable_tasks[1m]) >= 40", broken)
        (tmp_path / RULES.name).write_text(rules)
        (tmp_path / TESTS.name).write_text(TESTS.read_text())
        tested = promtool("test", "rules", tmp_path / TESTS.name)
        assert tested.returncode != 0 and "TaskdbClaimableSurge" in tested.stdout + tested.stderr
