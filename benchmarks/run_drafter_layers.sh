#!/usr/bin/env bash
# Drafter size comparison (issue 3): 1, 2, 4 and 8 of the target's layers, each distilled for
# the same wall-clock budget (MIN minutes, cosine schedule over it) on one shared corpus, then
# one evaluate-drafter run that compares them through vLLM's SD against a shared ar run
# (acceptance at k = 1 greedy and at temperature 1, cost ratio c, expected SD and PSD speed-ups).
# Writes benchmarks/drafter_layers.json and .png. ~4 x MIN + 10 min on 2 cores (+ ~20 min the first time,
# to generate the corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
MD=.venv/bin/minedraft
MIN=${MIN:-8}
LAYERS=${LAYERS:-"1 2 4 8"}
PROMPTS=${PROMPTS:-8000}
drafts=()
for n in $LAYERS; do
  $MD distill --out "out/layers/d$n" --corpus-dir out/corpus --layers "$n" \
    --train-prompts "$PROMPTS" --tokens 100000000 --time-budget "$MIN" --eval-every "$MIN"
  drafts+=("out/layers/d$n")
done
$MD evaluate-drafter --draft "$(IFS=,; echo "${drafts[*]}")" --max-k 1 --enforce-eager \
  --json benchmarks/drafter_layers.json --plot benchmarks/drafter_layers.png
