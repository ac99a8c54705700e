"""`minedraft serve`: vLLM's OpenAI server with PSD, talked to with the official `openai` client.

One server (psd, bundled pair, float32, eager) for the whole module, on a free loopback port; it
is killed at teardown, and by a timer if the module runs too long.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

MAX_TOKENS = 16
MAX_QUEUED = 16  # admission limit of the test server
HARD_TIMEOUT_S = 900  # the server stops by itself after this
STARTUP_TIMEOUT_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(target_dir, drafter_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    cmd = [sys.executable, "-m", "minedraft", "serve", "--mode", "psd", "--port", str(port),
           "--target", str(target_dir), "--draft", str(drafter_dir), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "8",
           "--kv-cache-gib", "1", "--max-num-queued-reqs", str(MAX_QUEUED)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    timer = threading.Timer(HARD_TIMEOUT_S, _stop, args=(proc,))
    timer.daemon = True
    timer.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield {"base": base, "proc": proc, "log": log,
               "model": os.path.basename(str(target_dir))}
    finally:
        timer.cancel()
        _stop(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0,
                         timeout=300)


def _metrics(server) -> dict[str, float]:
    from minedraft.bench.online import parse_metrics
    return parse_metrics(httpx.get(server["base"] + "/metrics", timeout=30).text)


def test_models_and_health(server, client):
    assert httpx.get(server["base"] + "/health", timeout=10).status_code == 200
    assert [m.id for m in client.models.list().data] == [server["model"]]


def test_greedy_completions_equal_ar(server, client, ar_engine, sharegpt_prompts):
    """Concurrent requests (both PSD sub-batches busy) give the target's own greedy tokens, and
    /metrics shows that drafts were made, overlapped and accepted on the way."""
    from minedraft.runtime.api import generate
    reqs = sharegpt_prompts[:4]
    before = _metrics(server)

    def complete(req):
        r = client.completions.create(model=server["model"], prompt=req.prompt_token_ids,
                                      max_tokens=MAX_TOKENS, temperature=0,
                                      extra_body={"return_token_ids": True})
        return r.choices[0].model_extra["token_ids"]

    with ThreadPoolExecutor(len(reqs)) as pool:
        served = list(pool.map(complete, reqs))
    expected = [r["token_ids"] for r in generate(ar_engine, reqs, max_tokens=MAX_TOKENS,
                                                 progress=False)]
    assert served == expected
    after = _metrics(server)
    grew = {name: after.get(name, 0) - before.get(name, 0) for name in (
        "minedraft:psd_overlapped_steps_total", "minedraft:psd_accepted_tokens_total",
        "minedraft:psd_draft_tokens_total")}
    assert all(v > 0 for v in grew.values()), grew


def test_structured_output_through_the_server(server, client):
    """The small input of the bug report: a regex under psd, the right text, and no grammar
    error in the server's log."""
    import re
    log_offset = server["log"].stat().st_size
    r = client.completions.create(model=server["model"], prompt="Phone number: ", max_tokens=20,
                                  temperature=0, extra_body={"structured_outputs": {
                                      "regex": r"\(\d{3}\) \d{3}-\d{4}"}})
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", r.choices[0].text), r.choices[0].text
    with open(server["log"], errors="replace") as f:
        f.seek(log_offset)
        errors = [line for line in f if "ERROR" in line]
    assert not errors, errors[:4]


def test_streaming_equals_non_streaming(server, client):
    kw = dict(model=server["model"], max_tokens=8, temperature=0)
    text = client.completions.create(prompt="The three primary colours are", **kw)
    stream = client.completions.create(prompt="The three primary colours are", stream=True, **kw)
    assert "".join(c.choices[0].text for c in stream if c.choices) == text.choices[0].text

    messages = [{"role": "user", "content": "Name two planets."}]
    chat = client.chat.completions.create(messages=messages, **kw)
    assert chat.choices[0].message.content
    chunks = client.chat.completions.create(messages=messages, stream=True, **kw)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content


def test_bad_requests_get_4xx(server, client):
    url = server["base"] + "/v1/completions"
    r = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and "error" in r.json()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=server["model"], prompt="hi", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=server["model"], prompt=[1] * 1100, max_tokens=2)
    # nothing else disturbed
    ok = client.completions.create(model=server["model"], prompt="Hello", max_tokens=2)
    assert ok.choices[0].finish_reason == "length"


def test_too_many_requests_rejected_cleanly(server, client):
    """Beyond --max-num-queued-reqs, vLLM's admission control answers 503 at once (retryable);
    every admitted request completes."""
    def one(i):
        try:
            r = client.completions.create(model=server["model"], prompt=f"Count to {i}:",
                                          max_tokens=4, temperature=0)
            return r.choices[0].finish_reason
        except openai.APIStatusError as exc:
            return exc.status_code

    n = 2 * MAX_QUEUED
    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(one, range(n)))
    assert set(outcomes) <= {"length", "stop", 503}
    assert 503 in outcomes and outcomes.count(503) < n


def _wait_idle(server, timeout_s: float = 60) -> dict:
    """Metrics once nothing runs or waits."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = _metrics(server)
        if m.get("vllm:num_requests_running", 0) == 0 and \
                m.get("vllm:num_requests_waiting", 0) == 0:
            return m
        assert time.monotonic() < deadline, "requests still running"
        time.sleep(0.5)


def test_client_disconnect_aborts_request(server):
    before = _wait_idle(server).get("vllm:generation_tokens_total", 0)
    payload = {"model": server["model"], "prompt": "Write a long story about a ship.",
               "max_tokens": 500, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", server["base"] + "/v1/completions", json=payload) as resp:
            assert resp.status_code == 200
            data = 0
            for line in resp.iter_lines():
                data += line.startswith("data: ")
                if data == 4:
                    break  # the client goes away mid-stream
    m = _wait_idle(server)  # the server aborted it: nothing running, nothing waiting
    assert m.get("vllm:generation_tokens_total", 0) - before < 500
    # PSD state is gone too: the next requests are served normally
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0)
    assert client.completions.create(model=server["model"], prompt="Hi", max_tokens=3,
                                     temperature=0).choices[0].finish_reason == "length"


def test_concurrent_streams_survive_drafter_kill(server):
    """A short load test: concurrent streaming clients, the drafter killed once tokens have
    streamed; every request is answered in full, some after the kill, and the drafter comes back
    and speculates again."""
    from minedraft import models
    from minedraft.bench.online import OnlineOptions, benchmark_online
    from minedraft.bench.workloads import random_requests

    tokenizer = models.load_tokenizer(models.resolve(models.TARGET))
    requests = random_requests(tokenizer, 12, 32, seed=3)
    before = _metrics(server)
    res = benchmark_online(requests, OnlineOptions(
        base_url=server["base"], output_len=40, max_concurrency=12, timeout_s=300,
        kill_drafter_after_tokens=30, server_pid=server["proc"].pid, progress=False,
        warmup=False))
    assert res["drafter_killed_pid"] is not None
    assert res["num_errors"] == 0 and res["num_lost"] == 0, res["errors"]
    assert res["num_requests"] == 12 and res["total_output_tokens"] == 12 * 40
    assert res["finished_after_kill"] > 0, "the kill came after every request had finished"
    after_kill = _metrics(server)
    assert after_kill["minedraft:psd_drafter_restarts_total"] > \
        before.get("minedraft:psd_drafter_restarts_total", 0)
    _wait_idle(server)
    deadline = time.monotonic() + 180  # the restarted drafter answers, and drafts are accepted
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0)
    while True:
        accepted = _metrics(server).get("minedraft:psd_accepted_tokens_total", 0)
        client.completions.create(model=server["model"], prompt="The capital of France is",
                                  max_tokens=12, temperature=0)
        m = _metrics(server)
        if m["minedraft:psd_drafter_up"] == 1 and \
                m["minedraft:psd_accepted_tokens_total"] > accepted:
            break
        assert time.monotonic() < deadline, "speculation did not resume after the restart"
        time.sleep(1)


def test_metrics_agree_with_vllm(server):
    """MineDraft's counters equal vLLM's spec_decode counters; acceptance is their ratio; an idle
    server's drafter is up."""
    m = _wait_idle(server)
    names = ["minedraft:info", "minedraft:psd_steps_total", "minedraft:psd_overlapped_steps_total",
             "minedraft:psd_steps_by_kind_total", "minedraft:psd_k_count",
             "minedraft:psd_verify_batch_size_count", "minedraft:psd_draft_batch_size_count",
             "minedraft:psd_draft_time_seconds_sum", "minedraft:psd_verify_time_seconds_sum",
             "minedraft:psd_step_time_seconds_sum", "minedraft:psd_overlap_efficiency_sum",
             "minedraft:psd_draft_tokens_total", "minedraft:psd_accepted_tokens_total",
             "minedraft:psd_acceptance_rate", "minedraft:psd_drafter_up",
             "minedraft:psd_drafter_restarts_total", "minedraft:psd_drafter_failures"]
    present = {k.split("{")[0] for k in m}
    assert not [n for n in names if n not in present]
    assert m["minedraft:info{mode=psd}{k=3}"] == 1
    assert m["minedraft:psd_draft_tokens_total"] == m["vllm:spec_decode_num_draft_tokens_total"]
    assert m["minedraft:psd_accepted_tokens_total"] == \
        m["vllm:spec_decode_num_accepted_tokens_total"]
    assert m["minedraft:psd_acceptance_rate"] == pytest.approx(
        m["vllm:spec_decode_num_accepted_tokens_total"]
        / m["vllm:spec_decode_num_draft_tokens_total"])
    assert 0 < m["minedraft:psd_overlapped_steps_total"] <= m["minedraft:psd_steps_total"]
    assert m["minedraft:psd_drafter_up"] == 1 and m["minedraft:psd_drafter_failures"] == 0


# --------------------------------------------------------------------------- command line

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minedraft", *args], capture_output=True,
                          text=True, timeout=300)


def test_print_command_is_the_vllm_server_with_psd():
    proc = _cli("serve", "--print-command", "--port", "8123", "--enforce-eager")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    for part in ("VLLM_CPU_OMP_THREADS_BIND=", "-m vllm.entrypoints.openai.api_server",
                 "--scheduler-cls minedraft.vllm_ext.scheduler.PSDScheduler", '"method":"custom_class"',
                 "--additional-config", "--no-async-scheduling", "--port 8123"):
        assert part in line


@pytest.mark.parametrize("args, message", [
    (["serve", "--mode", "turbo"], "unknown mode"),
    (["serve", "--port", "x"], "expected a positive integer"),
    (["bench", "--base-url", "ftp://host"], "--base-url must be http"),
    (["bench", "--base-url", "http://127.0.0.1:9", "--kill-drafter-after", "1"],
     "needs --server-pid"),
    (["bench", "--base-url", "http://127.0.0.1:9", "--num-prompts", "1"],
     "no OpenAI-compatible server"),
])
def test_serve_and_online_bench_bad_input(args, message):
    proc = _cli(*args)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], proc.stderr
