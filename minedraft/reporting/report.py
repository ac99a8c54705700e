"""`minedraft report`: bench sweeps (modes x k x request rates) and their Markdown report with plots.

`run_sweep` serves one workload with every (mode, k) engine in turn (one engine per pair, reused
over the request rates) and saves `results.json` plus the per-step traces of sd-ext and psd.
`write_report` reads such results (or `bench --json` files) and writes `report.md` with PNG plots:
throughput against k, latency distributions, acceptance per draft position, a timeline of drafter
and target activity for sd-ext and psd, and optionally the simulator against the measurements.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from minedraft.reporting.plots import (plot_acceptance, plot_latency, plot_sim_vs_bench,
                                   plot_throughput_vs_k, plot_timeline, rate_label, run_k)
from minedraft.core.errors import MineDraftError
from minedraft.core.trace import read_trace

SWEEP_KIND = "minedraft-sweep"


class ReportError(MineDraftError, ValueError):
    """Results that cannot be reported; one line for the user."""


# --------------------------------------------------------------------------- running

def run_sweep(out_dir, *, modes, ks, rates, num_prompts: int, output_len: int,
              max_concurrency: int | None, engine_kwargs: dict, dataset: str = "sharegpt",
              seed: int = 0, progress: bool = False) -> dict:
    """Run bench for every mode x k x rate; save and return the results document."""
    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.runtime.api import benchmark, load_workload
    from minedraft.runtime.config import EngineConfig
    from minedraft.runtime.engine import Engine

    out = Path(out_dir)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    plan = []
    for mode in modes:
        for k in ([ks[0]] if mode == "ar" else ks):
            trace = f"traces/{mode}-k{k}.jsonl" if mode in ("sd-ext", "psd") else None
            cfg = EngineConfig(mode=mode, num_speculative_tokens=k, seed=seed,
                               trace_path=str(out / trace) if trace else None,
                               **{key: v for key, v in engine_kwargs.items()
                                  if not (key == "draft_cores" and mode not in ("sd-ext", "psd"))})
            plan.append((cfg.validate(), trace))  # every configuration checked before any run
    target = engine_kwargs.get("target", models.TARGET)
    tokenizer = models.load_tokenizer(models.resolve(target))
    max_model_len = engine_kwargs.get("max_model_len", 2048)
    requests = load_workload(dataset, tokenizer, num_prompts, seed=seed,
                             max_prompt_len=max_model_len - output_len)
    runs = []
    for cfg, trace in plan:
        if trace:
            (out / trace).write_text("")
        print(f"== {cfg.mode} k={cfg.num_speculative_tokens}: starting engine", file=sys.stderr)
        with Engine(cfg) as engine:
            # warm-up (as bench does), kept out of the traces' offsets
            benchmark(engine, requests[: min(4, len(requests))], output_len=8, warmup=False,
                      progress=False)
            for rate in rates:
                offset = (out / trace).stat().st_size if trace else 0
                res = benchmark(engine, requests, output_len=output_len, request_rate=rate,
                                max_concurrency=max_concurrency, seed=seed, progress=progress,
                                warmup=False)
                res.update(config=cfg.to_dict(), request_rate=rate,
                           trace=trace, trace_offset=offset)
                res.pop("runs", None)
                runs.append(res)
                print(f"   rate {rate_label(rate)}: {res['output_throughput_tok_s']:.1f} tok/s",
                      file=sys.stderr)
    doc = {"kind": SWEEP_KIND, "runs": runs, **provenance(),
           "workload": {"dataset": dataset, "num_prompts": num_prompts,
                        "output_len": output_len, "max_concurrency": max_concurrency,
                        "request_rates": [str(r) for r in rates], "seed": seed}}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    return doc


# --------------------------------------------------------------------------- reading

def load_results(paths) -> tuple[list[dict], dict, Path]:
    """Runs (each with `request_rate` and `config`) from sweep results or `bench --json` files;
    the first document's metadata; the folder trace paths are relative to."""
    runs, meta, base = [], {}, None
    for p in map(Path, paths):
        if not p.is_file():
            raise ReportError(f"results file not found: {p}")
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{p} is not JSON: {exc}") from None
        base = base or p.parent
        meta = meta or doc
        wl = doc.get("workload", {})
        items = doc["runs"] if isinstance(doc.get("runs"), list) and doc["runs"] and \
            "mode" in doc["runs"][0] else [doc]
        for r in items:
            if "mode" not in r or "output_throughput_tok_s" not in r:
                raise ReportError(f"{p}: not bench results (a run lacks mode/throughput)")
            r = dict(r)
            r.setdefault("request_rate", float(wl.get("request_rate", "inf")))
            r["request_rate"] = float(r["request_rate"])
            r.setdefault("config", {})
            r["_base"] = str(p.parent)
            runs.append(r)
    if not runs:
        raise ReportError("no results given")
    return runs, meta, base


def _trace_of(run: dict) -> list:
    trace = run.get("trace")
    if not trace:
        return []
    path = Path(run["_base"]) / trace
    if not path.is_file():
        return []
    recs = read_trace(str(path), int(run.get("trace_offset", 0)))
    return recs


# --------------------------------------------------------------------------- writing

def _fmt(v, spec="{:.1f}"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return spec.format(v)


def results_table(runs: list[dict]) -> str:
    """Markdown table of sweep runs: throughput (and against ar at the same rate), latencies,
    acceptance, step time, overlap."""
    lines = ["| mode | k | request rate | out tok/s | vs ar | mean TTFT ms | mean TPOT ms | "
             "mean E2EL ms | p99 E2EL ms | accept | acc len | step ms | overlap |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ar = {r["request_rate"]: r for r in runs if r["mode"] == "ar"}
    for r in runs:
        base = ar.get(r["request_rate"])
        vs = r["output_throughput_tok_s"] / base["output_throughput_tok_s"] if base else None
        lines.append("| " + " | ".join([
            r["mode"], str(run_k(r) or "-"), rate_label(r["request_rate"]),
            _fmt(r["output_throughput_tok_s"]), _fmt(vs, "{:.2f}x"),
            _fmt(r.get("mean_ttft_ms"), "{:.0f}"), _fmt(r.get("mean_tpot_ms")),
            _fmt(r.get("mean_e2el_ms"), "{:.0f}"), _fmt(r.get("p99_e2el_ms"), "{:.0f}"),
            _fmt(r.get("acceptance_rate"), "{:.3f}"), _fmt(r.get("mean_accepted_length"), "{:.2f}"),
            _fmt(r.get("mean_step_ms")), _fmt(r.get("overlap_efficiency"), "{:.2f}")]) + " |")
    return "\n".join(lines)


def _timeline_traces(runs: list[dict], k: int | None) -> dict[str, list]:
    """sd-ext and psd traces at the same k (the given one, else the most common), busiest rate."""
    traced = [r for r in runs if r["mode"] in ("sd-ext", "psd") and _trace_of(r)]
    if not traced:
        return {}
    ks = [run_k(r) for r in traced]
    k = k if k in ks else max(set(ks), key=lambda x: (ks.count(x), x == 3))
    out = {}
    for mode in ("sd-ext", "psd"):
        cands = [r for r in traced if r["mode"] == mode and run_k(r) == k]
        if cands:
            best = max(cands, key=lambda r: r["request_rate"])
            out[f"{mode} k={k} @ {rate_label(best['request_rate'])}"] = _trace_of(best)
    return out


def write_report(runs: list[dict], meta: dict, out_dir, *, title: str = "MineDraft benchmark",
                 profile_path: str | None = None, timeline_k: int | None = None,
                 timeline_steps: int = 8, scenarios: bool = True) -> Path:
    """Write report.md and its PNGs into out_dir; return the report's path."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plot_throughput_vs_k(runs, out / "plots" / "throughput_vs_k.png")
    plot_latency(runs, out / "plots" / "latency.png")
    plot_acceptance(runs, out / "plots" / "acceptance.png")
    traces = _timeline_traces(runs, timeline_k)
    if traces:
        plot_timeline(traces, out / "plots" / "timeline.png", steps=timeline_steps)
    wl = meta.get("workload", {})
    md = [f"# {title}", ""]
    if meta.get("command"):
        md += ["Command:", "", f"    {meta['command']}", ""]
    info = ", ".join(f"{k}={v}" for k, v in wl.items())
    hw = meta.get("hardware", {})
    md += [f"Workload: {info or 'see the results files'}.",
           f"Date: {meta.get('date', '?')}. Hardware: {hw.get('cpu', hw) if hw else '?'}. "
           f"Versions: {meta.get('versions', '?')}.", "",
           "## Results", "", results_table(runs), "",
           "`vs ar`: output throughput relative to ar at the same request rate. `cores` and every "
           "other setting of each run are in the results file (`config`).", "",
           "## Throughput against k", "", "![throughput vs k](plots/throughput_vs_k.png)", "",
           "## Latency", "",
           "TTFT, TPOT and end-to-end latency per run (bar: p50 to p99 over requests; dot: mean).",
           "", "![latency](plots/latency.png)", "",
           "## Acceptance per draft position", "",
           "Share of verified drafts whose first i tokens were all accepted (vLLM's "
           "`num_accepted_tokens_per_pos` / drafts).", "", "![acceptance](plots/acceptance.png)",
           ""]
    if traces:
        md += ["## Drafter and target activity", "",
               f"{timeline_steps} verified steps from the PSD scheduler's per-step trace of each "
               "run (from its steady state, a third of the way in). sd-ext drafts, then verifies the same requests; psd "
               "drafts one sub-batch while the target verifies the other, so the bars overlap.",
               "", "![timeline](plots/timeline.png)", ""]
    if profile_path:
        from minedraft.analysis.simulate import format_validation, validate_runs
        from minedraft.core.costmodel import load_profile
        rows = validate_runs(load_profile(profile_path), runs, wl)
        if rows:
            plot_sim_vs_bench(rows, out / "plots" / "sim_vs_bench.png")
            worst = max(abs(r["error"]) for r in rows)
            md += ["## Simulator against bench", "",
                   f"`minedraft simulate` with the profile `{profile_path}` on each run's workload "
                   f"(same prompts count, arrivals and concurrency cap). Largest error: "
                   f"{100 * worst:.1f}%.", "", format_validation(rows), "",
                   "![simulated vs measured](plots/sim_vs_bench.png)", ""]
    if scenarios:
        from minedraft.analysis.scenarios import format_scenario_table, scenario_predictions
        md += ["## GPU scenarios (assumptions, not measurements)", "",
               "The simulator on cost profiles built from published GPU figures "
               "(minedraft/scenarios/*.json, each with its sources and assumptions), next to the "
               "gains paper.md section 3 reports. These are predictions of the model, not "
               "measurements.", "", format_scenario_table(scenario_predictions()), ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
