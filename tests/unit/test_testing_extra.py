"""The container backend without the [testing] extra: the error says how to install it (no Docker needed)."""

from __future__ import annotations

import sys

import pytest

from taskdb.testing import start_postgres
from taskdb.testing.base import PostgresUnavailable


@pytest.mark.parametrize("missing", ["testcontainers", "docker"])
def test_the_container_backend_without_testcontainers_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    for name in [n for n in sys.modules if n == missing or n.startswith(f"{missing}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # None in sys.modules: `import missing` raises ImportError
    with pytest.raises(PostgresUnavailable) as error:
        start_postgres(backend="container")
    message = str(error.value)
    assert "pip install 'taskdb-pg[testing]'" in message and "TASKDB_PG_BACKEND=local" in message
    assert f"{missing} is not installed" in message and "\n" not in message
