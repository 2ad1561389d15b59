"""start_postgres / available_targets: backend choice, target lists, passwords."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from taskdb.testing import Target, available_targets, container, resolve_backend, start_postgres
from taskdb.testing.base import PostgresUnavailable, generate_password, merge_settings, scram_verifier
from tests.testing.conftest import container_majors, local_majors


def test_auto_prefers_a_container_only_where_engine_and_image_are_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKDB_PG_BACKEND", raising=False)
    expected = "container" if container.usable() else "local"
    assert resolve_backend() == expected
    monkeypatch.setattr(container, "available_images", lambda: {15: "taskdb-pg:15"})
    assert resolve_backend() == "container"
    assert resolve_backend(major=15) == "container"
    assert resolve_backend(major=17) == "local"
    monkeypatch.setattr(container, "available_images", lambda: {})
    assert resolve_backend() == "local"


def test_env_and_argument_choose_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKDB_PG_BACKEND", "url")
    assert resolve_backend() == "url"
    assert resolve_backend("local") == "local"  # the argument wins
    monkeypatch.setenv("TASKDB_PG_BACKEND", "podman")
    with pytest.raises(PostgresUnavailable, match=r"unknown backend 'podman'.*auto, local, container, url"):
        start_postgres()


def test_targets_are_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKDB_PG_TARGETS", raising=False)
    targets = available_targets()
    assert [t for t in targets if t.backend == "local"] == [Target("local", m) for m in local_majors()]
    assert [t for t in targets if t.backend == "container"] == [Target("container", m) for m in container_majors()]
    assert [t.id for t in targets] == [f"{t.backend}-{t.major}" for t in targets]


def test_targets_env_forces_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKDB_PG_TARGETS", " local:15, container:17 ,container:17,url")
    assert available_targets() == [Target("local", 15), Target("container", 17), Target("url", None)]
    assert [t.id for t in available_targets()] == ["local-15", "container-17", "url"]
    monkeypatch.setenv("TASKDB_PG_TARGETS", "local:fifteen")
    with pytest.raises(PostgresUnavailable, match="backend:major"):
        available_targets()


def test_password_is_url_hostile_and_unique() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert set("@:/%#?&=") <= set(password)
        assert password.isascii() and " " not in password and "+" not in password


def test_scram_verifier_is_what_postgres_checks() -> None:
    """Recompute the proof the way a client does: the stored key must match (RFC 5802)."""
    import base64

    verifier = scram_verifier("s3cret@/:")
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    salted = hashlib.pbkdf2_hmac("sha256", b"s3cret@/:", base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert method == "SCRAM-SHA-256" and int(iterations) == 4096
    assert hashlib.sha256(client_key).digest() == stored_key
    assert hmac.new(salted, b"Server Key", hashlib.sha256).digest() == server_key


def test_settings_keep_pg_cron_preloaded() -> None:
    assert merge_settings({"shared_preload_libraries": "pg_cron"}, None)["shared_preload_libraries"] == "pg_cron"
    merged = merge_settings({"shared_preload_libraries": "pg_cron", "a": "1"}, {"shared_preload_libraries": "x, y"})
    assert merged == {"shared_preload_libraries": "pg_cron,x,y", "a": "1"}
