cd /work/main
.venv/bin/minedraft bench --interleave --repeats 3 --max-concurrency 64 --num-prompts 192 --output-len 64 --draft-cores 1 --draft-quantization int8 --mode ar@0,auto:3@0 --no-progress --json /tmp/iomp/c64_mon.json > /tmp/iomp/c64_mon.txt 2>&1 &
PID=$!
.venv/bin/python /tmp/iomp/mon.py $PID /tmp/iomp/mon.jsonl
wait $PID
