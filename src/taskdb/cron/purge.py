"""The run-history purge job, ``taskdb_purge_cron_history``: one per cron database, shared by every taskdb
database whose cleanup job lives there. It keeps 14 days of ``cron.job_run_details`` for taskdb's jobs and
touches nobody else's history. Scheduled with the cleanup job (:mod:`taskdb.cron.scheduling`), unscheduled with
the server's last cleanup job (:mod:`taskdb.cron.removal`)."""

from __future__ import annotations

from taskdb.cron.config import CLEANUP_JOB, PURGE_JOB, CronJobConfig, quote_literal

PURGE_SCHEDULE = "45 3 * * *"  # daily, UTC, half an hour after the default cleanup
HISTORY_KEPT = "14 days"


def _name_patterns() -> str:
    plain = ", ".join(quote_literal(name) for name in (CLEANUP_JOB, PURGE_JOB))
    qualified = " OR ".join(
        f"j.jobname LIKE {quote_literal(name.replace('_', chr(92) + '_') + ':%')}" for name in (CLEANUP_JOB, PURGE_JOB)
    )
    return f"(j.jobname IN ({plain}) OR {qualified})"


# Deletes history of taskdb's jobs only (found by name in cron.job), older than HISTORY_KEPT by start_time,
# so failed runs without end_time go too. A run that never started has no start_time: it goes once a run
# with a larger runid (runids come from a sequence) started before the cutoff.
PURGE_COMMAND = (
    "DELETE FROM cron.job_run_details d USING cron.job j "
    f"WHERE j.jobid = d.jobid AND {_name_patterns()} "
    f"AND (d.start_time < now() - interval '{HISTORY_KEPT}' "
    "OR (d.start_time IS NULL AND d.runid < (SELECT max(r.runid) FROM cron.job_run_details r "
    f"WHERE r.start_time < now() - interval '{HISTORY_KEPT}')))"
)


def purge_job(cron_database: str, jobname: str = PURGE_JOB) -> CronJobConfig:
    return CronJobConfig(jobname, PURGE_SCHEDULE, PURGE_COMMAND, cron_database)
