"""The PSD state machine: which requests form each sub-batch, and which sub-batch a step verifies.

Pure bookkeeping, keyed by request id, no vLLM types, so it can be tested on its own.

A step verifies one side (with drafts made during the previous step) while the drafter drafts
the other side (verified in the previous step, so its drafts are never stale); then the sides swap.
Requests join a side only once they decode (prefill chunks run in whichever step they fit).
Any decoding request may sit on either side: one that joins the side about to be verified simply
has no drafts for that one step and decodes a single token, so balance can be restored at once.

Invariants kept after every event: the two sides differ in size by at most one request, and
(with overlap on) neither side is empty while two or more requests decode.
"""

from __future__ import annotations


class SubBatches:
    def __init__(self, overlap: bool = True):
        self.overlap = overlap
        self.side: dict[str, int] = {}
        self.verify_side = 0  # the side the current (or next) step verifies

    # ----------------------------------------------------------------- queries
    def members(self, side: int) -> list[str]:
        return [rid for rid, s in self.side.items() if s == side]

    def sizes(self) -> tuple[int, int]:
        n1 = sum(self.side.values())
        return len(self.side) - n1, n1

    def is_hidden(self, rid: str) -> bool:
        """Not verified in the current step: it belongs to the side being drafted."""
        return self.overlap and self.side.get(rid, self.verify_side) != self.verify_side

    # ----------------------------------------------------------------- events
    def join(self, rid: str) -> int:
        """A request starts decoding: it joins the smaller side (ties: the side just verified,
        which the drafter takes next, so its first drafts come soonest)."""
        if not self.overlap:
            self.side[rid] = 0
            return 0
        n0, n1 = self.sizes()
        just_verified = self.verify_side
        if n0 == n1:
            s = just_verified
        else:
            s = 0 if n0 < n1 else 1
        self.side[rid] = s
        return s

    def leave(self, rid: str) -> None:
        """Finished, aborted or preempted."""
        self.side.pop(rid, None)

    def rebalance(self, movable: set[str]) -> list[str]:
        """Move requests from the larger side to the smaller until sizes differ by <= 1.

        Only `movable` requests may move (those not currently out at the drafter)."""
        if not self.overlap:
            return []
        moved = []
        while True:
            n0, n1 = self.sizes()
            if abs(n0 - n1) <= 1:
                return moved
            big = 0 if n0 > n1 else 1
            candidates = [r for r in self.members(big) if r in movable and r not in moved]
            if not candidates:
                return moved
            rid = candidates[-1]  # the newest: it has the least drafting state to lose
            self.side[rid] = 1 - big
            moved.append(rid)

    def flip(self) -> None:
        """The step is over: the side drafted during it is verified next."""
        if self.overlap:
            self.verify_side = 1 - self.verify_side
