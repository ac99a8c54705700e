"""Per request decoding alone (1 in flight, between two prompt steps), the acceptance per draft
position (accepted / (accepted + rejected)) of its first and second half of drafting steps,
and their correlation over requests. Used on auto's trace of a map's cell at 1 in flight.

    .venv/bin/python benchmarks/regimes/cal_prior_amd/request_halves.py TRACE
"""

from __future__ import annotations

import statistics
import sys

from minedraft.core.trace import read_trace


def runs(records):
    """(drafted, accepted) of each drafting step, per run of 10 or more one-request steps."""
    run = []
    for r in records:
        if r.tokens > r.verify + r.drafted_tokens or r.verify != 1:  # a prompt, or a batch
            if len(run) >= 10:
                yield run
            run = []
        elif r.drafted_tokens:
            run.append((r.drafted_tokens, r.accepted_tokens))
    if len(run) >= 10:
        yield run


def rate(steps) -> float:
    accepted = sum(a for _, a in steps)
    rejected = sum(1 for n, a in steps if a < n)
    return accepted / (accepted + rejected) if accepted + rejected else float("nan")


def main() -> None:
    halves = [(rate(s[:len(s) // 2]), rate(s[len(s) // 2:]))
              for s in runs(read_trace(sys.argv[1]))]
    for first, second in halves:
        print(f"{first:.2f} {second:.2f}")
    firsts, seconds = zip(*halves)
    print(f"requests {len(halves)}; second half higher in {sum(b > a for a, b in halves)}; "
          f"correlation {statistics.correlation(firsts, seconds):.2f}")


if __name__ == "__main__":
    main()
