"""What one scrape reports: one read-only transaction, its figures as Prometheus metric families.

:class:`Scraper` keeps one AUTOCOMMIT connection (pinned to the queue's schema, taskdb.target) between scrapes and
reads :data:`METRICS`' figures with the one query of ``collector.sql``, inside ``BEGIN READ ONLY`` with
``SET LOCAL`` lock and statement timeouts: a scrape never queues behind an upgrade's DDL for long, and nothing is left
on the session (it works through a transaction pooler). A failed read drops the connection (the next scrape
connects again) and raises.

:class:`TaskdbCollector` turns a read into metric families for ``prometheus_client``: every metric, always (a
figure with no rows is 0), plus ``taskdb_up 1``; a failed read answers ``taskdb_up 0`` and
``taskdb_scrape_duration_seconds`` only (no stale or invented figures), and logs the error once (password redacted)
until a read succeeds again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from taskdb import cron_schedule, target
from taskdb.config import redact
from taskdb.db import read_only_transaction, rows, sqlstate
from taskdb.doctor import late_after
from taskdb.sql import beside

log = logging.getLogger(__name__)

SQL = beside(__file__)

# How long one scrape may wait for a lock and run (SET LOCAL): below Prometheus' default scrape_timeout (10 s).
DEFAULT_TIMEOUT_SECONDS = 5.0

# The run_type label's values: the run types tasks_healthy_has_owner_and_run_type allows and claimable_task_count
# takes ('gpu' is only its alias of 'cloud'). Both are always reported, 0 when no row has them.
RUN_TYPES = ("cloud", "local")

# The columns of tasks a scrape reads: the Queued rows per run type and the flagged ones among them are counted
# from tasks itself (queue_health has neither). Revision 0008_monitor_grants grants taskdb_monitor SELECT on
# them, so that membership of taskdb_monitor is all an exporter's login role needs.
TASKS_COLUMNS = ("status", "run_type", "legacy_reason")
MONITOR_GRANTS_REVISION = "0008_monitor_grants"


@dataclass(frozen=True)
class Spec:
    """One metric: its exposed name, type, help text, and the figure it reports (``{run_type}`` per label)."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    figure: str
    labels: tuple[str, ...] = ()


# The public contract (README, "Monitoring"): names in Prometheus' conventions, base units, _total for counters.
METRICS = (
    Spec("taskdb_up", "gauge", "1 when this scrape read the database, 0 when it could not (the error is logged)", "up"),
    Spec(
        "taskdb_scrape_duration_seconds",
        "gauge",
        "Seconds this scrape spent reading the database (connecting included)",
        "scrape_duration_seconds",
    ),
    Spec("taskdb_queued_tasks", "gauge", "Tasks with status Queued, per run type", "queued_{run_type}", ("run_type",)),
    Spec(
        "taskdb_ready_tasks",
        "gauge",
        "Queued tasks ready to run (taskdb_ready_tasks: not flagged, younger than queued_ttl, dependency Complete, "
        "user with credits), per run type, before the per-user concurrency limit",
        "ready_{run_type}",
        ("run_type",),
    ),
    Spec(
        "taskdb_claimable_tasks",
        "gauge",
        "claimable_task_count(run_type): the tasks workers could claim now, the figure the autoscaler scales on",
        "claimable_{run_type}",
        ("run_type",),
    ),
    Spec(
        "taskdb_oldest_queued_task_age_seconds",
        "gauge",
        "Age of the oldest Queued task (0 when none is Queued; +Inf for a created_at of -infinity)",
        "oldest_queued_age_seconds",
    ),
    Spec(
        "taskdb_stale_queued_tasks",
        "gauge",
        "Queued tasks older than stale_after (the view stale_queued_tasks)",
        "stale_count",
    ),
    Spec(
        "taskdb_stale_after_seconds",
        "gauge",
        "task_hygiene_settings.stale_after: how old a Queued task may get before it counts as stale",
        "stale_after_seconds",
    ),
    Spec("taskdb_flagged_tasks", "gauge", "Tasks flagged by taskdb (legacy_reason set), any status", "flagged_count"),
    Spec(
        "taskdb_flagged_queued_tasks",
        "gauge",
        "Flagged tasks that are Queued (tasks_flagged_not_queued forbids them; nothing will ever run them)",
        "flagged_queued",
    ),
    Spec(
        "taskdb_cleanup_last_success_timestamp_seconds",
        "gauge",
        "When a cleanup run (pg_cron job or taskdb cleanup) last finished, Unix time (0: never)",
        "cleanup_last_success_timestamp",
    ),
    Spec(
        "taskdb_cleanup_runs_total",
        "counter",
        "Finished cleanup runs (task_hygiene_runs rows; one per batch)",
        "cleanup_runs",
    ),
    Spec(
        "taskdb_cleanup_cancelled_tasks_total",
        "counter",
        "Queued tasks the cleanup cancelled (sum of task_hygiene_runs.cancelled)",
        "cleanup_cancelled",
    ),
    Spec(
        "taskdb_cleanup_late_after_seconds",
        "gauge",
        "How long without a successful cleanup makes it late: twice the longest gap of its schedule, at least "
        "60 s, as taskdb doctor judges (NaN when the schedule is not understood)",
        "cleanup_late_after_seconds",
    ),
    Spec(
        "taskdb_cron_job_installed",
        "gauge",
        "1 when the cleanup's pg_cron job is installed (taskdb_cron_job_state)",
        "cron_job_installed",
    ),
    Spec(
        "taskdb_cron_job_installed_timestamp_seconds",
        "gauge",
        "When the cleanup's pg_cron job was last (re)installed, Unix time (taskdb_cron_jobs; 0: no job recorded)",
        "cron_job_installed_timestamp",
    ),
    Spec(
        "taskdb_cron_job_active",
        "gauge",
        "1 when the cleanup's pg_cron job is installed and active, 0 when not; NaN when the job lives in another "
        "database (cron.database_name), whose cron.job this database cannot read",
        "cron_job_active",
    ),
)


def cleanup_late_after(schedule: str) -> float:
    """Seconds without a successful run after which the cleanup on ``schedule`` is late (doctor's rule,
    :func:`taskdb.doctor.late_after`); NaN when the schedule is not understood."""
    every = cron_schedule.interval(schedule)
    return math.nan if every is None else late_after(every)


def figures(row: Mapping[str, Any]) -> dict[str, float]:
    """The query's row as the figures :data:`METRICS` name (numbers only; booleans 1/0, unknown NaN)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "cleanup_schedule":
            out["cleanup_late_after_seconds"] = cleanup_late_after(str(value))
        elif value is None:
            out[key] = math.nan  # only cron_job_active: the job is in another database
        else:
            out[key] = float(value)
    return out


def families(found: Mapping[str, float] | None, duration: float) -> list[Metric]:
    """The metric families of one scrape: every metric from ``found``, or only up and the duration when the read
    failed (``found`` None)."""
    values = {**(found or {}), "up": 0.0 if found is None else 1.0, "scrape_duration_seconds": duration}
    out: list[Metric] = []
    for spec in METRICS:
        if found is None and spec.figure not in ("up", "scrape_duration_seconds"):
            continue
        family = _family(spec)
        if spec.labels:
            for run_type in RUN_TYPES:
                family.add_metric([run_type], values[spec.figure.format(run_type=run_type)])
        else:
            family.add_metric([], values[spec.figure])
        out.append(family)
    return out


def _family(spec: Spec) -> GaugeMetricFamily | CounterMetricFamily:
    kind = GaugeMetricFamily if spec.kind == "gauge" else CounterMetricFamily
    return kind(spec.name, spec.help, labels=list(spec.labels))


class Scraper:
    """One connection kept between scrapes, one read-only transaction per scrape; thread-safe (the HTTP server
    may scrape from several threads at once)."""

    def __init__(self, url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.url, self.timeout_ms = url, max(1, round(timeout_seconds * 1000))
        self._lock = threading.Lock()
        self._held = ExitStack()
        self._conn: Connection | None = None

    def read(self) -> dict[str, float]:
        """The figures, read now; raises what went wrong (the connection is then dropped)."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._held.enter_context(target.connection(self.url, "taskdb metrics"))
                with read_only_transaction(self._conn, lock_timeout_ms=self.timeout_ms) as conn:
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {self.timeout_ms}")
                    return figures(rows(conn, SQL["scrape"])[0])
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        self._conn = None
        try:
            self._held.close()
        except Exception:  # closing a connection that is already gone: nothing left to clean up
            log.debug("closing the metrics connection failed", exc_info=True)
        self._held = ExitStack()


class TaskdbCollector(Collector):
    """The ``prometheus_client`` collector: one :meth:`Scraper.read` per collect."""

    def __init__(self, scraper: Scraper) -> None:
        self.scraper = scraper
        self.last_error: str | None = None
        self.failures = 0  # failed scrapes in a row

    def describe(self) -> Iterator[Metric]:
        """The metric names, without reading the database (registering the collector must not scrape)."""
        yield from (_family(spec) for spec in METRICS)

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        found: dict[str, float] | None
        try:
            found = self.scraper.read()
        except Exception as exc:
            found = None
            self._failed(reason(exc, self.scraper.url, self.scraper.timeout_ms))
        else:
            self._succeeded()
        yield from families(found, time.monotonic() - started)

    @property
    def up(self) -> bool:
        return self.failures == 0

    def _failed(self, why: str) -> None:
        self.failures += 1
        if why != self.last_error:  # once per distinct error, not once per scrape
            log.error("taskdb metrics: scrape failed, answering taskdb_up 0: %s", why)
            self.last_error = why

    def _succeeded(self) -> None:
        if self.failures:
            log.info("taskdb metrics: the database answers again, after %d failed scrape(s)", self.failures)
        self.failures, self.last_error = 0, None


def reason(exc: BaseException, url: str, timeout_ms: int) -> str:
    """Why a read failed, in one line without a password, with what to do where taskdb knows it."""
    orig = getattr(exc, "orig", None) if isinstance(exc, DBAPIError) else None
    text = redact(str(orig or exc).strip().splitlines()[0] if str(orig or exc).strip() else type(exc).__name__, url)
    code = sqlstate(exc) if isinstance(exc, DBAPIError) else None
    if code == "42501":  # insufficient_privilege
        role = make_url(url).username or "<the role it connects as>"
        return (
            f"{text} -> membership of taskdb_monitor is all the exporter needs: GRANT taskdb_monitor TO {role}; "
            f"and on a database before {MONITOR_GRANTS_REVISION}, `taskdb upgrade` (it grants taskdb_monitor "
            f"SELECT ({', '.join(TASKS_COLUMNS)}) ON tasks); README, Monitoring"
        )
    if code in ("55P03", "57014"):  # lock_not_available, query_canceled (statement_timeout)
        return (
            f"{text} -> the read took longer than --timeout ({timeout_ms / 1000:g} s): a lock held by DDL (an "
            "upgrade) or a slow query (`taskdb doctor`, pg_stat_activity); raise --timeout, below scrape_timeout"
        )
    if code == "42P01":  # undefined_table: queue_health or taskdb_cron_jobs missing
        return f"{text} -> the database is not upgraded: `taskdb plan`, then `taskdb upgrade`"
    return text
