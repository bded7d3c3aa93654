"""How many CPU threads PyTorch should use here, for the CPU demo and command line.

PyTorch's OpenMP threads wait for each other at the end of every parallel loop. With one thread a core and one
of those cores busy with another program, every loop waits for the thread that is not running: on the 2-core
machine this project is developed on, the demo's quantization took 53 s idle and 380-1008 s with one core busy
at 2 threads, 95 s at 1 thread. So take the cores that are idle now (measured over a short interval from
/proc/stat), at least one, unless OMP_NUM_THREADS already says.
"""
from __future__ import annotations

import os
import time

import torch


def _cpu_times() -> tuple[float, float] | None:
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)   # idle + iowait
    return sum(fields), idle


def busy_cores(interval: float = 0.2) -> float:
    """Cores kept busy by other programs over `interval` seconds (0 where /proc/stat cannot be read)."""
    a = _cpu_times()
    time.sleep(interval)
    b = _cpu_times()
    if a is None or b is None or b[0] <= a[0]:
        return 0.0
    return (os.cpu_count() or 1) * (1.0 - (b[1] - a[1]) / (b[0] - a[0]))


def cpu_threads(interval: float = 0.2) -> int:
    """The idle cores available to this process, at least 1 (OMP_NUM_THREADS, where set, wins)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, round(cores - busy_cores(interval))))


def configure_cpu_threads() -> int:
    """Set torch's intra-op threads to cpu_threads() and return it."""
    n = cpu_threads()
    torch.set_num_threads(n)
    return n
