"""Fused rotate + per-token quantize (Triton): the kernel behind lrq::rotate_quant on CUDA.

One program owns BLOCK_M whole tokens, held in registers as [BLOCK_M * NBP, B] float32 (NBP = the number of
Hadamard blocks K/B rounded up to a power of two; padded blocks are masked and read as 0). It reads x once
(gathering through `perm` and multiplying by `channel_scale` for ARS), runs the log2(B) butterfly stages of
the Hadamard in float32 (the same additions as the reference, so codes match it up to fp32 rounding order),
takes each token's absmax, and writes codes and the float32 scale. Numerics are reference/act_quant.py's:
IEEE division for scale and inverse, round-to-nearest-even, NaN confined to its token, zero tokens -> 0.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _fwht_rows(x, R: tl.constexpr, B: tl.constexpr, LOG_B: tl.constexpr):
    """Unnormalised Walsh-Hadamard transform of each row of x [R, B], in Sylvester (natural) order.

    Constant-geometry form (Pease): every stage pairs k with k + B/2 and interleaves the results,
    y[2j] = x[j] + x[j + B/2], y[2j + 1] = x[j] - x[j + B/2]; log2(B) stages give H_B x. The same shapes at
    every stage, so the loop unrolls with no shape that depends on the stage.
    """
    for _ in tl.static_range(LOG_B):
        y = tl.permute(tl.reshape(x, [R, 2, B // 2]), [0, 2, 1])
        a, b = tl.split(y)
        x = tl.reshape(tl.join(a + b, a - b), [R, B])
    return x


@triton.jit
def _mul_rn(a, b, INTERPRET: tl.constexpr):
    """a * b rounded to float32 before any later use. LLVM otherwise contracts `a * b - r` into one FMA that
    keeps the exact product, and INT codes at rounding ties then differ from the reference (seen on the H100:
    int8 codes off on 0.3% of elements with no rotation at all)."""
    if INTERPRET:
        return a * b
    else:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)


@triton.jit
def _rint(y):
    """Round half to even (what torch.round and the fp8 cast do). From floor(y) and the exact remainder:
    floor(y + 0.5) would be wrong, since y + 0.5 itself rounds (0.49999997 + 0.5 == 1.0 in float32)."""
    r = tl.floor(y)
    d = y - r                                                            # exact for |y| < 2^23
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), r + 1.0, r)


@triton.jit
def _round_to_e4m3_grid(y):
    """y (|y| <= 448) rounded to the nearest e4m3 value, half to even, as float32. The cast that follows is
    then exact whatever its own rounding mode (Triton's CPU interpreter does not round to nearest even)."""
    e = ((y.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, -6)                                               # below 2^-6: e4m3's subnormal step
    quantum = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)        # 2^(e-3): 3 mantissa bits
    inv_quantum = ((127 - (e - 3)) << 23).to(tl.float32, bitcast=True)
    return _rint(y * inv_quantum) * quantum


@triton.jit
def _rotate_quant_kernel(x_ptr, perm_ptr, cs_ptr, codes_ptr, scales_ptr, M, K, stride_xm, stride_cm,
                         HAS_PERM: tl.constexpr, HAS_SCALE: tl.constexpr, B: tl.constexpr, LOG_B: tl.constexpr,
                         NBP: tl.constexpr, BLOCK_M: tl.constexpr, QMAX: tl.constexpr, IS_FP8: tl.constexpr,
                         INTERPRET: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)                       # [BLOCK_M]
    cols = tl.arange(0, NBP * B)                                       # [KP] position after the gather
    row_ok = rows < M
    col_ok = cols < K
    mask = row_ok[:, None] & col_ok[None, :]
    src = cols
    if HAS_PERM:
        src = tl.load(perm_ptr + cols, mask=col_ok, other=0)
    offs = rows.to(tl.int64)[:, None] * stride_xm + src[None, :]        # int64: M*K can pass 2^31
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)     # [BLOCK_M, KP]
    if HAS_SCALE:
        cs = tl.load(cs_ptr + cols, mask=col_ok, other=0.0)
        x = x * cs[None, :]
    if B > 1:
        x = tl.reshape(x, [BLOCK_M * NBP, B])
        x = _fwht_rows(x, BLOCK_M * NBP, B, LOG_B)
        x = tl.reshape(x, [BLOCK_M, NBP * B]) * (1.0 / tl.sqrt(B * 1.0))
    ax = tl.abs(x)
    amax = tl.max(ax, axis=1)
    has_nan = tl.max((x != x).to(tl.int32), axis=1) > 0                # tl.max drops NaN; the spec keeps it
    amax = tl.where(has_nan, float("nan"), amax)
    scale = tl.math.div_rn(amax, tl.full([BLOCK_M], QMAX, tl.float32))
    inv = tl.where(amax > 0, tl.math.div_rn(tl.full([BLOCK_M], QMAX, tl.float32), amax), 0.0)
    y = _mul_rn(x, tl.broadcast_to(inv[:, None], x.shape), INTERPRET)
    if IS_FP8:
        nan = y != y                                                    # min/max would drop it
        y = _round_to_e4m3_grid(tl.minimum(tl.maximum(y, -QMAX), QMAX))
        codes = tl.where(nan, float("nan"), y).to(tl.float8e4nv)
    else:
        r = _rint(y)
        r = tl.where(r != r, 0.0, r)
        codes = tl.minimum(tl.maximum(r, -QMAX), QMAX).to(tl.int8)
    out = rows.to(tl.int64)[:, None] * stride_cm + cols[None, :]
    tl.store(codes_ptr + out, codes, mask=mask)
    tl.store(scales_ptr + rows, scale, mask=row_ok)


def rotate_quant_triton(x: torch.Tensor, perm, channel_scale, block: int, a_format: str, a_bits: int):
    """Launcher; inputs already validated by ops/checks.py. x [M, K] on CUDA (or CPU under TRITON_INTERPRET)."""
    from ..reference.act_quant import act_qmax, code_dtype
    m, k = x.shape
    x = x.contiguous()
    codes = torch.empty((m, k), dtype=code_dtype(a_format), device=x.device)
    scales = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0:
        return codes, scales
    nb = k // block
    nbp = triton.next_power_of_2(nb)
    kp = nbp * block
    # registers: BLOCK_M * KP fp32 values a program; 8192 a program with 4-8 warps keeps them in registers
    block_m = max(1, min(16, 8192 // kp))
    num_warps = 4 if kp * block_m <= 4096 else 8
    if kp * block_m >= 16384:
        num_warps = 16
    perm_t = perm.to(torch.int32).contiguous() if perm is not None else x
    cs_t = channel_scale.contiguous() if channel_scale is not None else x
    grid = (triton.cdiv(m, block_m),)
    _rotate_quant_kernel[grid](
        x, perm_t, cs_t, codes, scales, m, k, x.stride(0), codes.stride(0),
        HAS_PERM=perm is not None, HAS_SCALE=channel_scale is not None, B=block, LOG_B=int(math.log2(block)),
        NBP=nbp, BLOCK_M=block_m, QMAX=act_qmax(a_format, a_bits), IS_FP8=a_format == "fp8",
        INTERPRET=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=num_warps)
    return codes, scales
