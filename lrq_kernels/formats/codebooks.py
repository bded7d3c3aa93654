"""Codebooks: the 2^b values a b-bit weight code can stand for, before the per-channel scale.

Every format (TLQ, uniform INT, NF, a learned table) is a table `codebook[code]` of 2^b float values, so every
format runs through the same packing, the same reference and the same kernels. All values are exactly
representable in FP8 e4m3 (and therefore in bf16/fp16): the W·A8 GEMM feeds them to FP8 tensor cores as they
are, so what the reference computes is what the kernel computes.

TLQ (Twin-Log Quantization, DESIGN.md): code = (s << (b-1)) | k, value = (-1)^s * m_k, where the magnitudes
m_0 > m_1 > ... > m_{2^(b-1)-1} lie on a log-domain grid:
  - geometric:    m_k = r^(-k)                                     (r = 2: log2 quantizer, r = sqrt(2): log-sqrt2)
  - interleaved:  {step^(-j)} U {rho * step^(-j)}, sorted descending (two geometric ladders, one shifted by rho)
  - either one optionally with its smallest magnitude replaced by an exact 0.
The same magnitudes serve both signs ("twin"). Each magnitude is rounded to e4m3 after construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP8_E4M3_MAX = 448.0


def round_to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round float values to the nearest FP8 e4m3 value (round-to-nearest-even), returned as float32."""
    return x.float().clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()


def is_e4m3_exact(x: torch.Tensor) -> bool:
    return bool(torch.equal(round_to_e4m3(x), x.float()))


@dataclass(frozen=True)
class TLQGrid:
    """Parameters of one TLQ magnitude grid (see the module docstring)."""
    kind: str            # "geometric" or "interleaved"
    ratio: float         # r for geometric, step for interleaved
    rho: float = 1.0     # offset of the second ladder (interleaved only)
    zero: bool = False   # smallest magnitude replaced by an exact 0

    def magnitudes(self, bits: int) -> torch.Tensor:
        """The 2^(b-1) magnitudes m_k, descending, e4m3-rounded, as float32."""
        n = 2 ** (bits - 1)
        if self.kind == "geometric":
            mags = [self.ratio ** (-k) for k in range(n)]
        elif self.kind == "interleaved":
            half = (n + 1) // 2
            mags = [self.ratio ** (-j) for j in range(half)] + [self.rho * self.ratio ** (-j) for j in range(n - half)]
        else:
            raise ValueError(f"TLQGrid.kind must be 'geometric' or 'interleaved', got {self.kind!r}")
        m = torch.tensor(sorted(mags, reverse=True), dtype=torch.float64)
        if self.zero:
            m[-1] = 0.0
        return round_to_e4m3(m)

    def describe(self) -> str:
        z = "+0" if self.zero else ""
        if self.kind == "geometric":
            return f"log r={self.ratio:g}{z}"
        return f"log2x step={self.ratio:g} rho={self.rho:g}{z}"


def tlq_codebook(bits: int, grid: TLQGrid) -> torch.Tensor:
    """Table of 2^b values indexed by code = (sign << (b-1)) | k."""
    m = grid.magnitudes(bits)
    return torch.cat([m, -m])


def tlq_candidate_grids(bits: int) -> list[TLQGrid]:
    """The grids searched per layer. Ratios stay where every magnitude is a distinct e4m3 value.

    Geometric ratios span log2 (r = 2) down to r = 2^(1/4); at 3 bits (4 magnitudes) steeper ladders are
    allowed because fewer steps are taken. Interleaved ladders with step 2 and rho in (0.5, 1) give an FP-like
    grid (two levels per octave).
    """
    ratios = [2 ** 0.25, 2 ** (1 / 3), 2 ** 0.5, 2 ** (2 / 3), 2 ** 0.75, 2.0]
    if bits == 3:
        ratios += [2 ** 1.5, 3.0]
    grids = []
    for zero in (False, True):
        grids += [TLQGrid("geometric", r, zero=zero) for r in ratios]
        steps = [2.0, 4.0] if bits == 4 else [2.0, 4.0, 8.0]
        for step in steps:
            for rho in (0.625, 0.75, 0.875):
                rho_eff = rho if step == 2.0 else rho ** math.log2(step)  # keep the second ladder mid-octave
                grids.append(TLQGrid("interleaved", step, rho=rho_eff, zero=zero))
    # drop grids whose e4m3 rounding collapses two magnitudes into one (wasted codes)
    out = []
    for g in grids:
        m = g.magnitudes(bits)
        if torch.unique(m).numel() == m.numel():
            out.append(g)
    return out


def int_codebook(bits: int) -> torch.Tensor:
    """Symmetric uniform levels -(2^(b-1)-1) .. 2^(b-1)-1 at codes 0 .. 2^b-2; the last code repeats 0 (unused)."""
    q = 2 ** (bits - 1) - 1
    return torch.cat([torch.arange(-q, q + 1, dtype=torch.float32), torch.zeros(1)])


def nf_codebook(bits: int) -> torch.Tensor:
    """NormalFloat (QLoRA's construction): normal quantiles, asymmetric, with an exact zero, max |value| = 1.

    At 4 bits this is the NF4 table (8 positive levels, 7 negative, 0); at 3 bits 4 positive, 3 negative, 0.
    Values are then rounded to e4m3: NF4's own table is not e4m3-exact, and the kernels need exact values.
    """
    offset = 0.9677083
    n_pos = 2 ** (bits - 1)
    p_pos = torch.linspace(offset, 0.5, n_pos + 1, dtype=torch.float64)[:-1]
    p_neg = torch.linspace(offset, 0.5, n_pos, dtype=torch.float64)[:-1]
    pos = torch.special.ndtri(p_pos)
    neg = -torch.special.ndtri(p_neg)
    v = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos])
    v = v / v.abs().max()
    return round_to_e4m3(torch.sort(v).values)
