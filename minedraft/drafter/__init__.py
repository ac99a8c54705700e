"""The drafter: a process of its own (own cores, own GPU or another host) that drafts tokens for
the PSD scheduler over ZeroMQ.

- `server`: the drafter process (`python -m minedraft.drafter`), its request loop and histories;
- `backends`: what runs the draft model (a lean PyTorch runner with a KV cache per request, or a
  vLLM engine);
- `client`: the scheduler's side: spawn or reach a drafter, send rounds, collect drafts, and the
  supervisor that restarts or reconnects it with backoff.
"""
