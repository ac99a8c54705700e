"""Cost profiles: what one engine step costs on some hardware, and what acceptance to expect.

A profile (JSON, ``kind: minedraft-cost-profile``) is measured by `minedraft profile` or built
from published figures (minedraft/analysis/scenarios); the simulator, the advisor and `--mode
auto` all read costs through `CostProfile`, so they agree by construction::

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
