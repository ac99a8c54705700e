"""Replay a trace's steps into auto's cost estimates, keeping plain decoding's steps only up to
CAP requests, and print, by requests decoding, the predicted cost of a plain decoding step
(ms) against the median measured (verify_ms of plain steps within 1/8 of that size).

    gunzip -k benchmarks/auto_low_high/all_modes/trace_20261203_0515.jsonl.gz
    .venv/bin/python benchmarks/auto_low_high/all_modes/replay_decode.py \
        benchmarks/auto_low_high/all_modes/trace_20261203_0515.jsonl 4
"""

import statistics
import sys

from minedraft.core.trace import read_trace
from minedraft.vllm_ext.auto import OnlineCosts


def main() -> None:
    records, cap = read_trace(sys.argv[1]), int(sys.argv[2])
    costs, measured = OnlineCosts(4), {}
    for r in records:
        pure = r.verify and r.verify_ms and (r.tokens or 0) <= r.verify + r.drafted_tokens
        if r.kind == "none" and pure:
            measured.setdefault(r.verify, []).append(r.verify_ms)
            if r.verify > cap:
                continue
        costs.observe_step(r)
    print("requests  predicted ms  measured ms (median, steps)")
    for n in (8, 12, 16, 20, 25, 32):
        near = [ms for b, v in measured.items() if abs(b - n) <= max(1, n // 8) for ms in v]
        median = f"{statistics.median(near):.1f} ({len(near)})" if near else "-"
        print(f"{n:8d}  {costs.decode(n):12.1f}  {median}")


if __name__ == "__main__":
    main()
