"""Smaller models of the target's family: a subset of its decoder layers, same embeddings, head and
tokenizer. Drafters are built this way (then distilled, see minedraft.train.distill)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from minedraft.models.checkpoints import ModelError, load_tokenizer


def layer_indices(num_target_layers: int, n: int) -> list[int]:
    """`n` evenly spaced layer indices in 0..num_target_layers-1, first and last included
    (n = 1: the last layer; n >= num_target_layers: all of them)."""
    if n >= num_target_layers:
        return list(range(num_target_layers))
    if n == 1:
        return [num_target_layers - 1]
    return sorted({round(i * (num_target_layers - 1) / (n - 1)) for i in range(n)})


def load_layer_subset(src: Path, choose: Callable[[int], list[int]]):
    """`src` (a Hugging Face checkpoint) in float32 with only the decoder layers that
    `choose(num_layers)` returns, renumbered. Raises ModelError for indices out of range."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    n = model.config.num_hidden_layers
    keep = choose(n)
    if not keep or any(not 0 <= i < n for i in keep):
        raise ModelError(f"layers must be indices in 0..{n - 1}, got {keep}")
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx  # KV-cache slot of the layer in its new position
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model


def make_layer_subset(src: Path, dst: Path, layers: list[int]) -> Path:
    """Write the checkpoint of `src` cut to `layers` (indices into its decoder layers) to `dst`,
    with its tokenizer; returns `dst`. Used as a test drafter."""
    model = load_layer_subset(src, lambda n: layers)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, safe_serialization=True)
    load_tokenizer(src).save_pretrained(dst)
    return dst


def init_drafter(target_dir: Path, n_layers: int):
    """A drafter to distill: the target cut to `n_layers` evenly spaced layers (float32), its
    embeddings (tied to the head) frozen. Returns (model, kept target layer indices)."""
    kept: list[int] = []

    def choose(num_target_layers: int) -> list[int]:
        kept.extend(layer_indices(num_target_layers, n_layers))
        return kept

    model = load_layer_subset(target_dir, choose)
    model.get_input_embeddings().weight.requires_grad_(False)
    return model, kept
