"""`minedraft advise | profile | simulate | report`: the analysis commands of the command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from minedraft.cli.options import (UserError, add_engine_options, int_list, non_negative_float,
                                   number, output_dir, output_file, positive_int, rate_list,
                                   request_rate)
from minedraft.runtime.config import ALL_MODES


# --------------------------------------------------------------------------- value checkers

def alpha_value(text: str) -> float:
    """argparse type: an acceptance probability in [0, 1)."""
    value = number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def cost_ratio(text: str) -> float:
    """argparse type: a finite cost ratio >= 0."""
    value = number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def output_len_value(text: str) -> int | None:
    """argparse type: tokens per request, or 'sharegpt' (None) to draw them from ShareGPT's
    answers."""
    if text == "sharegpt":
        return None
    return positive_int(text)


def sim_modes(text: str) -> list[str]:
    """argparse type: simulator modes, comma-separated (sd-ext and ar@0 are accepted as their
    aliases)."""
    from minedraft.analysis.simulate import MODE_ALIASES, SIM_MODES
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        if MODE_ALIASES.get(m, m) not in SIM_MODES:
            raise argparse.ArgumentTypeError(
                f"unknown mode {m!r}; choose from {', '.join(SIM_MODES)} (sd-ext = sd)")
    if not modes:
        raise argparse.ArgumentTypeError("no mode given")
    return modes


# --------------------------------------------------------------------------- parsers

def add_parsers(sub) -> None:
    """Register advise, profile, simulate, report and regimes."""
    a = sub.add_parser("advise", help="theory: expected tokens, speed-ups, Theorem 1, best k/mode",
                       description="Prints E = (1 - alpha^(k+1)) / (1 - alpha), the SD speed-up "
                                   "over plain decoding, PSD's speed-up over SD, Theorem 1's "
                                   "threshold and ratio, and the recommended mode and k. With "
                                   "--profile the same from measured cost curves.")
    a.add_argument("--alpha", type=alpha_value, default=None,
                   help="acceptance probability of one draft token, in [0, 1)")
    a.add_argument("--k", "-k", type=positive_int, default=None,
                   help="draft length k >= 1 (with --profile: default the profile's k)")
    a.add_argument("--c", type=cost_ratio, default=None,
                   help="cost ratio c = drafter forward time / target forward time, >= 0")
    a.add_argument("--k-max", type=positive_int, default=8,
                   help="largest k considered for the recommendation (default: 8)")
    a.add_argument("--profile", default=None,
                   help="cost profile JSON (minedraft profile, or a scenario name from "
                        "minedraft/scenarios): use measured curves instead of --alpha/--c")
    a.add_argument("--batch", type=positive_int, default=4,
                   help="with --profile: requests in flight for the steady-state closed forms "
                        "(default: 4)")
    a.add_argument("--concurrency", type=positive_int, default=None,
                   help="with --profile: recommend the mode and k for this many requests in "
                        "flight, by simulating every candidate on the profile's workload")
    a.add_argument("--request-rate", type=request_rate, default=None,
                   help="with --profile: recommend the mode and k with the lowest mean "
                        "end-to-end latency at this request rate (Poisson arrivals)")
    a.add_argument("--output-len", type=positive_int, default=64,
                   help="with --concurrency/--request-rate: tokens per request (default: 64)")
    a.add_argument("--json", dest="json_out", default=None, help="also write the numbers here")

    p = sub.add_parser("profile", help="measure a cost profile through vLLM (for simulate)",
                       description="Measures the target's decode and verification step times "
                                   "and the drafter's round time over a grid of batch sizes "
                                   "(ar and sd-ext engines, plus psd for the overlap overhead), "
                                   "prefill time, and acceptance per draft position on ShareGPT; "
                                   "writes a JSON cost profile.")
    add_engine_options(p, only=("target", "draft", "dtype", "target_cores", "draft_cores",
                                "draft_quantization", "enforce_eager", "max_model_len",
                                "kv_cache_gib"),
                       target_cores="0")
    p.add_argument("--num-speculative-tokens", "-k", dest="k", type=positive_int, default=4,
                   help="largest draft length measured: drafter rounds at 1..k, sd-ext and psd "
                        "at k (default: 4)")
    p.add_argument("--batches", type=int_list, default=[1, 2, 4, 8, 16, 32, 64],
                   help="batch sizes measured, comma-separated (default: 1,2,4,8,16,32,64)")
    p.add_argument("--output-len", type=positive_int, default=32,
                   help="tokens generated per request in each measurement (default: 32)")
    p.add_argument("--no-all-cores", action="store_true",
                   help="skip plain decoding on every core (ar@all in simulate and advise)")
    p.add_argument("--prefill-prompts", type=positive_int, default=6,
                   help="prompts of different lengths timed for prefill, fitted with a line "
                        "(default: 6)")
    p.add_argument("--no-psd", action="store_true",
                   help="skip the psd engine (its overhead then defaults to sd-ext's)")
    p.add_argument("--workload-prompts", type=positive_int, default=256,
                   help="ShareGPT prompt/answer lengths stored for simulate (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    p.add_argument("--out", required=True, help="where to write the profile JSON")

    s = sub.add_parser("simulate", help="discrete-event simulation of serving from a cost profile",
                       description="Simulates arrivals, prefill, batching, sub-batch alternation "
                                   "and acceptance with the profile's measured costs; prints the "
                                   "same metrics as bench. --compare checks it against bench "
                                   "results; --scenarios shows the GPU scenario predictions.")
    s.add_argument("--profile", default=None,
                   help="cost profile JSON, or the name of a bundled scenario "
                        "(see --list-scenarios)")
    s.add_argument("--mode", type=sim_modes, default=["ar", "sd", "psd"],
                   help="ar, sd (sequential drafting; = bench's sd-ext on this machine) and/or "
                        "psd, comma-separated (default: ar,sd,psd)")
    s.add_argument("--request-rate", type=rate_list, default=[math.inf],
                   help="requests per second (Poisson), comma-separated for several; inf sends "
                        "all at once (default: inf)")
    s.add_argument("--num-prompts", type=positive_int, default=16,
                   help="number of requests (default: 16)")
    s.add_argument("--output-len", type=output_len_value, default=128,
                   help="tokens per request, or 'sharegpt' to draw them from ShareGPT answer "
                        "lengths (default: 128)")
    s.add_argument("--max-concurrency", type=positive_int, default=None,
                   help="most requests in flight (default: no limit)")
    s.add_argument("--num-speculative-tokens", "-k", dest="k", type=positive_int,
                   default=None, help="draft length (default: the profile's)")
    s.add_argument("--max-num-seqs", type=positive_int, default=256,
                   help="most requests the engine batches (default: 256)")
    s.add_argument("--colocated", action="store_true",
                   help="sd: drafter on the target's devices (the profile's colocated costs)")
    s.add_argument("--seed", type=int, default=0, help="arrivals and acceptance seed (default: 0)")
    s.add_argument("--compare", nargs="+", default=None, metavar="RESULTS",
                   help="bench --json or report results files: simulate each of their runs and "
                        "print the error table (throughput and mean E2E latency)")
    s.add_argument("--tolerance", type=non_negative_float, default=0.10,
                   help="with --compare: exit 1 if an error exceeds this fraction (default: 0.10)")
    s.add_argument("--scenarios", action="store_true",
                   help="print the simulator's predictions for the bundled GPU scenarios next "
                        "to the paper's reported gains")
    s.add_argument("--list-scenarios", action="store_true", help="list the bundled scenarios")
    s.add_argument("--json", dest="json_out", default=None, help="write the results here")

    r = sub.add_parser("report", help="Markdown report with plots from bench sweeps",
                       description="With --results, reads saved results (report results.json "
                                   "or bench --json files); with --run, first runs bench over "
                                   "modes x k x request rates (saving results.json and per-step "
                                   "traces in --out). Writes OUT/report.md and OUT/plots/*.png.")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", nargs="+", default=None,
                     help="saved results files to report on")
    src.add_argument("--run", action="store_true", help="run the sweep first")
    r.add_argument("--out", default="benchmarks/report",
                   help="output folder (default: benchmarks/report)")
    r.add_argument("--mode", type=sim_or_bench_modes, default=["ar", "sd-ext", "psd"],
                   help="--run: modes, comma-separated (default: ar,sd-ext,psd)")
    r.add_argument("--ks", type=int_list, default=[1, 2, 3, 4, 5],
                   help="--run: draft lengths, comma-separated (default: 1,2,3,4,5)")
    r.add_argument("--request-rates", type=rate_list, default=[2.0, math.inf],
                   help="--run: request rates, comma-separated (default: 2,inf)")
    r.add_argument("--dataset", default="sharegpt", help="--run: workload (default: sharegpt)")
    r.add_argument("--num-prompts", type=positive_int, default=16,
                   help="--run: requests per run (default: 16)")
    r.add_argument("--output-len", type=positive_int, default=64,
                   help="--run: tokens per request (default: 64)")
    r.add_argument("--max-concurrency", type=positive_int, default=4,
                   help="--run: most requests in flight (default: 4)")
    add_engine_options(r, only=("target", "draft", "dtype", "target_cores", "draft_cores",
                                "enforce_eager", "max_model_len", "kv_cache_gib"),
                       title="engine (--run)", target_cores="0")
    r.add_argument("--seed", type=int, default=0, help="--run: seed (default: 0)")
    r.add_argument("--no-progress", action="store_true", help="--run: hide progress bars")
    r.add_argument("--profile", default=None,
                   help="cost profile: add a simulator-against-bench section")
    r.add_argument("--title", default="MineDraft benchmark report", help="the report's title")
    r.add_argument("--timeline-k", type=positive_int, default=None,
                   help="k of the sd-ext/psd runs shown in the timeline (default: most common, "
                        "preferring 3)")
    r.add_argument("--timeline-steps", type=positive_int, default=8,
                   help="steps shown in the timeline (default: 8)")
    r.add_argument("--no-scenarios", action="store_true",
                   help="leave out the GPU scenario predictions")
    g = sub.add_parser("regimes", help="the regime map: every mode at every concurrency",
                       description="Measures each mode (at each k) at each concurrency on the "
                                   "same ShareGPT workload, psd also with twice the requests in "
                                   "flight (the paper's protocol), and latency at finite request "
                                   "rates; writes OUT/results.json (resumable), OUT/map.json, "
                                   "OUT/regimes.md and a plot. --results only re-draws them.")
    g.add_argument("--out", default="benchmarks/regimes",
                   help="output folder (default: benchmarks/regimes)")
    g.add_argument("--results", action="store_true",
                   help="do not measure: draw the map from OUT/results.json")
    g.add_argument("--modes", type=regime_modes,
                   default=["ar@all", "ar@0", "sd@0", "sd@all", "sd-ext", "psd", "auto"],
                   help="mode labels, comma-separated: ar@all, ar@0, sd@0, sd@all (vLLM's sd on "
                        "the target's core or on both), sd-ext, psd, auto (target on core 0, "
                        "drafter on core 1) (default: all)")
    g.add_argument("--ks", type=int_list, default=[1, 2, 3, 4],
                   help="draft lengths measured for sd, sd-ext and psd; auto's largest "
                        "(default: 1,2,3,4)")
    g.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8, 16, 32, 64],
                   help="requests in flight, comma-separated (default: 1,2,4,8,16,32,64)")
    g.add_argument("--request-rates", type=rate_list, default=[1.0, 4.0],
                   help="finite request rates for the latency table (default: 1,4)")
    g.add_argument("--output-len", type=positive_int, default=64,
                   help="tokens per request, EOS ignored (default: 64)")
    g.add_argument("--prompts-per-slot", type=positive_int, default=3,
                   help="requests per run = this x C, at least 8 (default: 3)")
    g.add_argument("--max-prompts", type=positive_int, default=128,
                   help="most requests per run (default: 128)")
    g.add_argument("--rate-prompts", type=positive_int, default=64,
                   help="requests per finite-rate run (default: 64)")
    add_engine_options(g, only=("target", "draft", "dtype", "draft_quantization", "enforce_eager",
                                "max_model_len", "kv_cache_gib", "seed"),
                       title="engine")
    g.add_argument("--profile", default=None,
                   help="a cost profile of this machine (minedraft profile): also check the "
                        "simulator and the advisor against the map (OUT/validation.md)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def regime_modes(text: str) -> list[str]:
    """argparse type: regime-map mode labels, comma-separated."""
    from minedraft.reporting.regimes import DEFAULT_MODES
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in DEFAULT_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown mode {bad[0] if bad else ''!r}; choose from {', '.join(DEFAULT_MODES)}")
    return modes


def sim_or_bench_modes(text: str) -> list[str]:
    """argparse type: bench modes, comma-separated."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        if m not in ALL_MODES:
            raise argparse.ArgumentTypeError(
                f"unknown mode {m!r}; choose from {', '.join(ALL_MODES)}")
    if not modes:
        raise argparse.ArgumentTypeError("no mode given")
    return modes


# --------------------------------------------------------------------------- commands

def _profile(name: str | None):
    """A CostProfile from a file or a bundled scenario name."""
    from minedraft.analysis.scenarios import list_scenarios, scenario_path
    from minedraft.core.costmodel import load_profile
    if name is None:
        raise UserError("--profile is required")
    return load_profile(scenario_path(name) if name in list_scenarios() else Path(name))


def _profile_path(name: str) -> Path:
    from minedraft.analysis.scenarios import list_scenarios, scenario_path
    return scenario_path(name) if name in list_scenarios() else Path(name)


def _write_json(path: str, doc) -> None:
    Path(path).write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {path}")


def cmd_advise(args) -> None:
    """`minedraft advise`: the closed forms, a profile's steady state, or a simulated
    recommendation for a concurrency or rate."""
    from minedraft.analysis.advisor import format_report, profile_report, theory_report
    output_file(args.json_out, "--json file")
    if (args.concurrency or args.request_rate) and not args.profile:
        raise UserError("--concurrency and --request-rate need --profile")
    if args.profile and (args.concurrency or args.request_rate):
        from minedraft.analysis.advisor import advise_concurrency, format_advice
        rep = advise_concurrency(_profile(args.profile), args.concurrency or 256,
                                 output_len=args.output_len,
                                 request_rate=args.request_rate or math.inf,
                                 k_max=min(args.k_max, _profile(args.profile).k))
        print(format_advice(rep))
        if args.json_out:
            _write_json(args.json_out, rep)
        return
    if args.profile:
        prof = _profile(args.profile)
        rep = profile_report(prof, args.k or prof.k, args.batch, k_max=min(args.k_max, 8))
    else:
        missing = [f"--{n}" for n in ("alpha", "k", "c") if getattr(args, n) is None]
        if missing:
            raise UserError(f"{', '.join(missing)} required (or give --profile)")
        try:
            rep = theory_report(args.alpha, args.k, args.c, args.k_max)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    print(format_report(rep))
    if args.json_out:
        _write_json(args.json_out, rep)


def cmd_profile(args) -> None:
    """`minedraft profile`: measure and write a cost profile."""
    from minedraft.analysis.profile import ProfileConfig, run_profile
    cfg = ProfileConfig(target=args.target, draft=args.draft, k=args.k,
                        batches=tuple(args.batches), output_len=args.output_len,
                        prefill_prompts=args.prefill_prompts, target_cores=args.target_cores,
                        draft_cores=args.draft_cores, dtype=args.dtype,
                        enforce_eager=args.enforce_eager, max_model_len=args.max_model_len,
                        kv_cache_gib=args.kv_cache_gib, psd=not args.no_psd,
                        draft_quantization=args.draft_quantization,
                        all_cores=not args.no_all_cores,
                        workload_prompts=args.workload_prompts, seed=args.seed)
    cfg.validate()  # cores and models too, before any engine starts
    output_file(args.out, "--out file")
    doc = run_profile(cfg)
    _write_json(args.out, doc)
    t = doc["target"]
    print(f"decode ms by batch {t['decode_ms']}; drafter round ms by [batch, k] "
          f"{[[*p[:-1], round(p[-1], 1)] for p in doc['drafter']['round_ms']]}; acceptance per "
          f"position {[round(a, 3) for a in doc['acceptance_per_position']]}")


def cmd_simulate(args) -> None:
    """`minedraft simulate`: simulate modes on a profile, compare with bench results, or show the
    GPU scenarios."""
    from minedraft.analysis.scenarios import (format_scenario_table, list_scenarios,
                                              scenario_predictions)
    from minedraft.analysis.simulate import format_validation, simulate, validate_runs
    from minedraft.reporting.tables import print_table
    output_file(args.json_out, "--json file")
    if args.list_scenarios:
        for name in list_scenarios():
            print(name)
        return
    if args.scenarios:
        rows = scenario_predictions()
        print(format_scenario_table(rows))
        print("(simulated with assumed GPU costs: see each scenario's 'assumption')")
        if args.json_out:
            _write_json(args.json_out, rows)
        return
    prof = _profile(args.profile)
    if args.compare:
        from minedraft.reporting.report import load_results
        rows = []
        for path in args.compare:  # each file with its own workload
            file_runs, file_meta, _ = load_results([path])
            rows += validate_runs(prof, file_runs, file_meta.get("workload", {}))
        print(format_validation(rows, args.tolerance))
        worst = max((abs(r["error"]) for r in rows), default=0.0)
        print(f"largest error {100 * worst:.1f}% (tolerance {100 * args.tolerance:.0f}%)")
        if args.json_out:
            _write_json(args.json_out, rows)
        if worst > args.tolerance:
            sys.exit(1)
        return
    results = []
    for rate in args.request_rate:
        for mode in args.mode:
            res = simulate(prof, mode, num_prompts=args.num_prompts, output_len=args.output_len,
                           request_rate=rate, max_concurrency=args.max_concurrency, k=args.k,
                           seed=args.seed, max_num_seqs=args.max_num_seqs,
                           colocated=args.colocated)
            res["mode"] = mode
            res["request_rate"] = rate
            res["config"] = {"num_speculative_tokens": args.k or prof.k, "target_cores": "sim"}
            results.append(res)
    for rate in args.request_rate:
        print_table([r for r in results if r["request_rate"] == rate],
                    {"simulated": True, "profile": args.profile, "num_prompts": args.num_prompts,
                     "output_len": args.output_len or "sharegpt", "request_rate": rate,
                     "max_concurrency": args.max_concurrency})
    if args.json_out:
        _write_json(args.json_out, {"runs": results, "profile": args.profile})


def cmd_report(args) -> None:
    """`minedraft report`: run a bench sweep (--run) or read results, then write the Markdown
    report and plots."""
    from minedraft.reporting.report import load_results, run_sweep, write_report
    out = output_dir(args.out)
    if args.profile:
        _profile(args.profile)  # fail before running anything
    if args.run:
        from minedraft.runtime.config import EngineConfig
        engine_kwargs = dict(target=args.target, draft=args.draft, dtype=args.dtype,
                             target_cores=args.target_cores, draft_cores=args.draft_cores,
                             max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
                             enforce_eager=args.enforce_eager)
        for mode in args.mode:  # every configuration checked before any engine starts
            EngineConfig(mode=mode, **{k: v for k, v in engine_kwargs.items()
                                       if mode in ("sd-ext", "psd", "auto")
                                       or k != "draft_cores"}).validate()
        run_sweep(out, modes=args.mode, ks=args.ks, rates=args.request_rates,
                  num_prompts=args.num_prompts, output_len=args.output_len,
                  max_concurrency=args.max_concurrency, engine_kwargs=engine_kwargs,
                  dataset=args.dataset, seed=args.seed, progress=not args.no_progress)
        paths = [out / "results.json"]
    else:
        paths = args.results
    runs, meta, _ = load_results(paths)
    path = write_report(runs, meta, out, title=args.title, profile_path=args.profile
                        and str(_profile_path(args.profile)),
                        timeline_k=args.timeline_k, timeline_steps=args.timeline_steps,
                        scenarios=not args.no_scenarios)
    print(f"wrote {path}")


def cmd_regimes(args) -> None:
    """`minedraft regimes`: measure (or re-draw) the regime map, and check the simulator and
    advisor against it with --profile."""
    from minedraft.reporting.regimes import RegimePlan, run_regimes, write_map
    out = output_dir(args.out)
    if args.profile:
        _profile(args.profile)  # checked before anything runs
    path = out / "results.json"
    if args.results:
        if not path.is_file():
            raise UserError(f"no results to draw: {path} not found")
        doc = json.loads(path.read_text())
    else:
        plan = RegimePlan(modes=args.modes, ks=args.ks, concurrency=args.concurrency,
                          rates=args.request_rates, output_len=args.output_len,
                          prompts_per_slot=args.prompts_per_slot, max_prompts=args.max_prompts,
                          rate_prompts=args.rate_prompts, seed=args.seed)
        engine_kwargs = dict(target=args.target, draft=args.draft, dtype=args.dtype,
                             draft_quantization=args.draft_quantization,
                             enforce_eager=args.enforce_eager, max_model_len=args.max_model_len,
                             kv_cache_gib=args.kv_cache_gib)
        doc = run_regimes(out, plan, engine_kwargs, progress=not args.no_progress)
    from minedraft.reporting.regimes import format_map
    print(format_map(write_map(doc, out)))
    print(f"wrote {out / 'regimes.md'}")
    if args.profile:
        from minedraft.reporting.regimes import write_validation
        summary = write_validation(doc, _profile(args.profile), out, args.profile)
        print(summary)
        print(f"wrote {out / 'validation.md'}")


COMMANDS = {"advise": cmd_advise, "profile": cmd_profile, "simulate": cmd_simulate,
            "report": cmd_report, "regimes": cmd_regimes}
