"""Weight quantization: `quantize_weight` and the `QuantizedWeight` container.

A quantized weight W [N, K] is   W[n, k] ~= scales[n, k // g] * codebook[codes[n, k]]
(g = K when there is one scale a channel). The codes are packed (formats/packing.py), the codebook has 2^b
e4m3-exact values (formats/codebooks.py), the scales are float32.

Scale search (every format alike): for each row (a channel, or a group of g weights of a channel) the scale is
chosen over a grid of clipping ratios c * max|w| / max|codebook| by least squared error, then refined by
alternating least squares (alpha = <w, q> / <q, q>, re-round) while the error drops. Rounding is to the nearest
codebook value in the linear domain; a weight exactly on a midpoint goes to the lower value. Given the Hessian
H = X^T X of calibration inputs, the codes are instead rounded by GPTQ (formats/gptq.py) under the same scales
and codebook, which lowers the layer's output error rather than the weight's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._checks import check_choice, check_tensor
from .codebooks import (TLQGrid, int_codebook, nf_codebook, round_to_e4m3, tlq_candidate_grids,
                        tlq_codebook)
from .gptq import gptq_codes, output_error
from .packing import pack_codes, packed_row_bytes, unpack_codes

FORMATS = ("auto", "tlq", "int", "nf", "learned")
AUTO_CANDIDATES = ("tlq", "int", "learned")
GROUP_SIZES = (None, 64, 128)

_CLIP_FINE = torch.logspace(math.log10(0.2), 0.0, 12).tolist()    # searched for the final scales
_CLIP_COARSE = torch.logspace(math.log10(0.25), 0.0, 5).tolist()  # searched while choosing a grid/codebook
_SUBSAMPLE_ROWS = 256   # rows used to choose a TLQ grid or fit a learned codebook


@dataclass
class QuantizedWeight:
    """Packed codes, scales and codebook of one quantized weight matrix.

    packed:   uint8 [N, packed_row_bytes(K, bits)] (layout in formats/packing.py)
    scales:   float32 [N] (per channel) or [N, K // group_size] (per group)
    codebook: float32 [2^bits], every value exact in FP8 e4m3
    fmt:      the format actually used ("tlq", "int", "nf", "learned"; "auto" resolves to one of them)
    info:     how it was chosen: the grid, and the SQNR (dB) of each candidate format
    """
    packed: torch.Tensor
    scales: torch.Tensor
    codebook: torch.Tensor
    bits: int
    fmt: str
    shape: tuple[int, int]
    group_size: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def codes(self) -> torch.Tensor:
        """Unpacked codes, uint8 [N, K]."""
        return unpack_codes(self.packed, self.bits, self.in_features)

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix [N, K] these codes stand for (the specification every kernel must match)."""
        return dequantize_packed(self.packed, self.scales, self.codebook, self.bits, self.in_features,
                                 self.group_size)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.codebook))

    def to(self, device) -> "QuantizedWeight":
        return QuantizedWeight(self.packed.to(device), self.scales.to(device), self.codebook.to(device),
                               self.bits, self.fmt, self.shape, self.group_size, dict(self.info))


def dequantize_packed(packed: torch.Tensor, scales: torch.Tensor, codebook: torch.Tensor, bits: int, k: int,
                      group_size: int | None) -> torch.Tensor:
    """W_deq[n, k] = codebook[code[n, k]] * scales[n] (or scales[n, k // group_size]), float32 [N, K]."""
    return dequantize_codes(unpack_codes(packed, bits, k), scales, codebook, group_size)


def dequantize_codes(codes: torch.Tensor, scales: torch.Tensor, codebook: torch.Tensor,
                     group_size: int | None) -> torch.Tensor:
    """codebook[codes] * scales for unpacked codes [N, K] (what dequantize_packed computes after unpacking)."""
    w = codebook.to(codes.device).float()[codes.long()]
    if not group_size:
        return w * scales.to(w.device)[:, None]
    return w * scales.to(w.device).repeat_interleave(group_size, dim=1)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(|ref|^2 / |ref - approx|^2), in dB."""
    ref, approx = ref.double(), approx.double()
    noise = (ref - approx).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise)


def quantize_rows(rows: torch.Tensor, codebook: torch.Tensor, clips=_CLIP_FINE, refine: int = 2):
    """Quantize each row of `rows` [R, L] to `codebook` with its own least-squares scale.

    The clipping ratio is searched over `clips`, then over a finer bracket around each row's best ratio, then
    refined by alternating least squares. Returns (scales [R], codes [R, L] int64 indices into `codebook`,
    squared error [R]).
    """
    rows = rows.float()
    vals, order = torch.sort(codebook.to(rows.device).float())
    order = order.to(rows.device)
    mids = ((vals[1:] + vals[:-1]) / 2).contiguous()
    vmax = vals.abs().max()
    amax = rows.abs().amax(dim=1)
    live = amax > 0
    amax = torch.where(live, amax, torch.ones_like(amax))
    best = {}

    def consider(alpha):
        idx = torch.bucketize(rows / alpha[:, None], mids)
        err = (rows - alpha[:, None] * vals[idx]).pow(2).sum(dim=1)
        if not best:
            best.update(alpha=alpha, idx=idx, err=err)
            return
        better = err < best["err"]
        best["alpha"] = torch.where(better, alpha, best["alpha"])
        best["idx"] = torch.where(better[:, None], idx, best["idx"])
        best["err"] = torch.where(better, err, best["err"])

    for c in clips:
        consider(c * amax / vmax)
    step = (clips[1] / clips[0]) ** 0.5 if len(clips) > 1 else 1.0
    if step > 1.0:          # a finer bracket around each row's best ratio
        base = best["alpha"]
        for f in (step ** -1, step ** -0.5, step ** 0.5, step):
            consider(base * f)
    for _ in range(refine):  # alternating least squares: alpha = <w, q> / <q, q> for the current codes
        q = vals[best["idx"]]
        qq = q.pow(2).sum(dim=1)
        alpha = (rows * q).sum(dim=1) / qq.clamp_min(1e-30)
        consider(torch.where((qq > 0) & (alpha > 0), alpha, best["alpha"]))
    alpha = torch.where(live, best["alpha"], torch.zeros_like(amax))
    err = torch.where(live, best["err"], torch.zeros_like(amax))
    return alpha, order[best["idx"]], err


def _subsample(rows: torch.Tensor) -> torch.Tensor:
    if rows.shape[0] <= _SUBSAMPLE_ROWS:
        return rows
    pick = torch.linspace(0, rows.shape[0] - 1, _SUBSAMPLE_ROWS).round().long().to(rows.device)
    return rows[pick]


def search_tlq_grid(rows: torch.Tensor, bits: int) -> TLQGrid:
    """The TLQ grid of least squared error (the grid is shared by the layer), in two rounds: every candidate
    grid on 64 rows with a coarse clip search, then the best four on the 256-row subsample."""
    sub = _subsample(rows)
    first = sub[:: max(1, sub.shape[0] // 64)]
    scored = []
    for grid in tlq_candidate_grids(bits):
        err = quantize_rows(first, tlq_codebook(bits, grid), clips=_CLIP_COARSE, refine=0)[2].sum().item()
        scored.append((err, grid))
    scored.sort(key=lambda t: t[0])
    best, best_err = None, math.inf
    for _, grid in scored[:4]:
        e = quantize_rows(sub, tlq_codebook(bits, grid), clips=_CLIP_COARSE, refine=1)[2].sum().item()
        if e < best_err:
            best, best_err = grid, e
    return best


def fit_learned_codebook(rows: torch.Tensor, bits: int, iters: int = 10) -> torch.Tensor:
    """A 2^b-value codebook shared by the layer, fitted by Lloyd iterations on the channel-normalised rows.

    Starts from NF's table; each step assigns codes under per-row scales, moves every value to the scale-weighted
    mean of its cell, renormalises to max |value| = 1 and rounds to e4m3, so the fit sees the values the kernels
    will use. The codebook with the least error seen is kept.
    """
    sub = _subsample(rows).float()
    cb = nf_codebook(bits).to(sub.device)
    best_cb, best_err = cb, math.inf
    for _ in range(iters):
        alpha, codes, err = quantize_rows(sub, cb, clips=_CLIP_COARSE, refine=1)
        e = err.sum().item()
        if e < best_err - 1e-12 * max(best_err, 1.0) or best_err == math.inf:
            best_cb, best_err = cb, e
        else:
            break
        a = alpha[:, None].expand_as(sub)
        num = torch.zeros(cb.numel(), dtype=torch.float64, device=sub.device)
        den = torch.zeros_like(num)
        num.index_add_(0, codes.flatten(), (a * sub).flatten().double())
        den.index_add_(0, codes.flatten(), (a * a).flatten().double())
        new = torch.where(den > 0, num / den.clamp_min(1e-300), cb.double())
        new = new / new.abs().max().clamp_min(1e-30)
        cb = torch.sort(round_to_e4m3(new)).values
    return best_cb.cpu()


def _rows_of(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    n, k = w.shape
    return w.reshape(n * (k // group_size), group_size) if group_size else w


def _codebook_for(fmt: str, rows: torch.Tensor, bits: int):
    """(codebook, description) of a non-auto format for these rows."""
    if fmt == "int":
        return int_codebook(bits), f"int{bits} symmetric"
    if fmt == "nf":
        return nf_codebook(bits), f"nf{bits}"
    if fmt == "tlq":
        grid = search_tlq_grid(rows, bits)
        return tlq_codebook(bits, grid), grid.describe()
    if fmt == "learned":
        return fit_learned_codebook(rows, bits), "learned (Lloyd on channel-normalised weights)"
    raise AssertionError(fmt)


def quantize_weight(w: torch.Tensor, bits: int = 4, fmt: str = "auto", group_size: int | None = None,
                    hessian: torch.Tensor | None = None) -> QuantizedWeight:
    """Quantize a 2-D weight [N, K] (out_features x in_features) to `bits` (3 or 4) in format `fmt`.

    fmt: "tlq" (Twin-Log Quantization, grid searched per layer), "int" (symmetric uniform, clipping searched),
         "nf" (NormalFloat table), "learned" (a codebook fitted to this layer), or "auto" (default): the one of
         tlq / int / learned with the least squared error on this layer.
    group_size: None for one scale an output channel, or 64 / 128 for one scale per group of K.
    hessian: None (round each weight to its nearest level) or H = X^T X [K, K] of calibration inputs
             (formats/gptq.hessian): the codebook and scales are chosen as without it, then the codes are
             rounded by GPTQ against H. info["gptq_gain_db"] is how much it lowered the output error on those
             inputs.
    """
    check_tensor("w", w, ndim=2, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64))
    check_choice("bits", bits, (3, 4))
    check_choice("fmt", fmt, FORMATS)
    check_choice("group_size", group_size, GROUP_SIZES)
    n, k = w.shape
    if n == 0 or k == 0:
        raise ValueError(f"w must be non-empty, got shape {tuple(w.shape)}")
    if group_size and k % group_size:
        raise ValueError(f"group_size={group_size} must divide K={k} (w has shape {tuple(w.shape)})")
    if hessian is not None and (not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (k, k)):
        got = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise ValueError(f"hessian must be a [K, K] = [{k}, {k}] tensor for w of shape {tuple(w.shape)}, got {got}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"w has {int((~torch.isfinite(w)).sum())} non-finite values (NaN or inf); "
                         f"a weight cannot be quantized with them")
    wf = w.detach().float()
    rows = _rows_of(wf, group_size)
    candidates = AUTO_CANDIDATES if fmt == "auto" else (fmt,)
    # auto: each candidate's codebook is fitted, and its error measured, on a row subsample (the same rows
    # for all); only the winner quantizes every row. Full-row runs of all three cost 2.5x more on a
    # 4608 x 1152 layer for a choice that agreed on every matrix of benchmarks/quant_error.py.
    sub = _subsample(rows)
    sub_total = sub.pow(2).sum().item()
    trials = {}
    for name in candidates:
        cb, desc = _codebook_for(name, rows, bits)
        e = quantize_rows(sub, cb)[2].sum().item() if len(candidates) > 1 else 0.0
        trials[name] = (e, cb, desc)
    chosen = min(candidates, key=lambda name: trials[name][0])   # ties go to the earlier candidate
    _, cb, desc = trials[chosen]
    scales, codes, _ = quantize_rows(rows, cb)
    codes = codes.reshape(n, k)
    scales = scales.reshape(n, k // group_size) if group_size else scales
    info = {"grid": desc, "rounding": "nearest" if hessian is None else "gptq",
            "subsample_sqnr_db": {name: (10 * math.log10(sub_total / t[0]) if t[0] > 0 else math.inf)
                                  for name, t in trials.items()} if len(candidates) > 1 else {}}
    if hessian is not None:
        nearest_err = output_error(wf, dequantize_codes(codes, scales, cb, group_size), hessian)
        codes = gptq_codes(wf, scales, cb, hessian, group_size)
        gptq_err = output_error(wf, dequantize_codes(codes, scales, cb, group_size), hessian)
        info["gptq_gain_db"] = 10 * math.log10(nearest_err / gptq_err) if gptq_err > 0 and nearest_err > 0 else 0.0
    packed = pack_codes(codes, bits)
    assert packed.shape[1] == packed_row_bytes(k, bits)
    return QuantizedWeight(packed=packed, scales=scales.float().contiguous(), codebook=cb.float().to(w.device),
                           bits=bits, fmt=chosen, shape=(n, k), group_size=group_size, info=info)
