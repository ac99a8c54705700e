"""Serving metrics from per-request timings, with the names `vllm bench serve` uses."""

from __future__ import annotations

import statistics

from minedraft.bench.runner import RequestResult


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def serving_metrics(results: list[RequestResult], duration_s: float) -> dict:
    """`vllm bench serve`'s metrics from per-request timings: counts, throughput (tokens/s,
    requests/s over `duration_s` seconds) and mean/p50/p99 of TTFT, TPOT and end-to-end latency
    in ms. Requests that did not finish are left out."""
    done = [r for r in results if r.finish_time is not None]
    ttft = [1000 * (r.first_token_time - r.submit_time) for r in done if r.first_token_time]
    e2el = [1000 * (r.finish_time - r.submit_time) for r in done]
    tpot = [1000 * (r.finish_time - r.first_token_time) / (len(r.token_ids) - 1)
            for r in done if r.first_token_time is not None and len(r.token_ids) > 1]
    out_tokens = sum(len(r.token_ids) for r in done)
    m = {
        "num_requests": len(done),
        "duration_s": duration_s,
        "total_input_tokens": sum(r.prompt_len for r in done),
        "total_output_tokens": out_tokens,
        "output_throughput_tok_s": out_tokens / duration_s if duration_s > 0 else float("nan"),
        "request_throughput_req_s": len(done) / duration_s if duration_s > 0 else float("nan"),
    }
    for name, values in (("ttft", ttft), ("tpot", tpot), ("e2el", e2el)):
        m[f"mean_{name}_ms"] = _mean(values)
        m[f"p50_{name}_ms"] = _pct(values, 50)
        m[f"p99_{name}_ms"] = _pct(values, 99)
    return m


def segment_metrics(results: list[RequestResult], schedule) -> list[dict]:
    """`serving_metrics` of each part of a schedule ((rate, count), ...) of requests, in input
    order: each over its own requests, from the first one's submission to the last one's
    finish, with the part's "request_rate"."""
    out, start = [], 0
    for rate, count in schedule:
        part = [r for r in results[start:start + count] if r.finish_time is not None]
        start += count
        span = (max(r.finish_time for r in part) - min(r.submit_time for r in part)) if part else 0
        out.append({"request_rate": rate, **serving_metrics(part, span)})
    return out


def median_of_runs(runs: list[dict]) -> dict:
    """Per-key median over repeated runs of the same configuration (numbers only; other values
    from the first run that has the key). A number some runs lack (acceptance, in an `auto` run
    that never drafted) is the median of the runs that have it."""
    out: dict = {}
    for run in runs:
        for key, value in run.items():
            out.setdefault(key, value)
    for key in out:
        numbers = [r[key] for r in runs if isinstance(r.get(key), (int, float))
                   and not isinstance(r.get(key), bool)]
        if numbers:
            out[key] = statistics.median(numbers)
    return out
