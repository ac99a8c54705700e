"""Workloads, the request runner, metrics and provenance of benchmark runs."""
