"""Drive an Engine through a list of requests, the way `vllm bench serve` sends them.

Arrivals: all at once (rate = inf) or a Poisson process of the given rate; at most
`max_concurrency` requests in flight. Per request we record when it was submitted, when its first
token came back and when it finished, which is all the latency metrics need.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from minedraft.bench.workloads import Request


@dataclass
class RequestResult:
    """What happened to one request: its tokens and text, and when (seconds from the start of the
    run) it was submitted, got its first token and finished."""
    index: int
    prompt_len: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    submit_time: float = 0.0  # seconds from the start of the run
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)  # vLLM's per-step logprobs, when asked for


def arrival_offsets(n: int, request_rate, seed: int) -> list[float]:
    """Seconds after the start at which each of `n` requests arrives.

    `request_rate`: requests per second (Poisson arrivals; inf: all at once), or a load that
    changes over time as segments ((rate, count), ...) run one after another (the last one
    repeats if `n` is larger)."""
    segments = ((request_rate, n),) if isinstance(request_rate, (int, float)) else \
        tuple(request_rate)
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        rate = _segment_rate(segments, i)
        out.append(t)
        if not math.isinf(rate):
            t += rng.expovariate(rate)
    return out


def _segment_rate(segments, i: int) -> float:
    for rate, count in segments:
        if i < count:
            return float(rate)
        i -= count
    return float(segments[-1][0])


def run_requests(engine, requests: list[Request], sampling_params, *,
                 request_rate: float = math.inf, max_concurrency: int | None = None,
                 seed: int = 0, progress: bool = True, on_step=None,
                 abort_after: dict[int, int] | None = None) -> tuple[list[RequestResult], float]:
    """Run `requests` on `engine` (anything with `llm_engine`, a vLLM LLMEngine, such as
    minedraft.runtime.engine.Engine) and return their results (in input order) and the run's
    wall time in seconds.

    `sampling_params(request) -> vllm.SamplingParams` lets every request carry its own limits.
    `abort_after` {request index: n} aborts that request once it has n tokens, as a client that
    goes away would (its finish_reason becomes "abort").
    """
    abort_after = abort_after or {}
    from vllm.sampling_params import RequestOutputKind

    llm = engine.llm_engine
    arrivals = deque(zip(arrival_offsets(len(requests), request_rate, seed), range(len(requests))))
    results = [RequestResult(i, len(r.prompt_token_ids)) for i, r in enumerate(requests)]
    in_flight: dict[str, int] = {}
    bar = _progress(len(requests), progress)
    run_id = f"{time.monotonic_ns():x}"
    start = time.perf_counter()
    while arrivals or in_flight:
        now = time.perf_counter() - start
        while arrivals and arrivals[0][0] <= now and (
                max_concurrency is None or len(in_flight) < max_concurrency):
            _, i = arrivals.popleft()
            params = sampling_params(requests[i])
            params.output_kind = RequestOutputKind.DELTA
            rid = f"{run_id}-{i}"
            llm.add_request(rid, {"prompt_token_ids": requests[i].prompt_token_ids}, params)
            results[i].submit_time = now
            in_flight[rid] = i
        if not in_flight:  # idle until the next arrival
            time.sleep(max(0.0, arrivals[0][0] - (time.perf_counter() - start)))
            continue
        outputs = llm.step()
        t = time.perf_counter() - start
        for out in outputs:
            res = results[in_flight[out.request_id]]
            completion = out.outputs[0]
            if completion.token_ids:
                if res.first_token_time is None:
                    res.first_token_time = t
                res.token_ids.extend(completion.token_ids)
                res.text += completion.text
                if completion.logprobs:
                    res.logprobs.append(completion.logprobs)
            if out.finished:
                res.finish_time = t
                res.finish_reason = completion.finish_reason
                del in_flight[out.request_id]
                bar.update(1)
            elif len(res.token_ids) >= abort_after.get(res.index, 1 << 30):
                llm.abort_request([out.request_id])
                res.finish_time, res.finish_reason = t, "abort"
                del in_flight[out.request_id]
                bar.update(1)
        if on_step is not None:
            on_step(t)
    bar.close()
    return results, time.perf_counter() - start


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="requests", unit="req", disable=not enabled, leave=False)
