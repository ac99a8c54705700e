import math
import os
import sys

import pytest

from minedraft.bench.metrics import median_of_runs, segment_metrics, serving_metrics
from minedraft.bench.runner import RequestResult, arrival_offsets
from minedraft.core.cores import parse_cores
from minedraft.core.errors import ConfigError
from minedraft.runtime.config import EngineConfig


def test_arrivals_all_at_once_and_poisson():
    assert arrival_offsets(5, math.inf, 0) == [0.0] * 5
    offsets = arrival_offsets(4000, 10.0, 1)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert offsets == sorted(offsets) and offsets == arrival_offsets(4000, 10.0, 1)
    assert abs(sum(gaps) / len(gaps) - 0.1) < 0.01  # mean gap = 1 / rate


def test_serving_metrics_worked_example():
    # Request 0: submitted at 0, first token at 0.1 s, 5 tokens by 0.5 s -> TPOT 100 ms.
    # Request 1: submitted at 1, first token at 1.3 s, 3 tokens by 1.5 s -> TPOT 100 ms.
    r0 = RequestResult(0, 10, [1] * 5, submit_time=0.0, first_token_time=0.1, finish_time=0.5)
    r1 = RequestResult(1, 20, [1] * 3, submit_time=1.0, first_token_time=1.3, finish_time=1.5)
    m = serving_metrics([r0, r1], duration_s=2.0)
    assert m["num_requests"] == 2 and m["total_output_tokens"] == 8
    assert m["output_throughput_tok_s"] == pytest.approx(4.0)
    assert m["request_throughput_req_s"] == pytest.approx(1.0)
    assert m["mean_ttft_ms"] == pytest.approx(200.0)
    assert m["mean_tpot_ms"] == pytest.approx(100.0)
    assert m["mean_e2el_ms"] == pytest.approx(500.0)
    assert m["p50_e2el_ms"] == pytest.approx(500.0)
    assert m["p99_e2el_ms"] == pytest.approx(500.0)


def test_segment_metrics_split_a_changing_load_by_its_schedule():
    """Two requests at 1 req/s, then one at 5 req/s: each part over its own requests and span
    (a request that did not finish is left out)."""
    rs = [RequestResult(0, 10, [1] * 4, submit_time=0.0, first_token_time=0.1, finish_time=0.4),
          RequestResult(1, 10, [1] * 4, submit_time=1.0, first_token_time=1.1, finish_time=2.0),
          RequestResult(2, 10, [1] * 6, submit_time=2.0, first_token_time=2.5, finish_time=5.0),
          RequestResult(3, 10, [], submit_time=2.1)]
    low, high = segment_metrics(rs, ((1.0, 2), (5.0, 2)))
    assert low["request_rate"] == 1.0 and low["num_requests"] == 2
    assert low["mean_e2el_ms"] == pytest.approx(700.0)
    assert low["output_throughput_tok_s"] == pytest.approx(4.0)  # 8 tokens over 0 .. 2 s
    assert high["num_requests"] == 1 and high["mean_e2el_ms"] == pytest.approx(3000.0)


def test_median_of_runs():
    runs = [{"mode": "ar", "x": 1.0}, {"mode": "ar", "x": 5.0}, {"mode": "ar", "x": 2.0}]
    assert median_of_runs(runs) == {"mode": "ar", "x": 2.0}


def test_median_of_runs_where_some_runs_lack_a_number():
    """An `auto` repeat that never drafted has no acceptance (bench --repeats 2 at 64 in flight
    failed with a KeyError, 2026-12-01 21:00): it is the median of the runs that have it."""
    runs = [{"mode": "auto", "x": 1.0}, {"mode": "auto", "x": 3.0, "acceptance_rate": 0.5},
            {"mode": "auto", "x": 2.0, "acceptance_rate": None}]
    assert median_of_runs(runs) == {"mode": "auto", "x": 2.0, "acceptance_rate": 0.5}
    assert median_of_runs(runs[:1]) == {"mode": "auto", "x": 1.0}


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "fast"}, "unknown mode"),
    ({"num_speculative_tokens": 0}, ">= 1"),
    ({"mode": "sd", "draft_cores": "1"}, "sd-ext, psd and auto only"),
    ({"mode": "psd", "target_cores": "0-1", "draft_cores": "1"}, "overlap"),
    ({"target_cores": "a-b"}, "bad core list"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig(**kwargs).validate()


def test_parse_cores():
    assert parse_cores("0") == [0]
    assert parse_cores("all") == sorted(parse_cores("all"))


# --------------------------------------------------------------------------- PSD settings

def test_bad_psd_settings_are_refused(tiny_drafter_dir, tmp_path):
    from minedraft.models import ModelError
    from minedraft.vllm_ext.settings import PSDSettings

    def settings(bind, **extra):
        return PSDSettings.from_dict(extra, target_bind=bind)

    with pytest.raises(ConfigError, match="unknown minedraft settings"):
        settings("0", draft=str(tiny_drafter_dir), speed="max")
    with pytest.raises(ConfigError, match="needs additional_config.minedraft.draft"):
        settings("0")
    with pytest.raises(ModelError, match="model not found|config.json"):
        settings("0", draft=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="overlap the target"):
        settings("0,1", draft=str(tiny_drafter_dir), draft_cores="1")
    with pytest.raises(ConfigError, match="mode must be"):
        settings("0", draft=str(tiny_drafter_dir), mode="fast")
    with pytest.raises(ConfigError, match="draft_address must be"):
        settings("0", draft_address="localhost:5599")
    ok = settings("0", draft=str(tiny_drafter_dir), draft_cores="1")
    assert ok.overlap and ok.draft_cores == "1" and ok.backend == "lean"
    shared = settings("0|1", draft=str(tiny_drafter_dir), draft_cores="1", shared_cores=True)
    assert shared.shared_cores
    assert settings("0", draft_address="tcp://10.0.0.2:5599").draft == ""
    assert settings("0", draft=str(tiny_drafter_dir), draft_gpu="4").backend == "vllm"


def test_engine_core_keeps_to_the_targets_cores_when_the_drafter_has_its_own(tiny_drafter_dir):
    """vLLM's engine core spins while it waits for its workers: with a drafter on cores of its
    own it is kept to the target's cores; otherwise it is left alone."""
    from minedraft.vllm_ext.settings import PSDSettings

    def cores(bind, **extra):
        return PSDSettings.from_dict({"draft": str(tiny_drafter_dir), **extra},
                                     target_bind=bind).engine_core_cores(bind)

    assert cores("0", draft_cores="1") == [0]
    assert cores("0|1", draft_cores="1", shared_cores=True) is None
    assert cores("auto", draft_cores="1") is None and cores("all", draft_cores="1") is None
    assert cores("0", shared_cores=True) is None  # drafter on every core
    assert cores("0", draft_cores="1", draft_gpu="0") is None
    assert PSDSettings.from_dict({"draft_address": "tcp://10.0.0.2:5599"}, target_bind="0") \
        .engine_core_cores("0") is None


def test_a_process_started_by_a_pinned_engine_core_can_pin_itself_elsewhere():
    """The drafter inherits the engine core's cores; it checks its own against the machine's."""
    import os
    import subprocess
    import sys
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this test needs 2 cores (CI has 2)")
    first, second = sorted(os.sched_getaffinity(0))[:2]
    code = (f"import os; os.sched_setaffinity(0, {{{first}}}); "
            "from minedraft.core.cores import pin_process; "
            f"print(pin_process('{second}'), sorted(os.sched_getaffinity(0)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [f"[{second}]", f"[{second}]"]
    from minedraft.core.cores import pin_process
    with pytest.raises(ConfigError, match="does not have"):
        pin_process(str(os.cpu_count() + 3))


def test_the_engine_core_is_held_to_the_targets_cores_only_while_asked():
    """The PSD scheduler holds vLLM's engine core to the target's cores in steps that draft and
    lets it go back to its own cores in steps without drafts: every thread, the ones started
    while held included (they inherit the mask)."""
    import os
    import threading

    from minedraft.core.cores import ThreadPinning
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.fail("this test needs 2 cores (CI has 2)")
    first = min(before)
    seen, go = {}, threading.Event()

    def worker():
        seen["start"] = os.sched_getaffinity(0)
        go.wait(5)
        seen["after"] = os.sched_getaffinity(0)

    pinning = ThreadPinning([first])
    try:
        pinning.hold(True)
        thread = threading.Thread(target=worker)
        thread.start()
        pinning.hold(True)  # no change: nothing to do
        assert os.sched_getaffinity(0) == {first}
        pinning.hold(False)
        go.set()
        thread.join()
        assert seen == {"start": {first}, "after": before} and os.sched_getaffinity(0) == before
    finally:
        os.sched_setaffinity(0, before)


def test_vocabulary_fingerprint_tells_tokenizers_apart(tokenizer):
    from transformers import AutoTokenizer

    from minedraft.core.messages import vocab_fingerprint
    assert vocab_fingerprint(tokenizer) == vocab_fingerprint(tokenizer)
    other = AutoTokenizer.from_pretrained(str(tokenizer.name_or_path))
    other.add_tokens(["<minedraft-extra>"])
    assert vocab_fingerprint(other) != vocab_fingerprint(tokenizer)


def test_vllm_processes_get_intel_openmp_preloaded_unless_present_or_turned_off(tmp_path,
                                                                               monkeypatch):
    from minedraft.runtime.engine import engine_env, intel_openmp_preload
    (tmp_path / "lib").mkdir()
    lib = tmp_path / "lib" / "libiomp5.so"
    assert intel_openmp_preload({}, prefix=str(tmp_path)) == {}  # not installed: nothing
    lib.write_bytes(b"")
    assert intel_openmp_preload({}, prefix=str(tmp_path)) == {"LD_PRELOAD": str(lib)}
    # what the user preloads stays, after it
    assert intel_openmp_preload({"LD_PRELOAD": "/x/libtcmalloc.so"}, prefix=str(tmp_path)) == \
        {"LD_PRELOAD": f"{lib}:/x/libtcmalloc.so"}
    assert intel_openmp_preload({"LD_PRELOAD": "/y/libiomp5.so"}, prefix=str(tmp_path)) == {}
    assert intel_openmp_preload({"MINEDRAFT_INTEL_OPENMP": "0"}, prefix=str(tmp_path)) == {}
    # the installed wheel (constraints-cpu.txt pins intel-openmp) reaches the engine's env
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("MINEDRAFT_INTEL_OPENMP", raising=False)
    installed = os.path.join(sys.prefix, "lib", "libiomp5.so")
    if os.path.exists(installed):
        env = engine_env(EngineConfig(mode="ar", target_cores="0"))
        assert env["LD_PRELOAD"] == installed
