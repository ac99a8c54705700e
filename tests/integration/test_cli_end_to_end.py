"""The command line with real engines: the contract outside scripts use, and clean output."""

import json
import subprocess
import sys


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "minedraft", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_generate_and_bench_end_to_end(tmp_path, target_dir):
    """The CLI contract used by outside scripts: one engine start for generate, one for bench."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "The capital of France is"}\n'
                       '{"messages": [{"role": "user", "content": "Say hi"}]}\n')
    out = tmp_path / "out.jsonl"
    proc = run_cli("generate", "--mode", "ar", "--prompts-file", str(prompts), "--max-tokens", "8",
                   "--temperature", "0", "--seed", "0", "--dtype", "float32", "--enforce-eager",
                   "--kv-cache-gib", "1", "--max-model-len", "512", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    assert all({"prompt", "text", "token_ids"} <= row.keys() and row["token_ids"] for row in rows)

    js = tmp_path / "bench.json"
    proc = run_cli("bench", "--mode", "ar", "--dataset", "random", "--input-len", "16",
                   "--num-prompts", "4", "--output-len", "8", "--request-rate", "50",
                   "--max-concurrency", "2", "--enforce-eager", "--kv-cache-gib", "1",
                   "--max-model-len", "512", "--no-progress", "--json", str(js))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "out tok/s" in proc.stdout
    # vLLM's own logs go to a file named at the end, not between our lines
    stderr = [line for line in proc.stderr.splitlines() if line.strip()]
    assert stderr[0] == "== ar: starting engine" and stderr[-1].startswith("(vLLM's log: ")
    assert len(stderr) == 2, proc.stderr[-3000:]
    doc = json.loads(js.read_text())
    for key in ("mode", "num_requests", "output_throughput_tok_s", "request_throughput_req_s",
                "mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms", "p50_e2el_ms", "p99_e2el_ms",
                "duration_s", "hardware", "versions", "command"):
        assert key in doc, key
    assert doc["mode"] == "ar" and doc["num_requests"] == 4 and doc["total_output_tokens"] == 32
