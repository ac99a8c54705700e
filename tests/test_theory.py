"""minedraft.theory against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from minedraft import theory


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
