"""Stand-ins for vLLM's scheduler and for a draft model, so the PSD step logic runs in
milliseconds: a stub target that decodes with a known "oracle" (greedy, verifying drafts exactly
as vLLM's rejection sampler does at temperature 0) and a fake drafter backend whose drafts are the
oracle's tokens with deterministic mistakes. Every draft it makes is a function of the sequence
alone, so a test can check that each verified draft is the one made from the request's state."""

from __future__ import annotations

import threading
import types

from minedraft.core import messages as m
from minedraft.drafter.client import free_tcp_address
from minedraft.drafter.server import DraftServer

VOCAB = 97


def oracle(seq: list[int]) -> int:
    """The target's greedy next token."""
    return (sum(seq) * 7 + len(seq)) % VOCAB


def fake_draft(seq: list[int], k: int, wrong_every: int = 4) -> list[int]:
    """The drafter's k tokens: the oracle's, wrong whenever the sequence length is a multiple of
    `wrong_every` (4: about a quarter of positions are rejected; 1: every draft is)."""
    out, seq = [], list(seq)
    for _ in range(k):
        t = oracle(seq)
        if len(seq) % wrong_every == 0:
            t = (t + 1) % VOCAB
        out.append(t)
        seq.append(t)
    return out


def ar_output(prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(oracle(seq))
    return seq[len(prompt):]


class FakeTokenizer:
    def __init__(self, vocab=VOCAB):
        self.vocab = {f"t{i}": i for i in range(vocab)}

    def get_vocab(self):
        return self.vocab


class FakeBackend:
    name = "fake"

    def __init__(self, max_model_len=4096, vocab=VOCAB, wrong_every=4):
        self.wrong_every = wrong_every
        self.tokenizer = FakeTokenizer(vocab)
        self.max_model_len = max_model_len
        self.rounds: list[dict] = []
        self.freed: list[str] = []

    def draft(self, seqs, k, ingest=frozenset()):
        self.rounds.append({rid: list(s) for rid, s in seqs.items()})
        self.ingested = getattr(self, "ingested", []) + sorted(ingest)
        return {rid: fake_draft(s, k, self.wrong_every) for rid, s in seqs.items()
                if rid not in ingest}, k, 0.1

    def free(self, rids):
        self.freed.extend(rids)

    def shutdown(self):
        pass


class FakeDrafter:
    """A DraftServer with a FakeBackend, serving on loopback in a thread."""

    def __init__(self, vocab=VOCAB, wrong_every=4):
        self.backend = FakeBackend(vocab=vocab, wrong_every=wrong_every)
        self.server = DraftServer(self.backend)
        self.address = free_tcp_address()
        self.thread = threading.Thread(target=self.server.serve, args=(self.address,),
                                       daemon=True)
        self.thread.start()

    def stop(self):
        import zmq
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.connect(self.address)
        sock.send(m.encode(m.Stop()))
        sock.recv()
        sock.close(linger=0)
        self.thread.join(5)


class StubRequest:
    """The attributes of vllm.v1.request.Request that the PSD step logic reads."""

    def __init__(self, rid: str, prompt: list[int], max_tokens: int):
        self.request_id = rid
        self.prompt_token_ids = list(prompt)
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.max_tokens = max_tokens
        self.spec_token_ids: list[int] = []
        self.finished = False
        self.is_prefill_chunk = False
        self.use_structured_output = False

    @property
    def all_token_ids(self):
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self):
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self):
        return len(self.output_token_ids)

    def is_finished(self):
        return self.finished


class StubScheduler:
    """vLLM's Scheduler as the PSD mixin sees it: a running list in arrival order, caps on
    running and active requests, admission from a waiting queue, greedy verification with the
    oracle, preemption of the last running request on demand, aborts."""

    def __init__(self, vllm_config, max_num_seqs=64):
        self.vllm_config = vllm_config
        self.max_model_len = 4096
        self.requests: dict[str, StubRequest] = {}
        self.running: list[StubRequest] = []
        self.waiting: list[StubRequest] = []
        self.max_num_running_reqs = max_num_seqs
        self.max_num_active_reqs = max_num_seqs
        self.preempt_next = 0  # preempt this many requests in the next schedule()
        self.verified: list[tuple[str, list[int], list[int]]] = []  # (rid, state, drafts)
        self.caps_seen: list[tuple[int, int]] = []
        self.freed: list[str] = []

    # what tests call
    def add_request(self, request: StubRequest):
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_requests(self, rid: str):
        """An abort from outside (running or waiting)."""
        request = self.requests[rid]
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        request.finished = True
        self._free_request(request)

    def has_unfinished_requests(self):
        return bool(self.running or self.waiting)

    # vLLM's interface
    def schedule(self):
        self.caps_seen.append((self.max_num_running_reqs, self.max_num_active_reqs))
        preempted = []
        for _ in range(self.preempt_next):  # out of KV blocks: as vLLM, the last one goes
            if self.running:
                victim = self.running.pop()
                victim.num_computed_tokens = 0
                victim.spec_token_ids = []
                preempted.append(victim)
        self.preempt_next = 0
        admitted = []
        while self.waiting and len(self.running) < self.max_num_running_reqs:
            admitted.append(self.waiting.pop(0))
            self.running.append(admitted[-1])
        self.waiting[:0] = preempted  # back in front of the queue, from the next step on
        scheduled, spec = [], {}
        for r in self.running:
            scheduled.append(r.request_id)
            if r.spec_token_ids:
                spec[r.request_id] = list(r.spec_token_ids)
                r.spec_token_ids = []
        new = [types.SimpleNamespace(req_id=r.request_id) for r in admitted
               if r.num_output_tokens == 0]
        tokens = sum(1 + len(spec.get(r.request_id, [])) if r.num_output_tokens else
                     r.num_tokens for r in self.running)
        return types.SimpleNamespace(scheduled=scheduled, scheduled_spec_decode_tokens=spec,
                                     scheduled_new_reqs=new, total_num_scheduled_tokens=tokens)

    def update_draft_token_ids(self, draft_token_ids):
        for rid, ids in zip(draft_token_ids.req_ids, draft_token_ids.draft_token_ids):
            r = self.requests.get(rid)
            if r is None or r.is_finished() or r.is_prefill_chunk:
                continue
            r.spec_token_ids = list(ids)
            self.verified.append((rid, list(r.all_token_ids), list(ids)))

    def update_from_output(self, scheduler_output, model_runner_output):
        sampled, index = [], {}
        for rid in scheduler_output.scheduled:
            r = self.requests[rid]
            if r.is_finished():
                continue
            seq = r.all_token_ids
            new = []
            for t in scheduler_output.scheduled_spec_decode_tokens.get(rid, []):
                if t != oracle(seq + new):
                    break
                new.append(t)
            new.append(oracle(seq + new))
            new = new[: r.max_tokens - r.num_output_tokens]
            index[rid] = len(sampled)
            sampled.append(new)
            r.output_token_ids += new
            r.num_computed_tokens = r.num_tokens - 1
            if r.num_output_tokens >= r.max_tokens:
                r.finished = True
                self.running.remove(r)
                self._free_request(r)
        model_runner_output.sampled_token_ids = sampled
        model_runner_output.req_id_to_index = index
        return {}

    def _free_request(self, request, *args, **kwargs):
        self.freed.append(request.request_id)
        return None, None

    def shutdown(self):
        pass


def vllm_config(k=3, **minedraft):
    """A stand-in for vLLM's VllmConfig with the fields the PSD mixin reads."""
    return types.SimpleNamespace(
        additional_config={"minedraft": minedraft},
        speculative_config=types.SimpleNamespace(num_speculative_tokens=k),
        scheduler_config=types.SimpleNamespace(async_scheduling=False),
        model_config=types.SimpleNamespace(tokenizer="/no/such/tokenizer"))
