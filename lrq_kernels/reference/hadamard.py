"""Walsh-Hadamard transforms in plain PyTorch: the specification of the rotation kernels.

H_n is Sylvester's (natural-order) matrix: H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]; it is symmetric and
H_n H_n = n I, so H_n / sqrt(n) is orthogonal and its own inverse.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_tensor, is_power_of_two


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised transform x @ H_n along the last dim (n a power of two), by log2(n) butterfly stages."""
    n = x.shape[-1]
    assert is_power_of_two(n), n
    lead = x.shape[:-1]
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(*lead, n)


def hadamard_transform_ref(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """fast_hadamard_transform.hadamard_transform's semantics: scale * (x zero-padded to 2^ceil(log2 d)) @ H,
    trimmed back to d columns; computed in float32, returned in x's dtype. Differentiable (plain torch ops)."""
    check_tensor("x", x, min_ndim=1, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64))
    d = x.shape[-1]
    if d == 0:
        raise ValueError(f"x's last dim must be > 0, got shape {tuple(x.shape)}")
    n = 1 << (d - 1).bit_length()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xp = torch.nn.functional.pad(x.to(acc), (0, n - d))
    return (fwht(xp) * scale)[..., :d].to(x.dtype).contiguous()


def block_hadamard_ref(x: torch.Tensor, block: int) -> torch.Tensor:
    """Normalised block-diagonal Hadamard along the last dim: each run of `block` channels times H_b / sqrt(b).

    block must be a power of two dividing the last dim; block == 1 is the identity. Float32 in, float32 out.
    """
    k = x.shape[-1]
    if not is_power_of_two(block) or k % block:
        raise ValueError(f"block must be a power of two dividing K={k}, got {block}")
    if block == 1:
        return x
    y = fwht(x.reshape(*x.shape[:-1], k // block, block))
    return (y * (1.0 / math.sqrt(block))).reshape(x.shape)
