"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed).

Every function takes plain result dicts (bench's per-mode results, each with its `config` and
`request_rate`) and writes one PNG.
"""

from __future__ import annotations

import math
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODE_COLORS = {"ar": "tab:gray", "sd": "tab:blue", "sd-ext": "tab:orange", "psd": "tab:green"}


def run_k(run: dict) -> int | None:
    """A run's k (None for ar)."""
    return None if run.get("mode") == "ar" else run.get("config", {}).get("num_speculative_tokens")


def rate_label(rate: float) -> str:
    """'all at once' for an infinite rate, else 'R req/s'."""
    return "all at once" if math.isinf(rate) else f"{rate:g} req/s"


def _rates(runs: list[dict]) -> list[float]:
    return sorted({float(r["request_rate"]) for r in runs})


def _modes(runs: list[dict]) -> list[str]:
    order = list(MODE_COLORS)
    return sorted({r["mode"] for r in runs}, key=lambda m: order.index(m) if m in order else 99)


def plot_throughput_vs_k(runs: list[dict], path) -> None:
    """Output tokens/s against k, one line per mode, one panel per request rate (ar: flat)."""
    rates = _rates(runs)
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 3.8), squeeze=False)
    ks = sorted({run_k(r) for r in runs if run_k(r) is not None}) or [1]
    for ax, rate in zip(axes[0], rates):
        at = [r for r in runs if float(r["request_rate"]) == rate]
        for mode in _modes(at):
            rows = [r for r in at if r["mode"] == mode]
            if mode == "ar":
                ax.axhline(rows[0]["output_throughput_tok_s"], color=MODE_COLORS["ar"],
                           linestyle="--", label="ar")
                continue
            rows.sort(key=run_k)
            ax.plot([run_k(r) for r in rows], [r["output_throughput_tok_s"] for r in rows],
                    marker="o", color=MODE_COLORS.get(mode), label=mode)
        ax.set_xticks(ks)
        ax.set_xlabel("k (draft tokens per step)")
        ax.set_ylabel("output tokens/s")
        ax.set_title(rate_label(rate))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(runs: list[dict], path) -> None:
    """TTFT, TPOT and end-to-end latency per run: bar from p50 to p99, dot at the mean."""
    metrics = [("ttft", "TTFT ms"), ("tpot", "TPOT ms"), ("e2el", "end-to-end latency ms")]
    runs = sorted(runs, key=lambda r: (float(r["request_rate"]), _modes(runs).index(r["mode"]),
                                       run_k(r) or 0))
    labels = [f"{r['mode']}{'' if run_k(r) is None else ' k=' + str(run_k(r))}\n"
              f"{rate_label(float(r['request_rate']))}" for r in runs]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.75 * len(runs) + 2), 8),
                             squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], metrics):
        for i, r in enumerate(runs):
            color = MODE_COLORS.get(r["mode"], "black")
            p50, p99, mean = (r.get(f"{s}_{key}_ms") for s in ("p50", "p99", "mean"))
            if p50 is None or p99 is None or any(map(math.isnan, (p50, p99, mean))):
                continue
            ax.plot([i, i], [p50, p99], color=color, linewidth=6, alpha=0.5,
                    solid_capstyle="butt")
            ax.plot(i, mean, "o", color=color)
        ax.set_ylabel(title)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(labels if ax is axes[-1, 0] else [], fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_title("bar: p50 to p99 over requests; dot: mean")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_acceptance(runs: list[dict], path) -> None:
    """Acceptance per draft position (share of drafts whose first i tokens were accepted)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    seen = set()
    styles = ["-", "--", ":", "-."]
    for r in sorted(runs, key=lambda r: (r["mode"], run_k(r) or 0)):
        acc = r.get("acceptance_per_position")
        key = (r["mode"], run_k(r))
        if not acc or key in seen:
            continue
        seen.add(key)
        ax.plot(range(1, len(acc) + 1), acc, marker="o", color=MODE_COLORS.get(r["mode"]),
                linestyle=styles[len([s for s in seen if s[0] == r["mode"]]) % len(styles)],
                label=f"{r['mode']} k={run_k(r)} @ {rate_label(float(r['request_rate']))}")
    ax.set_xlabel("draft position i")
    ax.set_ylabel("P(first i drafts accepted)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline_spans(records: list, steps: int = 8, skip: int | None = None) -> list[dict]:
    """Drafter and target activity (ms from the first shown step) for `steps` verified steps of a
    PSD-scheduler trace (StepRecords), after skipping `skip` (default: the first third, to show
    the steady state, then the first window without an outlier step such as an idle gap)."""
    recs = [r for r in records if r.verify and r.step_ms and r.verify_ms is not None]
    if skip is None:
        skip = max(0, min(len(recs) // 3, len(recs) - steps))
        limit = 4 * statistics.median(r.step_ms for r in recs) if recs else 0.0
        for start in list(range(skip, len(recs) - steps + 1)) + list(range(0, skip)):
            if all(r.step_ms <= limit for r in recs[start:start + steps]):
                skip = start
                break
    recs = recs[skip:skip + steps]
    out = []
    base = recs[0].start_s if recs else 0.0
    for r in recs:
        start = 1000 * (r.start_s - base)
        v0 = 1000 * (r.verify_start_s - base) if r.verify_start_s is not None else start
        d0 = 1000 * (r.send_s - base) if r.send_s is not None else start
        out.append({"step": r.step, "start": start, "end": start + r.step_ms,
                    "draft": (d0, r.draft_ms) if r.draft_ms else None,
                    "verify": (v0, r.verify_ms), "n_draft": r.draft, "n_verify": r.verify})
    return out


def plot_timeline(traces: dict[str, list], path, steps: int = 8) -> None:
    """Gantt chart of drafter and target activity for a few steps of each traced mode."""
    names = [m for m in traces if traces[m]]
    fig, axes = plt.subplots(len(names) or 1, 1, figsize=(10, 1.9 * max(1, len(names)) + 0.6),
                             squeeze=False, sharex=True)
    for ax, mode in zip(axes[:, 0], names):
        spans = timeline_spans(traces[mode], steps)
        for s in spans:
            if s["draft"]:
                ax.broken_barh([s["draft"]], (1.1, 0.8), color="tab:orange", alpha=0.8)
                ax.text(s["draft"][0] + s["draft"][1] / 2, 1.5, str(s["n_draft"]), ha="center",
                        va="center", fontsize=7)
            ax.broken_barh([s["verify"]], (0.1, 0.8), color="tab:blue", alpha=0.8)
            ax.text(s["verify"][0] + s["verify"][1] / 2, 0.5, str(s["n_verify"]), ha="center",
                    va="center", fontsize=7, color="white")
            ax.axvline(s["start"], color="black", linewidth=0.5, alpha=0.4)
        ax.set_yticks([0.5, 1.5])
        ax.set_yticklabels(["target", "drafter"])
        end = spans[-1]["end"] if spans else 0
        ax.set_title(f"{mode}: {len(spans)} steps in {end:.0f} ms "
                     "(numbers: requests drafted / verified; lines: step starts)", fontsize=9)
    axes[-1, 0].set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sim_vs_bench(rows: list[dict], path) -> None:
    """Simulated against measured values, one marker per (mode, rate, metric)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, metric in zip(axes, sorted({r["metric"] for r in rows})):
        sel = [r for r in rows if r["metric"] == metric]
        seen = set()
        for r in sel:
            color = LABEL_COLORS.get(r["mode"], MODE_COLORS.get(r["mode"], "k"))
            ax.plot(r["measured"], r["simulated"], "o", color=color,
                    label=r["mode"] if r["mode"] not in seen else None)
            seen.add(r["mode"])
            if len(sel) <= 20:
                ax.annotate(f"{r['mode']} @{r['request_rate']:g}",
                            (r["measured"], r["simulated"]), fontsize=7)
        ax.legend(fontsize=7)
        hi = max([r["measured"] for r in sel] + [r["simulated"] for r in sel] + [1]) * 1.15
        ax.plot([0, hi], [0, hi], color="k", linewidth=0.5)
        ax.fill_between([0, hi], [0, 0.9 * hi], [0, 1.1 * hi], color="tab:green", alpha=0.1)
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel(f"bench {metric}")
        ax.set_ylabel(f"simulated {metric}")
        ax.set_title("shaded: within 10%", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(curves: dict[str, list], path) -> None:
    """Held-out greedy agreement against training minutes, one line per drafter.

    `curves` maps a label to [minutes, agreement] points (distill's report history)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    _draw_learning_curves(ax, curves)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_drafter_comparison(results: list[dict], path) -> None:
    """evaluate-drafter results side by side: learning curves (where distill's report is there)
    and measured acceptance, cost ratio and the speed-ups they imply."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    _draw_learning_curves(left, {_drafter_label(r): r.get("draft_train_curve") or []
                                 for r in results})
    bars = [("acceptance k=1", "acceptance_rate_greedy"), ("cost ratio c", "cost_ratio"),
            ("expected SD x", "expected_sd_speedup"), ("ideal PSD x", "expected_psd_speedup")]
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [j + i * width for j in range(len(bars))]
        right.bar(xs, [r[key] for _, key in bars], width, label=_drafter_label(r))
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(bars))], [b[0] for b in bars])
    right.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _draw_learning_curves(ax, curves: dict[str, list]) -> None:
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                label=label)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("held-out greedy agreement")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _drafter_label(r: dict) -> str:
    layers = r.get("draft_layers")
    name = r["draft"].rstrip("/").split("/")[-1]
    return f"{name} ({layers} layer{'s' if layers != 1 else ''})" if layers else name


LABEL_COLORS = {"ar@all": "tab:gray", "ar@0": "black", "sd@0": "tab:blue", "sd@all": "tab:cyan",
                "sd-ext": "tab:orange", "psd": "tab:green", "auto": "tab:red"}


def plot_regime_map(m: dict, path) -> None:
    """Output tokens/s against requests in flight, one line per mode at its best k (left);
    the winning mode per concurrency and psd's ratios (right)."""
    rows = m["rows"]
    cs = [r["concurrency"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    for label in m["labels"]:
        pts = [(r["concurrency"], r["throughput"][label]) for r in rows if label in r["throughput"]]
        left.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                  color=LABEL_COLORS.get(label), linestyle="--" if label == "auto" else "-")
    paper = [(r["concurrency"], r["paper_psd_2c"]) for r in rows if "paper_psd_2c" in r]
    if paper:
        left.plot([p[0] for p in paper], [p[1] for p in paper], marker="x", linestyle=":",
                  color=LABEL_COLORS["psd"], label="psd at 2C (paper's protocol)")
    left.set_xscale("log", base=2)
    left.set_xticks(cs, [str(c) for c in cs])
    left.set_xlabel("requests in flight (C)")
    left.set_ylabel("output tokens/s (measured)")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for i, r in enumerate(rows):
        right.bar(i, 1.0, color=LABEL_COLORS.get(r["winner"], "k"), alpha=0.35)
        right.text(i, 0.5, r["winner"], ha="center", va="center", rotation=90, fontsize=8)
    for key, style, name in (("psd_over_sd_ext", "o-", "psd / sd-ext"),
                             ("psd_over_best_other", "s--", "psd / best other"),
                             ("auto_over_best_same_cores", "^:", "auto / best on its cores")):
        pts = [(i, r[key]) for i, r in enumerate(rows) if key in r]
        if pts:
            right.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name, color="k"
                       if key != "auto_over_best_same_cores" else LABEL_COLORS["auto"])
    right.axhline(1.0, color="gray", linewidth=0.8)
    right.set_xticks(range(len(rows)), [str(c) for c in cs])
    right.set_xlabel("requests in flight (C); bars: the fastest fixed mode")
    right.set_ylabel("throughput ratio")
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_demo(results: list[dict], concurrency: int, path) -> None:
    """Bars of output tokens/s per mode (the demo), psd under the paper's protocol hatched."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [r["label"] for r in results]
    values = [r["output_throughput_tok_s"] for r in results]
    colors = [LABEL_COLORS.get(lbl.split()[0], "k") for lbl in labels]
    bars = ax.bar(range(len(labels)), values, color=colors, alpha=0.8)
    for bar, r in zip(bars, results):
        if r["in_flight"] != concurrency:
            bar.set_hatch("//")
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{bar.get_height():.0f}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("output tokens/s (measured)")
    ax.set_title(f"{concurrency} requests in flight (hatched: {2 * concurrency}, the paper's "
                 "protocol)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_auto_choices(steps: list[dict], path) -> None:
    """What `auto` chose over time: requests decoding (top) and the step kind with its k
    (bottom), from its step records (`t` in seconds, `kind`, `k`, `decoding`)."""
    if not steps:
        return
    t0 = steps[0]["t"]
    ts = [s["t"] - t0 for s in steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.8), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.2]})
    top.plot(ts, [s["decoding"] for s in steps], color="tab:gray", linewidth=0.8)
    top.set_ylabel("requests\ndecoding")
    top.grid(alpha=0.3)
    kinds = {"none": 0, "sequential": 1, "psd": 2}
    colors = {"none": "black", "sequential": "tab:orange", "psd": "tab:green"}
    for kind, y in kinds.items():
        sel = [(t, s["k"]) for t, s in zip(ts, steps) if s["kind"] == kind]
        if sel:
            bottom.scatter([t for t, _ in sel], [y + 0.08 * k for _, k in sel], s=3,
                           color=colors[kind], label=kind)
    bottom.set_yticks(list(kinds.values()), ["none (k=0)", "sequential", "psd"])
    bottom.set_xlabel("seconds since the first step (height within a row: k)")
    bottom.grid(alpha=0.3)
    top.set_title("--mode auto under a changing load: its choice at every step", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
