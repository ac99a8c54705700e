"""The PSD step logic inside vLLM V1: the two sub-batches and the drafter channel of a scheduler.

Turned on with vLLM's own extension points (no vLLM function is copied or patched):
    scheduler_cls      = "minedraft.vllm_ext.scheduler.PSDScheduler"
    speculative_config = {"method": "custom_class",
                          "model": "minedraft.vllm_ext.proposer.ExternalDraftProposer",
                          "num_speculative_tokens": k}
    additional_config  = {"minedraft": {"draft": DIR, "draft_cores": "1", "mode": "psd", ...}}
    async_scheduling   = False

Each call of `schedule()` is one step:
 1. collect the drafts of the round sent during the previous step (the drafter is then idle),
 2. plan the step (minedraft.core.subbatch.plan_step): which requests the target verifies (those
    with drafts made from their current state) and which the drafter drafts meanwhile,
 3. send that round (the overlap), give the verified requests their drafts through vLLM's own
    `update_draft_token_ids` (which skips finished requests and prefill chunks and validates
    drafts against structured-output grammars), and run the parent's `schedule()` with every
    other decoding request left out of `self.running` for this one call.
The target verifies with vLLM's own rejection sampler. `update_from_output` records the step
(minedraft.core.trace) and swaps the sides. A drafter that fails is replaced in the background
(minedraft.drafter.client.DrafterSupervisor) while steps run without drafts.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import dataclass, field

from minedraft.core import messages as m
from minedraft.core.cores import ThreadPinning
from minedraft.core.errors import ConfigError
from minedraft.core.subbatch import StepPlan, SubBatches, plan_step
from minedraft.core.trace import StepRecord, encode_record
from minedraft.drafter.client import (DrafterDown, DrafterOptions, DrafterSupervisor,
                                      drafter_command)
from minedraft.vllm_ext.policy import make_policy
from minedraft.vllm_ext.settings import PSDSettings

logger = logging.getLogger("minedraft.scheduler")

TRACE_WRITE_S = 1.0  # while requests run, the trace is written at most this often


@dataclass
class Round:
    """A drafter round in flight: request id -> the sequence length it was drafted from."""
    basis: dict[str, int]
    k: int
    record: StepRecord  # the step that sent it (gets draft_ms)
    ingest: bool = False  # it also takes in new prompts
    tokens: int = 0  # tokens sent (the drafter takes them in before drafting)
    sent_s: float = field(default_factory=time.perf_counter)


class PSDSchedulerMixin:
    """The PSD step logic, on top of any class with vLLM's Scheduler interface (`schedule`,
    `update_from_output`, `update_draft_token_ids`, `_free_request`, `running`, `requests`, the
    `max_num_*_reqs` caps): vLLM's own Scheduler in minedraft.vllm_ext.scheduler, a stub in the
    unit tests. `_draft_token_ids(req_ids, drafts)` builds vLLM's DraftTokenIds."""

    def __init__(self, vllm_config, *args, **kwargs):
        super().__init__(vllm_config, *args, **kwargs)
        if vllm_config.scheduler_config.async_scheduling:
            raise ConfigError("PSD needs async_scheduling=False (--no-async-scheduling)")
        extra = (vllm_config.additional_config or {}).get("minedraft", {})
        self.settings = s = PSDSettings.from_dict(extra)
        self.k_max = vllm_config.speculative_config.num_speculative_tokens
        self.batches = SubBatches(overlap=s.overlap)
        self.policy = make_policy(s, self.k_max)
        self.drafts: dict[str, tuple[int, list[int]]] = {}  # rid -> (basis length, draft ids)
        self.sent_len: dict[str, int] = {}  # tokens of each request the drafter holds
        self.to_free: list[str] = []
        self.round: Round | None = None  # the overlapped round in flight
        self.step_index = 0
        self.record: StepRecord | None = None  # the current step, written once complete
        self.wait_ms = 0.0  # how long the current step blocked for drafts
        self._verify_start = 0.0
        self._trace = open(s.trace_path, "ab", buffering=0) if s.trace_path else None
        self._trace_lines: list[bytes] = []  # records not written yet (see `_close_step`)
        self._trace_written = time.perf_counter()
        command = None if s.draft_address else drafter_command(
            s.draft, "{address}", cores=s.draft_cores, dtype=s.draft_dtype,
            max_model_len=self.max_model_len, backend=s.backend,
            enforce_eager=s.draft_enforce_eager, quantization=s.draft_quantization)
        self.drafter = DrafterSupervisor(DrafterOptions(
            command=command, address=s.draft_address, log_path=s.drafter_log, gpu=s.draft_gpu,
            timeout_s=s.drafter_timeout_s, start_timeout_s=s.drafter_start_timeout_s,
            restart=s.restart_drafter, backoff_s=(min(1.0, s.drafter_retry_max_s),
                                                  s.drafter_retry_max_s)),
            target_vocab=self._target_vocab())
        try:
            self.drafter.start(wait=True)
        except DrafterDown as exc:
            raise RuntimeError(f"the PSD drafter did not start: {exc}") from exc
        self._generation = self.drafter.generation
        # vLLM's engine core spins while its worker runs: kept to the target's cores while the
        # drafter works, left free in steps without drafts (it then spins on the idle core)
        cores = s.engine_core_cores()
        in_engine_core = multiprocessing.parent_process() is not None
        self.pinning = ThreadPinning(cores) if cores and in_engine_core else None
        logger.warning("PSD scheduler: mode %s, k=%d, drafter %s", s.mode, self.k_max,
                       s.draft_address or s.draft)

    def _target_vocab(self) -> str | None:
        """The target's vocabulary fingerprint, computed once: restarts compare against it."""
        try:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(self.vllm_config.model_config.tokenizer)
            return m.vocab_fingerprint(tokenizer)
        except Exception as exc:  # a tokenizer transformers cannot load
            logger.warning("PSD cannot check the drafter's vocabulary against the target's: "
                           "loading the target's tokenizer failed (%s: %s)",
                           type(exc).__name__, exc)
            return None

    # ----------------------------------------------------------------- the step
    def schedule(self, *args, **kwargs):
        """One PSD step (see the module docstring); returns vLLM's SchedulerOutput."""
        t0 = time.perf_counter()
        self.wait_ms = 0.0
        if not self._ingesting():
            self._collect_round()  # the drafts of the round sent in the previous step
        self._close_step(t0)
        self.drafter.poll()
        if self.drafter.generation != self._generation:  # a new drafter knows nothing yet
            self._generation = self.drafter.generation
            self.sent_len.clear()
            self.drafts.clear()
        decoding = self._decoding_ids()
        self.batches.rebalance()
        prefill = len(self.waiting) > 0 or len(decoding) < len(self.running)
        kind, k = self.policy.choose(len(decoding), lambda: self._backlog(decoding),
                                     prefill=prefill, requests=decoding) \
            if self.drafter.up else ("none", 0)
        fresh = {rid for rid in decoding if self._fresh(rid)}
        plan = plan_step(self.batches, decoding, fresh, kind)
        if self.pinning is not None:
            self.pinning.hold(kind != "none")
        rec = self.record = StepRecord(step=self.step_index, start_s=t0, kind=plan.kind, k=k,
                                       verify=len(plan.verify), draft=len(plan.draft),
                                       held=len(plan.held), catch_up=len(plan.catch_up),
                                       overlapped=plan.overlapped)
        if plan.catch_up:  # sequential: draft, wait, then verify the same requests
            self._send_round(plan.catch_up, k)
            self._collect_round()
        self._attach_drafts(plan, k)
        t_parent = time.perf_counter()
        out = self._schedule_without(set(plan.held) | set(plan.draft))
        rec.parent_ms = 1000 * (time.perf_counter() - t_parent)
        # Overlapped: the drafter drafts while the target verifies; prompts the target starts to
        # prefill now are taken in at the same time (so no later round stalls on them).
        new = [r.req_id for r in getattr(out, "scheduled_new_reqs", ())
               if r.req_id in self.requests and self.drafter.up]
        if kind == "none" and self.drafter.up and self.policy.catch_up():
            # a drafting step is due (`auto` exploring): the drafter takes in what steps
            # without drafts decoded now, beside this step, rather than in that step's time
            new += [rid for rid in decoding if rid not in new
                    and self.requests[rid].num_tokens > self.sent_len.get(rid, 0)]
        if new and not plan.draft and self.policy.defer_intake():
            new = []  # not needed before a drafting step that may never come (auto)
        if plan.draft or new:
            self._send_round(plan.draft, k, ingest=new)
        rec.sides = self.batches.sizes()
        rec.drafter_up = self.drafter.up
        rec.restarts = self.drafter.restarts
        rec.failures = self.drafter.failures
        rec.wait_ms = self.wait_ms
        self._verify_start = time.perf_counter()
        rec.sched_ms = 1000 * (self._verify_start - t0)
        rec.verify_start_s = self._verify_start
        return out

    def _decoding_ids(self) -> list[str]:
        """Running requests past their prefill (vLLM's running order); requests that left the
        running list leave their side first, then new ones join."""
        running = {r.request_id for r in self.running}
        for rid in [rid for rid in self.batches.side if rid not in running]:
            self.batches.leave(rid)  # finished, aborted or preempted
        ids = []
        for r in self.running:
            if r.num_computed_tokens < r.num_tokens - 1 or r.num_output_tokens == 0:
                continue  # (re)prefilling: scheduled by the parent like any prefill
            if r.request_id not in self.batches.side:
                self.batches.join(r.request_id)
            ids.append(r.request_id)
        return ids

    def _backlog(self, rids: list[str]) -> int:
        """Tokens of `rids` the drafter has not taken in (steps without drafts send none),
        counting those of a round still taking them in (the next drafting round waits for it)."""
        unsent = sum(self.requests[rid].num_tokens - self.sent_len.get(rid, 0) for rid in rids)
        return unsent + (self.round.tokens if self._ingesting() else 0)

    def _fresh(self, rid: str) -> bool:
        """Drafts made from the request's current state are waiting for it."""
        basis, _ = self.drafts.get(rid, (None, None))
        return basis == self.requests[rid].num_tokens

    def _schedule_without(self, hidden: set[str]):
        """The parent's schedule() with `hidden` out of the running list (and out of its caps),
        restored afterwards in vLLM's own order (which decides who is preempted first)."""
        if not hidden:
            return super().schedule()
        before = self.running
        self.running = [r for r in before if r.request_id not in hidden]
        self.max_num_running_reqs -= len(hidden)  # runner slots
        self.max_num_active_reqs -= len(hidden)  # admission of waiting requests
        try:
            return super().schedule()
        finally:
            self.max_num_running_reqs += len(hidden)
            self.max_num_active_reqs += len(hidden)
            kept = {id(r) for r in self.running}  # the parent preempted some, admitted others
            old = {id(r) for r in before}
            self.running = [r for r in before if r.request_id in hidden or id(r) in kept] + \
                [r for r in self.running if id(r) not in old]

    # ----------------------------------------------------------------- drafter rounds
    def _ingesting(self) -> bool:
        """A round that only takes prompts in is still running: no step waits for it until
        the drafter is needed (a step without drafts never is)."""
        rnd, client = self.round, self.drafter.client
        return rnd is not None and not rnd.basis and client is not None and client.busy()

    def _send_round(self, rids: list[str], k: int, ingest: list[str] = ()) -> None:
        """Send a round drafting `rids` (and only taking in the sequences of `ingest`). While
        a round is still out, a round that would only take prompts in is skipped (each prompt
        then goes with its request's first drafting round); any other waits for it."""
        if self.round is not None:
            if not rids:
                return
            self._collect_round()
        if self.drafter.client is None:  # failed earlier in this step
            return
        reqs, basis = {}, {}
        for rid in [*rids, *ingest]:
            tokens = self.requests[rid].all_token_ids
            start = self.sent_len.get(rid, 0)
            reqs[rid] = m.Tokens(start, list(tokens[start:]))
            self.sent_len[rid] = len(tokens)
            if rid not in ingest:
                basis[rid] = len(tokens)
        free, self.to_free = self.to_free, []
        try:  # (k means nothing to a round that only takes prompts in)
            self.drafter.client.send(m.Draft(k=max(k, 1), reqs=reqs, free=free,
                                             ingest=list(ingest)))
        except DrafterDown as exc:
            self._drafter_failed(exc)
            return
        self.round = Round(basis, k, self.record, ingest=bool(ingest),
                           tokens=sum(len(t.ids) for t in reqs.values()))
        if rids:
            self.record.send_s = self.round.sent_s

    def _collect_round(self) -> None:
        rnd, self.round = self.round, None
        if rnd is None or self.drafter.client is None:
            return
        t0 = time.perf_counter()
        try:
            reply = self.drafter.client.receive()
        except DrafterDown as exc:
            self._drafter_failed(exc)
            return
        self.wait_ms += 1000 * (time.perf_counter() - t0)  # this step blocked for it
        rec = rnd.record  # the step that sent the round
        rec.draft_ms = (rec.draft_ms or 0.0) + reply.draft_ms
        rec.forward_ms = (rec.forward_ms or 0.0) + reply.forward_ms
        rec.drafter_holds = reply.holding
        if not rnd.ingest:  # prompt prefills would pass for drafting cost
            self.policy.observe_round(len(rnd.basis), rnd.k, reply.draft_ms)
        elif not rnd.basis:
            self.policy.observe_intake(rnd.tokens, reply.draft_ms)
        for rid in reply.resync:  # the drafter lacks this history: send all of it next time
            self.sent_len.pop(rid, None)
        for rid, ids in reply.drafts.items():
            if rid in rnd.basis and rid in self.requests:
                self.drafts[rid] = (rnd.basis[rid], ids)

    def _drafter_failed(self, exc: Exception) -> None:
        self.round = None
        self.drafts.clear()
        self.drafter.failed(exc)

    def _attach_drafts(self, plan: StepPlan, k: int) -> None:
        """Fresh drafts (at most k, and no more than the request may still generate) go to the
        verified requests through vLLM's own checks; everyone else verified gets none."""
        ids, drafts = [], []
        for rid in plan.verify:
            request = self.requests[rid]
            fresh = self._fresh(rid)
            _, draft = self.drafts.pop(rid, (None, []))
            room = request.max_tokens - request.num_output_tokens - 1
            ids.append(rid)
            drafts.append(list(draft[: max(0, min(k, room))]) if fresh else [])
        for rid in plan.verify:
            self.requests[rid].spec_token_ids = []
        if ids:
            super().update_draft_token_ids(self._draft_token_ids(ids, drafts))

    def update_draft_token_ids(self, draft_token_ids) -> None:
        """Ignore the runner's proposals: the proposer proposes nothing, drafts come from the
        drafter process."""
        pass  # the runner's proposer proposes nothing; drafts come from the drafter process

    def _free_request(self, request, *args, **kwargs):
        """Every way a request ends (finished, aborted while running or waiting) passes here:
        the drafter forgets it in its next round."""
        rid = request.request_id
        if self.sent_len.pop(rid, None) is not None:
            self.to_free.append(rid)
        self.drafts.pop(rid, None)
        return super()._free_request(request, *args, **kwargs)

    # ----------------------------------------------------------------- after the target's step
    def update_from_output(self, scheduler_output, model_runner_output):
        """vLLM's update, then the step's verification time, drafts and acceptance; swaps the
        sides, and closes the step's record when the engine goes idle."""
        t0 = time.perf_counter()
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        rec = self.record
        if rec is not None:
            rec.verify_ms = 1000 * (t0 - self._verify_start)
            spec = scheduler_output.scheduled_spec_decode_tokens
            rec.drafted_tokens = sum(len(v) for v in spec.values())
            rec.tokens = getattr(scheduler_output, "total_num_scheduled_tokens", 0)
            sampled = model_runner_output.sampled_token_ids
            index = model_runner_output.req_id_to_index
            accepted = {rid: max(0, len(sampled[index[rid]]) - 1) for rid, draft in spec.items()
                        if rid in index and len(sampled) > index[rid]}
            rec.accepted_tokens = sum(accepted.values())
            self.policy.observe_drafts([(len(spec[rid]), a) for rid, a in accepted.items()])
            rec.update_ms = 1000 * (time.perf_counter() - t0)
        self.batches.flip()
        self.step_index += 1
        if not self.has_unfinished_requests():  # idle: this step's record is complete now
            self._collect_round()
            self._close_step(time.perf_counter(), idle=True)
        return outputs

    def _close_step(self, now: float, idle: bool = False) -> None:
        """Close the last step's record, now that its drafting time and length are known, and
        write the records kept so far to the trace when the engine goes `idle` or TRACE_WRITE_S
        after the last write. Not one write per step: in the engine core that write took
        ~0.27 ms of every step in every mode (median `sched_ms` at 4 in flight 0.806 against
        0.539 ms without it, about 1% of a step; benchmarks/auto_fixed_load/trace_batched).
        Readers (bench, /metrics) see the records of a run once it is idle, and while it runs
        at most TRACE_WRITE_S late."""
        rec, self.record = self.record, None
        if rec is not None:
            rec.step_ms = 1000 * (now - rec.start_s)
            self.policy.observe_step(rec)
            if self._trace is not None:
                self._trace_lines.append(encode_record(rec))
        if self._trace_lines and (idle or now - self._trace_written >= TRACE_WRITE_S):
            self._trace.write(b"".join(self._trace_lines))
            self._trace_lines.clear()
            self._trace_written = now

    def shutdown(self) -> None:
        """Finish the last record, stop the drafter, then vLLM's shutdown."""
        self._collect_round()
        self._close_step(time.perf_counter(), idle=True)
        if self._trace is not None:
            self._trace.close()
        self.drafter.close()  # a drafter we started is killed at once: vLLM gives us seconds
        super().shutdown()

