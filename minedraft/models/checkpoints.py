"""Hugging Face checkpoint directories given by the user: checked before anything loads them."""

from __future__ import annotations

import os
from pathlib import Path

from minedraft.core.errors import MineDraftError


class ModelError(MineDraftError, RuntimeError):
    """A model that cannot be found or built; the message says what to do."""


def check_checkpoint(path: Path) -> None:
    """Raise ModelError unless `path` is a Hugging Face checkpoint directory with a config,
    weights (*.safetensors or *.bin) and a tokenizer."""
    if not path.is_dir():
        raise ModelError(f"model not found: {path} is neither a directory nor a bundled model")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face checkpoint: config.json is missing")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"{path} has no weights (*.safetensors or *.bin)")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelError(f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json)")


def load_tokenizer(path: str | os.PathLike):
    """The Hugging Face tokenizer of a checkpoint directory."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))
