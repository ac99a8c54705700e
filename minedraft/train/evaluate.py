"""`minedraft evaluate-drafter`: how good a drafter is for a target, measured through vLLM.

On held-out ShareGPT prompts (the split drafters never train on):
- acceptance per drafted token and per position, and mean accepted length, for k = 1..K, as
  vLLM's own speculative decoding counts them (greedy, and at temperature 1 for k = 1);
- the drafter's cost relative to the target, c = target step time / drafter step time at the
  same batch, from plain decoding of each model alone on the same cores;
- the expected SD speed-up E(alpha, k) / (k c + 1) and the measured one against `ar`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from minedraft import models
from minedraft.analysis import theory
from minedraft.bench.workloads import sharegpt_requests
from minedraft.core.errors import ConfigError
from minedraft.runtime.api import benchmark
from minedraft.runtime.config import EngineConfig
from minedraft.runtime.engine import Engine
from minedraft.train.distill import learning_curve

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """An evaluation: target and drafter, largest k, held-out prompts and lengths, concurrency,
    dtype, cores, seed."""
    target: str = models.TARGET
    draft: str = models.DRAFTER
    max_k: int = 5
    num_prompts: int = 32
    output_len: int = 64
    max_prompt_len: int = 960  # prompt tokens (the engines hold 1024 tokens per request)
    stop_at_eos: bool = False  # acceptance on answers that end at the target's end of turn
    max_concurrency: int = 4
    dtype: str = "bfloat16"
    target_cores: str = "all"
    enforce_eager: bool = False
    seed: int = 0


THEORY_MAX_K = 5  # expected speed-ups are computed for k = 1..max(this, --max-k)


def evaluate_drafter(cfg: EvalConfig, progress: bool = True) -> dict:
    """Evaluate `cfg.draft` (see the module docstring)."""
    return compare_drafters(cfg, [cfg.draft], progress)[0]


def compare_drafters(cfg: EvalConfig, drafts: list[str], progress: bool = True) -> list[dict]:
    """Evaluate each drafter in `drafts` against one shared `ar` run of the target."""
    if cfg.max_k < 1:
        raise ConfigError("--max-k must be >= 1")
    if cfg.max_prompt_len + cfg.output_len > 1024:
        raise ConfigError("--max-prompt-len + --output-len must be <= 1024")
    target_dir = models.resolve(cfg.target)
    draft_dirs = [models.resolve(d) for d in drafts]
    tokenizer = models.load_tokenizer(target_dir)
    for draft_dir in draft_dirs:
        _check_vocab(tokenizer, models.load_tokenizer(draft_dir))
    requests = sharegpt_requests(tokenizer, cfg.num_prompts, seed=cfg.seed, split="heldout",
                                 max_prompt_len=cfg.max_prompt_len)
    base = dict(dtype=cfg.dtype, target_cores=cfg.target_cores, max_model_len=1024,
                enforce_eager=cfg.enforce_eager, seed=cfg.seed)
    run = dict(output_len=cfg.output_len, max_concurrency=cfg.max_concurrency, seed=cfg.seed,
               progress=progress)

    def bench(config: EngineConfig, **extra) -> dict:
        with Engine(config) as engine:
            return benchmark(engine, requests, **run, **extra)

    # Fixed-length runs (EOS ignored) measure the cost ratio; with stop_at_eos, acceptance and the
    # measured speed-up come from answers that end at the target's end of turn.
    eos = dict(ignore_eos=not cfg.stop_at_eos)
    with Engine(EngineConfig(mode="ar", target=str(target_dir), **base)) as engine:
        ar = benchmark(engine, requests, **run)
        ar_served = benchmark(engine, requests, **run, **eos, warmup=False) \
            if cfg.stop_at_eos else ar
    results = []
    for draft_dir in draft_dirs:
        drafter_alone = bench(EngineConfig(mode="ar", target=str(draft_dir), **base))
        per_k, t1 = {}, None
        for k in range(1, cfg.max_k + 1):
            config = EngineConfig(mode="sd", target=str(target_dir), draft=str(draft_dir),
                                  num_speculative_tokens=k, **base)
            with Engine(config) as engine:
                per_k[k] = benchmark(engine, requests, **run, **eos)
                if k == 1:
                    t1 = benchmark(engine, requests, **run, **eos, temperature=1.0,
                                   warmup=False)
        results.append(_summarise(cfg, target_dir, draft_dir, ar, ar_served, drafter_alone,
                                  per_k, t1))
    return results


def _summarise(cfg, target_dir, draft_dir, ar, ar_served, drafter_alone, per_k, t1) -> dict:
    # Same requests, same token counts, same batch: the time ratio is the step-time ratio.
    cost_ratio = drafter_alone["duration_s"] / ar["duration_s"]
    alpha = per_k[1]["acceptance_rate"]
    ks = range(1, max(cfg.max_k, THEORY_MAX_K) + 1)
    expected = {k: theory.sd_speedup(alpha, k, cost_ratio) for k in ks}
    expected_psd = {k: theory.psd_speedup(alpha, k, cost_ratio) for k in ks}
    measured = {k: r["output_throughput_tok_s"] / ar_served["output_throughput_tok_s"]
                for k, r in per_k.items()}
    best_k = theory.best_k(alpha, cost_ratio, "sd", k_max=ks[-1])
    best_psd_k = theory.best_k(alpha, cost_ratio, "psd", k_max=ks[-1])
    return {
        "target": str(target_dir), "draft": str(draft_dir), **_training_report(draft_dir),
        "num_prompts": cfg.num_prompts, "output_len": cfg.output_len,
        "max_prompt_len": cfg.max_prompt_len, "stop_at_eos": cfg.stop_at_eos,
        "max_concurrency": cfg.max_concurrency, "dtype": cfg.dtype,
        "acceptance_rate_greedy": alpha,
        "acceptance_rate_t1": t1["acceptance_rate"],
        "acceptance_per_position": {k: r["acceptance_per_position"] for k, r in per_k.items()},
        "acceptance_rate": {k: r["acceptance_rate"] for k, r in per_k.items()},
        "mean_accepted_length": {k: r["mean_accepted_length"] for k, r in per_k.items()},
        "cost_ratio": cost_ratio,
        "ar_output_throughput_tok_s": ar_served["output_throughput_tok_s"],
        "drafter_alone_output_throughput_tok_s": drafter_alone["output_throughput_tok_s"],
        "sd_output_throughput_tok_s": {k: r["output_throughput_tok_s"] for k, r in per_k.items()},
        "expected_sd_speedup_per_k": expected,
        "measured_sd_speedup_per_k": measured,
        "best_k": best_k,
        "expected_sd_speedup": expected[best_k],
        "best_psd_k": best_psd_k,
        "expected_psd_speedup": expected_psd[best_psd_k],
    }


def _training_report(draft_dir) -> dict:
    """Layers, training minutes and teacher-forced agreement, when `minedraft distill` made it."""
    path = draft_dir / "report.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    return {"draft_layers": len(report["target_layers_kept"]),
            "draft_train_minutes": report["train_seconds"] / 60,
            "draft_heldout_agreement": report["heldout_agreement"],
            "draft_train_curve": learning_curve(report)}


def _check_vocab(target_tok, draft_tok) -> None:
    if target_tok.get_vocab() != draft_tok.get_vocab():
        raise ConfigError("the drafter's vocabulary differs from the target's; "
                         "speculative decoding needs the same tokenizer")


def format_evaluation(r: dict) -> str:
    """One drafter's evaluation as text: acceptance, cost ratio, per-k table, expected speed-ups."""
    lines = [
        f"held-out prompts: {r['num_prompts']} (<= {r['max_prompt_len']} tokens), output "
        f"{r['output_len']} tokens ({_eos(r)}), concurrency {r['max_concurrency']}, {r['dtype']}",
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
    lines.append(f"\nexpected SD speed-up {r['expected_sd_speedup']:.2f}x at k = {r['best_k']}, "
                 f"ideal PSD {r['expected_psd_speedup']:.2f}x at k = {r['best_psd_k']}")
    return "\n".join(lines)


def format_comparison(results: list[dict]) -> str:
    """One row per drafter: training, acceptance, cost and the speed-ups they imply."""
    lines = [f"held-out prompts: {results[0]['num_prompts']}, output {results[0]['output_len']} "
             f"tokens ({_eos(results[0])}), concurrency {results[0]['max_concurrency']}, {results[0]['dtype']}; "
             f"ar {results[0]['ar_output_throughput_tok_s']:.1f} tok/s",
             "",
             "drafter                 layers  train min  agreement  accept  accept T=1      c"
             "  SD x (k)    PSD x (k)  measured SD k=1"]
    for r in results:
        layers = r.get("draft_layers", "-")
        minutes = f"{r['draft_train_minutes']:.1f}" if "draft_train_minutes" in r else "-"
        agree = f"{r['draft_heldout_agreement']:.3f}" if "draft_heldout_agreement" in r else "-"
        lines.append(
            f"{_short(r['draft']):<22} {layers:>7} {minutes:>10} {agree:>10} "
            f"{r['acceptance_rate_greedy']:7.3f} {r['acceptance_rate_t1']:11.3f} "
            f"{r['cost_ratio']:6.3f} {r['expected_sd_speedup']:5.2f}x ({r['best_k']})"
            f" {r['expected_psd_speedup']:6.2f}x ({r['best_psd_k']})"
            f" {r['measured_sd_speedup_per_k'][1]:10.2f}x")
    return "\n".join(lines)


def _eos(r: dict) -> str:
    return "ending at EOS" if r["stop_at_eos"] else "EOS ignored"


def _short(path: str) -> str:
    p = Path(path)
    return str(Path(p.parent.name) / p.name)
