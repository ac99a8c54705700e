"""PSD at its own limit (issue 13): one `minedraft bench` run per concurrency with every mode on
the same cores, then a table of draft, verify and step times, overlap efficiency, psd / sd-ext
and psd against its ideal, from the runs' own measured times.

    .venv/bin/python benchmarks/run_psd_efficiency.py --out benchmarks/psd_efficiency
    .venv/bin/python benchmarks/run_psd_efficiency.py --out benchmarks/psd_efficiency --results

psd's ideal throughput (tokens/s) = requests verified per step x mean accepted length
(tokens per verified request, the bonus token included) / mean max(draft, verify): what the run
would give if every step cost exactly the slower of its two halves. Writes OUT/cC.json per
concurrency, OUT/summary.json, OUT/README.md and OUT/psd_efficiency.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from minedraft.cli.options import mode_list

COLUMNS = ("output_throughput_tok_s", "mean_draft_ms", "mean_verify_ms", "mean_step_ms",
           "mean_max_draft_verify_ms", "overlap_efficiency", "mean_verified_per_step",
           "mean_accepted_length")


def ideal_tok_s(run: dict) -> float | None:
    """Requests verified per step x mean accepted length / mean max(draft, verify), tok/s."""
    slower = run.get("mean_max_draft_verify_ms")
    if not slower or not run.get("mean_verified_per_step"):
        return None
    return 1000 * run["mean_verified_per_step"] * run["mean_accepted_length"] / slower


def summarize(out: Path, concurrency: list[int]) -> dict:
    """Per concurrency and mode: the medians the bench wrote, psd / sd-ext, psd / ideal."""
    rows = []
    for c in concurrency:
        doc = json.loads((out / f"c{c}.json").read_text())
        by_label = {r.get("label") or r["mode"]: r for r in doc["runs"]}
        for label, run in by_label.items():
            row = {"concurrency": c, "mode": label, "k": run["config"]["num_speculative_tokens"]
                   if run["mode"] != "ar" else None}
            row.update({key: run.get(key) for key in COLUMNS})
            row["ideal_tok_s"] = ideal_tok_s(run) if run["mode"] == "psd" else None
            rows.append(row)
        tput = {r["mode"].split(":")[0].split("@")[0]: r["output_throughput_tok_s"]
                for r in rows if r["concurrency"] == c}
        for r in rows:
            if r["concurrency"] == c and r["mode"].startswith("psd"):
                r["psd_over_sd_ext"] = tput["psd"] / tput["sd-ext"] if "sd-ext" in tput else None
                r["psd_over_ideal"] = r["output_throughput_tok_s"] / r["ideal_tok_s"] \
                    if r["ideal_tok_s"] else None
                r["psd_over_ar"] = tput["psd"] / tput["ar"] if "ar" in tput else None
            if r["concurrency"] == c and r["mode"].startswith("auto"):  # issue 15's measure
                fixed = [v for m, v in tput.items() if m != "auto"]
                r["auto_over_best_fixed"] = tput["auto"] / max(fixed) if fixed else None
    return {"rows": rows, "command": doc.get("command"), "hardware": doc.get("hardware"),
            "versions": doc.get("versions"), "date": doc.get("date")}


def _f(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_table(summary: dict) -> str:
    lines = ["| C | mode | k | tok/s | draft ms | verify ms | step ms | max(d, v) ms | overlap eff. "
             "| psd / sd-ext | psd / ar@0 | psd / ideal | auto / best fixed |", "|" + "---|" * 13]
    for r in summary["rows"]:
        lines.append(
            f"| {r['concurrency']} | {r['mode']} | {_f(r['k'], '{}')} | "
            f"{_f(r['output_throughput_tok_s'])} | {_f(r['mean_draft_ms'])} | "
            f"{_f(r['mean_verify_ms'])} | {_f(r['mean_step_ms'])} | "
            f"{_f(r['mean_max_draft_verify_ms'])} | {_f(r['overlap_efficiency'], '{:.2f}')} | "
            f"{_f(r.get('psd_over_sd_ext'), '{:.2f}x')} | {_f(r.get('psd_over_ar'), '{:.2f}x')} | "
            f"{_f(r.get('psd_over_ideal'), '{:.2f}')} | "
            f"{_f(r.get('auto_over_best_fixed'), '{:.2f}x')} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    modes = sorted({r["mode"] for r in summary["rows"]})
    for mode in modes:
        pts = [(r["concurrency"], r["output_throughput_tok_s"]) for r in summary["rows"]
               if r["mode"] == mode]
        ax.plot(*zip(*pts), marker="o", label=f"{mode} (measured)")
    ideal = [(r["concurrency"], r["ideal_tok_s"]) for r in summary["rows"] if r["ideal_tok_s"]]
    if ideal:
        ax.plot(*zip(*ideal), ls="--", color="grey", label="psd ideal (from its own times)")
    ax.set_xscale("log", base=2)
    cs = sorted({r["concurrency"] for r in summary["rows"]})
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_xlabel("requests in flight (target on core 0; drafter on core 1)")
    ax.set_ylabel("output tok/s (median of repeats)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/psd_efficiency", help="output folder")
    p.add_argument("--results", action="store_true", help="do not measure: summarize OUT/cC.json")
    p.add_argument("--concurrency", default="4,8,16", help="requests in flight, one run each")
    p.add_argument("--modes", default="ar@0,sd:1@0,sd-ext:1@0,psd:2@0,auto:3@0",
                   help="modes with their best k in the regime map (benchmarks/regimes); "
                        "auto's k is its largest; every mode's target runs on core 0")
    p.add_argument("--num-prompts", type=int, default=64, help="requests per run")
    p.add_argument("--output-len", type=int, default=128, help="tokens per request")
    p.add_argument("--repeats", type=int, default=3, help="runs per mode (medians)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if not args.results:
        for c in concurrency:
            cmd = [sys.executable, "-m", "minedraft", "bench", "--mode", args.modes,
                   "--draft-cores", "1", "--draft-quantization", "int8",
                   "--num-prompts", str(args.num_prompts), "--output-len", str(args.output_len),
                   "--max-concurrency", str(c), "--repeats", str(args.repeats), "--no-progress",
                   "--json", str(out / f"c{c}.json")]
            print("$", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True)
    summary = summarize(out, concurrency)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    table = format_table(summary)
    plot(summary, out / "psd_efficiency.png")
    psd_ran = any(run.mode == "psd" for run in mode_list(args.modes))
    title = ("PSD at its own limit (issue 13)" if psd_ran else
             "`auto` against the fixed modes at fixed concurrency (issue 15)")
    empty = "" if psd_ran else " The psd columns are empty: psd did not run."
    (out / "README.md").write_text(
        f"# {title}, measured\n\n"
        f"`{' '.join(sys.argv)}` on {summary['date']}; hardware {summary['hardware']}; "
        f"versions {summary['versions']}. Bench command per concurrency: "
        f"`{summary['command']}` (C varies). Bundled pair, ShareGPT, int8 lean drafter on core 1, "
        "target on core 0; every number is measured (medians of the repeats); 'ideal' is "
        f"computed from the same run's own times.{empty}\n\n" + table +
        "\n\n![throughput](psd_efficiency.png)\n")
    print(table)


if __name__ == "__main__":
    main()
