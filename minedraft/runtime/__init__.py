"""The runtime: one validated configuration for every mode (`config`), the vLLM engine built
from it (`engine`), the Python API on top (`api`) and vLLM's OpenAI server for a mode (`serve`)."""
