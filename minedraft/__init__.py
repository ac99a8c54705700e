"""Batch-parallel speculative decoding (PSD) for vLLM V1."""

__version__ = "0.1.0"
