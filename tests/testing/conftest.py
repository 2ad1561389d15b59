"""Helpers for the tests of taskdb.testing itself: which backends this machine can run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskdb.testing import container, local
from taskdb.testing.base import PostgresServer
from taskdb.testing.local import LocalServer

#: the pg_cron version each image's Debian release ships (bookworm 1.4, trixie 1.6)
EXPECTED_CRON = {15: "1.4", 17: "1.6"}


def local_majors() -> list[int]:
    return sorted(local.installed_majors())


def container_majors() -> list[int]:
    return sorted(m for m in container.available_images() if m)


def container_params() -> list[object]:
    """One param per container major; a skipped param (with the remedy) where it can't run here."""
    engine = container.engine_answers()
    images = container.available_images() if engine else {}
    params: list[object] = []
    for major in (15, 17):
        if not engine:
            marks = [pytest.mark.skip(reason="no Docker engine answers (scripts/start-docker)")]
        elif major not in images:
            reason = f"no image {container.image_name(major)} (scripts/build-pg-image {major})"
            marks = [pytest.mark.skip(reason=reason)]
        else:
            marks = []
        params.append(pytest.param(major, id=f"pg{major}", marks=[pytest.mark.container, *marks]))
    return params


@pytest.fixture(scope="module")
def local_server() -> Iterator[PostgresServer]:
    """One local server per test module (the backends' own tests don't go through the plugin)."""
    if not local_majors():
        pytest.skip("no local PostgreSQL installed (apt-get install postgresql-15 postgresql-15-cron)")
    with LocalServer() as server:
        yield server
