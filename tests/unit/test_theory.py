"""minedraft.theory against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from minedraft.analysis import theory


def test_expected_tokens_per_step():
    assert theory.expected_tokens_per_step(0.8, 4) == pytest.approx(1 + 0.8 + 0.64 + 0.512 + 0.4096)
    assert theory.expected_tokens_per_step(0.8, 4) == pytest.approx(3.3616)
    assert theory.expected_tokens_per_step(0.0, 5) == 1.0
    assert theory.expected_tokens_per_step(1.0, 3) == 4.0
    # Continuous at the alpha -> 1 limit.
    assert theory.expected_tokens_per_step(1 - 1e-12, 3) == pytest.approx(4.0)


def test_sd_speedup():
    assert theory.sd_speedup(0.8, 4, 0.25) == pytest.approx(3.3616 / 2)
    assert theory.sd_speedup(0.0, 1, 0.0) == 1.0


def test_psd_speedup_over_sd():
    assert theory.psd_speedup_over_sd(0.5, 4, 0.25) == 2.0  # k c = 1: full overlap halves the step
    assert theory.psd_speedup_over_sd(0.5, 1, 0.1) == pytest.approx(1.1)
    assert theory.psd_speedup_over_sd(0.5, 4, 0.5) == pytest.approx(1.5)  # (2 + 1) / 2
    assert theory.psd_speedup_over_sd(0.5, 4, 0.0) == 1.0


def test_psd_speedup_is_product():
    assert theory.psd_speedup(0.8, 4, 0.25) == pytest.approx(3.3616)
    for alpha, k, c in [(0.3, 2, 0.05), (0.9, 6, 0.4), (0.6, 3, 1.0)]:
        assert theory.psd_speedup(alpha, k, c) == pytest.approx(
            theory.sd_speedup(alpha, k, c) * theory.psd_speedup_over_sd(alpha, k, c))


def test_theorem1_threshold():
    x = theory.theorem1_threshold()
    assert x == pytest.approx(1.678, abs=1e-3)
    w = -(x + 1)
    assert w * math.exp(w) == pytest.approx(-1 / (2 * math.e), rel=1e-12)
    assert w < -1  # the W_{-1} branch


def test_theorem1_ratio():
    assert theory.theorem1_ratio() == pytest.approx(1.596, abs=1e-3)
    x = theory.theorem1_threshold()
    assert theory.theorem1_ratio() == pytest.approx((1 + x) / x)


def test_best_k():
    # With free drafting every extra token helps.
    assert theory.best_k(0.9, 0.0, "sd") == 8
    assert theory.best_k(0.9, 0.0, "sd", k_max=5) == 5
    assert theory.best_k(0.9, 0.0, "psd") == 8
    # alpha = 0.8, c = 0.1: sd speed-ups for k = 1..7 are
    # 1.636, 2.033, 2.271, 2.401, 2.460, 2.470, 2.448 -> k = 6.
    assert theory.best_k(0.8, 0.1, "sd") == 6
    # Nothing is ever accepted: the shortest draft is least bad.
    assert theory.best_k(0.0, 0.5, "sd") == 1


def test_advise():
    advice = theory.advise(0.0, 0.5)
    assert advice.mode == "ar"
    assert advice.predicted_speedup_over_ar == 1.0
    assert advice.reason

    advice = theory.advise(0.8, 0.25)
    assert advice.mode == "psd"
    assert advice.k == theory.best_k(0.8, 0.25, "psd")
    expected = theory.psd_speedup(0.8, advice.k, 0.25)
    assert advice.predicted_speedup_over_ar == pytest.approx(expected)
    assert f"{advice.predicted_speedup_over_ar:.2f}x" in advice.reason

    # Free drafting: psd cannot beat sd, and the simpler mode wins the tie.
    advice = theory.advise(0.9, 0.0)
    assert (advice.mode, advice.k) == ("sd", 8)


@pytest.mark.parametrize("call", [
    lambda: theory.expected_tokens_per_step(1.5, 4),
    lambda: theory.expected_tokens_per_step(-0.1, 4),
    lambda: theory.expected_tokens_per_step(0.5, 0),
    lambda: theory.expected_tokens_per_step(0.5, 2.5),
    lambda: theory.sd_speedup(0.5, 4, -1),
    lambda: theory.sd_speedup(1.5, 4, 0.1),
    lambda: theory.psd_speedup_over_sd(1.5, 4, 0.1),
    lambda: theory.psd_speedup_over_sd(0.5, 0, 0.1),
    lambda: theory.psd_speedup_over_sd(0.5, 4, -1),
    lambda: theory.psd_speedup(0.5, 4, -1),
    lambda: theory.best_k(0.5, 0.1, "ar"),
    lambda: theory.best_k(0.5, 0.1, "sd", k_max=0),
    lambda: theory.advise(1.5, 0.1),
    lambda: theory.advise(0.5, -1),
])
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


# --------------------------------------------------------------------------- the advise command

def run_advise(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "minedraft", "advise", *args],
                          capture_output=True, text=True, timeout=120)


def test_advise_cli_prints_worked_values(tmp_path):
    # alpha = 0.8, k = 4, c = 0.25 (worked by hand above): E = 3.3616, SD 3.3616 / 2 = 1.6808,
    # PSD over SD (kc + 1) / max(kc, 1) = 2, PSD over ar 3.3616; best psd k = 4 -> 3.36x.
    out = tmp_path / "advice.json"
    proc = run_advise("--alpha", "0.8", "--k", "4", "--c", "0.25", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "3.362" in text and "1.681x" in text and "2.000x" in text
    assert "1.678" in text and "1.596" in text
    assert "recommended" in text and "psd with k=4" in text
    import json
    doc = json.loads(out.read_text())
    assert doc["expected_tokens_per_step"] == pytest.approx(3.3616)
    assert doc["sd_speedup"] == pytest.approx(1.6808)
    assert doc["psd_speedup_over_sd"] == pytest.approx(2.0)
    assert doc["theorem1_threshold"] == pytest.approx(1.678, abs=1e-3)
    assert doc["recommended"]["mode"] == "psd" and doc["recommended"]["k"] == 4
    assert doc["recommended"]["predicted_speedup_over_ar"] == pytest.approx(3.3616)


def test_advise_cli_recommends_ar_when_nothing_pays():
    # alpha = 0.3, c = 1: E(k=1) = 1.3 against a step of 2 (sd) or 1 (psd, ideal) -> psd 1.3x at
    # k=1: psd still wins over ar; with c = 2 and alpha = 0.1 nothing beats ar.
    proc = run_advise("--alpha", "0.1", "--k", "1", "--c", "2")
    assert proc.returncode == 0, proc.stderr
    assert "recommended                      ar" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--alpha", "1", "--k", "3", "--c", "0.1"], "must be in [0, 1)"),
    (["--alpha", "-0.1", "--k", "3", "--c", "0.1"], "must be in [0, 1)"),
    (["--alpha", "x", "--k", "3", "--c", "0.1"], "expected a number"),
    (["--alpha", "0.5", "--k", "0", "--c", "0.1"], "must be >= 1"),
    (["--alpha", "0.5", "--k", "3", "--c", "-1"], "must be a finite number >= 0"),
    (["--alpha", "0.5", "--k", "3", "--c", "inf"], "must be a finite number >= 0"),
    (["--alpha", "0.5"], "--k, --c required"),
    (["--profile", "/no/such/profile.json"], "profile file not found"),
])
def test_advise_cli_bad_input_one_line(args, message):
    proc = run_advise(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_advise_cli_with_scenario_profile():
    proc = run_advise("--profile", "qwen3-32b-tp4_qwen3-1.7b", "--batch", "32", "--k", "3")
    assert proc.returncode == 0, proc.stderr
    assert "assumption: ASSUMPTION" in proc.stdout and "batch 32" in proc.stdout
