"""Schedule the stale-queue cleanup and the purge of its run history with pg_cron (taskdb.cron), where pg_cron
is available, and record what was installed (0006)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskdb import cron
from taskdb.db import execute_script, transaction
from taskdb.steps.base import Facts, Online, Step
from taskdb.steps.objects import grants_if_role, grants_if_role_sql

if TYPE_CHECKING:
    from taskdb.offline import OfflineScript

# The record of the installed jobs (taskdb_cron_jobs), the state function queue_health reads, and their
# grants: sections of the revision's frozen SQL.
RECORD = ("taskdb_cron_jobs", "taskdb_cron_job_state")
MONITOR = "taskdb_monitor"


@dataclass(frozen=True)
class ScheduleCron(Step):
    """TASKDB_CRON=require fails here before any change; the cron database is changed first, in one
    transaction (a failure there changes nothing anywhere); then this database's record; a warning where
    pg_cron is missing (auto)."""

    sql: Mapping[str, str]

    def facts(self) -> Iterator[Facts]:
        yield Facts(
            "schedule the cleanup and purge jobs with pg_cron (where available), record them",
            "none on tasks; in the cron database a transaction-scoped advisory lock",
            False,
        )

    def online(self, run: Online) -> None:
        conn = run.conn
        plan = cron.prepare(conn)
        installation = cron.schedule_jobs(conn, plan)
        with transaction(conn):
            for name in RECORD:
                execute_script(conn, self.sql[name])
            grants_if_role(conn, MONITOR, self.sql["grants"])
            cron.record(conn, installation, run.revision)
        cron.warn_if_missing(plan, installation)

    def offline(self, sql: OfflineScript) -> None:
        """The record and the state function, then what the online upgrade does about pg_cron, decided when the
        script runs (OfflineScript.schedule_cron_jobs): where pg_cron keeps its jobs in this very database,
        create it if absent and schedule and record both jobs; where pg_cron cannot be used, the online warning
        (NOTICE) or, under require, its error; a cron database elsewhere: a NOTICE to run taskdb cron install."""
        mode = cron.cron_mode()
        with sql.transaction():
            for name in RECORD:
                sql.frozen(self.sql[name])
            sql.emit(grants_if_role_sql(MONITOR, self.sql["grants"]))
            if mode == "skip":
                sql.comment("TASKDB_CRON=skip when this script was generated: no pg_cron job is installed.")
            else:
                sql.schedule_cron_jobs(mode)
