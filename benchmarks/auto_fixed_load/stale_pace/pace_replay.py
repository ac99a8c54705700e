"""Replay a `--mode auto` trace at 4 in flight into auto's cost estimates (`OnlineCosts`, which
learn from the step records alone) and print, per window of steps: the choices made at 4
decoding, each one's measured output rate there (tokens over step time, steps that also
prefill left out), the target's pace, and plain decoding's predicted step time at 4 against
the median measured in that window.

    gunzip -k benchmarks/auto_fixed_load/stale_pace/trace_before.jsonl.gz
    .venv/bin/python benchmarks/auto_fixed_load/stale_pace/pace_replay.py \
        benchmarks/auto_fixed_load/stale_pace/trace_before.jsonl [window]
"""

import collections
import statistics
import sys

from minedraft.core.trace import read_trace
from minedraft.vllm_ext.auto import OnlineCosts


def main() -> None:
    records = read_trace(sys.argv[1])
    window = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    costs = OnlineCosts(3)
    print("steps      pace  decode(4) predicted / measured ms  choices at 4: steps, tok/s")
    for start in range(0, len(records), window):
        made = collections.defaultdict(lambda: [0, 0, 0.0])  # choice -> steps, tokens, ms
        plain_ms, paces, predicted = [], [], []
        for r in records[start:start + window]:
            costs.observe_step(r)
            paces.append(costs.pace)
            predicted.append(costs.decode(4))
            mixed = (r.tokens or 0) > r.verify + r.drafted_tokens
            if r.verify + r.held + (r.draft if r.kind == "psd" else 0) != 4 or mixed:
                continue
            m = made[f"{r.kind}{r.k or ''}"]
            m[0], m[1], m[2] = m[0] + 1, m[1] + r.verify + r.accepted_tokens, m[2] + r.step_ms
            if r.kind == "none":
                plain_ms.append(r.verify_ms)
        measured = f"{statistics.median(plain_ms):5.1f}" if plain_ms else "    -"
        choices = ", ".join(f"{c} {s} {1000 * t / ms:.0f}" for c, (s, t, ms) in sorted(made.items()))
        print(f"{start:5d}-{start + window - 1:<5d} {statistics.median(paces):4.2f}  "
              f"{statistics.median(predicted):5.1f} / {measured}                 {choices}")


if __name__ == "__main__":
    main()
