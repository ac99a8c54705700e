"""The runner-side proposer (speculative method `custom_class`): it proposes nothing.

With it, vLLM's model runner allocates speculative decoding (draft slots, the rejection
sampler) but drafts come from the PSD scheduler, which sets `request.spec_token_ids` itself."""

from __future__ import annotations


class ExternalDraftProposer:
    """vLLM's `custom_class` proposer that proposes nothing (drafts come from the drafter process
    through the scheduler)."""
    def __init__(self, vllm_config):
        self.vllm_config = vllm_config

    def load_model(self, *args, **kwargs) -> None:
        """No model to load."""
        pass

    def propose(self, sampled_token_ids, *args, **kwargs) -> list[list[int]]:
        """One empty draft list per row of the batch."""
        return [[] for _ in sampled_token_ids]
