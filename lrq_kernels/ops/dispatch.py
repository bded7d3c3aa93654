"""Which kernel runs each op, decided here and nowhere else.

`plan(op, device, **shape)` returns a Plan: the backend that runs the op ("cuda": lrq_kernels._C; "triton";
"reference": PyTorch, any device), the path it takes where an op has several, the plans of the steps a
composite op runs, and for each preferred backend that cannot run it, why. The ops (ops/__init__.py) ask once per
call and execute the plan; a plan is remembered for its inputs (the op, the device, the shape arguments, the
LRQ_BACKEND request and the tuning policy), so a layer called again with the same shape pays one dictionary
lookup.

What each backend can run is its own module's answer (cuda.why_not, triton.why_not); the order of preference,
the thresholds (ops/policy.py, measured in docs/tuning.md) and LRQ_BACKEND (ops/backend.py) are applied here:

| op                 | auto, on a CUDA GPU (first that can)                                   | otherwise |
| rotate_quant       | cuda, triton                                                           | reference |
| rotate             | cuda                                                                   | reference |
| gemm_a16           | cuda (the GEMV, M <= 16), triton                                       | reference |
| gemm_a8            | "fp8-weight" from a8_dequant_min_m (decode_weight_e4m3 + cuBLAS FP8);  | reference |
|                    | else cuda from cuda_gemm_a8_min_m (cuda_gemm_a8_tma_min_m with tma), triton |      |
| dequantize_weight  | cuda                                                                   | reference |
| decode_weight_e4m3 | cuda                                                                   | reference |
| quant_linear_a8    | "gemm-order": CUDA rotate_quant writes codes in the CUDA GEMM's K order; else "two-ops" |  |
| quant_linear_a16   | "weight": dequantize_weight + cuBLAS; "fused-gemv": the GEMV rotates x (M = 1); else "two-ops" | |

LRQ_BACKEND=reference|triton|cuda runs that backend's kernel for every op that has one (the reference for the
others) and raises where it cannot run; the "fp8-weight" and "weight" paths are taken under auto only, so that a
forced backend names the kernel that runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from .. import cuda as cuda_backend
from .. import triton as triton_backend
from .backend import requested_backend
from .policy import get_tuning

# Each op's kernels in order of preference.
ORDER = {"rotate_quant": ("cuda", "triton"), "rotate": ("cuda",), "gemm_a16": ("cuda", "triton"),
         "gemm_a8": ("cuda", "triton"), "dequantize_weight": ("cuda",), "decode_weight_e4m3": ("cuda",)}
HALF = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Plan:
    """How one call of an op runs.

    backend: "cuda", "triton" or "reference" (for a composite op, its GEMM's).
    path: "kernel" (the backend's kernel for the op), or the op's other forms: gemm_a8 "fp8-weight";
        quant_linear_a8 "gemm-order" or "two-ops"; quant_linear_a16 "weight", "fused-gemv" or "two-ops".
    steps: the plans of the ops a composite path runs, in order (two-ops: the rotation's, then the GEMM's;
        fp8-weight and weight: the decode's).
    why_not: "backend: reason" for each backend preferred to this one that cannot run the call.
    """
    op: str
    backend: str
    path: str = "kernel"
    steps: tuple = ()
    why_not: tuple = ()

    def describe(self) -> str:
        s = f"{self.op}: {self.backend}" + ("" if self.path == "kernel" else f" ({self.path})")
        if self.steps:
            s += " [" + "; ".join(p.describe() for p in self.steps) + "]"
        if self.why_not:
            s += " -- not " + "; ".join(self.why_not)
        return s


_PLANS: dict = {}
_MAX_PLANS = 8192     # distinct (op, shape, device, policy) keys remembered; a model has a few hundred


def plan(op: str, device: torch.device, **shape) -> Plan:
    """The Plan for `op` on `device` with these shape arguments (each op's below). Raises RuntimeError where
    LRQ_BACKEND forces a backend that cannot run the call, or FP8 activations meet a GPU without FP8."""
    want = requested_backend()
    key = (op, want, get_tuning(), device, os.environ.get("TRITON_INTERPRET") == "1", *shape.items())
    p = _PLANS.get(key)
    if p is None:
        p = _PLANNERS[op](device, want, get_tuning(), **shape)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = p
    return p


def clear() -> None:
    """Forget every plan (what a backend can run is fixed for a process; tests that pretend otherwise call this)."""
    _PLANS.clear()


def _why_not(backend: str, op: str, device: torch.device, want: str, shape: dict) -> str:
    if backend == "cuda":
        return cuda_backend.why_not(op, device, **shape)
    return triton_backend.why_not(op, device, forced=want == "triton", **shape)


def _kernel(op: str, device: torch.device, want: str, order: Optional[tuple] = None, **shape) -> Plan:
    """The first backend of `order` (default ORDER[op]) that runs the call, else the reference."""
    if want == "reference":
        return Plan(op, "reference", why_not=("LRQ_BACKEND=reference",))
    order = ORDER[op] if order is None else order
    if want != "auto":
        order = (want,) if want in ORDER[op] else ()     # an op with no kernel there runs its reference
    reasons = []
    for backend in order:
        why = _why_not(backend, op, device, want, shape)
        if not why:
            return Plan(op, backend, why_not=tuple(reasons))
        reasons.append(f"{backend}: {why}")
    if want != "auto" and order:
        raise RuntimeError(f"LRQ_BACKEND={want} but {op} cannot run there on {device} with {shape}: "
                           + "; ".join(reasons))
    return Plan(op, "reference", why_not=tuple(reasons))


def _check_fp8_gpu(device: torch.device, fp8: bool) -> None:
    if fp8 and device.type == "cuda":
        cap = cuda_backend.capability(device)
        if cap < (8, 9):
            raise RuntimeError(f"FP8 activations need a GPU of compute capability >= 8.9 (Ada, Hopper), got "
                               f"sm_{cap[0]}{cap[1]} on {device}; use QuantConfig(a_format='int')")


# --- the planners: (device, want, tuning, **shape) -> Plan ---------------------------------------------------

def _plan_rotate_quant(device, want, tuning, *, k, block, dtype):
    return _kernel("rotate_quant", device, want, k=k, block=block, dtype=dtype)


def _plan_rotate(device, want, tuning, *, k, block, dtype):
    return _kernel("rotate", device, want, k=k, block=block, dtype=dtype)


def _plan_gemm_a16(device, want, tuning, *, m, k, bits, group, dtype):
    return _kernel("gemm_a16", device, want, m=m, k=k, bits=bits, group=group, dtype=dtype)


def _plan_dequantize_weight(device, want, tuning, *, k, block, bits, group, dtype):
    return _kernel("dequantize_weight", device, want, k=k, block=block, bits=bits, group=group, dtype=dtype)


def _plan_decode_weight_e4m3(device, want, tuning, *, n, k, bits):
    return _kernel("decode_weight_e4m3", device, want, n=n, k=k, bits=bits)


def _plan_gemm_a8(device, want, tuning, *, m, k, n, bits, group, codes_dtype, out_dtype, tma=False):
    fp8 = codes_dtype == torch.float8_e4m3fn
    if (want == "auto" and m >= tuning.a8_dequant_min_m and fp8 and not group and out_dtype in HALF
            and k % 16 == 0 and n % 16 == 0 and device.type == "cuda" and cuda_backend.capability(device) >= (8, 9)):
        decode = _plan_decode_weight_e4m3(device, want, tuning, n=n, k=k, bits=bits)
        if decode.backend == "cuda":
            return Plan("gemm_a8", "cuda", "fp8-weight", steps=(decode,))
    if want != "reference":
        _check_fp8_gpu(device, fp8)
    order = ORDER["gemm_a8"]
    min_m = tuning.cuda_gemm_a8_tma_min_m if tma else tuning.cuda_gemm_a8_min_m
    if want == "auto" and m < min_m:
        order = tuple(b for b in order if b != "cuda")
    return _kernel("gemm_a8", device, want, order, m=m, k=k, n=n, bits=bits, group=group, dtype=codes_dtype)


def _plan_quant_linear_a8(device, want, tuning, *, m, k, n, block, a_format, bits, group, dtype, out_dtype):
    rq = _plan_rotate_quant(device, want, tuning, k=k, block=block, dtype=dtype)
    codes_dtype = torch.float8_e4m3fn if a_format == "fp8" else torch.int8
    gemm = _plan_gemm_a8(device, want, tuning, m=m, k=k, n=n, bits=bits, group=group, codes_dtype=codes_dtype,
                         out_dtype=out_dtype)
    if a_format == "fp8" and gemm.path != "fp8-weight" and rq.backend == "cuda":
        tma = _plan_gemm_a8(device, want, tuning, m=m, k=k, n=n, bits=bits, group=group, codes_dtype=codes_dtype,
                            out_dtype=out_dtype, tma=True)
        if tma.backend == "cuda":
            return Plan("quant_linear_a8", "cuda", "gemm-order", steps=(rq, tma))
    return Plan("quant_linear_a8", gemm.backend, "two-ops", steps=(rq, gemm))


def _plan_quant_linear_a16(device, want, tuning, *, m, k, n, block, bits, group, dtype, rotated, permuted):
    small_weight = n * k <= tuning.a16_dequant_max_small_m_weight
    if want == "auto" and (m >= tuning.a16_dequant_min_m or (m > 16 and small_weight)) and dtype in HALF:
        deq = _plan_dequantize_weight(device, want, tuning, k=k, block=block, bits=bits, group=group, dtype=dtype)
        if deq.backend == "cuda":
            return Plan("quant_linear_a16", "cuda", "weight", steps=(deq,))
    rot = _plan_rotate(device, want, tuning, k=k, block=block, dtype=dtype) if rotated else None
    gemm = _plan_gemm_a16(device, want, tuning, m=m, k=k, bits=bits, group=group, dtype=dtype)
    # the GEMV that rotates x itself, where it measured faster than rotate + GEMV (docs/tuning.md: fused-gemv):
    # 4-bit codes, per-channel scales, no ARS permutation; M = 1, K <= 4096, block <= 1024 (csrc/gemv_a16.cu)
    if (rotated and bits == 4 and not group and not permuted and rot.backend == "cuda" and gemm.backend == "cuda"
            and not cuda_backend.why_not("gemv_a16_rotate", device, m=m, k=k, block=block)):
        return Plan("quant_linear_a16", "cuda", "fused-gemv", steps=(rot, gemm))
    return Plan("quant_linear_a16", gemm.backend, "two-ops", steps=(() if rot is None else (rot,)) + (gemm,))


_PLANNERS = {"rotate_quant": _plan_rotate_quant, "rotate": _plan_rotate, "gemm_a16": _plan_gemm_a16,
             "gemm_a8": _plan_gemm_a8, "dequantize_weight": _plan_dequantize_weight,
             "decode_weight_e4m3": _plan_decode_weight_e4m3, "quant_linear_a8": _plan_quant_linear_a8,
             "quant_linear_a16": _plan_quant_linear_a16}
