"""Scratch A/B: auto with prompts taken in lazily (MD_LAZY_INTAKE) against auto and ar@0,
interleaved, at high load."""
import json
import os
import statistics
import sys
from contextlib import ExitStack

if __name__ == "__main__":
    from minedraft.cli.main import quiet_vllm
    quiet_vllm()
    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.runtime.api import benchmark_interleaved, load_workload
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine
    cs = [int(c) for c in sys.argv[1].split(",")]
    reps = int(sys.argv[2]); out = sys.argv[3]
    tok = models.load_tokenizer(models.resolve(models.TARGET))
    pool = load_workload("sharegpt", tok, 3 * max(cs), seed=0, max_prompt_len=2048 - 64)
    labels = ["ar@0", "auto", "auto_lazy"]
    doc = {**provenance(), "cells": []}
    with ExitStack() as st:
        engines = []
        for lb in labels:
            if lb == "ar@0":
                cfg = EngineConfig(mode="ar", target_cores="0", seed=0, kv_cache_gib=1)
            else:
                cfg = EngineConfig(mode="auto", target_cores="0", seed=0, kv_cache_gib=1,
                                   draft_quantization="int8", num_speculative_tokens=3)
            if lb == "auto_lazy":
                os.environ["MD_LAZY_INTAKE"] = "1"
            print("starting", lb, flush=True)
            engines.append(st.enter_context(Engine(cfg.validate())))
            os.environ.pop("MD_LAZY_INTAKE", None)
        for c in cs:
            res = benchmark_interleaved(engines, pool[:3 * c], output_len=64, max_concurrency=c,
                                        repeats=reps, progress=False)
            cell = {"c": c}
            for lb, r in zip(labels, res):
                cell[lb] = {"tok_s": [x["output_throughput_tok_s"] for x in r["runs"]],
                            "ttft": [x["mean_ttft_ms"] for x in r["runs"]],
                            "steps": [x.get("steps_per_kind") for x in r["runs"]]}
            ar = cell["ar@0"]["tok_s"]
            for lb in labels[1:]:
                rat = [a / b for a, b in zip(cell[lb]["tok_s"], ar)]
                cell[lb]["ratio"] = rat
                print(c, lb, "median ratio %.4f" % statistics.median(rat),
                      " ".join("%.3f" % x for x in rat), flush=True)
            print(c, "ar", " ".join("%.1f" % x for x in ar), flush=True)
            doc["cells"].append(cell)
            json.dump(doc, open(out, "w"), indent=1)
