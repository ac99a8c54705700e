"""Steps with one request decoding that just decode (no prompt prefilled): ms per output token
(step_ms over verified + accepted tokens) by (kind, k), one line per trace given.

    python benchmarks/auto_low_high/phases_all_modes/one_in_flight.py TRACE.jsonl [...]
"""
import collections
import json
import sys

for path in sys.argv[1:]:
    agg = collections.defaultdict(lambda: [0.0, 0, 0])  # ms, output tokens, steps
    for line in open(path):
        r = json.loads(line)
        if not r.get("verify") or r["verify"] + r.get("draft", 0) + r.get("held", 0) != 1:
            continue
        kind, k = r.get("kind", "none"), r.get("k", 0)
        if r["tokens"] != r["verify"] * (1 + (k if kind != "none" else 0)):
            continue  # a prompt was prefilled in this step too
        a = agg[(kind, k)]
        a[0] += r["step_ms"]
        a[1] += r["verify"] + r.get("accepted_tokens", 0)
        a[2] += 1
    print(path)
    for (kind, k), (ms, out, n) in sorted(agg.items()):
        print(f"  {kind} k={k}: {n} steps, {ms / out:.2f} ms/token, {out / n:.2f} tokens/step")
    ms, out = sum(a[0] for a in agg.values()), sum(a[1] for a in agg.values())
    if out:
        print(f"  all: {ms / out:.2f} ms/token")
