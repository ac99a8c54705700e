"""PSD inside vLLM V1: a scheduler class that owns the two sub-batches and the drafter channel.

Turned on with vLLM's own extension points (no vLLM function is copied or patched):
    scheduler_cls      = "minedraft.scheduler.PSDScheduler"
    speculative_config = {"method": "custom_class",
                          "model": "minedraft.scheduler.ExternalDraftProposer",
                          "num_speculative_tokens": k}
    additional_config  = {"minedraft": {"draft": DIR, "draft_cores": "1", "overlap": true, ...}}
    async_scheduling   = False

Each call of `schedule()` is one PSD step:
 1. collect the drafts of the side to verify now (requested one step ago; drafter then idle),
 2. send the other side, verified in the previous step, to the drafter (it drafts while the
    target verifies: the overlap),
 3. put the drafts on the verified side's requests (`request.spec_token_ids`), keep the drafted
    side out of `self.running` for the parent's `schedule()`, and restore it afterwards.
The target then verifies the drafts with vLLM's own rejection sampler. With `overlap` off
(`sd-ext`) there is one side, drafted and then verified in the same step. With one decoding
request, or while the drafter is down, steps run sequentially / without drafts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from minedraft.channel import DrafterClient, DrafterDown, free_tcp_address, spawn_drafter
from minedraft.subbatch import SubBatches

logger = logging.getLogger("minedraft.scheduler")


@dataclass
class PSDSettings:
    draft: str = ""  # draft checkpoint directory
    draft_address: str | None = None  # a drafter already running (another host, say)
    draft_cores: str = "all"
    draft_dtype: str = "bfloat16"
    draft_enforce_eager: bool = False
    draft_gpu: str | None = None  # GPU index of the drafter (its CUDA_VISIBLE_DEVICES)
    overlap: bool = True  # psd; False = sd-ext
    drafter_timeout_s: float = 30.0
    drafter_start_timeout_s: float = 600.0
    restart_drafter: bool = True
    trace_path: str | None = None  # JSONL, one line per step
    drafter_log: str | None = None

    @classmethod
    def from_vllm_config(cls, vllm_config) -> "PSDSettings":
        extra = (vllm_config.additional_config or {}).get("minedraft", {})
        unknown = set(extra) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown minedraft settings: {sorted(unknown)}")
        settings = cls(**extra)
        if not settings.draft and not settings.draft_address:
            raise ValueError("PSD needs additional_config.minedraft.draft (a checkpoint) "
                             "or draft_address (a running drafter)")
        if settings.draft_address is None:
            from minedraft.config import parse_cores
            from minedraft.models import check_checkpoint
            check_checkpoint(Path(settings.draft))
            target_bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
            if target_bind not in ("auto", "nobind", "all"):
                target = {c for part in target_bind.split("|") for c in parse_cores(part)}
                shared = target & set(parse_cores(settings.draft_cores))
                if shared:
                    raise ValueError(f"drafter cores {settings.draft_cores} overlap the target's "
                                     f"({target_bind}): give the drafter cores of its own")
        return settings


class ExternalDraftProposer:
    """The runner-side proposer: proposes nothing, drafts come from the drafter process."""

    def __init__(self, vllm_config):
        self.vllm_config = vllm_config

    def load_model(self, *args, **kwargs) -> None:
        pass

    def propose(self, sampled_token_ids, *args, **kwargs) -> list[list[int]]:
        return [[] for _ in sampled_token_ids]


class PSDScheduler(Scheduler):
    def __init__(self, vllm_config, *args, **kwargs):
        super().__init__(vllm_config, *args, **kwargs)
        if vllm_config.scheduler_config.async_scheduling:
            raise ValueError("PSD needs async_scheduling=False (--no-async-scheduling)")
        self.settings = PSDSettings.from_vllm_config(vllm_config)
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.batches = SubBatches(overlap=self.settings.overlap)
        self.sent_len: dict[str, int] = {}  # tokens of each request the drafter has
        self.drafts: dict[str, tuple[int, list[int]]] = {}  # rid -> (basis length, draft ids)
        self.to_free: list[str] = []
        self.out_basis: dict[str, int] = {}  # the round in flight: rid -> basis length
        self.restarts = 0
        self.step_index = 0
        self._trace = open(self.settings.trace_path, "a", buffering=1) \
            if self.settings.trace_path else None
        self._step: dict = {}
        self._round_record: dict = {}
        self._verify_start = time.perf_counter()
        self.client: DrafterClient | None = None
        self._starting: DrafterClient | None = None
        self._start_drafter(wait=True)

    # ----------------------------------------------------------------- drafter lifecycle
    def _start_drafter(self, wait: bool = True) -> None:
        """Start (or reach) the drafter and say hello. With `wait` off the hello is collected by
        later steps (`_poll_restart`), so a restart never stalls serving."""
        s = self.settings
        process = None
        address = s.draft_address
        if address is None:
            address = free_tcp_address()
            process = spawn_drafter(s.draft, s.draft_cores, address, s.draft_dtype,
                                    self.max_model_len, s.draft_enforce_eager, s.drafter_log,
                                    gpu=s.draft_gpu)
        client = DrafterClient(address, process, timeout_s=s.drafter_timeout_s)
        client.send({"op": "hello"})
        self._starting, self._starting_since = client, time.monotonic()
        if wait:
            self._poll_restart(timeout_s=s.drafter_start_timeout_s, fatal=True)

    def _poll_restart(self, timeout_s: float = 0.0, fatal: bool = False) -> None:
        from minedraft.drafter import vocab_fingerprint
        client = self._starting
        if client is None:
            return
        try:
            if not client.ready() and timeout_s == 0.0:
                if time.monotonic() - self._starting_since < self.settings.drafter_start_timeout_s:
                    return
                raise DrafterDown("drafter did not start in time")
            hello = client.receive(timeout_s=timeout_s)
        except DrafterDown as exc:
            client.stop()
            self._starting = None
            msg = f"the PSD drafter did not start: {exc}" + (
                f" (log: {self.settings.drafter_log})" if self.settings.drafter_log else "")
            if fatal:
                raise RuntimeError(msg) from None
            logger.error(msg)
            return
        self._starting = None
        tokenizer = self._target_tokenizer()
        if tokenizer is not None and hello["vocab"] != vocab_fingerprint(tokenizer):
            client.stop()
            msg = ("the drafter's vocabulary differs from the target's; "
                   "PSD needs a drafter with the target's tokenizer")
            if fatal:
                raise ValueError(msg)
            logger.error(msg)
            return
        self.client = client
        self.sent_len.clear()  # a new drafter knows no request yet
        self.drafts.clear()
        self.out_basis.clear()
        logger.warning("PSD drafter ready at %s (pid %s), k=%d, overlap=%s", client.address,
                       hello.get("pid"), self.k, self.settings.overlap)

    def _target_tokenizer(self):
        try:
            from transformers import AutoTokenizer
            return AutoTokenizer.from_pretrained(self.vllm_config.model_config.tokenizer)
        except Exception:  # a tokenizer transformers cannot load: skip the check
            return None

    def _drafter_failed(self, exc: Exception) -> None:
        logger.error("PSD drafter failed (%s); serving without speculation", exc)
        if self.client is not None:
            self.client.stop(polite=False)  # it may be hung: do not wait for it
        self.client = None
        self.drafts.clear()
        self.out_basis.clear()
        if self.settings.restart_drafter and self.settings.draft_address is None:
            self.restarts += 1
            logger.warning("restarting the PSD drafter (restart %d)", self.restarts)
            try:
                self._start_drafter(wait=False)
            except Exception as again:  # keep serving without drafts
                logger.error("PSD drafter restart failed: %s", again)

    # ----------------------------------------------------------------- the step
    def schedule(self, *args, **kwargs):
        t0 = time.perf_counter()
        self._poll_restart()
        self._collect_round()  # drafts for the side verified now, drafted during the last step
        self._close_step(t0)
        self._step = {"step": self.step_index, "t": t0}
        self._forget_gone()
        decoding = self._decoding_ids()
        self.batches.rebalance(movable=set(decoding))
        verify_ids, draft_ids = self._plan(decoding)
        overlapped = set(draft_ids).isdisjoint(verify_ids)
        if self.client is not None and draft_ids:
            self._send_round(draft_ids)  # overlapped: the drafter works while the target verifies
            if not overlapped:
                self._collect_round()  # sequential: wait for the drafts, verify them below
        for rid in verify_ids:
            self._attach_drafts(rid)
        hidden_ids = set(draft_ids) - set(verify_ids)
        hidden = [r for r in self.running if r.request_id in hidden_ids]
        out = self._schedule_without(hidden, *args, **kwargs)
        n0, n1 = self.batches.sizes()
        self._step.update(verify=len(verify_ids), draft=len(draft_ids) if self.client else 0,
                          overlapped=overlapped and bool(draft_ids), sides=[n0, n1],
                          drafter_up=self.client is not None, restarts=self.restarts)
        self._verify_start = time.perf_counter()
        return out

    def _plan(self, decoding: list[str]) -> tuple[list[str], list[str]]:
        """Which decoding requests the target verifies now, and which the drafter drafts."""
        side = self.batches.side
        v = [r for r in decoding if side[r] == self.batches.verify_side]
        d = [r for r in decoding if side[r] != self.batches.verify_side]
        if not self.batches.overlap:
            return decoding, decoding  # sd-ext: draft everything, then verify everything
        if self.client is None:
            return decoding, []  # drafter down: everyone decodes, nobody hidden
        if not v and d:  # the verify side drained: swap now rather than waste a step
            self.batches.flip()
            v, d = d, []
        if not d:  # one side only (e.g. a single request): draft it first, sequentially
            return v, v
        return v, d

    def _schedule_without(self, hidden: list, *args, **kwargs):
        """The parent's schedule() with `hidden` out of the running list (and out of its cap)."""
        if not hidden:
            return super().schedule(*args, **kwargs)
        hidden_set = set(id(r) for r in hidden)
        self.running = [r for r in self.running if id(r) not in hidden_set]
        self.max_num_running_reqs -= len(hidden)  # runner slots
        self.max_num_active_reqs -= len(hidden)  # admission of waiting requests
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.max_num_running_reqs += len(hidden)
            self.max_num_active_reqs += len(hidden)
            self.running = hidden + self.running

    def _decoding_ids(self) -> list[str]:
        """Running requests past their prefill, joining a side if new."""
        ids = []
        for r in self.running:
            if r.num_computed_tokens < r.num_tokens - 1 or r.num_output_tokens == 0:
                continue  # still prefilling
            if r.request_id not in self.batches.side:
                self.batches.join(r.request_id)
            ids.append(r.request_id)
        return ids

    def _forget_gone(self) -> None:
        """Requests that left the running list (finished, aborted, preempted) leave their side."""
        running = {r.request_id for r in self.running}
        for rid in [r for r in self.batches.side if r not in running]:
            self.batches.leave(rid)
            self.drafts.pop(rid, None)
            request = self.requests.get(rid)
            if request is None or request.is_finished():
                self.sent_len.pop(rid, None)
                self.to_free.append(rid)

    # ----------------------------------------------------------------- drafter rounds
    def _send_round(self, rids: list[str]) -> None:
        reqs, basis = {}, {}
        for rid in rids:
            request = self.requests[rid]
            tokens = request.all_token_ids
            start = self.sent_len.get(rid, 0)
            reqs[rid] = list(tokens[start:])
            basis[rid] = len(tokens)
            self.sent_len[rid] = len(tokens)
        free, self.to_free = self.to_free, []
        try:
            self.client.send({"op": "draft", "k": self.k, "reqs": reqs, "free": free})
            self.out_basis = basis
            self._round_record = self._step
            self._step["send_s"] = time.perf_counter()
        except DrafterDown as exc:
            self._drafter_failed(exc)

    def _collect_round(self) -> None:
        if self.client is None or not self.client.in_flight:
            return
        t0 = time.perf_counter()
        try:
            reply = self.client.receive()
        except DrafterDown as exc:
            self._drafter_failed(exc)
            return
        record = self._round_record  # the step the round was sent in (this one or the last)
        record["wait_ms"] = record.get("wait_ms", 0) + 1000 * (time.perf_counter() - t0)
        record["draft_ms"] = record.get("draft_ms", 0) + reply["draft_ms"]
        for rid, ids in reply["drafts"].items():
            if rid in self.out_basis:
                self.drafts[rid] = (self.out_basis[rid], ids)
        self.out_basis = {}

    def _attach_drafts(self, rid: str) -> None:
        basis, ids = self.drafts.pop(rid, (None, None))
        request = self.requests[rid]
        if ids and basis == request.num_tokens:  # never stale: drafted from this exact state
            room = request.max_tokens - request.num_output_tokens - 1
            request.spec_token_ids = ids[: max(0, min(self.k, room))]
        else:
            request.spec_token_ids = []

    def update_draft_token_ids(self, draft_token_ids) -> None:
        pass  # the runner's proposer proposes nothing; drafts come from the drafter process

    # ----------------------------------------------------------------- after the target's step
    def update_from_output(self, scheduler_output, model_runner_output):
        verify_ms = 1000 * (time.perf_counter() - self._verify_start)
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        spec = scheduler_output.scheduled_spec_decode_tokens
        self._step.update(verify_ms=verify_ms, drafted_tokens=sum(len(v) for v in spec.values()),
                          verify_start_s=self._verify_start)
        if self.batches.overlap:
            self.batches.flip()
        self.step_index += 1
        return outputs

    def _close_step(self, now: float) -> None:
        """Write the previous step's trace line, now that its drafting time is known."""
        prev, self._step = self._step, {}
        if prev and self._trace is not None:
            prev["start_s"] = prev.pop("t")  # perf_counter of the engine-core process
            prev["step_ms"] = 1000 * (now - prev["start_s"])
            self._trace.write(json.dumps(prev) + "\n")

    def shutdown(self) -> None:
        if self._trace is not None:
            self._trace.close()
        if self._starting is not None:
            self._starting.stop()
        if self.client is not None:
            self.client.stop()
            self.client = None
        super().shutdown()
