"""The alert rules (monitoring/prometheus/taskdb-alerts.yml) under `promtool test rules`: the incident's 0 -> 51
series fires TaskdbClaimableSurge at once, a steady queue of the same size stays quiet, and every alert has a case
where it fires. Debian's prometheus package ships promtool (scripts/setup installs it). Each alert's fix is
doctor's text for the check it names (taskdb.doctor.FIX_*), so the two cannot drift (no promtool needed)."""

from __future__ import annotations

import re
import shutil
import string
import subprocess
from pathlib import Path

import pytest

from taskdb import doctor

RULES_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
RULES = RULES_DIR / "taskdb-alerts.yml"
TESTS = RULES_DIR / "taskdb-alerts_test.yml"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool: apt-get install prometheus (scripts/setup)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def alerts() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE)


@needs_promtool
def test_the_rules_load_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout
    tested = promtool("test", "rules", TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
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


@needs_promtool
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


# The doctor fixes each alert's description repeats after "Fix", per alert that names a doctor check. Doctor's
# texts fill in the database's figures ({name}); an alert cannot, and says <name> there.
ALERT_FIXES = {
    "TaskdbQueuedTaskTooOld": (doctor.CHECK_STALE_QUEUED, (doctor.FIX_STALE_QUEUED,)),
    "TaskdbCleanupLate": (doctor.CHECK_CLEANUP_JOB, (doctor.FIX_CLEANUP_LATE, doctor.FIX_CLEANUP_NOT_INSTALLED)),
    "TaskdbFlaggedTaskQueued": (doctor.CHECK_FLAGGED_QUEUED, (doctor.FIX_FLAGGED_QUEUED,)),
    "TaskdbExporterDown": (doctor.CHECK_CONNECTION, (doctor.FIX_CONNECTION,)),
}


def annotations() -> dict[str, dict[str, str]]:
    """Each alert's description (a folded block: its lines joined by spaces) and doctor_check, read as text: the
    rules file keeps to that layout, and the tests need no YAML library."""
    found: dict[str, dict[str, str]] = {}
    for chunk in re.split(r"^\s+- alert: ", RULES.read_text(), flags=re.MULTILINE)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        description = re.search(r"^(\s+)description: >-\n((?:\1  .*\n)+)", chunk, re.MULTILINE)
        assert description, f"{name}: a folded (>-) description"
        check = re.search(r"^\s+doctor_check: (\w+)$", chunk, re.MULTILINE)
        found[name] = {"description": " ".join(description.group(2).split())}
        if check:
            found[name]["doctor_check"] = check.group(1)
    return found


def as_the_alert_says(fix: str) -> str:
    """Doctor's fix with <name> for each figure it fills in."""
    names = {field for _, field, _, _ in string.Formatter().parse(fix) if field}
    return fix.format(**{name: f"<{name}>" for name in names})


def fix_text(description: str) -> str:
    """What the description says to do: from its "Fix", runs of whitespace as one space."""
    assert "Fix" in description, description
    return " ".join(description[description.index("Fix") :].split())


def test_each_alert_says_what_doctor_says_for_the_check_it_names() -> None:
    found = annotations()
    assert list(found) == alerts()
    assert {name for name, said in found.items() if "doctor_check" in said} == set(ALERT_FIXES)
    for name, (check, fixes) in ALERT_FIXES.items():
        assert found[name]["doctor_check"] == check, name
        said = fix_text(found[name]["description"])
        for fix in fixes:
            assert as_the_alert_says(fix) in said, f"{name}: doctor's fix for {check} drifted from the alert's:\n{fix}"


def test_the_fix_comparison_sees_a_changed_word() -> None:
    """Figures become <name>, and one word changed in doctor's text is no longer found in the alert."""
    assert as_the_alert_says(doctor.FIX_STALE_QUEUED).count("(queued_ttl <queued_ttl>)") == 1
    said = fix_text(annotations()["TaskdbFlaggedTaskQueued"]["description"])
    assert as_the_alert_says(doctor.FIX_FLAGGED_QUEUED.replace("Cancelled", "Failed")) not in said
