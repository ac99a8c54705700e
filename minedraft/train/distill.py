"""`minedraft distill`: train a small drafter that imitates a target model.

Recipe (measured on 2 CPU cores, see README): the drafter is the target's architecture with a few
of its layers (evenly spaced, first and last included), the target's embeddings frozen and tied
to the head. It learns the target's own greedy answers to ShareGPT prompts, generated with vLLM
(far faster than eager PyTorch), together with the target's top-k log-probabilities at every
answer token, which vLLM returns at almost no cost: the loss is the cross-entropy against the
target's distribution renormalised over its top k (forward KL up to a constant; `soft_top_k = 0`
trains on the greedy token alone). Only answer positions go through the 49152-wide head, which is
most of the cost. Held-out agreement (drafter argmax == target's greedy token, teacher-forced on
held-out answers) is greedy acceptance at k = 1.

Everything lives in the output directory: the generated corpus, a training state written
atomically every few minutes (an interrupted run resumes from it), the final Hugging Face
checkpoint and report.json (the command line adds learning_curve.png).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minedraft import models
from minedraft.core.errors import ConfigError
from minedraft.models import init_drafter

logger = logging.getLogger(__name__)

STATE = "train-state.pt"
CORPUS_TOP_K = 20  # the target's top-k distribution stored per answer token (vLLM's maximum)
REPORT = "report.json"


@dataclass
class DistillConfig:
    """A distillation run: target, output folder, drafter layers, token and time budgets, corpus
    size and lengths, batch size, soft top-k, learning rate, evaluation period, seed."""
    target: str = models.TARGET
    out: str = "drafter"
    layers: int = 8
    tokens: int = 600_000  # answer tokens to train on (stop earlier on --time-budget)
    time_budget_min: float | None = None
    train_prompts: int = 4000  # ShareGPT train-split prompts answered by the target
    heldout_prompts: int = 64
    answer_len: int = 128
    max_prompt_len: int = 384
    batch_tokens: int = 1024  # padded tokens per optimizer step (small: more steps pay)
    soft_top_k: int = 20  # learn the target's top-k distribution (0: its greedy token only)
    corpus_dir: str | None = None  # where the generated corpus is cached (default: out)
    lr: float = 1e-3
    warmup_steps: int = 20
    eval_every_min: float = 5.0
    seed: int = 0
    threads: int = 0  # 0: all cores

    def validate(self) -> "DistillConfig":
        """Check every value (raises ConfigError); returns self."""
        for name in ("layers", "tokens", "train_prompts", "heldout_prompts", "answer_len",
                     "max_prompt_len", "batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 <= self.soft_top_k <= 20:
            raise ConfigError("--soft-top-k must be between 0 and 20 (vLLM returns at most 20)")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise ConfigError("--time-budget must be > 0 minutes")
        if not self.eval_every_min > 0:
            raise ConfigError("--eval-every must be > 0 minutes")
        if not self.lr > 0:
            raise ConfigError("--lr must be > 0")
        return self


# --------------------------------------------------------------------------- corpus

def build_corpus(cfg: DistillConfig, split: str, n: int, seed: int) -> list[tuple]:
    """(prompt ids, answer ids, top-k ids, top-k probabilities) for `n` ShareGPT prompts: the
    target's greedy answers and its distribution at each answer token, cached on disk."""
    import torch

    path = Path(cfg.corpus_dir or cfg.out) / f"corpus-{split}.pt"
    meta = {"split": split, "n": n, "seed": seed, "answer_len": cfg.answer_len,
            "max_prompt_len": cfg.max_prompt_len, "top_k": CORPUS_TOP_K,
            "target": str(models.resolve(cfg.target))}
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved["meta"] == meta:
            return saved["examples"]
        logger.warning("%s was made with other settings; generating it again", path)
    from minedraft.bench.workloads import sharegpt_requests
    from minedraft.runtime.api import generate
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine

    logger.warning("generating %d %s answers with vLLM (cached in %s)", n, split, path)
    with Engine(EngineConfig(mode="ar", target=cfg.target, dtype="bfloat16",
                             max_model_len=cfg.max_prompt_len + cfg.answer_len + 8)) as engine:
        requests = sharegpt_requests(engine.tokenizer, n, seed=seed, split=split,
                                     max_prompt_len=cfg.max_prompt_len)
        rows = generate(engine, requests, max_tokens=cfg.answer_len, logprobs=CORPUS_TOP_K)
    examples = [(r["prompt_token_ids"], r["token_ids"], torch.from_numpy(r["top_ids"]),
                 torch.from_numpy(r["top_logprobs"]).softmax(-1).half())
                for r in rows if r["token_ids"] and len(r["top_ids"]) == len(r["token_ids"])]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"meta": meta, "examples": examples}, tmp)
    os.replace(tmp, path)
    return examples


# --------------------------------------------------------------------------- model

def answer_loss(model, batch, *, return_agreement: bool = False):
    """Mean cross-entropy of the drafter on answer positions only (and argmax agreement).

    With soft targets the cross-entropy is against the target's top-k distribution; agreement
    is always with the target's greedy token."""
    import torch.nn.functional as F

    input_ids, attn, pos_rows, pos_cols, labels, soft = batch
    hidden = model.model(input_ids=input_ids, attention_mask=attn).last_hidden_state
    logits = model.lm_head(hidden[pos_rows, pos_cols]).float()
    if soft is None:
        loss = F.cross_entropy(logits, labels)
    else:
        top_ids, top_probs = soft
        logq = logits.log_softmax(-1).gather(1, top_ids)
        loss = -(top_probs * logq).sum(-1).mean()
    if not return_agreement:
        return loss
    return loss, (logits.argmax(-1) == labels).sum().item(), labels.numel()


def make_batch(examples: list[tuple], soft_top_k: int = 0):
    """Right-padded batch; targets are answer tokens, predicted from the position before each.

    With `soft_top_k`, also the target's top-k ids and probabilities (renormalised over the k)."""
    import torch

    seqs = [ex[0] + ex[1] for ex in examples]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn = torch.zeros(len(seqs), width, dtype=torch.long)
    rows, cols, labels = [], [], []
    for r, (ex, s) in enumerate(zip(examples, seqs)):
        p, a = ex[0], ex[1]
        ids[r, :len(s)] = torch.tensor(s)
        attn[r, :len(s)] = 1
        rows.extend([r] * len(a))
        cols.extend(range(len(p) - 1, len(p) - 1 + len(a)))
        labels.extend(a)
    soft = None
    if soft_top_k:
        top_ids = torch.cat([ex[2][:, :soft_top_k] for ex in examples]).long()
        top_probs = torch.cat([ex[3][:, :soft_top_k].float() for ex in examples])
        soft = (top_ids, top_probs / top_probs.sum(-1, keepdim=True))
    return ids, attn, torch.tensor(rows), torch.tensor(cols), torch.tensor(labels), soft


def batches(pairs: list, batch_tokens: int, rng: random.Random):
    """Shuffled batches of about `batch_tokens` padded tokens, length-bucketed to waste little."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    chunks, cur, width = [], [], 0
    for i in order:
        w = len(pairs[i][0]) + len(pairs[i][1])
        if cur and max(width, w) * (len(cur) + 1) > batch_tokens:
            chunks.append(cur)
            cur, width = [], 0
        cur.append(i)
        width = max(width, w)
    if cur:
        chunks.append(cur)
    rng.shuffle(chunks)
    return [[pairs[i] for i in c] for c in chunks]


def evaluate(model, pairs: list, batch_tokens: int, soft_top_k: int = 0) -> dict:
    """Held-out loss (cross-entropy, nats per answer token) and greedy agreement (share of answer
    positions where the drafter's argmax is the target's token) over `pairs`."""
    import torch

    model.eval()
    loss_sum = agree = total = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for chunk in batches(pairs, batch_tokens, random.Random(0)):
            loss, a, n = answer_loss(model, make_batch(chunk, soft_top_k),
                                     return_agreement=True)
            loss_sum += loss.item() * n
            agree += a
            total += n
    model.train()
    return {"heldout_loss": loss_sum / total, "heldout_agreement": agree / total}


# --------------------------------------------------------------------------- training

@dataclass
class TrainState:
    """Where training stands (step, epoch, tokens, minutes, evaluation history); saved with the
    weights to resume."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    history: list = field(default_factory=list)


def distill(cfg: DistillConfig, progress: bool = True) -> dict:
    """Build (or reuse) the corpus, train the drafter until the token or time budget ends,
    evaluate, write the checkpoint and report.json; returns the report. Raises ConfigError for a
    bad configuration."""
    import torch
    from tqdm import tqdm

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    target_dir = models.resolve(cfg.target)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    t_data = time.perf_counter()
    train = build_corpus(cfg, "train", cfg.train_prompts, cfg.seed)
    heldout = build_corpus(cfg, "heldout", cfg.heldout_prompts, cfg.seed)
    data_seconds = time.perf_counter() - t_data

    model, kept = init_drafter(target_dir, cfg.layers)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    state = TrainState()
    if (out / STATE).is_file():  # resume
        saved = torch.load(out / STATE, weights_only=False)
        model.load_state_dict(saved["model"], strict=False)
        optim.load_state_dict(saved["optim"])
        state = TrainState(**saved["state"])
        logger.warning("resuming from step %d (%d tokens)", state.step, state.tokens_seen)
    else:
        state.history.append({"step": 0, "tokens": 0,
                              **evaluate(model, heldout, cfg.batch_tokens, cfg.soft_top_k)})

    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else math.inf
    # With a time budget the token count is only a cap: show tokens and rate, not a made-up ETA.
    bar = tqdm(total=None if cfg.time_budget_min else cfg.tokens, initial=state.tokens_seen,
               unit="tok", desc="distill", disable=not progress, dynamic_ncols=True)
    last_eval = time.perf_counter()
    session_start = time.perf_counter() - state.train_seconds
    model.train()
    while state.tokens_seen < cfg.tokens and time.perf_counter() - session_start < budget_s:
        epoch_batches = batches(train, cfg.batch_tokens, random.Random(cfg.seed + state.epoch))
        if state.batch_in_epoch >= len(epoch_batches):
            state.epoch += 1
            state.batch_in_epoch = 0
            continue
        batch = make_batch(epoch_batches[state.batch_in_epoch], cfg.soft_top_k)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = answer_loss(model, batch)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        # The cosine runs over whichever budget ends first, tokens or time.
        progress = max(state.tokens_seen / cfg.tokens, state.train_seconds / budget_s)
        for group in optim.param_groups:
            group["lr"] = cfg.lr * _lr_factor(state.step, cfg.warmup_steps, progress)
        optim.step()
        n = batch[4].numel()
        state.step += 1
        state.batch_in_epoch += 1
        state.tokens_seen += n
        state.train_seconds = time.perf_counter() - session_start
        bar.update(n)
        bar.set_postfix(loss=f"{loss.item():.3f}", epoch=state.epoch)
        if time.perf_counter() - last_eval > cfg.eval_every_min * 60:
            state.history.append({"step": state.step, "tokens": state.tokens_seen,
                                  "minutes": state.train_seconds / 60, "train_loss": loss.item(),
                                  **evaluate(model, heldout, cfg.batch_tokens, cfg.soft_top_k)})
            bar.write(json.dumps(state.history[-1]))
            _save_state(out, model, optim, state)
            last_eval = time.perf_counter()
    bar.close()
    _save_state(out, model, optim, state)

    final = evaluate(model, heldout, cfg.batch_tokens, cfg.soft_top_k)
    state.history.append({"step": state.step, "tokens": state.tokens_seen,
                          "minutes": state.train_seconds / 60, **final})
    model.get_input_embeddings().weight.requires_grad_(True)
    model.save_pretrained(out, safe_serialization=True)
    models.load_tokenizer(target_dir).save_pretrained(out)
    report = {
        "config": asdict(cfg), "target_layers_kept": kept,
        "train_answers": len(train), "heldout_answers": len(heldout),
        "corpus_seconds": data_seconds, "train_seconds": state.train_seconds,
        "steps": state.step, "tokens_seen": state.tokens_seen, "epochs": state.epoch,
        **final, "history": state.history,
    }
    (out / REPORT).write_text(json.dumps(report, indent=1))
    return report


def learning_curve(report: dict) -> list[list[float]]:
    """[training minutes, held-out agreement] points of a report's history."""
    return [[h.get("minutes", 0.0), h["heldout_agreement"]] for h in report["history"]]


def _lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to 0.1 as `progress` goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_state(out: Path, model, optim, state: TrainState) -> None:
    import torch

    trainable = {k: v for k, v in model.state_dict().items() if "embed_tokens" not in k
                 and "lm_head" not in k}
    tmp = out / (STATE + ".tmp")
    torch.save({"model": trainable, "optim": optim.state_dict(),
                "state": asdict(state)}, tmp)
    os.replace(tmp, out / STATE)
