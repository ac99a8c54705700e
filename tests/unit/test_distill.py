"""Distillation on a tiny target: a few steps lower the held-out loss; resume works; layer choice."""

import json

import pytest

from minedraft.models import layer_indices
from minedraft.train import distill as D


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
                         initializer_range=0.05)  # small: the next token follows the last one,
                         # so what is learned carries over to unseen prompts
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-target")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def write_corpus(cfg, split, n, seed, target_dir, model):
    """What build_corpus would cache after asking vLLM: the target's greedy answers and its
    top-20 distribution at each answer token."""
    import torch

    # Held-out prompts come from another seed than the training prompts: disjoint.
    g = torch.Generator().manual_seed(seed + (1000 if split == "heldout" else 0))
    examples = []
    for _ in range(n):
        prompt = torch.randint(10, 2000, (12,), generator=g)
        out = model.generate(prompt[None], max_new_tokens=cfg.answer_len, do_sample=False,
                             min_new_tokens=cfg.answer_len, pad_token_id=0)
        with torch.no_grad():
            logits = model(out).logits[0, 11:-1]
        top = logits.log_softmax(-1).topk(D.CORPUS_TOP_K)
        examples.append((prompt.tolist(), out[0, 12:].tolist(), top.indices.int(),
                         top.values.softmax(-1).half()))
    meta = {"split": split, "n": n, "seed": seed, "answer_len": cfg.answer_len,
            "max_prompt_len": cfg.max_prompt_len, "top_k": D.CORPUS_TOP_K,
            "target": str(target_dir.resolve())}
    path = D.Path(cfg.out) / f"corpus-{split}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "examples": examples}, path)


def test_layer_indices():
    assert layer_indices(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert layer_indices(30, 2) == [0, 29]
    assert layer_indices(30, 1) == [29]
    assert layer_indices(4, 9) == [0, 1, 2, 3]


@pytest.mark.parametrize("soft_top_k", [20, 0])
def test_few_steps_lower_the_loss_and_resume(tiny_target, tmp_path, soft_top_k):
    target_dir, model = tiny_target
    cfg = D.DistillConfig(target=str(target_dir), out=str(tmp_path / "d"), layers=2, tokens=6000,
                          train_prompts=48, heldout_prompts=8, answer_len=16,
                          batch_tokens=512, lr=3e-3, warmup_steps=2, threads=2,
                          soft_top_k=soft_top_k)
    write_corpus(cfg, "train", cfg.train_prompts, cfg.seed, target_dir, model)
    write_corpus(cfg, "heldout", cfg.heldout_prompts, cfg.seed, target_dir, model)
    report = D.distill(cfg, progress=False)
    first, last = report["history"][0], report["history"][-1]
    # On prompts it never saw, the drafter agrees with the target far more often after training.
    assert last["heldout_loss"] < first["heldout_loss"] - 0.2
    assert last["heldout_agreement"] > first["heldout_agreement"] + 0.2
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
    with pytest.raises(ValueError, match="--soft-top-k"):
        D.DistillConfig(soft_top_k=21).validate()


def test_soft_batch_matches_the_target_distribution():
    """The soft targets of a batch are the target's top-k, renormalised, row for row with the
    greedy labels; with all mass on the label the soft loss equals the hard one."""
    import torch

    ex1 = ([5, 6, 7], [8, 9], torch.tensor([[8, 1], [9, 2]], dtype=torch.int32),
           torch.tensor([[0.6, 0.2], [0.5, 0.5]]).half())
    ex2 = ([4], [3], torch.tensor([[3, 1]], dtype=torch.int32), torch.tensor([[1.0, 0.0]]).half())
    ids, attn, rows, cols, labels, soft = D.make_batch([ex1, ex2], soft_top_k=2)
    assert labels.tolist() == [8, 9, 3] and rows.tolist() == [0, 0, 1] and cols.tolist() == [2, 3, 0]
    assert soft[0].tolist() == [[8, 1], [9, 2], [3, 1]]
    assert torch.allclose(soft[1], torch.tensor([[0.75, 0.25], [0.5, 0.5], [1.0, 0.0]]), atol=1e-3)
    assert D.make_batch([ex1], soft_top_k=0)[5] is None
