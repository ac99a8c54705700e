"""Where the milliseconds of a PSD step and of a drafter round go (issue 13), measured.

    .venv/bin/python benchmarks/run_breakdown.py --out benchmarks/breakdown

1. Drafter rounds alone, through the real channel (the process the scheduler starts), for each
   backend: a vLLM engine with its core in its own process (the old drafter), the same with the
   core in the drafter's process (VLLM_ENABLE_V1_MULTIPROCESSING=0, threads pinned), the lean
   runner in bf16 and in int8: round time against the model's own forward passes, by requests.
2. ar@0, sd-ext and psd engines on the same workload, each with vLLM's torch profiler on: the
   target's step split into vLLM's own spans (input preparation, where the persistent batch
   churns when PSD hides half the requests; the forward pass; sampling, where rejection
   sampling runs; bookkeeping), and the PSD trace's split of each step (MineDraft's scheduling,
   vLLM's schedule(), waiting for drafts, verification, update, the engine loop).
Writes OUT/breakdown.json, OUT/breakdown.md and OUT/timeline.png.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import statistics
import tempfile
from pathlib import Path

SPANS = ("gpu_model_runner: preprocess", "gpu_model_runner: forward",
         "gpu_model_runner: postprocess", "gpu_model_runner: sample",
         "gpu_model_runner: bookkeep")


def drafter_rounds(model: str, batches, k: int, prompts, variants) -> list[dict]:
    """Round and forward ms by requests for each drafter variant, through the channel."""
    from minedraft.core import messages as m
    from minedraft.drafter.client import (DrafterClient, drafter_command, free_tcp_address,
                                          spawn_drafter)
    rows = []
    for name, backend, quantization, env in variants:
        address = free_tcp_address()
        cmd = drafter_command(model, address, cores="1", backend=backend,
                              quantization=quantization, max_model_len=2048)
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            client = DrafterClient(address, spawn_drafter(cmd), timeout_s=300)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        try:
            client.send(m.Hello())
            client.receive(timeout_s=600)
            for b in batches:
                seqs = {f"{name}-{b}-{i}": list(p) for i, p in enumerate(prompts[:b])}
                client.send(m.Draft(k=1, reqs={r: m.Tokens(0, s) for r, s in seqs.items()},
                                    ingest=list(seqs)))
                client.receive()
                rounds, forwards = [], []
                for rep in range(6):
                    reqs = {}
                    for rid, s in seqs.items():
                        start = len(s)
                        s.extend([s[-1]] * 2)  # the verified tokens of the last round
                        reqs[rid] = m.Tokens(start, s[start:])
                    client.send(m.Draft(k=k, reqs=reqs))
                    reply = client.receive()
                    if rep:  # the first round warms up
                        rounds.append(reply.draft_ms)
                        forwards.append(reply.forward_ms)
                client.send(m.Draft(k=1, reqs={}, free=list(seqs)))
                client.receive()
                row = {"drafter": name, "batch": b, "k": k,
                       "round_ms": statistics.median(rounds),
                       "forward_ms": statistics.median(forwards)}
                rows.append(row)
                print(f"   {name} b={b}: round {row['round_ms']:.1f} ms", flush=True)
        finally:
            client.close()
    return rows


def profiled_run(mode: str, k: int, concurrency: int, requests, output_len: int,
                 trace_dir: str | None) -> dict:
    """One engine of `mode` (with vLLM's torch profiler when `trace_dir` is set): its bench
    result, its PSD trace and the mean ms per step of vLLM's runner spans."""
    import msgspec

    from minedraft.core.trace import read_trace, trace_size
    from minedraft.runtime.api import benchmark
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine
    drafter = mode in ("sd-ext", "psd")
    config = EngineConfig(mode=mode, target_cores="0", num_speculative_tokens=k,
                          draft_quantization="int8" if drafter else None)
    prof_dir = Path(trace_dir) / mode if trace_dir else None
    extra = {"profiler_config": {"profiler": "torch", "torch_profiler_dir": str(prof_dir)}} \
        if prof_dir else None
    with Engine(config, extra_args=extra) as engine:
        benchmark(engine, requests[:8], output_len=16, max_concurrency=concurrency,
                  progress=False)  # warm-up
        offset = trace_size(engine.config.trace_path)
        if prof_dir:
            engine.llm_engine.start_profile()
        res = benchmark(engine, requests, output_len=output_len, max_concurrency=concurrency,
                        progress=False, warmup=False)
        if prof_dir:
            engine.llm_engine.stop_profile()
        records = [msgspec.to_builtins(r) for r in read_trace(engine.config.trace_path, offset)]
    res.pop("runs", None)
    return {"result": res, "records": records, "spans": _spans(prof_dir) if prof_dir else {}}


def _spans(prof_dir: Path) -> dict:
    """Mean ms per occurrence of vLLM's runner spans in the worker's trace."""
    files = glob.glob(str(prof_dir / "**" / "*.json*"), recursive=True)
    totals: dict[str, list[float]] = {name: [] for name in SPANS}
    for f in files:
        opener = gzip.open if f.endswith(".gz") else open
        with opener(f, "rt") as fh:
            try:
                events = json.load(fh).get("traceEvents", [])
            except (ValueError, AttributeError):
                continue
        for e in events:
            if e.get("name") in totals and e.get("ph") == "X":
                totals[e["name"]].append(e["dur"] / 1000)
    return {name: {"mean_ms": statistics.fmean(v), "count": len(v)}
            for name, v in totals.items() if v}


def step_split(records: list[dict]) -> dict:
    """Mean ms per verifying step: MineDraft's scheduling (without waiting), vLLM's schedule(),
    waiting for drafts, verification, update_from_output, and the engine loop (the rest)."""
    steps = [r for r in records if r.get("verify") and r.get("verify_ms") is not None]
    if not steps:
        return {}
    mean = lambda f: statistics.fmean(f(r) for r in steps)  # noqa: E731
    ours = mean(lambda r: r.get("sched_ms", 0) - r.get("parent_ms", 0) - r.get("wait_ms", 0))
    out = {"minedraft_schedule_ms": ours, "vllm_schedule_ms": mean(lambda r: r.get("parent_ms", 0)),
           "wait_for_drafts_ms": mean(lambda r: r.get("wait_ms", 0)),
           "verify_ms": mean(lambda r: r["verify_ms"]),
           "update_ms": mean(lambda r: r.get("update_ms", 0)),
           "step_ms": mean(lambda r: r["step_ms"]),
           "draft_ms": mean(lambda r: r.get("draft_ms") or 0.0),
           "draft_forward_ms": mean(lambda r: r.get("forward_ms") or 0.0)}
    out["engine_loop_ms"] = out["step_ms"] - out["minedraft_schedule_ms"] - \
        out["vllm_schedule_ms"] - out["wait_for_drafts_ms"] - out["verify_ms"] - out["update_ms"]
    out["tokens_verified_per_step"] = mean(lambda r: r["verify"] + r.get("drafted_tokens", 0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/breakdown", help="output folder")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--num-prompts", type=int, default=32, help="requests per engine run")
    p.add_argument("--output-len", type=int, default=64, help="tokens per request")
    p.add_argument("-k", type=int, default=2, help="draft tokens")
    p.add_argument("--no-drafter-rounds", action="store_true",
                   help="skip timing the drafter backends alone")
    p.add_argument("--torch-profiler", action="store_true",
                   help="also record vLLM's torch profiler spans (slow: on this machine its "
                        "trace export for an sd-ext run outlasted vLLM's worker timeout)")
    args = p.parse_args()

    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.core.trace import StepRecord
    from minedraft.reporting.plots import plot_timeline
    from minedraft.runtime.api import load_workload

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = models.load_tokenizer(models.resolve(models.TARGET))
    requests = load_workload("sharegpt", tokenizer, args.num_prompts,
                             max_prompt_len=2048 - args.output_len)
    draft = str(models.resolve(models.DRAFTER))
    print("== drafter rounds alone", flush=True)
    variants = [("vllm, core in its own process", "vllm", None, {}),
                ("vllm, core in-process, pinned", "vllm", None,
                 {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
                ("lean bf16", "lean", None, {}), ("lean int8", "lean", "int8", {})]
    rounds = [] if args.no_drafter_rounds else drafter_rounds(
        draft, [1, 4, 16], args.k, [r.prompt_token_ids for r in requests], variants)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("ar", "sd-ext", "psd"):
            print(f"== {mode}", flush=True)
            runs[mode] = profiled_run(mode, args.k, args.concurrency, requests,
                                      args.output_len, tmp if args.torch_profiler else None)
    doc = {"drafter_rounds": rounds,
           "engines": {mode: {"throughput_tok_s": r["result"]["output_throughput_tok_s"],
                              "vllm_spans_ms": r["spans"], "step_split_ms": step_split(
                                  r["records"])} for mode, r in runs.items()},
           "workload": vars(args), **provenance()}
    (out / "breakdown.json").write_text(json.dumps(doc, indent=1))
    traces = {f"{mode} k={args.k}, {args.concurrency} in flight":
              [StepRecord(**{k: v for k, v in rec.items() if k in StepRecord.__struct_fields__})
               for rec in runs[mode]["records"]] for mode in ("sd-ext", "psd")}
    plot_timeline(traces, out / "timeline.png", steps=10)
    (out / "breakdown.md").write_text(format_breakdown(doc))
    print(format_breakdown(doc))


def format_breakdown(doc: dict) -> str:
    """breakdown.json as Markdown (sections without data are left out)."""
    lines = ["# Where a PSD step's milliseconds go", "",
             f"Command: `{doc['command']}`; {doc['date']}; {doc['hardware']['cpu']}. All measured.",
             ""]
    if doc["drafter_rounds"]:
        lines += ["## Drafter rounds alone (k = %d, drafter on core 1)" % doc["workload"]["k"], "",
                  "| drafter | requests | round ms | forward passes ms | round / forward |",
                  "|---|---|---|---|---|"]
        for r in doc["drafter_rounds"]:
            ratio = r["round_ms"] / r["forward_ms"] if r["forward_ms"] else float("nan")
            lines.append(f"| {r['drafter']} | {r['batch']} | {r['round_ms']:.1f} | "
                         f"{r['forward_ms']:.1f} | {ratio:.2f} |")
        lines += ["", "(vLLM backends: `forward` is their whole engine time; the lean runner "
                  "times its forward passes alone.)", ""]
    if any(e["vllm_spans_ms"] for e in doc["engines"].values()):
        lines += ["## The target's step (vLLM's profiler spans, mean ms per step)", "",
                  "| engine | tok/s | " + " | ".join(s.split(": ")[1] for s in SPANS) + " |",
                  "|---|---|" + "---|" * len(SPANS)]
        for mode, e in doc["engines"].items():
            lines.append(f"| {mode} | {e['throughput_tok_s']:.0f} | " + " | ".join(
                f"{e['vllm_spans_ms'].get(s, {}).get('mean_ms', float('nan')):.1f}"
                for s in SPANS) + " |")
        lines.append("")
    lines += ["## A step, from MineDraft's trace (mean ms)", "",
              "| engine | tok/s | MineDraft schedule | vLLM schedule | wait for drafts | verify | "
              "update | engine loop | step | draft round | drafter forwards | tokens verified |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, e in doc["engines"].items():
        s = e["step_split_ms"]
        if s:
            lines.append(f"| {mode} | {e['throughput_tok_s']:.0f} | " + " | ".join(
                f"{s[key]:.1f}" for key in (
                    "minedraft_schedule_ms", "vllm_schedule_ms", "wait_for_drafts_ms",
                    "verify_ms", "update_ms", "engine_loop_ms", "step_ms", "draft_ms",
                    "draft_forward_ms", "tokens_verified_per_step")) + " |")
    lines += ["", "![timeline](timeline.png)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
