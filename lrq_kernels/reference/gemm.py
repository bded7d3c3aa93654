"""The quantized GEMMs in plain PyTorch (float32): the specification of the GEMM kernels.

W·A8 (and W·A4, whose INT4 levels ride in the same kernel):
    y[m, n] = scale_x[m] * sum_k codes_x[m, k] * W_deq[n, k] + bias[n]
W·A16 (weight-only):
    y[m, n] = sum_k x[m, k] * W_deq[n, k] + bias[n]
with W_deq = QuantizedWeight.dequantize() (codebook value times its channel or group scale).
"""
from __future__ import annotations

import torch


def gemm_a8_ref(x_codes: torch.Tensor, x_scales: torch.Tensor, w_deq: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    y = (x_codes.float() @ w_deq.float().t()) * x_scales.float()[:, None]
    return y + bias.float() if bias is not None else y


def gemm_a16_ref(x: torch.Tensor, w_deq: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = x.float() @ w_deq.float().t()
    return y + bias.float() if bias is not None else y
