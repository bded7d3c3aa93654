"""The rotation R of a layer's input, and its folding into the weights.

A Rotation acts on activations x [.., K] as
    x'[j]  = x[perm[j]] * channel_scale[j]        (the ARS gather: a permutation and an optional smoothing)
    x_rot  = x' @ blockdiag(H_b / sqrt(b))        (normalised block Hadamard, b = `block`; b = 1: identity)
and on the weight W [N, K] (offline, once) as
    W_rot  = (W[:, perm] / channel_scale) @ blockdiag(H_b / sqrt(b))
so that x_rot @ W_rot^T == x @ W^T in exact arithmetic: nothing but the activations rotates at run time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import is_power_of_two
from ..reference.act_quant import rotate_ref
from ..reference.gemm import unrotate_weight_ref
from ..reference.hadamard import block_hadamard_ref

KINDS = ("none", "hadamard", "ars")
MAX_BLOCK = 1024        # block-diagonal Hadamard block cap where K is not a power of two
MAX_FULL = 16384        # a full Hadamard where K is a power of two up to this


def default_block(k: int) -> int:
    """The Hadamard block for width K: K itself where K is a power of two <= 16384, else the largest power of
    two dividing K, capped at 1024 (1152 -> 128, 4608 -> 512, 13824 -> 512, 15360 -> 1024, 12288 -> 1024)."""
    if is_power_of_two(k) and k <= MAX_FULL:
        return k
    b = k & -k
    return min(b, MAX_BLOCK)


def check_block(block: int, k: int) -> None:
    if not isinstance(block, int) or not is_power_of_two(block) or k % block:
        raise ValueError(f"hadamard_block must be a power of two dividing in_features={k}, got {block!r}")


@dataclass
class Rotation:
    kind: str                                  # "none" | "hadamard" | "ars"
    block: int                                 # Hadamard block size (1 when kind == "none")
    perm: torch.Tensor | None = None           # int64 [K], or None for the identity
    channel_scale: torch.Tensor | None = None  # float32 [K] in permuted order, or None for all ones
    note: str = ""                             # how it was chosen (ARS candidates and their errors)

    @staticmethod
    def identity() -> "Rotation":
        return Rotation("none", 1)

    @staticmethod
    def hadamard(k: int, block: int | None = None) -> "Rotation":
        block = default_block(k) if block is None else block
        check_block(block, k)
        return Rotation("hadamard", block)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The rotated activations (float32), computed by the reference of the fused kernel."""
        dev = x.device
        return rotate_ref(x, None if self.perm is None else self.perm.to(dev),
                          None if self.channel_scale is None else self.channel_scale.to(dev), self.block)

    def apply_to_hessian(self, h: torch.Tensor) -> torch.Tensor:
        """R^T H R, the Hessian X_rot^T X_rot of the rotated inputs, from H = X^T X (x_rot = x R is linear)."""
        return self.apply(self.apply(h.float()).t().contiguous()).t().contiguous()

    def unapply(self, r: torch.Tensor) -> torch.Tensor:
        """Inverse of apply: rotated activations back to the original channel order and scale."""
        x = block_hadamard_ref(r.float(), self.block)   # the normalised Hadamard is its own inverse
        if self.channel_scale is not None:
            x = x / self.channel_scale.to(x.device)
        if self.perm is not None:
            out = torch.empty_like(x)
            out[..., self.perm.to(x.device)] = x
            x = out
        return x

    def unfold_weight(self, w_rot: torch.Tensor) -> torch.Tensor:
        """Inverse of fold_into_weight: W_rot back to W [N, K] in the original channel order."""
        return unrotate_weight_ref(w_rot, self.perm, self.channel_scale, self.block)

    def fold_into_weight(self, w: torch.Tensor) -> torch.Tensor:
        """W [N, K] -> W_rot (float32) with x_rot @ W_rot^T == x @ W^T."""
        w = w.float()
        if self.perm is not None:
            w = w[:, self.perm.to(w.device)]
        if self.channel_scale is not None:
            w = w / self.channel_scale.to(w.device)
        return block_hadamard_ref(w, self.block)
