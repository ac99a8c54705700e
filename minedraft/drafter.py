"""The drafter: a process of its own, on its own cores (or GPU), serving drafts over ZeroMQ.

It hosts a vLLM engine for the draft model and keeps, per request id, the verified token history
the scheduler has sent it. A draft round takes {request id: newly verified tokens} and returns
{request id: k greedy draft tokens}. Each round submits the full history as a prompt; vLLM's prefix
cache (small blocks) makes that cost a short prefill of the unseen tail, not the whole sequence.

Only token ids cross the channel (msgpack over a ZeroMQ REQ/REP socket), so the drafter may sit on
another host: `python -m minedraft.drafter --model DIR --bind tcp://0.0.0.0:5599 --cores 1`.

Protocol (one request, one reply):
    {"op": "hello"}                                   -> {"ok": true, "vocab": [...], ...}
    {"op": "draft", "k": k, "reqs": {rid: [new ids]},
     "free": [rid, ...]}                              -> {"ok": true, "drafts": {rid: [ids]},
                                                          "draft_ms": float}
    {"op": "stop"}                                    -> {"ok": true}
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time

logger = logging.getLogger("minedraft.drafter")

DRAFTER_BLOCK_SIZE = 32  # smallest CPU block size: re-prefill at most 31 old tokens per round


def vocab_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary, compared at start-up to refuse mismatched pairs."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


class DraftServer:
    def __init__(self, model: str, cores: str, dtype: str = "bfloat16",
                 max_model_len: int = 2048, kv_cache_gib: int = 1, enforce_eager: bool = False):
        from minedraft.config import EngineConfig
        from minedraft.engine import Engine

        self.engine = Engine(EngineConfig(
            mode="ar", target=model, dtype=dtype, target_cores=cores,
            max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
            enforce_eager=enforce_eager), extra_args={"block_size": DRAFTER_BLOCK_SIZE,
                                                      "enable_prefix_caching": True})
        self.max_model_len = max_model_len
        self.history: dict[str, list[int]] = {}
        self.round = 0

    def hello(self) -> dict:
        return {"ok": True, "vocab": vocab_fingerprint(self.engine.tokenizer),
                "max_model_len": self.max_model_len, "pid": os.getpid()}

    def draft(self, k: int, reqs: dict[str, list[int]], free: list[str]) -> dict:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        t0 = time.perf_counter()
        for rid in free:
            self.history.pop(rid, None)
        self.round += 1
        llm = self.engine.llm_engine
        pending: dict[str, str] = {}
        drafts: dict[str, list[int]] = {}
        for rid, new_ids in reqs.items():
            hist = self.history.setdefault(rid, [])
            hist.extend(new_ids)
            if not hist or len(hist) + k > self.max_model_len:
                drafts[rid] = []  # nothing to draft from, or no room left: verify without drafts
                continue
            internal = f"{rid}@{self.round}"
            params = SamplingParams(max_tokens=k, temperature=0.0, ignore_eos=True,
                                    detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
            llm.add_request(internal, {"prompt_token_ids": list(hist)}, params)
            pending[internal] = rid
        while pending:
            for out in llm.step():
                if out.finished and out.request_id in pending:
                    drafts[pending.pop(out.request_id)] = list(out.outputs[0].token_ids)
        return {"ok": True, "drafts": drafts, "draft_ms": 1000 * (time.perf_counter() - t0)}

    def serve(self, bind: str) -> None:
        import msgspec
        import zmq

        sock = zmq.Context.instance().socket(zmq.REP)
        sock.bind(bind)
        logger.warning("drafter ready on %s (pid %d)", bind, os.getpid())
        while True:
            msg = msgspec.msgpack.decode(sock.recv())
            op = msg.get("op")
            try:
                if op == "draft":
                    reply = self.draft(int(msg["k"]), msg.get("reqs", {}), msg.get("free", []))
                elif op == "hello":
                    reply = self.hello()
                elif op == "stop":
                    sock.send(msgspec.msgpack.encode({"ok": True}))
                    break
                else:
                    reply = {"ok": False, "error": f"unknown op {op!r}"}
            except Exception as exc:  # report, keep serving: the scheduler decides what to do
                logger.exception("draft round failed")
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sock.send(msgspec.msgpack.encode(reply))
        self.engine.shutdown()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m minedraft.drafter",
                                description="Serve drafts for a MineDraft PSD target over ZeroMQ.")
    p.add_argument("--model", required=True, help="draft model: bundled name or checkpoint dir")
    p.add_argument("--bind", required=True, help="ZeroMQ address, e.g. tcp://127.0.0.1:5599")
    p.add_argument("--cores", default="all", help="CPU cores for the drafter, e.g. 1")
    p.add_argument("--dtype", default="bfloat16", help="dtype (default: bfloat16)")
    p.add_argument("--max-model-len", type=int, default=2048, help="context length")
    p.add_argument("--kv-cache-gib", type=int, default=1, help="KV cache memory, GiB")
    p.add_argument("--enforce-eager", action="store_true", help="skip torch.compile")
    args = p.parse_args(argv)
    # vLLM's engine core stays in a process of its own (VLLM_ENABLE_V1_MULTIPROCESSING=1).
    # In-process it saved an IPC round trip per engine step (~95 -> ~60 ms per round of 4
    # requests in isolation), but beside a running target some rounds took ~1 s, all in
    # the model's kernels (the drafter's OpenMP threads fighting over its core, it seems).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from minedraft import models
    server = DraftServer(str(models.resolve(args.model)), args.cores, args.dtype,
                         args.max_model_len, args.kv_cache_gib, args.enforce_eager)
    server.serve(args.bind)


if __name__ == "__main__":
    main()
