"""PSD metrics on vLLM's /metrics: a stat-logger plugin (entry point `vllm.stat_logger_plugins`).

vLLM's API server builds one `PSDStatLogger` per engine next to its own Prometheus logger and
calls `record()` with every batch of engine outputs. The logger is active only when the engine
runs PSD (`additional_config.minedraft`); it then
- counts draft and accepted tokens from vLLM's `SpecDecodingStats` (acceptance), and
- reads the new lines of the scheduler's per-step trace (`trace_path`, written by
  `minedraft.vllm_ext.scheduler.PSDScheduler` in the engine-core process) for sub-batch sizes, draft,
  verify and step times, overlap efficiency and drafter restarts.
`minedraft serve` always sets `trace_path`; with plain `vllm serve`, set it in
`--additional-config` to get the per-step metrics (acceptance works without it).

Names (all with labels model_name, engine):
    minedraft:info{mode,k}                   1 while PSD runs (mode psd, sd-ext or auto)
    minedraft:psd_steps_total                 engine steps
    minedraft:psd_steps_by_kind_total{kind}   steps by what they did: psd, sequential, none
    minedraft:psd_k                           histogram: draft tokens asked per request per step
    minedraft:psd_overlapped_steps_total      steps whose drafting overlapped verification
    minedraft:psd_verify_batch_size           histogram: requests verified per step
    minedraft:psd_draft_batch_size            histogram: requests drafted per step
    minedraft:psd_draft_time_seconds          histogram: drafter time per round
    minedraft:psd_verify_time_seconds         histogram: target time per step
    minedraft:psd_step_time_seconds           histogram: wall time per step
    minedraft:psd_overlap_efficiency          histogram: max(draft, verify) / step, per step
    minedraft:psd_draft_tokens_total          draft tokens verified
    minedraft:psd_accepted_tokens_total       draft tokens accepted
    minedraft:psd_acceptance_rate             accepted / draft tokens since start
    minedraft:psd_drafter_up                  1 while the drafter answers
    minedraft:psd_drafter_restarts_total      drafter restarts (or reconnections) attempted
    minedraft:psd_drafter_failures            failed drafter attempts in a row (0 while up)
"""

from __future__ import annotations

from vllm.v1.metrics.loggers import StatLoggerBase

from minedraft.core.trace import StepRecord, TraceTail, overlap_efficiency

_METRICS: dict | None = None  # one set per process (Prometheus names are global)

SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
TIME_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                2.5, 5.0]
K_BUCKETS = [0, 1, 2, 3, 4, 5, 6, 8]
RATIO_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]


def _metrics() -> dict:
    global _METRICS
    if _METRICS is None:
        from prometheus_client import Counter, Gauge, Histogram
        labels = ["model_name", "engine"]
        c = lambda name, doc: Counter(f"minedraft:{name}", doc, labels)  # noqa: E731
        h = lambda name, doc, b: Histogram(f"minedraft:{name}", doc, labels, buckets=b)  # noqa
        g = lambda name, doc, extra=(): Gauge(f"minedraft:{name}", doc,  # noqa: E731
                                              labels + list(extra))
        _METRICS = {
            "info": g("info", "PSD configuration (value 1)", ("mode", "k")),
            "steps": c("psd_steps", "Engine steps under the PSD scheduler"),
            "steps_by_kind": Counter("minedraft:psd_steps_by_kind",
                                     "Steps by kind: psd (overlapped), sequential, none (no drafts)",
                                     labels + ["kind"]),
            "k": h("psd_k", "Draft tokens asked per request per step", K_BUCKETS),
            "overlapped": c("psd_overlapped_steps",
                            "Steps whose drafting overlapped the target's verification"),
            "verify_size": h("psd_verify_batch_size", "Requests verified per step",
                             SIZE_BUCKETS),
            "draft_size": h("psd_draft_batch_size", "Requests drafted per step", SIZE_BUCKETS),
            "draft_s": h("psd_draft_time_seconds", "Drafter time per round", TIME_BUCKETS),
            "verify_s": h("psd_verify_time_seconds", "Target time per step", TIME_BUCKETS),
            "step_s": h("psd_step_time_seconds", "Wall time per step", TIME_BUCKETS),
            "overlap": h("psd_overlap_efficiency",
                         "max(draft, verify) / step time per step (1 = perfect overlap)",
                         RATIO_BUCKETS),
            "draft_tokens": c("psd_draft_tokens", "Draft tokens verified by the target"),
            "accepted_tokens": c("psd_accepted_tokens", "Draft tokens accepted"),
            "acceptance": g("psd_acceptance_rate", "Accepted / draft tokens since start"),
            "drafter_up": g("psd_drafter_up", "1 while the drafter process answers"),
            "restarts": c("psd_drafter_restarts",
                          "Drafter restarts (or reconnections) attempted after a failure"),
            "failures": g("psd_drafter_failures",
                          "Failed drafter attempts in a row (0 while the drafter answers)"),
        }
    return _METRICS


class PSDStatLogger(StatLoggerBase):
    """vLLM stat logger that exports the minedraft: metrics of a PSD engine (inactive for other
    engines)."""
    def __init__(self, vllm_config, engine_index: int = 0):
        settings = (vllm_config.additional_config or {}).get("minedraft")
        self.active = settings is not None
        if not self.active:
            return
        name = vllm_config.model_config.served_model_name
        if isinstance(name, (list, tuple)):
            name = name[0]
        self.labels = {"model_name": str(name), "engine": str(engine_index)}
        self.m = _metrics()
        spec = vllm_config.speculative_config
        mode = settings.get("mode", "psd")
        self.m["info"].labels(**self.labels, mode=mode,
                              k=str(spec.num_speculative_tokens if spec else 0)).set(1)
        for key in ("steps", "overlapped", "draft_tokens", "accepted_tokens", "restarts"):
            self._get(key)  # exported from the start, at 0
        self._get("drafter_up").set(1)  # the engine starts only once its drafter answers
        self._get("failures").set(0)
        self.trace = TraceTail(settings.get("trace_path"))
        self.restarts = 0
        self.drafted = self.accepted = 0

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        """Count vLLM's speculative tokens and fold the new trace records into the metrics."""
        if not self.active:
            return
        spec = getattr(scheduler_stats, "spec_decoding_stats", None)
        if spec is not None and spec.num_draft_tokens:
            self.drafted += spec.num_draft_tokens
            self.accepted += spec.num_accepted_tokens
            self._get("draft_tokens").inc(spec.num_draft_tokens)
            self._get("accepted_tokens").inc(spec.num_accepted_tokens)
            self._get("acceptance").set(self.accepted / self.drafted)
        for r in self.trace.read():
            self.observe_step(r)

    def observe_step(self, r: StepRecord) -> None:
        """Fold one step record into the metrics."""
        self._get("steps").inc()
        self.m["steps_by_kind"].labels(**self.labels, kind=r.kind).inc()
        if r.overlapped:
            self._get("overlapped").inc()
        self._get("drafter_up").set(1 if r.drafter_up else 0)
        self._get("failures").set(r.failures)
        if r.restarts > self.restarts:
            self._get("restarts").inc(r.restarts - self.restarts)
            self.restarts = r.restarts
        if not r.verify:
            return
        self._get("k").observe(r.k)
        self._get("verify_size").observe(r.verify)
        if r.draft:
            self._get("draft_size").observe(r.draft)
        if r.draft_ms is not None:
            self._get("draft_s").observe(r.draft_ms / 1000)
        if r.verify_ms is not None and r.step_ms:
            self._get("verify_s").observe(r.verify_ms / 1000)
            self._get("step_s").observe(r.step_ms / 1000)
            self._get("overlap").observe(overlap_efficiency(r))

    def _get(self, key: str):
        return self.m[key].labels(**self.labels)

    def log_engine_initialized(self) -> None:
        """Nothing to log."""
        pass
