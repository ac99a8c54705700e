"""`minedraft demo` (what `make demo` runs): the comparison that matters, in about ten minutes.

At one concurrency C, on the bundled pair and ShareGPT: plain decoding on every core and on the
target's core, sd-ext and psd (target on core 0, drafter on core 1), psd with 2C requests in
flight (the paper's protocol), and auto; then one line saying which mode to run here and why,
read off these measurements. Writes a JSON file (every number, hardware, versions, command) and
a bar chart.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

# (label, mode, target cores, in-flight multiplier)
RUNS = [("ar@all", "ar", "all", 1), ("ar@0", "ar", "0", 1), ("sd-ext", "sd-ext", "0", 1),
        ("psd", "psd", "0", 1), ("psd 2C", "psd", "0", 2), ("auto", "auto", "0", 1)]


@dataclass
class DemoPlan:
    """The demo's workload: requests in flight, requests, output tokens, k and the drafter's
    quantization."""
    concurrency: int = 8
    num_prompts: int = 32
    output_len: int = 64
    k: int = 2
    draft_quantization: str | None = "int8"
    seed: int = 0


def run_demo(plan: DemoPlan, progress: bool = True) -> list[dict]:
    """Run every row of RUNS on the same requests; one result dict per row (bench's keys plus
    `label`)."""
    from minedraft import models
    from minedraft.runtime.api import benchmark, load_workload
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine

    configs = []
    for label, mode, cores, mult in RUNS:
        drafter = mode in ("sd-ext", "psd", "auto")
        configs.append((label, mult, EngineConfig(
            mode=mode, target_cores=cores, num_speculative_tokens=plan.k, seed=plan.seed,
            draft_quantization=plan.draft_quantization if drafter else None).validate()))
    tokenizer = models.load_tokenizer(models.resolve(models.TARGET))
    requests = load_workload("sharegpt", tokenizer, plan.num_prompts, seed=plan.seed,
                             max_prompt_len=2048 - plan.output_len)
    results, engine, current = [], None, None
    try:
        for label, mult, config in configs:
            if config != current:
                if engine is not None:
                    engine.shutdown()
                print(f"== {label}: starting engine", file=sys.stderr, flush=True)
                engine, current = Engine(config), config
            # the psd engine serves psd 2C too: the same prompts must not come from its cache
            engine.llm_engine.reset_prefix_cache()
            res = benchmark(engine, requests, output_len=plan.output_len,
                            max_concurrency=plan.concurrency * mult, seed=plan.seed,
                            progress=progress)
            res.pop("runs", None)
            res.update(label=label, in_flight=plan.concurrency * mult,
                       config=engine.config.to_dict())
            results.append(res)
    finally:
        if engine is not None:
            engine.shutdown()
    return results


def format_demo(results: list[dict], plan: DemoPlan) -> str:
    """The table (equal concurrency, then psd under the paper's protocol) and the advice."""
    by = {r["label"]: r for r in results}
    base = by["ar@0"]["output_throughput_tok_s"]
    lines = [f"ShareGPT, {plan.num_prompts} requests x {plan.output_len} tokens (EOS ignored), "
             f"{plan.concurrency} in flight, k={plan.k}, bf16; measured on this machine",
             "mode     cores  in flight  out tok/s  vs ar@0  TPOT ms  accept  verify ms  "
             "draft ms  overlap"]
    for r in results:
        cores = r["config"]["target_cores"] + (f"+{r['config']['draft_cores']}"
                                               if r["config"].get("draft_cores") else "")
        lines.append(f"{r['label']:<8} {cores:>5} {r['in_flight']:>10} "
                     f"{r['output_throughput_tok_s']:10.1f} "
                     f"{r['output_throughput_tok_s'] / base:7.2f}x {r['mean_tpot_ms']:8.1f} "
                     f"{_f(r.get('acceptance_rate'), '{:7.2f}')} "
                     f"{_f(r.get('mean_verify_ms'), '{:10.1f}')} "
                     f"{_f(r.get('mean_draft_ms'), '{:9.1f}')} "
                     f"{_f(r.get('overlap_efficiency'), '{:8.2f}')}")
    paper = by["psd 2C"]["output_throughput_tok_s"] / by["sd-ext"]["output_throughput_tok_s"]
    lines.append(f"paper's protocol: psd with {2 * plan.concurrency} in flight = {paper:.2f}x "
                 f"sd-ext with {plan.concurrency} (equal concurrency: "
                 f"{by['psd']['output_throughput_tok_s'] / by['sd-ext']['output_throughput_tok_s']:.2f}x)")
    lines.append("advice: " + advice(results, plan))
    return "\n".join(lines)


def advice(results: list[dict], plan: DemoPlan) -> str:
    """Which mode to run here, and why, from the measurements alone (equal concurrency)."""
    fair = [r for r in results if r["in_flight"] == plan.concurrency]
    best = max(fair, key=lambda r: r["output_throughput_tok_s"])
    by = {r["label"]: r for r in fair}
    psd = by["psd"]
    why = []
    if psd.get("mean_verify_ms") and psd.get("mean_draft_ms"):
        half, whole = psd["mean_verify_ms"], by["ar@0"]["mean_tpot_ms"]
        why.append(f"verifying half the batch takes {half:.0f} ms against {whole:.0f} ms for a "
                   f"plain step of the whole batch, so halving the batch saves little here")
    text = (f"here, at {plan.concurrency} in flight, run {best['label']} "
            f"({best['output_throughput_tok_s']:.0f} tok/s)")
    if best["label"] != "psd":
        text += (f"; psd reaches {psd['output_throughput_tok_s'] / best['output_throughput_tok_s']:.2f}x "
                 "of it")
        if why:
            text += f": {why[0]}; PSD pays where verification costs grow with the batch and "
            text += "drafting costs about as much as verifying (see `minedraft regimes`)"
    return text


def _f(value, fmt: str) -> str:
    return fmt.format(value) if value is not None else fmt.format(float("nan")).replace("nan", "  -")


def write_demo(results: list[dict], plan: DemoPlan, json_path, plot_path) -> None:
    """Write the demo's JSON (runs, plan, advice, provenance) and its bar chart."""
    from minedraft.bench.provenance import provenance
    from minedraft.reporting.plots import plot_demo
    Path(json_path).write_text(json.dumps(
        {"runs": results, "plan": plan.__dict__, "advice": advice(results, plan),
         **provenance()}, indent=1, default=str))
    plot_demo(results, plan.concurrency, plot_path)
