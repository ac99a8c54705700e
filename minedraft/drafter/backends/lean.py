"""A lean runner for Llama-family draft models: plain PyTorch in the drafter's own process.

Why: a draft round is k forward passes of a small model. Run through a vLLM engine on a CPU, each
engine step also pays the engine's own per-step work and an inter-process hop, and every round
re-prefills up to 31 already-seen tokens (prefix-cache blocks are 32 tokens). Here a round costs
its forward passes and little else (the approach of gpt-fast: a static KV cache, no scheduler):

- each request keeps a KV cache slot across rounds (`[slots, kv_heads, max_len, head_dim]` per
  layer) and the tokens it holds; a round prefills only the tokens after the longest common
  prefix of that and the request's new sequence, so the KV of rejected drafts is simply
  overwritten;
- the linear layers and the head run once per forward for every token of the round (packed);
  attention runs per request over its own cache slot (a few small ops per request and layer);
- greedy drafts: the argmax of the head.

Numerics follow Hugging Face's Llama (RMSNorm, rotary embeddings with `rotate_half`, grouped
query attention); drafts only need to be good guesses, the target verifies every token.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from minedraft.models.checkpoints import ModelError, load_tokenizer

SUPPORTED = ("llama",)
BATCHED_MAX_NEW = 16  # requests with at most this many new tokens share one padded attention


class Linear:
    """y = x W^T for a weight W [out, in]: in `dtype`, or with `int8` as per-channel int8
    weights with dynamically quantized activations (PyTorch's fbgemm kernels; about 4x faster
    than bf16 at a few tokens, for slightly different drafts)."""

    def __init__(self, weight, int8: bool = False):
        import torch
        self.weight = None
        if not int8:
            self.weight = weight
            return
        import warnings
        w = weight.float()
        scales = w.abs().amax(1).clamp_min(1e-8) / 127
        with warnings.catch_warnings():  # quantized tensors are deprecated, not yet removed
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scales, torch.zeros_like(scales, dtype=torch.long),
                                           0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, None)

    def __call__(self, x):
        import torch
        if self.weight is not None:
            return torch.nn.functional.linear(x, self.weight)
        return torch.ops.quantized.linear_dynamic(x, self.packed)


class LlamaWeights:
    """The tensors of a Llama checkpoint, fused where that saves kernel launches:
    qkv [(H + 2 KVH) * D, hidden] and gate_up [2 * inter, hidden] per layer; the linear layers
    and the head as `Linear` (int8 when asked)."""

    def __init__(self, path: Path, dtype, int8: bool = False):
        import torch
        from safetensors.torch import load_file

        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("model_type") not in SUPPORTED or cfg.get("attention_bias") or \
                cfg.get("mlp_bias"):
            raise ModelError(f"the lean drafter runs Llama models without biases; {path} is "
                             f"{cfg.get('model_type')!r}: use --backend vllm")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ModelError(f"the lean drafter has no {rope.get('rope_type')!r} rotary scaling; "
                             "use --backend vllm")
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads", self.heads)
        self.head_dim = cfg.get("head_dim") or self.hidden // self.heads
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        self.num_layers = cfg["num_hidden_layers"]
        w: dict = {}
        for f in sorted(path.glob("*.safetensors")):
            w.update(load_file(f))
        if not w:
            raise ModelError(f"{path}: the lean drafter needs *.safetensors weights")

        def get(name):
            return w[name].to(dtype).contiguous()

        self.embed = get("model.embed_tokens.weight")  # [vocab, hidden]
        head = get("lm_head.weight") if "lm_head.weight" in w and \
            not cfg.get("tie_word_embeddings", True) else self.embed
        self.head = Linear(head, int8)
        self.norm = get("model.norm.weight")
        self.layers = []
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            self.layers.append({
                "ln1": get(p + "input_layernorm.weight"),
                "ln2": get(p + "post_attention_layernorm.weight"),
                "qkv": Linear(torch.cat([get(p + f"self_attn.{n}_proj.weight")
                                         for n in "qkv"]), int8),
                "o": Linear(get(p + "self_attn.o_proj.weight"), int8),
                "gate_up": Linear(torch.cat([get(p + "mlp.gate_proj.weight"),
                                             get(p + "mlp.up_proj.weight")]), int8),
                "down": Linear(get(p + "mlp.down_proj.weight"), int8),
            })


class LeanBackend:
    """Draft rounds for many requests, one KV cache slot each (see the module docstring)."""

    name = "lean"

    def __init__(self, model: str, *, dtype: str = "bfloat16", max_model_len: int = 2048,
                 num_threads: int = 1, max_num_seqs: int = 256, quantization: str | None = None):
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.torch = torch
        int8 = quantization == "int8"
        # int8 kernels take float32 activations
        self.dtype = torch.float32 if int8 else \
            {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        self.w = LlamaWeights(Path(model), self.dtype, int8)
        self.tokenizer = load_tokenizer(model)
        self.max_model_len = max_model_len
        self.max_slots = max_num_seqs
        w = self.w
        inv = 1.0 / (w.theta ** (torch.arange(0, w.head_dim, 2, dtype=torch.float32) / w.head_dim))
        freqs = torch.outer(torch.arange(max_model_len, dtype=torch.float32), inv)
        emb = torch.cat([freqs, freqs], dim=-1)  # [max_len, head_dim]
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        self.slots: dict[str, int] = {}  # request id -> cache slot
        self.cached: dict[str, list[int]] = {}  # request id -> tokens whose KV is in its slot
        self.free_slots: list[int] = []
        self.k_cache: list = []
        self.v_cache: list = []
        self._grow(8)

    # ----------------------------------------------------------------- cache slots
    def _grow(self, n_slots: int) -> None:
        torch, w = self.torch, self.w
        old = len(self.k_cache[0]) if self.k_cache else 0
        shape = (n_slots - old, w.kv_heads, self.max_model_len, w.head_dim)
        for cache in (self.k_cache, self.v_cache):
            for i in range(w.num_layers):
                extra = torch.zeros(shape, dtype=self.dtype)
                if len(cache) < w.num_layers:
                    cache.append(extra)
                else:
                    cache[i] = torch.cat([cache[i], extra])
        self.free_slots.extend(range(old, n_slots))

    def _slot(self, rid: str) -> int:
        if rid not in self.slots:
            if not self.free_slots:
                if len(self.slots) >= self.max_slots:
                    raise RuntimeError(f"more than {self.max_slots} requests hold a KV cache; "
                                       "free some or raise --max-num-seqs")
                self._grow(min(self.max_slots, 2 * len(self.k_cache[0])))
            self.slots[rid] = self.free_slots.pop()
            self.cached[rid] = []
        return self.slots[rid]

    def free(self, rids) -> None:
        for rid in rids:
            if rid in self.slots:
                self.free_slots.append(self.slots.pop(rid))
                self.cached.pop(rid, None)

    # ----------------------------------------------------------------- a round
    def draft(self, seqs: dict[str, list[int]], k: int, ingest: set[str] = frozenset()):
        """k greedy tokens for each sequence: one forward over every request's unseen tokens,
        then k - 1 single-token forwards. Requests in `ingest` are only taken in (their KV
        computed in the first forward). Returns (drafts, forwards, forward_ms)."""
        torch = self.torch
        rids = list(seqs)
        starts, new_tokens = [], []
        for rid in rids:
            self._slot(rid)
            seq, held = seqs[rid], self.cached[rid]
            n = 0
            limit = min(len(held), len(seq) - 1)  # always recompute the last token
            while n < limit and held[n] == seq[n]:
                n += 1
            starts.append(n)
            new_tokens.append(seq[n:])
        drafts = {rid: [] for rid in rids if rid not in ingest}
        t_forward, forwards = 0.0, 0
        with torch.inference_mode():
            lengths = [len(t) for t in new_tokens]
            tokens = [t for ts in new_tokens for t in ts]
            positions = [s + i for s, n in zip(starts, lengths) for i in range(n)]
            slots = [self.slots[r] for r in rids]
            for step in range(k):
                t0 = time.perf_counter()
                nxt = self._forward(tokens, positions, slots, starts, lengths)
                t_forward += time.perf_counter() - t0
                forwards += 1
                for rid, seq, start, n in zip(rids, (seqs[r] for r in rids), starts, lengths):
                    self.cached[rid] = list(seq[:start + n]) if step == 0 else \
                        self.cached[rid] + drafts[rid][-1:]
                if step == 0:  # ingested requests stop here
                    keep = [i for i, rid in enumerate(rids) if rid in drafts]
                    rids, nxt = [rids[i] for i in keep], [nxt[i] for i in keep]
                    starts = [starts[i] + lengths[i] for i in keep]
                    slots = [slots[i] for i in keep]
                else:
                    starts = [s + 1 for s in starts]
                for rid, t in zip(rids, nxt):
                    drafts[rid].append(t)
                if not rids:
                    break
                tokens, positions, lengths = nxt, starts, [1] * len(rids)
        return drafts, forwards, 1000 * t_forward

    def _forward(self, tokens, positions, slots, starts, lengths) -> list[int]:
        """One forward pass over packed tokens ([T] ids, T = sum(lengths)), request i's
        `lengths[i]` tokens at cache positions starts[i]..; returns each request's argmax next
        token. Writes the tokens' K and V into the requests' cache slots."""
        torch, w = self.torch, self.w
        F = torch.nn.functional
        ids = torch.tensor(tokens)
        pos = torch.tensor(positions)
        slot_of_token = torch.tensor([s for s, n in zip(slots, lengths) for _ in range(n)])
        x = F.embedding(ids, w.embed)  # [T, hidden]
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # [T, 1, D]
        H, KVH, D = w.heads, w.kv_heads, w.head_dim
        attend = self._attention_plan(slots, starts, lengths)
        for li, layer in enumerate(w.layers):
            h = F.rms_norm(x, (w.hidden,), layer["ln1"], w.eps)
            qkv = layer["qkv"](h)  # [T, (H + 2 KVH) D]
            q = qkv[:, : H * D].view(-1, H, D)
            k = qkv[:, H * D: (H + KVH) * D].view(-1, KVH, D)
            v = qkv[:, (H + KVH) * D:].view(-1, KVH, D)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc[slot_of_token, :, pos] = k  # every token's K and V into its request's slot
            vc[slot_of_token, :, pos] = v
            x = x + layer["o"](attend(q, kc, vc))
            h = F.rms_norm(x, (w.hidden,), layer["ln2"], w.eps)
            gate, up = layer["gate_up"](h).chunk(2, dim=-1)
            x = x + layer["down"](F.silu(gate) * up)
        last = torch.tensor(list(itertools.accumulate(lengths))) - 1
        h = F.rms_norm(x[last], (w.hidden,), w.norm, w.eps)
        return w.head(h).float().argmax(-1).tolist()

    def _attention_plan(self, slots, starts, lengths):
        """attend(q [T, H, D], k_cache, v_cache) -> [T, H * D] for this forward's layout.

        Requests whose new tokens are few share one padded batch (queries [b, H, n, D] against
        their slots' keys [b, KVH, L, D] under one mask); a long prefill runs on its own."""
        torch, w = self.torch, self.w
        F = torch.nn.functional
        H, D = w.heads, w.head_dim
        ends = [s + n for s, n in zip(starts, lengths)]
        offsets = list(itertools.accumulate([0] + lengths[:-1]))
        batched = [i for i, n in enumerate(lengths) if n <= BATCHED_MAX_NEW]
        alone = [i for i, n in enumerate(lengths) if n > BATCHED_MAX_NEW]
        if batched:
            n_max = max(lengths[i] for i in batched)
            length = max(ends[i] for i in batched)
            slot_idx = torch.tensor([slots[i] for i in batched])
            # query j of request i sits at cache position starts[i] + j and sees keys <= it
            qpos = torch.tensor([starts[i] for i in batched]).unsqueeze(1) + torch.arange(n_max)
            mask = (torch.arange(length) <= qpos.unsqueeze(-1)).unsqueeze(1)  # [b, 1, n, L]
            rows = torch.tensor([offsets[i] + j for i in batched for j in range(lengths[i])])
            dest = torch.tensor([bi * n_max + j for bi, i in enumerate(batched)
                                 for j in range(lengths[i])])
        T = sum(lengths)

        def attend(q, kc, vc):
            out = q.new_empty(T, H * D)
            if batched:
                qb = q.new_zeros(len(batched) * n_max, H, D)
                qb[dest] = q[rows]
                o = _gqa_attention(qb.view(len(batched), n_max, H, D),
                                   kc[slot_idx, :, :length], vc[slot_idx, :, :length], mask)
                out[rows] = o.reshape(-1, H * D)[dest]
            for i in alone:
                a, n, end = offsets[i], lengths[i], ends[i]
                m = torch.ones(1, 1, n, end, dtype=torch.bool).tril(starts[i])
                o = _gqa_attention(q[a:a + n].unsqueeze(0), kc[slots[i]:slots[i] + 1, :, :end],
                                   vc[slots[i]:slots[i] + 1, :, :end], m)
                out[a:a + n] = o.reshape(n, H * D)
            return out

        return attend

    def shutdown(self) -> None:
        self.k_cache.clear()
        self.v_cache.clear()


def _gqa_attention(q, k, v, mask):
    """Grouped-query attention, written out: on CPUs it beats the fused kernel for these sizes.

    q [b, n, H, D], k and v [b, KVH, L, D], mask [b or 1, 1, n, L] (True = attend) ->
    [b, n, H, D]. Query head h uses key/value head h // (H / KVH), as in Hugging Face's Llama."""
    import torch
    b, n, H, D = q.shape
    kvh, L = k.shape[1], k.shape[2]
    g = H // kvh
    qg = q.view(b, n, kvh, g, D).permute(0, 2, 3, 1, 4).reshape(b, kvh, g * n, D)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * D ** -0.5  # [b, KVH, g n, L]
    m = mask.unsqueeze(2).expand(mask.shape[0], 1, g, n, L).reshape(mask.shape[0], 1, g * n, L)
    probs = scores.masked_fill(~m, float("-inf")).softmax(-1).to(v.dtype)
    o = torch.matmul(probs, v)  # [b, KVH, g n, D]
    return o.view(b, kvh, g, n, D).permute(0, 3, 1, 2, 4).reshape(b, n, H, D)


def _rotate_half(x):
    import torch
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)
