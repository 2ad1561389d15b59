"""The `taskdb` command: parses, calls the library, prints. No logic of its own.

One module per group of commands; each has ``register(subparsers)`` that adds its parsers and sets
``run`` (and ``needs_url``) as defaults. Exit codes: 0 done, 1 failed, 2 usage or connection,
3 lock retries exhausted / another upgrade running (``doctor``: 0 healthy, 1 warnings, 2 cannot check).
"""

from taskdb.cli.main import main

__all__ = ["main"]
