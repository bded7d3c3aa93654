"""Which implementation runs an op: "reference" (PyTorch, any device) or a GPU kernel backend ("cuda": the
compiled lrq_kernels._C; "triton").

LRQ_BACKEND=reference|triton|cuda|auto (default auto) forces a choice, for tests and for comparisons; `auto`
takes the fastest available implementation for the device and shape (the table in ops/__init__.py).
"""
from __future__ import annotations

import os

BACKENDS = ("auto", "reference", "triton", "cuda")


def requested_backend() -> str:
    b = os.environ.get("LRQ_BACKEND", "auto").strip().lower()
    if b not in BACKENDS:
        raise ValueError(f"LRQ_BACKEND must be one of {BACKENDS}, got {b!r}")
    return b
