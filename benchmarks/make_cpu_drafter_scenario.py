"""A GPU scenario with the drafter on the host's CPU cores (issue 14): drafter rounds (by requests
and k, int8, one core) and acceptance measured on this machine (benchmarks/profile_cpu.json),
target step costs ASSUMED from a GPU's published memory bandwidth and compute (a decode step
reads every weight once), each labelled with its source.

    .venv/bin/python benchmarks/make_cpu_drafter_scenario.py --gpu l4
    .venv/bin/python benchmarks/make_cpu_drafter_scenario.py --gpu h100
    .venv/bin/minedraft simulate --scenarios

Writes minedraft/analysis/scenarios/smollm2-1.7b-<gpu>_cpu-drafter.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Published datasheet figures (dense bf16 tensor throughput, memory bandwidth).
GPUS = {
    "l4": {"name": "NVIDIA L4", "bandwidth_gbs": 300.0, "bf16_tflops": 121.0,
           "source": "NVIDIA L4 datasheet: 300 GB/s GDDR6, 121 TFLOPS bf16 (dense)"},
    "h100": {"name": "NVIDIA H100 SXM", "bandwidth_gbs": 3350.0, "bf16_tflops": 989.0,
             "source": "NVIDIA H100 SXM datasheet: 3.35 TB/s HBM3, 989 TFLOPS bf16 (dense)"},
}
TARGET_PARAMS = 1.71e9  # SmolLM2-1.7B-Instruct (model card): shares the bundled drafter's tokenizer
STEP_OVERHEAD_MS = 2.0  # ASSUMED: vLLM's per-step scheduling, sampling and launch overheads
EFFICIENCY = 0.6  # ASSUMED: share of peak bandwidth and compute a forward pass reaches


def target_ms(tokens: float, gpu: dict) -> float:
    """One forward pass over `tokens` tokens: the slower of reading the bf16 weights and doing
    2 x params FLOPs per token, at EFFICIENCY of the datasheet peaks, plus STEP_OVERHEAD_MS."""
    read = 2 * TARGET_PARAMS / (gpu["bandwidth_gbs"] * 1e9 * EFFICIENCY) * 1e3
    compute = 2 * TARGET_PARAMS * tokens / (gpu["bf16_tflops"] * 1e12 * EFFICIENCY) * 1e3
    return max(read, compute) + STEP_OVERHEAD_MS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", choices=sorted(GPUS), default="l4", help="the target's GPU")
    p.add_argument("--profile", default="benchmarks/profile_cpu.json",
                   help="drafter rounds, acceptance and workload lengths measured on this machine")
    args = p.parse_args()
    gpu = GPUS[args.gpu]
    prof = json.loads(Path(args.profile).read_text())
    rounds = [[b, k, round(ms, 2)] for b, k, ms in prof["drafter"]["round_ms"]]
    cores = prof["devices"]["draft_cores"]
    quantization = prof.get("config", {}).get("draft_quantization") or "bf16"
    sizes = [1, 8, 16, 32, 64, 128, 256, 512, 1024]
    name = f"smollm2-1.7b-{args.gpu}_cpu-drafter"
    doc = {
        "kind": "minedraft-cost-profile", "version": 1, "k": max(r[1] for r in rounds),
        "name": name,
        "source": f"scenario: SmolLM2-1.7B-Instruct on one {gpu['name']}, the bundled 8-layer "
                  f"drafter ({quantization}) on host CPU core(s) {cores}; drafter rounds and "
                  f"acceptance MEASURED on this machine ({args.profile}, {prof.get('date', '')})",
        "assumption": f"ASSUMPTION, not a measurement: target step = max(reading 3.4 GB of bf16 "
                      f"weights, 2 x 1.71e9 FLOPs per token) at {EFFICIENCY:.0%} of the "
                      f"datasheet peaks ({gpu['source']}) + {STEP_OVERHEAD_MS} ms of vLLM "
                      "per-step overhead; prefill from the same formula; the drafter's acceptance "
                      "against the 1.7B target taken equal to the one measured against the 135M "
                      "target it was distilled from (likely optimistic); host cores as fast as "
                      "this machine's; no PCIe cost for token ids.",
        "target": {"decode_ms": [[b, round(target_ms(b, gpu), 2)] for b in sizes],
                   "verify_ms": [[t, round(target_ms(t, gpu), 2)] for t in sizes],
                   "prefill_ms": [[t, round(target_ms(t, gpu), 2)] for t in (0, 256, 2048, 8192)]},
        "drafter": {"round_ms": rounds},
        "overhead_ms": {"sd": 0.5, "psd": 0.5},
        "acceptance_per_position": prof["acceptance_per_position"],
        "workload": prof.get("workload", {}),
        "scenario": {"max_num_seqs": 32, "output_len": 256, "num_prompts": 256,
                     "request_rate": "inf", "ks": [1, 2, 3, 4], "sd_drafter": "own"},
    }
    out = Path(__file__).resolve().parent.parent / "minedraft/analysis/scenarios" / f"{name}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
