"""What both benchmark scripts write the same way: the machine line and their section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """'2 cores (AMD EPYC ...), 24 GiB': what the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB"


def write_section(path: Path, name: str, section: str) -> None:
    """Replace the section between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (append it when absent),
    keeping everything else in the file: each script owns its section, the notes around them stay."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
