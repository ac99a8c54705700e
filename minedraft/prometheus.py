"""PSD metrics on vLLM's /metrics: a stat-logger plugin (entry point `vllm.stat_logger_plugins`).

vLLM's API server builds one `PSDStatLogger` per engine next to its own Prometheus logger and
calls `record()` with every batch of engine outputs. The logger is active only when the engine
runs PSD (`additional_config.minedraft`); it then
- counts draft and accepted tokens from vLLM's `SpecDecodingStats` (acceptance), and
- reads the new lines of the scheduler's per-step trace (`trace_path`, written by
  `minedraft.scheduler.PSDScheduler` in the engine-core process) for sub-batch sizes, draft,
  verify and step times, overlap efficiency and drafter restarts.
`minedraft serve` always sets `trace_path`; with plain `vllm serve`, set it in
`--additional-config` to get the per-step metrics (acceptance works without it).

Names (all with labels model_name, engine):
    minedraft:info{mode,k}                   1 while PSD runs (mode psd or sd-ext)
    minedraft:psd_steps_total                 engine steps
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
    minedraft:psd_drafter_restarts_total      drafter restarts after a crash or hang
"""

from __future__ import annotations

import json
import os

from vllm.v1.metrics.loggers import StatLoggerBase

_METRICS: dict | None = None  # one set per process (Prometheus names are global)

SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
TIME_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                2.5, 5.0]
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
                          "Drafter restarts after a crash or hang"),
        }
    return _METRICS


class TraceTail:
    """New complete lines of a JSONL file since the last call."""

    def __init__(self, path: str | None):
        self.path = path
        self.offset = os.path.getsize(path) if path and os.path.exists(path) else 0
        self.partial = ""

    def read(self) -> list[dict]:
        if not self.path or not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            text = f.read()
            self.offset = f.tell()
        text, self.partial = self.partial + text, ""
        lines = text.split("\n")
        self.partial = lines.pop()  # "" when the text ended with a newline
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


class PSDStatLogger(StatLoggerBase):
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
        mode = "psd" if settings.get("overlap", True) else "sd-ext"
        self.m["info"].labels(**self.labels, mode=mode,
                              k=str(spec.num_speculative_tokens if spec else 0)).set(1)
        for key in ("steps", "overlapped", "draft_tokens", "accepted_tokens", "restarts"):
            self._get(key)  # exported from the start, at 0
        self.trace = TraceTail(settings.get("trace_path"))
        self.restarts = 0
        self.drafted = self.accepted = 0

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
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

    def observe_step(self, r: dict) -> None:
        self._get("steps").inc()
        if r.get("overlapped"):
            self._get("overlapped").inc()
        if "drafter_up" in r:
            self._get("drafter_up").set(1 if r["drafter_up"] else 0)
        if r.get("restarts", 0) > self.restarts:
            self._get("restarts").inc(r["restarts"] - self.restarts)
            self.restarts = r["restarts"]
        if not r.get("verify"):
            return
        self._get("verify_size").observe(r["verify"])
        if r.get("draft"):
            self._get("draft_size").observe(r["draft"])
        if "draft_ms" in r:
            self._get("draft_s").observe(r["draft_ms"] / 1000)
        if "verify_ms" in r and r.get("step_ms"):
            self._get("verify_s").observe(r["verify_ms"] / 1000)
            self._get("step_s").observe(r["step_ms"] / 1000)
            self._get("overlap").observe(
                min(1.0, max(r.get("draft_ms", 0.0), r["verify_ms"]) / r["step_ms"]))

    def _get(self, key: str):
        return self.m[key].labels(**self.labels)

    def log_engine_initialized(self) -> None:
        pass
