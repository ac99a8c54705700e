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
    """Names of the bundled scenario profiles (the JSON files here, without suffix)."""
    return sorted(p.stem for p in HERE.glob("*.json"))


def scenario_path(name: str) -> Path:
    """The JSON file of a bundled scenario."""
    return HERE / f"{name}.json"


def scenario_predictions(names: list[str] | None = None, num_prompts: int | None = None) -> list[dict]:
    """Per scenario: simulated plain decoding (ar) throughput, sd and psd throughput and mean
    E2E latency for each k, under
    equal concurrency (both with the scenario's max_num_seqs) and under the paper's protocol
    (psd with twice as many sequences, paper.md section 4), the best gains of psd over sd, and
    the gain the paper reports."""
    from minedraft.analysis.simulate import simulate
    from minedraft.core.costmodel import load_profile

    rows = []
    for name in names or list_scenarios():
        doc = json.loads(scenario_path(name).read_text())
        prof = load_profile(doc)
        sc = doc.get("scenario", {})
        seqs = sc.get("max_num_seqs", 32)
        kw = dict(num_prompts=num_prompts or sc.get("num_prompts", 256),
                  output_len=sc.get("output_len", 256),
                  request_rate=float(sc.get("request_rate", "inf")))
        colocated = sc.get("sd_drafter") == "colocated"
        ar = simulate(prof, "ar", max_num_seqs=seqs, **kw)["output_throughput_tok_s"]
        per_k = {}
        for k in sc.get("ks", [1, 2, 3, 4, 5]):
            sd = simulate(prof, "sd", k=k, colocated=colocated, max_num_seqs=seqs, **kw)
            psd = simulate(prof, "psd", k=k, max_num_seqs=seqs, **kw)
            paper = simulate(prof, "psd", k=k, max_num_seqs=2 * seqs, **kw)
            per_k[k] = {"sd_tok_s": sd["output_throughput_tok_s"],
                        "psd_tok_s": psd["output_throughput_tok_s"],
                        "psd_2x_tok_s": paper["output_throughput_tok_s"],
                        "sd_e2el_ms": sd["mean_e2el_ms"], "psd_e2el_ms": psd["mean_e2el_ms"],
                        "psd_2x_e2el_ms": paper["mean_e2el_ms"]}
        same_k = max(per_k, key=lambda k: per_k[k]["psd_tok_s"] / per_k[k]["sd_tok_s"])
        best_sd = max(v["sd_tok_s"] for v in per_k.values())
        rows.append({
            "scenario": name, "source": doc.get("source", ""),
            "assumption": doc.get("assumption", ""), "per_k": per_k,
            "max_gain_same_k": per_k[same_k]["psd_tok_s"] / per_k[same_k]["sd_tok_s"] - 1,
            "max_gain_k": same_k,
            "e2el_change_at_that_k": per_k[same_k]["psd_e2el_ms"] / per_k[same_k]["sd_e2el_ms"] - 1,
            "best_vs_best_gain": max(v["psd_tok_s"] for v in per_k.values()) / best_sd - 1,
            "paper_protocol_gain": max(v["psd_2x_tok_s"] for v in per_k.values()) / best_sd - 1,
            "ar_tok_s": ar,
            "best_psd_vs_ar": max(v["psd_tok_s"] for v in per_k.values()) / ar - 1,
            "paper_gain": doc.get("paper", {}).get("reported_psd_throughput_gain_over_sd",
                                                   math.nan),
            "paper_note": doc.get("paper", {}).get("note", ""),
        })
    return rows


def format_scenario_table(rows: list[dict]) -> str:
    """Markdown table of scenario_predictions rows: simulated psd over sd gains (equal
    concurrency and the paper's protocol) next to the paper's."""
    lines = ["| scenario (assumed costs) | psd / sd, same k (best) | at k | E2E latency there | "
             "best psd / best sd | paper's protocol: psd at 2x seqs / best sd | best psd / ar | "
             "paper reports |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {100 * r['max_gain_same_k']:+.1f}% | {r['max_gain_k']} "
                     f"| {100 * r['e2el_change_at_that_k']:+.1f}% | "
                     f"{100 * r['best_vs_best_gain']:+.1f}% | "
                     f"{100 * r['paper_protocol_gain']:+.1f}% | "
                     f"{100 * r['best_psd_vs_ar']:+.1f}% | {r['paper_note'] or '-'} |")
    return "\n".join(lines)
