"""Steps with one request decoding that just decode (no prompt prefilled): ms per output token
(step_ms over verified + accepted tokens) by (kind, k), one block per trace given.

    .venv/bin/python benchmarks/auto_low_high/phases_all_modes/one_in_flight.py TRACE.jsonl [...]
"""
import collections
import sys

from minedraft.core.trace import read_trace

for path in sys.argv[1:]:
    agg = collections.defaultdict(lambda: [0.0, 0, 0])  # ms, output tokens, steps
    for r in read_trace(path):
        if not r.verify or r.verify + r.draft + r.held != 1:
            continue
        if r.tokens != r.verify * (1 + (r.k if r.kind != "none" else 0)):
            continue  # a prompt was prefilled in this step too
        a = agg[(r.kind, r.k)]
        a[0] += r.step_ms
        a[1] += r.verify + r.accepted_tokens
        a[2] += 1
    print(path)
    for (kind, k), (ms, out, n) in sorted(agg.items()):
        print(f"  {kind} k={k}: {n} steps, {ms / out:.2f} ms/token, {out / n:.2f} tokens/step")
    ms, out = sum(a[0] for a in agg.values()), sum(a[1] for a in agg.values())
    if out:
        print(f"  all: {ms / out:.2f} ms/token")
