"""Where auto's time went in each part of a changing-load run: its steps by kind (plain or
drafting), by requests decoding (1-3 or 4 and more) and by whether they also prefilled prompts,
with their count, total time, mean step / verification / wait-for-drafts / schedule() ms and
output tokens per second.

    gunzip -k benchmarks/auto_low_high/stale_pace/trace.jsonl.gz
    .venv/bin/python benchmarks/auto_low_high/stale_pace/steps_by_part.py \
        benchmarks/auto_low_high/stale_pace/trace.jsonl 133 215

The two numbers are where parts 2 and 3 begin, in seconds since the first step (here 40
arrivals at 0.3 req/s, then 120 at 1.5 req/s: about 133 and 215 s).
"""

import collections
import sys

from minedraft.core.trace import read_trace


def main() -> None:
    records = [r for r in read_trace(sys.argv[1]) if r.step_ms]
    start, part2, part3 = records[0].start_s, float(sys.argv[2]), float(sys.argv[3])
    for name, lo, hi in (("part 1", 0.0, part2), ("part 2", part2, part3),
                         ("part 3", part3, float("inf"))):
        sums = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0, 0])
        for r in records:
            if not lo <= r.start_s - start < hi:
                continue
            n = r.verify + r.held + (r.draft if r.kind == "psd" else 0)
            prefill = (r.tokens or 0) > r.verify + r.drafted_tokens
            key = (("prefill + " if prefill else "") + ("plain" if r.kind == "none" else "drafting")
                   + (", 4+ decoding" if n >= 4 else ", 1-3 decoding"))
            s = sums[key]
            s[0] += 1
            s[1] += r.step_ms
            s[2] += r.verify_ms or 0.0
            s[3] += r.wait_ms
            s[4] += r.sched_ms
            s[5] += r.verify + r.accepted_tokens
        total = sum(s[1] for s in sums.values())
        print(f"{name}: {total / 1000:.1f} s of steps")
        for key, (count, ms, verify, wait, sched, out) in sorted(sums.items()):
            print(f"  {key:33s} {count:5d} steps {ms / 1000:6.1f} s ({100 * ms / total:4.1f}%)"
                  f"  step {ms / count:6.1f}  verify {verify / count:6.1f}  wait {wait / count:5.1f}"
                  f"  schedule {sched / count:6.2f} ms  {1000 * out / ms:6.1f} tok/s")


if __name__ == "__main__":
    main()
