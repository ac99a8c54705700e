"""One interface over every mode: build a vLLM V1 engine for an EngineConfig.

`MODES` maps a mode name to a function that returns the vLLM engine arguments for it. `ar` and
`sd` are vLLM as it ships; the PSD modes (`sd-ext`, `psd`, `auto`) add the PSD scheduler, the
external-draft proposer and their settings (minedraft.vllm_ext) through vLLM's own arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable

from minedraft import models
from minedraft.core.cores import omp_bind
from minedraft.runtime.config import EngineConfig
from minedraft.vllm_ext import PROPOSER_CLS, SCHEDULER_CLS

logger = logging.getLogger(__name__)


@dataclass
class SpecCounters:
    """Speculative-decoding counters of one engine, fed by vLLM's stat-logger interface."""
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    num_preempted: int = 0  # not speculative, but counted by the same stat logger

    def add(self, stats) -> None:
        """Add one SpecDecodingStats (vLLM's per-iteration counters)."""
        self.num_drafts += stats.num_drafts
        self.num_draft_tokens += stats.num_draft_tokens
        self.num_accepted_tokens += stats.num_accepted_tokens
        per_pos = list(stats.num_accepted_tokens_per_pos)
        if len(self.accepted_per_pos) < len(per_pos):
            self.accepted_per_pos += [0] * (len(per_pos) - len(self.accepted_per_pos))
        for i, n in enumerate(per_pos):
            self.accepted_per_pos[i] += n

    def summary(self) -> dict:
        """Acceptance rate (accepted / draft tokens), mean accepted length (vLLM's: 1 + accepted /
        drafts), acceptance per position and the raw counts; {} before any draft."""
        if not self.num_drafts:
            return {}
        return {
            "acceptance_rate": self.num_accepted_tokens / max(self.num_draft_tokens, 1),
            # vLLM's definition: tokens per verified draft, counting the target's own token
            "mean_accepted_length": 1 + self.num_accepted_tokens / self.num_drafts,
            "acceptance_per_position": [n / self.num_drafts for n in self.accepted_per_pos],
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
        }

    def reset(self) -> None:
        """Zero every counter."""
        self.__init__()


def _stat_logger_factory(counters: SpecCounters):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SpecCounterLogger(StatLoggerBase):
        """vLLM stat logger that adds each step's spec-decode counts and preemptions to
        `counters`."""

        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            stats = getattr(scheduler_stats, "spec_decoding_stats", None)
            if stats is not None:
                counters.add(stats)
            if iteration_stats is not None:
                counters.num_preempted += iteration_stats.num_preempted_reqs

        def log_engine_initialized(self):
            pass

    return SpecCounterLogger


# --------------------------------------------------------------------------- modes

def default_draft(config: EngineConfig) -> str:
    """The drafter a speculative mode uses when none is given: the bundled drafter for the
    bundled target, else the target itself."""
    if config.draft:
        return config.draft
    if config.target == models.TARGET and models.bundled_drafter_available():
        return models.DRAFTER
    return config.target


def _ar_args(config: EngineConfig) -> dict:
    return {}


def _sd_args(config: EngineConfig) -> dict:
    return {"speculative_config": {
        "method": "draft_model",
        "model": str(models.resolve(default_draft(config))),
        "num_speculative_tokens": config.num_speculative_tokens,
    }}


def _external_drafter_args(config: EngineConfig) -> dict:
    """sd-ext / psd / auto: the PSD scheduler and a drafter process of its own."""
    draft = "" if config.draft_address else str(models.resolve(default_draft(config)))
    settings = config.psd_settings(draft)
    extra = {f.name: getattr(settings, f.name) for f in fields(settings)
             if getattr(settings, f.name) != f.default}
    return {
        "scheduler_cls": SCHEDULER_CLS,
        "speculative_config": {"method": "custom_class", "model": PROPOSER_CLS,
                               "num_speculative_tokens": config.num_speculative_tokens},
        "additional_config": {"minedraft": extra},
        "async_scheduling": False,
    }


# mode -> function returning the extra vLLM engine arguments of that mode
MODES: dict[str, Callable[[EngineConfig], dict]] = {
    "ar": _ar_args,
    "sd": _sd_args,
    "sd-ext": _external_drafter_args,
    "psd": _external_drafter_args,
    "auto": _external_drafter_args,
}


def with_trace(config: EngineConfig) -> EngineConfig:
    """sd-ext / psd / auto always write the per-step trace (the PSD metrics come from it): a
    copy of `config` with a temporary trace file when it names none."""
    if not config.external_drafter or config.trace_path is not None:
        return config
    fd, path = tempfile.mkstemp(prefix="minedraft-trace-", suffix=".jsonl")
    os.close(fd)
    return replace(config, trace_path=path)


def engine_args(config: EngineConfig) -> dict:
    """vLLM engine arguments (EngineArgs keywords) for `config`; prepares bundled models."""
    config.validate()
    args = dict(
        model=str(models.resolve(config.target)),
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
        disable_log_stats=False,
    )
    if config.tensor_parallel_size > 1:
        args["tensor_parallel_size"] = config.tensor_parallel_size
    if config.pipeline_parallel_size > 1:
        args["pipeline_parallel_size"] = config.pipeline_parallel_size
    args.update(MODES[config.mode](config))
    return args


def engine_env(config: EngineConfig) -> dict[str, str]:
    """Environment read by vLLM's CPU workers when they start: which cores their OpenMP threads
    use (one group per rank), how much memory the KV cache gets, and Intel's OpenMP runtime
    preloaded (`intel_openmp_preload`)."""
    return {"VLLM_CPU_OMP_THREADS_BIND": omp_bind(config.target_cores),
            "VLLM_CPU_KVCACHE_SPACE": str(config.kv_cache_gib),
            **intel_openmp_preload()}


def intel_openmp_preload(environ=None, prefix: str | None = None) -> dict[str, str]:
    """{"LD_PRELOAD": ...} with Intel's OpenMP runtime first, as vLLM's CPU installation guide
    asks; vLLM's CPU worker warns that speculative decoding without it loses throughput to GNU
    libgomp's fork/join cost (about 2x on a 56-core Xeon, vLLM issue 44191). The library is the
    pinned intel-openmp wheel's, in `prefix`/lib (default: this environment, `sys.prefix`).
    Measured here (2 cores, two pairs of runs): plain decoding on 2 threads 1.05x and 1.14x,
    vLLM's sd 1.03x and 1.04x; with one thread per process, no change seen (benchmarks/
    intel_openmp). Empty where the library is missing or already preloaded, or with
    MINEDRAFT_INTEL_OPENMP=0 in `environ` (default os.environ). vLLM's processes (and the
    drafter they start) inherit it; this process is not changed."""
    environ = os.environ if environ is None else environ
    path = os.path.join(prefix or sys.prefix, "lib", "libiomp5.so")
    preload = environ.get("LD_PRELOAD", "")
    if environ.get("MINEDRAFT_INTEL_OPENMP") == "0" or "libiomp5" in preload \
            or not os.path.exists(path):
        return {}
    return {"LD_PRELOAD": f"{path}:{preload}" if preload else path}


@contextlib.contextmanager
def environment(extra: dict[str, str]):
    """`extra` in os.environ while the block runs (vLLM's processes inherit it at start)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Engine:
    """A vLLM V1 LLMEngine for one EngineConfig, with its speculative counters.

    `config` is the configuration it runs (with its trace file filled in); `llm_engine` vLLM's
    engine; `spec` the speculative counters; `startup_s` how long it took to start."""

    def __init__(self, config: EngineConfig, extra_args: dict | None = None):
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        self.config = config = with_trace(config)
        args = {**engine_args(config), **(extra_args or {})}
        self.spec = SpecCounters()
        t0 = time.perf_counter()
        with environment(engine_env(config)):
            self.llm_engine = LLMEngine.from_engine_args(
                EngineArgs(**args), stat_loggers=[_stat_logger_factory(self.spec)])
        self.startup_s = time.perf_counter() - t0
        self.tokenizer = self.llm_engine.get_tokenizer()
        logger.info("engine %s ready in %.1f s", config.mode, self.startup_s)

    def shutdown(self) -> None:
        """Stop vLLM's engine core (and the drafter it started)."""
        core = getattr(self.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
