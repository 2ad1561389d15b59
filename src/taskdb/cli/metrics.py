"""`taskdb metrics`: the queue's health for Prometheus (the library's taskdb.metrics, served or printed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskdb import metrics
from taskdb.cli.common import EXAMPLES
from taskdb.metrics.collector import DEFAULT_TIMEOUT_SECONDS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "metrics",
        help="Prometheus metrics of the queue: serve /metrics, print one scrape, or write a textfile",
        description="Read-only. Each scrape is one READ ONLY transaction (one query, lock and statement timeouts "
        "SET LOCAL) as a role granted taskdb_monitor (README, Monitoring); a failed scrape still answers, with "
        "taskdb_up 0, and its error is logged once.",
        epilog="Examples:\n  taskdb metrics --listen 127.0.0.1:9469\n  taskdb metrics --once\n"
        "  taskdb metrics --textfile /var/lib/prometheus/node-exporter/taskdb.prom   # a cron line\n\n"
        "Exit codes: --listen 0 when stopped (SIGTERM, Ctrl-C), 2 when it cannot listen; --once and "
        "--textfile 0 when the database was read, 1 when not (the scrape, taskdb_up 0, is printed or written "
        "all the same), 2 usage.",
        formatter_class=EXAMPLES,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listen", metavar="HOST:PORT", help="serve /metrics on this address until stopped")
    mode.add_argument("--once", action="store_true", help="print one scrape to stdout")
    mode.add_argument(
        "--textfile",
        metavar="PATH",
        type=Path,
        help="write one scrape to PATH atomically, for node_exporter's textfile collector (name it *.prom)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"the longest a scrape waits for a lock and runs (default {DEFAULT_TIMEOUT_SECONDS:g}; keep it "
        "below Prometheus' scrape_timeout)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, url: str) -> int:
    if args.timeout <= 0:
        print("taskdb: metrics: --timeout must be positive", file=sys.stderr)
        return 2
    if args.listen:
        metrics.serve(url, args.listen, timeout_seconds=args.timeout)
        return 0
    if args.once:
        text, read = metrics.once(url, timeout_seconds=args.timeout)
        sys.stdout.write(text)
        return 0 if read else 1
    return 0 if metrics.textfile(url, args.textfile, timeout_seconds=args.timeout) else 1
