"""One interface over every mode: build a vLLM V1 engine for an EngineConfig.

`MODES` maps a mode name to a function that returns the vLLM engine arguments for it. `ar` and
`sd` are vLLM as it ships; the PSD modes (`sd-ext`, `psd`) register their builders here
(scheduler class, external drafter) without touching the runner, metrics or CLI.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from minedraft import models
from minedraft.config import EXTERNAL_DRAFTER_MODES, ConfigError, EngineConfig, omp_bind

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
        self.num_drafts += stats.num_drafts
        self.num_draft_tokens += stats.num_draft_tokens
        self.num_accepted_tokens += stats.num_accepted_tokens
        per_pos = list(stats.num_accepted_tokens_per_pos)
        if len(self.accepted_per_pos) < len(per_pos):
            self.accepted_per_pos += [0] * (len(per_pos) - len(self.accepted_per_pos))
        for i, n in enumerate(per_pos):
            self.accepted_per_pos[i] += n

    def summary(self) -> dict:
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
        self.__init__()


def _stat_logger_factory(counters: SpecCounters):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SpecCounterLogger(StatLoggerBase):
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
    draft = models.resolve(default_draft(config))
    return {"speculative_config": {
        "method": "draft_model",
        "model": str(draft),
        "num_speculative_tokens": config.num_speculative_tokens,
    }}


def _external_drafter_args(config: EngineConfig, overlap: bool) -> dict:
    """sd-ext / psd: the PSD scheduler and a drafter process on its own cores."""
    draft = models.resolve(default_draft(config))
    settings = {"draft": str(draft), "draft_cores": omp_bind(config.draft_cores),
                "draft_dtype": config.dtype, "draft_enforce_eager": config.enforce_eager,
                "overlap": overlap, "trace_path": config.trace_path,
                "drafter_log": config.drafter_log, "draft_gpu": config.draft_gpu,
                "drafter_timeout_s": config.drafter_timeout_s}
    return {
        "scheduler_cls": "minedraft.scheduler.PSDScheduler",
        "speculative_config": {"method": "custom_class",
                               "model": "minedraft.scheduler.ExternalDraftProposer",
                               "num_speculative_tokens": config.num_speculative_tokens},
        "additional_config": {"minedraft": {k: v for k, v in settings.items() if v is not None}},
        "async_scheduling": False,
    }


# mode -> function returning the extra vLLM engine arguments of that mode
MODES: dict[str, Callable[[EngineConfig], dict]] = {
    "ar": _ar_args,
    "sd": _sd_args,
    "sd-ext": lambda config: _external_drafter_args(config, overlap=False),
    "psd": lambda config: _external_drafter_args(config, overlap=True),
}


def engine_args(config: EngineConfig) -> dict:
    config.validate()
    if config.mode not in MODES:
        raise ConfigError(f"mode {config.mode!r} is not available in this build "
                          f"(available: {', '.join(MODES)})")
    target = models.resolve(config.target)
    args = dict(
        model=str(target),
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
        disable_log_stats=False,
    )
    args.update(MODES[config.mode](config))
    return args


def ensure_trace(config: EngineConfig) -> None:
    """sd-ext / psd always write the per-step trace (the PSD metrics come from it)."""
    if config.mode in EXTERNAL_DRAFTER_MODES and config.trace_path is None:
        fd, config.trace_path = tempfile.mkstemp(prefix="minedraft-trace-", suffix=".jsonl")
        os.close(fd)


def engine_env(config: EngineConfig) -> dict[str, str]:
    """Environment read by vLLM's CPU worker when it starts: which cores its OpenMP threads use,
    and how much memory the KV cache gets (shared by Engine and `minedraft serve`)."""
    return {"VLLM_CPU_OMP_THREADS_BIND": omp_bind(config.target_cores),
            "VLLM_CPU_KVCACHE_SPACE": str(config.kv_cache_gib)}


class Engine:
    """A vLLM V1 LLMEngine for one EngineConfig, with its speculative counters."""

    def __init__(self, config: EngineConfig, extra_args: dict | None = None):
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        ensure_trace(config)
        self.config = config
        args = {**engine_args(config), **(extra_args or {})}
        os.environ.update(engine_env(config))
        self.spec = SpecCounters()
        t0 = time.perf_counter()
        self.llm_engine = LLMEngine.from_engine_args(
            EngineArgs(**args), stat_loggers=[_stat_logger_factory(self.spec)])
        self.startup_s = time.perf_counter() - t0
        self.tokenizer = self.llm_engine.get_tokenizer()
        logger.info("engine %s ready in %.1f s", config.mode, self.startup_s)

    def shutdown(self) -> None:
        core = getattr(self.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
