"""Per-token activation quantization (after rotation): the specification of the rotate+quantize kernels.

For each token (row) t of the rotated activations r (float32):
    amax_t  = max_k |r[t, k]|                (NaN if the row has a NaN)
    scale_t = amax_t / QMAX                  (float32; the GEMM multiplies by it)
    inv_t   = QMAX / amax_t if amax_t > 0 else 0      (an all-zero token gives codes 0, scale 0: no 0/0)
    codes   = fp8:  e4m3(clamp(r * inv_t, -448, 448))      (round to nearest even)
              int:  clamp(rint(r * inv_t), -QMAX, QMAX)  (round half to even; NaN -> 0) as int8
QMAX: fp8 448, int8 127, int4 7 (INT4 levels held in int8; they are also exact in e4m3).
A token with a NaN gets scale NaN, so its outputs are NaN and no other token is touched.
"""
from __future__ import annotations

import torch

from .hadamard import block_hadamard_ref

QMAX = {("fp8", 8): 448.0, ("int", 8): 127.0, ("int", 4): 7.0}


def act_qmax(a_format: str, a_bits: int) -> float:
    try:
        return QMAX[(a_format, a_bits)]
    except KeyError:
        raise ValueError(f"(a_format, a_bits) must be one of {sorted(QMAX)}, got ({a_format!r}, {a_bits!r})") from None


def code_dtype(a_format: str) -> torch.dtype:
    return torch.float8_e4m3fn if a_format == "fp8" else torch.int8


def quantize_tokens_ref(r: torch.Tensor, a_format: str, a_bits: int):
    """r: float32 [M, K] (already rotated) -> (codes [M, K] e4m3 or int8, scales float32 [M])."""
    r = r.float()
    return quantize_tokens_with_amax_ref(r, token_absmax(r), a_format, a_bits)


def token_absmax(r: torch.Tensor) -> torch.Tensor:
    """max_k |r[t, k]| of each token, float32 [M] (0 for K = 0; NaN where the token has a NaN)."""
    return r.float().abs().amax(dim=-1) if r.shape[-1] else torch.zeros(r.shape[0], device=r.device)


def quantize_tokens_with_amax_ref(r: torch.Tensor, amax: torch.Tensor, a_format: str, a_bits: int):
    """The same with each token's absmax given (float32 [M]): a row-parallel layer quantizes its slice of the
    channels with the absmax of the whole token, so that its codes are those of the unsharded layer."""
    qmax = act_qmax(a_format, a_bits)
    r, amax = r.float(), amax.float()
    # qmax as a tensor, not the Python float, on both sides of the division: PyTorch's CUDA division by a scalar
    # multiplies by its float32 reciprocal (off by an ulp from amax / qmax), so the reference would depend on its
    # device; and a Python float over a tensor runs as amax.reciprocal() * qmax on every device (an ulp off the
    # quotient for a quarter of amax values, which moved int codes at exact ties of r * inv away from the kernels',
    # whose inverse is the IEEE quotient).
    q = torch.full_like(amax, qmax)
    scale = amax / q
    inv = torch.where(amax > 0, q / amax, torch.zeros_like(amax))
    y = r * inv[:, None]
    if a_format == "fp8":
        codes = y.clamp(-qmax, qmax).to(torch.float8_e4m3fn)
    else:
        codes = torch.nan_to_num(torch.round(y), nan=0.0).clamp(-qmax, qmax).to(torch.int8)
    return codes, scale


def dequantize_tokens_ref(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return codes.float() * scales[:, None]


def rotate_ref(x: torch.Tensor, perm: torch.Tensor | None, channel_scale: torch.Tensor | None,
               block: int) -> torch.Tensor:
    """float32 x[:, perm] * channel_scale, then the normalised block Hadamard (rotation/rotation.py)."""
    r = x.float()
    if perm is not None:
        r = r[..., perm.long()]
    if channel_scale is not None:
        r = r * channel_scale
    return block_hadamard_ref(r, block)


def rotate_quantize_ref(x, perm, channel_scale, block, a_format, a_bits):
    """The fused op's specification: rotate_ref then quantize_tokens_ref."""
    return quantize_tokens_ref(rotate_ref(x, perm, channel_scale, block), a_format, a_bits)
