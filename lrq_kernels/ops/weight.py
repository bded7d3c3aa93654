"""The weight decoded from its packed codes, for the large-M paths that hand it to cuBLAS.

    lrq::dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype)
        W_deq with the layer's rotation undone (the weight-only path)
    lrq::decode_weight_e4m3(packed, codebook, bits, k)
        the codebook value of every code, FP8 e4m3 (the W·A8 path)
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import cuda as cuda_kernels
from ..formats.weight import dequantize_packed
from ..reference.gemm import decode_weight_e4m3_ref, unrotate_weight_ref
from . import dispatch
from .checks import check_decode_weight_e4m3, check_dequantize_weight


def run_dequantize_weight(plan: dispatch.Plan, packed, w_scales, codebook, bits, k, group_size, perm, channel_scale,
                          block, dtype):
    if plan.backend == "cuda":
        return cuda_kernels.unrotate_weight_cuda(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale,
                                                 block, dtype)
    w = dequantize_packed(packed, w_scales, codebook, bits, k, group_size or None)
    return unrotate_weight_ref(w, perm, channel_scale, block).to(dtype)


def run_decode_weight_e4m3(plan: dispatch.Plan, packed, codebook, bits, k):
    if plan.backend == "cuda":
        return cuda_kernels.decode_weight_e4m3_cuda(packed, codebook, bits, k)
    return decode_weight_e4m3_ref(packed, codebook, bits, k)


def _dequantize_weight(packed: torch.Tensor, w_scales: torch.Tensor, codebook: torch.Tensor, bits: int, k: int,
                       group_size: int, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor],
                       block: int, dtype: torch.dtype) -> torch.Tensor:
    """W [N, K] in dtype, with x @ W^T == rotate(x, perm, channel_scale, block) @ W_deq^T: the dequantized weight
    with the layer's rotation undone (reference.unrotate_weight_ref; block 1 and no perm/channel_scale: W_deq
    itself). Computed in float32, rounded once."""
    check_dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype)
    plan = dispatch.plan("dequantize_weight", packed.device, k=k, block=block, bits=bits, group=group_size,
                         dtype=dtype)
    return run_dequantize_weight(plan, packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block,
                                 dtype)


dequantize_weight = torch.library.custom_op("lrq::dequantize_weight", _dequantize_weight, mutates_args=())


@dequantize_weight.register_fake
def dequantize_weight_fake(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype):
    n = check_dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype)
    return packed.new_empty((n, k), dtype=dtype)


def _decode_weight_e4m3(packed: torch.Tensor, codebook: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """[N, K] float8_e4m3fn: codebook[code(n, k)] for every packed code, no scales (W_deq = this * w_scales[:, None]
    with per-channel scales). gemm_a8's fp8-weight path multiplies it by FP8 activation codes with row-wise scales."""
    check_decode_weight_e4m3(packed, codebook, bits, k)
    plan = dispatch.plan("decode_weight_e4m3", packed.device, n=packed.shape[0], k=k, bits=bits)
    return run_decode_weight_e4m3(plan, packed, codebook, bits, k)


decode_weight_e4m3 = torch.library.custom_op("lrq::decode_weight_e4m3", _decode_weight_e4m3, mutates_args=())


@decode_weight_e4m3.register_fake
def decode_weight_e4m3_fake(packed, codebook, bits, k):
    n = check_decode_weight_e4m3(packed, codebook, bits, k)
    return packed.new_empty((n, k), dtype=torch.float8_e4m3fn)


def transient_weight(op: str, field: str, shape: tuple, dtype: torch.dtype, m: int, make):
    """make(): the transient decoded weight of the large-M paths. A CUDA out-of-memory there is raised again as
    torch.OutOfMemoryError saying which weight did not fit and how to avoid it; nothing was changed, so the model
    stays usable (a smaller batch, or the fused kernels, still run)."""
    try:
        return make()
    except torch.OutOfMemoryError as e:
        mib = shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size() / 2 ** 20
        raise torch.OutOfMemoryError(
            f"{op}: out of GPU memory for the transient {shape[0]} x {shape[1]} {str(dtype).replace('torch.', '')} "
            f"weight ({mib:.0f} MiB) that M={m} tokens take; free GPU memory, run fewer tokens at a time, or run "
            f"under lrq_kernels.tuning({field}={m + 1}) to keep the fused kernels (no transient weight). ({e})"
        ) from None
