"""Keep core 1 busy with bf16 matmuls of SmolLM2-135M's shapes (one thread), to measure how
much a busy second core slows the target on the first (README.md, section 7).

    .venv/bin/python benchmarks/spec_config_floor/busy_core/stress.py [DUTY]   # normal priority
    chrt -i 0 .venv/bin/python benchmarks/spec_config_floor/busy_core/stress.py  # SCHED_IDLE

DUTY (0-1, default 1): the share of each 100 ms spent computing. Runs until killed.
"""

import os
import sys
import time

import torch


def main() -> None:
    os.sched_setaffinity(0, {1})
    torch.set_num_threads(1)
    a = torch.randn(256, 576, dtype=torch.bfloat16)
    w = torch.randn(576, 1536, dtype=torch.bfloat16)
    duty = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    while True:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.1 * duty:
            (a @ w).sum()
        if duty < 1:
            time.sleep(0.1 * (1 - duty))


if __name__ == "__main__":
    main()
