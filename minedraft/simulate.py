"""A discrete-event simulation of serving with ar, sd or psd, driven by a measured cost profile.

The model is vLLM's own: the engine runs in steps, and every step's cost comes from the profile as
a function of its batch:

* ``ar``:  a step decodes every running request: ``decode(batch)``.
* ``sd``:  draft then verify, sequentially: ``k draft_token(batch) + verify(tokens) + overhead``
  (``tokens`` = the requests' 1 + k positions). On this machine that is bench's ``sd-ext`` (the
  drafter on its own cores); a profile may give ``colocated_round_ms`` for a drafter that shares
  the target's devices (vLLM's own ``sd``, the paper's standard SD).
* ``psd``: two sub-batches alternate: the drafter drafts one while the target verifies the other,
  so a step costs ``max(k draft_token(|d|), verify(tokens of v)) + overhead``. Requests join the
  smaller side when their prefill is done; with one side only the step runs sequentially, as
  minedraft.scheduler does.

Prompts are prefilled whole in the step after they are submitted (first token at its end).
Arrivals, the concurrency cap and the metrics are those of ``bench`` (same Poisson offsets for the
same seed, same `serving_metrics`), so the output dict has the same keys. Accepted draft lengths
are drawn from the measured acceptance per draft position (vLLM's definition: the share of drafts
whose first i tokens were all accepted).

Profile JSON (``kind: minedraft-cost-profile``; `minedraft profile` writes one)::

    {"kind": "minedraft-cost-profile", "version": 1, "k": 3, "source": "...", "assumption": "...",
     "target": {"decode_ms": [[batch, ms], ...], "verify_ms": [[tokens, ms], ...],
                "prefill_ms": [[prompt_tokens, ms], ...]},
     "drafter": {"round_ms": [[batch, ms], ...], "colocated_round_ms": [[batch, ms], ...]},
     "overhead_ms": {"sd": 2.0, "psd": 5.0},
     "acceptance_per_position": [0.52, 0.29, 0.18],
     "workload": {"prompt_lens": [...], "output_lens": [...]}}

Drafter rounds are measured at the profile's k; other k scale them per token (round / k).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from minedraft.bench.metrics import serving_metrics
from minedraft.bench.runner import RequestResult, arrival_offsets

PROFILE_KIND = "minedraft-cost-profile"
SIM_MODES = ("ar", "sd", "psd")
MODE_ALIASES = {"sd-ext": "sd"}  # bench's sd-ext is the simulator's sd (drafter on its own cores)


class ProfileError(ValueError):
    """A cost profile that cannot be used; one line for the user."""


# --------------------------------------------------------------------------- cost curves

class Curve:
    """Milliseconds as a function of one size (batch or tokens): piecewise-linear through the
    measured points (duplicates: median), extended beyond them with the least-squares slope."""

    def __init__(self, points, name: str = "curve"):
        groups: dict[float, list[float]] = {}
        try:
            for x, ms in points:
                groups.setdefault(float(x), []).append(float(ms))
        except (TypeError, ValueError):
            raise ProfileError(f"{name}: expected [[size, ms], ...], got {points!r}") from None
        if not groups:
            raise ProfileError(f"{name}: no points")
        self.name = name
        self.xs = sorted(groups)
        self.ys = [statistics.median(groups[x]) for x in self.xs]
        n = len(self.xs)
        if n == 1:
            self.slope = 0.0
        else:
            mx, my = statistics.fmean(self.xs), statistics.fmean(self.ys)
            sxx = sum((x - mx) ** 2 for x in self.xs)
            self.slope = max(0.0, sum((x - mx) * (y - my) for x, y in zip(self.xs, self.ys)) / sxx)

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x <= xs[0]:
            return max(0.0, ys[0] - self.slope * (xs[0] - x))
        if x >= xs[-1]:
            return ys[-1] + self.slope * (x - xs[-1])
        lo = max(i for i in range(len(xs)) if xs[i] <= x)
        x0, x1, y0, y1 = xs[lo], xs[lo + 1], ys[lo], ys[lo + 1]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    def to_points(self) -> list[list[float]]:
        return [[x, y] for x, y in zip(self.xs, self.ys)]


@dataclass
class CostProfile:
    k: int
    decode: Curve
    verify: Curve
    prefill: Curve
    draft_round: Curve  # ms per drafter round of `k` tokens, by batch
    colocated_round: Curve | None
    overhead_sd_ms: float
    overhead_psd_ms: float
    acceptance_per_position: list[float]
    prompt_lens: list[int] = field(default_factory=list)
    output_lens: list[int] = field(default_factory=list)
    source: str = ""
    assumption: str = ""
    target_cores: str | None = None  # where the profile's target ran (measured profiles)

    def draft_ms(self, batch: int, k: int, colocated: bool = False) -> float:
        if batch <= 0:
            return 0.0
        curve = self.colocated_round if colocated and self.colocated_round else self.draft_round
        return curve(batch) * k / self.k

    def prefill_extra_ms(self, tokens: int, alone: bool) -> float:
        """Cost of prefilling `tokens` prompt tokens in a step: the whole prefill step when
        nothing else runs, else its marginal cost on top of the step."""
        if tokens <= 0:
            return 0.0
        return self.prefill(tokens) if alone else max(0.0, self.prefill(tokens) - self.prefill(0))

    def conditional_acceptance(self, k: int) -> list[float]:
        """P(position i accepted | positions before it accepted), i = 1..k; positions beyond the
        measured ones repeat the last measured ratio."""
        p = [1.0] + [min(1.0, max(0.0, float(x))) for x in self.acceptance_per_position]
        ratios = [p[i] / p[i - 1] if p[i - 1] > 0 else 0.0 for i in range(1, len(p))]
        if not ratios:
            ratios = [0.0]
        return [ratios[min(i, len(ratios) - 1)] for i in range(k)]


def load_profile(path_or_doc) -> CostProfile:
    """A CostProfile from a profile JSON file (or its parsed dict)."""
    if isinstance(path_or_doc, dict):
        doc = path_or_doc
    else:
        path = Path(path_or_doc)
        if not path.is_file():
            raise ProfileError(f"profile file not found: {path}")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != PROFILE_KIND:
        raise ProfileError(f"not a cost profile (expected \"kind\": \"{PROFILE_KIND}\")")
    try:
        target, drafter = doc["target"], doc.get("drafter", {})
        k = int(doc.get("k", 1))
        acc = [float(a) for a in doc.get("acceptance_per_position", [])]
        overhead = doc.get("overhead_ms", {})
        prefill = target.get("prefill_ms") or [[0, 0.0]]
        round_pts = drafter.get("round_ms") or [[1, 0.0]]
        colocated = drafter.get("colocated_round_ms")
        workload = doc.get("workload", {})
        return CostProfile(
            k=k, decode=Curve(target["decode_ms"], "target.decode_ms"),
            verify=Curve(target.get("verify_ms") or target["decode_ms"], "target.verify_ms"),
            prefill=Curve(prefill, "target.prefill_ms"),
            draft_round=Curve(round_pts, "drafter.round_ms"),
            colocated_round=Curve(colocated, "drafter.colocated_round_ms") if colocated else None,
            overhead_sd_ms=float(overhead.get("sd", 0.0)),
            overhead_psd_ms=float(overhead.get("psd", overhead.get("sd", 0.0))),
            acceptance_per_position=acc,
            prompt_lens=[int(x) for x in workload.get("prompt_lens", [])],
            output_lens=[int(x) for x in workload.get("output_lens", [])],
            source=str(doc.get("source", "")), assumption=str(doc.get("assumption", "")),
            target_cores=(doc.get("devices") or {}).get("target_cores"))
    except KeyError as exc:
        raise ProfileError(f"cost profile lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"bad cost profile: {exc}") from None


# --------------------------------------------------------------------------- the simulation

@dataclass
class _Req:
    index: int
    prompt_len: int
    output_len: int
    arrival: float
    result: RequestResult
    tokens: int = 0
    prefilled: bool = False
    side: int | None = None
    drafted: bool = False


def simulate(profile: CostProfile, mode: str, *, num_prompts: int = 16, output_len: int | None = 128,
             request_rate: float = math.inf, max_concurrency: int | None = None,
             k: int | None = None, seed: int = 0, max_num_seqs: int = 256,
             max_num_batched_tokens: int = 8192, prompt_len: int | None = None,
             colocated: bool = False, timeline: list | None = None) -> dict:
    """Serve `num_prompts` requests and return bench's serving metrics (plus speculative counters).

    `output_len` None draws each request's length from the profile's ShareGPT answer lengths;
    prompt lengths come from the profile's ShareGPT prompts (or `prompt_len` for all).
    `colocated`: in sd, use the profile's drafter-on-the-target's-devices costs when it has them.
    `timeline`, if a list, receives one dict per step (start, end, draft and verify spans).
    """
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in SIM_MODES:
        raise ValueError(f"mode must be one of {', '.join(SIM_MODES)}, got {mode!r}")
    k = profile.k if k is None else k
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    rng = random.Random(seed)
    cond = profile.conditional_acceptance(k)
    plens = profile.prompt_lens or [128]
    olens = profile.output_lens or [128]
    offsets = arrival_offsets(num_prompts, request_rate, seed)
    reqs = []
    for i, t in enumerate(offsets):
        pl = prompt_len or plens[i % len(plens)]
        ol = output_len or max(1, olens[i % len(olens)])
        reqs.append(_Req(i, pl, ol, t, RequestResult(i, pl)))
    pending = deque(reqs)
    waiting: deque[_Req] = deque()
    running: list[_Req] = []
    in_flight = 0
    verify_side = 0
    counters = {"drafts": 0, "draft_tokens": 0, "accepted": 0, "per_pos": [0] * k}
    steps: list[dict] = []
    t = 0.0

    def accept(n_draft: int) -> int:
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

    while pending or in_flight:
        while pending and pending[0].arrival <= t and (
                max_concurrency is None or in_flight < max_concurrency):
            r = pending.popleft()
            r.result.submit_time = t
            waiting.append(r)
            in_flight += 1
        if not in_flight:
            t = max(t, pending[0].arrival)
            continue
        # Admission and prefill (whole prompts, FIFO, within the token budget).
        decoding = [r for r in running if r.prefilled]
        prefill: list[_Req] = []
        budget = max_num_batched_tokens
        while waiting and len(running) < max_num_seqs and (
                not prefill or waiting[0].prompt_len <= budget):
            r = waiting.popleft()
            budget -= r.prompt_len
            running.append(r)
            prefill.append(r)
        prefill_tokens = sum(r.prompt_len for r in prefill)
        emitted: dict[int, int] = {}  # index -> tokens produced this step
        draft_ms = verify_ms = 0.0
        overhead = 0.0
        if mode == "ar":
            verify_ms = (profile.decode(len(decoding)) if decoding else 0.0) + \
                profile.prefill_extra_ms(prefill_tokens, alone=not decoding)
            step_ms = verify_ms
            emitted = {r.index: 1 for r in decoding}
            overlapped = False
        else:
            if mode == "sd":
                verify_set, draft_set = decoding, decoding
            else:
                for r in decoding:  # joiners take the smaller side
                    if r.side is None:
                        sizes = _sizes(decoding)
                        r.side = 0 if sizes[0] <= sizes[1] else 1
                        r.drafted = False
                _rebalance(decoding)
                verify_set = [r for r in decoding if r.side == verify_side]
                draft_set = [r for r in decoding if r.side != verify_side]
                if not verify_set and draft_set:
                    verify_side = 1 - verify_side
                    verify_set, draft_set = draft_set, []
                if not draft_set:
                    draft_set = verify_set  # one side only: draft it first, sequentially
            overlapped = mode == "psd" and draft_set is not verify_set
            if draft_set:
                draft_ms = profile.draft_ms(len(draft_set), k, colocated and mode == "sd")
            n_tokens = 0
            spec = {}
            for r in verify_set:
                has_draft = r.drafted or not overlapped
                spec[r.index] = min(k, max(0, r.output_len - r.tokens - 1)) if has_draft else 0
                n_tokens += 1 + spec[r.index]
            verify_ms = (profile.verify(n_tokens) if verify_set else 0.0) + \
                profile.prefill_extra_ms(prefill_tokens, alone=not verify_set)
            if decoding:
                overhead = profile.overhead_psd_ms if overlapped else profile.overhead_sd_ms
            step_ms = (max(draft_ms, verify_ms) if overlapped else draft_ms + verify_ms) + overhead
            for r in verify_set:
                emitted[r.index] = 1 + accept(spec[r.index])
                r.drafted = False
            if overlapped:
                for r in draft_set:
                    r.drafted = True
                verify_side = 1 - verify_side
        for r in prefill:
            emitted[r.index] = 1
        if timeline is not None:
            timeline.append({"start_ms": 1000 * t, "step_ms": step_ms, "draft_ms": draft_ms,
                             "verify_ms": verify_ms, "overlapped": overlapped,
                             "verify": len(decoding) if mode == "ar" else len(verify_set)})
        t += step_ms / 1000
        if decoding:
            steps.append({"step_ms": step_ms, "draft_ms": draft_ms, "verify_ms": verify_ms,
                          "overlapped": overlapped})
        by_index = {r.index: r for r in running}
        for idx, n in emitted.items():
            r = by_index[idx]
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
                in_flight -= 1
    metrics = serving_metrics([r.result for r in reqs], t)
    metrics["mode"] = mode
    metrics["simulated"] = True
    if mode != "ar":
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
        if mode != "ar":
            metrics["mean_draft_ms"] = statistics.fmean(s["draft_ms"] for s in steps)
            metrics["mean_verify_ms"] = statistics.fmean(s["verify_ms"] for s in steps)
    return metrics


def _sizes(decoding: list[_Req]) -> list[int]:
    sizes = [0, 0]
    for r in decoding:
        if r.side is not None:
            sizes[r.side] += 1
    return sizes


def _rebalance(decoding: list[_Req]) -> None:
    """Keep the sides within one request of each other (undrafted requests move first)."""
    while True:
        sizes = _sizes(decoding)
        big = 0 if sizes[0] > sizes[1] else 1
        if sizes[big] - sizes[1 - big] <= 1:
            return
        movers = [r for r in decoding if r.side == big]
        r = min(movers, key=lambda r: r.drafted)
        r.side, r.drafted = 1 - big, False


# --------------------------------------------------------------------------- validation

VALIDATED_KEYS = (("output_throughput_tok_s", "out tok/s"), ("mean_e2el_ms", "mean E2EL ms"))


def validate_runs(profile: CostProfile, runs: list[dict], workload: dict, *,
                  seed: int | None = None) -> list[dict]:
    """Simulate every bench run (each with its `request_rate` and `config`) on the workload it
    served (`num_prompts`, `output_len`, `max_concurrency`); one row per (run, metric) with the
    measured value, the simulated one and the relative error."""
    rows = []
    for run in runs:
        mode = run.get("mode")
        config = run.get("config", {})
        colocated = mode == "sd"  # vLLM's own sd: the drafter on the target's cores
        if MODE_ALIASES.get(mode, mode) not in SIM_MODES or (
                colocated and profile.colocated_round is None):
            continue  # the profile has no costs for this run
        if not _same_cores(profile.target_cores, config.get("target_cores")):
            continue  # measured on other cores than the profile's target

        rate = float(run.get("request_rate", workload.get("request_rate", "inf")))
        sim = simulate(profile, mode,
                       num_prompts=int(run.get("num_requests") or workload.get("num_prompts", 16)),
                       output_len=int(workload.get("output_len", 128)), request_rate=rate,
                       max_concurrency=workload.get("max_concurrency"),
                       k=int(config.get("num_speculative_tokens") or profile.k),
                       seed=int(config.get("seed", 0)) if seed is None else seed,
                       max_num_seqs=int(config.get("max_num_seqs", 256)), colocated=colocated)
        for key, label in VALIDATED_KEYS:
            measured, predicted = run.get(key), sim.get(key)
            if measured is None or predicted is None:
                continue
            rows.append({"mode": mode, "k": None if mode == "ar" else sim.get(
                "num_speculative_tokens"), "request_rate": rate, "metric": label,
                         "measured": measured, "simulated": predicted,
                         "error": (predicted - measured) / measured})
    return rows


def _same_cores(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return True
    try:
        from minedraft.config import parse_cores
        return set(parse_cores(str(a))) == set(parse_cores(str(b)))
    except ValueError:  # cores this machine does not have: compare the text
        return str(a) == str(b)


def format_validation(rows: list[dict], tolerance: float = 0.10) -> str:
    lines = ["| mode | k | request rate | metric | bench | simulated | error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = "" if abs(r["error"]) <= tolerance else " (outside 10%)"
        lines.append(f"| {r['mode']} | {r.get('k') or '-'} | {r['request_rate']:g} | {r['metric']} | "
                     f"{r['measured']:.1f} | {r['simulated']:.1f} | "
                     f"{100 * r['error']:+.1f}%{flag} |")
    return "\n".join(lines)
