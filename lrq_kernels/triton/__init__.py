"""The Triton kernels (rotate_quant.py, gemm.py). Importing this package does not import Triton; `why_not` says
whether they can run a call (ops/dispatch.py asks it)."""
from __future__ import annotations

import importlib.util
import os

import torch

OPS = ("rotate_quant", "gemm_a8", "gemm_a16")
MAX_ROW_REGISTERS = 16384   # rotate_quant holds a whole token (K padded to a power-of-two count of blocks) in registers


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def why_not(op: str, device: torch.device, forced: bool = False, **shape) -> str:
    """'' when a Triton kernel runs `op` on `device` with these shape arguments, else the reason. On a CPU only
    Triton's interpreter runs a kernel, and only when Triton is asked for by name (forced; the CPU tests do)."""
    if op not in OPS:
        return f"no Triton kernel for {op}"
    if device.type != "cuda" and not (interpreting() and forced):
        return f"Triton cannot run on {device}"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if op == "rotate_quant":
        k, block = shape["k"], shape["block"]
        nbp = 1 << max(0, (k // block - 1).bit_length())
        if nbp * block > MAX_ROW_REGISTERS:
            return f"K={k} padded to {nbp * block} > {MAX_ROW_REGISTERS} values a token"
    return ""
