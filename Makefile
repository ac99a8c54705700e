# The two set-up commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create .venv on first use (scripts/setup.sh).
VENV ?= .venv
# The modes at 8 in flight, psd under the paper's protocol, and which mode to run here.
DEMO_ARGS ?=

.PHONY: demo test setup
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/minedraft demo $(DEMO_ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q
