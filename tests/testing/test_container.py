"""The container backend: taskdb-pg:<major> images through testcontainers on the host network.

Skipped (with the remedy as the reason) where no Docker engine answers or an image is not built.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from taskdb.testing import container, start_postgres
from taskdb.testing.base import PostgresServer, PostgresUnavailable
from taskdb.testing.container import LABEL, LABEL_HOST, LABEL_PID, ContainerServer, docker_client
from tests.testing import checks
from tests.testing.conftest import EXPECTED_CRON, container_params

pytestmark = pytest.mark.container


@pytest.fixture(scope="module", params=container_params())
def container_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    with start_postgres(backend="container", major=request.param) as server:
        yield server


def our_containers() -> list[dict[str, str]]:
    with docker_client() as client:
        return [
            dict(c.labels) | {"id": c.id} for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"})
        ]


def test_container_server_is_real_and_has_pg_cron(container_server: PostgresServer) -> None:
    assert container_server.backend == "container"
    assert isinstance(container_server, ContainerServer)
    assert container_server.image == f"taskdb-pg:{container_server.major}"
    version = checks.assert_all(container_server)
    assert version.startswith(EXPECTED_CRON[container_server.major]), version


def test_pg_cron_jobs_run(container_server: PostgresServer) -> None:
    """A job really runs: pg_cron reaches the server over the trusted socket (cron.host), no password."""
    with container_server.connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
        parts = tuple(int(p) for p in str(version[0] if version else "0").split("-")[0].split("."))
        if parts < (1, 5):
            pytest.skip(f"pg_cron {version} has no second-level schedules to observe a run quickly")
        conn.execute("CREATE TABLE IF NOT EXISTS cron_probe (at timestamptz)")
        conn.execute("SELECT cron.schedule('taskdb-testing-run', '1 seconds', 'INSERT INTO cron_probe VALUES (now())')")
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM cron_probe").fetchone()
                if row and row[0] > 0:
                    break
                time.sleep(0.25)
            failures = conn.execute(
                "SELECT return_message FROM cron.job_run_details WHERE status = 'failed' LIMIT 1"
            ).fetchone()
            assert failures is None, failures
            assert row and row[0] > 0, "the job never ran"
        finally:
            conn.execute("SELECT cron.unschedule('taskdb-testing-run')")


def test_no_cleartext_password_in_the_container(container_server: PostgresServer) -> None:
    assert isinstance(container_server, ContainerServer)
    with docker_client() as client:
        attrs = client.containers.get(container_server.container_id).attrs
    dump = json.dumps(attrs)
    assert container_server.password not in dump  # only the SCRAM verifier went in
    assert attrs["HostConfig"]["NetworkMode"] == "host"
    assert attrs["Config"]["User"] == "postgres"
    assert "/tmp" in attrs["HostConfig"]["Tmpfs"]  # the data dir lives in RAM
    assert attrs["Config"]["Labels"][LABEL_PID] == str(os.getpid())
    code, out = container_server.exec("sh", "-c", "id -un; ls /tmp/taskdb-pwfile 2>&1 || true")
    assert code == 0 and out.startswith("postgres") and "No such file" in out


@pytest.mark.parametrize("major", container_params())
def test_stop_removes_the_container(major: int) -> None:
    started = time.monotonic()
    server = start_postgres(backend="container", major=major)
    elapsed = time.monotonic() - started
    assert isinstance(server, ContainerServer)
    cid = server.container_id
    assert cid in {c["id"] for c in our_containers()}
    server.stop()
    server.stop()
    assert cid not in {c["id"] for c in our_containers()}
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**server.connect_kwargs() | {"connect_timeout": 2}).close()
    assert elapsed < 30, f"container start took {elapsed:.1f}s"


@pytest.mark.parametrize("major", container_params()[:1])
def test_settings_reach_the_server(major: int) -> None:
    with start_postgres(backend="container", major=major, settings={"cron.database_name": "crondb"}) as server:
        assert server.cron_database == "crondb"
        assert server.cron_preloaded


@pytest.mark.parametrize("major", container_params()[:1])
def test_sweep_removes_containers_of_dead_processes(major: int) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = dead.stdout.strip()
    with docker_client() as client:
        orphan = client.containers.run(
            f"taskdb-pg:{major}",
            ["sleep", "300"],
            detach=True,
            network="host",
            labels={LABEL: "1", LABEL_PID: dead_pid, LABEL_HOST: socket.gethostname()},
        )
        alive = client.containers.run(
            f"taskdb-pg:{major}",
            ["sleep", "300"],
            detach=True,
            network="host",
            labels={LABEL: "1", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()},
        )
        try:
            container._swept = False
            removed = container.sweep_leftovers(client)
            ids = {c["id"] for c in our_containers()}
            assert orphan.name in removed
            assert orphan.id not in ids
            assert alive.id in ids, "a live process's container must be left alone"
        finally:
            alive.remove(force=True)
            with contextlib.suppress(Exception):  # normally already removed by the sweep
                orphan.remove(force=True)


def test_missing_image_is_a_clear_error_and_nothing_is_pulled(monkeypatch: pytest.MonkeyPatch) -> None:
    if not container.engine_answers():
        pytest.skip("no Docker engine answers (scripts/start-docker)")
    monkeypatch.setenv("TASKDB_PG_IMAGE", "taskdb-pg-missing:{major}")
    with pytest.raises(PostgresUnavailable) as info:
        start_postgres(backend="container", major=17)
    message = str(info.value)
    assert "taskdb-pg-missing:17" in message and "scripts/build-pg-image 17" in message
    assert "never pulled" in message


def test_ryuk_is_disabled_where_its_image_is_absent(container_server: PostgresServer) -> None:
    from testcontainers.core.config import testcontainers_config

    with docker_client() as client:
        names = {tag for image in client.images.list() for tag in image.tags}
    if testcontainers_config.ryuk_image not in names and "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        pytest.fail("the Ryuk decision must set TESTCONTAINERS_RYUK_DISABLED")
    if testcontainers_config.ryuk_image not in names:
        assert testcontainers_config.ryuk_disabled
