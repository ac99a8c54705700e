"""`minedraft distill | evaluate-drafter`: training drafters and judging them."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from minedraft import models
from minedraft.cli.options import (UserError, add_engine_options, non_negative_float,
                                   output_dir, output_file, positive_float, positive_int)
from minedraft.train.distill import DistillConfig
from minedraft.train.evaluate import EvalConfig

_DISTILL_DEFAULTS = {f.name: f.default for f in fields(DistillConfig)}
_EVAL_DEFAULTS = {f.name: f.default for f in fields(EvalConfig)}

# option -> (DistillConfig field, type, help without the default)
DISTILL_OPTIONS = {
    "--layers": ("layers", positive_int, "drafter layers, taken evenly from the target"),
    "--tokens": ("tokens", positive_int, "answer tokens to train on"),
    "--time-budget": ("time_budget_min", positive_float,
                      "stop training after this many minutes (none: no limit)"),
    "--train-prompts": ("train_prompts", positive_int,
                        "ShareGPT training prompts answered by the target"),
    "--heldout-prompts": ("heldout_prompts", positive_int, "held-out prompts for evaluation"),
    "--answer-len": ("answer_len", positive_int, "tokens per generated answer"),
    "--max-prompt-len": ("max_prompt_len", positive_int, "longest training prompt in tokens"),
    "--batch-tokens": ("batch_tokens", positive_int, "padded tokens per optimizer step"),
    "--soft-top-k": ("soft_top_k", int,
                     "learn the target's distribution over its top k tokens at each answer "
                     "token, 0 to learn its greedy token only (20 is vLLM's maximum)"),
    "--corpus-dir": ("corpus_dir", str,
                     "where the generated corpus is cached, to share it between runs "
                     "(none: --out)"),
    "--eval-every": ("eval_every_min", positive_float,
                     "minutes between held-out evaluations and checkpoints"),
    "--lr": ("lr", positive_float, "peak learning rate, cosine decay"),
    "--seed": ("seed", int, "seed"),
}


def add_parsers(sub) -> None:
    """Register distill and evaluate-drafter."""
    d = sub.add_parser("distill", help="train a drafter that imitates a target",
                       description="Generates the target's greedy answers to ShareGPT prompts "
                                   "with vLLM, then trains a few of the target's layers (frozen, "
                                   "tied embeddings) on them. Checkpoints and resumes in --out.")
    add_engine_options(d, only=("target",))
    d.add_argument("--out", required=True,
                   help="output directory: corpus, training state, checkpoint, report.json, "
                        "learning_curve.png")
    for flag, (name, kind, text) in DISTILL_OPTIONS.items():
        default = _DISTILL_DEFAULTS[name]
        d.add_argument(flag, dest=name, type=kind, default=default,
                       help=f"{text} (default: {'none' if default is None else default})")
    d.add_argument("--export-bundle", action="store_true",
                   help="also store the result as the bundled drafter (minedraft/assets)")

    e = sub.add_parser("evaluate-drafter", help="measure a drafter through vLLM's SD",
                       description="Acceptance (greedy and temperature 1), mean accepted length "
                                   "for k = 1..max-k, cost ratio c and expected/measured SD "
                                   "speed-up, on held-out ShareGPT prompts.")
    add_engine_options(e, only=("target", "dtype", "target_cores", "enforce_eager", "seed"))
    e.add_argument("--draft", default=models.DRAFTER,
                   help="drafter: bundled name or checkpoint directory; several, comma-separated, "
                        "to compare them in one table against one shared ar run "
                        f"(default: {models.DRAFTER})")
    v = _EVAL_DEFAULTS
    e.add_argument("--max-k", type=positive_int, default=v["max_k"],
                   help=f"largest k measured (default: {v['max_k']})")
    e.add_argument("--num-prompts", type=positive_int, default=v["num_prompts"],
                   help=f"held-out prompts (default: {v['num_prompts']})")
    e.add_argument("--output-len", type=positive_int, default=v["output_len"],
                   help=f"tokens per request (default: {v['output_len']})")
    e.add_argument("--max-concurrency", type=positive_int, default=v["max_concurrency"],
                   help=f"requests in flight (default: {v['max_concurrency']})")
    e.add_argument("--max-prompt-len", type=positive_int, default=v["max_prompt_len"],
                   help="longest held-out prompt in tokens; prompt + output <= 1024 "
                        f"(default: {v['max_prompt_len']})")
    e.add_argument("--stop-at-eos", action="store_true",
                   help="measure acceptance and speed-up on answers that end at the target's end "
                        "of turn, as a server ends them (default: every request generates "
                        "exactly --output-len tokens, EOS ignored, as in the throughput "
                        "benchmarks; the cost ratio is always measured that way)")
    e.add_argument("--json", dest="json_out", default=None, help="write the results here")
    e.add_argument("--plot", default=None,
                   help="write a PNG: the drafters' learning curves (from distill's report) "
                        "and their acceptance, cost ratio and expected speed-ups")


def cmd_distill(args) -> None:
    """`minedraft distill`: train a drafter, write its learning curve, optionally bundle it."""
    from minedraft.reporting.plots import plot_learning_curves
    from minedraft.train.distill import distill, learning_curve

    cfg = DistillConfig(target=args.target, out=args.out,
                        **{name: getattr(args, name) for name, _, _ in DISTILL_OPTIONS.values()})
    cfg.validate()
    models.check_model(cfg.target)
    out = output_dir(args.out)
    if cfg.corpus_dir:
        output_dir(cfg.corpus_dir, "--corpus-dir")
    report = distill(cfg)
    plot_learning_curves({f"{len(report['target_layers_kept'])} layers": learning_curve(report)},
                         out / "learning_curve.png")
    print(f"drafter: {args.out} ({len(report['target_layers_kept'])} layers "
          f"{report['target_layers_kept']})")
    print(f"trained on {report['tokens_seen']} answer tokens in {report['train_seconds'] / 60:.1f} "
          f"min (+{report['corpus_seconds'] / 60:.1f} min generating the corpus)")
    print(f"held-out greedy agreement {report['heldout_agreement']:.3f}, "
          f"loss {report['heldout_loss']:.3f}")
    if args.export_bundle:
        print(f"bundled as {models.export_drafter_bundle(Path(args.out))}")


def cmd_evaluate_drafter(args) -> None:
    """`minedraft evaluate-drafter`: measure one or more drafters through vLLM's own speculative
    decoding."""
    from minedraft.bench.provenance import provenance
    from minedraft.train.evaluate import compare_drafters, format_comparison, format_evaluation

    drafts = [d.strip() for d in args.draft.split(",") if d.strip()]
    if not drafts:
        raise UserError("--draft needs at least one drafter")
    for name in [args.target, *drafts]:
        models.check_model(name)
    output_file(args.json_out, "--json file")
    output_file(args.plot, "--plot file")
    cfg = EvalConfig(target=args.target, draft=drafts[0], max_k=args.max_k,
                     num_prompts=args.num_prompts, output_len=args.output_len,
                     max_concurrency=args.max_concurrency, dtype=args.dtype,
                     target_cores=args.target_cores, enforce_eager=args.enforce_eager,
                     seed=args.seed, max_prompt_len=args.max_prompt_len,
                     stop_at_eos=args.stop_at_eos)
    results = compare_drafters(cfg, drafts)
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
        from minedraft.reporting.plots import plot_drafter_comparison
        plot_drafter_comparison(results, args.plot)
        print(f"wrote {args.plot}")


COMMANDS = {"distill": cmd_distill, "evaluate-drafter": cmd_evaluate_drafter}
