"""`minedraft advise`: the theory's numbers for one (alpha, k, c), or for a measured cost profile.

With a profile (minedraft.core.costmodel) the quantities use measured curves at a given batch B
instead of the constant cost ratio: an ar step decodes B tokens in decode(B); an sd step costs
draft(B, k) + verify(B (k + 1)) + overhead; a psd cycle verifies both halves of B in two steps
of max(draft(B/2, k), verify(B/2 (k + 1))) + overhead. Acceptance comes from the measured
per-position rates (E = 1 + sum of them, the mean accepted length). `--mode auto` decides with
the same formulas (minedraft.core.costmodel.step_rate).
"""

from __future__ import annotations

import math

from minedraft.analysis import theory
from minedraft.core.costmodel import CostProfile, expected_tokens, step_rate

K_MAX = 8


def theory_report(alpha: float, k: int, c: float, k_max: int = K_MAX) -> dict:
    """The paper's closed forms for one (alpha, k, c): expected tokens per step, SD and PSD speed-
    ups, Theorem 1's threshold and ratio, best k and the recommended mode (paper.md section 2).
    Raises ValueError for values out of range."""
    advice = theory.advise(alpha, c, k_max)
    return {
        "source": "closed form (paper.md section 2)",
        "alpha": alpha, "k": k, "c": c,
        "expected_tokens_per_step": theory.expected_tokens_per_step(alpha, k),
        "sd_speedup": theory.sd_speedup(alpha, k, c),
        "psd_speedup_over_sd": theory.psd_speedup_over_sd(alpha, k, c),
        "psd_speedup": theory.psd_speedup(alpha, k, c),
        "theorem1_threshold": theory.theorem1_threshold(),
        "theorem1_ratio": theory.theorem1_ratio(),
        "best_k": {"sd": theory.best_k(alpha, c, "sd", k_max),
                   "psd": theory.best_k(alpha, c, "psd", k_max)},
        "recommended": {"mode": advice.mode, "k": advice.k,
                        "predicted_speedup_over_ar": advice.predicted_speedup_over_ar,
                        "reason": advice.reason},
    }


def profile_speedups(profile: CostProfile, k: int, batch: int) -> dict:
    """Predicted tokens/ms of ar, sd (sequential) and psd at `batch` requests and k from measured
    curves (minedraft.core.costmodel.step_rate), and their ratios."""
    e = expected_tokens(profile, k)
    ar = step_rate(profile, "none", batch, 0)
    sd = step_rate(profile, "sequential", batch, k)
    psd = step_rate(profile, "psd", batch, k)
    return {"expected_tokens_per_step": e, "ar_tok_per_ms": ar, "sd_tok_per_ms": sd,
            "psd_tok_per_ms": psd, "sd_speedup": sd / ar, "psd_speedup": psd / ar,
            "psd_speedup_over_sd": psd / sd}


def profile_report(profile: CostProfile, k: int, batch: int, k_max: int = 5) -> dict:
    """The same quantities from a measured profile at `batch` requests (steady state,
    minedraft.core.costmodel.step_rate) for k in 1..k_max; alpha is the mean acceptance over the
    first k positions, c the drafter's one-token round over a decode step."""
    at_k = profile_speedups(profile, k, batch)
    per_k = {kk: profile_speedups(profile, kk, batch) for kk in range(1, k_max + 1)}
    best = {m: max(per_k, key=lambda kk: per_k[kk][f"{m}_speedup"]) for m in ("sd", "psd")}
    cands = [("ar", 0, 1.0)] + [(m, best[m], per_k[best[m]][f"{m}_speedup"]) for m in ("sd", "psd")]
    mode, kk, gain = cands[0]
    for cand in cands[1:]:
        if cand[2] > gain * (1 + 1e-9):
            mode, kk, gain = cand
    alpha = (sum(profile.acceptance_per_position[:k]) / k) if profile.acceptance_per_position \
        else 0.0
    c = profile.draft_ms(batch, 1) / profile.decode(batch)
    reason = (f"{mode} with k={kk} is predicted to be {gain:.2f}x as fast as plain decoding at "
              f"batch {batch}" if mode != "ar" else
              f"no speculative mode is predicted to beat plain decoding at batch {batch}")
    return {
        "source": "measured cost profile" + (f" ({profile.source})" if profile.source else ""),
        "assumption": profile.assumption, "batch": batch, "k": k,
        "alpha": alpha, "c": c, **at_k,
        "theorem1_threshold": theory.theorem1_threshold(),
        "theorem1_ratio": theory.theorem1_ratio(),
        "best_k": best,
        "per_k": {str(kk): {m: v[f"{m}_speedup"] for m in ("sd", "psd")} for kk, v in per_k.items()},
        "recommended": {"mode": mode, "k": kk, "predicted_speedup_over_ar": gain,
                        "reason": reason},
    }


def format_report(rep: dict) -> str:
    """A report of theory_report or profile_report as aligned text lines."""
    lines = [f"source: {rep['source']}"]
    if rep.get("assumption"):
        lines.append(f"assumption: {rep['assumption']}")
    head = f"alpha {rep['alpha']:.3f}  k {rep['k']}  c {rep['c']:.3f}"
    if "batch" in rep:
        head += f"  batch {rep['batch']}"
    lines += [
        head,
        f"expected tokens per step E       {rep['expected_tokens_per_step']:.3f}",
        f"SD speed-up over ar              {rep['sd_speedup']:.3f}x",
        f"PSD speed-up over SD             {rep['psd_speedup_over_sd']:.3f}x",
        f"PSD speed-up over ar             {rep['psd_speedup']:.3f}x",
        f"Theorem 1 threshold x            {rep['theorem1_threshold']:.3f} "
        f"(T_SD / T_PSD = (1 + x) / x = {rep['theorem1_ratio']:.3f} there)",
        f"best k                           sd {rep['best_k']['sd']}, psd {rep['best_k']['psd']}",
    ]
    r = rep["recommended"]
    gain = 100 * (r["predicted_speedup_over_ar"] - 1)
    lines.append(f"recommended                      {r['mode']}"
                 + (f" with k={r['k']}" if r["mode"] != "ar" else "")
                 + f": predicted {r['predicted_speedup_over_ar']:.2f}x over ar ({gain:+.0f}%)")
    lines.append(r["reason"])
    return "\n".join(lines)


# --------------------------------------------------------------------------- by simulation

LABELS = {"ar": "ar@0", "ar@all": "ar@all", "sd": "sd-ext", "psd": "psd"}


def advise_concurrency(profile: CostProfile, concurrency: int, *, output_len: int = 64,
                       num_prompts: int | None = None, request_rate: float = math.inf,
                       k_max: int | None = None, seed: int = 0) -> dict:
    """The mode and k to run with `concurrency` requests in flight (or Poisson arrivals at
    `request_rate`), from simulating each candidate on the profile's workload: ar on the
    target's cores, ar on every core (when the profile measured it), sd-ext and psd at
    k = 1..k_max. Returns the candidates' predicted tok/s and mean E2E latency, the choice (the
    highest throughput at C, the lowest mean latency at a finite rate) and psd / sd-ext."""
    from minedraft.analysis.simulate import simulate
    k_max = k_max or profile.k
    n = num_prompts or max(8, min(128, 3 * concurrency))
    kw = dict(num_prompts=n, output_len=output_len, request_rate=request_rate,
              max_concurrency=None if math.isfinite(request_rate) else concurrency, seed=seed)
    candidates = [("ar", None)] + ([("ar@all", None)] if profile.decode_all else []) + \
        [(m, k) for m in ("sd", "psd") for k in range(1, k_max + 1)]
    preds = []
    for mode, k in candidates:
        res = simulate(profile, mode, k=k, **kw)
        preds.append({"label": LABELS[mode], "k": k, "tok_s": res["output_throughput_tok_s"],
                      "mean_e2el_ms": res["mean_e2el_ms"]})
    best_of = {}
    for p in preds:
        if p["label"] not in best_of or p["tok_s"] > best_of[p["label"]]["tok_s"]:
            best_of[p["label"]] = p
    if math.isfinite(request_rate):
        choice = min(preds, key=lambda p: p["mean_e2el_ms"])
    else:
        choice = max(preds, key=lambda p: p["tok_s"])
    psd_sd = best_of["psd"]["tok_s"] / best_of["sd-ext"]["tok_s"]
    return {"concurrency": concurrency, "request_rate": request_rate, "predictions": preds,
            "best_per_mode": best_of, "choice": choice, "psd_over_sd_ext": psd_sd,
            "reason": _reason(choice, best_of, psd_sd)}


def _reason(choice: dict, best_of: dict, psd_sd: float) -> str:
    k = f" with k={choice['k']}" if choice["k"] else ""
    others = sorted((p for lbl, p in best_of.items() if lbl != choice["label"]),
                    key=lambda p: -p["tok_s"])
    runner = others[0] if others else None
    text = f"run {choice['label']}{k}: predicted {choice['tok_s']:.0f} tok/s"
    if runner:
        text += (f", {choice['tok_s'] / runner['tok_s']:.2f}x the next best "
                 f"({runner['label']})")
    if choice["label"] != "psd":
        text += f"; psd would give {psd_sd:.2f}x sd-ext here"
    return text


def format_advice(rep: dict) -> str:
    """The simulated candidates and the recommendation, for the terminal."""
    where = f"{rep['concurrency']} requests in flight" if not math.isfinite(
        rep["request_rate"]) else f"{rep['request_rate']:g} requests/s"
    lines = [f"predicted (simulated with the profile's measured costs) at {where}:",
             "mode     k  out tok/s  mean E2EL ms"]
    for p in sorted(rep["predictions"], key=lambda p: -p["tok_s"]):
        lines.append(f"{p['label']:<7} {p['k'] or '-':>2} {p['tok_s']:10.1f} "
                     f"{p['mean_e2el_ms']:13.0f}")
    lines.append(f"advice: {rep['reason']}")
    return "\n".join(lines)
