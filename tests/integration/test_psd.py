"""PSD and sd-ext on the real bundled pair (float32, eager): exactness under arrivals, aborts and
preemption, speculation that matches sd-ext's, the sampled distribution at several draft
positions, seeded sampling that ignores its neighbours, structured outputs, and a drafter that
crashes or hangs mid-run (these last, as they restart the drafter)."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest
from conftest import EXACT

from minedraft.bench.runner import run_requests
from minedraft.bench.workloads import Request
from minedraft.core.trace import read_trace, trace_metrics, trace_size
from minedraft.runtime.api import generate

MAX_TOKENS = 32
ABORTS = {3: 5, 17: 10, 31: 1}  # request index -> abort once it has this many tokens
SPEC = {}  # mode -> acceptance summary of the exactness run (compared across modes)


# --------------------------------------------------------------------------- engines

def _external_engine(mode, target_dir, drafter_dir, tmp_path_factory):
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine, environment
    folder = tmp_path_factory.mktemp(mode)
    log = folder / "vllm.log"
    logging_config = folder / "logging.json"
    logging_config.write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log),
                              "formatter": "plain"}},
        "loggers": {name: {"handlers": ["file"], "level": "INFO", "propagate": False}
                    for name in ("vllm", "minedraft")}}))
    config = EngineConfig(mode=mode, target=str(target_dir), draft=str(drafter_dir),
                          num_speculative_tokens=3, target_cores="0", draft_cores="1",
                          drafter_log=str(folder / "drafter.log"), drafter_timeout_s=5.0,
                          **EXACT)
    # The engine core (and the drafter it starts) log to `log`; a KV cache of 64 blocks of 32
    # tokens forces preemption with 50 requests.
    with environment({"VLLM_LOGGING_CONFIG_PATH": str(logging_config)}):
        engine = Engine(config, extra_args={"block_size": 32, "num_gpu_blocks_override": 64})
    engine.log_path = log
    return engine


@pytest.fixture(scope="module")
def psd_engine(target_dir, drafter_dir, tmp_path_factory):
    engine = _external_engine("psd", target_dir, drafter_dir, tmp_path_factory)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def sd_ext_engine(target_dir, drafter_dir, tmp_path_factory):
    engine = _external_engine("sd-ext", target_dir, drafter_dir, tmp_path_factory)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def auto_engine(target_dir, drafter_dir, tmp_path_factory):
    engine = _external_engine("auto", target_dir, drafter_dir, tmp_path_factory)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def engines(psd_engine, sd_ext_engine, request):
    """mode -> engine, started on first use."""
    return {"psd": psd_engine, "sd-ext": sd_ext_engine,
            "auto": lambda: request.getfixturevalue("auto_engine")}


def _engine_for(engines, mode):
    engine = engines[mode]
    return engine() if callable(engine) else engine


@pytest.fixture(scope="module")
def varied_prompts(tokenizer):
    from minedraft.bench.workloads import sharegpt_requests
    prompts = sharegpt_requests(tokenizer, 50, seed=2, max_prompt_len=384)
    lengths = sorted(len(p.prompt_token_ids) for p in prompts)
    assert lengths[0] < 40 and lengths[-1] > 200  # short and long prompts
    return prompts


@pytest.fixture(scope="module")
def ar_reference(ar_engine, varied_prompts):
    return generate(ar_engine, varied_prompts, max_tokens=MAX_TOKENS, progress=False)


def records_since(engine, offset):
    return read_trace(engine.config.trace_path, offset)


# --------------------------------------------------------------------------- exactness

def check_exact(engine, prompts, reference):
    """Greedy output equals `ar` token for token (aborted requests: prefixes of it), nothing is
    left unfinished in the engine, and speculation happened."""
    engine.spec.reset()
    rows = generate(engine, prompts, max_tokens=MAX_TOKENS, progress=False, request_rate=25.0,
                    abort_after=ABORTS)
    for i, (row, ref) in enumerate(zip(rows, reference)):
        if i in ABORTS:
            assert row["finish_reason"] == "abort"
            assert row["token_ids"] == ref["token_ids"][:len(row["token_ids"])], f"prompt {i}"
        else:
            assert row["token_ids"] == ref["token_ids"], f"prompt {i} diverged"
    assert not engine.llm_engine.has_unfinished_requests()
    assert engine.spec.num_preempted > 0, "the run was meant to force preemption"
    stats = engine.spec.summary()
    assert stats["num_drafts"] > 0
    return stats


@pytest.mark.parametrize("mode", ["sd-ext", "psd", "auto"])
def test_greedy_equals_ar(mode, engines, varied_prompts, ar_reference):
    engine = _engine_for(engines, mode)
    offset = trace_size(engine.config.trace_path)
    SPEC[mode] = check_exact(engine, varied_prompts, ar_reference)
    records = records_since(engine, offset)
    metrics = trace_metrics(records)
    assert metrics["drafter_restarts"] == records[0].restarts, "the drafter failed"
    if mode == "psd":
        assert metrics["overlapped_step_share"] > 0.5
        for r in records:  # each overlapped step verifies about half of what decodes
            if r.kind == "psd":
                assert r.verify <= (r.verify + r.draft + r.held) // 2 + 1, r
    elif mode == "sd-ext":
        assert metrics["steps_per_kind"]["psd"] == 0
    else:  # auto tried every kind of step and recorded its choices
        assert all(metrics["steps_per_kind"][kind] > 0 for kind in ("psd", "sequential", "none"))


def test_psd_speculates_like_sd_ext(engines, varied_prompts, ar_reference):
    """Same drafter, same prompts, drafts always made from the request's current state: PSD's
    acceptance equals sd-ext's (up to aborts cut at other points and float noise)."""
    for mode in ("psd", "sd-ext"):  # the exactness runs, unless this test runs alone
        if mode not in SPEC:
            SPEC[mode] = check_exact(_engine_for(engines, mode), varied_prompts, ar_reference)
    psd, ext = SPEC["psd"], SPEC["sd-ext"]
    assert 0.2 < ext["acceptance_rate"] < 0.9
    assert psd["acceptance_rate"] == pytest.approx(ext["acceptance_rate"], abs=0.02)
    for a, b in zip(psd["acceptance_per_position"], ext["acceptance_per_position"]):
        assert a == pytest.approx(b, abs=0.03)
    assert psd["num_draft_tokens"] == pytest.approx(ext["num_draft_tokens"], rel=0.05)


def test_aborted_requests_are_freed_in_the_drafter(psd_engine, varied_prompts):
    offset = trace_size(psd_engine.config.trace_path)
    generate(psd_engine, varied_prompts[:6], max_tokens=40, progress=False,
             abort_after={i: 3 for i in range(6)})
    assert not psd_engine.llm_engine.has_unfinished_requests()
    generate(psd_engine, varied_prompts[6:7], max_tokens=12, progress=False)  # carries the frees
    holds = [r.drafter_holds for r in records_since(psd_engine, offset)
             if r.drafter_holds is not None]
    assert max(holds) >= 2 and holds[-1] <= 1


# --------------------------------------------------------------------------- sampling

def _fit_p(samples, probs, draft):
    """How well `samples` (token ids) fit `probs` (a distribution over the vocabulary): the
    smaller p-value of two chi-square tests, one over all tokens (those expected at least 5 times
    get a cell each, the rest share one) and one on the draft token against all others (where a
    rejection-sampling bug shows first)."""
    from scipy.stats import chisquare
    n = len(samples)
    common = [t for t in range(len(probs)) if probs[t] * n >= 5]
    observed = [samples.count(t) for t in common]
    expected = [float(probs[t]) * n for t in common]
    observed.append(n - sum(observed))
    expected.append(n - sum(expected))
    p_all = chisquare(observed, expected).pvalue
    hits, p_d = samples.count(draft), float(probs[draft])
    p_draft = chisquare([hits, n - hits], [n * p_d, n * (1 - p_d)]).pvalue
    return min(p_all, p_draft)


def _residual_from_p(probs, draft):
    """A real rejection-sampling bug: after rejecting a greedy draft, resample from p itself
    instead of from the residual (p - q)+. What that sampler's output distribution would be."""
    bug = probs * (1 - probs[draft])
    bug[draft] = probs[draft] + (1 - probs[draft]) * probs[draft]
    return bug


@pytest.mark.parametrize("mode", ["psd", "auto"])
def test_sampling_matches_the_target_distribution(mode, engines, target_dir, drafter_dir,
                                                  tokenizer):
    """Temperature 1: the first two draft positions (tokens 2 and 3) follow the target's own
    distribution, and a rejection sampler with the residual bug would be caught (psd: every
    token after the first is verified from drafts, the trace shows no step without them; auto
    mixes steps with and without drafts, which must all follow the target)."""
    engine = _engine_for(engines, mode)
    import torch
    from transformers import AutoModelForCausalLM

    ids = tokenizer("The capital of France is")["input_ids"]  # " Paris" 77%, then "." 68%
    n = 900
    offset = trace_size(engine.config.trace_path)
    engine.spec.reset()
    # max_tokens=4: the first verification drafts 2 tokens (the last token is never drafted);
    # tokens 2 and 3 are then always decided by the rejection sampler
    rows = generate(engine, [Request("fact", ids) for _ in range(n)], max_tokens=4,
                    temperature=1.0, seed=1000, progress=False)
    steps = [r for r in records_since(engine, offset) if r.verify]
    if mode == "psd":
        assert steps and all(r.kind != "none" for r in steps), "a step without the drafter"
        assert engine.spec.summary()["num_drafts"] >= n
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32)
    drafter = AutoModelForCausalLM.from_pretrained(str(drafter_dir), dtype=torch.float32)

    def probs_and_draft(context):
        with torch.no_grad():
            p = torch.softmax(target(torch.tensor([context])).logits[0, -1].double(), -1)
            d = int(drafter(torch.tensor([context])).logits[0, -1].argmax())
        return p, d

    firsts = [r["token_ids"][0] for r in rows]
    t1 = max(set(firsts), key=firsts.count)
    p2, d2 = probs_and_draft(ids + [t1])
    second = [r["token_ids"][1] for r in rows if r["token_ids"][0] == t1]
    assert len(second) >= 500
    assert _fit_p(second, p2, d2) > 1e-3
    if mode == "auto":
        return
    assert _fit_p(second, _residual_from_p(p2, d2), d2) < 1e-3  # the test has power
    # draft position 2: token 3 after (t1, d2), i.e. with the first draft accepted
    p3, d3 = probs_and_draft(ids + [t1, d2])
    third = [r["token_ids"][2] for r in rows if r["token_ids"][:2] == [t1, d2]]
    assert len(third) >= 300, f"only {len(third)} samples at the second position"
    assert _fit_p(third, p3, d3) > 1e-3
    assert _fit_p(third, _residual_from_p(p3, d3), d3) < 1e-3


# --------------------------------------------------------------------------- seeds

PHRASE = ("Write the following phrase exactly 6 times: I will never miss any tokens.\n"
          "1: I will never miss any tokens.\n2:")


def _run_seeded(engine, tokenizer, which, request_rate=math.inf, abort=None, extra=0, seed=0):
    """Run the issue's four requests (greedy phrase + stories with seeds 101-103) in `which`,
    plus `extra` filler requests; returns {index: token ids} of the four."""
    from vllm import SamplingParams
    reqs, params = [], []
    for i in which:
        if i == 0:
            reqs.append(Request("phrase", tokenizer(PHRASE)["input_ids"]))
            params.append(SamplingParams(max_tokens=60, temperature=0.0, stop=["6:"]))
        else:
            reqs.append(Request(f"story{i}", tokenizer(f"Story number {i}: Once upon a time")
                                ["input_ids"]))
            params.append(SamplingParams(max_tokens=40, temperature=1.0, seed=100 + i))
    for j in range(extra):
        reqs.append(Request(f"filler{j}", tokenizer(f"Fact {j}: the sea")["input_ids"]))
        params.append(SamplingParams(max_tokens=10 + 7 * j, temperature=0.8))
    by_req = dict(zip(map(id, reqs), params))
    results, _ = run_requests(engine, reqs, lambda r: by_req[id(r)], progress=False,
                              request_rate=request_rate, seed=seed, abort_after=abort)
    return {i: results[n].token_ids for n, i in enumerate(which)}


@pytest.mark.parametrize("mode", ["psd", "sd-ext"])
def test_seeded_requests_ignore_what_runs_beside_them(mode, psd_engine, sd_ext_engine,
                                                      tokenizer):
    engine = psd_engine if mode == "psd" else sd_ext_engine
    alone = {}
    for i in range(4):
        alone.update(_run_seeded(engine, tokenizer, [i]))
    for rep in range(3):
        assert _run_seeded(engine, tokenizer, [0, 1, 2, 3]) == alone, f"run {rep}"
    # random arrivals, fillers that end at other times, and aborts of fillers
    for seed in range(2):
        got = _run_seeded(engine, tokenizer, [0, 1, 2, 3], request_rate=20.0, extra=5,
                          abort={4 + j: 3 + 2 * j for j in range(0, 5, 2)}, seed=seed)
        assert got == alone, f"arrival seed {seed}"
    assert len(set(map(tuple, alone.values()))) == 4


# --------------------------------------------------------------------------- structured outputs

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"]}
STRUCTURED = {
    "regex": (dict(regex=r"\(\d{3}\) \d{3}-\d{4}"), "Phone number: "),
    "choice": (dict(choice=["positive", "negative", "neutral"]),
               "Sentiment of 'I love this film':"),
    "json_object": (dict(json_object=True), "Give a JSON object describing a cat: "),
    "json_schema": (dict(json=SCHEMA), "A person as JSON: "),
}


def _structured(engine, tokenizer):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams
    reqs, params = [], []
    for kind, (spec, prompt) in STRUCTURED.items():
        reqs.append(Request(kind, tokenizer(prompt)["input_ids"]))
        params.append(SamplingParams(max_tokens=24, temperature=0.0,
                                     structured_outputs=StructuredOutputsParams(**spec)))
    by_req = dict(zip(map(id, reqs), params))
    results, _ = run_requests(engine, reqs, lambda r: by_req[id(r)], progress=False)
    return {kind: r.token_ids for kind, r in zip(STRUCTURED, results)}


@pytest.mark.parametrize("mode", ["psd", "sd-ext"])
def test_structured_outputs_validate_external_drafts(mode, psd_engine, sd_ext_engine,
                                                     ar_engine, tokenizer):
    """Drafts from the drafter process pass vLLM's grammar validation like its own proposers':
    the same output as ar, no grammar errors in the engine's log, drafts still accepted."""
    engine = psd_engine if mode == "psd" else sd_ext_engine
    expected = _structured(ar_engine, tokenizer)
    log_offset = engine.log_path.stat().st_size if engine.log_path.exists() else 0
    engine.spec.reset()
    got = _structured(engine, tokenizer)
    assert got == expected
    assert engine.spec.summary()["num_accepted_tokens"] > 0
    with open(engine.log_path) as f:
        f.seek(log_offset)
        errors = [line for line in f if line.startswith("ERROR")]
    assert not errors, errors[:4]
    text = tokenizer.decode(got["regex"], skip_special_tokens=True)
    import re
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", text), text


# --------------------------------------------------------------------------- drafter failures

def _drafter_processes():
    import psutil
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "minedraft.drafter" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # ended while we looked
            pass
    return found


def _gone(process) -> bool:
    import psutil
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _recovered(engine, prompts, offset, limit_s=180):
    """Serve small batches until the trace shows the drafter down, then up with drafts accepted;
    returns the records since `offset`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        generate(engine, prompts[:4], max_tokens=16, progress=False)
        records = records_since(engine, offset)
        up = [r.drafter_up for r in records]
        if False in up:
            after = records[up.index(False):]
            back = [i for i, r in enumerate(after) if r.drafter_up]
            if back and sum(r.accepted_tokens for r in after[back[0]:]) > 0:
                return records
        time.sleep(0.5)
    raise AssertionError("the drafter did not come back with accepted drafts")


@pytest.mark.parametrize("how", ["crash", "hang"])
def test_drafter_failure_mid_run_loses_no_request(how, psd_engine, varied_prompts,
                                                  ar_reference):
    """SIGKILL (a crash) or SIGSTOP (a hang, noticed after drafter_timeout_s): every output
    still equals ar; the trace shows the drafter down, then back with drafts accepted; a hung
    drafter is not left behind."""
    offset = trace_size(psd_engine.config.trace_path)
    hit, steps = [], []

    def strike(_t):
        steps.append(1)
        if not hit and len(steps) == 10:
            for proc in _drafter_processes():
                proc.send_signal(signal.SIGKILL if how == "crash" else signal.SIGSTOP)
                hit.append(proc)

    prompts = varied_prompts[:20]
    rows = generate(psd_engine, prompts, max_tokens=MAX_TOKENS, progress=False, on_step=strike)
    assert hit, "no drafter process was found"
    for i, (row, ref) in enumerate(zip(rows, ar_reference[:20])):
        assert row["token_ids"] == ref["token_ids"], f"prompt {i} lost or diverged"
    records = _recovered(psd_engine, varied_prompts, offset)
    assert records[-1].restarts > records[0].restarts
    deadline = time.monotonic() + 30
    while not all(_gone(p) for p in hit) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_gone(p) for p in hit), "the failed drafter was left behind"
    if how == "crash":
        assert "exited with code" in psd_engine.log_path.read_text()
