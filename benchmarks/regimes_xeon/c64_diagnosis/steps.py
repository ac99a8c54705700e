"""Scratch: per-step log (main process) of every engine in a bench run."""
import json, sys, time
import minedraft.runtime.engine as E
LOG = open(sys.argv[1], "w")
orig = E._stat_logger_factory
def factory(counters):
    base = orig(counters)
    class L(base):
        def __init__(self, vllm_config, engine_index=0):
            super().__init__(vllm_config, engine_index)
            self.spec = vllm_config.speculative_config is not None
        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            super().record(scheduler_stats, iteration_stats, mm_cache_stats, engine_idx)
            if iteration_stats is not None:
                LOG.write(json.dumps([self.spec, time.perf_counter(), iteration_stats.num_generation_tokens,
                    iteration_stats.num_prompt_tokens, getattr(scheduler_stats, "num_running_reqs", -1),
                    getattr(scheduler_stats, "num_waiting_reqs", -1)]) + "\n")
    return L
E._stat_logger_factory = factory
if __name__ == "__main__":
    from minedraft.cli.main import main
    main(sys.argv[2:])
