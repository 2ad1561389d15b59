"""What the commands share: a connection from a URL, and printing a result for people or machines."""

from __future__ import annotations

import argparse
import json
from typing import Any

from taskdb import target

EXAMPLES = argparse.RawDescriptionHelpFormatter


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


# An AUTOCOMMIT connection from a URL, pinned to the queue's schema (taskdb.target): every library call opens
# the short transactions it needs.
connection = target.connection


def print_json(result: Any) -> None:
    """The one JSON shape of every ``--json``: one object on one line, sorted keys, anything else as text."""
    print(json.dumps(result, default=str, sort_keys=True))


def emit(result: dict[str, Any], *, as_json: bool) -> None:
    """One JSON object (sorted keys), or an indented key: value listing."""
    if as_json:
        print_json(result)
        return
    for key, value in result.items():
        if isinstance(value, list):
            print(f"{key}:")
            for item in value:
                print(
                    "  "
                    + (", ".join(f"{k}={human(v)}" for k, v in item.items()) if isinstance(item, dict) else human(item))
                )
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {human(v)}")
        else:
            print(f"{key}: {human(value)}")


def human(value: Any) -> str:
    """A value as people read it: yes/no, none, never Python's True/False/None."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
