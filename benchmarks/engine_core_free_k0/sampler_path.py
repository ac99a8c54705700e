"""Where a step without drafts loses time in a PSD engine: vLLM's model-runner methods timed per
step, plain engine (`ar`) against an engine with a speculative config whose proposer proposes
nothing (what every `auto` step at k = 0 is).

    taskset -c 0 .venv/bin/python benchmarks/engine_core_free_k0/sampler_path.py ar
    taskset -c 0 .venv/bin/python benchmarks/engine_core_free_k0/sampler_path.py spec

In one process (VLLM_ENABLE_V1_MULTIPROCESSING=0), bundled target, bf16, BS requests (default 4)
x TOK greedy tokens (default 128), REP repeats (default 5) after a warm-up; prints each repeat's
mean ms per call. `spec` runs take the plugin's plain path for steps without drafts
(minedraft/vllm_ext/plugin.py) since 2026-12-01; vLLM's own path is timed from a checkout
before that change.
"""

import collections
import os
import sys
import time

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.v1.worker import gpu_model_runner  # noqa: E402

from minedraft import models  # noqa: E402

TIMED = ["execute_model", "sample_tokens", "_prepare_inputs", "_sample", "_model_forward",
         "_bookkeeping_sync", "_update_states", "propose_draft_token_ids", "take_draft_token_ids"]
total, calls = collections.defaultdict(float), collections.Counter()


def timed(cls, name):
    inner = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(self, *args, **kwargs)
        finally:
            total[name] += time.perf_counter() - t
            calls[name] += 1
    setattr(cls, name, wrapper)


def main(mode: str) -> None:
    for name in TIMED:
        if hasattr(gpu_model_runner.GPUModelRunner, name):
            timed(gpu_model_runner.GPUModelRunner, name)
    args = dict(model=str(models.resolve(models.TARGET)), dtype="bfloat16", max_model_len=2048,
                max_num_seqs=256, seed=0, async_scheduling=False)
    if mode == "spec":
        args["speculative_config"] = {
            "method": "custom_class", "num_speculative_tokens": 3,
            "model": "minedraft.vllm_ext.proposer.ExternalDraftProposer"}
    llm = LLM(**args)
    prompts = [f"Tell me a story about number {i}." for i in range(int(os.environ.get("BS", 4)))]
    params = SamplingParams(temperature=0, max_tokens=int(os.environ.get("TOK", 128)), ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    for _ in range(int(os.environ.get("REP", 5))):
        total.clear()
        calls.clear()
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        wall = 1000 * (time.perf_counter() - t)
        print(mode, f"wall {wall:.0f} ms", {k: round(1000 * total[k] / calls[k], 3)
                                            for k in total}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
