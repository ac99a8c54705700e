import argparse
import json
import subprocess
import sys

import pytest

from minedraft.cli.main import build_parser
from minedraft.cli.options import mode_list


def run_cli(*args, timeout=300, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "minedraft", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


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
    (["generate", "--prompts-file", __file__, "--output", "/no/such/dir/o.jsonl"],
     "folder /no/such/dir does not exist"),
    (["bench", "--num-prompts", "1", "--json", "/no/such/dir/r.json"], "does not exist"),
    (["bench", "--mode", "psd", "--target-cores", "all"], "cores of its own"),
    (["bench", "--mode", "sd", "--draft-cores", "1"], "apply to sd-ext, psd and auto only"),
    (["bench", "--mode", "psd", "--draft", "/no/such/drafter"], "model not found"),
    (["bench", "--mode", "psd", "--draft-address", "localhost:1"], "draft_address must be"),
    (["bench", "--mode", "psd", "--target-cores", "0", "--draft-cores", "0"],
     "overlap the target"),
    (["bench", "--target-cores", "0|1"], "core groups for 1 workers"),
    (["serve", "--mode", "turbo"], "unknown mode"),
    (["serve", "--port", "x"], "expected a positive integer"),
    (["serve", "--mode", "psd", "--draft", "/no/such/drafter"], "model not found"),
    (["models", "prepare", "no-such-model"], "unknown bundled model"),
    (["distill", "--out", "/no/such/x", "--target", "/no/such/model"], "model not found"),
    (["distill", "--out", __file__], "is a file"),
    (["distill", "--out", "d", "--soft-top-k", "30"], "--soft-top-k"),
    (["evaluate-drafter", "--draft", "/no/such/drafter"], "model not found"),
    (["evaluate-drafter", "--json", "/no/such/dir/e.json"], "does not exist"),
    (["profile", "--out", "p.json", "--target-cores", "0", "--draft-cores", "0"],
     "overlap the target"),
    (["profile", "--out", "/no/such/dir/p.json"], "does not exist"),
    (["simulate", "--profile", "/no/such/profile.json"], "profile file not found"),
    (["report", "--run", "--mode", "psd", "--target-cores", "all", "--out", "r"],
     "cores of its own"),
    (["advise", "--alpha", "0.5"], "required"),
])
def test_invalid_values_exit_2_with_one_line_before_any_work(args, message, tmp_path):
    """Every command checks its arguments first: on a machine with no model cache a bad value
    prints one line, exits with status 2, and prepares nothing."""
    cache = tmp_path / "cache"
    proc = run_cli(*args, env={"MINEDRAFT_CACHE": str(cache)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_verbose_shows_the_traceback_and_cause():
    proc = run_cli("-v", "bench", "--target", "/no/such/model")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "model not found" in proc.stderr


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
                                     ["bench"], ["serve"], ["distill"], ["evaluate-drafter"],
                                     ["advise"], ["profile"], ["simulate"], ["report"]])
def test_help_runs(command):
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_models_list_shows_the_target(target_dir):
    proc = run_cli("models", "list")
    assert proc.returncode == 0 and str(target_dir) in proc.stdout and "prepared" in proc.stdout
