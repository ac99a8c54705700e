#!/bin/bash
# once the drafter is up, pin every VLLM::EngineCore process (all threads) to core 0
until pgrep -f "minedraft.drafter" >/dev/null; do sleep 1; done
sleep 5
while true; do
  for p in $(pgrep -f "VLLM::EngineCore"); do taskset -a -pc 0 $p >/dev/null 2>&1; done
  sleep 2
done
