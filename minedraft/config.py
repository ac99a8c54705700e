"""Run configuration: one validated object for every mode, shared by the CLI and the Python API."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from minedraft import models

# Modes a run can use. `ar` and `sd` are plain vLLM; the PSD issue adds `sd-ext` and `psd` (drafter
# in its own process, sequential or overlapped) by registering a builder in minedraft.engine.MODES.
ALL_MODES = ("ar", "sd", "sd-ext", "psd")
EXTERNAL_DRAFTER_MODES = ("sd-ext", "psd")  # drafter in its own process, on its own cores
DTYPES = ("auto", "bfloat16", "float32")


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line for the user."""


@dataclass
class EngineConfig:
    mode: str = "ar"
    target: str = models.TARGET  # bundled model name or HF checkpoint directory
    draft: str | None = None  # None: the bundled drafter once it exists, else the target itself
    num_speculative_tokens: int = 3
    dtype: str = "bfloat16"
    target_cores: str = "all"  # VLLM_CPU_OMP_THREADS_BIND for the target, e.g. "0" or "0-1"
    draft_cores: str | None = None  # drafter's own cores (sd-ext / psd; default: the others)
    trace_path: str | None = None  # sd-ext / psd: per-step JSONL trace
    drafter_log: str | None = None  # sd-ext / psd: where the drafter process logs
    draft_gpu: str | None = None  # sd-ext / psd on a GPU server: the drafter's GPU index
    drafter_timeout_s: float = 30.0  # sd-ext / psd: a round slower than this = drafter hung
    max_model_len: int = 2048
    max_num_seqs: int = 256
    kv_cache_gib: int = 2
    enforce_eager: bool = False
    seed: int = 0

    def validate(self) -> "EngineConfig":
        if self.mode not in ALL_MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {', '.join(ALL_MODES)}")
        if self.num_speculative_tokens < 1:
            raise ConfigError(f"--num-speculative-tokens must be >= 1, got {self.num_speculative_tokens}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.max_model_len < 16:
            raise ConfigError(f"--max-model-len must be >= 16, got {self.max_model_len}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"--max-num-seqs must be >= 1, got {self.max_num_seqs}")
        if self.kv_cache_gib < 1:
            raise ConfigError(f"--kv-cache-gib must be >= 1, got {self.kv_cache_gib}")
        if self.drafter_timeout_s <= 0:
            raise ConfigError(f"--drafter-timeout must be > 0 s, got {self.drafter_timeout_s}")
        if self.draft_gpu is not None and self.mode not in EXTERNAL_DRAFTER_MODES:
            raise ConfigError("--draft-gpu applies to sd-ext and psd only")
        target_cores = set(parse_cores(self.target_cores))
        if self.mode in EXTERNAL_DRAFTER_MODES and self.draft_cores is None:
            rest = sorted(set(parse_cores("all")) - target_cores)
            if not rest:
                raise ConfigError(f"{self.mode} runs the drafter on cores of its own: give the "
                                  "target fewer, e.g. --target-cores 0 --draft-cores 1")
            self.draft_cores = ",".join(map(str, rest))
        if self.draft_cores is not None:
            if self.mode not in EXTERNAL_DRAFTER_MODES:
                raise ConfigError("--draft-cores applies to sd-ext and psd only "
                                  "(vLLM's sd runs the drafter on the target's cores)")
            overlap = set(parse_cores(self.draft_cores)) & target_cores
            if overlap:
                raise ConfigError(f"drafter cores {self.draft_cores} overlap the target's "
                                  f"{self.target_cores} (cores {sorted(overlap)})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def parse_cores(spec: str) -> list[int]:
    """'all', '0', '0-1', '0,2-3' -> core indices (checked against this machine)."""
    available = sorted(os.sched_getaffinity(0))
    if spec == "all":
        return available
    cores: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            cores.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"bad core list {spec!r}: use e.g. 'all', '0', '0-1' or '0,2-3'") from None
    missing = sorted(set(cores) - set(available))
    if not cores or missing:
        raise ConfigError(f"core list {spec!r} names cores this machine does not have "
                          f"(available: {available})")
    return cores


def omp_bind(spec: str) -> str:
    """The value of VLLM_CPU_OMP_THREADS_BIND for a core list."""
    return ",".join(str(c) for c in parse_cores(spec))
