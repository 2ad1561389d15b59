"""Offline SQL (`taskdb sql`, `alembic upgrade --sql`): the upgrade as a static script a DBA reviews and runs
with ``psql -v ON_ERROR_STOP=1 -X -f upgrade.sql``.

The script needs no database to be generated, yet does on every starting state what the online upgrade
does: wherever the live database matters, a ``DO`` block reads the catalog when the script RUNS (create a table
only where absent and record it in ``taskdb_owned_objects``, add enum labels only where status is an enum,
...). Every step is idempotent, so a rerun after any failure finishes the work and a second run changes
nothing. Transactions are explicit: DDL runs in short transactions under ``SET LOCAL lock_timeout`` (the
LockPolicy's, from ``TASKDB_LOCK_TIMEOUT_MS``) and a ``statement_timeout``; CREATE INDEX CONCURRENTLY, the
backfill and the cleanup run outside a transaction block (Alembic's ``autocommit_block`` emits the COMMIT /
BEGIN around them). The backfill is a temporary procedure (``pg_temp.taskdb_backfill``) that runs the online
engine's own statements (``sql/backfill.sql``: every decision of a run), committing each batch; its lock retries,
and the restore's, name the blockers and pause with ``sql/locks.sql``, as ``taskdb.locks`` does.

The SQL templates are in ``sql/offline.sql``; the revisions compose them through :class:`OfflineScript`
(see ``taskdb.migration.offline_step``).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TextIO, cast

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.engine import Connection

from taskdb import cron
from taskdb.backfill import LOCK_CLAUSES, RESTORE_BATCH_SIZE, BackfillConfig, render
from taskdb.catalog import record_owned
from taskdb.constraints import Index
from taskdb.cron import readiness
from taskdb.cron.config import NAMED_JOBS_SINCE
from taskdb.cron.readiness import MISSING_MARKERS
from taskdb.db import quote_ident
from taskdb.locks import LockPolicy
from taskdb.sql import SCHEMA_TOKEN, fill, queries, split_statements
from taskdb.upgrade_lock import UPGRADE_LOCK_KEY
from taskdb.version_table import DEFAULT, create_sql, taskdb_revisions

# The statements of sql/backfill.sql that pg_temp.taskdb_backfill EXECUTEs, each with what the procedure passes for
# its binds (its parameters and variables, by bind name).
BACKFILL_STEPS: dict[str, dict[str, str]] = {
    "begin_job": {"job": "p_job"},
    "resolve_batch": {
        "after": "v_after",
        "batch_size": "v_size",
        "actor": "p_actor",
        "job": "p_job",
        "sweep": "v_sweep",
        "mode": "v_mode",
    },
    "next_size": {
        "batch_size": "v_size",
        "elapsed_ms": "v_elapsed_ms",
        "target_batch_ms": "p_target_batch_ms",
        "min_batch_size": "p_min_batch_size",
        "max_batch_size": "p_max_batch_size",
    },
    "end_sweep": {
        "job": "p_job",
        "sweep": "v_sweep",
        "mode": "v_mode",
        "done": "v_done",
        "waiting": "v_waiting",
        "after": "v_resumed",
        "previous_waiting": "v_previous_waiting",
        "max_sweeps": "p_max_sweeps",
    },
    "next_sweep": {"job": "p_job", "sweep": "v_sweep", "mode": "v_mode"},
    "finish_job": {"job": "p_job"},
}
# The restore_batch statement's binds, as the restore procedure's parameters and variables.
RESTORE_BINDS = {"actor": "p_actor", "after": "v_after", "batch_size": "p_batch_size"}
# A safety net for short DDL transactions (lock waits are bounded by lock_timeout); scans get none.
DDL_STATEMENT_TIMEOUT = "1min"


def literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings: only quotes are doubled)."""
    return "'" + value.replace("'", "''") + "'"


def text_array(values: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join(literal(v) for v in values) + "]::text[]"


def jsonb(value: Any) -> str:
    return literal(json.dumps(value)) + "::jsonb"


def dollar_quote(text: str, tag: str) -> str:
    if f"${tag}$" in text:
        raise ValueError(f"cannot dollar-quote SQL that contains ${tag}$")
    return f"${tag}${text}${tag}$"


def template(section: str, **values: str) -> str:
    """A section of sql/offline.sql with its ``{{placeholders}}`` filled (every one, and only known ones)."""
    return fill(queries("offline")[section], f"offline.sql section {section}", **values)


class _Capture:
    """Stands in for a Connection to capture the SQL a taskdb.catalog helper runs (static SQL, literal values),
    so that the script writes its bookkeeping with exactly the online statements."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def exec_driver_sql(self, sql: str) -> None:
        self.statements.append(textwrap.dedent(sql).strip())

    def execute(self, clause: sa.TextClause, params: Mapping[str, Any] | None = None) -> None:
        bound = clause.bindparams(**dict(params or {}))
        dialect = psycopg.dialect(paramstyle="named")
        self.statements.append(str(bound.compile(dialect=dialect, compile_kwargs={"literal_binds": True})))


def captured(call: Any) -> list[str]:
    """The statements ``call`` runs on a connection, as static SQL (see :class:`_Capture`)."""
    capture = _Capture()
    call(cast(Connection, capture))
    return capture.statements


def record_owned_sql(kind: str, name: str, revision: str) -> str:
    [statement] = captured(lambda c: record_owned(c, kind, name, revision))
    return statement


def positional(sql: str, binds: Mapping[str, str]) -> tuple[str, str]:
    """``sql`` with its ``:name`` binds as ``$1..$n``, for a procedure's ``EXECUTE ... USING``, and the USING list:
    what ``binds`` says the procedure passes for each, in their order (every bind must be named, and only those)."""
    compiled = sa.text(sql).compile(dialect=psycopg.dialect(paramstyle="numeric_dollar"))
    order = tuple(compiled.positiontup or ())
    if sorted(set(order)) != sorted(binds):
        raise RuntimeError(f"binds {order} are not {sorted(binds)}: {sql.splitlines()[0]}")
    return str(compiled), ", ".join(binds[name] for name in order)


def backfill_statement(name: str) -> tuple[str, str]:
    """A statement of sql/backfill.sql exactly as the online engine renders it (the batch with ``${status_type}``
    and ``${lock_clause}`` left for the procedure), as :func:`positional` for pg_temp.taskdb_backfill."""
    kinds = {"status_type": "${status_type}", "lock_clause": "${lock_clause}"} if name == "resolve_batch" else {}
    return positional(render(name, **kinds), BACKFILL_STEPS[name])


def batch_statement() -> str:
    """resolve_batch as the offline procedure runs it."""
    return backfill_statement("resolve_batch")[0]


def backfill_procedure() -> str:
    steps: dict[str, str] = {}
    for name in BACKFILL_STEPS:
        statement, using = backfill_statement(name)
        steps.update({name: dollar_quote(statement, "taskdb_batch"), f"{name}_using": using})
    return template("backfill_procedure", **steps, lock_clauses=jsonb(LOCK_CLAUSES))


def lock_wait_function(policy: LockPolicy) -> str:
    """pg_temp.taskdb_lock_wait: the procedures' lock retries, with the online blockers query and backoff formula
    (sql/locks.sql), and ``policy``'s backoff base and cap."""
    sql = queries("locks")
    blockers, blockers_using = positional(
        sql["blockers"],
        {
            "relations": text_array(["tasks"]),
            "waited_s": "extract(epoch FROM clock_timestamp() - p_attempt_started)",
            "snapshots": "false",
        },
    )
    backoff, backoff_using = positional(
        sql["backoff"],
        {
            "attempt": "p_attempt",
            "backoff_base_s": repr(float(policy.backoff_base_s)),
            "backoff_max_s": repr(float(policy.backoff_max_s)),
        },
    )
    return template(
        "lock_wait",
        blockers=dollar_quote(blockers, "taskdb_query"),
        blockers_using=blockers_using,
        backoff=dollar_quote(backoff, "taskdb_query"),
        backoff_using=backoff_using,
    )


def restore_statement() -> tuple[str, str]:
    """restore_batch of sql/backfill.sql exactly as the online restore renders it, with ``${status_type}`` left
    for the procedure, as :func:`positional` for pg_temp.taskdb_restore."""
    return positional(render("restore_batch", status_type="${status_type}"), RESTORE_BINDS)


def _interval_ms(seconds: float) -> str:
    return literal(f"{round(seconds * 1000)} milliseconds")


class OfflineScript:
    """What one revision emits in --sql mode, with explicit transaction boundaries.

    Alembic opens each revision's transaction (``BEGIN``) and closes it after the version update. The first
    :meth:`transaction` runs inside it; any later one, and anything :meth:`outside_transaction`, first leaves
    it through Alembic's ``autocommit_block`` (``COMMIT`` now, ``BEGIN`` again for the version update).
    """

    def __init__(self, revision: str, context: MigrationContext) -> None:
        self.revision = revision
        self.context = context
        self.policy = LockPolicy.from_env()
        self.backfill_config = BackfillConfig.from_env()
        self._stack = ExitStack()
        self._depth = 0  # transaction() blocks open: an inner one joins the outer
        self._pending_comment: str | None = None  # comment_next(): written before the next statement
        self._state = "alembic"  # alembic: in Alembic's transaction, unused; used: we ran in it; autocommit

    # -- output and transactions ------------------------------------------------------------------------

    def emit(self, sql: str) -> None:
        """Write SQL (one statement or several, with their comments), each statement terminated, the schema
        placeholder filled in."""
        if self._pending_comment is not None:
            text, self._pending_comment = self._pending_comment, None
            self.comment(text)
        for statement in split_statements(sql.replace(SCHEMA_TOKEN, quote_ident(script_schema(self.context)))):
            self.context.impl.static_output(statement.strip() + ";")

    def comment(self, text: str) -> None:
        self.context.impl.static_output("\n".join(f"-- {line}".rstrip() for line in text.strip().splitlines()))

    def comment_next(self, text: str) -> None:
        """A comment written just before the next statement (after the COMMIT that closes what came before)."""
        self._pending_comment = text

    @property
    def lock_timeout(self) -> str:
        return literal(f"{int(self.policy.lock_timeout_ms)}ms")

    @contextmanager
    def transaction(self, statement_timeout: str = DDL_STATEMENT_TIMEOUT) -> Iterator[None]:
        """One short transaction, its lock waits bounded by lock_timeout (no retries: rerun the script). Inside
        another, it is part of that one."""
        if self._depth:
            yield
            return
        if self._state == "alembic":
            self._state = "used"
        else:
            self._leave_alembic_transaction()
            self.emit("BEGIN")
        self.emit(f"SET LOCAL lock_timeout = {self.lock_timeout}")
        self.emit(f"SET LOCAL statement_timeout = {literal(statement_timeout)}")
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._state == "autocommit":
            self.emit("COMMIT")

    @contextmanager
    def outside_transaction(self) -> Iterator[None]:
        """Statements that must not run in a transaction block (CONCURRENTLY, CALL of a committing procedure)."""
        if self._depth:
            raise RuntimeError("taskdb: a step outside any transaction, inside a transaction() block")
        self._leave_alembic_transaction()
        yield

    def _leave_alembic_transaction(self) -> None:
        if self._state != "autocommit":
            self._stack.enter_context(self.context.autocommit_block())
            self._state = "autocommit"

    def close(self) -> None:
        self._stack.close()

    # -- frozen SQL, backfill, cleanup -------------------------------------------------------------------

    def frozen(self, sql: str) -> None:
        """A section of the revision's frozen .sql, verbatim."""
        self.emit(sql)

    def backfill(self, job: str, actor: str) -> None:
        """The batched backfill: the procedures in a transaction, then the CALL outside any."""
        config, policy = self.backfill_config, self.policy
        with self.transaction():
            self.emit(lock_wait_function(policy))
            self.emit(backfill_procedure())
        with self.outside_transaction():
            self.emit(
                template(
                    "backfill_call",
                    lock_timeout=self.lock_timeout,
                    job=literal(job),
                    actor=literal(actor),
                    batch_size=str(config.batch_size),
                    target_batch_ms=repr(float(config.target_batch_ms)),
                    min_batch_size=str(config.min_batch_size),
                    max_batch_size=str(config.max_batch_size),
                    batch_delay=_interval_ms(config.batch_delay_s),
                    max_sweeps=str(config.max_sweeps),
                    lock_attempts=str(policy.attempts),
                )
            )

    def cleanup(self, actor: str) -> None:
        with self.outside_transaction():
            self.emit(template("cleanup_call", lock_timeout=self.lock_timeout, actor=literal(actor)))

    # -- pg_cron ---------------------------------------------------------------

    def schedule_cron_jobs(self, mode: str) -> None:
        """What 0006's online upgrade does about pg_cron, decided when the script runs (sql/offline.sql)."""
        jobs = [
            {"job": cron.CLEANUP_JOB, "base": cron.CLEANUP_JOB, "schedule": None, "command": None},
            {
                "job": cron.PURGE_JOB,
                "base": cron.PURGE_JOB,
                "schedule": cron.PURGE_SCHEDULE,
                "command": cron.PURGE_COMMAND,
            },
        ]
        self.emit(
            template(
                "cron_schedule",
                mode=literal(mode),
                texts=jsonb(cron_texts()),
                extension_owner=extension_owner(),
                named_jobs_since=f"ARRAY[{', '.join(str(n) for n in NAMED_JOBS_SINCE)}]",
                missing_markers=text_array([f"%{marker}%" for marker in MISSING_MARKERS]),
                record_owned=record_owned_sql("extension", _MARK, self.revision).replace(literal(_MARK), "v_owned"),
                names_lock_key=str(cron.NAMES_LOCK_KEY),
                jobs=jsonb(jobs),
                record_job=textwrap.indent(
                    inline_binds(
                        cron.cron_sql("record_job"),
                        job="v_job.job",
                        jobname="v_name",
                        jobid="v_jobid",
                        cron_database="current_database()",
                        run_database="current_database()",
                        schedule="v_schedule",
                        command="v_command",
                    ),
                    " " * 8,
                ).lstrip(),
            )
        )

    # -- downgrades --------------------------------------------------------------------------------------

    def restore(self, actors: Sequence[str]) -> None:
        """Put back what ``actors`` logged (taskdb.backfill.restore): the procedure, then a CALL per actor."""
        with self.transaction():
            statement, using = restore_statement()
            self.emit(lock_wait_function(self.policy))
            self.emit(
                template(
                    "restore_procedure",
                    restore_batch=dollar_quote(statement, "taskdb_batch"),
                    restore_using=using,
                    lock_attempts=str(self.policy.attempts),
                )
            )
        with self.outside_transaction():
            for actor in actors:
                self.emit(
                    template(
                        "restore_call",
                        lock_timeout=self.lock_timeout,
                        actor=literal(actor),
                        batch_size=str(RESTORE_BATCH_SIZE),
                    )
                )

    def drop_indexes(self, revision: str, indexes: Sequence[Index]) -> None:
        """The indexes ``revision`` created (never one it adopted), each DROP INDEX CONCURRENTLY: marked by a
        rename in a short transaction first, so that the plain statement drops only what is taskdb's."""
        for index in indexes:
            dropping = f"taskdb_dropping_{index.name}"[:63]
            values = {
                "name_literal": literal(index.name),
                "owned_name": literal(f"{index.table}.{index.name}"),
                "revision": literal(revision),
            }
            with self.transaction():
                self.emit(template("index_mark", **values, name=index.name, dropping=dropping))
            with self.outside_transaction():
                self.emit(f"SET lock_timeout = {self.lock_timeout}")
                self.emit("SET statement_timeout = 0")
                self.emit(f"DROP INDEX CONCURRENTLY IF EXISTS {dropping}")
                self.emit("RESET statement_timeout")
                self.emit("RESET lock_timeout")
            with self.transaction():
                self.emit(template("index_forget", **values, dropping_literal=literal(dropping)))

    def drop_owned(self, revision: str, kinds: Sequence[str]) -> None:
        """What ``revision`` recorded of ``kinds`` (not_null, constraint, column, table), as the online
        downgrade drops it (taskdb.constraints.drop_owned, taskdb.adopt): one transaction."""
        with self.transaction():
            self.emit(template("drop_owned", revision=literal(revision), kinds=text_array(kinds)))

    def drop_constraints(self, table: str, names: Sequence[str]) -> None:
        with self.transaction():
            for name in names:
                self.emit(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {name}")

    def unschedule_cron_jobs(self, revision: str) -> None:
        with self.transaction():
            self.emit(
                template(
                    "cron_unschedule",
                    names_lock_key=str(cron.NAMES_LOCK_KEY),
                    purge_job=literal(cron.PURGE_JOB),
                    cleanup_jobs=cron.CLEANUP_JOBS_SQL,
                    revision=literal(revision),
                    extension_owner=extension_owner(),
                    sees_every_job=cron.cron_sql("sees_every_job"),
                    pg_cron_in_use=inline_binds(cron.cron_sql("pg_cron_in_use"), ours="v_removed"),
                )
            )


_MARK = "@@mark@@"


def inline_binds(sql: str, **values: str) -> str:
    """A statement of taskdb's with each ``:name`` bind replaced by a PL/pgSQL expression (every bind named)."""
    compiled = sa.text(sql).compile(dialect=psycopg.dialect(paramstyle="numeric_dollar"))
    order = tuple(compiled.positiontup or ())
    if set(order) != set(values):
        raise KeyError(f"binds {sorted(set(order))}, values for {sorted(values)}")
    return re.sub(r"\$(\d+)", lambda m: values[order[int(m.group(1)) - 1]], str(compiled))


def extension_owner() -> str:
    """taskdb.cron.extension_owner_name of the database the script runs in, as a SQL expression."""
    prefix = cron.extension_owner_name("")
    if cron.extension_owner_name(_MARK) != prefix + _MARK:
        raise RuntimeError("extension_owner_name is no longer a prefix and the database name")
    return f"{literal(prefix)} || current_database()"


def format_pattern(text: str) -> str:
    """A text made with ``@@1@@``, ``@@2@@``... for its values as a format() pattern: ``'@@1@@'`` (a Python
    repr) becomes ``%1$L``, a bare ``@@1@@`` ``%1$s``."""
    text = text.replace("%", "%%")
    text = re.sub(r"'@@(\d)@@'", r"%\1$L", text)
    return re.sub(r"@@(\d)@@", r"%\1$s", text)


def cron_texts() -> dict[str, str]:
    """taskdb.cron.readiness's texts, as the script's cron_schedule block fills them in when it runs."""
    one, two = "@@1@@", "@@2@@"
    texts = {
        "not_loaded": readiness.not_loaded(False),
        "not_loaded_no_files": readiness.not_loaded(True),
        "settings_denied": readiness.settings_denied(one, two),
        "cron_database_unset": readiness.cron_database_unset(None),
        "cron_database_denied": readiness.cron_database_unset(one),
        "unknown_cron_database": readiness.unknown_cron_database(one),
        "out_of_reach": readiness.out_of_reach(one),
        "out_of_reach_required": readiness.out_of_reach(one, required=True),
        "extension_files_missing": readiness.EXTENSION_FILES_MISSING,
        "too_old": readiness.too_old(one, two),
        "no_cron_schema_usage": readiness.no_cron_schema_usage(one, two),
        "refused": readiness.refused_problem(one, two, False),
        "refused_missing": readiness.refused_problem(one, two, True),
        "missing": readiness.how_to_enable(one, True),
        "unusable": readiness.how_to_enable(one, False),
        "failure": readiness.require_failure(one),
        "warning": readiness.upgrade_warning(one),
    }
    return {name: format_pattern(text) for name, text in texts.items()}


# -- the script around the revisions (migrations/env.py, offline mode) ------------------------------------


class VersionStatements:
    """The output buffer of --sql mode: makes Alembic's version-table statements idempotent, so that the script
    can run again (``CREATE TABLE IF NOT EXISTS taskdb_alembic_version``, or the configured name; the first
    revision inserted only into an empty table; the ``UPDATE ... WHERE version_num = <previous>`` already is)."""

    def __init__(self, target: TextIO, table: str = DEFAULT) -> None:
        self.target = target
        self.table = table  # a plain identifier (taskdb.version_table.validate): Alembic writes it unquoted
        self._create = re.compile(rf"^CREATE TABLE {table} \(")
        self._insert = re.compile(rf"^INSERT INTO {table} \(version_num\) VALUES \('([^']+)'\)[^;]*;\s*$")

    def write(self, text: str) -> int:
        stripped, table = text.strip(), self.table
        if stripped.startswith((f"INSERT INTO {table} ", f"UPDATE {table} ", f"DELETE FROM {table} ")):
            self.target.write(template("one_session", lock_key=_upgrade_lock_key()).strip() + "\n\n")
        if self._create.match(stripped):
            text = text.replace(f"CREATE TABLE {table}", f"CREATE TABLE IF NOT EXISTS {table}", 1)
        elif stripped.startswith(f"INSERT INTO {table} "):
            match = self._insert.match(stripped)
            if match is None:
                raise CommandError(f"taskdb cannot make this version statement idempotent: {stripped}")
            text = (
                f"INSERT INTO {table} (version_num) SELECT {literal(match.group(1))}\n"
                f"WHERE NOT EXISTS (SELECT 1 FROM {table});\n\n"
            )
        elif stripped.startswith(f"DROP TABLE {table}"):
            # Alembic's --sql drops the version table after a downgrade to base; online it stays (empty): so here
            return 0
        elif stripped.startswith(f"CREATE TABLE {table} "):
            raise CommandError(f"taskdb cannot make this version statement idempotent: {stripped}")
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


def _upgrade_lock_key() -> str:
    return str(UPGRADE_LOCK_KEY)


def script_version_table(context: MigrationContext) -> str:
    """taskdb's version table the script records in (migrations/env.py resolves the name)."""
    return str(context.opts.get("taskdb_version_table") or DEFAULT)


def script_schema(context: MigrationContext) -> str:
    """The queue's schema the script is for (``TASKDB_SCHEMA`` / ``-x schema=`` when generated, else public)."""
    return str(context.opts.get("taskdb_schema") or "public")


def begin_script(
    context: MigrationContext, script: ScriptDirectory, start: str | None, dest: Any, command: str = "upgrade"
) -> None:
    """The header, the schema, the upgrade lock and the guard that the database is where the script starts.
    ``command`` is what was asked for (upgrade or downgrade): a range going the other way is refused."""
    start = start or "base"
    dest = dest if isinstance(dest, str) and dest else "base"  # Alembic hands a downgrade to base as () / None
    for name in (start, dest):
        try:
            known = name in ("base", "head") or script.get_revision(name) is not None
        except Exception:  # Alembic's ResolutionError and friends: not a revision of this chain
            known = False
        if not known:
            raise CommandError(
                f"unknown revision {name!r} in the range {start}:{dest}; `taskdb history` lists "
                "the chain's revisions (e.g. taskdb sql base:head, taskdb sql 0003_backfill:head, "
                "taskdb sql --downgrade head:0004_constraints)"
            )
    downgrade, revisions = script_range(script, start, dest)
    if downgrade and command == "upgrade":
        raise CommandError(
            f"{start}:{dest} goes down the chain: for a downgrade script use `taskdb sql --downgrade {start}:{dest}`"
        )
    if not downgrade and command == "downgrade":
        if revisions:
            raise CommandError(f"{start}:{dest} goes up the chain: for an upgrade script leave out --downgrade")
        downgrade = True  # X:X asked of a downgrade: an empty downgrade script
    policy = LockPolicy.from_env()
    out = context.impl.static_output
    if downgrade:
        out(
            textwrap.dedent(f"""\
            -- taskdb offline downgrade: {start} -> {dest} (generated by `taskdb sql --downgrade {start}:{dest}`)
            --
            -- What it restores and drops: `taskdb downgrade {dest} --plan` on the database (read-only).
            -- Review, then apply with:  psql -v ON_ERROR_STOP=1 -X -f downgrade.sql  (as the role that owns the tables)
            -- Plain SQL, no psql meta-commands, idempotent like the upgrade script: after a failure fix the cause and
            -- run it again. Each revision restores from task_hygiene_log the values it changed (only where the
            -- application has not changed them since), one committed batch at a time, then drops what it created
            -- (taskdb_owned_objects: never an adopted table, column, constraint or index; a table holding rows is
            -- kept). DDL in short transactions under SET LOCAL lock_timeout = '{policy.lock_timeout_ms}ms' (no retries:
            -- rerun); indexes DROP INDEX CONCURRENTLY. pg_cron jobs are removed only where pg_cron keeps them in this
            -- database (cron.database_name); elsewhere a NOTICE says what to run there.""")
        )
    else:
        head = revisions[-1] if revisions else start
        out(
            textwrap.dedent(f"""\
            -- taskdb offline upgrade: {start} -> {head} (generated by `taskdb sql {start}:{dest}`)
            --
            -- Review, then apply with:  psql -v ON_ERROR_STOP=1 -X -f upgrade.sql  (as the role that owns the tables)
            -- Plain SQL, no psql meta-commands. It reads the catalog when it RUNS, so it works on an empty, a legacy
            -- or a half-migrated database, and it is idempotent: after a failure (a lock timeout, a killed session),
            -- fix the cause and run it again; it resumes (the backfill from its checkpoint) and changes nothing twice.
            -- DDL runs in short transactions under SET LOCAL lock_timeout = '{policy.lock_timeout_ms}ms' (no retries:
            -- a lock timeout stops the script; rerun it); CREATE INDEX CONCURRENTLY, the backfill and the cleanup
            -- run outside transaction blocks. Generated with TASKDB_LOCK_TIMEOUT_MS / TASKDB_BACKFILL_BATCH_SIZE /
            -- TASKDB_BACKFILL_DELAY_MS / TASKDB_LOCK_ATTEMPTS / TASKDB_CRON / TASKDB_SCHEMA from the environment.""")
        )
    schema = quote_ident(script_schema(context))
    out(
        textwrap.dedent(f"""\
        -- The queue is tasks in schema {schema}: every name below resolves there, and every object is created
        -- there. For this session only (like the upgrade lock, the script needs one session); RESET at the end.
        SET search_path = {schema}, pg_temp;""")
    )
    named = context.opts.get("taskdb_schema") is not None
    out(
        template(
            "schema_guard",
            schema=literal(script_schema(context)),
            schema_ident=literal(schema),
            named="true" if named else "false",
        ).strip()
    )
    out(template("upgrade_lock", lock_key=_upgrade_lock_key()).strip())
    versions = script_version_table(context)
    out(
        template(
            "adopt_version",
            ours=text_array(taskdb_revisions(script)),
            create=create_sql(versions),
            version_table=versions,
            version_table_literal=literal(versions),
        ).strip()
    )
    if downgrade:
        allowed = revisions + ([] if dest == "base" else [dest])
        out(
            template(
                "downgrade_guard",
                allowed=text_array(allowed),
                to_base="true" if dest == "base" else "false",
                start=literal(revisions[0] if revisions else start),
                dest=literal(dest),
                version_table=versions,
                version_table_literal=literal(versions),
            ).strip()
        )
        return
    allowed = ([] if start == "base" else [start]) + revisions
    out(
        template(
            "version_guard",
            allowed=text_array(allowed),
            from_base="true" if start == "base" else "false",
            start=literal(start),
            dest=literal(head),
            version_table=versions,
            version_table_literal=literal(versions),
        ).strip()
    )


def script_range(script: ScriptDirectory, start: str, dest: str) -> tuple[bool, list[str]]:
    """Whether ``start:dest`` is a downgrade, and the revisions the script runs (in the order it runs them)."""
    if start != "base" and (dest == "base" or _below(script, dest, start)):
        return True, [r.revision for r in script.iterate_revisions(start, dest) if r.revision != dest]
    revisions = [r.revision for r in script.iterate_revisions(dest, start)]
    revisions.reverse()
    return False, revisions


def _below(script: ScriptDirectory, lower: str, upper: str) -> bool:
    try:
        return lower != upper and any(True for _ in script.iterate_revisions(upper, lower))
    except RevisionError:
        return False


def end_script(context: MigrationContext) -> None:
    context.impl.static_output(template("upgrade_unlock", lock_key=_upgrade_lock_key()).strip())
    context.impl.static_output("RESET search_path;")
