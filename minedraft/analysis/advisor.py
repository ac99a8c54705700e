"""`minedraft advise`: the theory's numbers for one (alpha, k, c), or for a measured cost profile.

With a profile (minedraft.core.costmodel) the quantities use measured curves at a given batch B
instead of the constant cost ratio: an ar step decodes B tokens in decode(B); an sd step costs
draft(B, k) + verify(B (k + 1)) + overhead; a psd cycle verifies both halves of B in two steps
of max(draft(B/2, k), verify(B/2 (k + 1))) + overhead. Acceptance comes from the measured
per-position rates (E = 1 + sum of them, the mean accepted length). `--mode auto` decides with
the same formulas (minedraft.core.costmodel.step_rate).
"""

from __future__ import annotations

from minedraft.analysis import theory
from minedraft.core.costmodel import CostProfile, expected_tokens, step_rate

K_MAX = 8


def theory_report(alpha: float, k: int, c: float, k_max: int = K_MAX) -> dict:
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
