"""Failpoints: named places where the fault tests kill the upgrade process (tests/faults/test_crash_resume.py).

A no-op unless the environment variable ``TASKDB_FAILPOINT`` is set. ``TASKDB_FAILPOINT=name`` kills the
process with SIGKILL (no cleanup, no ROLLBACK sent: exactly what a deploy timeout or the OOM killer does)
the first time :func:`failpoint` is called with that name; ``name:N`` kills it the N-th time.

Names say where they are: ``<area>.<moment>``, e.g. ``backfill.after_batch``. Every name used in the code
must be exercised by the crash tests (a test greps for them).
"""

from __future__ import annotations

import os
import signal

ENV = "TASKDB_FAILPOINT"

_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """SIGKILL this process if ``TASKDB_FAILPOINT`` names this point (and this is the N-th hit)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    target, _, count = wanted.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == (int(count) if count else 1):
        os.kill(os.getpid(), signal.SIGKILL)
