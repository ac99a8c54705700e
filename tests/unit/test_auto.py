"""`--mode auto`'s decision logic on synthetic cost models: the shared predictions
(minedraft.core.costmodel), the choice it makes in each regime, hysteresis, and learning the
costs from step records alone."""

from __future__ import annotations

import types

import pytest
from stubs import FakeDrafter, FakeTokenizer, StubRequest, StubScheduler, ar_output, vllm_config

from minedraft.core.costmodel import best_step, expected_tokens, load_profile, step_rate
from minedraft.core.messages import vocab_fingerprint
from minedraft.core.trace import StepRecord, read_trace
from minedraft.vllm_ext.auto import HYSTERESIS, MIN_DWELL, AutoPolicy
from minedraft.vllm_ext.step import PSDSchedulerMixin


def profile(verify, draft, decode=None, acc=(0.6, 0.4, 0.25), overhead=None):
    """A profile from cost functions: verify(tokens), draft(batch, k), decode(batch) in ms."""
    sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    return load_profile({
        "kind": "minedraft-cost-profile", "k": 3,
        "target": {"decode_ms": [[b, (decode or verify)(b)] for b in sizes],
                   "verify_ms": [[t, verify(t)] for t in sizes]},
        "drafter": {"round_ms": [[b, k, draft(b, k)] for b in sizes for k in (1, 2, 3)]},
        "overhead_ms": overhead or {}, "acceptance_per_position": list(acc)})


FLAT_VERIFY = profile(verify=lambda t: 20.0 + 0.05 * t, draft=lambda b, k: 2.0 * k)
COSTLY_VERIFY = profile(verify=lambda t: 5.0 + 3.0 * t, decode=lambda b: 5.0 + 1.0 * b,
                        draft=lambda b, k: k * (1.0 + 0.5 * b))
PSD_PREMISE = profile(verify=lambda t: 20.0 + 0.5 * t, draft=lambda b, k: k * (8.0 + 0.5 * b),
                      acc=(0.8, 0.64, 0.51))


def test_expected_rates_follow_the_closed_forms():
    p = FLAT_VERIFY
    e2 = 1 + 0.6 + 0.6 * (0.4 / 0.6) * 1  # 1 + P(first 1) + P(first 2)
    assert step_rate(p, "sequential", 4, 2) == pytest.approx(
        4 * e2 / (p.draft_ms(4, 2) + p.verify(12)))
    assert step_rate(p, "none", 4, 0) == pytest.approx(4 / p.decode(4))
    half = max(p.draft_ms(2, 2), p.verify(6))
    assert step_rate(p, "psd", 4, 2) == pytest.approx(4 * e2 / (2 * half))
    assert step_rate(p, "psd", 1, 2) == step_rate(p, "sequential", 1, 2)


@pytest.mark.parametrize("costs, batch, kind", [
    (COSTLY_VERIFY, 8, "none"),  # each verified token costs 3 decode tokens: do not draft
    (FLAT_VERIFY, 4, "sequential"),  # cheap drafts, flat verification: draft then verify all
    (PSD_PREMISE, 16, "psd"),  # drafting as costly as verifying, both growing with the batch
])
def test_best_step_per_regime(costs, batch, kind):
    assert best_step(costs, batch, 3)[0] == kind


@pytest.mark.parametrize("costs, batch, kind", [
    (COSTLY_VERIFY, 8, "none"), (FLAT_VERIFY, 4, "sequential"), (PSD_PREMISE, 16, "psd")])
def test_policy_with_a_profile_settles_on_the_best_choice(costs, batch, kind):
    policy = AutoPolicy(3, costs)
    choices = [policy.choose(batch) for _ in range(3 * MIN_DWELL)]
    assert choices[-1][0] == kind
    assert len({c for c in choices[MIN_DWELL + 1:]}) == 1  # settled, no flapping


def test_hysteresis_keeps_a_choice_within_the_margin():
    """A choice predicted less than HYSTERESIS slower than the best is kept; one predicted
    clearly slower is left."""
    options = [(kind, k) for kind in ("sequential", "psd") for k in (1, 2, 3)] + [("none", 0)]
    rates = {o: step_rate(PSD_PREMISE, o[0], 4, o[1]) for o in options}
    best = max(rates, key=rates.get)
    close = [o for o in options if o != best and rates[o] > rates[best] / (1 + HYSTERESIS)]
    far = [o for o in options if rates[o] < rates[best] / 1.2]
    assert close and far
    for start, stays in ((close[0], True), (far[0], False)):
        policy = AutoPolicy(3, PSD_PREMISE)
        policy.current = start
        choices = {policy.choose(4) for _ in range(40)}
        assert (choices == {start}) == stays, (start, choices)


def test_acceptance_learnt_from_verifications():
    """Each position accepted with probability 0.5 once the ones before were: the expected tokens
    of a verification with k drafts are 1 + 0.5 + 0.25 + ... (not more: the counts are already
    conditional), and a profile's unconditional rates seed the same numbers."""
    import random

    rng = random.Random(0)
    policy = AutoPolicy(3)
    for _ in range(4000):
        accepted = 0
        while accepted < 3 and rng.random() < 0.5:
            accepted += 1
        policy.observe_drafts([(3, accepted)])
    assert policy.costs.conditional_acceptance(4) == pytest.approx([0.5] * 4, abs=0.03)
    assert expected_tokens(policy.costs, 3) == pytest.approx(1.875, abs=0.05)
    seeded = AutoPolicy(3, profile(verify=lambda t: 1.0, draft=lambda b, k: 1.0,
                                   acc=(0.5, 0.25, 0.125)))
    assert seeded.costs.conditional_acceptance(3) == pytest.approx([0.5, 0.5, 0.5])


def test_policy_learns_the_costs_from_steps_alone():
    """No profile: it explores, learns from the records of a synthetic engine, and picks what
    the true costs say (here: do not draft)."""
    true = COSTLY_VERIFY
    policy = AutoPolicy(3)
    batch = 8
    for step in range(200):
        kind, k = policy.choose(batch)
        # half the first drafts accepted: speculation cannot pay for this verification cost
        drafts = [(k, i % 2) for i in range(batch)] if kind != "none" else []
        policy.observe_drafts(drafts)
        tokens = batch * (1 + (k if kind != "none" else 0))
        if kind == "psd":
            v, d = batch // 2, batch // 2
            tokens = v * (1 + k)
            draft_ms = true.draft_ms(d, k)
            policy.observe_round(d, k, draft_ms)
            rec = StepRecord(kind="psd", k=k, verify=v, draft=d, tokens=tokens,
                             verify_ms=true.verify(tokens), draft_ms=draft_ms,
                             step_ms=max(draft_ms, true.verify(tokens)) + 1.0)
        elif kind == "sequential":
            draft_ms = true.draft_ms(batch, k)
            policy.observe_round(batch, k, draft_ms)
            rec = StepRecord(kind="sequential", k=k, verify=batch, catch_up=batch,
                             tokens=tokens, verify_ms=true.verify(tokens), draft_ms=draft_ms,
                             step_ms=draft_ms + true.verify(tokens) + 1.0)
        else:
            rec = StepRecord(kind="none", verify=batch, tokens=batch,
                             verify_ms=true.decode(batch), step_ms=true.decode(batch) + 1.0)
        policy.observe_step(rec)
    assert policy.current == ("none", 0)  # (its next steps may be a short re-exploration)
    assert best_step(policy.costs, batch, 3)[:2] == ("none", 0)


class _StubAuto(PSDSchedulerMixin, StubScheduler):
    @staticmethod
    def _draft_token_ids(req_ids, draft_token_ids):
        return types.SimpleNamespace(req_ids=req_ids, draft_token_ids=draft_token_ids)

    def _target_vocab(self):
        return vocab_fingerprint(FakeTokenizer())


def test_auto_through_the_scheduler_is_exact_and_records_its_choices(tmp_path):
    drafter = FakeDrafter()
    try:
        sched = _StubAuto(vllm_config(k=3, mode="auto", draft_address=drafter.address,
                                      trace_path=str(tmp_path / "t.jsonl"), drafter_timeout_s=5))
        prompts = [[i, i + 1, i + 2] for i in range(12)]
        reqs = [StubRequest(f"r{i}", p, max_tokens=60) for i, p in enumerate(prompts)]
        for r in reqs[:6]:
            sched.add_request(r)
        step = 0
        while sched.has_unfinished_requests() or step < 60:
            if step % 5 == 0 and 6 + step // 5 < len(reqs):  # arrivals during every kind
                sched.add_request(reqs[6 + step // 5])
            sched.update_from_output(sched.schedule(), types.SimpleNamespace())
            step += 1
    finally:
        drafter.stop()
    for r, p in zip(reqs, prompts):
        assert r.output_token_ids == ar_output(p, 60)
    records = read_trace(str(tmp_path / "t.jsonl"))
    assert records[-1].restarts == 0 and all(r.drafter_up for r in records)
    kinds = {r.kind for r in records if r.verify}
    assert {"psd", "sequential", "none"} <= kinds  # it explored every choice
    assert {r.k for r in records if r.kind != "none" and r.verify} >= {1, 3}
