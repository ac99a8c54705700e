"""`minedraft evaluate-drafter`: how good a drafter is for a target, measured through vLLM.

On held-out ShareGPT prompts (the split drafters never train on):
- acceptance per drafted token and per position, and mean accepted length, for k = 1..K, as
  vLLM's own speculative decoding counts them (greedy, and at temperature 1 for k = 1);
- the drafter's cost relative to the target, c = target step time / drafter step time at the
  same batch, from plain decoding of each model alone on the same cores;
- the expected SD speed-up E(alpha, k) / (k c + 1) and the measured one against `ar`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from minedraft import models, theory
from minedraft.api import benchmark
from minedraft.bench.workloads import sharegpt_requests
from minedraft.config import EngineConfig
from minedraft.engine import Engine

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    target: str = models.TARGET
    draft: str = models.DRAFTER
    max_k: int = 5
    num_prompts: int = 32
    output_len: int = 64
    max_concurrency: int = 4
    dtype: str = "bfloat16"
    target_cores: str = "all"
    enforce_eager: bool = False
    seed: int = 0


def evaluate_drafter(cfg: EvalConfig, progress: bool = True) -> dict:
    if cfg.max_k < 1:
        raise ValueError("--max-k must be >= 1")
    target_dir = models.resolve(cfg.target)
    draft_dir = models.resolve(cfg.draft)
    tokenizer = models.load_tokenizer(target_dir)
    _check_vocab(tokenizer, models.load_tokenizer(draft_dir))
    requests = sharegpt_requests(tokenizer, cfg.num_prompts, seed=cfg.seed, split="heldout",
                                 max_prompt_len=1024 - cfg.output_len)
    base = dict(dtype=cfg.dtype, target_cores=cfg.target_cores, max_model_len=1024,
                enforce_eager=cfg.enforce_eager, seed=cfg.seed)
    run = dict(output_len=cfg.output_len, max_concurrency=cfg.max_concurrency, seed=cfg.seed,
               progress=progress)

    def bench(config: EngineConfig, **extra) -> dict:
        with Engine(config) as engine:
            return benchmark(engine, requests, **run, **extra)

    ar = bench(EngineConfig(mode="ar", target=str(target_dir), **base))
    drafter_alone = bench(EngineConfig(mode="ar", target=str(draft_dir), **base))
    # Same requests, same token counts, same batch: the time ratio is the step-time ratio.
    cost_ratio = drafter_alone["duration_s"] / ar["duration_s"]
    per_k, t1 = {}, None
    for k in range(1, cfg.max_k + 1):
        config = EngineConfig(mode="sd", target=str(target_dir), draft=str(draft_dir),
                              num_speculative_tokens=k, **base)
        with Engine(config) as engine:
            res = benchmark(engine, requests, **run)
            if k == 1:
                t1 = benchmark(engine, requests, **run, temperature=1.0, warmup=False)
        per_k[k] = res
    alpha = per_k[1]["acceptance_rate"]
    expected = {k: theory.sd_speedup(alpha, k, cost_ratio) for k in per_k}
    measured = {k: r["output_throughput_tok_s"] / ar["output_throughput_tok_s"]
                for k, r in per_k.items()}
    best_k = max(expected, key=expected.get)
    return {
        "target": str(target_dir), "draft": str(draft_dir),
        "num_prompts": cfg.num_prompts, "output_len": cfg.output_len,
        "max_concurrency": cfg.max_concurrency, "dtype": cfg.dtype,
        "acceptance_rate_greedy": alpha,
        "acceptance_rate_t1": t1["acceptance_rate"],
        "acceptance_per_position": {k: r["acceptance_per_position"] for k, r in per_k.items()},
        "acceptance_rate": {k: r["acceptance_rate"] for k, r in per_k.items()},
        "mean_accepted_length": {k: r["mean_accepted_length"] for k, r in per_k.items()},
        "cost_ratio": cost_ratio,
        "ar_output_throughput_tok_s": ar["output_throughput_tok_s"],
        "drafter_alone_output_throughput_tok_s": drafter_alone["output_throughput_tok_s"],
        "sd_output_throughput_tok_s": {k: r["output_throughput_tok_s"] for k, r in per_k.items()},
        "expected_sd_speedup_per_k": expected,
        "measured_sd_speedup_per_k": measured,
        "best_k": best_k,
        "expected_sd_speedup": expected[best_k],
        "expected_psd_speedup": max(theory.psd_speedup(alpha, k, cost_ratio) for k in per_k),
    }


def _check_vocab(target_tok, draft_tok) -> None:
    if target_tok.get_vocab() != draft_tok.get_vocab():
        raise ValueError("the drafter's vocabulary differs from the target's; "
                         "speculative decoding needs the same tokenizer")


def format_evaluation(r: dict) -> str:
    lines = [
        f"held-out prompts: {r['num_prompts']}, output {r['output_len']} tokens, "
        f"concurrency {r['max_concurrency']}, {r['dtype']}",
        f"acceptance (greedy, k=1): {r['acceptance_rate_greedy']:.3f}   "
        f"at temperature 1: {r['acceptance_rate_t1']:.3f}",
        f"cost ratio c (drafter step / target step): {r['cost_ratio']:.3f}",
        f"ar: {r['ar_output_throughput_tok_s']:.1f} tok/s",
        "",
        " k  accept  per position                   acc len  expected  measured (sd / ar)",
    ]
    for k in r["mean_accepted_length"]:
        pos = " ".join(f"{p:.2f}" for p in r["acceptance_per_position"][k])
        lines.append(f"{k:>2}  {r['acceptance_rate'][k]:.3f}  {pos:<30} "
                     f"{r['mean_accepted_length'][k]:7.2f}  {r['expected_sd_speedup_per_k'][k]:7.2f}x"
                     f"  {r['measured_sd_speedup_per_k'][k]:7.2f}x")
    lines.append(f"\nbest k {r['best_k']}: expected SD speed-up {r['expected_sd_speedup']:.2f}x, "
                 f"ideal PSD {r['expected_psd_speedup']:.2f}x")
    return "\n".join(lines)
