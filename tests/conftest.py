"""Shared fixtures: the real bundled target, a tiny drafter cut from it, and one engine per mode
for the whole session (engine start-up is the expensive part of this suite).

tests/unit needs no vLLM engine (`pytest tests/unit`, about a minute); tests/integration starts
engines and servers and is marked `integration` (`pytest -m "not integration"` skips it)."""

from __future__ import annotations

import os

import pytest


os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


# Exactness tests run in float32: bf16 greedy outputs can change with batch composition.
EXACT = dict(dtype="float32", enforce_eager=True, kv_cache_gib=1, max_model_len=1024,
             max_num_seqs=32)
NUM_SHAREGPT_PROMPTS = 24
MAX_TOKENS = 32


@pytest.fixture(scope="session")
def target_dir():
    from minedraft import models
    return models.prepare(models.TARGET)


@pytest.fixture(scope="session")
def tokenizer(target_dir):
    from minedraft import models
    return models.load_tokenizer(target_dir)


@pytest.fixture(scope="session")
def tiny_drafter_dir(target_dir, tmp_path_factory):
    """The target without layers 10, 15 and 20: same tokenizer and head, agrees with the target's
    greedy token about half the time, so speculative runs exercise rejection as well as
    acceptance. (Small subsets such as layers 0 and 29 agree ~0%.)"""
    from minedraft import models
    layers = [i for i in range(30) if i not in (10, 15, 20)]
    return models.make_layer_subset(target_dir, tmp_path_factory.mktemp("drafter"), layers)


@pytest.fixture(scope="session")
def drafter_dir(target_dir, tiny_drafter_dir):
    """The bundled, distilled drafter (rebuilt by `models prepare` from minedraft/assets)."""
    from minedraft import models
    if not models.bundled_drafter_available():
        return tiny_drafter_dir
    return models.prepare(models.DRAFTER)


@pytest.fixture(scope="session")
def sharegpt_prompts(tokenizer):
    from minedraft.bench.workloads import sharegpt_requests
    return sharegpt_requests(tokenizer, NUM_SHAREGPT_PROMPTS, seed=1, max_prompt_len=384)


@pytest.fixture(scope="session")
def ar_engine(target_dir):
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine
    engine = Engine(EngineConfig(mode="ar", target=str(target_dir), **EXACT))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def sd_engine(target_dir, drafter_dir):
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine
    engine = Engine(EngineConfig(mode="sd", target=str(target_dir), draft=str(drafter_dir),
                                 num_speculative_tokens=3, **EXACT))
    yield engine
    engine.shutdown()
