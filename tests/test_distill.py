"""Distillation on a tiny target: a few steps lower the held-out loss; resume works; layer choice."""

import json

import pytest

from minedraft import distill as D


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory, tokenizer):
    """A 4-layer random Llama with the bundled tokenizer (the real target is too slow to train on
    in a unit test)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         initializer_range=0.3)  # peaked, varied predictions
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-target")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def write_corpus(cfg, split, n, seed, target_dir, model):
    """What build_corpus would cache after asking vLLM: the target's greedy answers."""
    import torch

    # The "held-out" pairs are the first training pairs: a random tiny target does not
    # generalise, so this checks that the optimisation fits what it is shown.
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        prompt = torch.randint(10, 2000, (12,), generator=g)
        out = model.generate(prompt[None], max_new_tokens=cfg.answer_len, do_sample=False,
                             min_new_tokens=cfg.answer_len, pad_token_id=0)
        pairs.append((prompt.tolist(), out[0, 12:].tolist()))
    meta = {"split": split, "n": n, "seed": seed, "answer_len": cfg.answer_len,
            "max_prompt_len": cfg.max_prompt_len, "target": str(target_dir.resolve())}
    path = D.Path(cfg.out) / f"corpus-{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(x) for x in [meta, *pairs]) + "\n")


def test_layer_indices():
    assert D.layer_indices(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert D.layer_indices(30, 2) == [0, 29]
    assert D.layer_indices(30, 1) == [29]
    assert D.layer_indices(4, 9) == [0, 1, 2, 3]


def test_few_steps_lower_the_loss_and_resume(tiny_target, tmp_path):
    target_dir, model = tiny_target
    cfg = D.DistillConfig(target=str(target_dir), out=str(tmp_path / "d"), layers=2, tokens=6000,
                          train_prompts=48, heldout_prompts=8, answer_len=16,
                          batch_tokens=512, lr=3e-3, warmup_steps=2, threads=2)
    write_corpus(cfg, "train", cfg.train_prompts, cfg.seed, target_dir, model)
    write_corpus(cfg, "heldout", cfg.heldout_prompts, cfg.seed, target_dir, model)
    report = D.distill(cfg, progress=False)
    first, last = report["history"][0], report["history"][-1]
    assert last["heldout_loss"] < first["heldout_loss"] - 0.5
    assert report["tokens_seen"] >= 6000
    saved = json.loads((tmp_path / "d" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2

    # Resume: a second run with a larger budget continues from the saved step.
    cfg.tokens = 7500
    again = D.distill(cfg, progress=False)
    assert again["steps"] > report["steps"]
    assert again["history"][0] == first  # history carried over, not restarted


def test_bad_config():
    with pytest.raises(ValueError, match="--layers"):
        D.DistillConfig(layers=0).validate()
    with pytest.raises(ValueError, match="--time-budget"):
        D.DistillConfig(time_budget_min=0).validate()
