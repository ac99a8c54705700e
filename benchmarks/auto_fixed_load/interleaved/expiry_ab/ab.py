"""A/B of auto with and without fb2e9fa's calibration expiry, interleaved, with traces
(experiment, 2026-12-02). It ran in a scratch worktree at fb2e9fa where `AutoPolicy._fresh`
returned its window unchanged when MD_NO_FRESH was set (the code before fb2e9fa); the engine
core inherits the variable set while its engine starts. Usage:
`PYTHONPATH=<worktree> .venv/bin/python ab.py CONC PROMPTS REPEATS` (128 output tokens; traces
in /tmp/ab/). Output: c1.json (1 16 2, 14:37-14:47), c64.json (64 64 3, 14:48-14:57)."""
import json, os, sys
from minedraft.runtime import api
from minedraft.runtime.config import EngineConfig
from minedraft.runtime.engine import Engine

def main():
    conc, n, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    engines = []
    for name in ("fresh", "nofresh"):
        if name == "nofresh":
            os.environ["MD_NO_FRESH"] = "1"
        cfg = EngineConfig(mode="auto", target_cores="0", draft_cores="1", draft_quantization="int8",
                           trace_path=f"/tmp/ab/{name}_c{conc}.jsonl")
        engines.append(Engine(cfg))
        os.environ.pop("MD_NO_FRESH", None)
    reqs = api.load_workload("sharegpt", engines[0].tokenizer, n)
    out = api.benchmark_interleaved(engines, reqs, output_len=128, max_concurrency=conc,
                                    repeats=reps, progress=False)
    res = {name: {"tok_s": [r["output_throughput_tok_s"] for r in o["runs"]],
                  "steps_per_kind": [r.get("steps_per_kind") for r in o["runs"]]}
           for name, o in zip(("fresh", "nofresh"), out)}
    print(json.dumps(res))
    for e in engines:
        e.shutdown()

if __name__ == "__main__":
    main()
