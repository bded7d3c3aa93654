"""ARS: activation statistics from calibration, the outlier-aware rotation, and the per-layer choice.

Calibration records, for each linear layer's input, per channel: the absmax over everything seen, the absmax of
each call (a call is one forward, typically one timestep), the mean |x|, a sample of tokens, and the input
Hessian H = X^T X over every token seen (what GPTQ rounding needs, formats/gptq.py). From them:
  - salient channels: absmax > SALIENT_RATIO x the median channel absmax;
  - fluctuation: over calls, the coefficient of variation of each channel's absmax (how much the outliers move
    between timesteps), and over tokens, absmax / mean |x| (how peaky a channel is).

The outlier-aware rotation sorts channels by absmax and deals them to the Hadamard blocks in a serpentine order
(block 0, 1, .., B-1, B-1, .., 0, ...), so every block gets its share of the salient channels and of the rest;
optionally a diagonal smoothing s_j = absmax_j^alpha (SmoothQuant-style, normalised to geometric mean 1; with
the weight known, divided by the weight's column absmax^(1-alpha)) divides the activations and multiplies the
weights. The choice among {none, block Hadamard, permuted Hadamard, permuted + smoothing} is made per layer by
the measured error on the calibration tokens: of the layer's output when the weight and its quantizer are given,
else of the activations themselves (mapped back through the inverse rotation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..formats.gptq import hessian
from ..reference.act_quant import dequantize_tokens_ref, quantize_tokens_ref
from .rotation import Rotation, check_block, default_block

SALIENT_RATIO = 8.0
SMOOTH_ALPHAS = (0.5,)


@dataclass
class ActStats:
    """Per-channel statistics of one linear input (K channels) gathered over `calls` forwards."""
    absmax: torch.Tensor        # [K]
    call_absmax: torch.Tensor   # [calls, K]
    mean_abs: torch.Tensor      # [K]
    tokens: torch.Tensor        # [S, K] float32 sample of the tokens seen
    calls: int
    hessian: torch.Tensor | None = None   # [K, K] float32 X^T X over every finite token seen (None: not kept)

    def input_hessian(self) -> torch.Tensor:
        """H = X^T X of the calibration inputs: the one over every token seen where it was kept, else the one
        of the token sample."""
        return self.hessian if self.hessian is not None else hessian(self.tokens)

    @property
    def in_features(self) -> int:
        return self.absmax.numel()

    def salient_channels(self, ratio: float = SALIENT_RATIO) -> torch.Tensor:
        med = self.absmax.median().clamp_min(1e-12)
        return torch.nonzero(self.absmax > ratio * med).flatten()

    def fluctuation(self) -> dict:
        ca = self.call_absmax
        cv = (ca.std(dim=0, unbiased=False) / ca.mean(dim=0).clamp_min(1e-12)) if ca.shape[0] > 1 \
            else torch.zeros_like(self.absmax)
        peak = self.absmax / self.mean_abs.clamp_min(1e-12)
        sal = self.salient_channels()
        return {"timestep_cv_mean": float(cv.mean()),
                "timestep_cv_salient": float(cv[sal].mean()) if sal.numel() else 0.0,
                "token_peak_ratio_median": float(peak.median()),
                "salient_channels": int(sal.numel())}


class ActStatsCollector:
    """Accumulates ActStats from activations [.., K]; keeps up to `max_tokens` sampled tokens and, with
    `keep_hessian`, X^T X over all tokens (K^2 float32 on the activations' device)."""

    def __init__(self, max_tokens: int = 512, tokens_per_call: int = 128, seed: int = 0, keep_hessian: bool = True):
        self.max_tokens, self.tokens_per_call = max_tokens, tokens_per_call
        self.gen = torch.Generator().manual_seed(seed)
        self.keep_hessian, self.hessian = keep_hessian, None
        self.absmax = self.sum_abs = None
        self.count = 0
        self.call_absmax, self.tokens = [], []

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        if x2.shape[0] == 0:
            return
        a = torch.nan_to_num(x2.abs(), nan=0.0).amax(dim=0).cpu()
        s = torch.nan_to_num(x2.abs(), nan=0.0).sum(dim=0).cpu()
        self.absmax = a if self.absmax is None else torch.maximum(self.absmax, a)
        self.sum_abs = s if self.sum_abs is None else self.sum_abs + s
        self.count += x2.shape[0]
        self.call_absmax.append(a)
        take = min(self.tokens_per_call, x2.shape[0])
        idx = torch.randperm(x2.shape[0], generator=self.gen)[:take]
        self.tokens.append(x2[idx.to(x2.device)].cpu())
        if self.keep_hessian:
            h = hessian(x2, torch.float32)
            self.hessian = h if self.hessian is None else self.hessian + h

    def stats(self) -> ActStats:
        if self.absmax is None:
            raise RuntimeError("no activations were recorded: did the calibration run call this layer?")
        tokens = torch.cat(self.tokens)
        if tokens.shape[0] > self.max_tokens:
            idx = torch.randperm(tokens.shape[0], generator=self.gen)[: self.max_tokens]
            tokens = tokens[idx]
        return ActStats(self.absmax, torch.stack(self.call_absmax), self.sum_abs / self.count, tokens,
                        len(self.call_absmax), self.hessian)


def stats_from_tokens(x: torch.Tensor, calls: int = 1) -> ActStats:
    """ActStats of a token matrix [T, K] split into `calls` equal chunks (for tests and benchmarks)."""
    col = ActStatsCollector(max_tokens=x.shape[0], tokens_per_call=x.shape[0])
    for chunk in x.chunk(calls):
        col.update(chunk)
    return col.stats()


def serpentine_permutation(absmax: torch.Tensor, block: int) -> torch.Tensor:
    """perm [K]: channels sorted by absmax, dealt to the K/block blocks in serpentine order."""
    k = absmax.numel()
    nb = k // block
    order = torch.argsort(absmax, descending=True, stable=True)
    r = torch.arange(k)
    row, col = r // nb, r % nb
    blk = torch.where(row % 2 == 0, col, nb - 1 - col)
    perm = torch.empty(k, dtype=torch.long)
    perm[blk * block + row] = order
    return perm


def smoothing_scale(absmax: torch.Tensor, alpha: float, w_absmax: torch.Tensor | None = None) -> torch.Tensor:
    """channel_scale (the multiplier of x) = 1 / s with s = a^alpha / w^(1-alpha), geometric mean of s = 1."""
    a = absmax.float().clamp_min(1e-5)
    log_s = alpha * a.log()
    if w_absmax is not None:
        log_s = log_s - (1 - alpha) * w_absmax.float().clamp_min(1e-5).log()
    log_s = log_s - log_s.mean()
    return torch.exp(-log_s)


def candidate_rotations(stats: ActStats, block: int, w_absmax: torch.Tensor | None = None) -> list[Rotation]:
    k = stats.in_features
    perm = serpentine_permutation(stats.absmax, block)
    cands = [Rotation.identity(), Rotation("hadamard", block), Rotation("ars", block, perm=perm)]
    for alpha in SMOOTH_ALPHAS:
        cs = smoothing_scale(stats.absmax, alpha, w_absmax)
        cands.append(Rotation("ars", block, perm=perm, channel_scale=cs[perm].contiguous()))
    assert all(c.perm is None or c.perm.numel() == k for c in cands)
    return cands


def _describe(rot: Rotation) -> str:
    if rot.kind != "ars":
        return rot.kind
    return "ars+smooth" if rot.channel_scale is not None else "ars-perm"


def choose_rotation(stats: ActStats, a_format: str, a_bits: int, block: int | None = None,
                    weight: torch.Tensor | None = None,
                    quantize_w: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    max_rows: int = 256) -> Rotation:
    """The candidate rotation of least measured error on the calibration tokens (see the module docstring).

    weight [N, K] and quantize_w (float W_rot -> dequantized W_rot) given: the error is that of the layer's
    output on up to `max_rows` evenly spaced output channels; else the activation error in the original space.
    """
    k = stats.in_features
    block = default_block(k) if block is None else block
    check_block(block, k)
    x = stats.tokens.float()
    w_absmax = weight.float().abs().amax(dim=0).cpu() if weight is not None else None
    if weight is not None:
        rows = torch.linspace(0, weight.shape[0] - 1, min(max_rows, weight.shape[0])).round().long()
        w_sub = weight.float().cpu()[rows]
        y_ref = x @ w_sub.t()
    best, best_err, errs = None, math.inf, {}
    for rot in candidate_rotations(stats, block, w_absmax):
        if a_bits == 16:     # weight-only: the activations stay in float
            xq = rot.apply(x)
        else:
            xq = dequantize_tokens_ref(*quantize_tokens_ref(rot.apply(x), a_format, a_bits))
        if weight is None:
            err = (rot.unapply(xq) - x).pow(2).sum().item()
        else:
            w_rot = rot.fold_into_weight(w_sub)
            wq = quantize_w(w_rot) if quantize_w is not None else w_rot
            err = (xq @ wq.float().t() - y_ref).pow(2).sum().item()
        name = _describe(rot)
        errs[name] = err
        if err < best_err:
            best, best_err = rot, err
    ref_energy = (x.pow(2).sum() if weight is None else y_ref.pow(2).sum()).item()
    best.note = ", ".join(f"{n} {10 * math.log10(ref_energy / e) if e > 0 else math.inf:.2f} dB"
                          for n, e in errs.items())
    return best
