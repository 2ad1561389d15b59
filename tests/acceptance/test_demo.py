"""`taskdb demo` (what scripts/demo runs) end to end, as a newcomer would run it."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_shows_the_incident_repaired() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskdb.cli", "demo", "--backend", "local"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    before, after = out.split("== after ==")
    planned = before.split("== taskdb plan ==")[1]
    assert "Pending revisions (6):" in planned
    assert re.search(r"of which the claimable count stops counting\s+54", planned)
    assert re.search(r"queued without user_id and run_type\s+52", before)
    assert re.search(r"queued without user_id and run_type\s+0", after)
    assert re.search(r"queued older than 24 h\s+0", after)
    assert re.search(r"claimable_task_count\('gpu'\)\s+5", after)
    assert "legacy_reason=missing_user_id,missing_run_type, n=55" in after
    assert len(re.findall(r"validated=True", after)) == 7 and "validated=False" not in after
    # the throwaway server's password never shows
    assert re.findall(r"://postgres:([^@]*)@", out) == ["***"]
