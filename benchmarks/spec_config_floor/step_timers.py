"""Per-call wall times of vLLM's engine-core and model-runner methods, per process (experiment
tool, not part of MineDraft). It was hooked in by one temporary line at the top of
`minedraft.vllm_ext.plugin.register` (`from benchmarks.spec_config_floor import step_timers;
step_timers.install()`, in a scratch worktree), so that every vLLM process installs it; with
MD_PROF=DIR each process writes DIR/<pid>.json every 50 steps and at exit: {"meta": which
engine (scheduler class, or whether the runner has a speculative config), "times": {method:
[ms per call]}}."""
import atexit
import collections
import json
import os
import time

OUT = os.environ.get("MD_PROF")
TIMES = collections.defaultdict(list)
META = {}
CALLS = [0]


def dump() -> None:
    with open(f"{OUT}/{os.getpid()}.json", "w") as f:
        json.dump({"meta": META, "times": TIMES}, f)


def _tag(obj):
    if hasattr(obj, "speculative_config"):
        return obj.speculative_config is not None
    return type(getattr(obj, "scheduler", None)).__name__


def wrap(cls, name, outer=False, tag=None) -> None:
    f = getattr(cls, name, None)
    if f is None or getattr(f, "_timed", False):
        return

    def timed(self, *args, **kwargs):
        if tag and tag not in META:
            META[tag] = _tag(self)
        t0 = time.perf_counter()
        result = f(self, *args, **kwargs)
        TIMES[name].append((time.perf_counter() - t0) * 1000)
        if outer:
            CALLS[0] += 1
            if CALLS[0] % 50 == 0:
                dump()
        return result
    timed._timed = True
    setattr(cls, name, timed)


def install() -> None:
    if not OUT:
        return
    os.makedirs(OUT, exist_ok=True)
    atexit.register(dump)
    from vllm.v1.core.sched import scheduler
    from vllm.v1.engine import core
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor
    from vllm.v1.worker import gpu_model_runner as runner
    for name in ["execute_model", "sample_tokens", "_prepare_inputs", "_model_forward",
                 "_sample", "_update_states", "_bookkeeping_sync", "take_draft_token_ids",
                 "propose_draft_token_ids", "_calc_spec_decode_metadata"]:
        wrap(runner.GPUModelRunner, name, outer=name == "sample_tokens",
             tag="runner_spec" if name == "execute_model" else None)
    wrap(core.EngineCore, "step", outer=True, tag="core_scheduler")
    wrap(core.EngineCore, "post_step")
    wrap(scheduler.Scheduler, "schedule")
    wrap(scheduler.Scheduler, "update_from_output")
    for name in ("execute_model", "sample_tokens", "collective_rpc"):
        wrap(MultiprocExecutor, name)
