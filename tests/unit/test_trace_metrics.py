"""The step trace (one typed record, one reader) and the /metrics it feeds, on synthetic records."""

from __future__ import annotations

import types

import pytest

from minedraft.core.trace import (StepRecord, TraceTail, encode_record, overlap_efficiency,
                                  read_trace, trace_metrics, trace_size)


def rec(**kw):
    base = dict(verify=2, draft=2, step_ms=10.0, verify_ms=6.0, draft_ms=8.0, kind="psd",
                overlapped=True, drafter_up=True, k=3)
    return StepRecord(**{**base, **kw})


def test_records_round_trip_and_offsets(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(encode_record(rec(step=0)) + encode_record(rec(step=1)))
    offset = trace_size(str(path))
    with open(path, "ab") as f:
        f.write(encode_record(rec(step=2)) + b'{"step": 3, "verify')  # a line cut by a crash
    assert [r.step for r in read_trace(str(path))] == [0, 1, 2]
    assert [r.step for r in read_trace(str(path), offset)] == [2]
    assert read_trace(str(tmp_path / "missing.jsonl")) == []


def test_tail_returns_complete_lines_once(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    tail = TraceTail(str(path))
    line = encode_record(rec(step=5))
    with open(path, "ab") as f:
        f.write(line[:10])
    assert tail.read() == []
    with open(path, "ab") as f:
        f.write(line[10:] + encode_record(rec(step=6)))
    assert [r.step for r in tail.read()] == [5, 6]
    assert tail.read() == []


def test_overlap_and_summary():
    assert overlap_efficiency(rec()) == pytest.approx(0.8)
    assert overlap_efficiency(rec(draft_ms=20.0)) == 1.0
    m = trace_metrics([rec(), rec(sides=(3, 1), verify_ms=10.0, draft_ms=None, kind="none",
                          overlapped=False), rec(verify=0)])
    assert m["num_steps"] == 2 and m["mean_draft_ms"] == 8.0
    assert m["overlap_efficiency"] == pytest.approx((8 + 10) / 20)  # ratio of sums
    assert m["overlap_efficiency_per_step"] == pytest.approx((0.8 + 1.0) / 2)
    assert m["overlapped_step_share"] == 0.5 and m["max_side_imbalance"] == 2
    assert m["steps_per_kind"] == {"psd": 1, "sequential": 0, "none": 1}


def _sample(name, labels):
    from prometheus_client import REGISTRY
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_stat_logger_counts_what_the_trace_and_vllm_say(tmp_path):
    from minedraft.vllm_ext.stat_logger import PSDStatLogger

    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    config = types.SimpleNamespace(
        additional_config={"minedraft": {"trace_path": str(path), "mode": "psd"}},
        model_config=types.SimpleNamespace(served_model_name="stat-test"),
        speculative_config=types.SimpleNamespace(num_speculative_tokens=3))
    logger = PSDStatLogger(config, engine_index=0)
    labels = {"model_name": "stat-test", "engine": "0"}
    assert _sample("minedraft:psd_drafter_up", labels) == 1  # up before any step
    with open(path, "ab") as f:
        for r in [rec(), rec(kind="sequential", overlapped=False),
                  rec(drafter_up=False, restarts=1, failures=2, kind="none", draft_ms=None,
                      overlapped=False),
                  rec(verify=0, restarts=1, overlapped=False)]:
            f.write(encode_record(r))
    spec = types.SimpleNamespace(num_draft_tokens=12, num_accepted_tokens=5)
    logger.record(types.SimpleNamespace(spec_decoding_stats=spec), None)
    assert _sample("minedraft:psd_steps_total", labels) == 4
    assert _sample("minedraft:psd_overlapped_steps_total", labels) == 1
    assert _sample("minedraft:psd_steps_by_kind_total", {**labels, "kind": "sequential"}) == 1
    assert _sample("minedraft:psd_draft_tokens_total", labels) == 12
    assert _sample("minedraft:psd_accepted_tokens_total", labels) == 5
    assert _sample("minedraft:psd_acceptance_rate", labels) == pytest.approx(5 / 12)
    assert _sample("minedraft:psd_drafter_restarts_total", labels) == 1
    assert _sample("minedraft:psd_drafter_up", labels) == 1  # the last record: up again
    assert _sample("minedraft:psd_drafter_failures", labels) == 0
    assert _sample("minedraft:psd_verify_batch_size_count", labels) == 3
    assert _sample("minedraft:psd_overlap_efficiency_sum", labels) == pytest.approx(
        0.8 + 0.8 + 0.6)
    assert _sample("minedraft:info", {**labels, "mode": "psd", "k": "3"}) == 1
