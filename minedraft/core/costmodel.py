"""Cost profiles: what one engine step costs on some hardware, and what acceptance to expect.

A profile (JSON, ``kind: minedraft-cost-profile``) is measured by `minedraft profile` or built
from published figures (minedraft/analysis/scenarios); the simulator, the advisor and `--mode
auto` all read costs through `CostProfile`, so they agree by construction::

    {"kind": "minedraft-cost-profile", "version": 1, "k": 3, "source": "...", "assumption": "...",
     "target": {"decode_ms": [[batch, ms], ...], "verify_ms": [[tokens, ms], ...],
                "prefill_ms": [[prompt_tokens, ms], ...]},
     "drafter": {"round_ms": [[batch, k, ms], ...], "colocated_round_ms": [[batch, ms], ...]},
     "overhead_ms": {"none": 1.0, "sequential": 2.0, "psd": 5.0},
     "overlap": {"draft_slowdown": 1.2, "verify_slowdown": 1.1},
     "acceptance_per_position": [0.52, 0.29, 0.18],
     "workload": {"prompt_lens": [...], "output_lens": [...]}}

Drafter rounds are measured at one or more k ([batch, ms] points: at the profile's k); see
DraftCost. `step_rate` and `best_step` turn any such costs (a profile, or `--mode auto`'s online
estimates) into predicted tokens per second.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from minedraft.core.errors import MineDraftError

PROFILE_KIND = "minedraft-cost-profile"


class ProfileError(MineDraftError, ValueError):
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
        """The measured points as [[size, ms], ...] (medians of duplicates)."""
        return [[x, y] for x, y in zip(self.xs, self.ys)]


class DraftCost:
    """Drafter round time (ms) by batch and k, from points [batch, k, ms] (or [batch, ms] at a
    given k): one Curve over batch per measured k; between measured k linear in k, beyond them
    with the slope of the two nearest (a round is about k forward passes plus a fixed part);
    with one k measured, proportional to k."""

    def __init__(self, points, k: int, name: str = "drafter.round_ms"):
        by_k: dict[int, list] = {}
        try:
            for p in points:
                b, kk, ms = (p[0], k, p[1]) if len(p) == 2 else p
                by_k.setdefault(int(kk), []).append([b, ms])
        except (TypeError, ValueError):
            raise ProfileError(f"{name}: expected [[batch, k, ms], ...], got {points!r}") \
                from None
        if not by_k:
            raise ProfileError(f"{name}: no points")
        self.curves = {kk: Curve(pts, name) for kk, pts in sorted(by_k.items())}

    def __call__(self, batch: float, k: int) -> float:
        if batch <= 0:
            return 0.0
        ks = list(self.curves)
        if k in self.curves:
            return self.curves[k](batch)
        if len(ks) == 1:
            return self.curves[ks[0]](batch) * k / ks[0]
        lo = max([x for x in ks if x < k], default=ks[0])
        hi = min([x for x in ks if x > k], default=ks[-1])
        if lo == hi:  # outside the measured k: the two nearest
            lo, hi = (ks[0], ks[1]) if k < ks[0] else (ks[-2], ks[-1])
        y0, y1 = self.curves[lo](batch), self.curves[hi](batch)
        return max(0.0, y0 + (y1 - y0) * (k - lo) / (hi - lo))

    def to_points(self) -> list[list[float]]:
        """The measured points as [[batch, k, ms], ...]."""
        return [[b, kk, ms] for kk, c in self.curves.items() for b, ms in c.to_points()]


OVERHEAD_KINDS = ("none", "sequential", "psd")


@dataclass
class CostProfile:
    """Step costs of one machine and model pair (see the module docstring), in ms."""

    k: int
    decode: Curve  # a step without drafts, by requests
    verify: Curve  # a verification, by tokens (requests x (1 + drafts))
    prefill: Curve  # by prompt tokens
    draft_round: DraftCost  # by requests and k
    colocated_round: Curve | None  # vLLM's own sd: drafter on the target's devices, at k
    overhead: dict  # kind -> ms per step beyond the modelled parts
    acceptance_per_position: list[float]
    prompt_lens: list[int] = field(default_factory=list)
    output_lens: list[int] = field(default_factory=list)
    source: str = ""
    assumption: str = ""
    target_cores: str | None = None  # where the profile's target ran (measured profiles)
    decode_all: Curve | None = None  # a step without drafts on every core (plain decoding)
    draft_prefill: Curve | None = None  # the drafter taking in new prompts, by prompt tokens
    draft_slowdown: float = 1.0  # drafting beside a verification / drafting alone
    verify_slowdown: float = 1.0  # verifying beside a drafter round / verifying alone

    @property
    def overhead_sd_ms(self) -> float:
        """Per-step overhead of sequential (sd-ext) steps, ms."""
        return self.overhead_ms("sequential")

    @property
    def overhead_psd_ms(self) -> float:
        """Per-step overhead of overlapped (psd) steps, ms."""
        return self.overhead_ms("psd")

    def overhead_ms(self, kind: str) -> float:
        """Per-step overhead of a step kind (none, sequential, psd), ms beyond its modelled parts."""
        return float(self.overhead.get(kind, 0.0))

    def draft_ms(self, batch: int, k: int, colocated: bool = False) -> float:
        """A drafter round for `batch` requests and k tokens, ms (vLLM's own sd: the colocated
        curve when asked and measured)."""
        if batch <= 0:
            return 0.0
        if colocated and self.colocated_round is not None:
            return self.colocated_round(batch) * k / self.k
        return self.draft_round(batch, k)

    def prefill_extra_ms(self, tokens: int, alone: bool) -> float:
        """Cost of prefilling `tokens` prompt tokens in a step: the whole prefill step when
        nothing else runs, else its marginal cost on top of the step."""
        if tokens <= 0:
            return 0.0
        return self.prefill(tokens) if alone else max(0.0, self.prefill(tokens) - self.prefill(0))

    def conditional_acceptance(self, k: int) -> list[float]:
        """P(position i accepted | positions before it accepted), i = 1..k; positions beyond the
        measured ones repeat the last measured ratio."""
        return conditional_acceptance(self.acceptance_per_position, k)


def conditional_acceptance(per_position: list[float], k: int) -> list[float]:
    """From P(first i drafts accepted), i = 1.. (vLLM's acceptance per position): the chance
    that position i is accepted once the ones before it were, for i = 1..k (positions beyond
    the given ones repeat the last ratio)."""
    p = [1.0] + [min(1.0, max(0.0, float(x))) for x in per_position]
    ratios = [p[i] / p[i - 1] if p[i - 1] > 0 else 0.0 for i in range(1, len(p))] or [0.0]
    return [ratios[min(i, len(ratios) - 1)] for i in range(k)]


# --------------------------------------------------------------------------- predictions

def expected_tokens(costs, k: int) -> float:
    """Tokens a verification with k drafts yields on average: 1 + sum over i <= k of P(first i
    accepted) (Leviathan et al. 2023 for independent acceptance; here from the measured
    per-position rates). k = 0: 1."""
    e, p = 1.0, 1.0
    for q in costs.conditional_acceptance(k) if k else []:
        p *= q
        e += p
    return e


def step_rate(costs, kind: str, batch: int, k: int) -> float:
    """Predicted output tokens per ms of a steady batch of `batch` decoding requests.

    none:       batch / (decode(batch) + overhead)
    sequential: batch E(k) / (draft(batch, k) + verify(batch (k + 1)) + overhead)
    psd:        two steps, each verifying one half while the other is drafted:
                batch E(k) / sum over halves of (max(draft(d, k), verify(v (k + 1))) + overhead),
                draft and verify each times its slowdown when they run side by side
    (paper.md section 2: a PSD step costs max(draft, verify) instead of draft + verify; the
    halves make the batch-size dependence explicit). psd with one request is sequential."""
    if batch <= 0:
        return 0.0
    if kind == "none" or k == 0:
        return batch / (costs.decode(batch) + costs.overhead_ms("none"))
    e = expected_tokens(costs, k)
    if kind == "sequential" or batch == 1:
        return batch * e / (costs.draft_ms(batch, k) + costs.verify(batch * (k + 1))
                            + costs.overhead_ms("sequential"))
    if kind != "psd":
        raise ValueError(f"unknown step kind {kind!r}")
    a = (batch + 1) // 2
    halves = ((a, batch - a), (batch - a, a))
    slow_d = getattr(costs, "draft_slowdown", 1.0)
    slow_v = getattr(costs, "verify_slowdown", 1.0)
    cycle = sum(max(slow_d * costs.draft_ms(d, k), slow_v * costs.verify(v * (k + 1)))
                + costs.overhead_ms("psd") for v, d in halves)
    return batch * e / cycle


def best_step(costs, batch: int, k_max: int, kinds: tuple[str, ...] = OVERHEAD_KINDS,
              rate=None) -> tuple[str, int, float]:
    """(kind, k, tokens per ms) with the highest rate for `batch` requests, k in 1..k_max
    (k = 0 for none). Ties go to the simpler choice (none, then sequential, then smaller k).
    `rate(kind, batch, k)` ranks the choices (default: `step_rate` of `costs`)."""
    rate_of = rate or (lambda kind, b, k: step_rate(costs, kind, b, k))
    best = ("none", 0, rate_of("none", batch, 0)) if "none" in kinds else None
    for kind in ("sequential", "psd"):
        if kind not in kinds:
            continue
        for k in range(1, k_max + 1):
            rate = rate_of(kind, batch, k)
            if best is None or rate > best[2] * (1 + 1e-9):
                best = (kind, k, rate)
    return best


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
        overlap = doc.get("overlap", {})
        overheads = {"none": overhead.get("none", 0.0),
                     "sequential": overhead.get("sequential", overhead.get("sd", 0.0)),
                     "psd": overhead.get("psd", overhead.get("sd", 0.0))}
        colocated = drafter.get("colocated_round_ms")
        workload = doc.get("workload", {})
        return CostProfile(
            k=k, decode=Curve(target["decode_ms"], "target.decode_ms"),
            verify=Curve(target.get("verify_ms") or target["decode_ms"], "target.verify_ms"),
            prefill=Curve(prefill, "target.prefill_ms"),
            draft_round=DraftCost(round_pts, k),
            colocated_round=Curve(colocated, "drafter.colocated_round_ms") if colocated else None,
            overhead={kind: float(v) for kind, v in overheads.items()},
            acceptance_per_position=acc,
            prompt_lens=[int(x) for x in workload.get("prompt_lens", [])],
            output_lens=[int(x) for x in workload.get("output_lens", [])],
            source=str(doc.get("source", "")), assumption=str(doc.get("assumption", "")),
            target_cores=(doc.get("devices") or {}).get("target_cores"),
            decode_all=Curve(target["decode_all_cores_ms"], "target.decode_all_cores_ms")
            if target.get("decode_all_cores_ms") else None,
            draft_prefill=Curve(drafter["prefill_ms"], "drafter.prefill_ms")
            if drafter.get("prefill_ms") else None,
            draft_slowdown=float(overlap.get("draft_slowdown", 1.0)),
            verify_slowdown=float(overlap.get("verify_slowdown", 1.0)))
    except KeyError as exc:
        raise ProfileError(f"cost profile lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"bad cost profile: {exc}") from None
