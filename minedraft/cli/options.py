"""Shared pieces of the command line: the parser class, value checkers, the engine options (declared
once, used by every command that starts engines) and the checks every command makes before any
expensive work (files to read, places to write, the engine configuration)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import NamedTuple

from minedraft import models
from minedraft.core.errors import MineDraftError
from minedraft.runtime.config import ALL_MODES, DTYPES, EngineConfig

EXIT_USAGE = 2  # bad input: argparse's status, and ours


class UserError(MineDraftError):
    """Bad input found by a command: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (exit status 2) instead of usage plus message."""
    def error(self, message):  # one line instead of usage + message
        """Print one line and exit with status 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- value checkers

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def number(text: str) -> float:
    """argparse type: any float."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def non_negative_float(text: str) -> float:
    """argparse type: a float >= 0 (not NaN)."""
    value = number(text)
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a float > 0 (not NaN)."""
    value = number(text)
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def request_rate(text: str) -> float:
    """argparse type: requests per second > 0, or 'inf' for all at once."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0 (use 'inf' to send everything at once)")
    return value


def rate_or_schedule(text: str):
    """argparse type: requests per second ('inf': all at once), or a load that changes over time,
    'RATE:COUNT,RATE:COUNT,...' (COUNT requests at RATE, then the next segment)."""
    if ":" not in text:
        return request_rate(text)
    segments = []
    for part in text.split(","):
        rate, _, count = part.partition(":")
        segments.append((request_rate(rate.strip()), positive_int(count.strip())))
    return tuple(segments)


def int_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (sorted, without repeats; each >= 1)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return sorted(set(values))


def rate_list(text: str) -> list[float]:
    """argparse type: request rates, comma-separated."""
    values = [request_rate(x.strip()) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("no request rate given")
    return values


class ModeRun(NamedTuple):
    """One bench run from --mode: the mode, and optionally its own target cores and k."""
    mode: str
    cores: str | None  # the target's cores for this run (None: --target-cores)
    k: int | None  # draft tokens for this run (None: --num-speculative-tokens)


def mode_list(text: str) -> list[ModeRun]:
    """'ar,psd', or per run MODE[:K][@CORES]: 'ar@0,sd:2@0,psd:4@0,ar@all'."""
    out = []
    for item in (m.strip() for m in text.split(",") if m.strip()):
        head, _, cores = item.partition("@")
        mode, _, k = head.partition(":")
        if mode not in ALL_MODES:
            raise argparse.ArgumentTypeError(
                f"unknown mode {mode!r}; choose from {', '.join(ALL_MODES)}")
        if k and (not k.isdigit() or int(k) < 1):
            raise argparse.ArgumentTypeError(f"bad k in {item!r}: use MODE:K with K >= 1")
        out.append(ModeRun(mode, cores or None, int(k) if k else None))
    if not out:
        raise argparse.ArgumentTypeError("no mode given")
    return out


def single_mode(text: str) -> str:
    """argparse type: exactly one mode, without per-run cores or k."""
    modes = mode_list(text)
    if len(modes) != 1 or modes[0].cores or modes[0].k:
        raise argparse.ArgumentTypeError(
            "give one mode here (cores: --target-cores, k: --num-speculative-tokens)")
    return modes[0].mode


# --------------------------------------------------------------------------- engine options

# (flags, keywords) of every engine option; commands take all of them or a named subset.
ENGINE_OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "target": (("--target",), dict(
        default=models.TARGET,
        help="target model: a bundled name or a Hugging Face checkpoint directory "
             f"(default: {models.TARGET})")),
    "draft": (("--draft",), dict(
        default=None,
        help="drafter for speculative modes: bundled name or checkpoint directory "
             "(default: the bundled drafter for the bundled target, else the target itself)")),
    "num_speculative_tokens": (("--num-speculative-tokens", "-k"), dict(
        type=positive_int, default=3,
        help="draft tokens per step, k >= 1 (auto: the largest k it may choose; default: 3)")),
    "dtype": (("--dtype",), dict(
        choices=DTYPES, default="bfloat16",
        help="weights and activations dtype; float32 for bit-exact comparisons "
             "(default: bfloat16)")),
    "target_cores": (("--target-cores",), dict(
        default="all",
        help="CPU cores of the target engine, e.g. 0 or 0-1, one list per worker with "
             "tensor/pipeline parallelism, e.g. 0|1 (sets VLLM_CPU_OMP_THREADS_BIND; "
             "default: all)")),
    "draft_cores": (("--draft-cores",), dict(
        default=None,
        help="sd-ext/psd/auto: CPU cores of the drafter process, disjoint from the target's "
             "(default: the cores the target does not use)")),
    "shared_cores": (("--shared-cores",), dict(
        action="store_true",
        help="sd-ext/psd/auto: let the drafter share the target's cores (small machines and "
             "tests; drafting and verification then slow each other down)")),
    "draft_backend": (("--draft-backend",), dict(
        choices=("lean", "vllm"), default=None,
        help="sd-ext/psd/auto: what runs the draft model: lean (PyTorch in the drafter "
             "process, KV cache per request; default on CPUs) or vllm (a vLLM engine; default "
             "with --draft-gpu)")),
    "draft_quantization": (("--draft-quantization",), dict(
        choices=("int8",), default=None,
        help="sd-ext/psd/auto, lean drafter: int8 weights for its linear layers and head (about "
             "twice as fast on CPUs, slightly different drafts; default: the --dtype weights)")),
    "draft_address": (("--draft-address",), dict(
        default=None,
        help="sd-ext/psd/auto: use a drafter the operator started "
             "(python -m minedraft.drafter --bind ADDRESS) at this tcp://HOST:PORT instead of "
             "starting one")),
    "draft_gpu": (("--draft-gpu",), dict(
        default=None,
        help="sd-ext/psd/auto on a GPU server: GPU index for the drafter process (sets its "
             "CUDA_VISIBLE_DEVICES; the target keeps its own GPUs)")),
    "drafter_timeout_s": (("--drafter-timeout",), dict(
        type=positive_float, default=30.0,
        help="sd-ext/psd/auto: seconds a draft round may take before the drafter counts as "
             "hung and is restarted, serving continuing without drafts (default: 30)")),
    "drafter_retry_max_s": (("--drafter-retry-max",), dict(
        type=positive_float, default=60.0,
        help="sd-ext/psd/auto: longest wait between attempts to restart a failed drafter (or to "
             "reach an operator's drafter again), seconds; waits double from 1 s up to it "
             "(default: 60)")),
    "auto_profile": (("--auto-profile",), dict(
        default=None,
        help="auto: a cost profile (minedraft profile) to start the cost estimates from "
             "(default: learn them while running)")),
    "trace_path": (("--trace",), dict(
        default=None,
        help="sd-ext/psd/auto: write the per-step JSONL trace (draft, verify and step times, "
             "sub-batch sizes, what each step did) to this file")),
    "drafter_log": (("--drafter-log",), dict(
        default=None,
        help="sd-ext/psd/auto: file for the drafter process's output (default: its last lines "
             "are kept for error messages)")),
    "tensor_parallel_size": (("--tensor-parallel-size", "-tp"), dict(
        type=positive_int, default=1,
        help="target workers with tensor parallelism (default: 1)")),
    "pipeline_parallel_size": (("--pipeline-parallel-size", "-pp"), dict(
        type=positive_int, default=1,
        help="target workers with pipeline parallelism (default: 1)")),
    "max_model_len": (("--max-model-len",), dict(
        type=positive_int, default=2048,
        help="context length: prompt plus output tokens (default: 2048)")),
    "max_num_seqs": (("--max-num-seqs",), dict(
        type=positive_int, default=256,
        help="most requests the engine batches together (default: 256)")),
    "kv_cache_gib": (("--kv-cache-gib",), dict(
        type=positive_int, default=2, help="CPU memory for the KV cache, GiB (default: 2)")),
    "enforce_eager": (("--enforce-eager",), dict(
        action="store_true", help="skip torch.compile (faster start-up, slower steps)")),
    "seed": (("--seed",), dict(
        type=int, default=0,
        help="seed for sampling, workload selection and arrivals (default: 0)")),
}


def add_engine_options(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                       title: str = "engine", **defaults) -> None:
    """Add the engine options (all, or those named in `only`), with other `defaults`."""
    g = p.add_argument_group(title)
    for dest, (flags, kwargs) in ENGINE_OPTIONS.items():
        if only is None or dest in only:
            kwargs = dict(kwargs, dest=dest)
            if dest in defaults:
                kwargs["default"] = defaults[dest]
            g.add_argument(*flags, **kwargs)


EXTERNAL_ONLY = ("draft_cores", "shared_cores", "draft_backend", "draft_quantization",
                 "draft_address", "draft_gpu", "auto_profile", "trace_path")  # options of the modes with a drafter process


def engine_configs(args, runs: list[ModeRun]) -> list[EngineConfig]:
    """The validated EngineConfig of each run from parsed engine options. Options of the modes
    with a drafter process go to those runs only, and are refused when no run has one."""
    modes = {run.mode for run in runs}
    given = [ENGINE_OPTIONS[d][0][0] for d in EXTERNAL_ONLY if getattr(args, d, None)]
    if given and not modes & {"sd-ext", "psd", "auto"}:
        raise UserError(f"{', '.join(given)} apply to sd-ext, psd and auto only (vLLM's sd "
                        "runs the drafter on the target's devices)")
    if getattr(args, "auto_profile", None) and "auto" not in modes:
        raise UserError("--auto-profile applies to --mode auto only")
    configs = []
    for run in runs:
        fields = {dest: getattr(args, dest) for dest in ENGINE_OPTIONS if hasattr(args, dest)}
        fields["mode"] = run.mode
        if run.cores:
            fields["target_cores"] = run.cores
        if run.k:
            fields["num_speculative_tokens"] = run.k
        if run.mode not in ("sd-ext", "psd", "auto"):
            for dest in EXTERNAL_ONLY:
                fields.pop(dest, None)
        elif run.mode != "auto":
            fields.pop("auto_profile", None)
        configs.append(EngineConfig(**fields))
    for config in configs:
        config.validate()
    return configs


def engine_config(args, mode: str, target_cores: str | None = None) -> EngineConfig:
    """The validated EngineConfig of one mode (see engine_configs)."""
    return engine_configs(args, [ModeRun(mode, target_cores, None)])[0]


# --------------------------------------------------------------------------- files

def input_file(path: str, what: str = "file") -> Path:
    """An existing readable file, or UserError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} not found: {path}")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} not readable: {path}")
    return p


def output_file(path: str | None, what: str = "output file") -> Path | None:
    """A file we may create or replace: its folder exists and is writable; or UserError."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {path} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {what} {path}: folder {parent} is not writable")
    return p


def output_dir(path: str, what: str = "output folder") -> Path:
    """A folder we may create or fill: it is a folder, or does not exist under a writable
    existing parent; or UserError."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {path} is a file")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {what} {path}: {existing} is not writable")
    return p
