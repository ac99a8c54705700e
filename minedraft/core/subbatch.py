"""The PSD state machine: two sub-batches of decoding requests, and the plan of each step.

Pure bookkeeping keyed by request id, no vLLM types: the scheduler (minedraft.vllm_ext) and the
simulator (minedraft.analysis.simulate) run the same code.

A step verifies one side while the drafter drafts the other side; then the sides swap. The one
rule that keeps PSD exact *and* reproducible: a request is verified only with drafts made from its
current state (its "fresh" drafts), and drafted only when it has none. So the number and content
of a request's drafts at every verification depend on its own history alone, never on which
other requests share the engine (vLLM draws a seeded request's random numbers per draft
position, so this is what makes seeded sampling repeatable). A request that is on the verified
side without fresh drafts, or on the drafted side with fresh ones, is held for one step; moving a
request between sides (joins, rebalancing) therefore costs it one step and nothing else.

Invariants after `join`/`leave`/`rebalance`: the sides differ in size by at most one, so with two
or more decoding requests neither is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What a step does with drafts: overlap one sub-batch's drafting with the other's verification,
# draft then verify everything, or verify without drafts.
KINDS = ("psd", "sequential", "none")


class SubBatches:
    """Which side (0 or 1) each decoding request is on, and which side the current step verifies.

    With `overlap` off (sd-ext) there is one side, 0."""

    def __init__(self, overlap: bool = True):
        self.overlap = overlap
        self.side: dict[str, int] = {}
        self.verify_side = 0  # the side the current (or next) step verifies

    def members(self, side: int) -> list[str]:
        """Request ids on `side` (0 or 1), in join order."""
        return [rid for rid, s in self.side.items() if s == side]

    def sizes(self) -> tuple[int, int]:
        """(requests on side 0, requests on side 1)."""
        n1 = sum(self.side.values())
        return len(self.side) - n1, n1

    def join(self, rid: str) -> int:
        """A request starts decoding: it joins the smaller side; on a tie the side drafted in the
        current step, so that it is drafted at once and verified in the next step."""
        if not self.overlap:
            self.side[rid] = 0
            return 0
        n0, n1 = self.sizes()
        s = (1 - self.verify_side) if n0 == n1 else (0 if n0 < n1 else 1)
        self.side[rid] = s
        return s

    def leave(self, rid: str) -> None:
        """Finished, aborted or preempted."""
        self.side.pop(rid, None)

    def rebalance(self, movable: set[str] | None = None) -> list[str]:
        """Move requests from the larger side to the smaller until the sizes differ by <= 1;
        the newest move first. Returns the moved ids."""
        if not self.overlap:
            return []
        moved: list[str] = []
        while True:
            n0, n1 = self.sizes()
            if abs(n0 - n1) <= 1:
                return moved
            big = 0 if n0 > n1 else 1
            candidates = [r for r in self.members(big)
                          if (movable is None or r in movable) and r not in moved]
            if not candidates:
                return moved
            self.side[candidates[-1]] = 1 - big
            moved.append(candidates[-1])

    def flip(self) -> None:
        """The step is over: the side drafted during it is verified next."""
        if self.overlap:
            self.verify_side = 1 - self.verify_side


@dataclass(frozen=True)
class StepPlan:
    """What one step does. Lists keep the order of `decoding` (vLLM's running order).

    verify:   requests the target verifies (each with its fresh drafts, if it has any);
    catch_up: requests among `verify` drafted first, the target waiting for them (sequential);
    draft:    requests drafted while the target verifies (overlapped; disjoint from `verify`);
    held:     decoding requests in neither list (hidden from the target for this step)."""

    kind: str
    verify: list[str] = field(default_factory=list)
    catch_up: list[str] = field(default_factory=list)
    draft: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)

    @property
    def overlapped(self) -> bool:
        """Drafting runs while the target verifies."""
        return bool(self.draft)


def plan_step(batches: SubBatches, decoding: list[str], fresh: set[str], kind: str) -> StepPlan:
    """The plan of one step for the `decoding` requests (each already on a side), given which of
    them hold fresh drafts, for the step `kind` (see KINDS):

    - "none": verify everyone without new drafts (fresh drafts, if any, are still used);
    - "sequential": draft everyone without fresh drafts, then verify everyone;
    - "psd": verify the fresh requests of the verify side while the drafter drafts the requests
      of the other side that need drafts. If the verify side has no fresh request (pipeline
      start, a single request, a restarted drafter), its requests are drafted first (catch-up);
      if it has no request at all, the sides swap first.
    Raises ValueError for an unknown kind."""
    if kind not in KINDS:
        raise ValueError(f"step kind must be one of {KINDS}, got {kind!r}")
    if kind == "none" or not decoding:
        return StepPlan("none", verify=list(decoding))
    if kind == "sequential" or not batches.overlap:
        return StepPlan("sequential", verify=list(decoding),
                        catch_up=[r for r in decoding if r not in fresh])
    side = batches.side
    if not any(side[r] == batches.verify_side for r in decoding):
        batches.flip()  # the verify side drained: swap now rather than waste a step
    on_v = [r for r in decoding if side[r] == batches.verify_side]
    verify = [r for r in on_v if r in fresh]
    catch_up: list[str] = []
    if not verify:
        verify = catch_up = on_v
    draft = [r for r in decoding if side[r] != batches.verify_side and r not in fresh]
    chosen = set(verify) | set(draft)
    held = [r for r in decoding if r not in chosen]
    return StepPlan("psd" if draft else "sequential", verify, catch_up, draft, held)
