"""The vLLM-free core: plain Python shared by vLLM's processes, the drafter, the simulator and
the CLI. Nothing here imports vLLM or torch, so it loads in milliseconds and tests in isolation.

- `errors`: the one base class of errors meant for users.
- `cores`: CPU core lists (`0`, `0-1`, `0|1` for one group per tensor-parallel rank).
- `subbatch`: the PSD state machine (two sub-batches) and the per-step plan.
- `messages`: the drafter protocol as typed messages.
- `trace`: the per-step record the scheduler writes, and its one reader.
- `costmodel`: step costs and expected tokens, for the simulator, the advisor and `auto`.
"""
