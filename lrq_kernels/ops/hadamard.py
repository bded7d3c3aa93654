"""lrq::hadamard_transform(x, scale): fast_hadamard_transform-compatible, differentiable."""
from __future__ import annotations

import torch

from .._checks import check_tensor
from ..reference.hadamard import hadamard_transform_ref
from .checks import FLOAT_IN


@torch.library.custom_op("lrq::hadamard_transform", mutates_args=())
def _hadamard_transform(x: torch.Tensor, scale: float) -> torch.Tensor:
    return hadamard_transform_ref(x, scale)


@_hadamard_transform.register_fake
def hadamard_transform_fake(x, scale):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    ctx.scale = inputs[1]


def _backward(ctx, grad):
    # H is symmetric: the gradient of scale * H x (padded and trimmed) is the same transform of the gradient
    # when the dim is a power of two; with padding, the trim/pad pair is its own adjoint too.
    return _hadamard_transform(grad, ctx.scale), None


_hadamard_transform.register_autograd(_backward, setup_context=_setup)


def hadamard_transform(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * x @ H along the last dim, as fast_hadamard_transform.hadamard_transform computes it.

    H is the unnormalised Sylvester Hadamard matrix of size 2^ceil(log2(d)); x is zero-padded to that size and
    the output trimmed back to d. Pass scale = 1/sqrt(2^ceil(log2 d)) for the normalised (orthogonal)
    transform. Output dtype = x's dtype; differentiable.
    """
    check_tensor("x", x, min_ndim=1, dtypes=FLOAT_IN + (torch.float64,))
    if x.shape[-1] == 0:
        raise ValueError(f"x's last dim must be > 0, got shape {tuple(x.shape)}")
    if not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    return _hadamard_transform(x, float(scale))
