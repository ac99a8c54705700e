"""Scenario cost profiles built from published GPU figures (assumptions, clearly labelled).

Each JSON file here is a minedraft.simulate cost profile whose numbers are assumptions (see its
"source" and "assumption" fields), plus a "scenario" block (batching and workload of the paper's
setting) and a "paper" block (the gain the paper reports). `scenario_predictions` runs the
simulator on them so its predictions can be read next to the paper's numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).parent


def list_scenarios() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))


def scenario_path(name: str) -> Path:
    return HERE / f"{name}.json"


def scenario_predictions(names: list[str] | None = None, num_prompts: int | None = None) -> list[dict]:
    """Per scenario: simulated sd and psd throughput and mean E2E latency for each k, the best
    gain of psd over sd (same k and best-vs-best), and the paper's reported gain."""
    from minedraft.analysis.simulate import simulate
    from minedraft.core.costmodel import load_profile

    rows = []
    for name in names or list_scenarios():
        doc = json.loads(scenario_path(name).read_text())
        prof = load_profile(doc)
        sc = doc.get("scenario", {})
        kw = dict(num_prompts=num_prompts or sc.get("num_prompts", 256),
                  output_len=sc.get("output_len", 256),
                  request_rate=float(sc.get("request_rate", "inf")),
                  max_num_seqs=sc.get("max_num_seqs", 32))
        per_k = {}
        for k in sc.get("ks", [1, 2, 3, 4, 5]):
            sd = simulate(prof, "sd", k=k, colocated=sc.get("sd_drafter") == "colocated", **kw)
            psd = simulate(prof, "psd", k=k, **kw)
            per_k[k] = {"sd_tok_s": sd["output_throughput_tok_s"],
                        "psd_tok_s": psd["output_throughput_tok_s"],
                        "sd_e2el_ms": sd["mean_e2el_ms"], "psd_e2el_ms": psd["mean_e2el_ms"]}
        same_k = max(per_k, key=lambda k: per_k[k]["psd_tok_s"] / per_k[k]["sd_tok_s"])
        best_sd = max(v["sd_tok_s"] for v in per_k.values())
        best_psd = max(v["psd_tok_s"] for v in per_k.values())
        rows.append({
            "scenario": name, "source": doc.get("source", ""),
            "assumption": doc.get("assumption", ""), "per_k": per_k,
            "max_gain_same_k": per_k[same_k]["psd_tok_s"] / per_k[same_k]["sd_tok_s"] - 1,
            "max_gain_k": same_k,
            "e2el_change_at_that_k": per_k[same_k]["psd_e2el_ms"] / per_k[same_k]["sd_e2el_ms"] - 1,
            "best_vs_best_gain": best_psd / best_sd - 1,
            "paper_gain": doc.get("paper", {}).get("reported_psd_throughput_gain_over_sd",
                                                   math.nan),
            "paper_note": doc.get("paper", {}).get("note", ""),
        })
    return rows


def format_scenario_table(rows: list[dict]) -> str:
    lines = ["| scenario (assumed costs) | simulated psd/sd throughput, best k | at k | "
             "E2E latency change there | best psd vs best sd | paper reports |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {100 * r['max_gain_same_k']:+.1f}% | {r['max_gain_k']} "
                     f"| {100 * r['e2el_change_at_that_k']:+.1f}% | "
                     f"{100 * r['best_vs_best_gain']:+.1f}% | {r['paper_note']} |")
    return "\n".join(lines)
