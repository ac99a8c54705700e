"""The drafter process: a ZeroMQ REP socket serving draft rounds (see minedraft.core.messages).

It keeps, per request id, the verified tokens the scheduler has sent (`Tokens(start, ids)`
deltas), hands the full sequences of a round to its backend, and answers with k greedy draft
tokens per request. Malformed messages get an `ErrorReply`, never a crash.

    python -m minedraft.drafter --model DIR --bind tcp://127.0.0.1:5599 --cores 1

The default address is loopback: the channel is not authenticated, so bind it to a private
interface when the target runs on another host.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import uuid

import msgspec

from minedraft.core import messages as m

logger = logging.getLogger("minedraft.drafter")

DEFAULT_BIND = "tcp://127.0.0.1:5599"
PARENT_CHECK_MS = 1000  # how often an idle drafter checks that its engine is still there
BACKENDS = ("lean", "vllm")


class DraftServer:
    """Histories by request id, and one backend that drafts from them.

    `backend` has `name`, `tokenizer`, `max_model_len`, `free(rids)`, `shutdown()` and
    `draft(seqs, k, ingest) -> (drafts, forwards, forward_ms)`: seqs maps a request id to its
    full token sequence, drafts a request id to up to k greedy ids (none for the ids in `ingest`,
    which are only taken in); forwards counts the model's forward passes in the round and
    forward_ms their time."""

    def __init__(self, backend):
        self.backend = backend
        self.history: dict[str, list[int]] = {}
        self.instance = uuid.uuid4().hex[:12]

    def hello(self) -> m.HelloReply:
        """Answer a Hello."""
        return m.HelloReply(vocab=m.vocab_fingerprint(self.backend.tokenizer),
                            instance=self.instance, max_model_len=self.backend.max_model_len,
                            pid=os.getpid(), backend=self.backend.name)

    def draft(self, msg: m.Draft) -> m.DraftReply:
        """Serve one Draft round: update histories from the deltas (asking for a resync where the
        history is missing), draft k tokens for the rest. Raises ValueError for k < 1."""
        t0 = time.perf_counter()
        if msg.k < 1:
            raise ValueError(f"k must be >= 1, got {msg.k}")
        for rid in msg.free:
            self.history.pop(rid, None)
        self.backend.free(msg.free)
        seqs, resync, drafts = {}, [], {}
        ingest = set(msg.ingest)
        for rid, tokens in msg.reqs.items():
            hist = self.history.get(rid, [])
            if tokens.start > len(hist):  # we lack the tokens before `start`
                resync.append(rid)
                self.history.pop(rid, None)
                continue
            hist = hist[:tokens.start] + tokens.ids
            self.history[rid] = hist
            if not hist or len(hist) + msg.k > self.backend.max_model_len:
                if rid not in ingest:
                    drafts[rid] = []  # nothing to draft from, or no room left
            else:
                seqs[rid] = hist
        forwards = 0
        forward_ms = 0.0
        if seqs:
            out, forwards, forward_ms = self.backend.draft(seqs, msg.k, ingest & set(seqs))
            drafts.update(out)
        return m.DraftReply(drafts=drafts, draft_ms=1000 * (time.perf_counter() - t0),
                            forward_ms=forward_ms, forwards=forwards, resync=resync,
                            holding=len(self.history))

    def handle(self, data: bytes) -> tuple[m.DrafterReply, bool]:
        """One request -> (reply, stop after replying)."""
        try:
            msg = m.decode_request(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return m.ErrorReply(f"malformed message: {exc}"), False
        try:
            if isinstance(msg, m.Draft):
                return self.draft(msg), False
            if isinstance(msg, m.Hello):
                return self.hello(), False
            return m.StopReply(), True
        except Exception as exc:  # report, keep serving: the scheduler decides what to do
            logger.exception("draft round failed")
            return m.ErrorReply(f"{type(exc).__name__}: {exc}"), False

    def serve(self, bind: str, parent_pid: int | None = None) -> None:
        """Answer requests on `bind` until a Stop (then shut the backend down). With
        `parent_pid`, also stop once this process's parent is no longer that process (a drafter
        whose engine was killed must not linger)."""
        import zmq

        sock = zmq.Context.instance().socket(zmq.REP)
        sock.bind(bind)
        logger.warning("drafter (%s backend) ready on %s (pid %d)", self.backend.name, bind,
                       os.getpid())
        stop = False
        while not stop:
            if not sock.poll(PARENT_CHECK_MS):
                if parent_pid is not None and os.getppid() != parent_pid:
                    logger.warning("the engine that started this drafter is gone: exiting")
                    break
                continue
            reply, stop = self.handle(sock.recv())
            sock.send(m.encode(reply))
        sock.close(linger=1000)
        self.backend.shutdown()


def make_backend(name: str, model: str, cores: str, dtype: str, max_model_len: int,
                 kv_cache_gib: int, enforce_eager: bool, max_num_seqs: int,
                 quantization: str | None = None):
    """The backend `name` ("lean": PyTorch runner in this process; "vllm": a vLLM engine), in
    this process pinned to `cores` first."""
    from minedraft.core.cores import pin_process
    chosen = pin_process(cores)
    if name == "lean":
        from minedraft.drafter.backends.lean import LeanBackend
        return LeanBackend(model, dtype=dtype, max_model_len=max_model_len,
                           num_threads=len(chosen), max_num_seqs=max_num_seqs,
                           quantization=quantization)
    if quantization:
        raise ValueError("--quantization applies to the lean backend only")
    from minedraft.drafter.backends.vllm_engine import VLLMBackend
    return VLLMBackend(model, cores=cores, dtype=dtype, max_model_len=max_model_len,
                       kv_cache_gib=kv_cache_gib, enforce_eager=enforce_eager)


def build_parser() -> argparse.ArgumentParser:
    """The drafter process's command line."""
    p = argparse.ArgumentParser(
        prog="python -m minedraft.drafter",
        description="Serve drafts for a MineDraft PSD target over ZeroMQ (token ids only, "
                    "unauthenticated: bind to loopback or a private interface).")
    p.add_argument("--model", required=True,
                   help="draft model: a bundled name or a Hugging Face checkpoint directory")
    p.add_argument("--bind", default=DEFAULT_BIND,
                   help=f"ZeroMQ address to listen on (default: {DEFAULT_BIND}, loopback only)")
    p.add_argument("--cores", default="all", help="CPU cores of the drafter, e.g. 1 (default: all)")
    p.add_argument("--backend", choices=BACKENDS, default="lean",
                   help="lean: a PyTorch runner in this process, KV cache per request "
                        "(default); vllm: a vLLM engine with prefix caching (GPUs)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="weights and activations dtype (default: bfloat16)")
    p.add_argument("--quantization", default=None, choices=("int8",),
                   help="lean: int8 weights for the linear layers and the head (about twice "
                        "as fast on CPUs, slightly different drafts; default: none)")
    p.add_argument("--max-model-len", type=int, default=2048,
                   help="longest sequence drafted for, tokens (default: 2048)")
    p.add_argument("--max-num-seqs", type=int, default=256,
                   help="lean: most requests with a KV cache at once (default: 256)")
    p.add_argument("--kv-cache-gib", type=int, default=1,
                   help="vllm: KV cache memory, GiB (default: 1)")
    p.add_argument("--enforce-eager", action="store_true",
                   help="vllm: skip torch.compile (faster start-up, slower rounds)")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit when this process (the engine that started the drafter; set by "
                        "the PSD scheduler) is no longer the drafter's parent")
    p.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    return p


def main(argv: list[str] | None = None) -> None:
    """`python -m minedraft.drafter`: build the backend and serve."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from minedraft import models
    backend = make_backend(args.backend, str(models.resolve(args.model)), args.cores,
                           args.dtype, args.max_model_len, args.kv_cache_gib, args.enforce_eager,
                           args.max_num_seqs, args.quantization)
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return  # the engine died while this drafter was loading
    DraftServer(backend).serve(args.bind, parent_pid=args.parent_pid)
