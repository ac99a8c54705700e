"""Plain decoding against two engines with MineDraft's speculative config and no drafts, 64
requests x 128 tokens, 64 in flight, in one script (one engine at a time, in the order given):

- `ar`: plain decoding, target on core 0 (vLLM's async scheduling on, its default there);
- `ar_sync`: the same with async scheduling off, as every engine with our speculative config;
- `spec_vllm_sched`: the same engine with our `custom_class` speculative config (k = 3) and
  vLLM's own scheduler: no PSD scheduler, no drafter, never a draft;
- `auto_none`: `--mode auto` with the drafter on core 1, which drafts nothing only under the
  temporary patch described in README.md (MD_FORCE / MD_NO_INTAKE); without it, plain auto.

Usage (about 9 minutes): `.venv/bin/python benchmarks/spec_config_floor/three_engines.py
ar,spec_vllm_sched,auto_none` (CONC=in flight, REP=repeats; per-method step timers: see
step_timers.py). Prints each engine's output tok/s and mean TPOT per repeat.
"""
import json
import os
import sys

from minedraft.runtime import api
from minedraft.runtime.config import EngineConfig
from minedraft.runtime.engine import Engine

SPEC = {"speculative_config": {"method": "custom_class",
                               "model": "minedraft.vllm_ext.proposer.ExternalDraftProposer",
                               "num_speculative_tokens": 3},
        "async_scheduling": False}
VARIANTS = {
    "ar": (EngineConfig(mode="ar", target_cores="0"), None),
    "ar_sync": (EngineConfig(mode="ar", target_cores="0"), {"async_scheduling": False}),
    "spec_vllm_sched": (EngineConfig(mode="ar", target_cores="0"), SPEC),
    "auto_none": (EngineConfig(mode="auto", target_cores="0", draft_cores="1",
                               draft_quantization="int8"), None),
}


def main() -> None:
    results = {}
    for name in sys.argv[1].split(","):
        config, extra = VARIANTS[name]
        engine = Engine(config, extra)
        requests = api.load_workload("sharegpt", engine.tokenizer, 64)
        out = api.benchmark(engine, requests, output_len=128,
                            max_concurrency=int(os.environ.get("CONC", 64)),
                            repeats=int(os.environ.get("REP", 3)), progress=False)
        results[name] = {"tok_s": [r["output_throughput_tok_s"] for r in out["runs"]],
                         "tpot": [r["mean_tpot_ms"] for r in out["runs"]]}
        print(name, results[name], flush=True)
        engine.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
