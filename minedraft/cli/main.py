"""`minedraft`: the entry point. One parser, one place where user errors become one line.

Every user error (any minedraft.core.errors.MineDraftError, or a bad option) prints one line and
exits with status 2; `--verbose` also prints its traceback. vLLM's own logs go to a file named on
exit (or to the terminal with --verbose).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from minedraft.cli import analysis, run, train
from minedraft.cli.options import EXIT_USAGE, Parser
from minedraft.core.errors import MineDraftError

GROUPS = (run, train, analysis)  # each: add_parsers(sub), COMMANDS


def build_parser() -> Parser:
    """The whole command line: one subcommand per command of the groups in GROUPS."""
    parser = Parser(prog="minedraft", description=(
        "Batch-parallel speculative decoding on vLLM. Runs a workload through vLLM with the "
        "target alone (ar) or with speculative decoding, and measures it."))
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show vLLM's own logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                help="what to do (each has its own --help)")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def quiet_vllm() -> Path:
    """Keep vLLM out of the terminal: everything written to this process's file descriptors 1
    and 2 below Python (C++ warnings, vLLM's processes, which inherit them) goes to a log file,
    and so do the logs of vLLM and of MineDraft's code inside vLLM's processes. `sys.stdout` and
    `sys.stderr` keep the terminal for MineDraft's own output. Returns the log file."""
    import logging.config
    import warnings

    folder = Path(tempfile.gettempdir()) / "minedraft-logs"
    folder.mkdir(exist_ok=True)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    log = folder / f"vllm-{stamp}.log"
    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(asctime)s %(process)d "
                                           "%(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log),
                              "formatter": "plain"}},
        "loggers": {name: {"handlers": ["file"], "level": "INFO", "propagate": False}
                    for name in ("vllm", "minedraft.scheduler", "minedraft.drafter",
                                 "transformers")},
    }
    logging.config.dictConfig(config)
    path = folder / f"logging-{stamp}.json"
    path.write_text(json.dumps(config))
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # vLLM's processes inherit it
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    sys.stdout.flush()
    sys.stderr.flush()
    terminal_out, terminal_err = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(terminal_out, "w", buffering=1, encoding="utf-8")
    sys.stderr = os.fdopen(terminal_err, "w", buffering=1, encoding="utf-8")
    return log


def main(argv: list[str] | None = None) -> None:
    """Parse, run the command, and turn any MineDraftError into one line and exit status 2 (with
    its traceback under --verbose)."""
    args = build_parser().parse_args(argv)
    log = None
    # `serve` becomes vLLM's server, whose logs are its output; --verbose shows everything
    if not args.verbose and args.command != "serve":
        log = quiet_vllm()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    commands = {name: cmd for group in GROUPS for name, cmd in group.COMMANDS.items()}
    try:
        commands[args.command](args)
    except MineDraftError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"minedraft {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit("minedraft: interrupted")
    finally:
        if log is not None and log.exists() and log.stat().st_size:
            print(f"(vLLM's log: {log})", file=sys.stderr)
