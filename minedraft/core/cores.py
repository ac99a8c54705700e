"""CPU core lists, as vLLM's CPU backend takes them in `VLLM_CPU_OMP_THREADS_BIND`.

A list is `all`, `0`, `0-1` or `0,2-3`; a target with several workers (tensor or pipeline
parallel ranks) takes one list per rank separated by `|`, e.g. `0|1`.
"""

from __future__ import annotations

import os

from minedraft.core.errors import ConfigError


def available_cores() -> list[int]:
    """The cores this process may run on (its affinity), sorted."""
    return sorted(os.sched_getaffinity(0))


def parse_cores(spec: str) -> list[int]:
    """'all', '0', '0-1', '0,2-3' (or groups '0|1') -> the core indices, sorted, without repeats.

    Raises ConfigError for bad syntax or cores this machine does not have."""
    return sorted({c for group in parse_core_groups(spec) for c in group})


def parse_core_groups(spec: str) -> list[list[int]]:
    """'0|1' -> [[0], [1]]: one core list per worker rank ('all' is one group of every core)."""
    available = available_cores()
    groups = []
    for part in str(spec).split("|"):
        part = part.strip()
        if part == "all":
            groups.append(available)
            continue
        cores: list[int] = []
        try:
            for item in part.split(","):
                lo, _, hi = item.partition("-")
                cores.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ConfigError(f"bad core list {spec!r}: use e.g. 'all', '0', '0-1', '0,2-3' "
                              "or '0|1' (one list per tensor-parallel rank)") from None
        missing = sorted(set(cores) - set(available))
        if not cores or missing:
            raise ConfigError(f"core list {spec!r} names cores this machine does not have "
                              f"(available: {available})")
        groups.append(sorted(set(cores)))
    return groups


def omp_bind(spec: str) -> str:
    """The value of VLLM_CPU_OMP_THREADS_BIND for a core list ('0-1' -> '0,1', '0|1' -> '0|1')."""
    return "|".join(",".join(map(str, group)) for group in parse_core_groups(spec))
