"""`taskdb cron status|install|sync|remove`: the pg_cron jobs of revision 0006, by hand.

Parsing and printing only: the work is taskdb.cron's (the same functions the revision uses). Exit codes: 0 done
(also when there was nothing to do), 1 failed, 2 usage / connection / pg_cron not usable for install or sync.
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from taskdb import cron
from taskdb.cli.common import EXAMPLES, add_json_flag, connection, emit

REINSTALL = "`taskdb cron install` installs it again"


def register(sub: argparse._SubParsersAction) -> None:
    cron_cmd = sub.add_parser(
        "cron",
        help="the pg_cron cleanup job: status, install, sync, remove",
        description="taskdb's pg_cron jobs (taskdb_cancel_stale_queued, taskdb_purge_cron_history), in whichever "
        "database cron.database_name names. install, sync and remove act whatever TASKDB_CRON says.",
        epilog="Examples:\n  taskdb cron status\n  taskdb cron install --schedule '*/10 * * * *'\n"
        "  psql -c \"UPDATE task_hygiene_settings SET cleanup_schedule = '0 * * * *'\" && taskdb cron sync\n"
        "  taskdb cron remove --json\n\n"
        "Exit codes: 0 done, 1 failed, 2 usage, connection, or pg_cron not usable (install, sync).",
        formatter_class=EXAMPLES,
    )
    cron_sub = cron_cmd.add_subparsers(dest="cron_command", required=True, metavar="ACTION")

    status = cron_sub.add_parser(
        "status", help="pg_cron readiness, taskdb's jobs: schedule, active, last runs (read-only)"
    )
    add_json_flag(status)
    status.set_defaults(run=run_status)

    install = cron_sub.add_parser(
        "install",
        help="(re)install the jobs as the upgrade does; idempotent",
        description="Schedule taskdb's pg_cron jobs exactly as revision 0006_cron does (creating the extension "
        "where allowed). Nothing changes when they are installed as wanted already.",
    )
    install.add_argument(
        "--schedule",
        metavar="CRON",
        help="set task_hygiene_settings.cleanup_schedule first: five cron fields in UTC (e.g. '15 3 * * *'), "
        "a macro ('@hourly'), or 'N seconds' on pg_cron >= 1.5; checked before anything changes",
    )
    add_json_flag(install)
    install.set_defaults(run=run_install)

    sync = cron_sub.add_parser(
        "sync", help="apply a changed task_hygiene_settings.cleanup_schedule to the installed job (jobid kept)"
    )
    add_json_flag(sync)
    sync.set_defaults(run=run_sync)

    remove = cron_sub.add_parser(
        "remove",
        help="unschedule taskdb's jobs wherever they live and clear taskdb_cron_jobs (as the downgrade); idempotent",
    )
    add_json_flag(remove)
    remove.set_defaults(run=run_remove)


def _actor(action: str) -> str:
    return f"taskdb cron {action} ({getpass.getuser()})"


# -- status -------------------------------------------------------------------------------------------------


def run_status(args: argparse.Namespace, url: str) -> int:
    with connection(url, "taskdb cron") as conn:
        report = cron.status(conn)
    if args.json:
        emit(report, as_json=True)
    else:
        print_status(report)
    return 0


def print_status(report: dict[str, Any]) -> None:
    readiness = report["readiness"]
    state = {True: "installed", False: "NOT installed", None: "recorded, state unknown"}[report["installed"]]
    print(f"database {report['database']}: cleanup job {state}")
    print(
        f"cleanup_schedule: {report['cleanup_schedule']!r} (task_hygiene_settings)"
        + ("" if report["in_sync"] is None else "; the job follows it" if report["in_sync"] else "; the job differs")
    )
    print(_readiness_line(readiness))
    for job in report["jobs"]:
        where = f"in database {job['cron_database']}, runs in {job['run_database']}"
        if job["unreadable"]:
            print(f"job {job['jobname']} (jobid {job['jobid']}) {where}: cron.job not readable ({job['unreadable']})")
            continue
        if not job["in_cron_job"]:
            print(f"job {job['jobname']} {where}: recorded, but missing from cron.job")
            continue
        active = "active" if job["active"] else "INACTIVE"
        print(
            f"job {job['jobname']} (jobid {job['jobid']}) {where}: schedule {job['schedule']!r}, {active}, "
            f"installed {job['installed_at']}"
        )
        if not job["last_runs"]:
            print("  no runs yet")
        for run in job["last_runs"]:
            took = "" if run["duration_ms"] is None else f" in {run['duration_ms']} ms"
            message = " ".join(str(run["return_message"] or "").split())[:120]
            print(f"  {run['start_time']}  {run['status']}{took}: {message}")
    health = report["health"]
    if health:
        print("queue_health: " + ", ".join(f"{key}={value}" for key, value in health.items()))
    for note in report["notes"]:
        print(f"note: {note}")


def _readiness_line(readiness: dict[str, Any]) -> str:
    if not readiness["ready"]:
        return f"pg_cron: not usable: {readiness['problem']}"
    where = "this database" if readiness["same_database"] else f"database {readiness['cron_database']}"
    version = readiness["extension_version"] or f"{readiness['available_version']} (not created yet)"
    return f"pg_cron: ready; version {version} in {where} (cron.database_name)"


# -- install / sync -----------------------------------------------------------------------------------------


def run_install(args: argparse.Namespace, url: str) -> int:
    with connection(url, "taskdb cron") as conn:
        result = cron.install(conn, schedule=args.schedule, actor=_actor("install"))
    message = "installed" if result.changed else "already installed as wanted: nothing changed"
    _print_installation(result, message, as_json=args.json)
    return 0


def run_sync(args: argparse.Namespace, url: str) -> int:
    with connection(url, "taskdb cron") as conn:
        result = cron.sync(conn, actor=_actor("sync"))
    message = (
        f"synced: the job now runs on {result.schedule!r}"
        if result.changed
        else f"already in sync with cleanup_schedule {result.schedule!r}: nothing changed"
    )
    _print_installation(result, message, as_json=args.json)
    return 0


def _print_installation(result: cron.InstallResult, message: str, *, as_json: bool) -> None:
    if as_json:
        emit({**result.as_dict(), "message": message}, as_json=True)
        return
    for job in result.jobs:
        if not job.changed:
            what = "unchanged"
        elif job.was is not None:
            what = f"rescheduled from {job.was!r}"
        else:
            what = "scheduled"
        print(
            f"{job.jobname}: {what} (jobid {job.jobid}, schedule {job.schedule!r}) in database "
            f"{job.cron_database}, runs in {job.run_database}"
        )
    if result.created_extension and result.jobs:
        print(f"pg_cron: created in database {result.jobs[0].cron_database}")
    if result.previous_schedule is not None:
        print(
            f"{cron.SCHEDULE_SETTING}: {result.previous_schedule!r} -> {result.schedule!r} "
            "(taskdb_cron_jobs.installed_at records when)"
        )
    print(f"{result.database}: {message}")


# -- remove -------------------------------------------------------------------------------------------------


def run_remove(args: argparse.Namespace, url: str) -> int:
    with connection(url, "taskdb cron") as conn:
        removal = cron.remove(conn)
    after = (
        f"no taskdb pg_cron job is installed for database {removal.database} now; {REINSTALL}; "
        "meanwhile `taskdb cleanup` cancels stale Queued tasks when something runs it"
    )
    message = f"removed: {after}" if removal.changed else f"nothing to remove: {after}"
    if args.json:
        emit({**removal.as_dict(), "message": message}, as_json=True)
        return 0
    outcomes = {
        "unscheduled": "unscheduled",
        "absent": "was not in cron.job any more",
        "kept": "kept (other databases' cleanup jobs on this server use it)",
    }
    for job in removal.jobs:
        print(
            f"{job['jobname']} (jobid {job['jobid']}) in database {job['cron_database']}: "
            f"{outcomes.get(job['outcome'], job['outcome'])}"
        )
    print(f"taskdb_cron_jobs: {removal.cleared} row(s) cleared")
    print(message)
    return 0
