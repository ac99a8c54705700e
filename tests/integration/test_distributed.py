"""PSD with a target split over two tensor-parallel workers (one per core, `0|1`), and a drafter
started by the operator (`python -m minedraft.drafter --bind ...`) that dies and comes back.

SmolLM2-135M has 9 attention heads, which vLLM refuses to split in two, so these tests use a
small random Llama with 4 heads and SmolLM2's tokenizer (its own head, so that greedy outputs
wander over the vocabulary) and a drafter cut from it. On two cores the drafter shares them with
the target, on purpose (`shared_cores`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from minedraft.core.trace import read_trace, trace_size
from minedraft.drafter.client import free_tcp_address
from minedraft.runtime.api import generate, load_workload

TP = dict(dtype="float32", enforce_eager=True, kv_cache_gib=1, max_model_len=512,
          max_num_seqs=16, tensor_parallel_size=2, target_cores="0|1")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, target_dir):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from minedraft import models
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    target = tmp_path_factory.mktemp("tiny_target")
    LlamaForCausalLM(config).save_pretrained(target)
    models.load_tokenizer(target_dir).save_pretrained(target)
    draft = models.make_layer_subset(target, tmp_path_factory.mktemp("tiny_draft"), [0, 1, 3])
    return target, draft


@pytest.fixture(scope="module")
def prompts(tiny_pair):
    from minedraft import models
    return load_workload("random", models.load_tokenizer(tiny_pair[0]), 6, input_len=12)


def _engine(mode, tiny_pair, **kw):
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine
    target, draft = tiny_pair
    if mode != "ar":
        kw = dict(draft=str(draft), num_speculative_tokens=3, shared_cores=True,
                  drafter_timeout_s=5.0, **kw)
    return Engine(EngineConfig(mode=mode, target=str(target), **TP, **kw))


@pytest.fixture(scope="module")
def reference(tiny_pair, prompts):
    with _engine("ar", tiny_pair) as engine:
        return [r["token_ids"] for r in generate(engine, prompts, max_tokens=24, progress=False)]


def test_sd_ext_with_a_tensor_parallel_target_equals_ar(tiny_pair, prompts, reference):
    with _engine("sd-ext", tiny_pair, draft_cores="1") as engine:
        rows = generate(engine, prompts, max_tokens=24, progress=False)
        assert [r["token_ids"] for r in rows] == reference
        assert engine.spec.summary()["num_drafts"] > 0


def _operator_drafter(draft, address):
    return subprocess.Popen([sys.executable, "-m", "minedraft.drafter", "--model", str(draft),
                             "--bind", address, "--cores", "1", "--dtype", "float32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_psd_with_an_operators_drafter_that_dies_and_comes_back(tiny_pair, prompts, reference):
    """psd, tensor-parallel target, drafter at `draft_address`: exact; when the drafter dies,
    serving goes on without drafts (the trace, hence /metrics, says the drafter is down and
    counts failed attempts); when the operator starts it again at the same address, speculation
    resumes."""
    address = free_tcp_address()
    drafter = _operator_drafter(tiny_pair[1], address)
    try:
        with _engine("psd", tiny_pair, draft_address=address, drafter_retry_max_s=1.0) as engine:
            trace = engine.config.trace_path
            rows = generate(engine, prompts, max_tokens=24, progress=False)
            assert [r["token_ids"] for r in rows] == reference
            assert engine.spec.summary()["num_accepted_tokens"] > 0

            drafter.send_signal(signal.SIGKILL)
            drafter.wait(10)
            offset = trace_size(trace)
            rows = generate(engine, prompts, max_tokens=24, progress=False)
            assert [r["token_ids"] for r in rows] == reference
            down = read_trace(trace, offset)
            assert not down[-1].drafter_up and down[-1].failures >= 1

            drafter = _operator_drafter(tiny_pair[1], address)
            deadline = time.monotonic() + 120
            while True:
                offset = trace_size(trace)
                rows = generate(engine, prompts, max_tokens=24, progress=False)
                assert [r["token_ids"] for r in rows] == reference
                back = read_trace(trace, offset)
                if back[-1].drafter_up and sum(r.accepted_tokens for r in back) > 0:
                    break
                assert time.monotonic() < deadline, "speculation did not resume"
                time.sleep(1)
            assert back[-1].failures == 0 and back[-1].restarts >= 1
    finally:
        drafter.kill()
        drafter.wait(10)
