"""pg_cron: is it there, which jobs taskdb schedules, and installing or removing them.

Two jobs, both named by taskdb (pg_cron's ``cron.job.jobname``):

- ``taskdb_cancel_stale_queued`` runs ``taskdb_cancel_stale_queued_all`` in the *target* database on
  ``task_hygiene_settings.cleanup_schedule`` (cron syntax, UTC);
- ``taskdb_purge_cron_history`` runs in the *cron* database and deletes ``cron.job_run_details`` rows of
  taskdb's jobs (and only those) older than 14 days.

pg_cron keeps its jobs in one database per server (``cron.database_name``). When that is the target
database the cleanup is scheduled with ``cron.schedule``; otherwise taskdb connects to the cron database with
the same URL (credentials, driver) and uses ``cron.schedule_in_database`` (pg_cron >= 1.4). What was installed
is recorded in the target database's ``taskdb_cron_jobs``, so that ``queue_health`` can say so even when
``cron.job`` lives elsewhere, and so that a downgrade knows where to look.

``TASKDB_CRON``: ``auto`` (default) installs where pg_cron can be used and otherwise upgrades without the job,
with one warning; ``require`` fails before changing anything, saying how to enable pg_cron; ``skip`` never
installs. Revision 0006 composes :func:`prepare`, :func:`schedule_jobs`, :func:`record`,
:func:`warn_if_missing` and :func:`unschedule_jobs`; ``taskdb plan`` prints :class:`CronReadiness`;
``taskdb cron install|sync|remove|status`` are :func:`install`, :func:`sync`, :func:`remove`, :func:`status`
(they ask for pg_cron explicitly: ``require`` whatever ``TASKDB_CRON`` says).

One module per concern; this package re-exports what callers use:

- :mod:`taskdb.cron.config`: TASKDB_CRON, job names and limits, the cleanup command, errors, the cron
  database's connection, cron.job and taskdb_cron_jobs lookups;
- :mod:`taskdb.cron.readiness`: readiness, and the texts saying what is wrong and how to fix it;
- :mod:`taskdb.cron.scheduling`: scheduling here or in another database, and the record;
- :mod:`taskdb.cron.purge`: the run-history purge job;
- :mod:`taskdb.cron.removal`: unscheduling (downgrade, ``taskdb cron remove``);
- :mod:`taskdb.cron.reporting`: ``taskdb cron status``.

The statements the offline script shares with this package are in ``sql/cron.sql``; the schedule syntax is
:mod:`taskdb.cron_schedule` (shared with doctor).
"""

from __future__ import annotations

from taskdb.cron.config import (
    APPLICATION_NAME,
    CLEANUP_JOB,
    CLEANUP_JOBS_SQL,
    CRON_REVISION,
    ENABLE_PG_CRON,
    MODE_ENV,
    MODES,
    NAMES_LOCK_KEY,
    PURGE_JOB,
    RECORD_TABLE,
    SCHEDULE_IN_DATABASE,
    SCHEDULE_SETTING,
    SETTINGS_TABLE,
    CronJobConfig,
    CronJobConflict,
    CronNotInstallable,
    CronNotUpgraded,
    CronUnavailable,
    cleanup_command,
    cron_connection,
    cron_mode,
    cron_sql,
    extension_owner_name,
    qualified_name,
    queue_schema,
    recorded_jobs,
)
from taskdb.cron.purge import HISTORY_KEPT, PURGE_COMMAND, PURGE_SCHEDULE, purge_job
from taskdb.cron.readiness import CronReadiness, detect, how_to_enable, parse_version
from taskdb.cron.removal import Removal, remove, unschedule_jobs, unscheduling_sql
from taskdb.cron.reporting import LAST_RUNS, status
from taskdb.cron.scheduling import (
    CronNotInstalled,
    CronPlan,
    Installation,
    InstalledJob,
    InstallResult,
    choose_name,
    install,
    prepare,
    record,
    schedule_jobs,
    stored_schedule,
    sync,
    warn_if_missing,
)
from taskdb.cron_schedule import SECONDS_SINCE

__all__ = [
    "APPLICATION_NAME",
    "CLEANUP_JOB",
    "CLEANUP_JOBS_SQL",
    "CRON_REVISION",
    "ENABLE_PG_CRON",
    "HISTORY_KEPT",
    "LAST_RUNS",
    "MODES",
    "MODE_ENV",
    "NAMES_LOCK_KEY",
    "PURGE_COMMAND",
    "PURGE_JOB",
    "PURGE_SCHEDULE",
    "RECORD_TABLE",
    "SCHEDULE_IN_DATABASE",
    "SCHEDULE_SETTING",
    "SECONDS_SINCE",
    "SETTINGS_TABLE",
    "CronJobConfig",
    "CronJobConflict",
    "CronNotInstallable",
    "CronNotInstalled",
    "CronNotUpgraded",
    "CronPlan",
    "CronReadiness",
    "CronUnavailable",
    "InstallResult",
    "Installation",
    "InstalledJob",
    "Removal",
    "choose_name",
    "cleanup_command",
    "cron_connection",
    "cron_mode",
    "cron_sql",
    "detect",
    "extension_owner_name",
    "how_to_enable",
    "install",
    "parse_version",
    "prepare",
    "purge_job",
    "qualified_name",
    "queue_schema",
    "record",
    "recorded_jobs",
    "remove",
    "schedule_jobs",
    "status",
    "stored_schedule",
    "sync",
    "unschedule_jobs",
    "unscheduling_sql",
    "warn_if_missing",
]
