"""Training and judging drafters: `distill` (a drafter that imitates the target) and `evaluate`
(acceptance and cost through vLLM's own speculative decoding)."""
