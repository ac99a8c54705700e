"""Python API: the same operations as the CLI, on an Engine the caller may keep and reuse.

    from minedraft.runtime.api import generate, benchmark, load_workload
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine

    with Engine(EngineConfig(mode="sd", num_speculative_tokens=3)) as engine:
        reqs = load_workload("sharegpt", engine.tokenizer, num_prompts=16)
        print(benchmark(engine, reqs, output_len=64)["output_throughput_tok_s"])
"""

from __future__ import annotations

import math

from minedraft.bench import workloads
from minedraft.bench.metrics import median_of_runs, segment_metrics, serving_metrics
from minedraft.bench.runner import run_requests
from minedraft.bench.workloads import Request, WorkloadError
from minedraft.core.trace import read_trace, trace_metrics, trace_size
from minedraft.runtime.engine import Engine


def load_workload(dataset: str, tokenizer, num_prompts: int, *, seed: int = 0,
                  input_len: int = 128, min_prompt_len: int = 4,
                  max_prompt_len: int = 1024) -> list[Request]:
    """`sharegpt`, `random` (fixed `input_len` tokens) or the path of a JSONL prompts file."""
    if num_prompts < 1:
        raise WorkloadError(f"--num-prompts must be >= 1, got {num_prompts}")
    if dataset == "sharegpt":
        return workloads.sharegpt_requests(tokenizer, num_prompts, seed=seed,
                                           min_prompt_len=min_prompt_len,
                                           max_prompt_len=max_prompt_len)
    if dataset == "random":
        return workloads.random_requests(tokenizer, num_prompts, input_len, seed=seed)
    reqs = workloads.jsonl_requests(tokenizer, dataset)
    return (reqs * math.ceil(num_prompts / len(reqs)))[:num_prompts]


def _sampling(max_tokens: int, temperature: float, seed: int | None, ignore_eos: bool = False,
              logprobs: int | None = None):
    from vllm import SamplingParams
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                          ignore_eos=ignore_eos, logprobs=logprobs, flat_logprobs=True)


def top_logprobs(chunks, n: int):
    """vLLM's per-step FlatLogprobs -> (token ids, logprobs) arrays of shape [tokens, n].

    vLLM stores the sampled token first, then the top n by rank: keep the last n of each position.
    """
    import numpy as np

    ids, lps = [], []
    for chunk in chunks:
        for start, end in zip(chunk.start_indices, chunk.end_indices):
            ids.append(chunk.token_ids[end - n:end])
            lps.append(chunk.logprobs[end - n:end])
    return np.asarray(ids, dtype=np.int32).reshape(-1, n), \
        np.asarray(lps, dtype=np.float32).reshape(-1, n)


def generate(engine: Engine, requests: list[Request], *, max_tokens: int = 128,
             temperature: float = 0.0, seed: int = 0, progress: bool = True,
             request_rate: float = math.inf, abort_after: dict[int, int] | None = None,
             on_step=None, logprobs: int | None = None) -> list[dict]:
    """Run every request to completion; one dict per request, in input order.

    With temperature > 0, request i samples with seed `seed + i` (reproducible). With `logprobs`
    n, each dict also holds the target's top-n "top_ids" and "top_logprobs" per output token."""
    seeds = {id(r): seed + i for i, r in enumerate(requests)}
    results, _ = run_requests(
        engine, requests,
        lambda r: _sampling(r.output_len or max_tokens, temperature,
                            seeds[id(r)] if temperature > 0 else None, logprobs=logprobs),
        progress=progress, request_rate=request_rate, seed=seed, abort_after=abort_after,
        on_step=on_step)
    rows = []
    for req, res in zip(requests, results):
        row = {"prompt": req.prompt, "text": res.text, "token_ids": res.token_ids,
               "prompt_token_ids": req.prompt_token_ids, "finish_reason": res.finish_reason}
        if logprobs:
            row["top_ids"], row["top_logprobs"] = top_logprobs(res.logprobs, logprobs)
            res.logprobs.clear()
        rows.append(row)
    return rows


def benchmark(engine: Engine, requests: list[Request], *, output_len: int = 128,
              request_rate: float = math.inf, max_concurrency: int | None = None,
              temperature: float = 0.0, seed: int = 0, repeats: int = 1,
              warmup: bool = True, progress: bool = True, ignore_eos: bool = True) -> dict:
    """Serve `requests` `repeats` times; metrics are per-key medians over the repeats.

    `request_rate` may be a schedule ((rate, count), ...) as `arrival_offsets` takes; each run
    then also holds "segments": serving metrics of each part's requests.

    Every request generates exactly `output_len` tokens (EOS ignored), as in the paper's setup;
    with `ignore_eos=False` a request ends at the model's end of turn, as a server would end it.
    """
    return benchmark_interleaved([engine], requests, output_len=output_len,
                                 request_rate=request_rate, max_concurrency=max_concurrency,
                                 temperature=temperature, seed=seed, repeats=repeats,
                                 warmup=warmup, progress=progress, ignore_eos=ignore_eos)[0]


def benchmark_interleaved(engines: list[Engine], requests: list[Request], *,
                          output_len: int = 128, request_rate: float = math.inf,
                          max_concurrency: int | None = None, temperature: float = 0.0,
                          seed: int = 0, repeats: int = 1, warmup: bool = True,
                          progress: bool = True, ignore_eos: bool = True) -> list[dict]:
    """`benchmark` for several engines at once, their repeats taken in turn (A, B, A, B, ...):
    a slow spell of a shared host then falls on every engine alike, and the ratio of two
    engines' runs of the same repeat compares like with like. One summary per engine, in order;
    with several engines each repeat starts with its own warm-up (an engine left idle while the
    others ran has gone cold)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def params(_req):
        return _sampling(output_len, temperature, None, ignore_eos=ignore_eos)

    runs: list[list[dict]] = [[] for _ in engines]
    for rep in range(repeats):
        for engine, engine_runs in zip(engines, runs):
            if warmup and (rep == 0 or len(engines) > 1):  # keep cold caches out of the numbers
                run_requests(engine, requests[: min(4, len(requests))],
                             lambda _r: _sampling(8, temperature, None, ignore_eos=True),
                             progress=False)
            engine_runs.append(_run_once(engine, requests, params, request_rate,
                                         max_concurrency, seed + rep, progress))
    return [{**median_of_runs(r), "mode": e.config.mode, "repeats": repeats, "runs": r,
             "engine_startup_s": e.startup_s} for e, r in zip(engines, runs)]


def _run_once(engine: Engine, requests, params, request_rate, max_concurrency, seed: int,
              progress: bool) -> dict:
    """One run of `requests`: serving metrics, the engine's speculation counters and, for
    engines with a trace, the metrics of this run's steps."""
    engine.spec.reset()
    offset = trace_size(engine.config.trace_path)
    results, duration = run_requests(engine, requests, params, request_rate=request_rate,
                                     max_concurrency=max_concurrency, seed=seed,
                                     progress=progress)
    run = {**serving_metrics(results, duration), **engine.spec.summary(),
           **trace_metrics(read_trace(engine.config.trace_path, offset))}
    if not isinstance(request_rate, (int, float)):  # a load that changes: each part's metrics
        run["segments"] = segment_metrics(results, request_rate)
    return run
