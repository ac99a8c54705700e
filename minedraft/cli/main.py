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
    """Send the logs of vLLM (and of MineDraft's code inside vLLM's processes) to a file, for
    this process and the processes it starts; returns the file."""
    folder = Path(tempfile.gettempdir()) / "minedraft-logs"
    folder.mkdir(exist_ok=True)
    log = folder / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(asctime)s %(process)d "
                                           "%(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log),
                              "formatter": "plain", "delay": True}},
        "loggers": {name: {"handlers": ["file"], "level": "INFO", "propagate": False}
                    for name in ("vllm", "minedraft", "transformers")},
    }
    path = folder / f"logging-{os.getpid()}.json"
    path.write_text(json.dumps(config))
    os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(path))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # vLLM's processes inherit it
    import warnings
    warnings.simplefilter("ignore")
    return log


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    log = None
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        log = quiet_vllm()
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
