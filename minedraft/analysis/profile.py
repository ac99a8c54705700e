"""`minedraft profile`: measure a cost profile (see minedraft.simulate) through vLLM.

One engine per mode, reused over a grid of batch sizes (all requests of a batch sent at once,
every request generating `output_len` tokens):

* ``ar`` on the target's cores: the decode step time at each batch (median interval between
  engine steps after the prefill), and prefill time against prompt length (one request at a time,
  one output token: its TTFT);
* ``sd-ext`` (drafter in its own process on its own cores, drafting then verifying): the PSD
  scheduler's per-step trace gives the drafter's round time by drafted batch, the target's
  verification time by verified tokens and the per-step overhead; vLLM's speculative counters
  give the acceptance per draft position;
* ``psd`` (optional) at the largest batch: the extra cost of an overlapped step over
  max(draft, verify) predicted by the sd-ext curves (contention, communication).

ShareGPT prompt and answer lengths (token counts, the bench workload's order) are stored too.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from minedraft.core.costmodel import PROFILE_KIND, Curve
from minedraft.core.errors import ConfigError

DEFAULT_BATCHES = (1, 2, 4, 8)


@dataclass
class ProfileConfig:
    target: str
    draft: str | None = None
    k: int = 3
    batches: tuple[int, ...] = DEFAULT_BATCHES
    output_len: int = 64
    prefill_prompts: int = 6
    target_cores: str = "0"
    draft_cores: str | None = None
    dtype: str = "bfloat16"
    enforce_eager: bool = False
    max_model_len: int = 2048
    kv_cache_gib: int = 2
    psd: bool = True
    workload_prompts: int = 256
    seed: int = 0
    progress: bool = False

    def validate(self) -> "ProfileConfig":
        """Check every value, the models and the cores (raises ConfigError or ModelError, before
        any engine starts); returns self."""
        if self.k < 1:
            raise ConfigError(f"-k must be >= 1, got {self.k}")
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {self.batches}")
        if self.output_len < 4:
            raise ConfigError(f"--output-len must be >= 4, got {self.output_len}")
        if self.prefill_prompts < 1:
            raise ConfigError(f"--prefill-prompts must be >= 1, got {self.prefill_prompts}")
        _engine_config(self, "sd-ext")
        return self


# --------------------------------------------------------------------------- pure helpers

def step_intervals_ms(times: list[float]) -> list[float]:
    """Milliseconds between successive engine steps (times in seconds)."""
    return [1000 * (b - a) for a, b in zip(times, times[1:])]


def trace_points(records: list[dict]) -> dict:
    """From sd-ext trace lines: drafter rounds [batch, ms], target verification [tokens, ms] and
    per-step overheads (step - draft - verify, ms)."""
    draft, verify, overhead = [], [], []
    for r in records:
        if not r.get("verify") or "verify_ms" not in r:
            continue
        verify.append([r["verify"] + r.get("drafted_tokens", 0), r["verify_ms"]])
        if r.get("draft") and "draft_ms" in r:
            draft.append([r["draft"], r["draft_ms"]])
            if "step_ms" in r:
                overhead.append(r["step_ms"] - r["draft_ms"] - r["verify_ms"])
    return {"draft": draft, "verify": verify, "overhead": overhead}


def robust_points(points: list[list[float]], min_count: int = 3) -> list[list[float]]:
    """[x, median ms] per distinct x, keeping only the sizes seen at least `min_count` times when
    two or more are (odd sizes, such as the last steps of a run, are rare and noisy)."""
    groups: dict[float, list[float]] = {}
    for x, ms in points:
        groups.setdefault(x, []).append(ms)
    keep = {x: v for x, v in groups.items() if len(v) >= min_count}
    if len(keep) < 2:
        keep = groups
    return [[x, statistics.median(v)] for x, v in sorted(keep.items())]


def psd_overheads(records: list[dict], draft_round: Curve, verify: Curve) -> list[float]:
    """Per overlapped psd step: its time minus max(draft, verify) as the sd-ext curves predict
    them for its batches (contention and communication end up here)."""
    out = []
    for r in records:
        if r.get("overlapped") and r.get("verify") and r.get("draft") and "step_ms" in r:
            tokens = r["verify"] + r.get("drafted_tokens", 0)
            out.append(r["step_ms"] - max(draft_round(r["draft"]), verify(tokens)))
    return out


def linear_fit(points: list[list[float]], x_max: float) -> list[list[float]]:
    """Least-squares line through [x, ms] points (intercept and slope clipped at 0), as the two
    points [[0, a], [x_max, a + b x_max]]: prefill times are noisy, one line is enough."""
    if len(points) < 2:
        return [[0, 0.0]] + [list(p) for p in points]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx) if sxx else 0.0
    a = max(0.0, my - b * mx)
    return [[0, a], [x_max, a + b * x_max]]


def _median(values: list[float], default: float = 0.0) -> float:
    return statistics.median(values) if values else default


def sharegpt_lengths(tokenizer, n: int, seed: int, max_prompt_len: int) -> tuple[list, list]:
    """Prompt lengths (chat-templated, as bench sends them) and first-answer lengths of the first
    `n` ShareGPT records that bench's workload would take with `seed`."""
    import random

    from minedraft.bench.workloads import chat_prompt_ids, first_human_turn, read_sharegpt

    data = read_sharegpt()
    order = list(range(len(data.records)))
    random.Random(seed).shuffle(order)
    prompts, answers = [], []
    for idx in order:
        rec = data.records[idx]
        text = first_human_turn(rec)
        if text is None:
            continue
        ids = chat_prompt_ids(tokenizer, text)
        if not 4 <= len(ids) <= max_prompt_len:
            continue
        turns = rec.get("conversations") or []
        reply = next((t.get("value") for t in turns
                      if t.get("from") in ("gpt", "chatgpt", "assistant")
                      and isinstance(t.get("value"), str)), None)
        prompts.append(len(ids))
        answers.append(max(1, min(len(tokenizer.encode(reply, add_special_tokens=False)), 2048))
                       if reply else 1)
        if len(prompts) == n:
            break
    return prompts, answers


# --------------------------------------------------------------------------- measuring

def _log(msg: str) -> None:
    print(f"[profile] {msg}", file=sys.stderr, flush=True)


def _params(max_tokens: int):
    from vllm import SamplingParams
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def _engine_config(cfg: ProfileConfig, mode: str, trace_path: str | None = None):
    from minedraft.runtime.config import EngineConfig
    external = mode in ("sd-ext", "psd")
    return EngineConfig(mode=mode, target=cfg.target, draft=cfg.draft,
                        num_speculative_tokens=cfg.k, dtype=cfg.dtype,
                        target_cores=cfg.target_cores,
                        draft_cores=cfg.draft_cores if external else None,
                        trace_path=trace_path, max_model_len=cfg.max_model_len,
                        kv_cache_gib=cfg.kv_cache_gib, enforce_eager=cfg.enforce_eager,
                        seed=cfg.seed).validate()


def _run(engine, requests, max_tokens: int, concurrency: int | None = None, on_step=None):
    from minedraft.bench.runner import run_requests
    return run_requests(engine, requests, lambda _r: _params(max_tokens), progress=False,
                        max_concurrency=concurrency, on_step=on_step)


def measure_ar(cfg: ProfileConfig, requests) -> dict:
    from minedraft.runtime.engine import Engine
    out = {"decode": [], "prefill": []}
    with Engine(_engine_config(cfg, "ar")) as engine:
        _log(f"ar engine ready in {engine.startup_s:.0f} s")
        _run(engine, requests[:2], 8)  # warm-up
        for b in cfg.batches:
            times: list[float] = []
            _run(engine, requests[:b], cfg.output_len, on_step=times.append)
            ms = _median(step_intervals_ms(times))
            out["decode"].append([b, ms])
            _log(f"ar batch {b}: {ms:.1f} ms per decode step")
        by_len = sorted(requests, key=lambda r: len(r.prompt_token_ids))
        n = cfg.prefill_prompts
        picks = [by_len[round(i * (len(by_len) - 1) / max(1, n - 1))] for i in range(n)]
        _run(engine, [by_len[len(by_len) // 2]], 1)  # warm-up: the first prefill is slower
        for req in picks:
            results, _ = _run(engine, [req], 1)
            r = results[0]
            out["prefill"].append([r.prompt_len, 1000 * (r.first_token_time - r.submit_time)])
        _log(f"prefill points {[[p, round(ms, 1)] for p, ms in out['prefill']]}")
        out["prefill_fit"] = linear_fit(out["prefill"], max(len(r.prompt_token_ids)
                                                            for r in requests))
    return out


def measure_speculative(cfg: ProfileConfig, requests, mode: str, batches) -> dict:
    import msgspec
    from minedraft.core.trace import read_trace, trace_size
    from minedraft.runtime.engine import Engine
    fd, trace = tempfile.mkstemp(prefix=f"minedraft-profile-{mode}-", suffix=".jsonl")
    os.close(fd)
    records: list[dict] = []
    try:
        with Engine(_engine_config(cfg, mode, trace)) as engine:
            _log(f"{mode} engine ready in {engine.startup_s:.0f} s")
            _run(engine, requests[:2], 8)  # warm-up (starts the drafter's caches too)
            engine.spec.reset()
            for b in batches:
                offset = trace_size(trace)
                n = b if mode == "sd-ext" else 2 * b
                _run(engine, requests[:n], cfg.output_len, concurrency=b)
                new = read_trace(trace, offset)
                records.extend({**msgspec.to_builtins(r), "batch": b} for r in new)
                _log(f"{mode} batch {b}: {len(new)} steps")
            spec = engine.spec.summary()
        records = records or [msgspec.to_builtins(r) for r in read_trace(trace)]
    finally:
        os.unlink(trace)
    return {"records": records, "spec": spec}


def run_profile(cfg: ProfileConfig) -> dict:
    """Measure everything and return the profile document (JSON-ready)."""
    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.runtime.api import load_workload
    from minedraft.runtime.engine import default_draft
    cfg.validate()
    t0 = time.perf_counter()
    tokenizer = models.load_tokenizer(models.resolve(cfg.target))
    max_prompt = cfg.max_model_len - cfg.output_len  # bench's filter for the same output_len
    n_req = max(2 * max(cfg.batches), cfg.prefill_prompts, 8)
    requests = load_workload("sharegpt", tokenizer, n_req, seed=cfg.seed,
                             max_prompt_len=max_prompt)
    prompt_lens, output_lens = sharegpt_lengths(tokenizer, cfg.workload_prompts, cfg.seed,
                                                max_prompt)
    ar = measure_ar(cfg, requests)
    sdx = measure_speculative(cfg, requests, "sd-ext", cfg.batches)
    pts = trace_points(sdx["records"])
    if not pts["verify"] or not pts["draft"]:
        raise RuntimeError("the sd-ext trace has no verified steps; nothing to profile")
    draft_curve = Curve(robust_points(pts["draft"]), "drafter.round_ms")
    verify_curve = Curve(robust_points(pts["verify"]), "target.verify_ms")
    overhead = {"sd": max(0.0, _median(pts["overhead"]))}
    psd_raw = None
    if cfg.psd:
        psd = measure_speculative(cfg, requests, "psd", [max(cfg.batches)])
        psd_raw = psd["records"]
        overhead["psd"] = max(0.0, _median(psd_overheads(psd_raw, draft_curve, verify_curve),
                                           overhead["sd"]))
    else:
        overhead["psd"] = overhead["sd"]
    from minedraft.core.cores import omp_bind, parse_cores
    draft_cores = cfg.draft_cores or ",".join(
        map(str, sorted(set(parse_cores("all")) - set(parse_cores(cfg.target_cores)))))
    doc = {
        "kind": PROFILE_KIND, "version": 1, "k": cfg.k,
        "source": "measured by `minedraft profile` through vLLM on this machine",
        "assumption": "none: every number measured (times are medians per batch)",
        "devices": {"target_cores": omp_bind(cfg.target_cores), "draft_cores": draft_cores},
        "models": {"target": cfg.target, "draft": default_draft(_engine_config(cfg, "ar"))},
        "target": {"decode_ms": ar["decode"], "verify_ms": verify_curve.to_points(),
                   "prefill_ms": ar["prefill_fit"], "prefill_points_ms": ar["prefill"]},
        "drafter": {"round_ms": draft_curve.to_points()},
        "overhead_ms": overhead,
        "acceptance_per_position": sdx["spec"].get("acceptance_per_position", []),
        "acceptance_rate": sdx["spec"].get("acceptance_rate"),
        "workload": {"dataset": "sharegpt", "seed": cfg.seed, "prompt_lens": prompt_lens,
                     "output_lens": output_lens},
        "config": asdict(cfg),
        "raw": {"sd_ext_trace": sdx["records"], "psd_trace": psd_raw},
        "profile_seconds": time.perf_counter() - t0,
        **provenance(),
    }
    doc["config"]["batches"] = list(cfg.batches)
    _log(f"done in {doc['profile_seconds']:.0f} s")
    return doc


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"batch sizes: expected e.g. 1,2,4,8, got {text!r}") from None
    if not values or min(values) < 1 or any(math.isnan(v) for v in values):
        raise ValueError(f"batch sizes must be integers >= 1, got {text!r}")
    return tuple(sorted(set(values)))
