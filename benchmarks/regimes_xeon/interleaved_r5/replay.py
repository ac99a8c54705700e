"""Replay an auto engine's trace into a fresh AutoPolicy and print, every 20 steps between two
record indices, what it then predicts at 8 requests decoding: plain decoding's step cost (ms),
the pace, the ranked rates (output tokens per ms) of plain decoding and sequential k = 1, their
calibrations and plain decoding's last WINDOW steps at 8. Each record is attributed to what
ran (not to what the policy would choose); acceptance is spread evenly over the verified
requests (the trace keeps totals).

    gunzip -k benchmarks/regimes_xeon/interleaved_r5/auto_trace.jsonl.gz
    .venv/bin/python benchmarks/regimes_xeon/interleaved_r5/replay.py \
        benchmarks/regimes_xeon/interleaved_r5/auto_trace.jsonl 2800 3500
"""

import sys

from minedraft.core.trace import read_trace
from minedraft.vllm_ext.auto import AutoPolicy


def main() -> None:
    records = [r for r in read_trace(sys.argv[1]) if r.verify]
    lo, hi = int(sys.argv[2]), int(sys.argv[3])
    policy = AutoPolicy(3)
    for i, r in enumerate(records):
        n = r.verify + (r.draft or 0) if r.kind == "psd" else r.verify
        policy.choose(n)
        choice = (r.kind, r.k)
        policy._pending = (choice, n, policy._model_rate(choice, n), None)
        policy._exploring = False
        if r.kind != "none" and r.draft_ms:
            policy.observe_round(r.draft if r.kind == "psd" and r.draft else r.verify, r.k,
                                 r.draft_ms)
            acc, per = r.accepted_tokens or 0, r.verify
            policy.observe_drafts([(r.k, min(r.k, acc // per + (j < acc % per)))
                                   for j in range(per)])
        policy.observe_step(r)
        if lo <= i <= hi and i % 20 == 0:
            policy._best(8)
            plain = [round(ms, 1) for _, ms in policy.costs.plain.window.get(8, [])]
            print(f"{i} {r.kind} k={r.k} n={n} decode(8) {policy.costs.decode(8):.1f} ms, "
                  f"pace {policy.costs.pace:.2f}, rate none {policy.rate(('none', 0), 8):.3f} "
                  f"seq k=1 {policy.rate(('sequential', 1), 8):.3f}, calibration none "
                  f"{policy.calibration(('none', 0), 8)} seq k=1 "
                  f"{policy.calibration(('sequential', 1), 8)}, plain at 8: {plain}")


if __name__ == "__main__":
    main()
