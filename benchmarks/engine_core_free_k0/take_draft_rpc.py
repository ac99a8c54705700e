"""What vLLM's per-step `take_draft_token_ids` round trip costs a PSD engine (measured).

With a speculative config, vLLM's EngineCore.post_step asks its worker for runner-side drafts
after every step (`MultiprocExecutor.take_draft_token_ids`, a message-queue round trip; under PSD
the answer is always empty). This starts a psd engine with its engine core in this process, so
the executor is reachable, and times 5 x 1000 such calls. Usage (about 1 minute):

    .venv/bin/python benchmarks/engine_core_free_k0/take_draft_rpc.py
"""

import os
import statistics
import time


def main() -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine

    # one core for everything: this process is pinned with the engine core; "mp" as on the CPU
    # build's default (which turns in-process engines into "uni", where the call is free)
    engine = Engine(EngineConfig(mode="psd", num_speculative_tokens=3, target_cores="0",
                                 draft_cores="0", shared_cores=True, enforce_eager=True),
                    extra_args={"distributed_executor_backend": "mp"})
    executor = engine.llm_engine.engine_core.engine_core.model_executor
    ms = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(1000):
            executor.take_draft_token_ids()
        ms.append(time.perf_counter() - t0)  # seconds per 1000 calls = ms per call
    print(f"{type(executor).__name__}.take_draft_token_ids: ms per call, 5 x 1000 calls: "
          f"{[round(x, 3) for x in ms]}, median {statistics.median(ms):.3f}")
    engine.shutdown()


if __name__ == "__main__":
    main()
