"""The sub-batch state machine and the step plan (minedraft.core.subbatch), and the simulator
running the very same code as the scheduler."""

from __future__ import annotations

import random
import types

import pytest
from stubs import FakeDrafter, FakeTokenizer, StubRequest, StubScheduler, vllm_config

from minedraft.core.messages import vocab_fingerprint
from minedraft.core.subbatch import StepPlan, SubBatches, plan_step
from minedraft.vllm_ext.step import PSDSchedulerMixin


@pytest.mark.parametrize("seed", range(5))
def test_sides_stay_balanced(seed):
    rng = random.Random(seed)
    b = SubBatches(overlap=True)
    alive, next_id = [], 0
    for _ in range(2000):
        event = rng.random()
        if event < 0.4:
            b.join(f"r{next_id}")
            alive.append(f"r{next_id}")
            next_id += 1
        elif event < 0.7 and alive:  # finish, abort or preemption: all leave the same way
            b.leave(alive.pop(rng.randrange(len(alive))))
        else:
            b.flip()
        b.rebalance()
        n0 = sum(1 for r in alive if b.side[r] == 0)
        n1 = sum(1 for r in alive if b.side[r] == 1)
        assert n0 + n1 == len(alive) == len(b.side)
        assert abs(n0 - n1) <= 1
        if len(alive) >= 2:
            assert n0 and n1


def test_without_overlap_everything_is_one_side():
    b = SubBatches(overlap=False)
    for i in range(5):
        b.join(f"r{i}")
    assert b.sizes() == (5, 0)
    b.flip()
    assert b.verify_side == 0
    plan = plan_step(b, [f"r{i}" for i in range(5)], {"r1"}, "psd")
    assert plan.kind == "sequential" and plan.catch_up == ["r0", "r2", "r3", "r4"]


def test_a_joiner_is_drafted_first():
    b = SubBatches()
    b.join("a")
    assert b.side["a"] == 1 - b.verify_side  # the side drafted now


def test_steady_state_verifies_the_fresh_side_and_drafts_the_other():
    b = SubBatches()
    b.side = {"a": 0, "b": 1, "c": 0, "d": 1}
    plan = plan_step(b, ["a", "b", "c", "d"], fresh={"a", "c"}, kind="psd")
    assert plan == StepPlan("psd", verify=["a", "c"], draft=["b", "d"])
    assert plan.overlapped


def test_requests_that_cannot_go_now_are_held():
    b = SubBatches()
    b.side = {"a": 0, "b": 1, "c": 0, "d": 1}
    # c is on the verified side without drafts; d on the drafted side with fresh ones
    plan = plan_step(b, ["a", "b", "c", "d"], fresh={"a", "d"}, kind="psd")
    assert plan.verify == ["a"] and plan.draft == ["b"] and plan.held == ["c", "d"]


def test_pipeline_start_drafts_the_verified_side_first():
    b = SubBatches()
    b.side = {"a": 0, "b": 1}
    plan = plan_step(b, ["a", "b"], fresh=set(), kind="psd")
    assert plan == StepPlan("psd", verify=["a"], catch_up=["a"], draft=["b"])


def test_a_drained_verify_side_swaps():
    b = SubBatches()
    b.side = {"a": 1}
    plan = plan_step(b, ["a"], fresh=set(), kind="psd")
    assert b.verify_side == 1
    assert plan == StepPlan("sequential", verify=["a"], catch_up=["a"])


def test_none_and_sequential_kinds():
    b = SubBatches()
    b.side = {"a": 0, "b": 1}
    assert plan_step(b, ["a", "b"], {"a"}, "none") == StepPlan("none", verify=["a", "b"])
    assert plan_step(b, ["a", "b"], {"a"}, "sequential") == \
        StepPlan("sequential", verify=["a", "b"], catch_up=["b"])
    with pytest.raises(ValueError, match="step kind"):
        plan_step(b, ["a"], set(), "fast")


class _StubPSD(PSDSchedulerMixin, StubScheduler):
    @staticmethod
    def _draft_token_ids(req_ids, draft_token_ids):
        return types.SimpleNamespace(req_ids=req_ids, draft_token_ids=draft_token_ids)

    def _target_vocab(self):
        return vocab_fingerprint(FakeTokenizer())


def _spy(module, plans):
    """Record every plan made through `module.plan_step` as (kind, verify, draft, sides)."""
    real = module.plan_step

    def spy(batches, decoding, fresh, kind):
        plan = real(batches, decoding, fresh, kind)
        plans.append((plan.kind, plan.verify, plan.draft, plan.held, dict(batches.side)))
        return plan

    return spy


@pytest.mark.parametrize("seed", range(3))
def test_simulator_and_scheduler_plan_the_same_steps(monkeypatch, seed):
    """The same stream (requests of random lengths, all at once, every draft rejected) through
    the scheduler (stub vLLM parent, fake drafter) and through the simulator: the same sides and
    the same plan at every step."""
    import minedraft.analysis.simulate as sim
    import minedraft.vllm_ext.step as step
    from minedraft.core.costmodel import load_profile

    rng = random.Random(seed)
    lengths = [rng.randrange(2, 25) for _ in range(9)]
    sched_plans, sim_plans = [], []
    monkeypatch.setattr(step, "plan_step", _spy(step, sched_plans))
    monkeypatch.setattr(sim, "plan_step", _spy(sim, sim_plans))

    drafter = FakeDrafter(wrong_every=1)
    try:
        sched = _StubPSD(vllm_config(k=2, draft_address=drafter.address, drafter_timeout_s=5))
        for i, n in enumerate(lengths):
            sched.add_request(StubRequest(str(i), [1, 2, 3], max_tokens=n))
        while sched.has_unfinished_requests():
            sched.update_from_output(sched.schedule(), types.SimpleNamespace())
    finally:
        drafter.stop()

    profile = load_profile({
        "kind": "minedraft-cost-profile", "k": 2, "acceptance_per_position": [0.0, 0.0],
        "target": {"decode_ms": [[1, 10.0]], "verify_ms": [[1, 10.0]]},
        "drafter": {"round_ms": [[1, 5.0]]}, "workload": {"prompt_lens": [3]}})
    sim.simulate(profile, "psd", num_prompts=len(lengths), output_lens=lengths, k=2,
                 prompt_len=3)
    assert len(sched_plans) > 10
    assert sched_plans == sim_plans
