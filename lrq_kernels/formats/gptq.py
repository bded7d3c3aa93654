"""Error-compensated rounding of weight codes (GPTQ, Frantar et al. 2022), for any codebook.

Rounding each weight to its nearest level minimises the weight's own error. What matters is the layer's output
error on real inputs, |X (W_q - W)^T|^2 = tr((W_q - W) H (W_q - W)^T) with H = X^T X over calibration tokens X
(in the rotated space, where the weight is quantized). GPTQ rounds one input channel (column) at a time, to the
nearest level as before, and moves that column's rounding error onto the columns not yet rounded, along
H's inverse, so that the later roundings cancel it where the inputs are correlated. The result is still codes
into the same codebook with the same scales: the packed format, the kernels and the reference do not change.

Choices, with the measurements behind them (`python benchmarks/gptq_error.py`: the digits DiT at W4A8,
auto + ARS, each layer's output error on calibration inputs from other noise, summed over its 36 layers):
  - columns in order of decreasing H diagonal ("act order") against the natural order;
  - dampening 1% of H's mean diagonal against 10%;
  - H over every calibration token (calibrate keeps it) against H of the 512-token sample, which overfits
    where K = 1024 is larger than the sample.
The numbers are in benchmarks/results/gptq_error.md.
The scales are those of the nearest-rounding search (formats/weight.py), fixed before the columns are rounded
("static groups"), so that act order works with group scales too. Refitting each row's scale to the GPTQ codes
afterwards (least squares under H) was measured and left out: FD to the float samples 0.156 against 0.171,
PSNR 46.3 against 46.2 dB (500 CPU samples), within the metrics' noise.
"""
from __future__ import annotations

import torch

DAMP = 0.01        # dampening, as a fraction of H's mean diagonal
COLUMN_BLOCK = 128  # columns rounded between two rank-128 updates of the rest (GPTQ's lazy batch update)


def hessian(tokens: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """H = X^T X ([K, K] in `dtype`) of calibration tokens X [T, K]; tokens with a NaN or inf are left out (one
    would poison every entry of H)."""
    x = tokens.detach().to(dtype)
    x = x[torch.isfinite(x).all(dim=1)]
    return x.t() @ x


def output_error(w: torch.Tensor, w_q: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W_q - W) H (W_q - W)^T): the squared output error summed over the tokens H was built from."""
    d = (w_q.double() - w.double()).to(h.device)
    return float(((d @ h.double()) * d).sum())


def gptq_codes(w: torch.Tensor, scales: torch.Tensor, codebook: torch.Tensor, h: torch.Tensor,
               group_size: int | None = None, damp: float = DAMP, act_order: bool = True) -> torch.Tensor:
    """Codes (int64 indices into `codebook`, [N, K]) of W [N, K] under fixed `scales` ([N] or [N, K / g]),
    rounded by GPTQ against H [K, K]. With H = 0 (no calibration signal) this is nearest rounding.
    act_order=False rounds the columns in their natural order (for comparison; see the module docstring)."""
    n, k = w.shape
    dev = w.device
    vals, order = torch.sort(codebook.float().to(dev))
    mids = ((vals[1:] + vals[:-1]) / 2).contiguous()
    s = scales.float().to(dev)
    s = s[:, None].expand(n, k) if not group_size else s.repeat_interleave(group_size, dim=1)
    live = s > 0                      # a zero scale: an all-zero row (or group), every code stands for 0
    s_safe = torch.where(live, s, torch.ones_like(s))

    def nearest(cols: torch.Tensor, sc: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        return torch.where(lv, torch.bucketize(cols / sc, mids), torch.bucketize(torch.zeros_like(cols), mids))

    h = h.double().to(dev)
    lam = damp * float(h.diagonal().mean()) if h.numel() else 0.0
    if not lam > 0:                   # no calibration energy at all: nothing to compensate with
        return order[nearest(w.float(), s_safe, live)]

    col_order = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else \
        torch.arange(k, device=dev)
    h = h[col_order][:, col_order] + lam * torch.eye(k, dtype=torch.float64, device=dev)
    # U: upper Cholesky factor of H^-1; row j holds how column j's error moves onto the columns after it
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    wk = w.float()[:, col_order].clone()
    sk, sk_live = s_safe[:, col_order], live[:, col_order]
    idx = torch.empty(n, k, dtype=torch.long, device=dev)
    for lo in range(0, k, COLUMN_BLOCK):
        hi = min(lo + COLUMN_BLOCK, k)
        blk = wk[:, lo:hi]                # a view: the in-block updates go straight into wk
        err = torch.empty_like(blk)
        for j in range(hi - lo):
            c = lo + j
            code = nearest(blk[:, j], sk[:, c], sk_live[:, c])
            q = torch.where(sk_live[:, c], vals[code] * sk[:, c], torch.zeros_like(blk[:, j]))
            e = (blk[:, j] - q) / u[c, c]
            blk[:, j:] -= e[:, None] * u[c, c:hi][None, :]
            err[:, j] = e
            idx[:, c] = code
        wk[:, hi:] -= err @ u[lo:hi, hi:]
    out = torch.empty_like(idx)
    out[:, col_order] = idx
    return order[out]
