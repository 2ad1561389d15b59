"""One exception family. Each error's docstring is its default message; typed errors carry fields."""

from __future__ import annotations

import traceback


class TaskdbError(Exception):
    """taskdb failed."""

    #: process exit code the CLI uses for this error
    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(TaskdbError):
    """taskdb is not configured: no database URL."""

    exit_code = 2


class ConnectError(TaskdbError):
    """Cannot connect to the database."""

    exit_code = 2


class SchemaMismatch(TaskdbError):
    """An existing table does not have the shape taskdb needs."""

    def __init__(self, table: str, column: str, problem: str) -> None:
        self.table, self.column, self.problem = table, column, problem
        super().__init__(f"table {table!r}, column {column!r}: {problem}; nothing was changed")


class LockRetriesExhausted(TaskdbError):
    """Could not take a lock within the retry budget."""

    exit_code = 3

    def __init__(self, statement: str, attempts: int, blockers: list[dict[str, object]]) -> None:
        self.statement, self.attempts, self.blockers = statement, attempts, blockers
        who = (
            "; ".join(
                f"pid {b['pid']} ({b['application_name'] or 'no application_name'}, {b['state']}, "
                f"transaction open {b['xact_age']}, holds {b['mode']} on {b['relation']})"
                for b in blockers
            )
            or "no blocking session found any more"
        )
        super().__init__(
            f"Failed after {attempts} attempts to take the lock for: {statement.strip().splitlines()[0]} "
            f"-- blocked by: {who}. Nothing half-done is left (an INVALID index an interrupted CREATE INDEX "
            "CONCURRENTLY leaves is rebuilt by the rerun); rerun when the blocker is gone."
        )


class StatementTimedOut(TaskdbError):
    """A statement ran longer than the session's statement_timeout."""

    def __init__(self, statement: str, limit: str, *, ours: bool) -> None:
        self.statement, self.limit = statement, limit
        what = f"`{statement.strip().splitlines()[0][:160]}`"
        if ours:
            fix = (
                f"{what} was cancelled by statement_timeout = {limit} (TASKDB_STATEMENT_TIMEOUT_MS). Raise it, or "
                "set 0 for no limit, then rerun: the upgrade resumes."
            )
        else:
            fix = (
                f"{what} was cancelled by statement_timeout = {limit}, a default of the role or database: it runs "
                "outside a transaction, where taskdb cannot set its own timeout. Lift it for the role that "
                "upgrades (ALTER ROLE ... SET statement_timeout = 0), then rerun: the upgrade resumes."
            )
        super().__init__(fix)


class ReplicaLagTooHigh(TaskdbError):
    """A streaming replica stayed too far behind for longer than taskdb may wait."""

    exit_code = 3

    def __init__(self, before: str, lag: str, waited_s: float) -> None:
        self.before, self.lag, self.waited_s = before, lag, waited_s
        super().__init__(
            f"throttled before {before} for {waited_s:.0f} s (TASKDB_MAX_THROTTLE_WAIT_S): {lag}. Nothing half-done "
            "is left; rerun once the replica has caught up (a backfill resumes from its checkpoint), or raise "
            "TASKDB_MAX_REPLICA_LAG_MS (0: do not throttle)."
        )


class UpgradeInProgress(TaskdbError):
    """Another taskdb upgrade holds the upgrade lock on this database."""

    exit_code = 3


class UpgradeLockLost(TaskdbError):
    """The session holding the upgrade lock ended while the upgrade ran."""


class ReadOnlyTarget(TaskdbError):
    """The database is a standby or read-only: taskdb changes only a primary."""

    exit_code = 2


class TargetRefused(TaskdbError):
    """taskdb cannot tell, or does not support, the tasks table the connection points at."""

    exit_code = 2


class ConstraintViolated(TaskdbError):
    """Rows violate a constraint taskdb is validating."""

    def __init__(self, table: str, constraint: str, sample_ids: list[str]) -> None:
        self.table, self.constraint, self.sample_ids = table, constraint, sample_ids
        super().__init__(
            f"table {table!r}: rows violate {constraint} (e.g. ids {', '.join(sample_ids) or '?'}); "
            "nothing was deleted; the constraint stays NOT VALID, so new rows are already checked. "
            "Fix or flag these rows, then rerun the upgrade."
        )


class ConnectionLost(TaskdbError):
    """The server ended the database session while taskdb was using it."""

    def __init__(
        self, reason: str, *, revision: str | None = None, step: str | None = None, statement: str | None = None
    ) -> None:
        self.reason, self.revision, self.step, self.statement = reason, revision, step, statement
        where = "".join(
            (
                f" in revision {revision}" if revision else "",
                f", step {step}" if step else "",
                f" running `{statement}`" if statement else "",
            )
        )
        super().__init__(
            f"the database connection was lost{where}: {reason}. The server ended the session "
            "(pg_terminate_backend by an administrator, a restart, a failover or a timeout): what had committed "
            "stays and the statement that was running was rolled back. Rerun the same command: it resumes "
            "where it stopped."
        )


# SQLSTATEs with which the server ends a session: admin_shutdown (pg_terminate_backend, fast shutdown),
# crash_shutdown, cannot_connect_now, idle_session_timeout, idle_in_transaction_session_timeout; and
# class 08, connection exceptions.
SESSION_ENDED = frozenset({"57P01", "57P02", "57P03", "57P05", "25P03"})


def connection_lost(exc: BaseException) -> ConnectionLost | None:
    """The :class:`ConnectionLost` behind ``exc``; None when ``exc`` is not about a lost connection.

    Cleanup code that runs on the dead connection (``finally`` blocks that RESET a setting, ROLLBACK,
    release the upgrade lock, Alembic's own COMMIT) raises again on top of the driver's error, so the
    whole chain (``__cause__`` and ``__context__``) is searched, and its tracebacks say which revision
    was running.
    """
    chain = _chain(exc)
    found = next((e for e in chain if isinstance(e, ConnectionLost)), None)
    if found is not None:
        return found
    ended = [e for e in chain if _ends_session(e)]
    if not ended:
        return None
    # the driver error as SQLAlchemy wrapped it (it knows the statement), the original one first
    lost = next((e for e in reversed(ended) if hasattr(e, "orig")), ended[-1])
    revision, function = _running_revision(chain)
    return ConnectionLost(_reason(lost), revision=revision, step=function, statement=_statement(lost))


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in chain):
            continue
        chain.append(e)
        todo += [e.__cause__, e.__context__]
    return chain


def _ends_session(exc: BaseException) -> bool:
    from taskdb.db import sqlstate  # taskdb.db imports this module

    if getattr(exc, "connection_invalidated", False):  # SQLAlchemy saw a disconnect
        return True
    code = sqlstate(exc) or ""
    return code in SESSION_ENDED or code.startswith("08")


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    for arg in getattr(orig, "args", ()):  # pg8000: the server's error fields as a dict
        if isinstance(arg, dict) and arg.get("M"):
            return str(arg["M"])
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _statement(exc: BaseException) -> str | None:
    """The one-line statement (DDL) that was running; None for a long query such as a backfill batch, and
    for the session bookkeeping (SET, COMMIT...) that merely found the session gone."""
    lines = [
        line.strip()
        for line in str(getattr(exc, "statement", None) or "").splitlines()
        if line.strip() and not line.strip().startswith(("--", "/*"))  # comments (the lock watchdog's tag)
    ]
    if len(lines) != 1 or lines[0].split()[0].upper() in ("SET", "RESET", "BEGIN", "COMMIT", "ROLLBACK", "SELECT"):
        return None
    return lines[0][:160]


def _running_revision(chain: list[BaseException]) -> tuple[str | None, str | None]:
    """The revision whose upgrade()/downgrade() was on the stack, and the step it was running (taskdb.steps: the
    one announced last, named as the plan names it) or else the library function it had called. The chain's
    errors each hold part of the stack (a cleanup's error does not reach down to the step), so all are searched."""
    from taskdb.steps import Online

    tracebacks = [[frame for frame, _ in traceback.walk_tb(exc.__traceback__)] for exc in reversed(chain)]
    # the runner of the steps (taskdb.steps.Online), in any error that reached down to it
    runners = (frame.f_locals.get("self") for frames in tracebacks for frame in frames)
    runner = next((r for r in runners if isinstance(r, Online) and r.current is not None), None)
    # from the original error: later ones may be raised by cleanup (__exit__)
    for frames in tracebacks:
        for i, frame in enumerate(frames):
            names = frame.f_globals
            if (
                frame.f_code.co_name in ("upgrade", "downgrade")
                and "down_revision" in names
                and isinstance(names.get("revision"), str)
            ):
                if runner is not None and runner.current is not None:
                    return names["revision"], runner.current.what
                callee = frames[i + 1].f_code.co_name if i + 1 < len(frames) else None
                return names["revision"], (f"{callee}()" if callee else None)
    return None, None
