# The two set-up commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create .venv on first use (scripts/setup.sh).
VENV ?= .venv
# ar and sd on both cores; psd with the target on core 0 and its drafter on core 1.
DEMO_ARGS ?= --mode ar,sd,psd@0 --dataset sharegpt --num-prompts 32 --output-len 64 \
             --max-concurrency 4 --json benchmarks/demo.json

.PHONY: demo test setup
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/minedraft bench $(DEMO_ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q
