"""The ``container`` backend: PostgreSQL + pg_cron in a Docker container, via testcontainers.

The image is ``taskdb-pg:<major>`` (``TASKDB_PG_IMAGE`` overrides it; ``{major}`` in it is replaced), built
by ``scripts/build-pg-image`` from Debian packages or by ``docker build docker/`` from the official image.
It is never pulled: a missing image is an error with the remedy, not a download.

The container shares the host's network namespace (no port mapping, no bridge needed, nothing leaves
127.0.0.1): the server listens on 127.0.0.1 on a port picked free on the host. It runs as ``postgres``;
its command runs initdb with the superuser's SCRAM verifier (the cleartext password never enters the
container) and then ``postgres`` with pg_cron preloaded.

Testcontainers' reaper (Ryuk) is itself an image from a registry. Where it is not present locally it is
disabled and we remove our containers ourselves: ``stop()``/context manager, atexit, and at the first start
of a process a sweep of labelled containers whose owner process is gone.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shlex
import socket
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import psycopg

from taskdb.testing.base import (
    LIVE_SERVERS,
    SPEED_SETTINGS,
    PostgresServer,
    PostgresUnavailable,
    free_port,
    merge_settings,
    pid_alive,
    scram_verifier,
    scrub,
    start_timeout,
    suppress_all,
    tail,
    wait_until_ready,
)

if TYPE_CHECKING:
    import docker
    from testcontainers.core.container import DockerContainer

#: majors scripts/build-pg-image knows how to build, newest first (the default is the newest present)
KNOWN_MAJORS = (17, 15)
IMAGE_ENV = "TASKDB_PG_IMAGE"
LABEL = "taskdb.testing"
LABEL_PID = "taskdb.testing.pid"
LABEL_HOST = "taskdb.testing.host"
TMPFS_DIR = "/tmp"  # a tmpfs, writable by the postgres user whatever the image
DATA_DIR = f"{TMPFS_DIR}/taskdb-pgdata"
SOCKET_DIR = TMPFS_DIR
PORT_ATTEMPTS = 3
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

NO_ENGINE_REMEDY = (
    "To fix this, either: run scripts/start-docker (apt-get install docker.io first if needed), "
    "or use TASKDB_PG_BACKEND=local (apt-get install postgresql-15 postgresql-15-cron)"
)


def require_testcontainers() -> None:
    """The container backend's Python packages (the [testing] extra), or the one line that says how to get them."""
    try:
        import docker  # noqa: F401
        import testcontainers.core.container  # noqa: F401
    except ImportError as exc:
        package = (exc.name or "it").split(".")[0]
        raise PostgresUnavailable(
            f"the container backend needs testcontainers, and {package} is not installed. To fix this, either: "
            "pip install 'taskdb-pg[testing]', or use TASKDB_PG_BACKEND=local"
        ) from None


@contextlib.contextmanager
def docker_client(timeout: int = 10) -> Iterator[docker.DockerClient]:
    """A docker-py client for the engine testcontainers would use (DOCKER_HOST, else the local socket)."""
    import docker

    client = docker.from_env(timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def _unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def engine_answers() -> bool:
    """True when a Docker engine answers a ping (a few seconds at most when none does)."""
    host = os.environ.get("DOCKER_HOST", "")
    # The common "no docker here" cases (no socket, a stale socket file) are decided without docker-py,
    # whose failed connection attempts leak sockets (ResourceWarning, an error under -W error).
    if (not host or host.startswith("unix://")) and not _unix_socket_answers(
        host.removeprefix("unix://") or "/var/run/docker.sock"
    ):
        return False
    try:
        with docker_client(timeout=3) as client:
            return bool(client.ping())
    except Exception:  # any failure to reach it means "no engine" here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()  # collect what the failed client left open now, while its warnings are ignored
        return False


def image_name(major: int | None) -> str | None:
    """The image for ``major``: ``TASKDB_PG_IMAGE`` (``{major}`` filled in) or ``taskdb-pg:<major>``."""
    override = os.environ.get(IMAGE_ENV, "").strip()
    if override:
        return override.replace("{major}", str(major)) if "{major}" in override else override
    return None if major is None else f"taskdb-pg:{major}"


def image_major(client: docker.DockerClient, image: str) -> int | None:
    """The PostgreSQL major an image carries (its PG_MAJOR, or the /usr/lib/postgresql/N/bin in PATH)."""
    import docker.errors

    try:
        env = client.images.get(image).attrs.get("Config", {}).get("Env") or []
    except docker.errors.ImageNotFound:
        return None
    values = dict(item.split("=", 1) for item in env if "=" in item)
    if values.get("PG_MAJOR", "").split(".")[0].isdigit():
        return int(values["PG_MAJOR"].split(".")[0])
    for part in values.get("PATH", "").split(":"):
        pieces = part.strip("/").split("/")
        if len(pieces) == 4 and pieces[:3] == ["usr", "lib", "postgresql"] and pieces[3].isdigit():
            return int(pieces[3])
    return 0  # present, major unknown: learnt from the server once it runs


def available_images() -> dict[int, str]:
    """Major -> image present in the engine (empty when no engine answers). Nothing is pulled."""
    if not engine_answers():
        return {}
    found: dict[int, str] = {}
    with suppress_all(), docker_client() as client:
        override = os.environ.get(IMAGE_ENV, "").strip()
        if override and "{major}" not in override:
            major = image_major(client, override)
            if major is not None:
                found[major] = override  # 0: present, major learnt once it runs
            return found
        for known in KNOWN_MAJORS:
            name = image_name(known)
            if name and image_major(client, name) is not None:
                found[known] = name
    return found


def usable(major: int | None = None) -> bool:
    """Whether the auto choice should be the container backend for ``major``."""
    images = available_images()
    return bool(images) if major is None else major in images


def _configure_ryuk(client: docker.DockerClient) -> None:
    """Disable Ryuk unless the user decided, or its image is already here (it can't be pulled)."""
    import docker.errors
    from testcontainers.core.config import testcontainers_config

    if "TESTCONTAINERS_RYUK_DISABLED" in os.environ:
        return
    try:
        client.images.get(testcontainers_config.ryuk_image)
    except docker.errors.ImageNotFound:
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
        testcontainers_config.ryuk_disabled = True
    except docker.errors.DockerException:
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
        testcontainers_config.ryuk_disabled = True


_sweep_lock = threading.Lock()
_swept = False


def sweep_leftovers(client: docker.DockerClient) -> list[str]:
    """Remove our labelled containers whose owner process on this host is gone; return their names."""
    global _swept
    with _sweep_lock:
        if _swept:
            return []
        _swept = True
    removed: list[str] = []
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
        labels = container.labels or {}
        if labels.get(LABEL_HOST) != socket.gethostname():
            continue  # another machine's, on a shared engine: not ours to judge
        pid = labels.get(LABEL_PID, "")
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        with suppress_all():
            container.remove(force=True, v=True)
            removed.append(container.name)
    return removed


def _start_script(port: int, verifier: str, settings: Mapping[str, str]) -> str:
    """``sh -c`` script: initdb with the verifier as the superuser's password, then exec postgres."""
    options = " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in settings.items())
    return "\n".join(
        [
            "set -e",
            # Images that don't put the PostgreSQL bindir in PATH: take the newest one installed.
            "command -v initdb >/dev/null 2>&1 || "
            'PATH="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1):$PATH"',
            "umask 077",
            f"printf '%s\\n' {shlex.quote(verifier)} > /tmp/taskdb-pwfile",
            f"initdb -D {DATA_DIR} -U postgres --pwfile=/tmp/taskdb-pwfile --encoding=UTF8 --locale=C "
            "--auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null",
            "rm -f /tmp/taskdb-pwfile",
            f"exec postgres -D {DATA_DIR} -p {port} {options}",
        ]
    )


class ContainerServer(PostgresServer):
    """PostgreSQL in a container on the host network, removed on stop."""

    backend = "container"

    def __init__(
        self, major: int | None = None, settings: Mapping[str, str] | None = None, image: str | None = None
    ) -> None:
        super().__init__()
        self._container: DockerContainer | None = None
        require_testcontainers()
        if not engine_answers():
            raise PostgresUnavailable(
                "no Docker engine answers (checked DOCKER_HOST or /var/run/docker.sock with a ping). "
                + NO_ENGINE_REMEDY
            )
        if image is None:
            images = available_images()
            if major is None and images:
                major = max(images)
            image = images.get(major) if major is not None else None
            if image is None:
                wanted = image_name(major) or "taskdb-pg:<major>"
                build = f"scripts/build-pg-image {major or 'all'}"
                raise PostgresUnavailable(
                    f"the image {wanted} is not in the Docker engine (images are never pulled). To fix "
                    f"this, either: {build}, or docker build -t {wanted} --build-arg PG_MAJOR={major or 17} "
                    "docker/ (needs a registry), or set TASKDB_PG_IMAGE, or use TASKDB_PG_BACKEND=local"
                )
        self.image = image
        self._requested_major = major
        with docker_client() as client:
            _configure_ryuk(client)
            sweep_leftovers(client)
        try:
            self._start(settings)
        except BaseException:
            self._remove()
            raise
        LIVE_SERVERS.add(self)

    @property
    def container_id(self) -> str | None:
        wrapped = getattr(self._container, "_container", None)
        return getattr(wrapped, "id", None)

    def _new_container(self, port: int) -> DockerContainer:
        from testcontainers.core.container import DockerContainer

        major = self._requested_major
        path = f"/usr/lib/postgresql/{major}/bin:{BASE_PATH}" if major else BASE_PATH
        container = (
            DockerContainer(self.image)
            .with_env("PATH", path)
            .with_env("LANG", "C.UTF-8")
            .with_name(f"taskdb-pg-{major or 'x'}-{os.getpid()}-{port}")
            # A list, not a string: docker-py would shlex-split a string into separate words.
            .with_command([_start_script(port, scram_verifier(self.password), self.settings)])
            .with_kwargs(
                # network="host" (not network_mode): testcontainers then skips its "join the network this
                # process runs in" guess, which would override the host network inside a container.
                network="host",
                user="postgres",
                entrypoint=["/bin/sh", "-c"],  # the official image's entrypoint would run its own initdb
                labels={LABEL: "1", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()},
            )
        )
        container.image = self.image  # no TESTCONTAINERS_HUB_IMAGE_NAME_PREFIX: the image is local
        # The data dir in RAM: initdb writes about a thousand files, much faster on tmpfs than on overlayfs.
        container.tmpfs[TMPFS_DIR] = "rw,exec,mode=1777"
        return container

    def _start(self, extra: Mapping[str, str] | None) -> None:
        timeout = start_timeout()
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self.settings = merge_settings(
                {
                    "listen_addresses": self.host,
                    "unix_socket_directories": SOCKET_DIR,
                    "shared_preload_libraries": "pg_cron",
                    "cron.database_name": "postgres",
                    # pg_cron's jobs connect over the container's trusted socket: no password needed.
                    "cron.host": SOCKET_DIR,
                    **SPEED_SETTINGS,
                },
                extra,
            )
            self._container = self._new_container(self.port)
            try:
                self._container.start()
                wait_until_ready(
                    lambda: psycopg.connect(**self.connect_kwargs()),
                    self._exit_reason,
                    timeout,
                    f"container {self.image} ({self!r})",
                    lambda: tail(self._logs()),
                )
                break
            except PostgresUnavailable:
                logs = self._logs()
                self._remove()
                if ("could not bind" in logs or "already in use" in logs) and attempt + 1 < PORT_ATTEMPTS:
                    continue  # the port was taken between free_port() and bind(): another one
                raise
            except Exception as exc:  # docker API errors: one line, no secrets
                self._remove()
                raise PostgresUnavailable(
                    f"starting a container from {self.image} failed: {scrub(str(exc), self.password)}"
                ) from None
        self.major = self._read_major()

    def _logs(self) -> str:
        with suppress_all():
            if self._container is not None:
                out, err = self._container.get_logs()
                return scrub((out + err).decode(errors="replace"), self.password)
        return ""

    def _exit_reason(self) -> str | None:
        wrapped = getattr(self._container, "_container", None)
        if wrapped is None:
            return "not created"
        try:
            wrapped.reload()
        except Exception as exc:  # removed under us, engine gone
            return f"container vanished ({type(exc).__name__})"
        if wrapped.status in ("exited", "dead"):
            code = wrapped.attrs.get("State", {}).get("ExitCode")
            return f"exit code {code}; container log: {tail(self._logs())}"
        return None

    def _remove(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with suppress_all():
                container.stop()  # testcontainers: remove(force=True, v=True), then close its client

    def _stop(self) -> None:
        LIVE_SERVERS.discard(self)
        self._remove()

    def exec(self, *command: str) -> tuple[int, str]:
        """Run a command in the container (e.g. ``psql``); exit code and output."""
        if self._container is None:
            raise PostgresUnavailable(f"{self!r} has no container")
        result: Any = self._container.exec(list(command))
        return int(result.exit_code or 0), bytes(result.output).decode(errors="replace")
