"""Per repeat of the map's cells at 1, 2 and 4 in flight (one engine's trace, in that order):
steps, wall time, the time in steps that also prefill prompts and in steps that just decode,
the latter's batch sizes, and the choices made. A repeat is a run of steps without a 0.5 s gap
(its warm-up of 4 requests, 8 tokens, included); those of 40 or more steps whose largest batch
is 3 or 4 are these cells' (the next cell, 8 in flight, has 8).

    .venv/bin/python benchmarks/regimes_xeon/small_batch/cells.py TRACE [TRACE ...]
"""

from __future__ import annotations

import collections
import sys

from minedraft.core.trace import read_trace


def repeats(records):
    """Runs of steps with no gap over 0.5 s between one's end and the next's start."""
    run = []
    for r in records:
        if run and r.start_s - (run[-1].start_s + run[-1].step_ms / 1e3) > 0.5:
            yield run
            run = []
        run.append(r)
    if run:
        yield run


def main() -> None:
    for path in sys.argv[1:]:
        print(path)
        for run in repeats(read_trace(path)):
            if len(run) < 40 or max(r.verify for r in run) not in (3, 4):
                continue
            wall = run[-1].start_s + run[-1].step_ms / 1e3 - run[0].start_s
            prefill = [r for r in run if r.tokens > r.verify + r.drafted_tokens]
            decode = [r for r in run if r.tokens <= r.verify + r.drafted_tokens]
            choices = collections.Counter(f"{r.kind}:{r.k}" for r in run)
            print(f"  steps {len(run)}  wall {wall:.2f} s  prefill steps {len(prefill)} "
                  f"{sum(r.step_ms for r in prefill) / 1e3:.2f} s  decode steps {len(decode)} "
                  f"{sum(r.step_ms for r in decode) / 1e3:.2f} s  by batch "
                  f"{dict(sorted(collections.Counter(r.verify for r in decode).items()))}  "
                  f"{dict(choices)}")


if __name__ == "__main__":
    main()
