"""Rotation and per-token quantization of activations.

    lrq::rotate_quant(x, perm, channel_scale, block, a_format, a_bits) -> (codes, scales)
    lrq::rotate(x, perm, channel_scale, block) -> x rotated, in x's dtype (the weight-only path)
    hadamard_quant(x, rotation, a_format, a_bits): rotate_quant on [.., K] with a Rotation
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import cuda as cuda_kernels
from .._checks import check_tensor
from ..reference.act_quant import code_dtype, rotate_quantize_ref, rotate_ref
from . import dispatch
from .checks import FLOAT_IN, check_rotate_quant, check_rotation


def run_rotate_quant(plan: dispatch.Plan, x, perm, channel_scale, block, a_format, a_bits, gemm_order=False):
    """rotate_quant's plan on checked inputs (gemm_order: codes in the CUDA GEMM's K order, CUDA only)."""
    if plan.backend == "cuda":
        return cuda_kernels.rotate_quant_cuda(x, perm, channel_scale, block, a_format, a_bits, gemm_order=gemm_order)
    if plan.backend == "triton":
        from ..triton.rotate_quant import rotate_quant_triton
        return rotate_quant_triton(x, perm, channel_scale, block, a_format, a_bits)
    return rotate_quantize_ref(x, perm, channel_scale, block, a_format, a_bits)


def run_rotate(plan: dispatch.Plan, x, perm, channel_scale, block):
    """rotate's plan on checked inputs."""
    if plan.backend == "cuda":
        return cuda_kernels.rotate_quant_cuda(x, perm, channel_scale, block, None, 16)[0]
    return rotate_ref(x, perm, channel_scale, block).to(x.dtype)


def _rotate_quant(x: torch.Tensor, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor],
                  block: int, a_format: str, a_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes [M, K] e4m3|int8, scales [M] float32): rotation then per-token quantization."""
    check_rotate_quant(x, perm, channel_scale, block, a_format, a_bits)
    plan = dispatch.plan("rotate_quant", x.device, k=x.shape[1], block=block, dtype=x.dtype)
    return run_rotate_quant(plan, x, perm, channel_scale, block, a_format, a_bits)


rotate_quant = torch.library.custom_op("lrq::rotate_quant", _rotate_quant, mutates_args=())


@rotate_quant.register_fake
def rotate_quant_fake(x, perm, channel_scale, block, a_format, a_bits):
    check_rotate_quant(x, perm, channel_scale, block, a_format, a_bits)
    m, k = x.shape
    return x.new_empty((m, k), dtype=code_dtype(a_format)), x.new_empty((m,), dtype=torch.float32)


def _rotate(x: torch.Tensor, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor],
            block: int) -> torch.Tensor:
    """x [M, K] -> x[:, perm] * channel_scale times the normalised block Hadamard, in x's dtype (the weight-only
    path's rotation; float32 inside, rounded once at the end)."""
    check_rotation(x, perm, channel_scale, block)
    plan = dispatch.plan("rotate", x.device, k=x.shape[1], block=block, dtype=x.dtype)
    return run_rotate(plan, x, perm, channel_scale, block)


rotate = torch.library.custom_op("lrq::rotate", _rotate, mutates_args=())


@rotate.register_fake
def rotate_fake(x, perm, channel_scale, block):
    check_rotation(x, perm, channel_scale, block)
    return torch.empty_like(x)


def hadamard_quant(x: torch.Tensor, rotation=None, a_format: str = "fp8", a_bits: int = 8):
    """Rotate, then quantize each token: x [.., K] -> (codes [.., K] e4m3|int8, scales [..] float32).

    rotation: a lrq_kernels.Rotation (from ARS or Rotation.hadamard(K, block)); None means the default block
    Hadamard for K (rotation/rotation.py: default_block). a_format "fp8" (a_bits 8) or "int" (a_bits 8 or 4;
    INT4 levels -7..7 are held in int8). Dequantize as codes.float() * scales[..., None].
    """
    from ..rotation.rotation import Rotation
    check_tensor("x", x, min_ndim=1, dtypes=FLOAT_IN)
    k = x.shape[-1]
    rot = Rotation.hadamard(k) if rotation is None else rotation
    if not isinstance(rot, Rotation):
        raise TypeError(f"rotation must be a lrq_kernels.Rotation or None, got {type(rotation).__name__}")
    dev = x.device
    perm = None if rot.perm is None else rot.perm.to(dev)
    cs = None if rot.channel_scale is None else rot.channel_scale.to(dev)
    codes, scales = rotate_quant(x.reshape(-1, k), perm, cs, rot.block, a_format, a_bits)
    return codes.reshape(x.shape), scales.reshape(x.shape[:-1])
