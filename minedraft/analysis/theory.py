"""Back-of-the-envelope speed-up models for AR, SD and PSD decoding.

Notation:

* ``alpha`` -- probability that one drafted token is accepted by the target (tokens are assumed
  accepted independently, as in Leviathan et al. 2023), in [0, 1].
* ``k`` -- draft length: tokens proposed by the drafter per verification step, an integer >= 1.
* ``c`` -- cost ratio: time of one draft forward / time of one target forward (t_d / t_v), >= 0.

One sequential SD step costs ``k t_d + t_v`` and yields on average
``(1 - alpha**(k+1)) / (1 - alpha)`` tokens. PSD overlaps drafting with verification, so in the
ideal case (same batch size, perfect overlap) a step costs ``max(k t_d, t_v)`` instead.
All speed-ups are relative to plain autoregressive decoding (one token per ``t_v``) unless the
name says otherwise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from scipy.special import lambertw

MODES = ("sd", "psd")


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")
    return int(k)


def _check_c(c) -> float:
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 <= c < math.inf:
        raise ValueError(f"c must be a finite number >= 0, got {c!r}")
    return float(c)


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Mean tokens produced per SD step: (1 - alpha**(k+1)) / (1 - alpha), or k + 1 at alpha = 1."""
    alpha, k = _check_alpha(alpha), _check_k(k)
    # The geometric sum equals the closed form, is exact at alpha == 1 and avoids
    # cancellation near it.
    return sum(alpha ** i for i in range(k + 1))


def sd_speedup(alpha: float, k: int, c: float) -> float:
    """Speed-up of sequential SD over plain decoding: expected tokens / (k c + 1)."""
    c = _check_c(c)
    return expected_tokens_per_step(alpha, k) / (k * c + 1)


def psd_speedup_over_sd(alpha: float, k: int, c: float) -> float:
    """Ideal speed-up of PSD over SD at equal batch size: (k c + 1) / max(k c, 1)."""
    _check_alpha(alpha)  # does not change the ratio; validated for symmetry with the others
    k, c = _check_k(k), _check_c(c)
    return (k * c + 1) / max(k * c, 1)


def psd_speedup(alpha: float, k: int, c: float) -> float:
    """Ideal speed-up of PSD over plain decoding: sd_speedup * psd_speedup_over_sd."""
    c = _check_c(c)
    # Algebraically sd_speedup * psd_speedup_over_sd; the (k c + 1) factors cancel, so compute the
    # result directly to keep exact ties (e.g. with plain decoding) exact in floating point.
    return expected_tokens_per_step(alpha, k) / max(k * c, 1)


def theorem1_threshold() -> float:
    """Threshold x = -W_{-1}(-1/(2e)) - 1 (about 1.678) from the paper's Theorem 1."""
    return float(-lambertw(-1 / (2 * math.e), k=-1).real - 1)


def theorem1_ratio() -> float:
    """T_SD / T_PSD = (1 + x) / x at the Theorem 1 threshold x (about 1.596).

    Under the acceptance model f(t) = 1 - exp(-a t) this ratio tends to 1 as a*V grows, so it is
    the value at the threshold, not a bound for all larger a*V.
    """
    x = theorem1_threshold()
    return (1 + x) / x


def best_k(alpha: float, c: float, mode: str, k_max: int = 8) -> int:
    """The draft length in 1..k_max maximizing the predicted speed-up of `mode` ("sd" or "psd")."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    k_max = _check_k(k_max, "k_max")
    speedup = sd_speedup if mode == "sd" else psd_speedup
    # max() keeps the first maximum, so ties go to the shorter (cheaper) draft.
    return max(range(1, k_max + 1), key=lambda k: speedup(alpha, k, c))


@dataclass(frozen=True)
class Advice:
    """Recommended mode, its draft length (0 for ar) and predicted speed-up over plain decoding."""

    mode: str
    k: int
    predicted_speedup_over_ar: float
    reason: str


def advise(alpha: float, c: float, k_max: int = 8) -> Advice:
    """Pick ar, sd or psd (each speculative mode at its best k) by predicted speed-up over ar."""
    _check_alpha(alpha)
    _check_c(c)
    _check_k(k_max, "k_max")
    k_sd, k_psd = best_k(alpha, c, "sd", k_max), best_k(alpha, c, "psd", k_max)
    candidates = [("ar", 0, 1.0), ("sd", k_sd, sd_speedup(alpha, k_sd, c)),
                  ("psd", k_psd, psd_speedup(alpha, k_psd, c))]
    # Simpler modes come first and win ties (a gain must beat rounding noise to count).
    mode, k, speedup = candidates[0]
    for cand in candidates[1:]:
        if cand[2] > speedup * (1 + 1e-9):
            mode, k, speedup = cand
    if mode == "ar":
        name, kk, best = max(candidates[1:], key=lambda cand: cand[2])
        reason = (f"No speculative mode is predicted to beat plain decoding (best: {name} with "
                  f"k={kk} at {best:.2f}x).")
    else:
        reason = (f"{mode} with k={k} is predicted to be {speedup:.2f}x as fast as plain decoding "
                  f"(a {100 * (speedup - 1):.0f}% gain).")
    return Advice(mode, k, speedup, reason)
