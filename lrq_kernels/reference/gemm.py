"""The quantized GEMMs in plain PyTorch (float32): the specification of the GEMM kernels.

W·A8 (and W·A4, whose INT4 levels ride in the same kernel):
    y[m, n] = scale_x[m] * sum_k codes_x[m, k] * W_deq[n, k] + bias[n]
W·A16 (weight-only):
    y[m, n] = sum_k x[m, k] * W_deq[n, k] + bias[n]
with W_deq = QuantizedWeight.dequantize() (codebook value times its channel or group scale).

The weight-only layer computes rotate(x) @ W_deq^T (rotate_ref: x[:, perm] * channel_scale, then the block
Hadamard). The same product is x @ W^T with W = unrotate_weight_ref(W_deq): the weight with the rotation undone,
which lets a plain GEMM (cuBLAS) run the layer without rotating every token. Likewise the W·A8 product with
per-channel scales is an FP8 GEMM of x_codes and decode_weight_e4m3_ref(...) with row-wise scales x_scales and
w_scales (what torch._scaled_mm computes).
"""
from __future__ import annotations

import torch

from ..formats.packing import unpack_codes
from .hadamard import block_hadamard_ref


def gemm_a8_ref(x_codes: torch.Tensor, x_scales: torch.Tensor, w_deq: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    y = (x_codes.float() @ w_deq.float().t()) * x_scales.float()[:, None]
    return y + bias.float() if bias is not None else y


def decode_weight_e4m3_ref(packed: torch.Tensor, codebook: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """[N, K] float8_e4m3fn: codebook[code(n, k)] rounded to e4m3 (exact for the codebooks the kernels take), the
    scales left out. With per-channel scales W_deq = decode_weight_e4m3_ref(...).float() * w_scales[:, None]."""
    codes = unpack_codes(packed, bits, k).long()
    return codebook.float().to(torch.float8_e4m3fn)[codes]


def gemm_a16_ref(x: torch.Tensor, w_deq: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = x.float() @ w_deq.float().t()
    return y + bias.float() if bias is not None else y


def unrotate_weight_ref(w_deq: torch.Tensor, perm: torch.Tensor | None, channel_scale: torch.Tensor | None,
                        block: int) -> torch.Tensor:
    """W [N, K] (float32) with x @ W^T == rotate_ref(x, perm, channel_scale, block) @ w_deq^T: each row times the
    normalised block Hadamard (its own transpose), times channel_scale, then column i moved to perm[i]."""
    w = block_hadamard_ref(w_deq.float(), block)
    if channel_scale is not None:
        w = w * channel_scale.to(w.device)
    if perm is not None:
        out = torch.empty_like(w)
        out[:, perm.to(w.device).long()] = w
        w = out
    return w
