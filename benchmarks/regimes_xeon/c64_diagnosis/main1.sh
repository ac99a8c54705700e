cd /work/main
.venv/bin/minedraft bench --interleave --repeats 3 --max-concurrency 64 --num-prompts 192 --output-len 64 --draft-cores 1 --draft-quantization int8 --mode ar@0,auto:3@0 --no-progress --json /tmp/iomp/c64_main1.json > /tmp/iomp/c64_main1.txt 2>&1 &
PID=$!
until grep -q "auto: starting engine" /tmp/iomp/c64_main1.txt; do sleep 1; done
sleep 15
taskset -a -p -c 1 $PID > /tmp/iomp/taskset.txt 2>&1
wait $PID
