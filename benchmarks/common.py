"""What the benchmark scripts share."""

from __future__ import annotations

import platform
import re
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(title: str, section: str) -> None:
    """Put `section` (which starts with "## title") into benchmarks/README.md, replacing the old one."""
    readme = Path(__file__).resolve().parent / "README.md"
    body = readme.read_text() if readme.exists() else "# Benchmarks\n"
    if f"## {title}\n" in body:
        body = re.sub(rf"## {re.escape(title)}\n.*?(?=\n## |\Z)", lambda _: section, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + section
    readme.write_text(body)
