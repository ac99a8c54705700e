"""evaluate-drafter's arithmetic and tables, on made-up benchmark results (no engines)."""

import json

import pytest

from minedraft.analysis import theory
from minedraft.train.evaluate import EvalConfig, _summarise, format_comparison, format_evaluation


def bench(duration_s, tok_s, acceptance=None, positions=None, acc_len=None):
    return {"duration_s": duration_s, "output_throughput_tok_s": tok_s,
            "acceptance_rate": acceptance, "acceptance_per_position": positions,
            "mean_accepted_length": acc_len}


@pytest.fixture
def summary(tmp_path):
    draft = tmp_path / "d4"
    draft.mkdir()
    (draft / "report.json").write_text(json.dumps(
        {"target_layers_kept": [0, 10, 19, 29], "train_seconds": 480.0,
         "heldout_agreement": 0.52,
         "history": [{"step": 9, "minutes": 8.0, "heldout_agreement": 0.52}]}))
    ar = bench(10.0, 100.0)
    alone = bench(4.0, 250.0)  # c = 0.4
    per_k = {1: bench(8.0, 125.0, 0.6, [0.6], 1.6),
             2: bench(9.0, 111.0, 0.45, [0.6, 0.3], 1.9)}
    t1 = bench(9.0, 110.0, 0.3, [0.3], 1.3)
    cfg = EvalConfig(max_k=2, num_prompts=4, output_len=8)
    return _summarise(cfg, tmp_path / "target", draft, ar, ar, alone, per_k, t1)


def test_summary_follows_the_formulas(summary):
    assert summary["cost_ratio"] == pytest.approx(0.4)
    assert summary["acceptance_rate_greedy"] == 0.6
    assert summary["acceptance_rate_t1"] == 0.3
    # Expected speed-ups come from alpha and c for k = 1..5, even where only k <= 2 was measured.
    assert sorted(summary["expected_sd_speedup_per_k"]) == [1, 2, 3, 4, 5]
    assert summary["expected_sd_speedup_per_k"][3] == pytest.approx(
        theory.sd_speedup(0.6, 3, 0.4))
    assert summary["best_k"] == theory.best_k(0.6, 0.4, "sd", k_max=5)
    assert summary["expected_sd_speedup"] == pytest.approx(
        max(theory.sd_speedup(0.6, k, 0.4) for k in range(1, 6)))
    assert summary["expected_psd_speedup"] == pytest.approx(
        max(theory.psd_speedup(0.6, k, 0.4) for k in range(1, 6)))
    assert summary["measured_sd_speedup_per_k"] == {1: 1.25, 2: 1.11}
    # The drafter's own training report rides along.
    assert summary["draft_layers"] == 4
    assert summary["draft_train_minutes"] == 8.0
    assert summary["draft_heldout_agreement"] == 0.52


def test_tables(summary, tmp_path):
    text = format_evaluation(summary)
    assert "acceptance (greedy, k=1): 0.600" in text
    assert "cost ratio c (drafter step / target step): 0.400" in text
    other = {**summary, "draft": str(tmp_path / "d8"), "draft_layers": 8,
             "acceptance_rate_greedy": 0.7}
    table = format_comparison([summary, other])
    rows = table.splitlines()[3:]
    assert len(rows) == 2
    assert rows[0].split()[:4] == [f"{tmp_path.name}/d4", "4", "8.0", "0.520"]
    assert rows[1].split()[:2] == [f"{tmp_path.name}/d8", "8"] and "0.700" in rows[1]


def test_comparison_plot(summary, tmp_path):
    from minedraft.reporting.plots import plot_drafter_comparison

    assert summary["draft_train_curve"] == [[8.0, 0.52]]  # from the report's final point
    path = tmp_path / "cmp.png"
    plot_drafter_comparison([summary, {**summary, "draft": str(tmp_path / "d8")}], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stop_at_eos_measures_speedup_against_served_ar(tmp_path):
    """With --stop-at-eos the cost ratio still comes from the fixed-length runs, the measured
    speed-up from the runs that end at EOS."""
    fixed_ar, served_ar = bench(10.0, 100.0), bench(6.0, 80.0)
    per_k = {1: bench(5.0, 100.0, 0.6, [0.6], 1.6)}
    cfg = EvalConfig(max_k=1, stop_at_eos=True)
    r = _summarise(cfg, tmp_path, tmp_path, fixed_ar, served_ar, bench(4.0, 250.0), per_k,
                   bench(5.0, 90.0, 0.3, [0.3], 1.3))
    assert r["cost_ratio"] == pytest.approx(0.4)
    assert r["measured_sd_speedup_per_k"][1] == pytest.approx(1.25)
    assert r["ar_output_throughput_tok_s"] == 80.0
    assert "ending at EOS" in format_evaluation(r)
