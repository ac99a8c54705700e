"""Run configuration: one validated object for every mode, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from minedraft.core.cores import parse_core_groups, parse_cores
from minedraft.core.errors import ConfigError
from minedraft.models import TARGET, check_model

# `ar` and `sd` are vLLM as it ships; `sd-ext`, `psd` and `auto` run the PSD scheduler with a
# drafter process of their own (drafting then verifying, overlapped, or chosen per step).
ALL_MODES = ("ar", "sd", "sd-ext", "psd", "auto")
EXTERNAL_DRAFTER_MODES = ("sd-ext", "psd", "auto")
DTYPES = ("auto", "bfloat16", "float32")


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine needs; `validate()` checks it without building anything."""

    mode: str = "ar"
    target: str = TARGET  # bundled model name or HF checkpoint directory
    draft: str | None = None  # None: the bundled drafter for the bundled target, else the target
    num_speculative_tokens: int = 3  # k (auto: the largest k it may choose)
    dtype: str = "bfloat16"
    target_cores: str = "all"  # VLLM_CPU_OMP_THREADS_BIND of the target, e.g. "0", "0|1"
    draft_cores: str | None = None  # the drafter's cores (default: the cores the target leaves)
    shared_cores: bool = False  # let the drafter share the target's cores (small machines)
    draft_address: str | None = None  # a drafter the operator runs (`python -m minedraft.drafter`)
    draft_backend: str | None = None  # lean (CPU default) or vllm (GPU default)
    draft_quantization: str | None = None  # lean drafter: "int8" weights
    draft_gpu: str | None = None  # the drafter's GPU index on a GPU server
    trace_path: str | None = None  # per-step JSONL trace (default: a temporary file)
    drafter_log: str | None = None  # where the drafter process logs (default: kept in memory)
    drafter_timeout_s: float = 30.0  # a round slower than this = the drafter hung
    drafter_retry_max_s: float = 60.0  # longest wait between drafter restart attempts
    auto_profile: str | None = None  # auto: a cost profile to start its estimates from
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int = 2048
    max_num_seqs: int = 256
    kv_cache_gib: int = 2
    enforce_eager: bool = False
    seed: int = 0

    @property
    def external_drafter(self) -> bool:
        """The mode runs a drafter process of its own (sd-ext, psd, auto)."""
        return self.mode in EXTERNAL_DRAFTER_MODES

    def drafter_cores(self) -> str:
        """The drafter's cores: given, or the cores the target does not use (all of them with
        `shared_cores` when the target takes every core)."""
        if self.draft_cores is not None:
            return self.draft_cores
        target = set(parse_cores(self.target_cores))
        rest = sorted(set(parse_cores("all")) - target)
        if not rest:
            if self.shared_cores:
                return ",".join(map(str, sorted(target)))
            raise ConfigError(f"{self.mode} runs the drafter on cores of its own: give the "
                              "target fewer, e.g. --target-cores 0 --draft-cores 1 "
                              "(or --shared-cores to share them on purpose)")
        return ",".join(map(str, rest))

    def validate(self) -> "EngineConfig":
        """Check every value, cheaply (no model is prepared, no engine started); returns self.
        Raises ConfigError, or ModelError for a model argument that cannot work."""
        if self.mode not in ALL_MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {', '.join(ALL_MODES)}")
        if self.num_speculative_tokens < 1:
            raise ConfigError(f"--num-speculative-tokens must be >= 1, "
                              f"got {self.num_speculative_tokens}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        for name, low in (("max_model_len", 16), ("max_num_seqs", 1), ("kv_cache_gib", 1),
                          ("tensor_parallel_size", 1), ("pipeline_parallel_size", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, "
                                  f"got {getattr(self, name)}")
        if self.drafter_timeout_s <= 0 or self.drafter_retry_max_s <= 0:
            raise ConfigError("--drafter-timeout and --drafter-retry-max must be > 0 s")
        if self.pipeline_parallel_size > 1 and _cpu_build():
            raise ConfigError("vllm-cpu 0.32 cannot run pipeline parallelism: its second stage "
                              "fails (AssertionError: self.intermediate_tensors is not None); "
                              "use --tensor-parallel-size")
        workers = self.tensor_parallel_size * self.pipeline_parallel_size
        groups = parse_core_groups(self.target_cores)
        if len(groups) > 1 and len(groups) != workers:
            raise ConfigError(f"--target-cores {self.target_cores!r} has {len(groups)} core "
                              f"groups for {workers} workers (tensor x pipeline parallel)")
        external_only = {"--draft-cores": self.draft_cores, "--draft-gpu": self.draft_gpu,
                         "--draft-address": self.draft_address,
                         "--draft-backend": self.draft_backend,
                         "--draft-quantization": self.draft_quantization,
                         "--shared-cores": self.shared_cores or None,
                         "--auto-profile": self.auto_profile}
        if not self.external_drafter:
            given = [flag for flag, value in external_only.items() if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} apply to sd-ext, psd and auto only "
                                  "(vLLM's sd runs the drafter on the target's devices)")
        elif self.mode != "auto" and self.auto_profile is not None:
            raise ConfigError("--auto-profile applies to --mode auto only")
        check_model(self.target)
        if self.draft is not None and self.mode != "ar":
            check_model(self.draft)
        if self.external_drafter:  # the engine core's own checks, before anything starts
            self.psd_settings(self.draft or self.target, check_draft=False)
        return self

    def psd_settings(self, draft_dir: str, *, check_draft: bool = True):
        """The PSD scheduler's settings (minedraft.vllm_ext.settings.PSDSettings, validated)
        for this configuration with the drafter checkpoint `draft_dir` (with `check_draft`
        off, that directory is not checked: the model argument was, by `check_model`)."""
        from minedraft.core.cores import omp_bind
        from minedraft.vllm_ext.settings import PSDSettings
        settings = {
            "mode": self.mode, "draft": None if self.draft_address else draft_dir,
            "draft_address": self.draft_address,
            "draft_cores": None if self.draft_address else omp_bind(self.drafter_cores()),
            "draft_backend": self.draft_backend, "draft_dtype": self.dtype,
            "draft_quantization": self.draft_quantization,
            "draft_enforce_eager": self.enforce_eager, "draft_gpu": self.draft_gpu,
            "shared_cores": self.shared_cores, "trace_path": self.trace_path,
            "drafter_log": self.drafter_log, "drafter_timeout_s": self.drafter_timeout_s,
            "drafter_retry_max_s": self.drafter_retry_max_s, "auto_profile": self.auto_profile}
        settings = {k: v for k, v in settings.items() if v not in (None, False)}
        return PSDSettings.from_dict(settings, target_bind=omp_bind(self.target_cores),
                                     check_draft=check_draft)

    def to_dict(self) -> dict:
        """All fields, JSON-ready."""
        return asdict(self)


def _cpu_build() -> bool:
    """vLLM is the CPU build (vllm-cpu) here."""
    import importlib.metadata as md
    try:
        md.version("vllm-cpu")
        return True
    except md.PackageNotFoundError:
        return False
