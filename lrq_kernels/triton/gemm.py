"""Quantized GEMMs (Triton): packed 3/4-bit weight codes decoded inside the K loop, never a dequantized copy.

    gemm_a8:  y = scale_x[m] * sum_k codes_x[m, k] * codebook[c(n, k)] * scale_w[n(, g)] + bias
              FP8 activations x FP8 weights on the tensor cores (wgmma on Hopper), fp32 accumulation.
              INT8/INT4 activation codes run as fp16 x fp16 (both exact: |code| <= 127, e4m3 values).
    gemm_a16: y = sum_k x[m, k] * codebook[c(n, k)] * scale_w[n(, g)] + bias, x bf16/fp16 (weight-only).

Weight tile decode ([BLOCK_N, BLOCK_K], K contiguous in memory, packing of formats/packing.py):
    4-bit: byte = row[k >> 1], code = (byte >> 4 * (k & 1)) & 15
    3-bit: code = ((row[k >> 2] >> 2 * (k & 3)) & 3) | (((row[K8/4 + (k >> 3)] >> (k & 7)) & 1) << 2)
    value = codebook[code], read from a 16-byte (8-byte) table that stays in L1.
Scales: per channel in the epilogue (exact: the codebook values reach the tensor cores unscaled); per group,
each K step lies inside one group (BLOCK_K divides group_size) and its partial product is scaled in fp32.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _decode_weight_tile(w_ptr, cb_ptr, offs_n, offs_k, N, K, row_bytes, hi_offset, BITS: tl.constexpr):
    """Codebook values [BLOCK_N, BLOCK_K] of the packed codes at (offs_n, offs_k); 0 outside the matrix."""
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    row = w_ptr + offs_n.to(tl.int64)[:, None] * row_bytes
    if BITS == 4:
        byte = tl.load(row + (offs_k[None, :] >> 1), mask=mask, other=0).to(tl.int32)
        code = (byte >> ((offs_k[None, :] & 1) * 4)) & 15
    else:
        lo = tl.load(row + (offs_k[None, :] >> 2), mask=mask, other=0).to(tl.int32)
        hi = tl.load(row + hi_offset + (offs_k[None, :] >> 3), mask=mask, other=0).to(tl.int32)
        code = ((lo >> ((offs_k[None, :] & 3) * 2)) & 3) | (((hi >> (offs_k[None, :] & 7)) & 1) << 2)
    val = tl.load(cb_ptr + code)
    return tl.where(mask, val, 0.0)


@triton.jit
def _gemm_kernel(a_ptr, sa_ptr, w_ptr, sw_ptr, cb_ptr, bias_ptr, c_ptr, M, N, K: tl.constexpr, row_bytes, hi_offset,
                 stride_am, stride_cm, n_groups,
                 BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SA: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr):
    # grouped tile order: GROUP_M row-tiles share each column of weight tiles while it is in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group_id = pid // (GROUP_M * num_n)
    first_m = group_id * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # K is a compile-time constant: a model has a handful of widths, and Triton's CPU interpreter cannot run a
    # loop whose bound is a runtime scalar under NumPy >= 2.4
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + rk
        a = tl.load(a_rows + offs_k[None, :], mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w = _decode_weight_tile(w_ptr, cb_ptr, offs_n, offs_k, N, K, row_bytes, hi_offset, BITS)
        a = a.to(DOT_DTYPE)
        w = w.to(DOT_DTYPE)
        if GROUP > 0:
            g = k0 // GROUP
            s = tl.load(sw_ptr + offs_n.to(tl.int64) * n_groups + g, mask=offs_n < N, other=0.0)
            acc += tl.dot(a, tl.trans(w)) * s[None, :]
        else:
            acc = tl.dot(a, tl.trans(w), acc)
    if GROUP == 0:
        sw = tl.load(sw_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc * sw[None, :]
    if HAS_SA:
        sa = tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)
        acc = acc * sa[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    c = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _tile_config(m: int, n: int, k: int, group: int, fp8: bool):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Untuned first version: square-ish tiles for large M,
    16-row tiles with narrow N for small M so that N/BLOCK_N programs cover the SMs."""
    if _INTERPRET:
        return 16, 16, 32 if fp8 else 16, 4, 1
    bk = 128 if fp8 else 64
    if group:
        bk = min(bk, group)
    if m <= 16:
        return 16, 32, bk, 4, 4
    if m <= 128:
        return 64, 64, bk, 4, 4
    return 128, 128, bk, 8, 3


def _launch(a, sa, packed, w_scales, codebook, bits, k, group, bias, out_dtype, dot_dtype):
    m = a.shape[0]
    n = packed.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    bm, bn, bk, warps, stages = _tile_config(m, n, k, group, dot_dtype == tl.float8e4nv)
    k8 = 8 * ((k + 7) // 8)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _gemm_kernel[grid](
        a, sa if sa is not None else a, packed, w_scales, codebook, bias if bias is not None else w_scales, out,
        m, n, k, packed.shape[1], k8 // 4, a.stride(0), out.stride(0), (k // group) if group else 1,
        BITS=bits, GROUP=group, HAS_BIAS=bias is not None, HAS_SA=sa is not None, DOT_DTYPE=dot_dtype,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    return out


def _codebook_table(codebook: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # the values are e4m3-exact by construction (formats/codebooks.py), so this cast is exact
    return codebook.to(dtype).contiguous()


def gemm_a8_triton(x_codes, x_scales, packed, w_scales, codebook, bits, k, group, bias, out_dtype):
    fp8 = x_codes.dtype == torch.float8_e4m3fn
    dot = tl.float8e4nv if fp8 else tl.float16
    table = _codebook_table(codebook, torch.float8_e4m3fn if fp8 else torch.float16)
    return _launch(x_codes.contiguous(), x_scales.contiguous(), packed.contiguous(), w_scales.contiguous(),
                   table, bits, k, group, bias, out_dtype, dot)


def gemm_a16_triton(x, packed, w_scales, codebook, bits, group, bias):
    dot = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[x.dtype]
    table = _codebook_table(codebook, x.dtype)
    return _launch(x.contiguous(), None, packed.contiguous(), w_scales.contiguous(), table, bits, x.shape[1],
                   group, bias, x.dtype, dot)
