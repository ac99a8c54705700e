import argparse
import json
import subprocess
import sys

import pytest

from minedraft.cli.main import build_parser
from minedraft.cli.options import mode_list


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "minedraft", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["bench", "-k", "0"], "must be >= 1"),
    (["bench", "--num-speculative-tokens", "x"], "expected a positive integer"),
    (["bench", "--mode", "turbo"], "unknown mode"),
    (["bench", "--request-rate", "-2"], "must be >= 0"),
    (["bench", "--request-rate", "0"], "must be > 0"),
    (["bench", "--max-concurrency", "0"], "must be >= 1"),
    (["bench", "--dtype", "int3"], "invalid choice"),
    (["bench", "--dataset", "/no/such.jsonl", "--num-prompts", "1"], "prompts file not found"),
    (["bench", "--target", "/no/such/model"], "model not found"),
    (["bench", "--target-cores", "7-9"], "cores this machine does not have"),
    (["generate", "--prompts-file", "/no/such.jsonl", "--output", "o.jsonl"],
     "prompts file not found"),
    (["generate", "--mode", "ar,sd", "--prompts-file", "x", "--output", "o"], "one mode"),
])
def test_invalid_values_exit_with_one_line(args, message):
    proc = run_cli(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_mode_list_takes_k_and_cores_per_run():
    runs = mode_list("ar@0,sd:2@0,psd:4,sd-ext")
    assert [(r.mode, r.cores, r.k) for r in runs] == [
        ("ar", "0", None), ("sd", "0", 2), ("psd", None, 4), ("sd-ext", None, None)]
    for bad in ("psd:0", "psd:x@0", "nope:3"):
        with pytest.raises(argparse.ArgumentTypeError):
            mode_list(bad)


def test_every_option_is_explained():
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("command", [[], ["models"], ["models", "prepare"], ["generate"],
                                     ["bench"]])
def test_help_runs(command):
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_models_list_shows_the_target(target_dir):
    proc = run_cli("models", "list")
    assert proc.returncode == 0 and str(target_dir) in proc.stdout and "prepared" in proc.stdout


def test_generate_and_bench_end_to_end(tmp_path, target_dir):
    """The CLI contract used by outside scripts: one engine start for generate, one for bench."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "The capital of France is"}\n'
                       '{"messages": [{"role": "user", "content": "Say hi"}]}\n')
    out = tmp_path / "out.jsonl"
    proc = run_cli("generate", "--mode", "ar", "--prompts-file", str(prompts), "--max-tokens", "8",
                   "--temperature", "0", "--seed", "0", "--dtype", "float32", "--enforce-eager",
                   "--kv-cache-gib", "1", "--max-model-len", "512", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    assert all({"prompt", "text", "token_ids"} <= row.keys() and row["token_ids"] for row in rows)

    js = tmp_path / "bench.json"
    proc = run_cli("bench", "--mode", "ar", "--dataset", "random", "--input-len", "16",
                   "--num-prompts", "4", "--output-len", "8", "--request-rate", "50",
                   "--max-concurrency", "2", "--enforce-eager", "--kv-cache-gib", "1",
                   "--max-model-len", "512", "--no-progress", "--json", str(js))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "out tok/s" in proc.stdout
    doc = json.loads(js.read_text())
    for key in ("mode", "num_requests", "output_throughput_tok_s", "request_throughput_req_s",
                "mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms", "p50_e2el_ms", "p99_e2el_ms",
                "duration_s", "hardware", "versions", "command"):
        assert key in doc, key
    assert doc["mode"] == "ar" and doc["num_requests"] == 4 and doc["total_output_tokens"] == 32
