"""`--mode auto`: choose, at every step, whether to draft at all, whether to overlap drafting with
verification (psd) or draft then verify (sequential), and k.

The choice maximises predicted output tokens per second for the current number of decoding
requests, with the cost model the simulator and the advisor use (minedraft.core.costmodel:
`step_rate`, `best_step`), fed by online estimates learnt from this engine's own steps:

- the target's step time by tokens in the step (from every verifying step),
- the drafter's round time by requests and k (from every round),
- each kind's overhead (step time beyond its modelled parts),
- acceptance per draft position (from every verification with drafts).

A cost profile (`auto_profile`) seeds the estimates; without one the policy explores first
(every kind and k_max for a few steps each), then re-explores now and then so that estimates
of unused choices stay current. A switch needs the new choice to be predicted at least
`HYSTERESIS` better, and only after `MIN_DWELL` steps on the current one, so noise does not make
it flap. Seeded sampling under `auto` depends on load (the number of drafts per step does), as
with vLLM's own dynamic speculation.
"""

from __future__ import annotations

from minedraft.core.costmodel import Curve, best_step, step_rate
from minedraft.core.trace import StepRecord

HYSTERESIS = 0.05  # a switch must be predicted this much faster
MIN_DWELL = 8  # steps on a choice before switching again
EXPLORE = 6  # steps per choice while exploring
REEXPLORE_EVERY = 200  # steps between short re-explorations
REEXPLORE = 2  # steps per choice when re-exploring
EMA = 0.2  # weight of a new observation in a bin


class OnlineCurve:
    """ms by size: an exponential moving average per size bin (powers of 2 beyond 8), read
    through a Curve (interpolated between bins, least-squares slope beyond them)."""

    def __init__(self, prior=None):
        self.bins: dict[int, float] = {}
        self.prior = prior  # callable size -> ms, used until there are observations

    @staticmethod
    def _bin(x: float) -> int:
        x = max(1, int(round(x)))
        return x if x <= 8 else 1 << (x - 1).bit_length()

    def observe(self, x: float, ms: float) -> None:
        """Fold one measurement (size, ms) into its bin."""
        b = self._bin(x)
        self.bins[b] = ms if b not in self.bins else (1 - EMA) * self.bins[b] + EMA * ms

    def __call__(self, x: float) -> float:
        if not self.bins:
            return self.prior(x) if self.prior else 0.0
        return Curve(list(self.bins.items()))(x)

    @property
    def seen(self) -> bool:
        """At least one measurement arrived."""
        return bool(self.bins)


class OnlineCosts:
    """The costs `step_rate` needs, learnt from StepRecords (optionally seeded by a profile)."""

    def __init__(self, k_max: int, profile=None):
        self.k_max = k_max
        p = profile
        self.target = OnlineCurve(p.verify if p else None)  # ms by tokens in the step
        self.rounds = {k: OnlineCurve((lambda b, k=k: p.draft_ms(b, k)) if p else None)
                       for k in range(1, k_max + 1)}  # ms by requests drafted, per k
        self.overheads = {kind: (p.overhead_ms(kind) if p else 0.0)
                          for kind in ("none", "sequential", "psd")}
        # per position i: verifications that reached it (all drafts before it accepted) and
        # how many of those accepted it; a profile's rates count as one verification
        prior = p.conditional_acceptance(len(p.acceptance_per_position)) if p else []
        self.trials = [1.0 if i < len(prior) else 0.0 for i in range(k_max)]
        self.accepted = [prior[i] if i < len(prior) else 0.0 for i in range(k_max)]

    # the interface of minedraft.core.costmodel.step_rate
    def decode(self, batch: float) -> float:
        """A step without drafts for `batch` requests, ms."""
        return self.target(batch)

    def verify(self, tokens: float) -> float:
        """A verification of `tokens` tokens, ms."""
        return self.target(tokens)

    def draft_ms(self, batch: float, k: int) -> float:
        """A drafter round of `batch` requests and k tokens, ms (an unseen k scales the nearest
        seen one by k)."""
        seen = [kk for kk, c in self.rounds.items() if c.seen]
        if k in seen or not seen:
            return self.rounds[k](batch)
        near = min(seen, key=lambda kk: abs(kk - k))  # a round is about k forward passes
        return self.rounds[near](batch) * k / near

    def overhead_ms(self, kind: str) -> float:
        """Per-step overhead of a kind, ms."""
        return self.overheads[kind]

    def conditional_acceptance(self, k: int) -> list[float]:
        """P(position i accepted | the ones before were), i = 1..k, from the counts so far (the
        counts are conditional already); positions never reached repeat the last known rate."""
        known = [a / t for a, t in zip(self.accepted, self.trials) if t] or [0.0]
        return [known[min(i, len(known) - 1)] for i in range(k)]

    # learning
    def observe_round(self, batch: int, k: int, ms: float) -> None:
        """A drafter round of `batch` requests and k tokens took `ms`."""
        if batch and k in self.rounds:
            self.rounds[k].observe(batch, ms)

    def observe_step(self, r: StepRecord) -> None:
        """Learn the target's step time and the kind's overhead from a completed step."""
        if not r.verify or r.verify_ms is None or not r.step_ms:
            return
        self.target.observe(r.tokens or r.verify + r.drafted_tokens, r.verify_ms)
        if r.kind == "psd":
            critical = max(r.draft_ms or 0.0, r.verify_ms)
        elif r.kind == "sequential":
            critical = (r.draft_ms or 0.0) + r.verify_ms
        else:
            critical = r.verify_ms
        excess = max(0.0, r.step_ms - critical)
        self.overheads[r.kind] = (1 - EMA) * self.overheads[r.kind] + EMA * excess

    def observe_drafts(self, drafts: list[tuple[int, int]]) -> None:
        """(draft tokens, accepted) of each request verified with drafts in a step."""
        for n, a in drafts:
            for i in range(min(n, self.k_max)):
                self.trials[i] += 1
                if i < a:
                    self.accepted[i] += 1
                else:
                    break


class AutoPolicy:
    """The per-step choice of `--mode auto` (see the module docstring)."""

    def __init__(self, k_max: int, profile=None):
        self.k_max = k_max
        self.costs = OnlineCosts(k_max, profile)
        self.explore = [] if profile else self._exploration()
        self.current: tuple[str, int] = ("psd", k_max)
        self.dwell = 0
        self.steps = 0
        self.predicted: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings, k_max: int) -> "AutoPolicy":
        """The policy for PSDSettings (seeded by `auto_profile` when set)."""
        profile = None
        if settings.auto_profile:
            from minedraft.core.costmodel import load_profile
            profile = load_profile(settings.auto_profile)
        return cls(k_max, profile)

    def _exploration(self, steps: int = 0) -> list[tuple[str, int]]:
        """`steps` (default EXPLORE) steps of each: psd and sequential at k_max and at 1, none."""
        steps = steps or EXPLORE
        choices = [("psd", self.k_max), ("sequential", self.k_max)]
        if self.k_max > 1:
            choices += [("psd", 1), ("sequential", 1)]
        return [c for c in choices + [("none", 0)] for _ in range(steps)]

    def choose(self, n_decoding: int) -> tuple[str, int]:
        """(kind, k) for the next step with `n_decoding` requests decoding."""
        if n_decoding == 0:
            return self.current
        self.steps += 1
        if self.steps % REEXPLORE_EVERY == 0:  # a few steps of every other choice
            best = self._best(n_decoding)
            self.explore = [c for c in self._exploration(REEXPLORE) if c != best]
        if self.explore:
            return self.explore.pop(0)
        best = self._best(n_decoding)
        self.dwell += 1
        if best != self.current and self.dwell >= MIN_DWELL:
            now = step_rate(self.costs, self.current[0], n_decoding, self.current[1])
            if self.predicted.get("best", 0.0) > now * (1 + HYSTERESIS):
                self.current, self.dwell = best, 0
        return self.current

    def _best(self, n: int) -> tuple[str, int]:
        kind, k, rate = best_step(self.costs, n, self.k_max)
        self.predicted["best"] = rate
        return kind, k

    def observe_drafts(self, drafts: list[tuple[int, int]]) -> None:
        """Acceptance of this step's verifications."""
        self.costs.observe_drafts(drafts)

    def observe_round(self, batch: int, k: int, ms: float) -> None:
        """Cost of a drafter round."""
        self.costs.observe_round(batch, k, ms)

    def observe_step(self, record: StepRecord) -> None:
        """A completed step's record."""
        self.costs.observe_step(record)
