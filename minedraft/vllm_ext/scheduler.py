"""`scheduler_cls` for vLLM: its V1 Scheduler with the PSD step logic of minedraft.vllm_ext.step.

    scheduler_cls = "minedraft.vllm_ext.scheduler.PSDScheduler"
"""

from __future__ import annotations

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.outputs import DraftTokenIds

from minedraft.vllm_ext.step import PSDSchedulerMixin


class PSDScheduler(PSDSchedulerMixin, Scheduler):
    """vLLM's V1 Scheduler with PSD: two sub-batches, a drafter process, exact verification."""

    @staticmethod
    def _draft_token_ids(req_ids: list[str], draft_token_ids: list[list[int]]) -> DraftTokenIds:
        return DraftTokenIds(req_ids, draft_token_ids)
