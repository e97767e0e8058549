"""What machine this is, in the words results are labelled with: :func:`cpu_name` and
:func:`usable_cores`. Standard library only: the deploy benchmark (:mod:`pf_deploy.benchmark`),
which runs on boards with nothing but onnxruntime and numpy, uses it too.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (x86's ``model name``, ARM's ``Hardware``,
    ``CPU model`` or ``CPU part``), else ``platform.processor()``, else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":")[0].strip().lower()
            if key in ("model name", "hardware", "cpu model"):
                return line.split(":", 1)[1].strip()
            if key == "cpu part":
                return f"ARM part {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
