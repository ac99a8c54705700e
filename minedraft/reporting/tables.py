"""Printing benchmark results as a table people can read."""

from __future__ import annotations

import math

COLUMNS = [  # (header, key, format)
    ("mode", "mode", "{}"),
    ("k", "k", "{}"),
    ("cores", "cores", "{}"),
    ("reqs", "num_requests", "{}"),
    ("out tok/s", "output_throughput_tok_s", "{:.1f}"),
    ("req/s", "request_throughput_req_s", "{:.2f}"),
    ("TTFT ms", "mean_ttft_ms", "{:.0f}"),
    ("TPOT ms", "mean_tpot_ms", "{:.1f}"),
    ("E2EL ms", "mean_e2el_ms", "{:.0f}"),
    ("p99 E2EL", "p99_e2el_ms", "{:.0f}"),
    ("accept", "acceptance_rate", "{:.3f}"),
    ("acc len", "mean_accepted_length", "{:.2f}"),
    ("draft ms", "mean_draft_ms", "{:.1f}"),
    ("verify ms", "mean_verify_ms", "{:.1f}"),
    ("step ms", "mean_step_ms", "{:.1f}"),
    ("overlap", "overlap_efficiency", "{:.2f}"),
    ("vs ar", "speedup_vs_ar", "{:.2f}x"),
]


def table_rows(results: list[dict]) -> list[list[str]]:
    """One row of formatted cells per bench result (k and cores from its config, speed-up against
    ar when present)."""
    ar = next((r for r in results if r["mode"] == "ar"), None)
    rows = []
    for r in results:
        r = dict(r)
        config = r.get("config", {})
        r["k"] = config.get("num_speculative_tokens") if r["mode"] != "ar" else "-"
        r["cores"] = config.get("target_cores", "?") + (
            f"+{config['draft_cores']}" if config.get("draft_cores") else "")
        if ar is not None:
            r["speedup_vs_ar"] = r["output_throughput_tok_s"] / ar["output_throughput_tok_s"]
        rows.append([_fmt(fmt, r.get(key)) for _, key, fmt in COLUMNS])
    return rows


def _fmt(fmt: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def format_table(results: list[dict]) -> str:
    """The bench results as an aligned text table."""
    header = [h for h, _, _ in COLUMNS]
    rows = [header] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(results: list[dict], workload: dict) -> None:
    """Print the workload line and the table."""
    print("workload: " + ", ".join(f"{k}={v}" for k, v in workload.items()))
    print(format_table(results))
