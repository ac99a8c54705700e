"""The PSD step logic (minedraft.vllm_ext.step) on a stub vLLM scheduler and a fake drafter over a
real ZeroMQ socket: exactness, which drafts reach which request, balance, caps and order,
preemption and aborts, the trace. No vLLM engine, a few seconds in all."""

from __future__ import annotations

import random
import time
import types

import pytest
from stubs import (FakeBackend, FakeDrafter, FakeTokenizer, StubRequest, StubScheduler, ar_output,
                   fake_draft, oracle, vllm_config)

from minedraft.core.messages import vocab_fingerprint
from minedraft.core.trace import read_trace
from minedraft.vllm_ext.policy import FixedPolicy
from minedraft.vllm_ext.step import PSDSchedulerMixin


class StubPSD(PSDSchedulerMixin, StubScheduler):
    @staticmethod
    def _draft_token_ids(req_ids, draft_token_ids):
        return types.SimpleNamespace(req_ids=req_ids, draft_token_ids=draft_token_ids)

    def _target_vocab(self):
        return vocab_fingerprint(FakeTokenizer())


@pytest.fixture
def drafter():
    d = FakeDrafter()
    yield d
    d.stop()


def make(drafter, tmp_path, mode="psd", k=3, **extra):
    return StubPSD(vllm_config(k=k, mode=mode, draft_address=drafter.address,
                               trace_path=str(tmp_path / "trace.jsonl"), drafter_timeout_s=5,
                               **extra))


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(97) for _ in range(rng.randrange(3, 12))] for _ in range(n)]


def run(sched, reqs, on_step=None, max_steps=2000):
    """Add `reqs` (StubRequests) and step until every request finished."""
    for r in reqs:
        sched.add_request(r)
    steps = 0
    while sched.has_unfinished_requests():
        out = sched.schedule()
        sched.update_from_output(out, types.SimpleNamespace())
        steps += 1
        if on_step is not None:
            on_step(sched, steps)
        assert steps < max_steps, "requests never finished"
    return steps


def check_drafts_fresh(sched, k):
    """Every verified draft is what the drafter makes from that request's current state."""
    assert sched.verified, "nothing was verified with drafts"
    for rid, state, drafts in sched.verified:
        request = sched.requests[rid]
        room = request.max_tokens - (len(state) - len(request.prompt_token_ids)) - 1
        assert drafts == fake_draft(state, k)[:max(0, min(k, room))], rid


@pytest.mark.parametrize("mode", ["psd", "sd-ext"])
def test_outputs_equal_the_target_and_drafts_are_fresh(drafter, tmp_path, mode):
    sched = make(drafter, tmp_path, mode)
    ps = prompts(12)
    reqs = [StubRequest(f"r{i}", p, max_tokens=20 + i) for i, p in enumerate(ps)]
    run(sched, reqs)
    for r, p in zip(reqs, ps):
        assert r.output_token_ids == ar_output(p, r.max_tokens)
    check_drafts_fresh(sched, 3)
    records = read_trace(str(tmp_path / "trace.jsonl"))
    accepted = sum(rec.accepted_tokens for rec in records)
    drafted = sum(rec.drafted_tokens for rec in records)
    assert 0.4 < accepted / drafted < 0.95  # the fake drafter is wrong at a quarter of positions
    if mode == "psd":
        psd_steps = [rec for rec in records if rec.kind == "psd"]
        assert len(psd_steps) > 0.7 * sum(1 for rec in records if rec.verify)
        for rec in psd_steps:  # each step verifies about half of the decoding requests
            decoding = rec.verify + rec.draft + rec.held
            assert rec.verify <= decoding // 2 + 1, rec
    else:
        assert all(rec.kind != "psd" for rec in records)


class CyclingPolicy(FixedPolicy):
    """psd, then a step without drafts, then sequential, ...: what `auto` may do when it
    switches, so drafts made before a switch go stale."""

    def __init__(self, k: int):
        super().__init__("psd", k)
        self.kinds = ["psd", "psd", "none", "sequential", "psd", "none", "none"]
        self.calls = 0

    def choose(self, n_decoding: int, backlog=None, prefill=False, requests=None):
        kind = self.kinds[self.calls % len(self.kinds)]
        self.calls += 1
        return kind, 0 if kind == "none" else self.k


def test_drafts_made_before_a_switch_are_never_verified_stale(drafter, tmp_path):
    """Requests decoded without drafts (a `none` step) keep the drafts made from their older
    state; those must never be verified later: only drafts of the current state are."""
    sched = make(drafter, tmp_path)
    sched.policy = CyclingPolicy(3)
    ps = prompts(10, seed=3)
    reqs = [StubRequest(f"r{i}", p, max_tokens=25) for i, p in enumerate(ps)]
    run(sched, reqs)
    for r, p in zip(reqs, ps):
        assert r.output_token_ids == ar_output(p, r.max_tokens)
    with_drafts = [(rid, state, d) for rid, state, d in sched.verified if d]
    assert len(with_drafts) > 20
    for rid, state, drafts in with_drafts:  # `none` steps verify without drafts
        request = sched.requests[rid]
        room = request.max_tokens - (len(state) - len(request.prompt_token_ids)) - 1
        assert drafts == fake_draft(state, 3)[:max(0, min(3, room))], rid
    kinds = {rec.kind for rec in read_trace(str(tmp_path / "trace.jsonl")) if rec.verify}
    assert kinds >= {"psd", "none", "sequential"}


class SlowIngestBackend(FakeBackend):
    """Takes prompts in slowly (as a drafter on one CPU core prefills a burst of long ones)."""

    def draft(self, seqs, k, ingest=frozenset()):
        if ingest:
            time.sleep(0.4)
        return super().draft(seqs, k, ingest)


def test_steps_without_drafts_do_not_wait_for_prompts_to_be_taken_in(tmp_path):
    """Steps that verify without drafts (`auto` choosing k = 0) never block on the drafter
    taking prompts in; a later drafting step waits for it, and every output stays exact."""
    slow = FakeDrafter()
    slow.backend.__class__ = SlowIngestBackend
    try:
        sched = make(slow, tmp_path)
        sched.policy = FixedPolicy("none", 0)
        ps = prompts(4, seed=7)
        reqs = [StubRequest(f"r{i}", p, max_tokens=30) for i, p in enumerate(ps)]

        def on_step(s, n):
            if n == 12:  # then draft: the round in flight (or a new one) brings the prompts in
                s.policy = FixedPolicy("psd", 3)

        run(sched, reqs, on_step)
    finally:
        slow.stop()
    for r, p in zip(reqs, ps):
        assert r.output_token_ids == ar_output(p, r.max_tokens)
    sched.verified = [v for v in sched.verified if v[2]]  # (`none` steps verify without drafts)
    check_drafts_fresh(sched, 3)
    records = read_trace(str(tmp_path / "trace.jsonl"))
    assert all(rec.wait_ms < 200 for rec in records[:6]), [rec.wait_ms for rec in records]


class BacklogPolicy(FixedPolicy):
    """`none` every step, recording the drafter's backlog the scheduler reports."""

    def __init__(self):
        super().__init__("none", 0)
        self.backlogs = []
        self.prefills = []
        self.intake = []
        self.requests = []

    def choose(self, n_decoding, backlog=None, prefill=False, requests=None):
        self.backlogs.append((n_decoding, backlog()))
        self.prefills.append(prefill)
        self.requests.append(list(requests))
        return "none", 0

    def observe_intake(self, tokens, ms):
        self.intake.append(tokens)


def test_the_drafters_backlog_counts_the_tokens_steps_without_drafts_did_not_send(
        drafter, tmp_path):
    """`auto` weighs the drafter's catch-up before exploring (minedraft.vllm_ext.auto): the
    scheduler reports the tokens of the decoding requests the drafter has not taken in. Prompts
    go to the drafter as they are prefilled, so the backlog is the tokens decoded since (one
    per request per step without drafts), and rounds that only take prompts in are timed."""
    sched = make(drafter, tmp_path)
    sched.policy = policy = BacklogPolicy()
    ps = prompts(3, seed=5)
    reqs = [StubRequest(f"r{i}", p, max_tokens=12) for i, p in enumerate(ps)]
    run(sched, reqs, on_step=lambda *_: time.sleep(0.05))  # (rounds answered: none in flight)
    decoding = [(n, b) for n, b in policy.backlogs if n == 3]
    assert len(decoding) > 5
    # each step adds one token to each of the 3 requests the drafter holds up to its prompt
    assert [b for _, b in decoding][:4] == [3, 6, 9, 12]
    assert sum(policy.intake) == sum(len(p) for p in ps)  # the prompts, each once
    # and names the decoding requests (`auto` drops what finished ones taught it)
    assert all(len(ids) == n for ids, (n, _) in zip(policy.requests, policy.backlogs))
    first = next(i for i, (n, _) in enumerate(policy.backlogs) if n == 3)
    assert sorted(policy.requests[first]) == ["r0", "r1", "r2"]


class CatchUpPolicy(BacklogPolicy):
    """`none` every step, asking the drafter to catch up from the 5th on."""

    def catch_up(self):
        return len(self.backlogs) >= 5


def test_a_drafter_asked_to_catch_up_takes_in_what_steps_without_drafts_decoded(
        drafter, tmp_path):
    """When `auto` is about to draft after steps without drafts (`catch_up()`), those steps
    send the drafter the tokens they decoded, so the backlog stays within a step's tokens and
    the drafting step does not wait for it; until then they send none."""
    sched = make(drafter, tmp_path)
    sched.policy = policy = CatchUpPolicy()
    ps = prompts(3, seed=5)
    reqs = [StubRequest(f"r{i}", p, max_tokens=12) for i, p in enumerate(ps)]
    run(sched, reqs, on_step=lambda *_: time.sleep(0.05))  # (each round answered in a step)
    backlogs = [b for n, b in policy.backlogs if n == 3]
    assert backlogs[:4] == [3, 6, 9, 12]  # (as without catching up)
    assert max(backlogs[5:]) <= 3, backlogs  # taken in at each step since
    assert sum(policy.intake) > sum(len(p) for p in ps)  # prompts and decoded tokens
    for r, p in zip(reqs, ps):
        assert r.output_token_ids == ar_output(p, r.max_tokens)


def test_the_backlog_counts_tokens_the_drafter_is_still_taking_in(tmp_path):
    """A drafting step would wait for a round still taking tokens in: they count as backlog."""
    slow = FakeDrafter()
    slow.backend.__class__ = SlowIngestBackend  # 0.4 s per round that takes tokens in
    try:
        sched = make(slow, tmp_path)
        sched.policy = policy = BacklogPolicy()
        ps = prompts(3, seed=5)
        run(sched, [StubRequest(f"r{i}", p, max_tokens=4) for i, p in enumerate(ps)])
    finally:
        slow.stop()
    assert policy.backlogs[1] == (3, 3 + sum(len(p) for p in ps))  # the prompts, in flight


def test_the_policy_is_told_which_steps_also_prefill_prompts(drafter, tmp_path):
    """`auto` explores only in steps that just decode (minedraft.vllm_ext.auto): the scheduler
    says `prefill` when a prompt waits or is still being prefilled, and only then."""
    sched = make(drafter, tmp_path)
    sched.policy = policy = BacklogPolicy()
    reqs = [StubRequest(f"r{i}", p, max_tokens=12) for i, p in enumerate(prompts(3, seed=5))]
    late = StubRequest("late", [1, 2, 3], max_tokens=4)

    def arrive(sched, steps):
        if steps == 5:
            sched.add_request(late)

    run(sched, reqs, on_step=arrive)
    assert policy.prefills[0] is True and policy.prefills[4] is False  # (then: 3 decoding)
    assert policy.prefills[5] is True  # the late prompt
    assert policy.prefills[6:].count(True) == 0


def test_drafts_of_an_older_state_are_not_verified(drafter, tmp_path):
    """A request whose tokens moved on after its drafts were made (as a preempted request does
    when its re-prefill samples a token) gets no drafts until fresh ones come."""
    sched = make(drafter, tmp_path)
    reqs = [StubRequest(f"r{i}", p, max_tokens=40) for i, p in enumerate(prompts(6, seed=5))]
    for r in reqs:
        sched.add_request(r)
    for _ in range(6):
        sched.update_from_output(sched.schedule(), types.SimpleNamespace())
    sched._collect_round()  # the drafts of the round the last step sent
    stale = [rid for rid in sched.drafts if sched._fresh(rid)]
    assert stale, "no drafts were waiting"
    for rid in stale:  # the target produced a token the drafts were not made from
        r = sched.requests[rid]
        r.output_token_ids.append(oracle(r.all_token_ids))
        r.num_computed_tokens = r.num_tokens - 1
    sched.verified.clear()
    sched.update_from_output(sched.schedule(), types.SimpleNamespace())
    assert {rid for rid, _, _ in sched.verified} & set(stale)
    check_drafts_fresh(sched, 3)  # none made from the older state
    run(sched, [])
    for r, p in zip(reqs, prompts(6, seed=5)):
        assert r.output_token_ids == ar_output(p, 40)


def test_verified_requests_are_hidden_from_nobody_and_others_are(drafter, tmp_path):
    """The parent's schedule() sees exactly the planned requests, with its caps lowered by the
    hidden ones, and afterwards the caps and vLLM's running order are restored."""
    sched = make(drafter, tmp_path)
    reqs = [StubRequest(f"r{i}", p, max_tokens=30) for i, p in enumerate(prompts(8))]
    seen = []

    def on_step(s, n):
        seen.append((list(s.caps_seen[-1]), [r.request_id for r in s.running]))

    run(sched, reqs[:8], on_step)
    assert (sched.max_num_running_reqs, sched.max_num_active_reqs) == (64, 64)
    assert any(caps[0] < 64 for caps, _ in seen), "nothing was ever hidden"
    for _, order in seen:  # running order stays arrival order (vLLM's FCFS)
        assert order == sorted(order, key=lambda rid: int(rid[1:]))


def test_admission_counts_hidden_requests(drafter, tmp_path):
    """Hidden requests keep their slots: with max_num_seqs 4 and 6 requests, at most 4 run."""
    sched = StubPSD(vllm_config(k=2, mode="psd", draft_address=drafter.address,
                                drafter_timeout_s=5))
    sched.max_num_running_reqs = sched.max_num_active_reqs = 4
    reqs = [StubRequest(f"r{i}", p, max_tokens=12) for i, p in enumerate(prompts(6))]
    most = []
    run(sched, reqs, lambda s, n: most.append(len(s.running)))
    assert max(most) <= 4
    for r, p in zip(reqs, prompts(6)):
        assert r.output_token_ids == ar_output(p, 12)


def test_preempted_requests_keep_their_history_finished_ones_are_freed(drafter, tmp_path):
    sched = make(drafter, tmp_path)
    reqs = [StubRequest(f"r{i}", p, max_tokens=25) for i, p in enumerate(prompts(6))]

    def on_step(s, n):
        if n in (5, 11):
            s.preempt_next = 2

    run(sched, reqs, on_step)
    for r, p in zip(reqs, prompts(6)):
        assert r.output_token_ids == ar_output(p, 25)
    check_drafts_fresh(sched, 3)
    assert sched.sent_len == {}  # everything finished: nothing left to free
    # the frees reach the drafter with the next round
    sched.schedule()
    run(sched, [StubRequest("late", [1, 2, 3], max_tokens=4)])
    assert {f"r{i}" for i in range(6)} <= set(drafter.backend.freed)


def test_request_aborted_while_waiting_after_preemption_is_freed(drafter, tmp_path):
    sched = make(drafter, tmp_path)
    reqs = [StubRequest(f"r{i}", p, max_tokens=40) for i, p in enumerate(prompts(4))]
    aborted = []

    def on_step(s, n):
        if n == 6:
            s.preempt_next = 1  # the last running request goes back to waiting
        if n == 7 and not aborted:
            victim = s.waiting[0]
            assert victim.request_id in s.sent_len  # the drafter has its history
            s.finish_requests(victim.request_id)
            aborted.append(victim.request_id)

    run(sched, reqs, on_step)
    assert aborted and aborted[0] not in sched.sent_len
    run(sched, [StubRequest("late", [5, 6, 7], max_tokens=4)])  # carries the frees
    assert aborted[0] in drafter.backend.freed


def test_prompts_are_taken_in_while_the_target_prefills_them(drafter, tmp_path):
    sched = make(drafter, tmp_path)
    reqs = [StubRequest(f"r{i}", p, max_tokens=10) for i, p in enumerate(prompts(5))]
    run(sched, reqs)
    assert sorted(drafter.backend.ingested) == sorted(r.request_id for r in reqs)
    first_round = {}
    for rnd in drafter.backend.rounds:
        for rid, seq in rnd.items():
            first_round.setdefault(rid, seq)
    for r in reqs:  # the first time the drafter saw it: the prompt, while it was prefilled
        assert first_round[r.request_id] == r.prompt_token_ids


class DeferPolicy(BacklogPolicy):
    """`none` with new prompts deferred (as `auto` settled on plain decoding at a load), until
    `drafting` is set: then psd k = 3."""

    drafting = False

    def choose(self, n_decoding, backlog=None, prefill=False, requests=None):
        super().choose(n_decoding, backlog, prefill, requests)
        return ("psd", 3) if self.drafting else ("none", 0)

    def defer_intake(self):
        return not self.drafting


def test_prompts_deferred_while_plain_decoding_are_sent_whole_when_drafting_starts(
        drafter, tmp_path):
    """While the policy defers intake (`AutoPolicy.defer_intake`) no prompt goes to the
    drafter; the first drafting step sends each request's whole history, and every draft
    verified is made from the request's current state, so outputs stay exact."""
    sched = make(drafter, tmp_path)
    sched.policy = policy = DeferPolicy()
    ps = prompts(4, seed=3)
    reqs = [StubRequest(f"r{i}", p, max_tokens=30) for i, p in enumerate(ps)]
    seen_while_deferred = []

    def on_step(s, n):
        if n == 8:
            seen_while_deferred.extend(getattr(drafter.backend, "ingested", []))
            seen_while_deferred.extend(rid for rnd in drafter.backend.rounds for rid in rnd)
            policy.drafting = True

    run(sched, reqs, on_step)
    assert seen_while_deferred == []  # nothing taken in while deferred
    assert policy.backlogs[7][1] > sum(len(p) for p in ps)  # the prompts and decoded tokens
    first_round = {}
    for rnd in drafter.backend.rounds:
        for rid, seq in rnd.items():
            first_round.setdefault(rid, seq)
    for r, p in zip(reqs, ps):  # the first round had the whole history, prompt first
        assert first_round[r.request_id][:len(p)] == p
        assert len(first_round[r.request_id]) > len(p)
        assert r.output_token_ids == ar_output(p, r.max_tokens)
    sched.verified = [v for v in sched.verified if v[2]]
    check_drafts_fresh(sched, 3)


def test_trace_has_every_step_when_the_engine_goes_idle(drafter, tmp_path):
    sched = make(drafter, tmp_path)
    steps = run(sched, [StubRequest("a", [1, 2, 3], max_tokens=9),
                        StubRequest("b", [4, 5], max_tokens=9)])
    records = read_trace(str(tmp_path / "trace.jsonl"))
    assert len(records) == steps  # the last step too, without another schedule()
    assert [r.step for r in records] == list(range(steps))
    assert all(r.step_ms > 0 and r.verify_ms is not None for r in records)
    assert all(r.draft_ms is not None for r in records if r.draft or r.catch_up)


def test_the_trace_is_written_in_batches_while_requests_run(drafter, tmp_path):
    """A write per step cost 0.5 ms of each step in the engine core: while requests run, the
    records wait until TRACE_WRITE_S has passed since the last write (or the engine is idle)."""
    sched = make(drafter, tmp_path)
    path = tmp_path / "trace.jsonl"
    sizes = []
    run(sched, [StubRequest("a", [1, 2, 3], max_tokens=12)],
        on_step=lambda s, n: sizes.append(path.stat().st_size if path.exists() else 0))
    assert sizes[-2] == 0  # nothing written while the request ran (well within a second)
    assert len(read_trace(str(path))) == len(sizes)  # everything once idle
    sched._trace_written -= 10  # as if the last write were 10 s ago
    run(sched, [StubRequest("b", [4, 5], max_tokens=12)],
        on_step=lambda s, n: sizes.append(path.stat().st_size))
    assert sizes[len(sizes) // 2 + 2] > sizes[len(sizes) // 2 - 1]  # written while it ran


def test_seeded_requests_see_the_same_drafts_whatever_runs_beside_them(drafter, tmp_path):
    """vLLM draws a seeded request's random numbers per draft position; its drafts at every
    verification must therefore depend on its own history only."""
    sched = make(drafter, tmp_path)
    alone = StubRequest("x", [3, 1, 4, 1, 5], max_tokens=30)
    run(sched, [alone])
    mine = [(s, d) for rid, s, d in sched.verified if rid == "x"]
    for seed in range(3):
        sched = make(drafter, tmp_path)
        others = [StubRequest(f"o{i}", p, max_tokens=10 + 7 * i)
                  for i, p in enumerate(prompts(5, seed))]
        crowd = StubRequest("x", [3, 1, 4, 1, 5], max_tokens=30)

        def arrive(s, n, pending=list(others[1:])):
            if pending and n % 3 == 0:
                s.add_request(pending.pop())
            if n == 8:
                s.preempt_next = 1

        run(sched, [crowd, others[0]], arrive)
        assert [(s, d) for rid, s, d in sched.verified if rid == "x"] == mine


def test_drafter_down_serves_without_drafts_and_comes_back(drafter, tmp_path):
    sched = make(drafter, tmp_path, restart_drafter=True)
    sched.drafter.opt.backoff_s = (0.0, 0.0)
    reqs = [StubRequest(f"r{i}", p, max_tokens=30) for i, p in enumerate(prompts(4))]
    broken = []

    def on_step(s, n):
        if n == 5:
            s._drafter_failed(RuntimeError("test: drafter lost"))
            broken.append(n)
        time.sleep(0.003)  # steps as slow as a tiny model's, so the drafter can answer

    run(sched, reqs, on_step)
    for r, p in zip(reqs, prompts(4)):
        assert r.output_token_ids == ar_output(p, 30)
    records = read_trace(str(tmp_path / "trace.jsonl"))
    up = [r.drafter_up for r in records]
    assert False in up and up[-1]
    back = up.index(False) + up[up.index(False):].index(True)
    assert sum(r.accepted_tokens for r in records[back:]) > 0  # speculation resumed
    assert records[-1].restarts == 1
