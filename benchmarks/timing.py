"""Timing helpers shared by the GPU benchmarks, and the run metadata every results file carries.

Medians of CUDA-graph replays (triton.testing.do_bench_cudagraph), so launch overhead is out of every number
alike. `cold_us` times a call over several copies of its data, taken in turn, whose bytes together exceed the
L2 cache three times over: each call then reads its data from memory, as a layer in a real model does (its weights
were evicted by the other layers), instead of from a 50 MB L2 that a repeated call would otherwise find warm.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys

import torch
import triton
from triton.testing import do_bench_cudagraph


def run_meta(**extra) -> dict:
    """GPU, versions, UTC date and the command that made a results file (the running script with its arguments,
    as `python benchmarks/NAME.py ...`), plus `extra`."""
    script = os.path.basename(sys.argv[0])
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join([f"python benchmarks/{script}"] + sys.argv[1:])}
    meta.update(extra)
    return meta


def bench_us(fn, rep=60):
    fn()
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=rep, return_mode="median") * 1e3


def l2_bytes() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size


def copies_for(bytes_per_call: int) -> int:
    """How many copies of a call's data make the round robin read memory, not L2."""
    return max(1, min(64, -(-3 * l2_bytes() // max(1, bytes_per_call))))


def cold_us(make_call, bytes_per_call: int, rep=60):
    """make_call(i) -> a zero-argument callable over copy i of the data; returns µs a call."""
    calls = [make_call(i) for i in range(copies_for(bytes_per_call))]

    def run_all():
        for c in calls:
            c()
    return bench_us(run_all, rep=rep) / len(calls)


def copy_gbps() -> float:
    """Device-to-device copy bandwidth, bytes read + written (the bandwidth ceiling of the memory-bound ops)."""
    n = 1 << 28                                        # 512 MiB of bf16 each way
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    us = bench_us(lambda: b.copy_(a))
    return 2 * a.numel() * 2 / us / 1e3
