"""Quantized GEMMs (Triton): packed 3/4-bit weight codes decoded inside the K loop, never a dequantized copy.

    gemm_a8:  y = scale_x[m] * sum_k codes_x[m, k] * codebook[c(n, k)] * scale_w[n(, g)] + bias
              FP8 activations x FP8 weights on the tensor cores (wgmma on Hopper), fp32 accumulation.
              INT8/INT4 activation codes run as fp16 x fp16 (both exact: |code| <= 127, e4m3 values).
    gemm_a16: y = sum_k x[m, k] * codebook[c(n, k)] * scale_w[n(, g)] + bias, x bf16/fp16 (weight-only).

Weight tile decode ([BLOCK_N, BLOCK_K], K contiguous in memory, packing of formats/packing.py):
    4-bit: byte = row[k >> 1], code = (byte >> 4 * (k & 1)) & 15
    3-bit: code = ((row[k >> 2] >> 2 * (k & 3)) & 3) | (((row[K8/4 + (k >> 3)] >> (k & 7)) & 1) << 2)
    value = codebook[code], looked up in registers (four int32 words hold the 16 e4m3 bytes).
Scales: per channel in the epilogue (exact: the codebook values reach the tensor cores unscaled); per group,
each K step lies inside one group (BLOCK_K divides group_size) and its partial product is scaled in fp32.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The decode by byte permute (prmt) for 4- and 3-bit codes, and the transposed product w @ x^T (see _gemm_kernel):
# docs/tuning.md, rows triton-prmt-decode and triton-swap-ab. The kernel keeps both forms of each as constexprs,
# which benchmarks/gemm_variants.py compares; the CPU interpreter runs no PTX, so it takes the select decode.
USE_PRMT = not _INTERPRET
_SWAP_AB = True


@triton.jit
def _lookup(code, t0, t1, t2, t3, BITS: tl.constexpr):
    """codebook[code] as e4m3, from the table's 16 e4m3 bytes held in four int32 words (t_j = entries 4j..4j+3,
    little-endian): two selects and a shift, no memory access (a global gather a weight would bound the GEMM by
    its loads)."""
    if BITS == 4:
        word = tl.where((code & 8) != 0, tl.where((code & 4) != 0, t3, t2), tl.where((code & 4) != 0, t1, t0))
    else:
        word = tl.where((code & 4) != 0, t1, t0)
    byte = (word >> ((code & 3) * 8)) & 0xFF
    return byte.to(tl.uint8).to(tl.float8e4nv, bitcast=True)


# 4-bit decode on the GPU, 4 packed bytes (8 codes) an instance, all in registers with byte permutes (prmt):
#   sel = the 4 low (or high) nibbles of the 4 bytes, gathered into 16 bits (and, shift, or, prmt)
#   a   = prmt(t0, t1, sel & 0x7777)      codebook entries 0..7 for each code's low 3 bits
#   b   = prmt(t2, t3, sel & 0x7777)      entries 8..15
#   out = prmt(a, b, 0x3210 | ((sel >> 1) & 0x4444))     byte i from b where code i has bit 3 set
# 23 instructions for 8 codes, against ~10 a code for _lookup's selects and shifts. Why it matters: the
# decode runs on the same warps as the tensor-core loop, and at ~10 instructions a weight (BLOCK_M = 128) it
# takes longer than the FP8 MMAs it feeds (bench_linear: 280-476 TFLOP/s against cuBLAS FP8's ~1200).
# Each output byte depends only on the input byte in the same position, so the grouping of elements into
# registers (which Triton leaves unspecified) does not matter. Operands: $0 low-nibble codes' bytes, $1
# high-nibble codes' bytes, $2 the 4 packed bytes, then t0..t3 as 4 registers each ($3, $7, $11, $15 used).


def _decode4_asm() -> str:
    """The 4-bit decode of the comment above as PTX, one block per half (ptxas drops the shift by 0)."""
    lines = ["{", ".reg .b32 x, s, s7, a, b, q;"]
    for half in range(2):
        lines += [f"shr.b32 x, $2, {4 * half};", "and.b32 x, x, 0x0F0F0F0F;", "shr.b32 q, x, 4;", "or.b32 x, x, q;",
                  "prmt.b32 s, x, x, 0x20;", "and.b32 s7, s, 0x7777;", "prmt.b32 a, $3, $7, s7;",
                  "prmt.b32 b, $11, $15, s7;", "shr.b32 q, s, 1;", "and.b32 q, q, 0x4444;", "or.b32 q, q, 0x3210;",
                  f"prmt.b32 ${half}, a, b, q;"]
    return "\n".join(lines + ["}"])


_DECODE4_ASM = tl.constexpr(_decode4_asm())
_DECODE4_CONSTRAINTS = tl.constexpr("=r,=r," + ",".join(["r"] * 17))

# 3-bit decode on the GPU, 4 lo-plane bytes L and 4 expanded hi-plane bytes H an instance (16 codes):
#   lo byte j holds bits 0-1 of codes 4j..4j+3; H byte j holds their bit 2 (bits 0..3, one per code)
#   for i = 0..3:  c = ((L >> 2i) & 0x03030303) | ((H << (2 - i)) & 0x04040404)    code 4j+i, one a byte
#                  s = prmt(c | (c >> 4), _, 0x20)                                  the 4 codes as nibbles
#                  out_i = prmt(t0, t1, s)                                          codebook entries 0..7
# 36 PTX instructions for 16 codes (ptxas drops the two shifts by 0). Operands: $0..$3 out_0..out_3, $4 L, $5 H,
# then t0, t1 as 4 registers each ($6, $10 used). Like the 4-bit decode, each output byte depends only on the
# input bytes in its position.


def _decode3_asm() -> str:
    """The 3-bit decode of the comment above as PTX, 9 instructions per output i (ptxas drops the shifts by 0)."""
    lines = ["{", ".reg .b32 c, h, x;"]
    for i in range(4):
        h_shift = f"shl.b32 h, $5, {2 - i};" if i < 2 else f"shr.b32 h, $5, {i - 2};"
        lines += [f"shr.b32 c, $4, {2 * i};", "and.b32 c, c, 0x03030303;", h_shift, "and.b32 h, h, 0x04040404;",
                  "or.b32 c, c, h;", "shr.b32 x, c, 4;", "or.b32 x, x, c;", "prmt.b32 x, x, x, 0x20;",
                  f"prmt.b32 ${i}, $6, $10, x;"]
    return "\n".join(lines + ["}"])


_DECODE3_ASM = tl.constexpr(_decode3_asm())
_DECODE3_CONSTRAINTS = tl.constexpr("=r,=r,=r,=r," + ",".join(["r"] * 10))


@triton.jit
def _decode_weight_tile(w_ptr, t0, t1, t2, t3, offs_n, k0, N, row_bytes, hi_offset, BITS: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PRMT: tl.constexpr, USE_PRMT3: tl.constexpr):
    """e4m3 codebook values [BLOCK_N, BLOCK_K] of the codes of rows offs_n, columns k0 .. k0 + BLOCK_K.
    Each packed byte is loaded once and split in registers; codes past K are the packing's zero padding or
    masked bytes, and meet zero activations. Rows past N read as code 0 and are never stored."""
    row = w_ptr + offs_n.to(tl.int64)[:, None] * row_bytes
    n_ok = offs_n[:, None] < N
    if BITS == 4:
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        byte = tl.load(row + kb[None, :], mask=n_ok & (kb[None, :] < row_bytes), other=0)
        if USE_PRMT:
            lo, hi = tl.inline_asm_elementwise(_DECODE4_ASM, _DECODE4_CONSTRAINTS, [byte, t0, t1, t2, t3],
                                               dtype=(tl.uint8, tl.uint8), is_pure=True, pack=4)
            return tl.reshape(tl.join(lo, hi), [BLOCK_N, BLOCK_K]).to(tl.float8e4nv, bitcast=True)  # k = 2j + t
        byte = byte.to(tl.int32)
        code = tl.reshape(tl.join(byte & 15, byte >> 4), [BLOCK_N, BLOCK_K])          # k = 2j + t
    else:
        kq = k0 // 4 + tl.arange(0, BLOCK_K // 4)
        lo = tl.load(row + kq[None, :], mask=n_ok & (kq[None, :] < hi_offset), other=0)
        ke = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        hi = tl.load(row + hi_offset + ke[None, :], mask=n_ok & ((hi_offset + ke[None, :]) < row_bytes),
                     other=0)
        if USE_PRMT3:
            # hi byte j covers codes 8j..8j+7: its low nibble sits beside lo byte 2j, its high one beside 2j + 1
            h = tl.reshape(tl.join(hi & 15, hi >> 4), [BLOCK_N, BLOCK_K // 4])
            o0, o1, o2, o3 = tl.inline_asm_elementwise(_DECODE3_ASM, _DECODE3_CONSTRAINTS, [lo, h, t0, t1],
                                                       dtype=(tl.uint8, tl.uint8, tl.uint8, tl.uint8),
                                                       is_pure=True, pack=4)
            w = tl.reshape(tl.join(tl.join(o0, o2), tl.join(o1, o3)), [BLOCK_N, BLOCK_K])   # k = 4j + i
            return w.to(tl.float8e4nv, bitcast=True)
        lo = lo.to(tl.int32)
        hi = hi.to(tl.int32)
        # join(join(v0, v2), join(v1, v3)) flattens to v0 v1 v2 v3: k = 4j + i
        lo = tl.reshape(tl.join(tl.join(lo & 3, (lo >> 4) & 3), tl.join((lo >> 2) & 3, (lo >> 6) & 3)),
                        [BLOCK_N, BLOCK_K])
        # bit i of byte j is code 8j + i: nested joins in the order that flattens to bits 0..7
        x0 = tl.join(tl.join(hi & 1, (hi >> 4) & 1), tl.join((hi >> 2) & 1, (hi >> 6) & 1))
        x1 = tl.join(tl.join((hi >> 1) & 1, (hi >> 5) & 1), tl.join((hi >> 3) & 1, (hi >> 7) & 1))
        hi = tl.reshape(tl.join(x0, x1), [BLOCK_N, BLOCK_K])
        code = lo | (hi << 2)
    return _lookup(code, t0, t1, t2, t3, BITS)


@triton.jit
def _accumulate(x, y, acc, scale, SCALED: tl.constexpr, FP32_STEPS: tl.constexpr):
    """acc + x @ y for one K step. Hopper's FP8 MMA accumulates with fewer bits than float32 (DeepSeek-V3 reports
    ~14): chained over the whole K it gave 1.16e-3 relative error at M = 333, K = N = 2432 (tests/test_gpu.py,
    bound 1e-3). FP32_STEPS therefore adds each step's product to the float32 accumulator on the CUDA cores, every step
    (docs/tuning.md: triton-fp32-steps)."""
    if SCALED:
        return acc + tl.dot(x, y) * scale
    elif FP32_STEPS:
        return acc + tl.dot(x, y)
    else:
        return tl.dot(x, y, acc)


@triton.jit
def _gemm_kernel(a_ptr, sa_ptr, w_ptr, sw_ptr, cb_ptr, bias_ptr, c_ptr, M, N, K: tl.constexpr, row_bytes, hi_offset,
                 stride_am, stride_cm, n_groups, M_BUCKET,
                 BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SA: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, USE_PRMT: tl.constexpr, USE_PRMT3: tl.constexpr, FP32_STEPS: tl.constexpr,
                 SWAP_AB: tl.constexpr, SPLIT_K: tl.constexpr):
    # grouped tile order: GROUP_M row-tiles share each column of weight tiles while it is in L2
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # SPLIT_K > 1: program pid_k sums K steps [pid_k K / SPLIT_K, (pid_k + 1) K / SPLIT_K) of its tile and writes its
    # partial product to slice pid_k of c, a float32 [SPLIT_K, M, N] that the caller sums (see SPLIT_K_MAX_M)
    pid_k = tl.program_id(0) // (num_m * num_n)
    pid = tl.program_id(0) % (num_m * num_n)
    group_id = pid // (GROUP_M * num_n)
    first_m = group_id * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    t0 = tl.load(cb_ptr)
    t1 = tl.load(cb_ptr + 1)
    t2 = tl.load(cb_ptr + 2)
    t3 = tl.load(cb_ptr + 3)
    rk = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    # SWAP_AB computes the transposed product w @ a^T, so that the decoded weight tile is wgmma's A operand, read
    # from registers rather than staged through shared memory (tools/compile_check.py shows the register operand);
    # at M <= 16 it also lets FP8 run on wgmma (BLOCK_N >= 64 rows) instead of an fp16 mma.sync fallback.
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # K is a compile-time constant: a model has a handful of widths, and Triton's CPU interpreter cannot run a
    # loop whose bound is a runtime scalar under NumPy >= 2.4
    for kk in range(0, K // SPLIT_K, BLOCK_K):
        k0 = pid_k * (K // SPLIT_K) + kk
        offs_k = k0 + rk
        a = tl.load(a_rows + offs_k[None, :], mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w = _decode_weight_tile(w_ptr, t0, t1, t2, t3, offs_n, k0, N, row_bytes, hi_offset, BITS, BLOCK_N, BLOCK_K,
                                USE_PRMT, USE_PRMT3)
        a = a.to(DOT_DTYPE)
        w = w.to(DOT_DTYPE)
        if GROUP > 0:       # each K step lies inside one scale group (the autotuner's pruning guarantees it)
            s = tl.load(sw_ptr + offs_n.to(tl.int64) * n_groups + k0 // GROUP, mask=offs_n < N, other=0.0)
        else:
            s = tl.full((BLOCK_N,), 1.0, tl.float32)                   # unused
        if SWAP_AB:
            acc = _accumulate(w, tl.trans(a), acc, s[:, None], GROUP > 0, FP32_STEPS)
        else:
            acc = _accumulate(a, tl.trans(w), acc, s[None, :], GROUP > 0, FP32_STEPS)
    if SWAP_AB:
        acc = tl.trans(acc)
    if GROUP == 0:
        sw = tl.load(sw_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc * sw[None, :]
    if HAS_SA:
        sa = tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)
        acc = acc * sa[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc + bias[None, :] * (pid_k == 0).to(tl.float32)        # added once, by the first K range
    c = c_ptr + (pid_k.to(tl.int64) * M + offs_m.to(tl.int64)[:, None]) * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tried by the autotuner, pruned by M (below)
# (128, 128, 256, 8, 3): FP8 only (its 16-bit A tiles would not fit in shared memory); twice the K a step halves
# the float32 adds and their waits for the wgmma. Its K loop is 295 SASS instructions per 128^3 against 353 for
# (128, 128, 128), 212 registers, no spills (tools/compile_check.py); chaining 256 products in the tensor cores
# stays far inside the 1e-3 bound (chaining 512 passed tests/test_gpu.py, 2432 gave 1.16e-3). BLOCK_M = 256
# would cut more but spills at 8 warps and 16.
# (128, 64, 128, 4, 3|4): one warpgroup a CTA at 228 registers, two CTAs an SM, so that one CTA decodes while the
# other waits for its wgmma before the float32 add (with 8 warps one CTA fills the SM). docs/tuning.md: triton-tiles.
_CONFIGS = [(128, 128, 128, 8, 3), (128, 128, 256, 8, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
            (128, 128, 64, 8, 4), (128, 64, 128, 4, 3), (128, 64, 128, 4, 4),
            (64, 128, 128, 4, 4), (64, 64, 128, 4, 4),
            (16, 32, 128, 4, 4), (16, 64, 128, 4, 4), (16, 128, 128, 4, 3), (16, 64, 256, 4, 3),
            (16, 64, 64, 4, 4)]


def _prune(configs, named_args, **kwargs):
    m, group = named_args["M_BUCKET"], kwargs.get("GROUP", named_args.get("GROUP", 0))
    fits = [c for c in configs if not group or group % c.kwargs["BLOCK_K"] == 0]   # a K step inside one group
    if kwargs.get("DOT_DTYPE", named_args.get("DOT_DTYPE")) != tl.float8e4nv:
        fits = [c for c in fits if not (c.kwargs["BLOCK_M"] >= 128 and c.kwargs["BLOCK_K"] == 256)]
    if kwargs.get("SWAP_AB", named_args.get("SWAP_AB")):       # BLOCK_N is then wgmma's M: 64 at least
        fits = [c for c in fits if c.kwargs["BLOCK_N"] >= 64]
    out = [c for c in fits if (m <= 16) == (c.kwargs["BLOCK_M"] == 16)
           and not (16 < m <= 256 and c.kwargs["BLOCK_M"] > 64)]
    return out or fits


_gemm_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
             for bm, bn, bk, w, st in _CONFIGS],
    # GROUP and BITS in the key: a tile tuned for per-channel scales (BLOCK_K = 128) must not be reused for
    # group_size 64 (seen on the H100: 17% error at W3, group 64, M = 1)
    key=["M_BUCKET", "N", "K", "GROUP", "BITS"], prune_configs_by={"early_config_prune": _prune})(_gemm_kernel)


# Split-K for the weight-only GEMM at 16 < M <= SPLIT_K_MAX_M: there the tiles above give too few programs (FLUX fc1
# at M = 64: 96 or 192 of 64 x 128 or 64 x 64, each a chain of 24 dependent K steps), so the K steps of a tile are
# also split between SPLIT_K programs (docs/tuning.md: triton-split-k). quant_linear_a16 runs this
# path only where the dequantized weight does not win (Tuning.a16_dequant_min_m): FLUX fc1- and fc2-sized weights at
# M = 17-127. Each writes its float32 partial product (scaled, the bias in the first) to
# its own slice of a [SPLIT_K, M, N] workspace, which torch sums in a fixed order and casts to x's dtype: the result
# does not depend on which program finished first (atomic adds would make it vary from run to run).
SPLIT_K_MAX_M = 128
_MAX_SPLIT_K = 4
_SPLIT_K_CONFIGS = [(bm, bn, bk, 4, 4, sk) for bm in (32, 64) for bn in (64, 128) for bk in (64, 128)
                    for sk in (1, 2, 4)]
assert max(c[-1] for c in _SPLIT_K_CONFIGS) <= _MAX_SPLIT_K


def _prune_split_k(configs, named_args, **kwargs):
    m, k, group = named_args["M_BUCKET"], named_args["K"], kwargs.get("GROUP", named_args.get("GROUP", 0))
    fits = [c for c in configs if c.kwargs["BLOCK_M"] <= max(32, m)
            and (group % c.kwargs["BLOCK_K"] == 0 if group else c.kwargs["BLOCK_K"] == 128)]
    split = [c for c in fits if k % (c.kwargs["SPLIT_K"] * c.kwargs["BLOCK_K"]) == 0]
    return split or [c for c in fits if c.kwargs["SPLIT_K"] == 1]      # K not a multiple of a K step: masked steps


_gemm_split_k_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=w, num_stages=st)
             for bm, bn, bk, w, st, sk in _SPLIT_K_CONFIGS],
    key=["M_BUCKET", "N", "K", "GROUP", "BITS"], prune_configs_by={"early_config_prune": _prune_split_k})(_gemm_kernel)


def _launch(a, sa, packed, w_scales, codebook, bits, k, group, bias, out_dtype, dot_dtype, split_k=False):
    m = a.shape[0]
    n = packed.shape[0]
    if split_k:     # slices [0, SPLIT_K) are written; SPLIT_K is the autotuner's choice, known after the launch
        out = torch.empty((_MAX_SPLIT_K, m, n), dtype=torch.float32, device=a.device)
    else:
        out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out.new_zeros((m, n), dtype=out_dtype)
    k8 = 8 * ((k + 7) // 8)
    args = (a, sa if sa is not None else a, packed, w_scales, codebook, bias if bias is not None else w_scales, out,
            m, n, k, packed.shape[1], k8 // 4, a.stride(0), out.stride(-2), (k // group) if group else 1,
            min(triton.next_power_of_2(m), 4096))
    meta = dict(BITS=bits, GROUP=group, HAS_BIAS=bias is not None, HAS_SA=sa is not None, DOT_DTYPE=dot_dtype,
                GROUP_M=8, USE_PRMT=USE_PRMT, USE_PRMT3=USE_PRMT,
                FP32_STEPS=dot_dtype == tl.float8e4nv, SWAP_AB=_SWAP_AB)
    if _INTERPRET:      # the interpreter runs one small tile shape (split in two where K allows); no autotuning
        bk = 32 if dot_dtype == tl.float8e4nv else 16
        sk = 2 if split_k and k % (2 * bk) == 0 else 1
        grid = (triton.cdiv(m, 16) * triton.cdiv(n, 16) * sk,)
        _gemm_kernel[grid](*args, BLOCK_M=16, BLOCK_N=16, BLOCK_K=bk, SPLIT_K=sk, **meta)
    elif split_k:
        grid = lambda c: (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]) * c["SPLIT_K"],)
        _gemm_split_k_tuned[grid](*args, **meta)
        sk = _gemm_split_k_tuned.best_config.kwargs["SPLIT_K"]
    else:
        grid = lambda c: (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]),)
        _gemm_tuned[grid](*args, SPLIT_K=1, **meta)
    return out[:sk].sum(0).to(out_dtype) if split_k else out


def _codebook_words(codebook: torch.Tensor) -> torch.Tensor:
    """The codebook as 16 e4m3 bytes (zero-padded) viewed as 4 int32 words, the kernel's lookup table. The
    values are e4m3-exact by construction (formats/codebooks.py), so the cast is exact."""
    b = torch.zeros(16, dtype=torch.uint8, device=codebook.device)
    b[: codebook.numel()] = codebook.to(torch.float8_e4m3fn).view(torch.uint8)
    return b.view(torch.int32)


def gemm_a8_triton(x_codes, x_scales, packed, w_scales, codebook, bits, k, group, bias, out_dtype):
    dot = tl.float8e4nv if x_codes.dtype == torch.float8_e4m3fn else tl.float16
    return _launch(x_codes.contiguous(), x_scales.contiguous(), packed.contiguous(), w_scales.contiguous(),
                   _codebook_words(codebook), bits, k, group, bias, out_dtype, dot)


def gemm_a16_triton(x, packed, w_scales, codebook, bits, group, bias):
    dot = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[x.dtype]
    return _launch(x.contiguous(), None, packed.contiguous(), w_scales.contiguous(), _codebook_words(codebook),
                   bits, x.shape[1], group, bias, x.dtype, dot, split_k=16 < x.shape[0] <= SPLIT_K_MAX_M)
