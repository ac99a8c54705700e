"""`minedraft report` end to end on a tiny saved result set (tests/data/report), no engine needed.

The fixture is the output of a real tiny sweep on this machine (`report --run` with 4 prompts,
8 tokens, k = 1, 2, two request rates, --enforce-eager) and of a tiny `profile`; see
tests/data/report/README.md for the commands.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minedraft.core.trace import StepRecord
from minedraft.reporting.plots import timeline_spans
from minedraft.reporting.report import ReportError, load_results, write_report

DATA = Path(__file__).parent.parent / "data" / "report"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "minedraft", *args], capture_output=True,
                          text=True, timeout=120)


def test_report_cli_end_to_end(tmp_path):
    out = tmp_path / "rep"
    proc = run_cli("report", "--results", str(DATA / "results.json"), "--out", str(out),
                   "--profile", str(DATA / "profile.json"), "--timeline-steps", "4")
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    for png in ("throughput_vs_k", "latency", "acceptance", "timeline", "sim_vs_bench"):
        path = out / "plots" / f"{png}.png"
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG", png
        assert f"plots/{png}.png" in md
    for section in ("## Results", "## Throughput against k", "## Latency",
                    "## Acceptance per draft position", "## Drafter and target activity",
                    "## Simulator against bench", "## GPU scenarios"):
        assert section in md
    runs, _, _ = load_results([DATA / "results.json"])
    assert md.count("\n| ") >= len(runs)  # one results row per run (plus other tables)
    assert "ASSUMPTION" not in md or "assumptions" in md


def test_report_reads_bench_json(tmp_path):
    # A committed `bench --json` file (several modes, one request rate, no traces).
    runs, meta, _ = load_results([DATA / "bench_psd_c8_k3.json"])
    assert {r["mode"] for r in runs} >= {"ar", "sd", "sd-ext", "psd"}
    path = write_report(runs, meta, tmp_path, scenarios=False)
    md = path.read_text()
    assert "| psd | 3 |" in md and "timeline" not in md


def test_timeline_spans_use_absolute_times():
    recs = [StepRecord(step=i, verify=2, draft=2, step_ms=10.0, verify_ms=6.0, draft_ms=8.0,
                       start_s=1.0 + 0.01 * i, send_s=1.0 + 0.01 * i + 0.001,
                       verify_start_s=1.0 + 0.01 * i + 0.002, overlapped=True)
            for i in range(6)]
    spans = timeline_spans(recs, steps=3, skip=1)
    assert [s["step"] for s in spans] == [1, 2, 3]
    assert spans[0]["start"] == 0.0 and spans[1]["start"] == pytest.approx(10.0)
    assert spans[0]["draft"] == pytest.approx((1.0, 8.0))
    assert spans[0]["verify"] == pytest.approx((2.0, 6.0))


def test_report_bad_input(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        load_results([tmp_path / "missing.json"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": [{"foo": 1}]}))
    with pytest.raises(ReportError, match="not bench results"):
        load_results([bad])
    proc = run_cli("report", "--results", str(tmp_path / "missing.json"), "--out",
                   str(tmp_path / "o"))
    assert proc.returncode != 0 and "results file not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("report", "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "one of the arguments --results --run is required" in \
        proc.stderr


def test_simulate_compare_on_saved_results(tmp_path):
    out = tmp_path / "errors.json"
    proc = run_cli("simulate", "--profile", str(DATA / "profile.json"), "--compare",
                   str(DATA / "results.json"), "--tolerance", "10", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert {(r["mode"], r["request_rate"]) for r in rows} >= {
        ("ar", 4.0), ("ar", float("inf")), ("sd-ext", 4.0), ("psd", float("inf"))}
    assert "| mode | k | in flight | request rate | metric | bench | simulated | error |" in \
        proc.stdout
    # The default tolerance (10%) fails on this noisy tiny profile: exit status 1.
    proc = run_cli("simulate", "--profile", str(DATA / "profile.json"), "--compare",
                   str(DATA / "results.json"))
    assert proc.returncode == 1 and "largest error" in proc.stdout
