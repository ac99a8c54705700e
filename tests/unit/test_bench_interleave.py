"""`bench --interleave`: engines' repeats taken in turn, each with its own warm-up."""

import types

from minedraft.runtime import api


class FakeEngine:
    def __init__(self, mode: str):
        self.config = types.SimpleNamespace(mode=mode, trace_path=None)
        self.spec = types.SimpleNamespace(reset=lambda: None, summary=lambda: {})
        self.startup_s = 1.0


def test_repeats_alternate_between_engines_and_each_starts_warm(monkeypatch):
    calls = []

    def run_requests(engine, requests, params, **kwargs):
        warm = len(requests) == 4  # the warm-up serves the first 4 of the 6
        calls.append((engine.config.mode, "warm-up" if warm else kwargs["seed"]))
        return [], 10.0 * len(calls)

    monkeypatch.setattr(api, "run_requests", run_requests)
    monkeypatch.setattr(api, "serving_metrics",
                        lambda results, duration: {"output_throughput_tok_s": duration})
    engines = [FakeEngine("ar"), FakeEngine("auto")]
    out = api.benchmark_interleaved(engines, ["prompt"] * 6, repeats=2, seed=5, progress=False)
    assert calls == [("ar", "warm-up"), ("ar", 5), ("auto", "warm-up"), ("auto", 5),
                     ("ar", "warm-up"), ("ar", 6), ("auto", "warm-up"), ("auto", 6)]
    assert [r["mode"] for r in out] == ["ar", "auto"]
    assert [run["output_throughput_tok_s"] for run in out[1]["runs"]] == [40.0, 80.0]
    assert out[1]["output_throughput_tok_s"] == 60.0  # the median of its own runs

    calls.clear()  # one engine: one warm-up, as `benchmark` always did
    api.benchmark(FakeEngine("ar"), ["prompt"] * 6, repeats=3, progress=False)
    assert [c[1] for c in calls] == ["warm-up", 0, 1, 2]
