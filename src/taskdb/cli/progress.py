"""Where the log goes: a live progress bar for the backfill on a terminal, one plain line per record otherwise.

The backfill logs one record per batch carrying ``taskdb_progress`` ({job, done, total}); this module
only decides how to show it (the figures come from the library).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import TaskID

FORMAT = "%(levelname)-5s [%(name)s] %(message)s"


class ProgressBarHandler(logging.Handler):
    """Draws one bar per backfill job and prints every other record above the bars."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self.jobs: dict[str, TaskID] = {}
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            figures = getattr(record, "taskdb_progress", None)
            if figures is None:
                self.progress.console.print(self.format(record), markup=False, highlight=False)
                return
            if figures["job"] not in self.jobs:
                self.progress.start()
                self.jobs[figures["job"]] = self.progress.add_task(f"backfill {figures['job']}", total=figures["total"])
            self.progress.update(self.jobs[figures["job"]], completed=figures["done"], total=figures["total"])
        except Exception:  # a display problem must never fail an upgrade
            self.handleError(record)

    def close(self) -> None:
        self.progress.stop()
        super().close()


def setup_logging(stream: TextIO = sys.stderr, *, verbose: bool = False, progress: bool = True) -> logging.Handler:
    """The log to ``stream``: a progress bar when it is a terminal, plain lines when it is not (CI logs).

    Quiet by default: warnings and errors, plus taskdb's own INFO lines (revision, batch, what changed) for a
    command that changes the database (``progress``). ``verbose`` adds every INFO line, Alembic's included
    (``Context impl PostgresqlImpl.``, ``Running upgrade ...``)."""
    handler: logging.Handler
    if stream.isatty():
        handler = ProgressBarHandler(stream)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=logging.INFO if verbose or progress else logging.WARNING, handlers=[handler])
    logging.getLogger("alembic").setLevel(logging.INFO if verbose else logging.WARNING)
    return handler
