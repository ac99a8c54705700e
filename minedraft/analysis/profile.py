"""`minedraft profile`: measure a cost profile (minedraft.core.costmodel) through vLLM, in minutes.

One engine per mode, each reused over a grid of batch sizes (all requests of a batch sent at
once, every request generating `output_len` tokens):

* ``ar`` on the target's cores (and, with `all_cores`, on every core): the decode step time by
  batch (median interval between engine steps after the prefill) and prefill time by prompt
  length (one request at a time: its TTFT);
* the drafter alone, through its own channel (the process the scheduler would start): round
  time by requests and k, and its prefill time by prompt tokens;
* ``sd-ext`` at k: the target's verification time by tokens (from the PSD scheduler's trace),
  the per-step overhead of sequential steps, and vLLM's acceptance per draft position on the
  workload;
* ``psd`` at k at two batch sizes: how much slower drafting and verification run side by side
  than alone (memory bandwidth is shared), and the per-step overhead of overlapped steps.

ShareGPT prompt and answer lengths (the bench workload's order) are stored too. All times are
medians in ms, all of them measured on this machine.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from minedraft.core.costmodel import PROFILE_KIND, Curve, DraftCost
from minedraft.core.errors import ConfigError

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)
WORKLOAD_OUTPUT_LEN = 64  # the workload whose prompt lengths the profile stores


@dataclass
class ProfileConfig:
    """What `minedraft profile` measures: models, the largest k, batch sizes, output tokens per
    measurement, cores, dtype, the lean drafter's quantization, and which optional engines (psd,
    every core) run."""
    target: str
    draft: str | None = None
    k: int = 4  # the largest k measured (drafter rounds: 1..k; sd-ext and psd: k)
    batches: tuple[int, ...] = DEFAULT_BATCHES
    output_len: int = 32
    prefill_prompts: int = 6
    target_cores: str = "0"
    draft_cores: str | None = None
    dtype: str = "bfloat16"
    draft_quantization: str | None = None
    enforce_eager: bool = False
    max_model_len: int = 2048
    kv_cache_gib: int = 2
    psd: bool = True
    all_cores: bool = True  # also ar on every core (plain decoding's use of the drafter's core)
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


def _decode_only(r: dict) -> bool:
    """A step whose target work is verification alone (no prompt prefilled in it)."""
    return not r.get("tokens") or r["tokens"] == r.get("verify", 0) + r.get("drafted_tokens", 0)


def sequential_points(records: list[dict]) -> dict:
    """From sd-ext trace records: verification [tokens, ms] and the per-step overhead of
    sequential steps (step - draft - verify, ms)."""
    verify, overhead = [], []
    for r in records:
        if not r.get("verify") or "verify_ms" not in r or not _decode_only(r):
            continue
        verify.append([r["verify"] + r.get("drafted_tokens", 0), r["verify_ms"]])
        if "draft_ms" in r and "step_ms" in r:
            overhead.append(r["step_ms"] - r["draft_ms"] - r["verify_ms"])
    return {"verify": verify, "overhead": overhead}


def overlap_terms(records: list[dict], draft: DraftCost, verify: Curve, k: int) -> dict:
    """From psd trace records (overlapped, decode-only steps): how much slower drafting and
    verification ran side by side than the isolated curves say (ratios of sums), and the
    per-step overhead beyond max(draft, verify) (mean, ms)."""
    steps = [r for r in records if r.get("kind") == "psd" and r.get("verify") and r.get("draft")
             and "draft_ms" in r and "verify_ms" in r and _decode_only(r)]
    if not steps:
        return {"draft": 1.0, "verify": 1.0, "overhead": 0.0}
    c_draft = sum(r["draft_ms"] for r in steps) / sum(draft(r["draft"], k) for r in steps)
    c_verify = sum(r["verify_ms"] for r in steps) / sum(
        verify(r["verify"] + r.get("drafted_tokens", 0)) for r in steps)
    overhead = statistics.fmean(r["step_ms"] - max(r["draft_ms"], r["verify_ms"])
                                for r in steps)
    return {"draft": c_draft, "verify": c_verify, "overhead": max(0.0, overhead)}


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


def _engine_config(cfg: ProfileConfig, mode: str, trace_path: str | None = None,
                   cores: str | None = None, target: str | None = None):
    from minedraft.runtime.config import EngineConfig
    external = mode in ("sd-ext", "psd")
    return EngineConfig(mode=mode, target=target or cfg.target, draft=cfg.draft,
                        num_speculative_tokens=cfg.k, dtype=cfg.dtype,
                        target_cores=cores or cfg.target_cores,
                        draft_cores=cfg.draft_cores if external else None,
                        draft_quantization=cfg.draft_quantization if external else None,
                        trace_path=trace_path, max_model_len=cfg.max_model_len,
                        kv_cache_gib=cfg.kv_cache_gib, enforce_eager=cfg.enforce_eager,
                        seed=cfg.seed).validate()


def _run(engine, requests, max_tokens: int, concurrency: int | None = None, on_step=None):
    from minedraft.bench.runner import run_requests
    return run_requests(engine, requests, lambda _r: _params(max_tokens), progress=False,
                        max_concurrency=concurrency, on_step=on_step)


def measure_ar(cfg: ProfileConfig, requests, cores: str, prefill: bool = True) -> dict:
    """Decode step ms by batch (and prefill ms by prompt tokens) of the target on `cores`."""
    from minedraft.runtime.engine import Engine
    out = {"decode": [], "prefill": []}
    with Engine(_engine_config(cfg, "ar", cores=cores)) as engine:
        _log(f"ar on cores {cores}: engine ready in {engine.startup_s:.0f} s")
        _run(engine, requests[:2], 8)  # warm-up
        for b in cfg.batches:
            times: list[float] = []
            _run(engine, requests[:b], cfg.output_len, on_step=times.append)
            out["decode"].append([b, _median(step_intervals_ms(times))])
        _log(f"ar decode ms by batch {[[b, round(ms, 1)] for b, ms in out['decode']]}")
        if prefill:
            by_len = sorted(requests, key=lambda r: len(r.prompt_token_ids))
            n = cfg.prefill_prompts
            picks = [by_len[round(i * (len(by_len) - 1) / max(1, n - 1))] for i in range(n)]
            _run(engine, [by_len[len(by_len) // 2]], 1)  # the first prefill is slower
            for req in picks:
                r = _run(engine, [req], 1)[0][0]
                out["prefill"].append([r.prompt_len, 1000 * (r.first_token_time - r.submit_time)])
    return out


def measure_drafter(cfg: ProfileConfig, requests) -> dict:
    """The drafter alone, through its channel: round ms by (requests, k) for k = 1..cfg.k, and
    its prefill ms by prompt tokens (taking in new prompts)."""
    from minedraft import models
    from minedraft.core import messages as m
    from minedraft.drafter.client import DrafterClient, drafter_command, free_tcp_address
    from minedraft.drafter.client import spawn_drafter
    from minedraft.runtime.engine import default_draft

    config = _engine_config(cfg, "sd-ext")
    address = free_tcp_address()
    settings = config.psd_settings(str(models.resolve(default_draft(config))))
    cmd = drafter_command(settings.draft, address, cores=settings.draft_cores,
                          dtype=settings.draft_dtype, max_model_len=cfg.max_model_len,
                          backend=settings.backend, quantization=settings.draft_quantization)
    client = DrafterClient(address, spawn_drafter(cmd), timeout_s=120)
    rounds, prefill = [], []
    try:
        client.send(m.Hello())
        client.receive(timeout_s=600)
        for b in cfg.batches:
            seqs = {f"p{b}-{i}": list(r.prompt_token_ids) for i, r in
                    enumerate(requests[:b])}
            client.send(m.Draft(k=1, reqs={rid: m.Tokens(0, s) for rid, s in seqs.items()},
                                ingest=list(seqs)))
            reply = client.receive()
            prefill.append([sum(map(len, seqs.values())), reply.draft_ms])
            for k in range(1, cfg.k + 1):
                times = []
                for rep in range(3):  # each round: the last round's drafts half accepted
                    reqs = {}
                    for rid, s in seqs.items():
                        start = len(s)
                        s.extend([s[-1]] * (1 + k // 2))
                        reqs[rid] = m.Tokens(start, s[start:])
                    client.send(m.Draft(k=k, reqs=reqs))
                    times.append(client.receive().draft_ms)
                rounds.append([b, k, statistics.median(times)])
            client.send(m.Draft(k=1, reqs={}, free=list(seqs)))
            client.receive()
    finally:
        client.close()
    _log(f"drafter round ms [batch, k, ms] {[[b, k, round(ms, 1)] for b, k, ms in rounds]}")
    return {"rounds": rounds, "prefill": prefill}


def measure_speculative(cfg: ProfileConfig, requests, mode: str, batches) -> dict:
    """Trace records (as dicts, with the batch) and vLLM's speculative counters of `mode` runs
    at each batch (psd: twice the batch in requests, so both sides stay busy)."""
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
                _run(engine, requests[:n], cfg.output_len, concurrency=n)
                new = read_trace(trace, offset)
                records.extend({**msgspec.to_builtins(r), "batch": b} for r in new)
                _log(f"{mode} batch {b}: {len(new)} steps")
            spec = engine.spec.summary()
    finally:
        os.unlink(trace)
    return {"records": records, "spec": spec}


def run_profile(cfg: ProfileConfig) -> dict:
    """Measure everything and return the profile document (JSON-ready)."""
    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.core.cores import omp_bind
    from minedraft.runtime.api import load_workload
    from minedraft.runtime.engine import default_draft
    cfg.validate()
    t0 = time.perf_counter()
    tokenizer = models.load_tokenizer(models.resolve(cfg.target))
    max_prompt = cfg.max_model_len - cfg.output_len  # bench's filter for the same output_len
    n_req = max(2 * max(cfg.batches), cfg.prefill_prompts, 8)
    requests = load_workload("sharegpt", tokenizer, n_req, seed=cfg.seed,
                             max_prompt_len=max_prompt)
    # the lengths of the requests bench and the regime map send (64 output tokens by default)
    prompt_lens, output_lens = sharegpt_lengths(tokenizer, cfg.workload_prompts, cfg.seed,
                                                cfg.max_model_len - WORKLOAD_OUTPUT_LEN)
    ar = measure_ar(cfg, requests, cfg.target_cores)
    ar_all = measure_ar(cfg, requests, "all", prefill=False) if cfg.all_cores else None
    drafter = measure_drafter(cfg, requests)
    draft_cost = DraftCost(drafter["rounds"], cfg.k)
    sdx = measure_speculative(cfg, requests, "sd-ext", cfg.batches)
    pts = sequential_points(sdx["records"])
    if not pts["verify"]:
        raise RuntimeError("the sd-ext trace has no verified steps; nothing to profile")
    verify_curve = Curve(robust_points(pts["verify"]), "target.verify_ms")
    overlap = {"draft": 1.0, "verify": 1.0, "overhead": _median(pts["overhead"])}
    psd_raw = None
    if cfg.psd:
        big = sorted(cfg.batches)
        psd_batches = sorted({big[len(big) // 2], big[-1]})
        psd = measure_speculative(cfg, requests, "psd", psd_batches)
        psd_raw = psd["records"]
        overlap = overlap_terms(psd_raw, draft_cost, verify_curve, cfg.k)
    config = _engine_config(cfg, "sd-ext")
    doc = {
        "kind": PROFILE_KIND, "version": 2, "k": cfg.k,
        "source": "measured by `minedraft profile` through vLLM on this machine",
        "assumption": "none: every number measured (times are medians)",
        "devices": {"target_cores": omp_bind(cfg.target_cores),
                    "draft_cores": config.drafter_cores()},
        "models": {"target": cfg.target, "draft": default_draft(config),
                   "draft_quantization": cfg.draft_quantization},
        "target": {"decode_ms": ar["decode"], "verify_ms": verify_curve.to_points(),
                   "prefill_ms": linear_fit(ar["prefill"], max_prompt),
                   "prefill_points_ms": ar["prefill"],
                   **({"decode_all_cores_ms": ar_all["decode"]} if ar_all else {})},
        "drafter": {"round_ms": drafter["rounds"],
                    "prefill_ms": linear_fit(drafter["prefill"], max(p[0] for p in
                                                                     drafter["prefill"]))},
        "overlap": {"draft_slowdown": overlap["draft"], "verify_slowdown": overlap["verify"]},
        "overhead_ms": {"sequential": max(0.0, _median(pts["overhead"])),
                        "psd": overlap["overhead"], "none": 0.0},
        "acceptance_per_position": sdx["spec"].get("acceptance_per_position", []),
        "acceptance_rate": sdx["spec"].get("acceptance_rate"),
        "workload": {"dataset": "sharegpt", "seed": cfg.seed, "prompt_lens": prompt_lens,
                     "output_lens": output_lens},
        "config": {**asdict(cfg), "batches": list(cfg.batches)},
        "raw": {"sd_ext_trace": sdx["records"], "psd_trace": psd_raw},
        **provenance(),
    }
    doc["profile_seconds"] = time.perf_counter() - t0
    _log(f"done in {doc['profile_seconds']:.0f} s")
    return doc


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), sorted without repeats; raises ValueError for anything but integers >=
    1."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"batch sizes: expected e.g. 1,2,4,8, got {text!r}") from None
    if not values or min(values) < 1 or any(math.isnan(v) for v in values):
        raise ValueError(f"batch sizes must be integers >= 1, got {text!r}")
    return tuple(sorted(set(values)))
