"""The quantized GEMMs on packed 3/4-bit weight codes.

    lrq::gemm_a8(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
    lrq::gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import cuda as cuda_kernels
from ..formats.weight import dequantize_packed
from ..reference.gemm import gemm_a8_ref, gemm_a16_ref
from . import dispatch
from .checks import check_gemm_a8, check_gemm_a16
from .policy import get_tuning
from .weight import run_decode_weight_e4m3, transient_weight


def run_gemm_a8(plan: dispatch.Plan, x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias,
                out_dtype, x_gemm_order=False):
    """gemm_a8's plan on checked inputs (x_gemm_order: the codes are in the CUDA GEMM's K order)."""
    if plan.path == "fp8-weight":
        n = packed.shape[0]
        w8 = transient_weight("gemm_a8", "a8_dequant_min_m", (n, k), torch.float8_e4m3fn, x_codes.shape[0],
                              lambda: run_decode_weight_e4m3(plan.steps[0], packed, codebook, bits, k))
        return torch._scaled_mm(x_codes.contiguous(), w8.t(), scale_a=x_scales.contiguous().reshape(-1, 1),
                                scale_b=w_scales.contiguous().reshape(1, -1),
                                bias=cuda_kernels.cast(bias, out_dtype), out_dtype=out_dtype,
                                use_fast_accum=get_tuning().a8_fast_accum)
    if plan.backend == "cuda":
        return cuda_kernels.gemm_a8_cuda(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias,
                                         out_dtype, x_gemm_order=x_gemm_order)
    if plan.backend == "triton":
        from ..triton.gemm import gemm_a8_triton
        return gemm_a8_triton(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
    w = dequantize_packed(packed, w_scales, codebook, bits, k, group_size or None)
    return gemm_a8_ref(x_codes, x_scales, w, bias).to(out_dtype)


def run_gemm_a16(plan: dispatch.Plan, x, packed, w_scales, codebook, bits, group_size, bias):
    if plan.backend == "cuda":
        return cuda_kernels.gemv_a16_cuda(x, packed, w_scales, codebook, bits, group_size, bias)
    if plan.backend == "triton":
        from ..triton.gemm import gemm_a16_triton
        return gemm_a16_triton(x, packed, w_scales, codebook, bits, group_size, bias)
    w = dequantize_packed(packed, w_scales, codebook, bits, x.shape[1], group_size or None)
    return gemm_a16_ref(x, w, bias).to(x.dtype)


def _gemm_a8(x_codes: torch.Tensor, x_scales: torch.Tensor, packed: torch.Tensor, w_scales: torch.Tensor,
             codebook: torch.Tensor, bits: int, k: int, group_size: int, bias: Optional[torch.Tensor],
             out_dtype: torch.dtype) -> torch.Tensor:
    """y [M, N] = x_scales[m] * (x_codes @ W_deq^T) + bias, in out_dtype (group_size 0: per-channel scales): the GEMM
    kernel that decodes codes between its MMAs, or from Tuning.a8_dequant_min_m tokens on a GPU cuBLAS's FP8 GEMM
    on decode_weight_e4m3's matrix with x_scales and w_scales as row-wise scales (ops/dispatch.py)."""
    n = check_gemm_a8(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
    plan = dispatch.plan("gemm_a8", x_codes.device, m=x_codes.shape[0], k=k, n=n, bits=bits, group=group_size,
                         codes_dtype=x_codes.dtype, out_dtype=out_dtype)
    return run_gemm_a8(plan, x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)


gemm_a8 = torch.library.custom_op("lrq::gemm_a8", _gemm_a8, mutates_args=())


@gemm_a8.register_fake
def gemm_a8_fake(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype):
    n = check_gemm_a8(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
    return x_codes.new_empty((x_codes.shape[0], n), dtype=out_dtype)


def _gemm_a16(x: torch.Tensor, packed: torch.Tensor, w_scales: torch.Tensor, codebook: torch.Tensor,
              bits: int, group_size: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [M, N] = x @ W_deq^T + bias, in x's dtype (weight-only path)."""
    check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    plan = dispatch.plan("gemm_a16", x.device, m=x.shape[0], k=x.shape[1], bits=bits, group=group_size,
                         dtype=x.dtype)
    return run_gemm_a16(plan, x, packed, w_scales, codebook, bits, group_size, bias)


gemm_a16 = torch.library.custom_op("lrq::gemm_a16", _gemm_a16, mutates_args=())


@gemm_a16.register_fake
def gemm_a16_fake(x, packed, w_scales, codebook, bits, group_size, bias):
    n = check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    return x.new_empty((x.shape[0], n))
