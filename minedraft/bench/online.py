"""Online benchmark: stream a workload to a running OpenAI-compatible server (`minedraft serve`,
`vllm serve`) the way `vllm bench serve` does, and report the offline bench's JSON keys.

Requests go to /v1/completions with the workload's token ids as the prompt, `ignore_eos` and
streaming, so TTFT and inter-token latency are what a client sees. Arrivals are Poisson at the
given rate (or all at once), at most `max_concurrency` in flight. Acceptance and the PSD step
metrics come from the server's /metrics (deltas over the run). Goodput counts the requests that
met both the TTFT and the TPOT target. Optionally the PSD drafter process is killed mid-run
(load test: no request may be lost).
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from dataclasses import dataclass

from minedraft.bench.metrics import serving_metrics
from minedraft.bench.runner import RequestResult, arrival_offsets
from minedraft.bench.workloads import Request
from minedraft.core.errors import MineDraftError


@dataclass
class OnlineOptions:
    """One online benchmark: the server, the workload's arrivals and limits, goodput targets (ms),
    and the optional drafter kill of a load test."""
    base_url: str
    output_len: int = 128
    request_rate: float = math.inf
    max_concurrency: int | None = None
    temperature: float = 0.0
    seed: int = 0
    model: str | None = None  # None: the server's first model
    goodput_ttft_ms: float | None = None
    goodput_tpot_ms: float | None = None
    timeout_s: float = 600.0
    kill_drafter_after_s: float | None = None  # load test: kill the drafter this long in
    kill_drafter_after_tokens: int | None = None  # ... or once this many tokens streamed
    server_pid: int | None = None  # whose descendant the drafter is
    progress: bool = True
    warmup: bool = True  # a few short requests first, outside the numbers


class OnlineError(MineDraftError, RuntimeError):
    """The server cannot be used (unreachable, no model); one line for the user."""


# --------------------------------------------------------------------------- /metrics

def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name (+ position / mode labels): value summed over engines}."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name
            for label in ("position", "mode", "k"):
                if label in s.labels:
                    key += f"{{{label}={s.labels[label]}}}"
            out[key] = out.get(key, 0.0) + s.value
    return out


def server_mode(m: dict[str, float]) -> tuple[str, int | None]:
    """(mode, k) a server runs, from its /metrics: minedraft's info gauge, else sd when vLLM counts
    drafts, else ar."""
    info = [k for k in m if k.startswith("minedraft:info{mode=")]
    if info:
        mode = info[0].split("{mode=")[1].split("}")[0]
        k = info[0].split("{k=")[1].rstrip("}") if "{k=" in info[0] else None
        return mode, int(k) if k else None
    if any(k.startswith("vllm:spec_decode_num_drafts") for k in m):
        return "sd", None
    return "ar", None


def server_metrics(before: dict[str, float], after: dict[str, float]) -> dict:
    """The offline bench's speculative and PSD keys from two /metrics scrapes."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    out: dict = {}
    drafts = d.get("vllm:spec_decode_num_drafts_total", 0.0)
    if drafts:
        drafted = d.get("vllm:spec_decode_num_draft_tokens_total", 0.0)
        accepted = d.get("vllm:spec_decode_num_accepted_tokens_total", 0.0)
        pos = sorted((int(k.split("{position=")[1].rstrip("}")), v) for k, v in d.items()
                     if k.startswith("vllm:spec_decode_num_accepted_tokens_per_pos_total{"))
        out.update(acceptance_rate=accepted / max(drafted, 1),
                   mean_accepted_length=1 + accepted / drafts,
                   acceptance_per_position=[v / drafts for _, v in pos],
                   num_drafts=int(drafts), num_draft_tokens=int(drafted),
                   num_accepted_tokens=int(accepted))
    steps = d.get("minedraft:psd_verify_batch_size_count", 0.0)
    if steps:
        def mean_ms(name):
            n = d.get(f"minedraft:{name}_count", 0.0)
            return 1000 * d.get(f"minedraft:{name}_sum", 0.0) / n if n else 0.0
        out.update(
            num_steps=int(steps), mean_draft_ms=mean_ms("psd_draft_time_seconds"),
            mean_verify_ms=mean_ms("psd_verify_time_seconds"),
            mean_step_ms=mean_ms("psd_step_time_seconds"),
            overlap_efficiency=mean_ms("psd_overlap_efficiency") / 1000,
            overlapped_step_share=min(1.0, d.get("minedraft:psd_overlapped_steps_total", 0)
                                      / steps),
            mean_verified_per_step=d.get("minedraft:psd_verify_batch_size_sum", 0.0) / steps,
            drafter_restarts=int(d.get("minedraft:psd_drafter_restarts_total", 0.0)))
    return out


# --------------------------------------------------------------------------- requests

async def _one(client, url: str, payload: dict, res: RequestResult, start: float) -> str | None:
    """Stream one completion into `res`; returns an error message or None."""
    res.submit_time = time.perf_counter() - start
    try:
        async with client.stream("POST", url, json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                return f"HTTP {resp.status_code}: {body[:200]}"
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return f"stream error: {chunk['error']}"
                for choice in chunk.get("choices", []):
                    ids = choice.get("token_ids") or []
                    if ids and res.first_token_time is None:
                        res.first_token_time = time.perf_counter() - start
                    res.token_ids.extend(ids)
                    res.text += choice.get("text") or ""
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
    except Exception as exc:  # connection reset, timeout, bad JSON: one error, keep going
        return f"{type(exc).__name__}: {exc}"
    if res.finish_reason is None:
        return "stream ended without a finish_reason"
    res.finish_time = time.perf_counter() - start
    return None


def _kill_drafter(server_pid: int) -> int | None:
    """SIGKILL the PSD drafter process among the server's descendants; its pid, or None."""
    import psutil
    for p in psutil.Process(server_pid).children(recursive=True):
        try:
            if "minedraft.drafter" in " ".join(p.cmdline()):
                p.send_signal(signal.SIGKILL)
                return p.pid
        except psutil.Error:
            continue
    return None


async def run_online(requests: list[Request], opt: OnlineOptions) -> dict:
    """Send `requests` to the server at `opt.base_url` (streaming, Poisson arrivals) and return
    the bench metrics plus goodput, errors and lost requests."""
    import httpx
    from tqdm import tqdm

    base = opt.base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(opt.timeout_s, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        try:
            models = (await client.get(f"{base}/v1/models")).json()["data"]
            before = parse_metrics((await client.get(f"{base}/metrics")).text)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise OnlineError(f"no OpenAI-compatible server at {base}: {exc}") from None
        model = opt.model or models[0]["id"]
        mode, k = server_mode(before)
        if opt.warmup:
            await asyncio.gather(*(
                _one(client, f"{base}/v1/completions",
                     {"model": model, "prompt": r.prompt_token_ids, "max_tokens": 8,
                      "ignore_eos": True, "stream": True}, RequestResult(0, 0), time.perf_counter())
                for r in requests[:4]))
            before = parse_metrics((await client.get(f"{base}/metrics")).text)
        sem = asyncio.Semaphore(opt.max_concurrency or len(requests))
        results = [RequestResult(i, len(r.prompt_token_ids)) for i, r in enumerate(requests)]
        errors: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="requests", unit="req", disable=not opt.progress,
                   leave=False)
        start = time.perf_counter()

        async def send(i: int, at: float):
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            async with sem:
                payload = {"model": model, "prompt": requests[i].prompt_token_ids,
                           "max_tokens": opt.output_len, "temperature": opt.temperature,
                           "ignore_eos": True, "stream": True, "return_token_ids": True}
                errors[i] = await _one(client, f"{base}/v1/completions", payload, results[i],
                                       start)
            bar.update(1)

        killed = None
        kill_time = None

        async def killer():
            """Kill the drafter after a time, or once enough tokens have streamed."""
            nonlocal killed, kill_time
            if opt.kill_drafter_after_s is not None:
                await asyncio.sleep(opt.kill_drafter_after_s)
            while opt.kill_drafter_after_tokens is not None and \
                    sum(len(r.token_ids) for r in results) < opt.kill_drafter_after_tokens:
                await asyncio.sleep(0.01)
            killed = _kill_drafter(opt.server_pid)
            kill_time = time.perf_counter() - start

        tasks = [send(i, at) for i, at in
                 enumerate(arrival_offsets(len(requests), opt.request_rate, opt.seed))]
        if opt.kill_drafter_after_s is not None or opt.kill_drafter_after_tokens is not None:
            tasks.append(killer())
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        bar.close()
        after = parse_metrics((await client.get(f"{base}/metrics")).text)

    for i, err in enumerate(errors):  # failed requests do not count in the latency metrics
        if err is not None:
            results[i].finish_time = None
    out = {**serving_metrics(results, duration), **server_metrics(before, after)}
    good = [r for r in results if r.finish_time is not None and r.first_token_time is not None
            and meets_goodput(r, opt)]
    out.update(
        mode=mode, base_url=base, model=model,
        config={"num_speculative_tokens": k, "target_cores": "server"},
        num_errors=sum(e is not None for e in errors),
        num_lost=sum(r.finish_reason is None for r in results),
        errors=sorted({e for e in errors if e})[:10],
        request_goodput_req_s=len(good) / duration if duration > 0 else float("nan"),
        goodput_ttft_ms=opt.goodput_ttft_ms, goodput_tpot_ms=opt.goodput_tpot_ms,
        drafter_killed_pid=killed, drafter_killed_at_s=kill_time,
        finished_after_kill=sum(r.finish_time is not None and kill_time is not None
                                and r.finish_time > kill_time for r in results))
    return out


def meets_goodput(r: RequestResult, opt: OnlineOptions) -> bool:
    """The request met both goodput targets (TTFT and TPOT at most the thresholds, in ms; a
    target left unset always passes)."""
    ttft = 1000 * (r.first_token_time - r.submit_time)
    n = len(r.token_ids)
    tpot = 1000 * (r.finish_time - r.first_token_time) / (n - 1) if n > 1 else 0.0
    return (opt.goodput_ttft_ms is None or ttft <= opt.goodput_ttft_ms) and \
           (opt.goodput_tpot_ms is None or tpot <= opt.goodput_tpot_ms)


def median_of_online_runs(runs: list[dict]) -> dict:
    """Per-key median of the numbers present in every run; the runs are kept under `runs`."""
    import statistics
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                all(isinstance(r.get(key), (int, float)) for r in runs):
            out[key] = statistics.median(r[key] for r in runs)
    out.update(num_errors=sum(r["num_errors"] for r in runs),
               num_lost=sum(r["num_lost"] for r in runs), repeats=len(runs), runs=runs,
               errors=sorted({e for r in runs for e in r["errors"]})[:10])
    return out


def benchmark_online(requests: list[Request], opt: OnlineOptions) -> dict:
    """Run `run_online` to completion (its own event loop); raises OnlineError when the server
    cannot be used."""
    return asyncio.run(run_online(requests, opt))
