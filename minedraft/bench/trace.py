"""Per-step PSD trace (written by minedraft.scheduler) and its summary for `bench`."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path


def trace_size(path: str | None) -> int:
    return os.path.getsize(path) if path and os.path.exists(path) else 0


def read_trace(path: str | None, offset: int = 0) -> list[dict]:
    """Trace lines written after byte `offset` (so one file can serve several runs)."""
    if not path or not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as f:
        f.seek(offset)
        return [json.loads(line) for line in f if line.strip()]


def trace_metrics(records: list[dict]) -> dict:
    """Mean draft, verify and step times of the steps that verified something, and the overlap
    efficiency: mean of max(draft, verify) / step (1.0 = the step cost no more than the slower
    of its two halves)."""
    steps = [r for r in records if r.get("verify") and "step_ms" in r and "verify_ms" in r]
    if not steps:
        return {}
    drafted = [r for r in steps if "draft_ms" in r]
    sides = [abs(r["sides"][0] - r["sides"][1]) for r in steps if "sides" in r]
    return {
        "num_steps": len(steps),
        "mean_draft_ms": statistics.fmean(r["draft_ms"] for r in drafted) if drafted else 0.0,
        "mean_verify_ms": statistics.fmean(r["verify_ms"] for r in steps),
        "mean_step_ms": statistics.fmean(r["step_ms"] for r in steps),
        "overlap_efficiency": statistics.fmean(
            min(1.0, max(r.get("draft_ms", 0.0), r["verify_ms"]) / r["step_ms"]) for r in steps),
        "overlapped_step_share": sum(bool(r.get("overlapped")) for r in steps) / len(steps),
        "mean_verified_per_step": statistics.fmean(r["verify"] for r in steps),
        "max_side_imbalance": max(sides) if sides else 0,
        "drafter_restarts": max(r.get("restarts", 0) for r in records),
    }
