"""The regime map's arithmetic (best k per cell, winners, ratios, the paper's protocol), the
advisor and the simulator checked against a map, and the demo's advice, on synthetic results."""

from __future__ import annotations

import math

import pytest

from minedraft.reporting.regimes import regime_map, format_map, write_map, write_validation


def run(label, k, c, tput, protocol="equal", rate=math.inf, e2el=1000.0):
    return {"label": label, "k": k, "concurrency": c, "protocol": protocol,
            "request_rate": str(rate), "output_throughput_tok_s": tput, "mean_e2el_ms": e2el,
            "mean_tpot_ms": 20.0, "mean_ttft_ms": 100.0, "num_requests": 8,
            "config": {"target_cores": "all" if label.endswith("@all") else "0",
                       "num_speculative_tokens": k or 1, "seed": 0}}


DOC = {"plan": {"modes": ["ar@0", "sd-ext", "psd", "auto"], "ks": [1, 2], "output_len": 16,
                "prompts_per_slot": 3, "max_prompts": 16, "seed": 0},
       "runs": [run("ar@0", None, 1, 50), run("ar@0", None, 8, 300),
                run("sd-ext", 1, 1, 70), run("sd-ext", 2, 1, 75), run("sd-ext", 1, 8, 200),
                run("sd-ext", 2, 8, 180),
                run("psd", 1, 1, 60), run("psd", 2, 1, 72), run("psd", 1, 8, 250),
                run("psd", 2, 8, 240), run("psd", 2, 1, 110, "paper"),
                run("psd", 1, 8, 320, "paper"),
                run("auto", 2, 1, 74), run("auto", 2, 8, 290),
                run("ar@0", None, None, 60, "rate", 2.0, 900.0),
                run("psd", 2, None, 60, "rate", 2.0, 700.0)]}


def test_map_picks_each_modes_best_k_and_the_winner():
    m = regime_map(DOC)
    rows = {r["concurrency"]: r for r in m["rows"]}
    assert rows[1]["best_k"]["sd-ext"] == 2 and rows[8]["best_k"]["psd"] == 1
    assert rows[1]["winner"] == "sd-ext" and rows[8]["winner"] == "ar@0"  # auto never "wins"
    assert rows[1]["psd_over_sd_ext"] == pytest.approx(72 / 75)
    assert rows[8]["psd_over_best_other"] == pytest.approx(250 / 300)
    assert rows[8]["paper_psd_2c"] == 320
    assert rows[8]["paper_psd_2c_over"]["sd-ext"] == pytest.approx(320 / 200)
    assert rows[8]["auto_over_best_same_cores"] == pytest.approx(290 / 300)
    assert [(r["label"], r["k"]) for r in m["rates"]] == [("ar@0", None), ("psd", 2)]
    text = format_map(m)
    assert "| 8 | 300 | 200 (k=1) | 250 (k=1) | 290 (k=2) | ar@0 | 1.25x | 0.83x | 0.97x |" in text


def test_map_files_and_validation(tmp_path):
    from minedraft.core.costmodel import load_profile
    write_map(DOC, tmp_path)
    assert (tmp_path / "regimes.md").is_file() and (tmp_path / "throughput_vs_concurrency.png").is_file()
    profile = load_profile({
        "kind": "minedraft-cost-profile", "k": 2, "acceptance_per_position": [0.6, 0.4],
        "target": {"decode_ms": [[1, 20.0], [16, 30.0]], "verify_ms": [[1, 20.0], [48, 35.0]]},
        "drafter": {"round_ms": [[1, 1, 5.0], [16, 1, 9.0], [1, 2, 9.0], [16, 2, 17.0]]},
        "workload": {"prompt_lens": [100] * 16}, "devices": {"target_cores": "0"}})
    summary = write_validation(DOC, profile, tmp_path, "synthetic")
    assert "simulator:" in summary and "advisor:" in summary
    assert (tmp_path / "validation.md").read_text().count("| psd |") >= 2


def test_demo_advice_names_the_fastest_mode_and_why():
    from minedraft.reporting.demo import DemoPlan, advice, format_demo
    plan = DemoPlan(concurrency=8)

    def r(label, tput, in_flight=8, **kw):
        return {"label": label, "output_throughput_tok_s": tput, "in_flight": in_flight,
                "mean_tpot_ms": 25.0, "config": {"target_cores": "0"}, **kw}

    results = [r("ar@all", 400), r("ar@0", 300), r("sd-ext", 200, mean_verify_ms=30.0,
                                                     mean_draft_ms=20.0),
               r("psd", 240, mean_verify_ms=26.0, mean_draft_ms=19.0, overlap_efficiency=0.9),
               r("psd 2C", 320, in_flight=16), r("auto", 295)]
    text = advice(results, plan)
    assert text.startswith("here, at 8 in flight, run ar@all") and "psd reaches 0.60x" in text
    table = format_demo(results, plan)
    assert "paper's protocol: psd with 16 in flight = 1.60x sd-ext with 8" in table
