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


def parse_cores(spec: str, available: list[int] | None = None) -> list[int]:
    """'all', '0', '0-1', '0,2-3' (or groups '0|1') -> the core indices, sorted, without repeats.

    Raises ConfigError for bad syntax or cores not in `available` (default: this process's
    affinity, `available_cores()`)."""
    return sorted({c for group in parse_core_groups(spec, available) for c in group})


def parse_core_groups(spec: str, available: list[int] | None = None) -> list[list[int]]:
    """'0|1' -> [[0], [1]]: one core list per worker rank ('all' is one group of every core
    in `available`, default this process's affinity)."""
    available = available_cores() if available is None else available
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


def pin_process(spec: str) -> list[int]:
    """Run this process (and the threads it starts) on the cores of `spec`; returns them.

    Checked against the machine's CPUs, not this process's affinity (a process started by a
    pinned engine core inherits that engine's cores); the kernel refuses cores outside the
    container's cpuset: ConfigError."""
    chosen = parse_cores(spec, list(range(os.cpu_count() or 1)))
    try:
        os.sched_setaffinity(0, chosen)
    except OSError as exc:
        raise ConfigError(f"cannot run on cores {spec!r}: {exc.strerror}") from None
    return chosen


def pin_all_threads(cores: list[int]) -> None:
    """Run every thread of this process, and those it starts later, on `cores` (Linux keeps
    one affinity mask per thread; `taskset -a` does the same)."""
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that has just ended
            pass


class ThreadPinning:
    """Every thread of this process kept on `cores` while held, else on the cores it had when
    this was made; only a change costs system calls (one per thread)."""

    def __init__(self, cores: list[int]):
        self.cores = cores
        self.free = sorted(os.sched_getaffinity(0))
        self.held: bool | None = None

    def hold(self, on: bool) -> None:
        """Keep to `cores` (on) or go back to the cores this process had (off)."""
        if on != self.held:
            pin_all_threads(self.cores if on else self.free)
            self.held = on
