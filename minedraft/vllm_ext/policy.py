"""What each step does with drafts: the fixed modes, and `auto`'s choice per step.

A policy answers `choose(n_decoding, backlog, prefill, requests) -> (kind, k)` before each step
(kind: "psd", "sequential" or "none", see minedraft.core.subbatch; `backlog()` counts the tokens
of the decoding requests the drafter has not taken in; `prefill`: the step also prefills
prompts; `requests`: the decoding requests' ids) and
`catch_up()` (a drafting step is due after steps without drafts: the drafter should take in
now, in the background, the tokens those steps decoded) and `defer_intake()` (new prompts need
not go to the drafter now: no drafting step is expected soon), and is told what happened: the
drafts verified (`observe_drafts`), each drafter round (`observe_round`, or `observe_intake` for a
round that only took tokens in) and each completed step (`observe_step`).
"""

from __future__ import annotations

from minedraft.core.trace import StepRecord


class FixedPolicy:
    """psd or sd-ext: the same kind and k every step."""

    def __init__(self, kind: str, k: int):
        self.kind, self.k = kind, k

    def choose(self, n_decoding: int, backlog=None, prefill: bool = False,
               requests=None) -> tuple[str, int]:
        """The same (kind, k) every step."""
        return self.kind, self.k

    def catch_up(self) -> bool:
        """Never: every step drafts, so the drafter never lags."""
        return False

    def defer_intake(self) -> bool:
        """Never: every step drafts, so the drafter needs every prompt."""
        return False

    def observe_drafts(self, drafts: list[tuple[int, int]]) -> None:
        """(draft tokens, accepted tokens) of each request verified with drafts in a step."""

    def observe_round(self, batch: int, k: int, ms: float) -> None:
        """A drafter round of `batch` requests and `k` tokens took `ms`."""

    def observe_intake(self, tokens: int, ms: float) -> None:
        """A drafter round that only took `tokens` tokens in took `ms`."""

    def observe_step(self, record: StepRecord) -> None:
        """A step is complete (its record final)."""


def make_policy(settings, k_max: int):
    """The policy of a PSDSettings' mode, drafting at most `k_max` tokens per request."""
    if settings.mode == "auto":
        from minedraft.vllm_ext.auto import AutoPolicy
        return AutoPolicy.from_settings(settings, k_max)
    return FixedPolicy("psd" if settings.mode == "psd" else "sequential", k_max)
