"""`additional_config["minedraft"]`: the PSD scheduler's settings, validated in one place.

`PSDSettings.from_dict` is called by the scheduler inside vLLM's engine core and, earlier, by
minedraft's own configuration (minedraft.runtime.config), so a bad value is reported before any
engine starts. No vLLM import here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

from minedraft.core.cores import parse_cores
from minedraft.core.errors import ConfigError

logger = logging.getLogger("minedraft.settings")

PSD_MODES = ("psd", "sd-ext", "auto")
DRAFT_BACKENDS = ("lean", "vllm")


@dataclass(frozen=True)
class PSDSettings:
    """mode: psd (overlapped sub-batches), sd-ext (draft, then verify everything) or auto (the
    scheduler chooses per step, see minedraft.vllm_ext.policy)."""

    mode: str = "psd"
    draft: str = ""  # draft checkpoint directory (the scheduler starts the drafter)
    draft_address: str | None = None  # a drafter the operator runs (another host, say)
    draft_cores: str = "all"
    draft_backend: str | None = None  # lean (CPU default) or vllm (GPU default)
    draft_dtype: str = "bfloat16"
    draft_quantization: str | None = None  # lean backend: "int8" weights
    draft_enforce_eager: bool = False
    draft_gpu: str | None = None  # GPU index of the drafter (its CUDA_VISIBLE_DEVICES)
    shared_cores: bool = False  # allow the drafter on the target's cores (small machines)
    drafter_timeout_s: float = 30.0
    drafter_start_timeout_s: float = 600.0
    restart_drafter: bool = True
    drafter_retry_max_s: float = 60.0  # longest wait between restart/reconnect attempts
    trace_path: str | None = None  # JSONL, one line per step
    drafter_log: str | None = None
    auto_profile: str | None = None  # auto: cost profile seeding the cost estimates

    @property
    def overlap(self) -> bool:
        """Drafting may overlap verification (psd, auto)."""
        return self.mode != "sd-ext"

    @property
    def backend(self) -> str:
        """The drafter's backend: as set, else vllm with a drafter GPU, else lean."""
        return self.draft_backend or ("vllm" if self.draft_gpu is not None else "lean")

    def engine_core_cores(self, target_bind: str | None = None) -> list[int] | None:
        """The cores vLLM's engine core process should keep to: the target's, when a drafter of
        this machine's CPU has cores of its own. vLLM's engine core waits for its workers by
        spinning in sched_yield (shm_broadcast, up to 1 s between steps); left free, it spins
        on the drafter's core and slows every round (measured: 17.4 -> 11.6 ms per round,
        benchmarks/README.md). The scheduler holds it there only in steps that draft
        (benchmarks/engine_core_free_k0). None: leave it where it is (the target's bind is automatic or
        every core, the drafter is remote, on a GPU or shares the target's cores).
        `target_bind` defaults to this process's VLLM_CPU_OMP_THREADS_BIND."""
        bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") if target_bind is None \
            else target_bind
        if (bind in ("auto", "nobind", "all") or self.draft_address or self.draft_gpu is not None
                or self.shared_cores or self.draft_cores == "all"):
            return None
        target = parse_cores(bind)
        return target if not set(target) & set(parse_cores(self.draft_cores)) else None

    @classmethod
    def from_dict(cls, extra: dict, target_bind: str | None = None,
                  check_draft: bool = True) -> "PSDSettings":
        """Validated settings from `additional_config["minedraft"]`. `target_bind` is the
        target's VLLM_CPU_OMP_THREADS_BIND (default: this process's environment); with
        `check_draft` off the draft checkpoint directory is not looked at. Raises ConfigError
        (a ModelError for a bad draft checkpoint)."""
        from minedraft.models import check_checkpoint

        names = {f.name for f in fields(cls)}
        unknown = set(extra) - names
        if unknown:
            raise ConfigError(f"unknown minedraft settings: {sorted(unknown)} "
                              f"(known: {', '.join(sorted(names))})")
        settings = cls(**extra)
        if settings.mode not in PSD_MODES:
            raise ConfigError(f"minedraft mode must be one of {', '.join(PSD_MODES)}, "
                              f"got {settings.mode!r}")
        if settings.draft_backend not in (None, *DRAFT_BACKENDS):
            raise ConfigError(f"draft_backend must be one of {', '.join(DRAFT_BACKENDS)}")
        if settings.draft_quantization not in (None, "int8"):
            raise ConfigError("draft_quantization must be int8 or unset")
        if settings.draft_quantization and settings.backend != "lean":
            raise ConfigError("draft_quantization applies to the lean drafter backend only")
        if min(settings.drafter_timeout_s, settings.drafter_start_timeout_s,
               settings.drafter_retry_max_s) <= 0:
            raise ConfigError("drafter timeouts and retry waits must be > 0 s")
        if not settings.draft and not settings.draft_address:
            raise ConfigError("PSD needs additional_config.minedraft.draft (a checkpoint) "
                              "or draft_address (a running drafter)")
        if settings.draft_address is not None:
            if not settings.draft_address.startswith(("tcp://", "ipc://")):
                raise ConfigError(f"draft_address must be tcp://HOST:PORT or ipc://PATH, "
                                  f"got {settings.draft_address!r}")
            return settings
        if check_draft:
            check_checkpoint(Path(settings.draft))
        bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") if target_bind is None \
            else target_bind
        if bind not in ("auto", "nobind", "all") and settings.draft_gpu is None:
            shared = set(parse_cores(bind)) & set(parse_cores(settings.draft_cores))
            if shared and not settings.shared_cores:
                raise ConfigError(f"drafter cores {settings.draft_cores} overlap the target's "
                                  f"({bind}): give the drafter cores of its own, or set "
                                  "shared_cores (--shared-cores) to share them on purpose")
            if shared:
                logger.warning("the drafter shares cores %s with the target (shared_cores): "
                               "drafting and verification will slow each other down",
                               sorted(shared))
        return settings
