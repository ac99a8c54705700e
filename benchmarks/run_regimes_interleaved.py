"""The regime map's `auto` column against the best fixed mode, measured interleaved (issue 15):
every mode's engine up at once, at each concurrency the repeats taken in turn (A, B, C, A, B,
C, ...), so a slow spell of the shared host falls on every mode alike and each repeat's ratio
compares runs minutes apart, not the half hour between two modes of `minedraft regimes`.
Writes OUT/results.json and OUT/interleaved.md.

    .venv/bin/python benchmarks/run_regimes_interleaved.py --out benchmarks/regimes_xeon/interleaved

Workload as `minedraft regimes`: ShareGPT, 64 output tokens (EOS ignored), 3 x C requests (8 to
128), bf16 target on core 0, int8 lean drafter on core 1; each engine serves every C in turn.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/regimes_xeon/interleaved", help="output folder")
    p.add_argument("--modes", default="ar@0,sd-ext:1,sd-ext:2,sd-ext:3,auto:3",
                   help="MODE[:K][@CORES] as `minedraft bench --mode`, comma-separated: ar@0, "
                        "sd-ext:K, psd:K, auto:K_MAX (target on core 0 unless @CORES)")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="requests in flight")
    p.add_argument("--repeats", type=int, default=3, help="runs per mode and concurrency")
    p.add_argument("--output-len", type=int, default=64, help="tokens per request")
    p.add_argument("--kv-cache-gib", type=int, default=2,
                   help="KV cache per engine, GiB (five engines at 2 GiB each ran out of the "
                        "host's 24 GiB at 64 in flight)")
    args = p.parse_args()

    from minedraft.cli.main import quiet_vllm
    print(f"vLLM's logs: {quiet_vllm()}", flush=True)
    from contextlib import ExitStack

    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.cli.options import mode_list
    from minedraft.reporting.regimes import RegimePlan
    from minedraft.runtime.api import benchmark_interleaved, load_workload
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine

    labels = args.modes.split(",")
    cs = [int(c) for c in args.concurrency.split(",")]
    plan = RegimePlan(modes=labels, ks=[], concurrency=cs, rates=[], output_len=args.output_len)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = models.load_tokenizer(models.resolve(models.TARGET))
    pool = load_workload("sharegpt", tokenizer, plan.max_prompts, seed=plan.seed,
                         max_prompt_len=2048 - args.output_len)
    doc = {**provenance(), "cells": []}
    with ExitStack() as stack:
        engines = []
        for label in labels:
            run = mode_list(label)[0]  # MODE[:K][@CORES], as `minedraft bench --mode`
            config = EngineConfig(mode=run.mode, target_cores=run.cores or "0", seed=plan.seed,
                                  kv_cache_gib=args.kv_cache_gib,
                                  draft_quantization=None if run.mode == "ar" else "int8")
            if run.k:
                config = dataclasses.replace(config, num_speculative_tokens=run.k)
            print(f"== {label}: starting engine", flush=True)
            engines.append(stack.enter_context(Engine(config.validate())))
        for c in cs:
            results = benchmark_interleaved(engines, pool[:plan.num_prompts(c)],
                                            output_len=args.output_len, max_concurrency=c,
                                            repeats=args.repeats, progress=False)
            cell = {"concurrency": c, "modes": {}}
            for label, res in zip(labels, results):
                cell["modes"][label] = {
                    "tok_s": [r["output_throughput_tok_s"] for r in res["runs"]],
                    "steps_per_kind": [r.get("steps_per_kind") for r in res["runs"]],
                    "steps_per_k": [r.get("steps_per_k") for r in res["runs"]]}
            doc["cells"].append(summarise(cell, labels))
            print(row(doc["cells"][-1], labels), flush=True)
            (out / "results.json").write_text(json.dumps(doc, indent=1))  # after every cell:
            (out / "interleaved.md").write_text(table(doc, labels))  # a crash keeps the rest
    print(f"wrote {out / 'results.json'} and {out / 'interleaved.md'}")


def summarise(cell: dict, labels: list[str]) -> dict:
    """Medians per mode; auto over the best fixed mode per repeat (the best of that repeat) and
    over the best fixed mode's median."""
    fixed = [lb for lb in labels if not lb.startswith("auto")]
    auto = next(lb for lb in labels if lb.startswith("auto"))
    modes = cell["modes"]
    for m in modes.values():
        m["median"] = statistics.median(m["tok_s"])
    best = max(fixed, key=lambda lb: modes[lb]["median"])
    per_repeat = [a / max(modes[lb]["tok_s"][i] for lb in fixed)
                  for i, a in enumerate(modes[auto]["tok_s"])]
    cell.update(best=best, auto_over_best=modes[auto]["median"] / modes[best]["median"],
                auto_over_best_per_repeat=per_repeat)
    return cell


def row(cell: dict, labels: list[str]) -> str:
    medians = " | ".join(f"{cell['modes'][lb]['median']:.1f}" for lb in labels)
    reps = " / ".join(f"{r:.2f}" for r in cell["auto_over_best_per_repeat"])
    return (f"| {cell['concurrency']} | {medians} | {cell['best']} | "
            f"**{cell['auto_over_best']:.2f}x** | {reps} |")


def table(doc: dict, labels: list[str]) -> str:
    head = (f"| C | {' | '.join(labels)} | best fixed | auto / best (medians) | "
            "auto / best of each repeat |")
    lines = [f"Command: `{doc['command']}`", "", f"Hardware {doc.get('hardware')}; versions "
             f"{doc.get('versions')}; date {doc.get('date')}. Measured output tok/s, medians.", "",
             head, "|" + "---|" * (len(labels) + 4)]
    return "\n".join(lines + [row(c, labels) for c in doc["cells"]]) + "\n"


if __name__ == "__main__":
    main()
