"""What the commands share: a connection from a URL, and printing a result for people or machines."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection

from taskdb.db import connect, create_engine

EXAMPLES = argparse.RawDescriptionHelpFormatter


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


@contextmanager
def connection(url: str) -> Iterator[Connection]:
    """An AUTOCOMMIT connection: every library call opens the short transactions it needs."""
    engine = create_engine(url)
    try:
        with connect(engine).execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn
    finally:
        engine.dispose()


def emit(result: dict[str, Any], *, as_json: bool) -> None:
    """One JSON object (sorted keys), or an indented key: value listing."""
    if as_json:
        print(json.dumps(result, default=str, sort_keys=True))
        return
    for key, value in result.items():
        if isinstance(value, list):
            print(f"{key}:")
            for item in value:
                print("  " + (", ".join(f"{k}={v}" for k, v in item.items()) if isinstance(item, dict) else str(item)))
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
