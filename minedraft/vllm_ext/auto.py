"""`--mode auto`: choose, at every step, whether to draft at all, whether to overlap drafting with
verification (psd) or draft then verify (sequential), and k.

The choice maximises predicted output tokens per second for the current number of decoding
requests, with the cost model the simulator and the advisor use (minedraft.core.costmodel:
`step_rate`, `best_step`), fed by online estimates learnt from this engine's own steps:

- the target's step time without drafts by requests (from steps that only decode: a decode step
  costs less than a verification of as many tokens; beyond the sizes decoded, the verification
  curve's shape: `OnlineCosts.decode`), and by tokens otherwise (steps that also prefill
  prompts teach nothing: see `OnlineCosts.observe_step`),
- the drafter's round time by requests and k (from every round; a k not run lately is read
  from the nearest k that was, scaled by k: `OnlineCosts.draft_ms`),
- each kind's overhead (step time beyond its modelled parts),
- the target's pace: its recent steps' time over their size bin's reference time (a median;
  a bin's reference is the median of its first REFERENCE steps, fixed from then on). Both
  target curves hold times divided by the pace of their moment and are read times the pace
  now, so a curve whose sizes did not run lately (the verification curve while plain decoding
  runs, and the reverse) follows the machine's speed, which drifts on a shared host; choices
  not run lately would otherwise be ranked by the speed of a quicker (or slower) moment. The
  reference is fixed because a pace measured against the times it scaled itself has nothing
  to hold it: on a machine of constant speed with 12% noise per step it wandered 30-45% from
  1 within 2500 steps, mis-ranking every choice not running. A pace not measured lately is
  stale: it fixes no bin's reference, and plain-decoding steps measure it again
  (`OnlineCosts.pace_fresh`, `AutoPolicy._anchor`),
- acceptance per draft position (from every verification with drafts).

Each (kind, k) also carries a calibration per batch-size bin: over its last CAL_WINDOW steps
in that bin, the time the cost model predicts now for their output over the time they took
(a ratio of sums, so a slow step weighs by its length, as in a whole run; every step of the
choice counts, catch-ups and waits for the drafter included, except steps that also prefill
prompts, whose cost is the same for every choice), so what the cost model misses (the two
processes slowing each other, costs that depend on k) is measured, not assumed. The prediction
is re-read from the model as it is now, and each step's time is scaled by the pace then and
now: a calibration learnt while the curves were still wrong, or during a slow spell, would
otherwise outlive the mistake it corrected; one that runs again after RESTART steps without
starts afresh (so do the cost curves' size bins: a slow spell kept by both held plain decoding
1.4x too slow for ~700 steps, see `_Steps.add`). An old calibration still ranks its choice
until then: made to expire (a trial once the cost model alone ranked the choice best), it
brought back a trial per batch size every STALE steps, and under a changing load near
capacity those trials (39 at 4-6 decoding) made auto lose to plain decoding in two runs of
two (benchmarks/auto_low_high/expiry). A bin where the choice never ran borrows the steps
of the bins within a factor of 2; beyond them the cost model alone ranks it (the misses of
batch 4 say nothing of batch 128). At one or two requests decoding a drafting choice's steps
count only while their requests still run: their output was those requests' own acceptance
(`_forget`), and start from CAL_PRIOR steps as predicted (a few steps are noisy, see
`calibration`). Learnt times are medians of recent steps: single steps spike (arrivals, garbage
collection).

It starts on plain decoding. A cost profile (`auto_profile`) seeds the estimates; without one
the policy explores first (every kind and k_max for a few steps each), then re-explores now and
then so that estimates of the choices that could still win (predicted within `PLAUSIBLE` of the
best), and plain decoding's, stay current; choices predicted far worse
are not paid for again (nor further in the initial exploration, once REEXPLORE of their steps
are measured). A re-exploration waits at
least REEXPLORE_EVERY steps, and until its predicted cost is at most EXPLORE_SHARE of the time
since the last one: its steps' shortfall against the best, plus the drafter's catch-up when it
drafts (steps without drafts do not send the drafter the tokens they decode, so after a long
spell of them the first drafting step waits while the drafter takes them in: measured at 176
requests in flight, 2 s, as long as four steps, holding up every request in flight). Before an
exploring step that drafts, the drafter takes that backlog in beside the steps that still run
without drafts (`catch_up`), and the exploring step waits until it has (at most CATCH_UP_STEPS
steps: a drafter slower to take tokens in than the target is to decode them never catches up).
A drafting choice that has not run near the current batch size (no calibration there) is not
switched to on the cost model's word alone: it gets a trial of REEXPLORE steps first, within
the same budget (under overload every step also prefills prompts, so nothing near the batch
size is measured and the model extrapolates). Exploring steps are only those that just decode
(a step that also prefills prompts teaches nothing), and, all told, they may take at most
EXPLORE_SHARE of the time beyond what the current choice would have taken (those so far as
measured, the next one as predicted): with 160 requests arriving at once the exploration ran
in 3 s prefill steps and then at 160 decoding, where a step that drafts took 1-3 s against
0.45 s without, and cost 17% of the throughput. A switch needs the new choice to be predicted at
least `HYSTERESIS` better (a shorter draft of the same kind, with more than SMALL_BATCH
decoding: only better, see `_switch`), and only after `MIN_DWELL` steps on the current one
when that was chosen for the same batch-size bin, so noise does not make it flap. Choices are
ranked for the largest number of requests decoding in the last MIN_DWELL steps: at a fixed load a finished
request's successor takes a step or two to arrive and prefill, and ranked for that dip, auto
drafted for the two steps of each, 39 times in a run at 4 in flight, each switch paying the
drafter's catch-up (benchmarks/auto_fixed_load/dips).
While it has settled on plain decoding with more than SMALL_BATCH requests decoding, new prompts
do not go to the drafter (`defer_intake`): taken in beside the target they slowed it, and the
requests still running at the next drafting step are sent whole with its catch-up.
Seeded sampling under `auto` depends on load (the number of drafts per step does), as with
vLLM's own dynamic speculation.
"""

from __future__ import annotations

import collections
import statistics

from minedraft.core.costmodel import Curve, best_step, step_rate
from minedraft.core.trace import StepRecord

HYSTERESIS = 0.05  # a switch must be predicted this much faster
MIN_DWELL = 8  # steps on a choice before switching again
EXPLORE = 6  # steps per choice while exploring
REEXPLORE_EVERY = 200  # steps between short re-explorations
REEXPLORE = 2  # steps per choice when re-exploring
PLAUSIBLE = 0.8  # re-explore only choices predicted at least this fraction of the best
WINDOW = 9  # measurements per bin (and per overhead) whose median is the estimate
REFERENCE = 25  # a bin's first measurements, whose median is its reference for the pace
CAL_WINDOW = 20  # steps per (choice, batch-size bin) in its calibration
# steps, measured as predicted, that a drafting choice's calibration at SMALL_BATCH or fewer
# decoding starts from (see `AutoPolicy.calibration`)
CAL_PRIOR = 8
STALE = 2 * REEXPLORE_EVERY  # a trial this many steps old no longer counts (`_untried`)
# a choice's calibration, and a curve's size bin, that runs again after this many steps
# without starts afresh: its old steps are another moment's (see `_Steps.add`)
RESTART = REEXPLORE_EVERY // 2
EXPLORE_SHARE = 0.03  # re-explorations may cost at most this share of the time since the last
# drafting must be predicted this much faster than plain decoding to be chosen (of 0, 0.05 and
# 0.1, measured interleaved on a Xeon at 1, 4 and 8 in flight, 0.05 was ahead in each:
# benchmarks/regimes_xeon/margin)
MARGIN = 0.05
SPIKE = 4.0  # one step counts at most this many times its predicted time (a GC pause)
CATCH_UP_STEPS = 2 * MIN_DWELL  # steps an exploring step waits for the drafter to catch up
SMALL_BATCH = 2  # up to this many decoding, a step's acceptance is its requests' own (`_forget`)
ROUND_FIXED_MAX = 2.0  # the largest fixed cost of a drafter round, in forward passes


class OnlineCurve:
    """ms by size: per size bin (powers of 2 beyond 8), the median of its last WINDOW
    measurements (a median, because single steps spike: arrivals, garbage collection) placed at
    their mean size, read through a Curve (interpolated between bins, least-squares slope beyond
    them). At the mean size, not the bin's key: steps of 170 requests timed as if they were 256
    would make every size between two keys look cheaper than it is."""

    def __init__(self, prior=None):
        self.window: dict[int, collections.deque] = {}  # bin -> (size, ms) of its last steps
        self.bins: dict[int, float] = {}  # bin -> median ms
        self.reference: dict[int, float] = {}  # bin -> median of its first REFERENCE ms
        self._first: dict[int, list[float]] = {}  # until then
        self._last: dict[int, int] = {}  # bin -> the number of its latest measurement
        self._curve: Curve | None = None  # read on every prediction: built once per change
        self.prior = prior  # callable size -> ms, used until there are observations

    @staticmethod
    def _bin(x: float) -> int:
        x = max(1, int(round(x)))
        return x if x <= 8 else 1 << (x - 1).bit_length()

    def observe(self, x: float, ms: float, reference: bool = True, now: int = 0) -> None:
        """Fold one measurement (size, ms) into its bin (and into the bin's reference while it
        has none, if `reference`); `now`: the measurement's number, for a bin measured again
        after RESTART measurements without, which starts afresh (see `_Steps.add`)."""
        b = self._bin(x)
        if now - self._last.get(b, now) > RESTART:
            self.restart(x)
        self._last[b] = now
        window = self.window.setdefault(b, collections.deque(maxlen=WINDOW))
        window.append((x, ms))
        self.bins[b] = statistics.median(t for _, t in window)
        self._curve = None
        if reference and b not in self.reference:
            first = self._first.setdefault(b, [])
            first.append(ms)
            if len(first) == REFERENCE:
                self.reference[b] = statistics.median(self._first.pop(b))

    def restart(self, x: float) -> None:
        """Drop the measurements of x's bin (its reference stays)."""
        b = self._bin(x)
        self.window.pop(b, None)
        if self.bins.pop(b, None) is not None:
            self._curve = None

    def __call__(self, x: float) -> float:
        if not self.bins:
            return self.prior(x) if self.prior else 0.0
        if self._curve is None:
            self._curve = Curve(self.points())
        return self._curve(x)

    def points(self) -> list[tuple[float, float]]:
        """(mean size, median ms) per bin."""
        return [(statistics.fmean(x for x, _ in self.window[b]), ms) for b, ms in self.bins.items()]

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
        self.plain = OnlineCurve(p.decode if p else None)  # decode-only steps, ms by requests
        self.rounds = {k: OnlineCurve((lambda b, k=k: p.draft_ms(b, k)) if p else None)
                       for k in range(1, k_max + 1)}  # ms by requests drafted, per k
        self._rounds_seen = 0  # drafter rounds observed
        self._round_last = {k: 0 for k in self.rounds}  # k -> its latest round's number
        self.overheads = {kind: (p.overhead_ms(kind) if p else 0.0)
                          for kind in ("none", "sequential", "psd")}
        self.pace = 1.0  # the target's recent times over their bins' reference times
        self._paces: collections.deque = collections.deque(maxlen=WINDOW)  # (step, ratio)
        self._observed = 0  # steps observed
        self._excess = {kind: collections.deque(maxlen=WINDOW) for kind in self.overheads}
        self._intake: collections.deque = collections.deque(maxlen=WINDOW)  # drafter ms/token
        self._round_bin = {k: 0 for k in self.rounds}  # k -> the size bin of its latest round
        # a round's fixed cost in forward passes, estimated from two k run lately (`draft_ms`)
        self._fixed: collections.deque = collections.deque(maxlen=WINDOW)
        # per position i: verifications that reached it (all drafts before it accepted) and
        # how many of those accepted it; a profile's rates count as one verification
        prior = p.conditional_acceptance(len(p.acceptance_per_position)) if p else []
        self.trials = [1.0 if i < len(prior) else 0.0 for i in range(k_max)]
        self.accepted = [prior[i] if i < len(prior) else 0.0 for i in range(k_max)]

    # the interface of minedraft.core.costmodel.step_rate
    def decode(self, batch: float) -> float:
        """A step without drafts for `batch` requests, ms: the decode-only curve up to the
        largest size it measured; beyond it (or while it has a single size), the verification
        curve scaled to its largest size; before any decode-only step, the verification curve.
        Beyond, because the decode-only curve's slope comes from a few small sizes, often from
        the engine's first steps (slower: shapes warming up), while every drafting step adds to
        the verification curve: extrapolated from its own points, a decode step of 16-25
        requests was predicted at 30 ms against 60-84 measured, in a replay of a changing-load
        run (benchmarks/auto_low_high/all_modes/replay_decode.py)."""
        return self.pace * self._decode_at_pace_one(batch)

    def _decode_at_pace_one(self, batch: float) -> float:
        plain = self.plain
        if not plain.seen:
            return plain(batch) if plain.prior else self.target(batch)
        size, ms = max(plain.points())
        if not self.target.seen or (batch <= size and len(plain.bins) > 1):
            return plain(batch)
        base = self.target(size)
        return self.target(batch) * ms / base if base > 0 else ms

    def verify(self, tokens: float) -> float:
        """A verification of `tokens` tokens, ms."""
        return self.pace * self.target(tokens)

    def draft_ms(self, batch: float, k: int) -> float:
        """A drafter round of `batch` requests and k tokens, ms: k's own rounds if it ran among
        the last WINDOW rounds; otherwise the nearest k that did, scaled by k (a round is about
        k forward passes). A k not run lately keeps the medians of another moment: on the Xeon
        at 1 request, k = 2's three rounds from the engine's first steps (28 ms) stood for the
        whole run while k = 3's took 25 ms, and k = 4's (52 ms) from the initial exploration;
        sequential k = 2 was then ranked below plain decoding, which auto chose in 168 of 1064
        steps at 1 request where drafting made 1.2x its rate (measured 2026-12-03).
        Scaled as k + c, not k: a round also costs c forward passes' worth of fixed work
        (the round trip, sampling), c estimated whenever two k ran lately at one size
        (`_learn_fixed`; 0 until then). Scaled by k alone, k = 1's 9 ms rounds at 1 request on
        the Xeon priced k = 2's at 18 ms against 15 measured, and in a map's cell at 1 in
        flight auto, its hysteresis keeping it on k = 1, drafted with k = 1 in 539 of 767
        steps, where k = 2's steps made a token in 24.7 ms against k = 1's 28.2
        (benchmarks/regimes_xeon/small_batch)."""
        seen = [kk for kk, c in self.rounds.items() if c.seen]
        if not seen:
            return self.rounds[k](batch)
        lately = [kk for kk in seen if self._round_last[kk] > self._rounds_seen - WINDOW]
        if k in lately:
            return self.rounds[k](batch)
        near = min(lately, key=lambda kk: abs(kk - k))
        c = statistics.median(self._fixed) if self._fixed else 0.0
        return self.rounds[near](batch) * (k + c) / (near + c)

    def overhead_ms(self, kind: str) -> float:
        """Per-step overhead of a kind, ms."""
        return self.overheads[kind]

    def conditional_acceptance(self, k: int) -> list[float]:
        """P(position i accepted | the ones before were), i = 1..k, from the counts so far (the
        counts are conditional already); positions never reached repeat the last known rate."""
        known = [a / t for a, t in zip(self.accepted, self.trials) if t] or [0.0]
        return [known[min(i, len(known) - 1)] for i in range(k)]

    def intake_ms(self, tokens: int) -> float:
        """ms the drafter takes to take in `tokens` tokens without drafting: the median ms per
        token of its recent rounds that only took prompts in (0 before any)."""
        return tokens * statistics.median(self._intake) if self._intake else 0.0

    # learning
    def observe_intake(self, tokens: int, ms: float) -> None:
        """A drafter round that only took `tokens` tokens in took `ms`."""
        if tokens > 0:
            self._intake.append(ms / tokens)

    def observe_round(self, batch: int, k: int, ms: float) -> None:
        """A drafter round of `batch` requests and k tokens took `ms`."""
        if batch and k in self.rounds:
            if self._round_last[k] <= self._rounds_seen - WINDOW:  # back after a while:
                self.rounds[k].restart(batch)  # its old rounds at this size are another moment's
            self._rounds_seen += 1
            self._round_last[k] = self._rounds_seen
            self._round_bin[k] = OnlineCurve._bin(batch)
            self.rounds[k].observe(batch, ms)
            self._learn_fixed(k)

    def _learn_fixed(self, k: int) -> None:
        """Estimate c, a round's fixed cost in forward passes (rounds of j and k tokens taking
        t_j and t_k ms: t_k / t_j = (k + c) / (j + c)), from k's round just observed and each
        other k whose latest round, among the last WINDOW, was at the same size bin; pairs
        where more tokens did not take longer (noise) say nothing. Clipped to
        0..ROUND_FIXED_MAX."""
        b = self._round_bin[k]
        t_k = self.rounds[k].bins[b]  # (just observed)
        for j, curve in self.rounds.items():
            if j == k or self._round_last[j] <= self._rounds_seen - WINDOW \
                    or self._round_bin[j] != b or b not in curve.bins:
                continue
            (lo, t_lo), (hi, t_hi) = sorted([(j, curve.bins[b]), (k, t_k)])
            if t_hi > t_lo:
                c = (t_lo * hi - t_hi * lo) / (t_hi - t_lo)
                self._fixed.append(min(max(c, 0.0), ROUND_FIXED_MAX))

    def observe_step(self, r: StepRecord) -> None:
        """Learn the target's step time and the kind's overhead from a completed step, unless
        it also prefilled prompts: a prompt's token costs the target less than a decoded or
        verified one (measured at 170 requests in flight: 1.5 ms against 2.8), and a chunk of
        prompts costs more with more requests decoding beside it, so such steps would misstate
        verification and, through the pace, every other cost (under load they made plain
        decoding look 2x slower than it was)."""
        tokens = r.tokens or r.verify + r.drafted_tokens
        if not r.verify or r.verify_ms is None or not r.step_ms \
                or tokens > r.verify + r.drafted_tokens:
            return
        if not r.drafted_tokens:  # decode only
            curve, size = self.plain, r.verify
        else:
            curve, size = self.target, tokens
        self._observed += 1
        reference = curve.reference.get(OnlineCurve._bin(size))  # its own bin's, as stored
        if reference:  # (interpolating at `size` would bias sizes between two bins' keys)
            while self._paces and self._paces[0][0] < self._observed - 2 * WINDOW:
                self._paces.popleft()  # another moment's speed
            self._paces.append((self._observed, r.verify_ms / reference))
            self.pace = statistics.median(p for _, p in self._paces)
        curve.observe(size, r.verify_ms / self.pace, reference=self.pace_fresh(),
                      now=self._observed)
        if r.kind == "psd":
            critical = max(r.draft_ms or 0.0, r.verify_ms)
        elif r.kind == "sequential":
            critical = (r.draft_ms or 0.0) + r.verify_ms
        else:
            critical = r.verify_ms
        self._excess[r.kind].append(max(0.0, r.step_ms - critical))
        self.overheads[r.kind] = statistics.median(self._excess[r.kind])

    def pace_fresh(self) -> bool:
        """The pace was measured within the last WINDOW observed steps (those that do not also
        prefill prompts), or nothing has a reference yet (the pace is 1 by definition): only
        then may a step add to a bin's reference. A
        stale pace is another moment's: at 4 in flight, a slow spell of plain decoding (44 ms
        steps against 25) left it at 1.37 when auto switched to sequential k = 2, whose 12-token
        verifications had no reference yet; their reference took that pace for good, from then
        on their usual speed read as pace 1.3-1.6, plain decoding was predicted 1.4x slower than
        it was (88 tok/s against 132-160 measured in its re-explorations) and auto drafted in
        685 of 1100 steps at 0.85-0.95x plain decoding's rate
        (benchmarks/auto_fixed_load/stale_pace). Plain decoding's next steps (a re-exploration,
        or `AutoPolicy._anchor`) measure the pace again (older observations are dropped then,
        see `observe_step`), and the new bin's reference is taken from its steps that follow."""
        if not self._paces:
            return not (self.plain.reference or self.target.reference)
        return self._paces[-1][0] >= self._observed - WINDOW

    def observe_drafts(self, drafts: list[tuple[int, int]]) -> None:
        """(draft tokens, accepted) of each request verified with drafts in a step."""
        for n, a in drafts:
            for i in range(min(n, self.k_max)):
                self.trials[i] += 1
                if i < a:
                    self.accepted[i] += 1
                else:
                    break


class _Steps:
    """A choice's last CAL_WINDOW steps in one batch-size bin, summed by requests decoding:
    `by_n[n]` = (steps, output tokens, ms at pace 1). A step may carry the ids of its requests
    (see `forget`)."""

    def __init__(self):
        self.steps: collections.deque = collections.deque(maxlen=CAL_WINDOW)
        self.by_n: dict[int, tuple[int, int, float]] = {}
        self.last = 0  # the policy's step count at the latest

    def add(self, n: int, output: int, ms: float, step: int, requests=None) -> None:
        """One more step (the policy's `step`-th; `requests`: a frozenset of its requests' ids,
        or None); the oldest leaves a full window, and all leave one whose latest is more than
        RESTART steps old: back after a while (a re-exploration, every REEXPLORE_EVERY steps or
        more), a choice is ranked by its steps now. Kept, ten steps of plain decoding at 1.5x
        their usual time (55-60 ms against 40 on the Xeon at 8 in flight, right after new
        requests arrived), after which auto drafted, stayed most of plain decoding's
        calibration there (and its cost curve's WINDOW, see `OnlineCurve.observe`) for ~700
        steps, refreshed by two steps every 200: auto drafted with sequential k = 1 in 80-100%
        of its steps for a whole cell of the regime map, at 0.88x plain decoding
        (benchmarks/regimes_xeon/interleaved_r5)."""
        if step - self.last > RESTART:
            self.steps.clear()
        self.last = step
        self.steps.append((n, output, ms, requests))
        self._sum()

    def forget(self, running: set) -> bool:
        """Drop the steps that carry a request not in `running` (finished or preempted);
        returns whether any was dropped."""
        kept = [s for s in self.steps if s[3] is None or s[3] <= running]
        if len(kept) == len(self.steps):
            return False
        self.steps = collections.deque(kept, maxlen=CAL_WINDOW)
        self._sum()
        return True

    def _sum(self) -> None:
        self.by_n = {}
        for n, output, ms, _ in self.steps:
            count, out, t = self.by_n.get(n, (0, 0, 0.0))
            self.by_n[n] = (count + 1, out + output, t + ms)


class AutoPolicy:
    """The per-step choice of `--mode auto` (see the module docstring)."""

    def __init__(self, k_max: int, profile=None):
        self.k_max = k_max
        self.costs = OnlineCosts(k_max, profile)
        self.explore = [] if profile else self._exploration()
        self.current: tuple[str, int] = ("none", 0)  # plain decoding until told otherwise
        self.settled = False  # the first choice after the exploration (or from a profile)
        self.dwell = 0
        self.dwell_bin: int | None = None  # the batch-size bin the current choice was made for
        self.steps = 0
        self.predicted: dict[str, float] = {}
        # (kind, k, batch-size bin) -> its last steps, which the calibration compares with the
        # model as it is now
        self.samples: dict[tuple, _Steps] = {}
        self.explored_at = 0  # the step count at the latest re-exploration
        self.anchored_at = 0  # and at the latest `_anchor`
        self.since_ms = 0.0  # the time steps have taken since then (or since a trial)
        self.elapsed_ms = 0.0  # the time all steps have taken
        self.explore_spent_ms = 0.0  # measured: what exploring steps took beyond `current`
        self._exploring = False  # the step chosen last explores
        self.waited = 0  # steps an exploring step that drafts has waited for the drafter
        self._n = 0  # requests decoding in the step chosen last
        # requests decoding in the last MIN_DWELL steps: choices are ranked for the largest
        # (a dip while finished requests' successors arrive and prefill is not a new load)
        self._recent: collections.deque = collections.deque(maxlen=MIN_DWELL)
        self.tried: dict[tuple, int] = {}  # (choice, batch-size bin) -> step of its last trial
        self._cache: dict[tuple, float | None] = {}  # rates, calibrations: until an observation
        # choice, batch, rate, and the requests' ids where the calibration keeps them
        self._pending: tuple[tuple[str, int], int, float, frozenset | None] | None = None

    @classmethod
    def from_settings(cls, settings, k_max: int) -> "AutoPolicy":
        """The policy for PSDSettings (seeded by `auto_profile` when set)."""
        profile = None
        if settings.auto_profile:
            from minedraft.core.costmodel import load_profile
            profile = load_profile(settings.auto_profile)
        return cls(k_max, profile)

    def _exploration(self, steps: int = 0) -> list[tuple[str, int]]:
        """`steps` (default EXPLORE) steps of each: none (first: the drafter may still be taking
        the first prompts in, and these steps need not wait for it), then psd and sequential at
        k_max and at 1."""
        steps = steps or EXPLORE
        choices = [("none", 0), ("psd", self.k_max), ("sequential", self.k_max)]
        if self.k_max > 1:
            choices += [("psd", 1), ("sequential", 1)]
        return [c for c in choices for _ in range(steps)]

    def choices(self) -> list[tuple[str, int]]:
        """Every (kind, k) the policy may choose: none, then sequential and psd at k = 1..k_max."""
        return [("none", 0)] + [(kind, k) for kind in ("sequential", "psd")
                                for k in range(1, self.k_max + 1)]

    def calibration(self, choice: tuple[str, int], n: int) -> float | None:
        """Measured / predicted output rate of `choice` at `n` requests decoding: over its steps
        in n's batch-size bin (else in the bins within a factor of 2), the time the model
        predicts now for their output over the time they took at the pace now; None where it
        has not run (see the module docstring).
        A drafting choice's at SMALL_BATCH or fewer decoding counts CAL_PRIOR more steps, each
        taking the time predicted (a calibration of 1 that its own steps outweigh as they
        come): there its steps are the running requests' own (`_forget`), a few of them, and
        a few unlucky drafts moved auto off a draft length that paid. A request's acceptance
        does vary (in a map's cell at 1 in flight on AMD, the halves of its requests accepted
        0.2-1.0 per position, correlated 0.7), but it is noisy over 8 steps and rises as a
        request goes on (the second half higher in 23 of 24: 8 prompts, 3 repeats).
        Measured interleaved on AMD (benchmarks/regimes/cal_prior_amd), auto / best fixed
        mode: at 1 in flight 0.952x without, 0.981x with; at 2, 0.938x and 0.963x; ahead in
        each of 4 repeats."""
        key = ("cal", *choice, OnlineCurve._bin(n))
        if key not in self._cache:
            b = key[-1]
            own = self.samples.get((*choice, b))
            windows = [own] if own else [w for (kind, k, bb), w in self.samples.items()
                                         if (kind, k) == choice and b <= 2 * bb <= 4 * b]
            sums = [v for w in windows for v in w.by_n.items()]
            predicted = sum(out / self._model_rate(choice, m) for m, (_, out, _) in sums
                            if self._model_rate(choice, m) > 0)
            measured = self.costs.pace * sum(ms for _, (_, _, ms) in sums)
            if predicted and choice[0] != "none" and b <= SMALL_BATCH:
                prior = CAL_PRIOR * predicted / sum(count for _, (count, _, _) in sums)
                predicted, measured = predicted + prior, measured + prior
            self._cache[key] = predicted / measured if predicted and measured else None
        return self._cache[key]

    def rate(self, choice: tuple[str, int], n: int) -> float:
        """Output tokens per ms that `choice` is ranked by, for `n` decoding requests: the cost
        model's `step_rate`, times the choice's calibration at this batch size (1 where it has
        not run near it), over 1 + MARGIN for choices that draft. The margin is there
        because what the model misses mostly favours drafting: measured on 2 CPU cores,
        steps that draft look 5-15% better than whole runs of them turn out
        (benchmarks/psd_efficiency), as the drafter's prompt prefills and the frontend share
        its core; the calibrations measure most of that, and at 10% auto passed over drafting
        4-9% ahead of plain decoding at 1-4 in flight on a Xeon (benchmarks/regimes_xeon/
        margin)."""
        cal = self.calibration(choice, n) or 1.0
        margin = 1.0 if choice[0] == "none" else 1.0 + MARGIN
        return self._model_rate(choice, n) * cal / margin

    def _model_rate(self, choice: tuple[str, int], n: int) -> float:
        key = ("rate", *choice, n)
        if key not in self._cache:
            try:
                self._cache[key] = step_rate(self.costs, choice[0], n, choice[1])
            except ZeroDivisionError:  # nothing measured yet
                self._cache[key] = 0.0
        return self._cache[key]

    def choose(self, n_decoding: int, backlog=lambda: 0, prefill: bool = False,
               requests=None) -> tuple[str, int]:
        """(kind, k) for the next step with `n_decoding` requests decoding; `backlog()`: the
        tokens of those requests the drafter has not taken in yet (asked before a
        re-exploration); `prefill`: the step will also prefill prompts (it explores nothing:
        such steps teach nothing, and drafting in them costs more); `requests`: their ids
        (None: unknown; see `_forget`)."""
        if n_decoding == 0:
            return self.current
        if requests is not None:
            self._forget(set(requests))
        self.steps += 1
        if not self.explore and self.steps - self.explored_at >= REEXPLORE_EVERY:
            plan = self._reexploration(n_decoding, backlog())
            if plan is not None:
                self.explore, self.explored_at, self.since_ms = plan, self.steps, 0.0
        elif not self.explore and self._anchor(n_decoding):
            self.explore, self.anchored_at, self.since_ms = [("none", 0)] * REEXPLORE, \
                self.steps, 0.0
        self._n = n_decoding
        self._recent.append(n_decoding)
        self._prune(n_decoding)
        if not self._may_explore(n_decoding, prefill, backlog):
            self._switch(max(self._recent), backlog)  # (which may start a trial)
        self._exploring = self._may_explore(n_decoding, prefill, backlog)
        self.waited = 0 if self._exploring or not self.catch_up() else self.waited + 1
        choice = self.explore.pop(0) if self._exploring else self.current
        if choice[0] == "psd" and n_decoding < 2:  # what runs (see `_best`), and is measured
            choice = ("sequential", choice[1])
        ids = frozenset(requests) if requests is not None and choice[0] != "none" \
            and n_decoding <= SMALL_BATCH else None
        self._pending = (choice, n_decoding, self._model_rate(choice, n_decoding), ids)
        return choice

    def _forget(self, running: set) -> None:
        """Drop the calibration steps of drafting choices at SMALL_BATCH or fewer decoding
        whose requests are not all still running. With one or two requests decoding, a step's
        output is their own acceptance, which depends on the prompt: at 1 in flight on the
        bundled pair, requests whose drafts were accepted at 0.1-0.36 per token (overall about
        0.5) made plain decoding the right choice while they ran, and their steps, kept, held
        plain decoding for up to 194 steps into the requests after them, whose drafts would
        have paid (benchmarks/auto_fixed_load/no_draft_rpc). Dropped, the choice is ranked by
        the cost model and the overall acceptance again (a trial first, see `_switch`). With
        more requests decoding a step's acceptance is a mean over many, and carries over."""
        changed = False
        for (kind, _, b), window in self.samples.items():
            if kind != "none" and b <= SMALL_BATCH:  # (the only windows whose steps carry ids)
                changed |= window.forget(running)
        if changed:
            self._cache.clear()

    def _switch(self, n: int, backlog) -> None:
        """Switch to the best choice when it is predicted HYSTERESIS better and the current one
        had MIN_DWELL steps or was chosen for another batch-size bin (the dwell is against
        noise, not against the batch changing: at 2 in flight, a choice made while one request
        decoded held both for MIN_DWELL steps each time a request was replaced); one that never
        ran near `n` gets a trial first (see the module docstring). The first choice once the
        initial exploration is over (at once with a profile) is the best, with no hysteresis.
        A shorter draft of the same kind needs no predicted gain, only to be ranked first: what
        the cost model leaves out grows with k. At 4 in flight on the Xeon, sd-ext with k = 1
        and k = 2 made tokens equally fast in steps that just decode (8.07 and 8.08 ms a
        token), but k = 1 served 5.7% more tokens a second: k = 2 took longer in the steps that
        also prefilled prompts (0.97-1.00 s against 0.82-0.88 a repeat) and in its batches'
        tails (uneven acceptance left one request decoding alone for 8 steps against 1), and
        auto, its hysteresis holding k = 2 from the cell before, made 0.93x sd-ext k = 1
        (benchmarks/regimes_xeon/small_batch). Not at SMALL_BATCH or fewer decoding: there a
        choice's calibration is the running requests' own acceptance (`_forget`), so a shorter
        k ranked first mostly says that these requests accept less, which the next ones may
        not; switched to at once, auto's k moved among 1-3 within every repeat at 2 in flight
        (0.92x sd-ext k = 2 in two maps); with the rule above SMALL_BATCH only, 0.965x against
        0.911x, measured interleaved in one run (same folder, `variants/`)."""
        best = self._best(n)
        self.dwell += 1
        if not self.settled and not self.explore:  # explored (or a profile): the first choice
            self.current, self.dwell, self.settled = best, 0, True
            self.dwell_bin = OnlineCurve._bin(n)
            return
        settling = self.dwell < MIN_DWELL and OnlineCurve._bin(n) == self.dwell_bin
        shorter = n > SMALL_BATCH and best[0] == self.current[0] != "none" \
            and best[1] < self.current[1]
        gain = 1.0 if shorter else 1.0 + HYSTERESIS
        if best == self.current or settling or \
                self.predicted["best"] <= self.rate(self.current, n) * gain:
            return
        if not self._untried(best, n):
            self.current, self.dwell, self.dwell_bin = best, 0, OnlineCurve._bin(n)
        elif not self.explore and self._affordable(self.costs.intake_ms(backlog())):
            # never run near this batch size: a short trial first (its calibration decides
            # then), within the exploration budget
            self.tried[(best, OnlineCurve._bin(n))] = self.steps
            self.explore, self.since_ms = [best] * REEXPLORE, 0.0

    def _prune(self, n: int) -> None:
        """Drop the exploring steps left of the next choice once REEXPLORE of its steps near
        `n` are measured and it is ranked below PLAUSIBLE of the best, as a re-exploration
        would not plan it (at 64 in flight the initial exploration's 24 steps that draft,
        0.3-1.0 s beyond a 0.2 s step each, would otherwise run to the end, within the budget
        but all of it)."""
        while self.explore and self.explore[0][0] != "none":
            head = self.explore[0]
            measured = self.samples.get((*head, OnlineCurve._bin(n)))
            if measured is None or len(measured.steps) < REEXPLORE:
                return
            self._best(n)
            if self.rate(head, n) >= PLAUSIBLE * self.predicted["best"]:
                return
            self.explore = [c for c in self.explore if c != head]

    def defer_intake(self) -> bool:
        """New prompts need not go to the drafter now: auto has settled on plain decoding,
        more than SMALL_BATCH requests decode and no drafting step is due (`catch_up`). A
        prompt taken in on the drafter's core slows the target beside it, and at such loads
        most requests finish before the next drafting step; one still running then is sent
        whole with the backlog (`catch_up`, whose cost the exploration budget counts). On the
        crossing load's high part (3 requests/s, ~97% of steps without drafts) the intake
        alone cost 3-10% of the mean latency (benchmarks/auto_low_high/high_part_split). Not
        at SMALL_BATCH or fewer: there a drafting step is never far (each request's own
        acceptance decides, `_forget`), and deferred at one or two in flight, the prompts'
        catch-up counted against drafting and kept auto on plain decoding where drafting
        paid (benchmarks/auto_low_high/lazy_intake)."""
        return self.settled and self.current[0] == "none" and self._n > SMALL_BATCH \
            and not self.catch_up()

    def catch_up(self) -> bool:
        """The next exploring step (or trial) drafts after steps without drafts, and the budget
        allows it now: the drafter should take their tokens in beforehand, beside the steps that
        still run without drafts (the exploring step waits until then). Not sooner: steps
        beside a drafter taking tokens in are slower (at 64 in flight, 230 ms against 200 with
        a catch-up round in every step)."""
        if not self.explore or self.explore[0][0] == "none" or self.current[0] != "none":
            return False
        return self._within_share(self._exploring_cost(self.explore[0], self._n))

    def _may_explore(self, n: int, prefill: bool, backlog) -> bool:
        """The next exploring step may run now: the step just decodes, the drafter's catch-up
        on `backlog()` tokens (when it drafts after steps without drafts) takes at most a step
        (or it waited CATCH_UP_STEPS steps for it, and the catch-up counts in its cost), and
        exploring steps, all told, stay within EXPLORE_SHARE of the time (those so far as
        measured, this one as predicted)."""
        if not self.explore or prefill:
            return False
        choice = self.explore[0]
        cost = self._exploring_cost(choice, n)
        if choice[0] != "none" and self.current[0] == "none":
            catch_up = self.costs.intake_ms(backlog())
            usual = self._usual_rate(self.current, n)
            if usual > 0 and catch_up > n / usual:  # the drafter is still catching up
                if self.waited < CATCH_UP_STEPS:
                    return False
                cost += catch_up  # (it never will: the step waits for it)
        return self._within_share(cost)

    def _within_share(self, cost_ms: float) -> bool:
        """Exploring steps, those so far (measured) and one more costing `cost_ms`
        (predicted), stay within EXPLORE_SHARE of all the time steps have taken."""
        return self.explore_spent_ms + cost_ms <= EXPLORE_SHARE * self.elapsed_ms

    def _usual_rate(self, choice: tuple[str, int], n: int) -> float:
        """The cost model's rate for `choice` at `n`, times its calibration there (no margin)."""
        return self._model_rate(choice, n) * (self.calibration(choice, n) or 1.0)

    def _exploring_cost(self, choice: tuple[str, int], n: int) -> float:
        """Predicted ms a step of `choice` takes beyond what the current choice would take for
        `n` output tokens (0 while either rate is unknown: a choice never run may cost one
        step more than the budget)."""
        new, usual = self._usual_rate(choice, n), self._usual_rate(self.current, n)
        if choice == self.current or new <= 0 or usual <= 0:
            return 0.0
        return max(0.0, n / new - n / usual)

    def _untried(self, choice: tuple[str, int], n: int) -> bool:
        """`choice` drafts, has not run near batch size `n` (no calibration) and had no trial
        there in the last STALE steps (its trial's steps may be gone: see `_forget`): only the
        cost model, extrapolated, speaks for it."""
        return (choice[0] != "none" and self.calibration(choice, n) is None
                and self.steps - self.tried.get((choice, OnlineCurve._bin(n)), -STALE) >= STALE)

    def _reexploration(self, n: int, backlog: int) -> list[tuple[str, int]] | None:
        """REEXPLORE steps of plain decoding and of each choice that could win (predicted
        within PLAUSIBLE of the best), or None while they would cost more than EXPLORE_SHARE of
        the time since the last re-exploration: ms their output takes beyond the best's rate,
        plus the drafter's catch-up on `backlog` tokens when they draft (see the module
        docstring). Plain decoding always: predicted too slow, it was otherwise not measured
        again, and its estimate could stay what the engine's first (slow) steps made it; with
        it, near capacity, auto drafted throughout at 1.5x plain decoding's latency
        (benchmarks/auto_low_high/decode_shape). Its steps cost little where drafting pays
        (two steps at 0.8x the rate, every REEXPLORE_EVERY steps or more)."""
        best = self._best(n)
        top = self.predicted["best"]
        plan = [c for c in self._exploration(REEXPLORE) if c != best
                and (c[0] == "none" or self.rate(c, n) >= PLAUSIBLE * top)]
        if top <= 0 or not plan:
            return plan
        cost = sum(n / self.rate(c, n) - n / top for c in plan)
        if any(kind != "none" for kind, _ in plan):
            cost += self.costs.intake_ms(backlog)
        return plan if self._affordable(cost) else None

    def _anchor(self, n: int) -> bool:
        """REEXPLORE steps of plain decoding are due to measure the target's pace: the current
        choice drafts, the pace is stale (its steps fall in bins without a reference yet, see
        `OnlineCosts.pace_fresh`), MIN_DWELL steps have passed since the last such anchor and
        the budget allows them. A slow spell of 5 plain-decoding steps (45 ms against 27) raised
        the pace to 1.5, which made drafting (whose drafter rounds it does not scale) look
        better; with the pace stale from then on, auto drafted for 200 steps, until the next
        re-exploration, at 0.85-0.95x plain decoding's rate (benchmarks/auto_fixed_load/
        stale_pace)."""
        if self.current[0] == "none" or self.costs.pace_fresh() \
                or self.steps - self.anchored_at < MIN_DWELL:
            return False
        self._best(n)
        plain, top = self.rate(("none", 0), n), self.predicted["best"]
        cost = REEXPLORE * max(0.0, n / plain - n / top) if plain > 0 and top > 0 else 0.0
        return self._affordable(cost)

    def _affordable(self, cost_ms: float) -> bool:
        """Exploring for `cost_ms` more stays within EXPLORE_SHARE of the time since the last."""
        return cost_ms <= EXPLORE_SHARE * self.since_ms

    def _best(self, n: int) -> tuple[str, int]:
        # one request has no second sub-batch: psd runs it as sequential (minedraft.core.
        # subbatch), so it is not a choice of its own there (at 2 in flight, psd k = 3 was
        # chosen whenever one request decoded while its successor prefilled, and then kept
        # MIN_DWELL steps at 2 decoding, where it is the worst choice: 0.90x sd-ext)
        kinds = ("none", "sequential", "psd") if n >= 2 else ("none", "sequential")
        kind, k, rate = best_step(self.costs, n, self.k_max, kinds=kinds,
                                  rate=lambda kind, b, k: self.rate((kind, k), b))
        self.predicted["best"] = rate
        return kind, k

    def observe_drafts(self, drafts: list[tuple[int, int]]) -> None:
        """Acceptance of this step's verifications."""
        self.costs.observe_drafts(drafts)
        self._cache.clear()

    def observe_round(self, batch: int, k: int, ms: float) -> None:
        """Cost of a drafter round."""
        self.costs.observe_round(batch, k, ms)
        self._cache.clear()

    def observe_intake(self, tokens: int, ms: float) -> None:
        """A drafter round that only took `tokens` tokens in (prompts) took `ms`."""
        self.costs.observe_intake(tokens, ms)

    def observe_step(self, record: StepRecord) -> None:
        """A completed step's record: the costs it shows, and how long its output (verified
        requests + accepted drafts) took against the time predicted when it was chosen.
        Every step of a choice counts (its catch-ups and waits for the drafter are its cost)
        except those that also prefill prompts (their cost is the same for every choice, and
        large and noisy)."""
        self.costs.observe_step(record)  # (the pace now includes this step)
        self._cache.clear()
        self.since_ms += record.step_ms or 0.0
        self.elapsed_ms += record.step_ms or 0.0
        pending, self._pending = self._pending, None
        r = record
        if (pending is None or not r.step_ms or not r.verify or pending[2] <= 0
                or (r.tokens or 0) > r.verify + r.drafted_tokens):
            return
        choice, n, rate, ids = pending
        output = r.verify + r.accepted_tokens
        if self._exploring and choice != self.current:  # its cost: the time beyond `current`'s
            usual = self._usual_rate(self.current, n)
            if usual > 0:
                self.explore_spent_ms += max(0.0, r.step_ms - output / usual)
        measured = min(r.step_ms, SPIKE * output / rate)
        bin_ = (*choice, OnlineCurve._bin(n))
        self.samples.setdefault(bin_, _Steps()).add(n, output, measured / self.costs.pace,
                                                    self.steps, ids)
