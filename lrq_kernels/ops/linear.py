"""QuantLinear's forward as one op each (one dispatch a layer; the plan, ops/dispatch.py, says which kernels).

    lrq::quant_linear_a8(x, perm, channel_scale, block, a_format, a_bits, packed, w_scales, codebook, bits,
                         group_size, bias, out_dtype)         rotate_quant then gemm_a8
    lrq::quant_linear_a16(x, perm, channel_scale, block, packed, w_scales, codebook, bits, group_size, bias)
                                                              rotate then gemm_a16 (weight-only)
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import cuda as cuda_kernels
from . import dispatch
from .checks import check_gemm_a16, check_linear_a8, check_rotation
from .gemm import run_gemm_a8, run_gemm_a16
from .rotate_quant import run_rotate, run_rotate_quant
from .weight import run_dequantize_weight, transient_weight


def plan_a8(device, m, k, n, block, a_format, bits, group_size, dtype, out_dtype) -> dispatch.Plan:
    return dispatch.plan("quant_linear_a8", device, m=m, k=k, n=n, block=block, a_format=a_format, bits=bits,
                         group=group_size, dtype=dtype, out_dtype=out_dtype)


def plan_a16(device, m, k, n, block, bits, group_size, dtype, rotated, permuted) -> dispatch.Plan:
    return dispatch.plan("quant_linear_a16", device, m=m, k=k, n=n, block=block, bits=bits, group=group_size,
                         dtype=dtype, rotated=rotated, permuted=permuted)


def _quant_linear_a8(x: torch.Tensor, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor], block: int,
                     a_format: str, a_bits: int, packed: torch.Tensor, w_scales: torch.Tensor, codebook: torch.Tensor,
                     bits: int, group_size: int, bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """y [M, N] = gemm_a8(*rotate_quant(x, ...), ...): QuantLinear's W·A8 forward. On the "gemm-order" path (both in
    CUDA, no fp8-weight GEMM) the codes pass between them in the GEMM's K order (cuda.gemm_order), which lets the GEMM
    load them by TMA (docs/tuning.md: gemm-order). The result is the same either way: the permutation is applied
    to both operands of the dot product."""
    check_linear_a8(x, perm, channel_scale, block, a_format, a_bits, packed, w_scales, codebook, bits, group_size, bias,
                    out_dtype)
    k = x.shape[1]
    plan = plan_a8(x.device, x.shape[0], k, packed.shape[0], block, a_format, bits, group_size, x.dtype, out_dtype)
    rq, gemm = plan.steps
    gemm_order = plan.path == "gemm-order"
    codes, scales = run_rotate_quant(rq, x, perm, channel_scale, block, a_format, a_bits, gemm_order=gemm_order)
    return run_gemm_a8(gemm, codes, scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype,
                       x_gemm_order=gemm_order)


quant_linear_a8 = torch.library.custom_op("lrq::quant_linear_a8", _quant_linear_a8, mutates_args=())


@quant_linear_a8.register_fake
def quant_linear_a8_fake(x, perm, channel_scale, block, a_format, a_bits, packed, w_scales, codebook, bits,
                         group_size, bias, out_dtype):
    n = check_linear_a8(x, perm, channel_scale, block, a_format, a_bits, packed, w_scales, codebook, bits,
                        group_size, bias, out_dtype)
    return x.new_empty((x.shape[0], n), dtype=out_dtype)


def _quant_linear_a16(x: torch.Tensor, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor],
                      block: int, packed: torch.Tensor, w_scales: torch.Tensor, codebook: torch.Tensor, bits: int,
                      group_size: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [M, N] = gemm_a16(rotate(x, perm, channel_scale, block), ...), in x's dtype: QuantLinear's weight-only
    forward (block 1 with no perm or channel_scale: no rotation). On the "weight" path (from
    Tuning.a16_dequant_min_m tokens on a GPU; from M = 17 for weights of at most a16_dequant_max_small_m_weight
    elements) it computes the same product as F.linear(x, dequantize_weight(...)): cuBLAS on a transient weight in
    x's dtype, which rounds the rotated weight instead of the rotated tokens (each to x's dtype, relative 2^-9 in
    bf16). On "fused-gemv" (M = 1) the CUDA GEMV rotates x itself, with the same result as the two ops."""
    check_rotation(x, perm, channel_scale, block)
    check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    m, k = x.shape
    plan = plan_a16(x.device, m, k, packed.shape[0], block, bits, group_size, x.dtype,
                    rotated=perm is not None or channel_scale is not None or block > 1, permuted=perm is not None)
    if plan.path == "weight":
        w = transient_weight("quant_linear_a16", "a16_dequant_min_m", (packed.shape[0], k), x.dtype, m,
                             lambda: run_dequantize_weight(plan.steps[0], packed, w_scales, codebook, bits, k,
                                                           group_size, perm, channel_scale, block, x.dtype))
        return torch.nn.functional.linear(x, w, cuda_kernels.cast(bias, x.dtype))
    if plan.path == "fused-gemv":
        return cuda_kernels.gemv_a16_cuda(x, packed, w_scales, codebook, bits, group_size, bias, perm, channel_scale,
                                          block)
    *rot, gemm = plan.steps
    xr = run_rotate(rot[0], x, perm, channel_scale, block) if rot else x
    return run_gemm_a16(gemm, xr, packed, w_scales, codebook, bits, group_size, bias)


quant_linear_a16 = torch.library.custom_op("lrq::quant_linear_a16", _quant_linear_a16, mutates_args=())


@quant_linear_a16.register_fake
def quant_linear_a16_fake(x, perm, channel_scale, block, packed, w_scales, codebook, bits, group_size, bias):
    check_rotation(x, perm, channel_scale, block)
    n = check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    return x.new_empty((x.shape[0], n))
