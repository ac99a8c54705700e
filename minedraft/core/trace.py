"""The per-step trace: one typed record per engine step of the PSD scheduler, and its one reader.

The scheduler (minedraft.vllm_ext.scheduler) appends one JSON line per step; bench, the stat
logger behind /metrics, the profiler, the plots and `auto` read it through `read_trace` or
`TraceTail`. Times are milliseconds, timestamps are `time.perf_counter()` seconds of the
engine-core process.
"""

from __future__ import annotations

import os
import statistics

import msgspec

STEP_KINDS = ("psd", "sequential", "none")


class StepRecord(msgspec.Struct, omit_defaults=True):
    """One engine step.

    kind: "psd" (one sub-batch verified while the other is drafted), "sequential" (drafted, then
    verified in the same step: sd-ext, a single request, pipeline start) or "none" (no drafts:
    the drafter is down, or `auto` chose plain decoding)."""

    step: int = 0
    start_s: float = 0.0  # when schedule() began
    step_ms: float = 0.0  # until the next step began (or the engine went idle)
    kind: str = "none"
    k: int = 0  # draft tokens asked per request this step
    verify: int = 0  # requests verified
    draft: int = 0  # requests in the drafter round sent this step
    held: int = 0  # decoding requests neither verified nor drafted (balance, pipeline)
    catch_up: int = 0  # requests drafted (sequentially) before this step's verification
    overlapped: bool = False  # the round ran while the target verified
    sides: tuple[int, int] = (0, 0)
    drafter_up: bool = False
    restarts: int = 0  # drafter restarts (or reconnections) attempted so far
    failures: int = 0  # failed drafter attempts in a row (0 while it answers)
    tokens: int = 0  # tokens the target computed this step (prefills included)
    drafted_tokens: int = 0  # draft tokens verified this step
    accepted_tokens: int = 0  # of which accepted
    verify_start_s: float | None = None
    verify_ms: float | None = None  # the target's forward + sampling (schedule end -> update)
    sched_ms: float = 0.0  # inside schedule() (MineDraft's step logic and vLLM's scheduler)
    parent_ms: float = 0.0  # of which vLLM's own schedule()
    update_ms: float = 0.0  # inside update_from_output()
    send_s: float | None = None  # when the round drafting for this step was sent
    draft_ms: float | None = None  # the drafter's wall time for the rounds this step sent
    forward_ms: float | None = None  # of which its model's forward passes
    wait_ms: float = 0.0  # this step's schedule() blocked for drafts (last round or catch-up)
    drafter_holds: int | None = None  # request histories the drafter held after that round


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StepRecord)


def encode_record(record: StepRecord) -> bytes:
    """One JSON line (with its newline)."""
    return _encoder.encode(record) + b"\n"


def overlap_efficiency(r: StepRecord) -> float:
    """max(draft, verify) / step, at most 1 (1 = the step cost no more than its slower half)."""
    if not r.step_ms or r.verify_ms is None:
        return 0.0
    return min(1.0, max(r.draft_ms or 0.0, r.verify_ms) / r.step_ms)


def trace_size(path: str | None) -> int:
    """Bytes in the trace file so far (0 if there is none): an offset for `read_trace`."""
    return os.path.getsize(path) if path and os.path.exists(path) else 0


def _decode_lines(lines) -> list[StepRecord]:
    out = []
    for line in lines:
        if line.strip():
            try:
                out.append(_decoder.decode(line))
            except msgspec.DecodeError:  # a line cut by a crash: skip it
                continue
    return out


def read_trace(path: str | None, offset: int = 0) -> list[StepRecord]:
    """Records written after byte `offset` (so one file can serve several runs)."""
    if not path or not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        return _decode_lines(f.read().split(b"\n"))


class TraceTail:
    """The records appended to a trace file since the last `read()` (complete lines only)."""

    def __init__(self, path: str | None, from_start: bool = False):
        self.path = path
        self.offset = 0 if from_start else trace_size(path)
        self.partial = b""

    def read(self) -> list[StepRecord]:
        """The complete records appended since the last call (a partial last line waits for the
        next call)."""
        if not self.path or not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
            self.offset = f.tell()
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()  # b"" when the data ended with a newline
        return _decode_lines(lines)


def trace_metrics(records: list[StepRecord]) -> dict:
    """Summary of the steps that verified something: mean draft, verify and step times (ms),
    overlap efficiency, share of overlapped steps, requests verified per step, largest sub-batch
    imbalance, drafter restarts, steps per kind and per k.

    overlap_efficiency: total max(draft, verify) / total step time over every verifying step,
    the share of wall time that the slower of drafting and verification accounts for (a ratio of
    sums: a step that waits for the previous step's slower round is not counted against itself,
    as the per-step ratio would); overlap_efficiency_per_step: the mean of the per-step ratio.
    Sequential steps (sd-ext, a run's last request) count with max(draft, verify) too, so their
    share is reported (`steps_per_kind`)."""
    steps = [r for r in records if r.verify and r.step_ms and r.verify_ms is not None]
    if not steps:
        return {}
    drafted = [r for r in steps if r.draft_ms is not None]
    forwards = [r for r in drafted if r.forward_ms is not None]
    return {
        "num_steps": len(steps),
        "mean_draft_ms": statistics.fmean(r.draft_ms for r in drafted) if drafted else 0.0,
        "mean_draft_forward_ms": statistics.fmean(r.forward_ms for r in forwards)
        if forwards else 0.0,
        "mean_verify_ms": statistics.fmean(r.verify_ms for r in steps),
        "mean_step_ms": statistics.fmean(r.step_ms for r in steps),
        "mean_max_draft_verify_ms": statistics.fmean(
            max(r.draft_ms or 0.0, r.verify_ms) for r in steps),
        "overlap_efficiency": sum(max(r.draft_ms or 0.0, r.verify_ms) for r in steps)
        / sum(r.step_ms for r in steps),
        "overlap_efficiency_per_step": statistics.fmean(overlap_efficiency(r) for r in steps),
        "overlapped_step_share": sum(r.overlapped for r in steps) / len(steps),
        "mean_verified_per_step": statistics.fmean(r.verify for r in steps),
        "max_side_imbalance": max(abs(r.sides[0] - r.sides[1]) for r in steps),
        "drafter_restarts": max(r.restarts for r in records),
        "steps_per_kind": {kind: sum(r.kind == kind for r in steps) for kind in STEP_KINDS},
        "steps_per_k": {str(k): sum(r.k == k for r in steps)
                        for k in sorted({r.k for r in steps})},
    }
