"""minedraft.simulate on synthetic profiles against closed-form expectations (no vLLM needed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from minedraft.analysis import advisor, theory
from minedraft.analysis.profile import (linear_fit, overlap_terms, parse_batches, robust_points,
                                        sequential_points, step_intervals_ms)
from minedraft.analysis.scenarios import list_scenarios, scenario_path, scenario_predictions
from minedraft.analysis.simulate import format_validation, simulate, validate_runs
from minedraft.core.costmodel import Curve, DraftCost, ProfileError, load_profile


def profile_doc(decode=((1, 10.0), (8, 10.0)), verify=((1, 10.0), (64, 10.0)), draft=((1, 0.0),),
                acc=(0.0, 0.0, 0.0), prefill=((0, 0.0), (4096, 0.0)), k=3, overhead=None):
    return {"kind": "minedraft-cost-profile", "version": 1, "k": k,
            "target": {"decode_ms": [list(p) for p in decode],
                       "verify_ms": [list(p) for p in verify],
                       "prefill_ms": [list(p) for p in prefill]},
            "drafter": {"round_ms": [list(p) for p in draft]},
            "overhead_ms": overhead or {"sd": 0.0, "psd": 0.0},
            "acceptance_per_position": list(acc),
            "workload": {"prompt_lens": [100], "output_lens": [50]}}


def test_curve_interpolates_and_extrapolates():
    c = Curve([[1, 10], [4, 16], [4, 18], [8, 24]])  # duplicates: median (17)
    assert c(1) == 10 and c(4) == 17 and c(8) == 24
    assert c(2) == pytest.approx(12.333, abs=1e-3)
    assert c(16) > 24  # least-squares slope beyond the last point
    assert c(0) >= 0
    assert Curve([[3, 5.0]])(100) == 5.0  # one point: constant


def test_ar_batch1_throughput_is_one_over_tv():
    prof = load_profile(profile_doc(decode=[(1, 10.0), (8, 20.0)]))
    n = 101
    res = simulate(prof, "ar", num_prompts=1, output_len=n)
    # Prefill is free here: the first token at t = 0, then n - 1 decode steps of t_v = 10 ms.
    assert res["mean_tpot_ms"] == pytest.approx(10.0)
    assert res["duration_s"] == pytest.approx((n - 1) * 0.010)
    assert res["output_throughput_tok_s"] == pytest.approx(n / ((n - 1) * 0.010))
    # Sequential requests (concurrency 1): throughput tends to 1 / t_v per request stream.
    res = simulate(prof, "ar", num_prompts=4, output_len=n, max_concurrency=1)
    assert res["mean_tpot_ms"] == pytest.approx(10.0)
    assert res["mean_e2el_ms"] == pytest.approx((n - 1) * 10.0)


def test_ar_batch_b_step_cost():
    prof = load_profile(profile_doc(decode=[(1, 10.0), (8, 24.0)]))
    res = simulate(prof, "ar", num_prompts=8, output_len=51)
    assert res["mean_tpot_ms"] == pytest.approx(24.0)
    assert res["output_throughput_tok_s"] == pytest.approx(8 * 51 / (50 * 0.024))


def test_sd_with_full_acceptance_and_free_drafts():
    # alpha = 1, free drafting: each step yields k + 1 tokens for one verify time.
    prof = load_profile(profile_doc(acc=(1.0, 1.0, 1.0)))
    res = simulate(prof, "sd", num_prompts=1, output_len=1 + 4 * 25)
    assert res["num_steps"] == 25
    assert res["mean_tpot_ms"] == pytest.approx(10.0 / 4)
    assert res["acceptance_rate"] == 1.0
    assert res["mean_accepted_length"] == pytest.approx(4.0)


def test_sd_step_is_draft_plus_verify():
    prof = load_profile(profile_doc(draft=[(1, 6.0)], overhead={"sd": 1.0, "psd": 1.0}))
    res = simulate(prof, "sd", num_prompts=1, output_len=41)  # alpha = 0: one token per step
    assert res["mean_step_ms"] == pytest.approx(6.0 + 10.0 + 1.0)
    assert res["mean_tpot_ms"] == pytest.approx(17.0)


def test_acceptance_drawn_from_measured_positions():
    acc = (0.6, 0.3, 0.1)
    prof = load_profile(profile_doc(acc=acc))
    res = simulate(prof, "sd", num_prompts=8, output_len=400, seed=1)
    for measured, expected in zip(res["acceptance_per_position"], acc):
        assert measured == pytest.approx(expected, abs=0.03)
    assert res["mean_accepted_length"] == pytest.approx(1 + sum(acc), abs=0.05)


def test_expected_tokens_match_theory_for_geometric_acceptance():
    alpha, k = 0.7, 4
    prof = load_profile(profile_doc(acc=[alpha ** i for i in range(1, k + 1)], k=k))
    res = simulate(prof, "sd", num_prompts=16, output_len=2000, seed=3)
    assert res["mean_accepted_length"] == pytest.approx(
        theory.expected_tokens_per_step(alpha, k), rel=0.03)


def test_psd_steps_cost_the_max_and_alternate():
    # Two requests, one per side: every step verifies one and drafts the other, costing
    # max(draft, verify); each request gains one token (alpha = 0) every second step.
    prof = load_profile(profile_doc(draft=[(1, 6.0)], verify=[(1, 10.0), (64, 10.0)]))
    res = simulate(prof, "psd", num_prompts=2, output_len=51)
    assert res["mean_step_ms"] == pytest.approx(10.0, rel=0.02)
    assert res["mean_tpot_ms"] == pytest.approx(20.0, rel=0.03)
    # Same with sd: one step draft + verify of both.
    sd = simulate(prof, "sd", num_prompts=2, output_len=51)
    assert sd["mean_step_ms"] == pytest.approx(16.0)


def test_psd_ideal_gain_over_sd_matches_theory():
    # k t_d = t_v and batch-independent costs: a PSD step costs max(k t_d, t_v) = t_v against
    # k t_d + t_v for SD, the theory's (k c + 1) / max(k c, 1) = 2. But a PSD step verifies only
    # half the batch, so with costs that do not grow with the batch the throughputs are equal.
    k, t_v = 2, 12.0
    prof = load_profile(profile_doc(draft=[(1, k * 6.0)], verify=[(1, t_v), (64, t_v)], k=k,
                                    acc=(0.0, 0.0)))
    sd = simulate(prof, "sd", num_prompts=8, output_len=200, k=k)
    psd = simulate(prof, "psd", num_prompts=8, output_len=200, k=k)
    ratio = theory.psd_speedup_over_sd(0.0, k, 6.0 / t_v)
    assert ratio == 2.0
    # Per step PSD is 2x cheaper; it serves half the batch per step.
    assert sd["mean_step_ms"] / psd["mean_step_ms"] == pytest.approx(ratio, rel=0.02)
    assert psd["output_throughput_tok_s"] == pytest.approx(sd["output_throughput_tok_s"], rel=0.03)


@pytest.mark.parametrize("k", [1, 3])
def test_psd_two_requests_all_accepted_free_drafting(k):
    """Closed form: two requests, one per side, every draft accepted, drafting free: each step
    costs t_v and gives one request k + 1 tokens, so TPOT = 2 t_v / (k + 1)."""
    t_v = 12.0
    prof = load_profile(profile_doc(verify=[(1, t_v), (64, t_v)], draft=[(1, 0.0)], k=k,
                                    acc=[1.0] * k))
    n = 1 + (k + 1) * 40
    res = simulate(prof, "psd", num_prompts=2, output_len=n, k=k)
    assert res["acceptance_rate"] == 1.0
    assert res["mean_tpot_ms"] == pytest.approx(2 * t_v / (k + 1), rel=0.03)
    # sd verifies both at once at the same cost: twice the throughput of psd here
    sd = simulate(prof, "sd", num_prompts=2, output_len=n, k=k)
    assert sd["mean_tpot_ms"] == pytest.approx(t_v / (k + 1), rel=0.03)


def test_psd_gain_when_drafting_costs_as_much_as_verifying_and_costs_grow_with_batch():
    """PSD's premise: k t_d = t_v and costs proportional to the batch. Per request and token a
    PSD cycle (two half-batch steps of max(k t_d, t_v) / 2 each) costs half of sd's
    k t_d + t_v, so throughput doubles at any acceptance."""
    k, per_req = 2, 5.0  # ms per request for a verification and for a draft round
    prof = load_profile(profile_doc(verify=[(3, per_req), (96, 32 * per_req)],
                                    draft=[(1, per_req), (32, 32 * per_req)], k=k,
                                    acc=(0.6, 0.4)))
    sd = simulate(prof, "sd", num_prompts=16, output_len=300, k=k, seed=1)
    psd = simulate(prof, "psd", num_prompts=16, output_len=300, k=k, seed=1)
    gain = psd["output_throughput_tok_s"] / sd["output_throughput_tok_s"]
    assert gain == pytest.approx(theory.psd_speedup_over_sd(0.5, k, 1 / k), rel=0.08)
    assert gain > 1.8


def test_poisson_arrivals_and_concurrency_cap():
    prof = load_profile(profile_doc())
    slow = simulate(prof, "ar", num_prompts=20, output_len=11, request_rate=1.0, seed=0)
    fast = simulate(prof, "ar", num_prompts=20, output_len=11)
    assert slow["duration_s"] > 5 * fast["duration_s"]
    capped = simulate(prof, "ar", num_prompts=8, output_len=11, max_concurrency=2)
    assert capped["duration_s"] == pytest.approx(4 * 10 * 0.010)


def test_output_keys_match_bench():
    from minedraft.bench.metrics import serving_metrics
    keys = set(serving_metrics([], 1.0))
    res = simulate(load_profile(profile_doc()), "psd", num_prompts=4, output_len=9)
    assert keys <= set(res)


def test_sharegpt_output_lengths():
    prof = load_profile(profile_doc())
    res = simulate(prof, "ar", num_prompts=3, output_len=None)
    assert res["total_output_tokens"] == 3 * 50


def test_bad_profiles():
    with pytest.raises(ProfileError, match="not found"):
        load_profile("/no/such/profile.json")
    with pytest.raises(ProfileError, match="not a cost profile"):
        load_profile({"kind": "other"})
    doc = profile_doc()
    del doc["target"]["decode_ms"]
    with pytest.raises(ProfileError, match="decode_ms"):
        load_profile(doc)
    with pytest.raises(ValueError, match="mode"):
        simulate(load_profile(profile_doc()), "turbo")


def test_validate_runs_error_table():
    prof = load_profile(profile_doc())
    sim = simulate(prof, "ar", num_prompts=4, output_len=11)
    run = {"mode": "ar", "request_rate": math.inf, "config": {"seed": 0},
           "output_throughput_tok_s": sim["output_throughput_tok_s"] * 1.05,
           "mean_e2el_ms": sim["mean_e2el_ms"], "num_requests": 4}
    rows = validate_runs(prof, [run], {"num_prompts": 4, "output_len": 11})
    errors = {r["metric"]: r["error"] for r in rows}
    assert errors["out tok/s"] == pytest.approx(1 / 1.05 - 1)
    assert errors["mean E2EL ms"] == pytest.approx(0.0)
    table = format_validation(rows)
    assert "| ar |" in table and "-4.8%" in table


# --------------------------------------------------------------------------- profiler helpers

def test_profiler_helpers():
    assert step_intervals_ms([0.0, 0.01, 0.03]) == pytest.approx([10.0, 20.0])
    recs = [{"verify": 0, "verify_ms": 50, "step_ms": 50},  # prefill only: skipped
            {"kind": "sd", "verify": 2, "draft": 2, "drafted_tokens": 6, "tokens": 8,
             "verify_ms": 20, "draft_ms": 30, "step_ms": 52},
            {"kind": "sd", "verify": 1, "draft": 1, "drafted_tokens": 3, "tokens": 20,
             "verify_ms": 90, "draft_ms": 25, "step_ms": 120},  # a prompt prefilled: skipped
            {"kind": "psd", "verify": 1, "draft": 1, "drafted_tokens": 3, "verify_ms": 15,
             "draft_ms": 25, "step_ms": 41, "overlapped": True},
            {"kind": "psd", "verify": 2, "draft": 2, "drafted_tokens": 6, "verify_ms": 30,
             "draft_ms": 35, "step_ms": 38, "overlapped": True}]
    seq = sequential_points(recs)
    assert seq["verify"] == [[8, 20], [4, 15], [8, 30]]
    assert seq["overhead"] == pytest.approx([2.0, 1.0, -27.0])
    # isolated curves: drafting 10 ms per request at k=3, verification 2.5 ms per token
    terms = overlap_terms(recs, DraftCost([[1, 10.0], [2, 20.0]], 3), Curve([[4, 10.0], [8, 20.0]]),
                          3)
    assert terms["draft"] == pytest.approx((25 + 35) / (10 + 20))
    assert terms["verify"] == pytest.approx((15 + 30) / (10 + 20))
    assert terms["overhead"] == pytest.approx(((41 - 25) + (38 - 35)) / 2)
    assert overlap_terms(recs[:2], DraftCost([[1, 1.0]], 3), Curve([[1, 1.0]]), 3) == \
        {"draft": 1.0, "verify": 1.0, "overhead": 0.0}
    (x0, a), (x1, y1) = linear_fit([[10, 12.0], [20, 14.0], [30, 16.0]], 100)
    assert (x0, x1) == (0, 100) and a == pytest.approx(10.0) and y1 == pytest.approx(30.0)
    pts = [[4, 10.0], [4, 12.0], [4, 11.0], [8, 20.0], [8, 22.0], [8, 21.0], [5, 99.0]]
    assert robust_points(pts) == [[4, 11.0], [8, 21.0]]  # the lone size-5 step is dropped
    assert robust_points([[1, 5.0], [2, 7.0]]) == [[1, 5.0], [2, 7.0]]
    assert parse_batches("4,1,2,2") == (1, 2, 4)
    with pytest.raises(ValueError):
        parse_batches("0,1")


# --------------------------------------------------------------------------- scenarios, advise

def test_scenarios_are_labelled_and_simulate():
    names = list_scenarios()
    assert len(names) >= 3
    for name in names:
        doc = json.loads(scenario_path(name).read_text())
        assert "ASSUMPTION" in doc["assumption"] and doc["source"]
        if "paper" in doc:  # the paper's settings carry its reported gain
            assert doc["paper"]["reported_psd_throughput_gain_over_sd"] > 0
        load_profile(doc)
    rows = scenario_predictions(names[:1], num_prompts=32)
    assert rows[0]["per_k"][1]["sd_tok_s"] > 0 and "paper_note" in rows[0]


def test_profile_advice_matches_theory_with_constant_costs():
    # Batch-independent costs with c = t_d / t_v: the profile advice reduces to the closed form
    # for sd (batch 1: psd runs sequentially, like sd).
    alpha, k, t_v, c = 0.6, 3, 10.0, 0.2
    prof = load_profile(profile_doc(decode=[(1, t_v)], verify=[(1, t_v)],
                                    draft=[(1, k * c * t_v)], acc=[alpha ** i for i in (1, 2, 3)]))
    rep = advisor.profile_report(prof, k, batch=1)
    assert rep["expected_tokens_per_step"] == pytest.approx(theory.expected_tokens_per_step(alpha, k))
    assert rep["sd_speedup"] == pytest.approx(theory.sd_speedup(alpha, k, c))
    assert rep["c"] == pytest.approx(c)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "minedraft", *args], capture_output=True,
                          text=True, timeout=120)


def test_simulate_cli(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile_doc()))
    out = tmp_path / "sim.json"
    proc = run_cli("simulate", "--profile", str(path), "--num-prompts", "4", "--output-len", "9",
                   "--request-rate", "2,inf", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "psd" in proc.stdout
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 6
    proc = run_cli("simulate", "--profile", str(tmp_path / "missing.json"))
    assert proc.returncode != 0 and "profile file not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("simulate", "--profile", str(path), "--mode", "turbo")
    assert proc.returncode != 0 and "unknown mode" in proc.stderr
