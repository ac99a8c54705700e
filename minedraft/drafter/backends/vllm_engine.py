"""A vLLM engine as the drafter's model runner (the choice for GPUs).

Each round submits every request's full sequence as a prompt for k greedy tokens; vLLM's prefix
cache (blocks of 32 tokens, the CPU minimum) turns that into a prefill of the unseen tail, i.e.
up to 31 old tokens are recomputed per round. vLLM's engine core runs in a process of its own
(VLLM_ENABLE_V1_MULTIPROCESSING=1): in-process it saved an IPC hop per engine step, but beside a
running target some rounds took ~1 s in the model's kernels (OpenMP threads fighting for the
drafter's core).
"""

from __future__ import annotations

import os
import time

BLOCK_SIZE = 32  # the smallest block size of vLLM's CPU backend


class VLLMBackend:
    """Draft rounds through a vLLM engine of the draft model (prefix caching on, blocks of 32
    tokens), for GPUs or any model the lean runner does not support."""
    name = "vllm"

    def __init__(self, model: str, *, cores: str = "all", dtype: str = "bfloat16",
                 max_model_len: int = 2048, kv_cache_gib: int = 1, enforce_eager: bool = False):
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        from minedraft.core.cores import omp_bind

        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = omp_bind(cores)  # this process is the drafter
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        self.llm = LLMEngine.from_engine_args(EngineArgs(
            model=model, dtype=dtype, max_model_len=max_model_len, enforce_eager=enforce_eager,
            block_size=BLOCK_SIZE, enable_prefix_caching=True, seed=0))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.round = 0

    def draft(self, seqs: dict[str, list[int]], k: int, ingest: set[str] = frozenset()):
        """k greedy tokens per sequence (the ids in `ingest` only warm the prefix cache).
        Returns (drafts, engine steps, ms)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        t0 = time.perf_counter()
        self.round += 1
        pending = {}
        for rid, seq in seqs.items():
            params = SamplingParams(max_tokens=1 if rid in ingest else k, temperature=0.0,
                                    ignore_eos=True, detokenize=False,
                                    output_kind=RequestOutputKind.FINAL_ONLY)
            internal = f"{rid}@{self.round}"
            self.llm.add_request(internal, {"prompt_token_ids": list(seq)}, params)
            pending[internal] = rid
        drafts, steps = {}, 0
        while pending:
            steps += 1
            for out in self.llm.step():
                if out.finished and out.request_id in pending:
                    rid = pending.pop(out.request_id)
                    if rid not in ingest:
                        drafts[rid] = list(out.outputs[0].token_ids)
        return drafts, steps, 1000 * (time.perf_counter() - t0)

    def free(self, rids) -> None:
        """Nothing to free: the prefix cache evicts by itself."""
        pass  # nothing per request: the prefix cache evicts by itself

    def shutdown(self) -> None:
        """Stop the engine's core process."""
        core = getattr(self.llm, "engine_core", None)
        if core is not None:
            core.shutdown()
