"""A discrete-event simulation of serving with ar, sd or psd, driven by a cost profile.

The model is vLLM's own: the engine runs in steps, and every step's cost comes from the profile
(minedraft.core.costmodel) as a function of its batch:

* ``ar``:  a step decodes every running request: ``decode(batch)``.
* ``sd``:  draft then verify, sequentially: ``draft(batch, k) + verify(tokens) + overhead``
  (``tokens`` = the requests' 1 + k positions). On this machine that is bench's ``sd-ext`` (the
  drafter on its own cores); a profile may give ``colocated_round_ms`` for a drafter that shares
  the target's devices (vLLM's own ``sd``, the paper's standard SD).
* ``psd``: the scheduler's own plan (minedraft.core.subbatch): one sub-batch is verified while
  the other is drafted, a step costing ``max(draft, verify) + overhead``, plus a sequential
  catch-up round where the pipeline (re)starts.

Prompts are prefilled whole in the step after they are admitted (first token at its end).
Arrivals, the concurrency cap and the metrics are those of ``bench`` (same Poisson offsets for the
same seed, same `serving_metrics`), so the output dict has the same keys. Accepted draft lengths
are drawn from the profile's acceptance per draft position (vLLM's definition: the share of
drafts whose first i tokens were all accepted).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from dataclasses import dataclass

from minedraft.bench.metrics import serving_metrics
from minedraft.bench.runner import RequestResult, arrival_offsets
from minedraft.core.costmodel import CostProfile
from minedraft.core.subbatch import SubBatches, plan_step
from minedraft.core.trace import StepRecord

SIM_MODES = ("ar", "ar@all", "sd", "psd", "auto")
# bench's sd-ext is the simulator's sd (drafter on its own cores); ar@0: ar on the target's cores
MODE_ALIASES = {"sd-ext": "sd", "ar@0": "ar"}


# --------------------------------------------------------------------------- the simulation

@dataclass
class _Req:
    index: int
    prompt_len: int
    output_len: int
    arrival: float
    result: RequestResult
    tokens: int = 0  # output tokens so far
    prefilled: bool = False
    cached_len: int = 0  # prompt tokens found in vLLM's prefix cache
    drafts_at: int | None = None  # `tokens` when its drafts were made (fresh while equal)

    @property
    def rid(self) -> str:
        """The request id the sub-batch code keys it by."""
        return str(self.index)


STEP_KIND = {"ar": "none", "ar@all": "none", "sd": "sequential", "psd": "psd"}


def simulate(profile: CostProfile, mode: str, *, num_prompts: int = 16, output_len: int | None = 128,
             request_rate: float = math.inf, max_concurrency: int | None = None,
             k: int | None = None, seed: int = 0, max_num_seqs: int = 256,
             max_num_batched_tokens: int = 8192, prompt_len: int | None = None,
             colocated: bool = False, timeline: list | None = None,
             output_lens: list[int] | None = None, cached_prompts: int = 0) -> dict:
    """Serve `num_prompts` requests and return bench's serving metrics (plus speculative counters).

    The steps are planned by the scheduler's own code (minedraft.core.subbatch: SubBatches and
    plan_step), so sides, holds, catch-up rounds and the run's tail are the scheduler's.
    `output_len` None draws each request's length from the profile's ShareGPT answer lengths
    (`output_lens` gives them, request by request);
    prompt lengths come from the profile's ShareGPT prompts (or `prompt_len` for all).
    `colocated`: in sd, use the profile's drafter-on-the-target's-devices costs when it has them.
    `timeline`, if a list, receives one dict per step (start, end, draft and verify spans).
    `cached_prompts`: the first this many requests find their prompt in vLLM's prefix cache (a
    run re-sending prompts an earlier run on the same engine sent): the target computes one
    token of it, the drafter (no prefix cache) takes in all of it.
    Raises ValueError for an unknown mode or k < 1.
    """
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in SIM_MODES:
        raise ValueError(f"mode must be one of {', '.join(SIM_MODES)}, got {mode!r}")
    k = profile.k if k is None else k
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    if mode == "ar@all" and profile.decode_all is None:
        raise ValueError("the profile has no decode_all_cores_ms: measure it with "
                         "`minedraft profile` (all cores)")
    rng = random.Random(seed)
    policy = None
    if mode == "auto":
        from minedraft.vllm_ext.auto import AutoPolicy
        policy = AutoPolicy(k)  # learns online, as in the engine
    plens = profile.prompt_lens or [128]
    olens = output_lens or profile.output_lens or [128]
    reqs = []
    for i, t in enumerate(arrival_offsets(num_prompts, request_rate, seed)):
        pl = prompt_len or plens[i % len(plens)]
        ol = max(1, olens[i % len(olens)]) if output_lens or not output_len else output_len
        reqs.append(_Req(i, pl, ol, t, RequestResult(i, pl),
                         cached_len=pl - 1 if i < cached_prompts else 0))
    pending = deque(reqs)
    waiting: deque[_Req] = deque()
    running: list[_Req] = []
    by_rid: dict[str, _Req] = {}
    batches = SubBatches(overlap=mode in ("psd", "auto"))
    counters = {"drafts": 0, "draft_tokens": 0, "accepted": 0, "per_pos": [0] * k}
    steps: list[dict] = []
    t = 0.0
    decode = profile.decode_all if mode == "ar@all" else profile.decode
    drafter = mode not in ("ar", "ar@all")

    def accept(n_draft: int, k_step: int) -> int:
        cond = profile.conditional_acceptance(k_step)
        n = 0
        while n < n_draft and rng.random() < cond[n]:
            n += 1
        if n_draft:
            counters["drafts"] += 1
            counters["draft_tokens"] += n_draft
            counters["accepted"] += n
            for i in range(n):
                counters["per_pos"][i] += 1
        return n

    while pending or waiting or running:
        while pending and pending[0].arrival <= t and (
                max_concurrency is None or len(waiting) + len(running) < max_concurrency):
            r = pending.popleft()
            r.result.submit_time = t
            waiting.append(r)
        if not waiting and not running:
            t = max(t, pending[0].arrival)
            continue
        # Decoding requests (running order) join a side; then admission and prefill (whole
        # prompts, FIFO, within the token budget), as vLLM's scheduler does.
        decoding = [r.rid for r in running if r.prefilled]
        for rid in decoding:
            if rid not in batches.side:
                batches.join(rid)
        batches.rebalance()
        kind, k_step = policy.choose(len(decoding), requests=decoding) if policy \
            else (STEP_KIND[mode], k)
        prefill: list[_Req] = []
        budget = max_num_batched_tokens
        while waiting and len(running) < max_num_seqs and (
                not prefill or waiting[0].prompt_len - waiting[0].cached_len <= budget):
            r = waiting.popleft()
            budget -= r.prompt_len - r.cached_len
            running.append(r)
            by_rid[r.rid] = r
            prefill.append(r)
        prefill_tokens = sum(r.prompt_len - r.cached_len for r in prefill)
        intake_tokens = sum(r.prompt_len for r in prefill)  # the drafter takes in whole prompts
        fresh = {rid for rid in decoding if by_rid[rid].drafts_at == by_rid[rid].tokens}
        plan = plan_step(batches, decoding, fresh, kind)
        colo = colocated and mode == "sd"
        catch_up_ms = profile.draft_ms(len(plan.catch_up), k_step, colo) if plan.catch_up else 0.0
        draft_ms = profile.draft_ms(len(plan.draft), k_step) if plan.draft else 0.0
        ingest_ms = profile.draft_prefill(intake_tokens) \
            if drafter and prefill and profile.draft_prefill else 0.0
        for rid in plan.catch_up:
            by_rid[rid].drafts_at = by_rid[rid].tokens
        emitted: dict[int, int] = {}  # index -> tokens produced this step
        n_tokens = 0
        spec = {}
        for rid in plan.verify:
            r = by_rid[rid]
            has = drafter and r.drafts_at == r.tokens
            spec[rid] = min(k_step, max(0, r.output_len - r.tokens - 1)) if has else 0
            n_tokens += 1 + spec[rid]
        if not plan.verify:
            verify_ms = 0.0
        elif plan.kind == "none" and not any(spec.values()):
            verify_ms = decode(len(plan.verify))
        else:
            verify_ms = profile.verify(n_tokens)
        verify_ms += profile.prefill_extra_ms(prefill_tokens, alone=not plan.verify)
        overhead = profile.overhead_ms(plan.kind) if plan.verify and drafter else 0.0
        if plan.overlapped:
            drafting = profile.draft_slowdown * (draft_ms + ingest_ms)
            body = max(drafting, profile.verify_slowdown * verify_ms)
        else:  # new prompts are taken in while the target works; a longer intake waits
            drafting = draft_ms
            body = verify_ms + max(0.0, ingest_ms - verify_ms)
        step_ms = catch_up_ms + body + overhead
        drafts_seen = []
        for rid in plan.verify:
            a = accept(spec[rid], k_step)
            emitted[by_rid[rid].index] = 1 + a
            if spec[rid]:
                drafts_seen.append((spec[rid], a))
        for rid in plan.draft:
            by_rid[rid].drafts_at = by_rid[rid].tokens
        for r in prefill:
            emitted[r.index] = 1
        if policy is not None:
            policy.observe_drafts(drafts_seen)
            for n_round, ms in ((len(plan.catch_up), catch_up_ms), (len(plan.draft), drafting)):
                if n_round:
                    policy.observe_round(n_round, k_step, ms)
            policy.observe_step(StepRecord(
                kind=plan.kind, k=k_step, verify=len(plan.verify), draft=len(plan.draft),
                catch_up=len(plan.catch_up), tokens=n_tokens + prefill_tokens,
                drafted_tokens=sum(spec.values()), verify_ms=verify_ms,
                draft_ms=(catch_up_ms + drafting) or None, step_ms=step_ms))
        if timeline is not None:
            timeline.append({"start_ms": 1000 * t, "step_ms": step_ms,
                             "draft_ms": drafting + catch_up_ms, "verify_ms": verify_ms,
                             "overlapped": plan.overlapped, "verify": len(plan.verify),
                             "kind": plan.kind, "k": k_step})
        t += step_ms / 1000
        batches.flip()
        if plan.verify:
            steps.append({"step_ms": step_ms, "draft_ms": drafting + catch_up_ms,
                          "verify_ms": verify_ms, "overlapped": plan.overlapped})
        for idx, n in emitted.items():
            r = reqs[idx]
            if r.tokens == 0:
                r.prefilled = True
                r.result.first_token_time = t
            n = min(n, r.output_len - r.tokens)
            r.tokens += n
            r.result.token_ids.extend([0] * n)
            if r.tokens >= r.output_len:
                r.result.finish_time = t
                r.result.finish_reason = "length"
                running.remove(r)
                batches.leave(r.rid)
    metrics = serving_metrics([r.result for r in reqs], t)
    metrics["mode"] = mode
    metrics["simulated"] = True
    if mode not in ("ar", "ar@all"):
        metrics["num_speculative_tokens"] = k
        if counters["drafts"]:
            metrics.update(
                acceptance_rate=counters["accepted"] / counters["draft_tokens"],
                mean_accepted_length=1 + counters["accepted"] / counters["drafts"],
                acceptance_per_position=[n / counters["drafts"] for n in counters["per_pos"]],
                num_drafts=counters["drafts"])
    if steps:
        metrics["num_steps"] = len(steps)
        metrics["mean_step_ms"] = statistics.fmean(s["step_ms"] for s in steps)
        if mode not in ("ar", "ar@all"):
            metrics["mean_draft_ms"] = statistics.fmean(s["draft_ms"] for s in steps)
            metrics["mean_verify_ms"] = statistics.fmean(s["verify_ms"] for s in steps)
    return metrics


# --------------------------------------------------------------------------- validation

VALIDATED_KEYS = (("output_throughput_tok_s", "out tok/s"), ("mean_e2el_ms", "mean E2EL ms"))


def sim_mode(run: dict, profile: CostProfile) -> str | None:
    """The simulator's mode for a bench or regime run, or None when the profile cannot simulate
    it: vLLM's own sd (its drafter runs inside the target's step, a cost the profile does not
    separate), or a run on other cores than the profile's."""
    label = run.get("label") or run.get("mode")
    cores = run.get("config", {}).get("target_cores")
    if label in ("ar@all",) or (label == "ar" and cores == "all" and
                                not _same_cores(profile.target_cores, "all")):
        return "ar@all" if profile.decode_all is not None else None
    if label in ("sd@0", "sd@all", "sd"):
        return None
    mode = MODE_ALIASES.get(label, label)
    if mode not in SIM_MODES or not _same_cores(profile.target_cores, cores):
        return None
    return mode


def validate_runs(profile: CostProfile, runs: list[dict], workload: dict, *,
                  seed: int | None = None) -> list[dict]:
    """Simulate every bench or regime run on the workload it served (requests, output length,
    requests in flight, rate, k) and compare; one row per (run, metric) with the measured value,
    the simulated one and the relative error. Runs the profile cannot simulate are skipped
    (see `sim_mode`). Regime-map runs of one engine (same mode, k and start-up) re-send the
    prompts of its earlier cells, which vLLM's prefix cache then holds: they are simulated as
    cached."""
    rows = []
    sent: dict[tuple, int] = {}  # engine -> requests its earlier runs sent (a prefix of the pool)
    for run in runs:
        engine = (run.get("label") or run.get("mode"), run.get("k"), run.get("engine_startup_s"))
        cached = sent.get(engine, 0) if "protocol" in run else 0
        n = int(run.get("num_requests") or workload.get("num_prompts", 16))
        sent[engine] = max(cached, n)
        mode = sim_mode(run, profile)
        if mode is None:
            continue
        config = run.get("config", {})
        rate = float(run.get("request_rate", workload.get("request_rate", "inf")))
        c = run.get("concurrency")
        in_flight = (2 * c if run.get("protocol") == "paper" else c) if c else \
            workload.get("max_concurrency")
        sim = simulate(profile, mode, num_prompts=n, cached_prompts=min(cached, n),
                       output_len=int(workload.get("output_len", 128)), request_rate=rate,
                       max_concurrency=in_flight,
                       k=int(config.get("num_speculative_tokens") or profile.k),
                       seed=int(config.get("seed", 0)) if seed is None else seed,
                       max_num_seqs=int(config.get("max_num_seqs", 256)))
        for key, label in VALIDATED_KEYS:
            measured, predicted = run.get(key), sim.get(key)
            if measured is None or predicted is None:
                continue
            rows.append({"mode": run.get("label") or run.get("mode") or mode,
                         "k": sim.get("num_speculative_tokens"), "request_rate": rate,
                         "concurrency": in_flight, "protocol": run.get("protocol"),
                         "metric": label, "measured": measured, "simulated": predicted,
                         "error": (predicted - measured) / measured})
    return rows


def _same_cores(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return True
    try:
        from minedraft.core.cores import parse_cores
        return set(parse_cores(str(a))) == set(parse_cores(str(b)))
    except ValueError:  # cores this machine does not have: compare the text
        return str(a) == str(b)


def format_validation(rows: list[dict], tolerance: float = 0.10) -> str:
    """Markdown error table (simulated against measured)."""
    lines = ["| mode | k | in flight | request rate | metric | bench | simulated | error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = "" if abs(r["error"]) <= tolerance else " (outside 10%)"
        lines.append(f"| {r['mode']} | {r.get('k') or '-'} | {r.get('concurrency') or '-'} | "
                     f"{r['request_rate']:g} | {r['metric']} | {r['measured']:.1f} | "
                     f"{r['simulated']:.1f} | {100 * r['error']:+.1f}%{flag} |")
    return "\n".join(lines)
