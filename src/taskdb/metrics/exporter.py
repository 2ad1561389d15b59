"""Where a scrape goes: an HTTP ``/metrics`` endpoint, stdout, or a textfile for node_exporter.

Each of them reads the database once per scrape (taskdb.metrics.collector) and answers even when the read fails
(``taskdb_up 0``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, generate_latest, start_http_server, write_to_textfile

from taskdb.errors import TaskdbError
from taskdb.metrics.collector import DEFAULT_TIMEOUT_SECONDS, Scraper, TaskdbCollector

log = logging.getLogger(__name__)


class ListenError(TaskdbError):
    """Cannot listen on the address given."""

    exit_code = 2


@contextmanager
def exporter(url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> Iterator[TaskdbCollector]:
    """taskdb's collector, its connection closed after: ``registry(collector)`` to expose it."""
    scraper = Scraper(url, timeout_seconds=timeout_seconds)
    try:
        yield TaskdbCollector(scraper)
    finally:
        scraper.close()


def registry(collector: TaskdbCollector) -> CollectorRegistry:
    """A registry with taskdb's metrics only (no process or Python metrics: a textfile outlives its process)."""
    found = CollectorRegistry()
    found.register(collector)
    return found


def once(url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> tuple[str, bool]:
    """One scrape in the text format, and whether it read the database."""
    with exporter(url, timeout_seconds=timeout_seconds) as collector:
        text = generate_latest(registry(collector)).decode()
        return text, collector.up


def textfile(url: str, path: Path, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> bool:
    """One scrape written to ``path`` atomically (a temporary file beside it, renamed over it): node_exporter's
    textfile collector never reads half a file. Whether it read the database."""
    with exporter(url, timeout_seconds=timeout_seconds) as collector:
        write_to_textfile(str(path), registry(collector))
        return collector.up


def parse_listen(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (every address) or ``[::1]:PORT`` -> (host, port)."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ListenError(f"metrics: --listen {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9469 or :9469")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def serve(
    url: str,
    address: str,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    stop: threading.Event | None = None,
) -> None:
    """Serve ``/metrics`` on ``address`` until SIGTERM or SIGINT (or ``stop`` is set); each request scrapes."""
    host, port = parse_listen(address)
    stop = stop or threading.Event()
    with exporter(url, timeout_seconds=timeout_seconds) as collector:
        try:
            server, thread = start_http_server(port, host, registry(collector))
        except OSError as exc:
            raise ListenError(f"metrics: cannot listen on {address}: {exc.strerror or exc}") from None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def stopping(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        if threading.current_thread() is threading.main_thread():
            for sig in previous:
                signal.signal(sig, stopping)
        log.info("taskdb metrics: serving http://%s:%d/metrics", host if ":" not in host else f"[{host}]", port)
        try:
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
            if threading.current_thread() is threading.main_thread():
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
