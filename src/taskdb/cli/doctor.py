"""`taskdb doctor`: health checks for monitoring and CI gates (the library's taskdb.doctor, printed)."""

from __future__ import annotations

import argparse

from taskdb import doctor
from taskdb.cli.common import EXAMPLES, add_json_flag, connection, print_json
from taskdb.config import redact, resolve_url
from taskdb.errors import ConfigError, ConnectError, TargetRefused

# --fail-on: the least severe finding that fails the command
FAIL_ON = ("warning", "error")

# queue_health figures the summary line shows, with their labels
SUMMARY_FIGURES = (
    ("queued_total", "queued"),
    ("claimable_cloud", "claimable cloud"),
    ("claimable_local", "claimable local"),
    ("stale_count", "stale"),
    ("flagged_count", "flagged"),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "doctor",
        help="health checks for monitoring and CI gates: exit 0 healthy, 1 warnings, 2 cannot check",
        description="Read-only checks: Queued tasks older than stale_after; the pg_cron cleanup job missing, "
        "inactive or late (or pg_cron unavailable); flagged tasks that are Queued; constraints on tasks NOT "
        "VALID or missing; INVALID indexes on tasks; the database revision behind head. One line per finding "
        "(what is wrong -> what to do), then a summary line.",
        epilog="Examples:\n  taskdb doctor\n  taskdb doctor --json | jq '.findings[].message'\n"
        "  taskdb doctor --json > doctor.json   # CI gate: any non-zero exit fails the job\n"
        "  taskdb doctor --fail-on error        # deploy gate: warnings printed, only errors fail\n\n"
        "Exit codes: 0 healthy, 1 warnings (0 with --fail-on error), 2 cannot check (no URL, unreachable, "
        "not upgraded).",
        formatter_class=EXAMPLES,
    )
    add_json_flag(parser)
    parser.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        default="warning",
        help="the least severe finding that makes the exit non-zero: warning (default: exit 1 on warnings) or "
        "error (warnings still printed, exit 0; for a deploy gate right after an upgrade, when Queued tasks may "
        "be stale but not yet old enough to cancel)",
    )
    # The URL is resolved here, not by main: "no URL" and "unreachable" are answers (exit 2, JSON) too.
    parser.set_defaults(run=run, needs_url=False)


def run(args: argparse.Namespace, url: str | None) -> int:
    report = _diagnose(args.url)
    code = exit_code(report, args.fail_on)
    if args.json:
        print_json({**report.as_dict(), "exit_code": code})
    else:
        print("\n".join(render(report)))
    return code


def exit_code(report: doctor.Report, fail_on: str) -> int:
    """0 healthy, 1 warnings (0 with ``--fail-on error``), 2 cannot check."""
    return 0 if fail_on == "error" and report.exit_code == 1 else report.exit_code


def _diagnose(explicit_url: str | None) -> doctor.Report:
    resolved: str | None = None
    try:
        resolved = resolve_url(explicit_url)
        with connection(resolved, "taskdb doctor") as conn:
            return doctor.diagnose(conn)
    except (ConfigError, ConnectError, TargetRefused) as exc:
        return doctor.cannot_connect(redact(str(exc), resolved or explicit_url))


def render(report: doctor.Report) -> list[str]:
    lines = [f"{f.severity}: {f.check}: {f.message} -> {f.fix}" for f in report.findings]
    where = ", ".join(
        part
        for part in (
            f"database {report.database}" if report.database else "",
            f"revision {report.revision}" if report.revision else "",
        )
        if part
    )
    figures = ", ".join(
        f"{label} {report.queue_health[key]}" for key, label in SUMMARY_FIGURES if key in report.queue_health
    )
    checks = f"{len(report.checked)} checks ({', '.join(report.checked)})"
    verdict = {
        "ok": f"healthy: {checks} passed",
        "warning": f"{len(report.findings)} warning(s) from {checks}",
        "error": f"cannot check: {checks} ran",
    }[report.status]
    context = "; ".join(part for part in (where, figures) if part)
    lines.append(f"taskdb doctor: {verdict}" + (f"; {context}" if context else "") + f"; exit {report.exit_code}")
    return lines
