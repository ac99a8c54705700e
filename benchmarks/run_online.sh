#!/usr/bin/env bash
# Online benchmark (issue 6): ar, sd and psd servers (`minedraft serve`), target on core 0
# (psd: drafter on core 1), ShareGPT requests with Poisson arrivals at two rates, streaming;
# then a 64-client streaming load test on a psd server with the drafter killed 20 s in.
# Writes benchmarks/online_rate*.json and benchmarks/loadtest.json. ~15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MD=.venv/bin/minedraft
K=${K:-3}
RATES=${RATES:-"1 2"}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_healthy() {  # port
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 2
  done
  echo "server on port $1 did not start" >&2; return 1
}
$MD serve --mode ar --port 8101 --target-cores 0 > /tmp/md-serve-ar.log 2>&1 & pids+=($!)
wait_healthy 8101
$MD serve --mode sd -k "$K" --port 8102 --target-cores 0 > /tmp/md-serve-sd.log 2>&1 & pids+=($!)
wait_healthy 8102
$MD serve --mode psd -k "$K" --port 8103 --target-cores 0 --draft-cores 1 \
  > /tmp/md-serve-psd.log 2>&1 & pids+=($!)
wait_healthy 8103
for rate in $RATES; do
  $MD bench --base-url http://127.0.0.1:8101,http://127.0.0.1:8102,http://127.0.0.1:8103 \
    --dataset sharegpt --num-prompts 32 --output-len 64 --request-rate "$rate" \
    --goodput-ttft-ms 2000 --goodput-tpot-ms 100 --no-progress \
    --json "benchmarks/online_rate$rate.json"
done
cleanup; pids=()
# Load test: 64 concurrent streaming clients, the drafter SIGKILLed 20 s in.
$MD serve --mode psd -k "$K" --port 8104 --target-cores 0 --draft-cores 1 --max-num-seqs 64 \
  > /tmp/md-serve-load.log 2>&1 & pids+=($!)
wait_healthy 8104
$MD bench --base-url http://127.0.0.1:8104 --dataset random --input-len 64 --num-prompts 256 \
  --output-len 32 --max-concurrency 64 --kill-drafter-after 20 --server-pid "${pids[0]}" \
  --fail-on-error --no-progress --json benchmarks/loadtest.json
