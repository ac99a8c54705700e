"""`--mode auto` under a load that changes over time, against every fixed mode on the same cores
and vLLM's own dynamic speculation (issue 15). Writes OUT/results.json and OUT/auto_choices.png.

    .venv/bin/python benchmarks/run_auto_changing_load.py --out benchmarks/auto

Poisson arrivals whose rate steps low -> high -> low (--schedule RATE:COUNT,...), ShareGPT
prompts, 64 output tokens (EOS ignored), bf16, the target on core 0 and the drafter on core 1
(ar@0 and vLLM's sd on core 0 alone).

With --phases C:COUNT,... the load is closed-loop instead: COUNT requests with C in flight,
then the next phase on the same engine (each phase drains before the next starts). Then
throughput is not set by the arrivals, and every mode's total tokens / total time compares.

With --interleave R, every mode's engine is up at once and serves the whole load R times, the
modes taken in turn, each repeat starting one mode later (A B C, B C A, C A B): a slow spell
of the shared host then falls on every mode alike, no mode always runs first or after the
same one, and each repeat compares runs minutes apart (fresh engines one after the other
left 9-12% between two runs of plain decoding, `auto_low_high/crossing_small_batch`). Each
engine is then warm after its first repeat, as a server is; auto keeps what it learnt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from contextlib import ExitStack
from pathlib import Path


def parse_schedule(text: str) -> tuple:
    return tuple((float(r), int(n)) for r, n in (part.split(":") for part in text.split(",")))


def run_phases(engine, requests: list, phases: tuple, output_len: int) -> dict:
    """Closed-loop phases ((concurrency, count), ...) served in turn on one engine: the totals
    (output tok/s = all tokens / the phases' summed durations, s; mean E2E latency, ms, over
    all requests) and each phase's own metrics as "segments"."""
    from minedraft.runtime.api import benchmark

    segments, start = [], 0
    for i, (concurrency, count) in enumerate(phases):
        seg = benchmark(engine, requests[start:start + count], output_len=output_len,
                        max_concurrency=int(concurrency), warmup=i == 0, progress=False)
        seg.pop("runs", None)
        segments.append(seg)
        start += count
    n = sum(s["num_requests"] for s in segments)
    tokens = sum(s["total_output_tokens"] for s in segments)
    duration = sum(s["duration_s"] for s in segments)
    steps = {}
    for s in segments:
        for key in ("steps_per_kind", "steps_per_k"):
            for name, count in (s.get(key) or {}).items():
                steps.setdefault(key, {}).setdefault(name, 0)
                steps[key][name] += count
    return {"num_requests": n, "total_output_tokens": tokens, "duration_s": duration,
            "output_throughput_tok_s": tokens / duration,
            "mean_e2el_ms": sum(s["mean_e2el_ms"] * s["num_requests"] for s in segments) / n,
            "mean_tpot_ms": sum(s["mean_tpot_ms"] * s["num_requests"] for s in segments) / n,
            **steps, "segments": segments}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/auto", help="output folder")
    p.add_argument("--schedule", default="1:60,6:150,1:60",
                   help="RATE:COUNT segments, requests per second (default: 1:60,6:150,1:60)")
    p.add_argument("--phases", default=None,
                   help="CONCURRENCY:COUNT segments, closed-loop, instead of --schedule")
    p.add_argument("--output-len", type=int, default=64, help="tokens per request")
    p.add_argument("--sd-ext-k", type=int, default=2, help="k of sd-ext (its best in the map)")
    p.add_argument("--psd-k", type=int, default=2, help="k of psd (its best in the map)")
    p.add_argument("--k-max", type=int, default=3,
                   help="auto's largest k (3, as in the regime map: with 4, auto spent a quarter "
                        "of its steps at one request on k = 4, 7%% slower per token than k = 2, "
                        "auto_low_high/phases_all_modes)")
    p.add_argument("--dynamic", default="1:4:2,5:16:1,17:256:0",
                   help="vLLM's dynamic speculation for sd@0: START:END:K batch-size ranges")
    p.add_argument("--modes", default="ar@0,sd-ext,psd,auto,sd-dyn@0",
                   help="which runs, in order (ar@0, sd-ext, psd, auto, sd-dyn@0; sd-ext:K and "
                        "psd:K set k); a label may repeat (each run starts a fresh engine; the "
                        "summary gives medians per label)")
    p.add_argument("--interleave", type=int, default=0, metavar="R",
                   help="every mode's engine up at once, the load served R times by each in "
                        "turn (--modes then lists each mode once)")
    p.add_argument("--kv-cache-gib", type=int, default=None,
                   help="KV cache per engine, GiB (with --interleave several are up at once)")
    p.add_argument("--verbose", action="store_true", help="vLLM's logs in the terminal")
    args = p.parse_args()

    if not args.verbose:
        from minedraft.cli.main import quiet_vllm
        print(f"vLLM's logs: {quiet_vllm()}", flush=True)
    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.core.trace import read_trace, trace_size
    from minedraft.reporting.plots import plot_auto_choices
    from minedraft.runtime.api import benchmark, load_workload
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine, default_draft

    schedule = parse_schedule(args.phases or args.schedule)
    n = sum(count for _, count in schedule)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    q = "int8"
    runs = {
        "ar@0": (EngineConfig(mode="ar", target_cores="0"), None),
        "sd-ext": (EngineConfig(mode="sd-ext", target_cores="0", draft_quantization=q,
                                num_speculative_tokens=args.sd_ext_k), None),
        "psd": (EngineConfig(mode="psd", target_cores="0", draft_quantization=q,
                             num_speculative_tokens=args.psd_k), None),
        "auto": (EngineConfig(mode="auto", target_cores="0", draft_quantization=q,
                              num_speculative_tokens=args.k_max), None),
        "sd-dyn@0": (EngineConfig(mode="sd", target_cores="0", num_speculative_tokens=2),
                     "dynamic"),
    }
    wanted = args.modes.split(",")
    tokenizer = models.load_tokenizer(models.resolve(models.TARGET))
    requests = load_workload("sharegpt", tokenizer, n, max_prompt_len=2048 - args.output_len)
    results, auto_records = [], []

    def engine_for(label: str):
        base, _, k = label.partition(":")
        config, special = runs[base]
        if k:
            config = dataclasses.replace(config, num_speculative_tokens=int(k))
        if args.kv_cache_gib:
            config = dataclasses.replace(config, kv_cache_gib=args.kv_cache_gib)
        extra = None
        if special == "dynamic":
            dyn = [tuple(int(x) for x in part.split(":")) for part in args.dynamic.split(",")]
            extra = {"speculative_config": {
                "method": "draft_model", "model": str(models.resolve(default_draft(config))),
                "num_speculative_tokens": max(k for _, _, k in dyn),
                "num_speculative_tokens_per_batch_size": dyn}}
        return Engine(config, extra_args=extra)

    def serve(label: str, engine) -> None:
        """One run of the whole load on `engine`; its result joins `results`, written at once
        (a long sequence of runs keeps what it measured if it stops)."""
        nonlocal auto_records
        offset = trace_size(engine.config.trace_path)
        if args.phases:
            res = run_phases(engine, requests, schedule, args.output_len)
        else:
            res = benchmark(engine, requests, output_len=args.output_len,
                            request_rate=schedule, progress=False)
        if label == "auto":
            auto_records = read_trace(engine.config.trace_path, offset)
        res.pop("runs", None)
        res.update(label=label, config=engine.config.to_dict())
        results.append(res)
        parts = " / ".join(f"{seg['mean_e2el_ms']:.0f} ms {seg['output_throughput_tok_s']:.1f}"
                           f" tok/s" for seg in res["segments"])
        print(f"   {label}: {res['output_throughput_tok_s']:.1f} tok/s, mean E2EL "
              f"{res['mean_e2el_ms']:.0f} ms (by part: {parts}), "
              f"TPOT {res['mean_tpot_ms']:.1f} ms", flush=True)
        write()

    def write() -> dict:
        doc = _document(results, schedule, args.output_len, auto_records, provenance())
        doc.update(closed_loop=bool(args.phases), interleaved=args.interleave)
        (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
        return doc

    if args.interleave:
        with ExitStack() as stack:
            engines = []
            for label in wanted:
                print(f"== {label}: starting engine", flush=True)
                engines.append(stack.enter_context(engine_for(label)))
            for rep in range(args.interleave):
                print(f"== repeat {rep + 1} of {args.interleave}", flush=True)
                pairs, turn = list(zip(wanted, engines)), rep % len(wanted)
                for label, engine in pairs[turn:] + pairs[:turn]:
                    serve(label, engine)
    else:
        for label in wanted:
            print(f"== {label}", flush=True)
            try:
                with engine_for(label) as engine:
                    serve(label, engine)
            except Exception as exc:  # vLLM refusing a configuration is a result too
                print(f"   {label} failed: {type(exc).__name__}: {exc}", flush=True)
                results.append({"label": label, "error": f"{type(exc).__name__}: {exc}"})
    doc = write()
    for label, row in doc["summary"].items():
        print(f"{label:>10}: {row['runs']} runs, median {row['output_throughput_tok_s']:.1f} "
              f"tok/s, mean E2EL {row['mean_e2el_ms']:.0f} ms "
              f"(by part: {' / '.join(f'{x:.0f}' for x in row['by_part_ms'])}); each run: "
              f"{', '.join(f'{x:.0f}' for x in row['e2el_ms_per_run'])} ms")
    if auto_records:
        plot_auto_choices(doc["auto_steps"], out / "auto_choices.png")
    print(f"wrote {out / 'results.json'}")


def _document(results: list, schedule: tuple, output_len: int, auto_records: list,
              prov: dict) -> dict:
    """The JSON written: every run, medians per label over its runs (mean E2E latency in ms,
    overall and by part of the schedule) and the last auto run's steps."""
    by_label: dict[str, list] = {}
    for r in results:
        if "error" not in r:
            by_label.setdefault(r["label"], []).append(r)
    summary = {}
    for label, runs in by_label.items():
        summary[label] = {
            "runs": len(runs),
            "e2el_ms_per_run": [r["mean_e2el_ms"] for r in runs],
            "tok_s_per_run": [r["output_throughput_tok_s"] for r in runs],
            "mean_e2el_ms": statistics.median(r["mean_e2el_ms"] for r in runs),
            "by_part_ms": [statistics.median(r["segments"][i]["mean_e2el_ms"] for r in runs)
                           for i in range(len(schedule))],
            "output_throughput_tok_s": statistics.median(r["output_throughput_tok_s"]
                                                         for r in runs),
            "by_part_tok_s": [statistics.median(r["segments"][i]["output_throughput_tok_s"]
                                                for r in runs) for i in range(len(schedule))]}
    return {"runs": results, "summary": summary, "schedule": schedule, "output_len": output_len,
            "auto_steps": [{"t": r.start_s, "kind": r.kind, "k": r.k, "decoding":
                            r.verify + r.draft + r.held} for r in auto_records if r.verify],
            **prov}


if __name__ == "__main__":
    main()
