"""The real stack: `taskdb metrics --listen` on the incident database after `upgrade`, logging in as a role granted
taskdb_monitor, scraped every second by Debian's Prometheus with taskdb's alert rules loaded (a temporary config and
data directory, a free port; stopped after). What Prometheus stored equals queue_health and claimable_task_count;
TaskdbQueuedTaskTooOld is pending; 51 claimable tasks arriving at once fire TaskdbClaimableSurge within a minute;
every query of the Grafana dashboard answers, with data."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from taskdb.testing.base import free_port
from tests.acceptance.test_metrics import QUEUED_TASK, expected, listen, monitor_roles, wait_for
from tests.helpers import Db, user_id

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "prometheus" / "taskdb-alerts.yml"
DASHBOARD = MONITORING / "grafana" / "taskdb-dashboard.json"
PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs prometheus: apt-get install prometheus (scripts/setup)"
)

# What the dashboard's variables stand for here (Grafana fills them in).
VARIABLES = {"$instance": ".*", "$run_type": ".*", "$__rate_interval": "1m"}


class Prometheus:
    """A Prometheus of our own: temporary config and data directory, a free port, 1 s scrapes and evaluations."""

    def __init__(self, workdir: Path, exporter_port: int) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{json.dumps(str(RULES))}]\n"
            "scrape_configs:\n"
            "  - job_name: taskdb\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
        )
        assert PROMETHEUS is not None
        self.log = workdir / "prometheus.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.until(lambda: self.get("/-/ready", raw=True) is not None, "Prometheus did not become ready")

    def get(self, path: str, raw: bool = False, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
        except OSError:
            return None
        return body if raw else json.loads(body)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer is not None and answer["status"] == "success", (expr, answer)
        return list(answer["data"]["result"])

    def value(self, expr: str) -> float:
        [sample] = self.query(expr)
        return float(sample["value"][1])

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]

    def until(self, ready: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = ready()
            if found:
                return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what}; Prometheus' log: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def stack(db: Db, workdir: Path) -> Iterator[Prometheus]:
    with monitor_roles(db) as monitor_role:
        port = free_port()
        exporter = listen(monitor_role("psycopg"), port)
        try:
            wait_for(port, exporter)
            prometheus = Prometheus(workdir, port)
            try:
                yield prometheus
            finally:
                prometheus.stop()
        finally:
            exporter.terminate()
            exporter.communicate(timeout=30)


def add_claimable_burst(db: Db, count: int = 51) -> None:
    """``count`` claimable cloud tasks in one transaction: users with credits, at most the per-user limit (5) each,
    so that claimable_task_count counts every one."""
    db.execute(
        "WITH u AS (INSERT INTO users (id, email, credits) "
        "  SELECT gen_random_uuid(), 'burst' || n || '@example.com', 10 FROM generate_series(1, (:n + 4) / 5) n "
        "  RETURNING id), "
        "numbered AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM u) "
        "INSERT INTO tasks (id, task_type, status, user_id, run_type) "
        "SELECT gen_random_uuid(), 'burst', 'Queued', numbered.id, 'cloud' "
        "FROM generate_series(0, :n - 1) i JOIN numbered ON numbered.k = i / 5",
        n=count,
    )


def test_prometheus_scrapes_the_exporter_alerts_fire_and_every_dashboard_query_answers(db: Db, tmp_path: Path) -> None:
    db.load("half_migrated")
    db.upgrade()
    db.execute(QUEUED_TASK, age="3 days", user=user_id("bob"), run_type="cloud")  # older than stale_after
    with stack(db, tmp_path) as prometheus:
        # a few scrapes before anything changes: the baseline the surge rule compares with
        prometheus.until(lambda: prometheus.query("count_over_time(taskdb_up[1m]) >= 3"), "no scrapes stored")
        want = expected(db)
        for (name, run_type), value in want.items():
            selector = f'{name}{{run_type="{run_type}"}}' if run_type else name
            slack = 30.0 if name == "taskdb_oldest_queued_task_age_seconds" else 1e-6
            found = prometheus.value(selector)
            assert math.isnan(found) if math.isnan(value) else abs(found - float(value)) <= slack, (selector, value)
        prometheus.until(
            lambda: [a for a in prometheus.alerts("TaskdbQueuedTaskTooOld") if a["state"] in ("pending", "firing")],
            "TaskdbQueuedTaskTooOld is neither pending nor firing",
        )
        assert prometheus.alerts("TaskdbClaimableSurge") == []

        before = prometheus.value('taskdb_claimable_tasks{run_type="cloud"}')
        add_claimable_burst(db)
        arrived = time.monotonic()
        [surge] = prometheus.until(
            lambda: [a for a in prometheus.alerts("TaskdbClaimableSurge") if a["state"] == "firing"],
            "TaskdbClaimableSurge did not fire within a minute of 51 claimable tasks arriving",
            timeout=60,
        )
        assert time.monotonic() - arrived < 60
        assert surge["labels"]["run_type"] == "cloud" and float(surge["value"]) == 51
        assert prometheus.value('taskdb_claimable_tasks{run_type="cloud"}') == before + 51
        assert before + 51 == db.scalar("SELECT claimable_task_count('gpu')")

        # the dashboard: its variables have values, and every panel's query answers with data
        dashboard = json.loads(DASHBOARD.read_text())
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                metric, label = variable["definition"].removeprefix("label_values(").rstrip(")").split(", ")
                found = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
                assert found["status"] == "success" and found["data"], variable["name"]
        exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
        assert len(exprs) >= 10
        for expr in exprs:
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert prometheus.query(expr), f"no data for the dashboard's {expr}"
