"""`minedraft regimes`: where each mode pays, measured. The regime map.

Every mode (each at every k asked for) serves the same ShareGPT workload at each concurrency,
one engine per (mode, k, cores), reused across the concurrencies; psd also runs with twice the
requests in flight (the paper's protocol, paper.md section 4). Results are appended to
OUT/results.json as they come, so an interrupted map resumes where it stopped. Then:

- the best k of each mode per concurrency, the winning mode per concurrency (equal
  concurrency), psd / sd-ext and psd / best other mode per cell, and the paper's protocol
  (psd at 2C against each mode at C);
- mean end-to-end latency and TPOT at finite request rates (each mode at its best k);
- plots: throughput against concurrency per mode, and the winner per concurrency.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from minedraft.analysis import advisor
from minedraft.reporting.plots import plot_regime_map

REGIMES_KIND = "minedraft-regimes"
# mode label -> (mode, target cores): the modes of the map; drafter modes get the other core
DEFAULT_MODES = {"ar@all": ("ar", "all"), "ar@0": ("ar", "0"), "sd@0": ("sd", "0"),
                 "sd@all": ("sd", "all"), "sd-ext": ("sd-ext", "0"), "psd": ("psd", "0"),
                 "auto": ("auto", "0")}
SPECULATIVE = ("sd", "sd-ext", "psd")


@dataclass
class RegimePlan:
    """What to measure: mode labels (keys of DEFAULT_MODES), k values, concurrencies,
    request rates, and the workload."""
    modes: list[str]
    ks: list[int]
    concurrency: list[int]
    rates: list[float]
    output_len: int = 64
    prompts_per_slot: int = 3  # requests per run = clamp(prompts_per_slot x C, 8, max_prompts)
    max_prompts: int = 128
    rate_prompts: int = 64
    seed: int = 0

    def num_prompts(self, c: int) -> int:
        """Requests per run at concurrency c: prompts_per_slot x c, at least 8, at most
        max_prompts."""
        return max(8, min(self.max_prompts, self.prompts_per_slot * c))


def engine_plan(plan: RegimePlan, engine_kwargs: dict) -> list[tuple[str, int | None, object]]:
    """(label, k, EngineConfig) per engine, all validated before anything runs. `auto` gets the
    largest k as its k_max."""
    from minedraft.runtime.config import EngineConfig
    out = []
    for label in plan.modes:
        mode, cores = DEFAULT_MODES[label]
        ks = plan.ks if mode in SPECULATIVE else [max(plan.ks)] if mode == "auto" else [None]
        for k in ks:
            kw = {key: v for key, v in engine_kwargs.items()
                  if mode in ("sd-ext", "psd", "auto") or key not in ("draft_quantization",)}
            config = EngineConfig(mode=mode, target_cores=cores, num_speculative_tokens=k or 1,
                                  seed=plan.seed, **kw)
            out.append((label, k, config.validate()))
    return out


def _key(run: dict) -> tuple:
    return (run["label"], run.get("k"), run["concurrency"], run["protocol"],
            str(run["request_rate"]))


def run_regimes(out_dir, plan: RegimePlan, engine_kwargs: dict, progress: bool = False) -> dict:
    """Measure every (mode, k) at every concurrency (and the rates), appending to
    OUT/results.json; runs already there are skipped. Returns the results document."""
    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.runtime.api import load_workload

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engines = engine_plan(plan, engine_kwargs)  # every configuration checked first
    path = out / "results.json"
    doc = json.loads(path.read_text()) if path.is_file() else \
        {"kind": REGIMES_KIND, "plan": plan.__dict__, "runs": [], **provenance()}
    done = {_key(r) for r in doc["runs"]}
    tokenizer = models.load_tokenizer(models.resolve(engine_kwargs.get("target", models.TARGET)))
    max_len = engine_kwargs.get("max_model_len", 2048)
    pool = load_workload("sharegpt", tokenizer, max(plan.max_prompts, plan.rate_prompts),
                         seed=plan.seed, max_prompt_len=max_len - plan.output_len)

    def cells(label, k):
        for c in plan.concurrency:
            yield c, "equal", math.inf, plan.num_prompts(c), c
            if label == "psd":  # the paper's protocol: twice the requests in flight
                yield c, "paper", math.inf, plan.num_prompts(c), 2 * c

    for label, k, config in engines:  # pass 1: the map, every k
        todo = [cell for cell in cells(label, k)
                if (label, k, cell[0], cell[1], str(cell[2])) not in done]
        if todo:
            _measure(doc, path, label, k, config, todo, pool, plan, progress)
    # pass 2: latency at finite rates, each mode at the k it ran best with most often
    for label, k, config in engines:
        if k != _usual_best_k(doc["runs"], label):
            continue
        todo = [(None, "rate", rate, plan.rate_prompts, None) for rate in plan.rates
                if (label, k, None, "rate", str(rate)) not in done]
        if todo:
            _measure(doc, path, label, k, config, todo, pool, plan, progress)
    return doc


def _measure(doc, path, label, k, config, cells, pool, plan, progress) -> None:
    from minedraft.runtime.api import benchmark
    from minedraft.runtime.engine import Engine
    print(f"== {label} k={k}: starting engine", file=sys.stderr, flush=True)
    with Engine(config) as engine:
        for c, protocol, rate, n, in_flight in cells:
            res = benchmark(engine, pool[:n], output_len=plan.output_len, request_rate=rate,
                            max_concurrency=in_flight, seed=plan.seed, progress=progress)
            _save(doc, path, res, engine.config, label, k, c, protocol, rate)
            what = f"C={c} {protocol}" if c else f"{rate:g} req/s"
            print(f"   {what}: {res['output_throughput_tok_s']:.1f} tok/s, "
                  f"E2EL {res['mean_e2el_ms']:.0f} ms", file=sys.stderr, flush=True)


def _usual_best_k(runs: list[dict], label: str) -> int | None:
    ks = [r.get("k") for (lbl, _), r in best_per_cell(runs).items() if lbl == label]
    return max(set(ks), key=lambda k: (ks.count(k), -(k or 0))) if ks else None


def _save(doc, path, res, config, label, k, c, protocol, rate) -> None:
    res.pop("runs", None)
    res.update(label=label, k=k, concurrency=c, protocol=protocol, request_rate=str(rate),
               config=config.to_dict())
    doc["runs"].append(res)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


# --------------------------------------------------------------------------- the map

def best_per_cell(runs: list[dict], protocol: str = "equal") -> dict:
    """{(label, concurrency): the run with the highest throughput over k}."""
    best: dict = {}
    for r in runs:
        if r["protocol"] != protocol:
            continue
        key = (r["label"], r["concurrency"])
        if key not in best or r["output_throughput_tok_s"] > best[key]["output_throughput_tok_s"]:
            best[key] = r
    return best


def validate_advisor(profile: CostProfile, regime_doc: dict, tolerance: float = 0.05) -> dict:
    """The advisor against a measured regime map: per concurrency, its choice among the modes
    it models (ar@0, ar@all, sd-ext, psd) and the measured best of those; a hit when the choice
    measured within `tolerance` of the best; and predicted against measured psd / sd-ext."""
    plan = regime_doc["plan"]
    best = best_per_cell(regime_doc["runs"])
    rows = []
    for c in sorted({key[1] for key in best}):
        measured = {lbl: best[(lbl, c)]["output_throughput_tok_s"]
                    for lbl in ("ar@0", "ar@all", "sd-ext", "psd") if (lbl, c) in best}
        if not measured:
            continue
        n = max(8, min(plan["max_prompts"], plan["prompts_per_slot"] * c))
        adv = advisor.advise_concurrency(profile, c, output_len=plan["output_len"], num_prompts=n,
                                 k_max=max(plan["ks"]), seed=plan["seed"])
        pick = adv["choice"]["label"]
        top = max(measured.values())
        got = measured.get(pick)
        row = {"concurrency": c, "advised": pick, "advised_k": adv["choice"]["k"],
               "measured_best": max(measured, key=measured.get),
               "hit": got is not None and got >= (1 - tolerance) * top,
               "predicted_psd_over_sd_ext": adv["psd_over_sd_ext"]}
        if "psd" in measured and "sd-ext" in measured:
            row["measured_psd_over_sd_ext"] = measured["psd"] / measured["sd-ext"]
            row["ratio_error"] = row["predicted_psd_over_sd_ext"] / \
                row["measured_psd_over_sd_ext"] - 1
        rows.append(row)
    hits = sum(r["hit"] for r in rows)
    return {"rows": rows, "hit_rate": hits / len(rows) if rows else 0.0, "tolerance": tolerance}


def regime_map(doc: dict) -> dict:
    """The map's numbers: per concurrency, each mode's best throughput (and its k), the winner,
    psd / sd-ext, psd / best other, and the paper's protocol."""
    runs = doc["runs"]
    best = best_per_cell(runs)
    paper = best_per_cell(runs, "paper")
    labels = [m for m in doc["plan"]["modes"] if any(k[0] == m for k in best)]
    rows = []
    for c in sorted({k[1] for k in best}):
        cell = {m: best[(m, c)] for m in labels if (m, c) in best}
        tput = {m: r["output_throughput_tok_s"] for m, r in cell.items()}
        fixed = {m: v for m, v in tput.items() if m != "auto"}
        winner = max(fixed, key=fixed.get)
        row = {"concurrency": c, "throughput": tput,
               "best_k": {m: r.get("k") for m, r in cell.items()}, "winner": winner}
        if "psd" in tput:
            others = {m: v for m, v in fixed.items() if m != "psd"}
            if "sd-ext" in tput:
                row["psd_over_sd_ext"] = tput["psd"] / tput["sd-ext"]
            if others:
                row["psd_over_best_other"] = tput["psd"] / max(others.values())
        if ("psd", c) in paper:
            row["paper_psd_2c"] = paper[("psd", c)]["output_throughput_tok_s"]
            row["paper_psd_2c_k"] = paper[("psd", c)].get("k")
            row["paper_psd_2c_over"] = {m: row["paper_psd_2c"] / v for m, v in tput.items()
                                        if m != "psd"}
        if "auto" in tput:
            same_cores = {m: v for m, v in fixed.items() if m in ("ar@0", "sd-ext", "psd")}
            if same_cores:
                row["auto_over_best_same_cores"] = tput["auto"] / max(same_cores.values())
        rows.append(row)
    rates = [r for r in runs if r["protocol"] == "rate"]
    return {"rows": rows, "labels": labels, "rates": _rate_rows(rates, best)}


def _rate_rows(rates: list[dict], best: dict) -> list[dict]:
    """Latency at finite rates: each mode at its k (the only one, or the one most often best
    in the map)."""
    out = []
    for rate in sorted({r["request_rate"] for r in rates}, key=float):
        at = [r for r in rates if r["request_rate"] == rate]
        for label in dict.fromkeys(r["label"] for r in at):
            ks = [b.get("k") for (m, _), b in best.items() if m == label]
            k = max(set(ks), key=ks.count) if ks else None
            chosen = [r for r in at if r["label"] == label and r.get("k") == k] or \
                [r for r in at if r["label"] == label]
            r = chosen[0]
            out.append({"rate": float(rate), "label": label, "k": r.get("k"),
                        "mean_e2el_ms": r["mean_e2el_ms"], "mean_tpot_ms": r["mean_tpot_ms"],
                        "mean_ttft_ms": r["mean_ttft_ms"],
                        "output_throughput_tok_s": r["output_throughput_tok_s"]})
    return out


def format_map(m: dict) -> str:
    """Markdown tables of the map (throughput with best k, winner, ratios; paper protocol;
    latency at finite rates)."""
    labels = m["labels"]
    auto = any("auto_over_best_same_cores" in row for row in m["rows"])  # issue 15's measure
    lines = ["| C | " + " | ".join(labels) + " | winner | psd / sd-ext | psd / best other |"
             + (" auto / best of ar@0, sd-ext, psd |" if auto else ""),
             "|---|" + "---|" * (len(labels) + 3 + auto)]
    for row in m["rows"]:
        cells = []
        for label in labels:
            v = row["throughput"].get(label)
            k = row["best_k"].get(label)
            cells.append("-" if v is None else f"{v:.0f}" + (f" (k={k})" if k else ""))
        lines.append(f"| {row['concurrency']} | " + " | ".join(cells) +
                     f" | {row['winner']} | {_x(row.get('psd_over_sd_ext'))} | "
                     f"{_x(row.get('psd_over_best_other'))} |"
                     + (f" {_x(row.get('auto_over_best_same_cores'))} |" if auto else ""))
    paper = [r for r in m["rows"] if "paper_psd_2c" in r]
    if paper:
        others = [x for x in labels if x not in ("psd",)]
        lines += ["", "Paper's protocol: psd with 2C requests in flight against each mode at C "
                  "(output tokens/s ratio):", "",
                  "| C | psd at 2C (tok/s) | " + " | ".join(f"vs {o}" for o in others) + " |",
                  "|---|---|" + "---|" * len(others)]
        for r in paper:
            lines.append(f"| {r['concurrency']} | {r['paper_psd_2c']:.0f} (k={r['paper_psd_2c_k']}) | "
                         + " | ".join(_x(r["paper_psd_2c_over"].get(o)) for o in others) + " |")
    if m["rates"]:
        lines += ["", "| request rate | mode | k | mean E2EL ms | mean TPOT ms | mean TTFT ms | "
                  "out tok/s |", "|---|---|---|---|---|---|---|"]
        for r in m["rates"]:
            lines.append(f"| {r['rate']:g}/s | {r['label']} | {r['k'] or '-'} | "
                         f"{r['mean_e2el_ms']:.0f} | {r['mean_tpot_ms']:.1f} | "
                         f"{r['mean_ttft_ms']:.0f} | {r['output_throughput_tok_s']:.0f} |")
    return "\n".join(lines)


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def write_map(doc: dict, out_dir) -> dict:
    """OUT/regimes.md, OUT/map.json and the plots; returns the map."""
    out = Path(out_dir)
    m = regime_map(doc)
    (out / "map.json").write_text(json.dumps(m, indent=1))
    plot_regime_map(m, out / "throughput_vs_concurrency.png")
    hw = doc.get("hardware", {})
    text = ["# Regime map", "", f"Command: `{doc.get('command', '?')}`", "",
            f"Date {doc.get('date', '?')}; hardware {hw.get('cpu', '?')}, {hw.get('cores', '?')} "
            f"cores; versions {doc.get('versions', '?')}. Every number is measured (output "
            "tokens/s, ShareGPT, EOS ignored); each cell is the best k of the mode.", "",
            format_map(m), "", "![throughput vs concurrency](throughput_vs_concurrency.png)"]
    (out / "regimes.md").write_text("\n".join(text) + "\n")
    return m


def write_validation(doc: dict, profile, out_dir, profile_name: str = "") -> str:
    """The simulator against every cell of the map it can simulate, and the advisor's choices
    against the measured best; OUT/validation.md, OUT/validation.json and a plot. Returns a
    one-paragraph summary."""
    from minedraft.analysis.simulate import format_validation, validate_runs
    from minedraft.reporting.plots import plot_sim_vs_bench
    out = Path(out_dir)
    plan = doc["plan"]
    rows = validate_runs(profile, doc["runs"], {"output_len": plan["output_len"]},
                         seed=plan["seed"])
    checked = validate_advisor(profile, doc)
    worst = max((abs(r["error"]) for r in rows), default=0.0)
    within = sum(abs(r["error"]) <= 0.10 for r in rows)
    ratio_errors = [abs(r["ratio_error"]) for r in checked["rows"] if "ratio_error" in r]
    summary = (f"simulator: {within} of {len(rows)} (cell, metric) pairs within 10% (largest "
               f"error {100 * worst:.0f}%); advisor: right (or within 5% of the best) in "
               f"{sum(r['hit'] for r in checked['rows'])} of {len(checked['rows'])} "
               f"concurrencies ({100 * checked['hit_rate']:.0f}%), predicted psd / sd-ext "
               f"within 10% of the measured ratio in "
               f"{sum(e <= 0.10 for e in ratio_errors)} of {len(ratio_errors)}")
    (out / "validation.json").write_text(json.dumps(
        {"profile": profile_name, "simulator": rows, "advisor": checked, "summary": summary},
        indent=1))
    if rows:
        plot_sim_vs_bench(rows, out / "sim_vs_measured.png")
    adv = ["| C | advised | measured best | hit | predicted psd/sd-ext | measured psd/sd-ext |",
           "|---|---|---|---|---|---|"]
    for r in checked["rows"]:
        adv.append(f"| {r['concurrency']} | {r['advised']}"
                   + (f" (k={r['advised_k']})" if r["advised_k"] else "")
                   + f" | {r['measured_best']} | {'yes' if r['hit'] else 'no'} | "
                   f"{r['predicted_psd_over_sd_ext']:.2f}x | "
                   f"{_x(r.get('measured_psd_over_sd_ext'))} |")
    text = ["# The simulator and the advisor against the regime map", "",
            f"Profile: `{profile_name}`. Every 'measured' number is from results.json; every "
            "'simulated' one is predicted by `minedraft simulate` with the profile's costs on "
            "the same workload (requests, output length, requests in flight, rate, k). vLLM's "
            "own sd is not simulated: its drafter runs inside the target's step.", "",
            summary + ".", "", "## Advisor", "", *adv, "", "## Simulator", "",
            format_validation(rows), "", "![simulated vs measured](sim_vs_measured.png)"]
    (out / "validation.md").write_text("\n".join(text) + "\n")
    return summary
