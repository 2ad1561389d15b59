"""SECURITY DEFINER functions cannot be hijacked through search_path: look-alike functions and operators that
another role puts in ``public`` are never called by the count, the claim, the cleanup, the health view or the
trigger (their search_path is pinned with pg_catalog first, and they call nothing by a name a caller controls)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.helpers import Db, task_id, user_id

# Each look-alike raises if it is ever called: on a name the definer functions use, in a type they use it with
# (or a looser one that an implicit cast would reach).
LOOKALIKES = """
CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'hijacked lower'; END$$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'hijacked now'; END$$;
CREATE FUNCTION public.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'hijacked set_config'; END$$;
CREATE FUNCTION public.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'hijacked current_setting'; END$$;
CREATE FUNCTION public.taskdb_run_type_arg(varchar) RETURNS text LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'hijacked taskdb_run_type_arg'; END$$;
CREATE FUNCTION public.hijack_text_eq(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'hijacked ='; END$$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.hijack_text_eq);
CREATE FUNCTION public.hijack_uuid_eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'hijacked uuid ='; END$$;
CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = public.hijack_uuid_eq);
"""


def test_lookalikes_in_public_are_never_called(db: Db) -> None:
    db.load("half_migrated")
    db.upgrade()
    db.execute(
        "INSERT INTO tasks (id, task_type, status, created_at, user_id, run_type) VALUES "
        "(CAST(:old AS uuid), 't', 'Queued', now() - interval '9 days', CAST(:u AS uuid), 'cloud'), "
        "(CAST(:parent AS uuid), 't', 'In Progress', now(), CAST(:u AS uuid), 'cloud')",
        old=task_id("hijack-old"),
        parent=task_id("hijack-parent"),
        u=user_id("alice"),
    )
    db.execute(
        "INSERT INTO tasks (id, task_type, status, params, user_id, run_type) VALUES (CAST(:c AS uuid), 't', "
        "'Queued', jsonb_build_object('orchestrator_task_id_ref', CAST(:p AS text)), CAST(:u AS uuid), 'cloud')",
        c=task_id("hijack-child"),
        p=task_id("hijack-parent"),
        u=user_id("alice"),
    )
    count_before = db.scalar("SELECT claimable_task_count('gpu')")

    # mallory may create objects in public (not the default since PostgreSQL 15: granted here on purpose)
    mallory, password = f"mallory_{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex
    database = make_url(db.url).database
    db.execute(f"CREATE ROLE {mallory} LOGIN PASSWORD '{password}'")
    db.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {mallory}")
    db.execute(f"GRANT CONNECT ON DATABASE {database} TO {mallory}")
    attacker = sa.create_engine(
        make_url(db.url).set(drivername="postgresql+psycopg", username=mallory, password=password),
        poolclass=sa.NullPool,
    )
    try:
        with attacker.begin() as conn:
            for statement in LOOKALIKES.strip().split(";\n"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
        # the look-alikes exist and would fire if called by name from public
        with attacker.connect() as conn:
            try:
                conn.exec_driver_sql("SELECT public.lower('x')")
                raise AssertionError("the look-alike did not raise")
            except sa.exc.DBAPIError as exc:
                assert "hijacked lower" in str(exc)

        # the definer functions, the view and the trigger, called as usual: none of them reaches a look-alike
        assert db.scalar("SELECT claimable_task_count('gpu')") == count_before
        assert db.scalar("SELECT claimable_task_count('gpu', true)") >= count_before
        assert db.scalar("SELECT count(*) FROM queue_health") == 1
        assert db.scalar("SELECT count(*) FROM stale_queued_tasks") >= 1
        with db.engine.begin() as conn:  # committed: the writes below are real
            claimed = conn.exec_driver_sql("SELECT id::text, status FROM claim_next_task('w-1', 'gpu')").all()
            cancelled = conn.exec_driver_sql("SELECT cancel_stale_queued_tasks()").scalar()
        assert len(claimed) == 1 and claimed[0][1] == "In Progress"
        assert cancelled >= 1
        assert db.scalar("SELECT status FROM tasks WHERE id = :id", id=task_id("hijack-old")) == "Cancelled"
        db.execute("UPDATE tasks SET status = 'Failed' WHERE id = :id", id=task_id("hijack-parent"))  # trigger
        assert db.scalar("SELECT status FROM tasks WHERE id = :id", id=task_id("hijack-child")) == "Cancelled"
    finally:
        attacker.dispose()
        db.execute(f"DROP OWNED BY {mallory}")
        db.execute(f"DROP ROLE {mallory}")
