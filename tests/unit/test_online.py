"""The online benchmark's arithmetic without a server: goodput with thresholds, /metrics parsing
and the PSD keys it derives, and loads that change over time."""

from __future__ import annotations

import math

import pytest

from minedraft.bench.online import OnlineOptions, meets_goodput, parse_metrics, server_metrics
from minedraft.bench.runner import RequestResult, arrival_offsets


def result(ttft_s, tokens, e2e_s):
    r = RequestResult(0, 10, token_ids=list(range(tokens)), submit_time=0.0)
    r.first_token_time, r.finish_time = ttft_s, e2e_s
    return r


@pytest.mark.parametrize("ttft, tpot, good", [(None, None, True), (500, None, True),
                                              (400, None, False), (None, 100, True),
                                              (None, 99, False), (500, 100, True)])
def test_goodput_thresholds(ttft, tpot, good):
    # TTFT 450 ms; 11 tokens, the last 10 in 1 s: TPOT 100 ms
    r = result(0.45, 11, 1.45)
    assert meets_goodput(r, OnlineOptions(base_url="x", goodput_ttft_ms=ttft,
                                   goodput_tpot_ms=tpot)) is good


def test_psd_keys_from_two_scrapes():
    text_before = "\n".join([
        "# TYPE vllm:spec_decode_num_drafts counter", "vllm:spec_decode_num_drafts_total 10",
        "# TYPE vllm:spec_decode_num_draft_tokens counter",
        "vllm:spec_decode_num_draft_tokens_total 20",
        "# TYPE vllm:spec_decode_num_accepted_tokens counter",
        "vllm:spec_decode_num_accepted_tokens_total 8", ""])
    text_after = text_before.replace("_total 10", "_total 30").replace("_total 20", "_total 60") \
        .replace("_total 8", "_total 28")
    d = server_metrics(parse_metrics(text_before), parse_metrics(text_after))
    assert d["num_drafts"] == 20 and d["num_draft_tokens"] == 40
    assert d["acceptance_rate"] == pytest.approx(0.5)
    assert d["mean_accepted_length"] == pytest.approx(2.0)


def test_changing_load():
    offsets = arrival_offsets(300, ((1.0, 100), (10.0, 100), (1.0, 100)), seed=0)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    slow1, fast, slow2 = gaps[:99], gaps[100:199], gaps[200:]
    assert sum(slow1) / len(slow1) == pytest.approx(1.0, rel=0.25)
    assert sum(fast) / len(fast) == pytest.approx(0.1, rel=0.25)
    assert sum(slow2) / len(slow2) == pytest.approx(1.0, rel=0.25)
    assert arrival_offsets(3, math.inf, 0) == [0.0, 0.0, 0.0]
