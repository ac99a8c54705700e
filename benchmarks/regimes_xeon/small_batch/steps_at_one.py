"""Per choice, the steps of an engine trace with one request decoding and nothing prefilled:
steps, median step / verification / drafter round ms, accepted drafts per step and ms per
output token (mean step time over mean output); then ms per output token over all those steps.
Used on the map's auto engine at 1 in flight and on the closed-loop loads' engines.

    .venv/bin/python benchmarks/regimes_xeon/small_batch/steps_at_one.py TRACE [TRACE ...]
"""

from __future__ import annotations

import statistics
import sys

from minedraft.core.trace import read_trace


def main() -> None:
    for path in sys.argv[1:]:
        records = read_trace(path)
        print(path, len(records), "steps")
        choices = sorted({(r.kind, r.k) for r in records})
        total_ms = total_tokens = 0.0
        for kind, k in choices:
            # one request decoding (no other sub-batch drafting or held), every token of the
            # step its own (no prompt chunk)
            steps = [r for r in records if (r.kind, r.k) == (kind, k) and r.verify == 1
                     and r.draft + r.held == 0
                     and r.tokens == 1 + (r.drafted_tokens or 0) and (kind == "none" or
                                                                       r.drafted_tokens == k)]
            if not steps:
                continue
            accepted = statistics.mean(r.accepted_tokens for r in steps)
            step_ms = statistics.mean(r.step_ms for r in steps)
            total_ms += step_ms * len(steps)
            total_tokens += (1 + accepted) * len(steps)
            print(f"  {kind:10s} k={k} steps {len(steps):5d}  step "
                  f"{statistics.median(r.step_ms for r in steps):6.1f} ms  verify "
                  f"{statistics.median(r.verify_ms or 0 for r in steps):5.1f}  round "
                  f"{statistics.median(r.draft_ms or 0 for r in steps):5.1f}  accepted/step "
                  f"{accepted:4.2f}  ms/token {step_ms / (1 + accepted):5.1f}")
        if total_tokens:
            print(f"  all choices: ms/token {total_ms / total_tokens:.2f}")


if __name__ == "__main__":
    main()
