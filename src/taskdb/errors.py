"""One exception family. Each error's docstring is its default message; typed errors carry fields."""

from __future__ import annotations


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
        who = "; ".join(
            f"pid {b['pid']} ({b['application_name'] or 'no application_name'}, {b['state']}, "
            f"transaction open {b['xact_age']}, holds {b['mode']} on {b['relation']})"
            for b in blockers
        ) or "no blocking session found any more"
        super().__init__(
            f"Failed after {attempts} attempts to take the lock for: {statement.strip().splitlines()[0]} "
            f"-- blocked by: {who}. Nothing half-done is left; rerun when the blocker is gone."
        )


class UpgradeInProgress(TaskdbError):
    """Another taskdb upgrade holds the upgrade lock on this database."""

    exit_code = 3


class ConstraintViolated(TaskdbError):
    """Rows violate a constraint taskdb is validating."""

    def __init__(self, table: str, constraint: str, sample_ids: list[str]) -> None:
        self.table, self.constraint, self.sample_ids = table, constraint, sample_ids
        super().__init__(
            f"table {table!r}: rows violate {constraint} (e.g. ids {', '.join(sample_ids) or '?'}); "
            "nothing was deleted; the constraint stays NOT VALID, so new rows are already checked. "
            "Fix or flag these rows, then rerun the upgrade."
        )
