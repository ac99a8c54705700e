"""Which mixes of low and high load `auto` can win on (issue 15), predicted from measured phases.

    .venv/bin/python benchmarks/auto_low_high/mix/mix.py

Reads the closed-loop phases runs (`../phases/results.json` and `../phases/psd_sd_dyn/
results.json`: 24 requests at 1 in flight, 256 at 16, 24 at 1, 64 output tokens) and, per mode,
takes each regime's measured numbers (medians over its runs; both low phases pooled): a
request's E2E latency at 1 in flight (ms, which is also the time it occupies the engine) and
the output rate at 16 in flight (tok/s). For a closed-loop workload in which a share x of the
requests run at 16 in flight and the rest one at a time, it then predicts (arithmetic, no
engine):

    mean E2E(x)   = (1 - x) * E2E_low + x * E2E_high
    throughput(x) = output_len / ((1 - x) * E2E_low + x * output_len / rate_high)

and prints, for each x, `auto` against the best other mode on each measure, and the range of x
where `auto` is predicted ahead of every fixed mode on both. Every number it prints is
predicted from measured per-regime numbers; they carry the runs' noise (plain decoding's own
two runs of the phases differ by 1-2% per regime). Writes mix.json beside it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = [HERE.parent / "phases" / "results.json",
           HERE.parent / "phases" / "psd_sd_dyn" / "results.json"]


def regimes(paths=SOURCES) -> dict[str, dict]:
    """mode -> {"e2e_low_s", "e2e_high_s", "rate_high", "output_len"}: medians over its runs,
    the two low phases pooled."""
    runs: dict[str, list] = {}
    output_len = None
    for path in paths:
        doc = json.loads(Path(path).read_text())
        output_len = doc["output_len"]
        for run in doc["runs"]:
            if "error" not in run:
                runs.setdefault(run["label"], []).append(run["segments"])
    out = {}
    for label, segs in runs.items():
        out[label] = {
            "e2e_low_s": statistics.median(s[i]["mean_e2el_ms"] / 1000 for s in segs
                                           for i in (0, 2)),
            "e2e_high_s": statistics.median(s[1]["mean_e2el_ms"] / 1000 for s in segs),
            "rate_high": statistics.median(s[1]["output_throughput_tok_s"] for s in segs),
            "output_len": output_len, "runs": len(segs)}
    return out


def predict(r: dict, x: float) -> tuple[float, float]:
    """(mean E2E in s, output tok/s) of a closed-loop mix with a share x of requests at high
    load (the formulas of the module docstring)."""
    e2e = (1 - x) * r["e2e_low_s"] + x * r["e2e_high_s"]
    busy_s = (1 - x) * r["e2e_low_s"] + x * r["output_len"] / r["rate_high"]
    return e2e, r["output_len"] / busy_s


def main() -> None:
    modes = regimes()
    auto = modes.pop("auto")
    rows, window = [], []
    print("x = share of requests at 16 in flight (the rest at 1); predicted\n")
    print("| x | auto mean E2E / best other (mode) | auto tok/s / best other (mode) |")
    print("|---|---|---|")
    for i in range(21):
        x = i / 20
        e2e, rate = predict(auto, x)
        others = {label: predict(r, x) for label, r in modes.items()}
        lat_mode = min(others, key=lambda lb: others[lb][0])
        tput_mode = max(others, key=lambda lb: others[lb][1])
        lat, tput = e2e / others[lat_mode][0], rate / others[tput_mode][1]
        rows.append({"x": x, "e2e_ratio": lat, "e2e_best": lat_mode, "tok_s_ratio": tput,
                     "tok_s_best": tput_mode})
        if lat < 1 and tput > 1:
            window.append(x)
        print(f"| {x:.2f} | {lat:.3f} ({lat_mode}) | {tput:.3f} ({tput_mode}) |")
    span = f"{min(window):.2f}-{max(window):.2f}" if window else "none"
    print(f"\nauto predicted ahead of every fixed mode on both measures for x in {span}")
    (HERE / "mix.json").write_text(json.dumps({
        "predicted": True, "sources": [str(p.relative_to(HERE.parent)) for p in SOURCES],
        "regimes": {"auto": auto, **modes}, "rows": rows, "window": window}, indent=1))


if __name__ == "__main__":
    main()
