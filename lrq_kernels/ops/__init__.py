"""The public ops, registered with torch.library (schema, fake impl, real impl) so that torch.compile and CUDA
graphs see them as single ops.

    lrq::hadamard_transform(x, scale)                                 fast_hadamard_transform-compatible
    lrq::rotate_quant(x, perm, channel_scale, block, a_format, a_bits) -> (codes, scales)
    lrq::rotate(x, perm, channel_scale, block) -> x rotated, in x's dtype (the weight-only path)
    lrq::gemm_a8(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
    lrq::gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    lrq::quant_linear_a8(x, perm, channel_scale, block, a_format, a_bits, packed, w_scales, codebook, bits,
                         group_size, bias, out_dtype)                   rotate_quant then gemm_a8, as one op
    lrq::dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype)
                                                                        W_deq with the rotation undone
    lrq::quant_linear_a16(x, perm, channel_scale, block, packed, w_scales, codebook, bits, group_size, bias)
                                                                        rotate then gemm_a16, as one op
    lrq::decode_weight_e4m3(packed, codebook, bits, k)                  the codebook value of every code, FP8 e4m3

Each op validates its inputs (ops/checks.py; the fake impl runs the same checks) and then runs the
implementation that `_pick` selects: the CUDA kernels (lrq_kernels._C via lrq_kernels/cuda) or the Triton
kernels (lrq_kernels/triton) on a GPU, the PyTorch reference (lrq_kernels/reference) elsewhere.
LRQ_BACKEND=reference|triton|cuda forces one (ops/backend.py).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import cuda as cuda_kernels
from ..formats.weight import dequantize_packed
from ..reference.act_quant import code_dtype, rotate_quantize_ref, rotate_ref
from ..reference.gemm import decode_weight_e4m3_ref, gemm_a8_ref, gemm_a16_ref, unrotate_weight_ref
from ..reference.hadamard import hadamard_transform_ref
from .backend import requested_backend
from .checks import (FLOAT_IN, check_decode_weight_e4m3, check_dequantize_weight, check_gemm_a8, check_gemm_a16,
                     check_rotate_quant, check_rotation)

_LIB = "lrq"


MAX_ROW_REGISTERS = 16384   # Triton's rotate_quant holds a whole token (K padded to NBP * block) in registers
MAX_GEMV_M = 16             # the CUDA GEMV's mma tile has 16 rows
# Each op's kernels in order of preference.
BACKENDS = {"rotate_quant": ("cuda", "triton"), "rotate": ("cuda",), "gemm_a16": ("cuda", "triton"),
            "gemm_a8": ("cuda", "triton"), "dequantize_weight": ("cuda",), "decode_weight_e4m3": ("cuda",)}
# Tokens from which the CUDA W·A8 GEMM (csrc/gemm_a8_sm90.cu, 128-token tiles; 4- and 3-bit codes) runs instead of
# Triton's (16- and 64-token tiles at small M). On natural-order codes (ops.gemm_a8) the CUDA kernel's producer copies
# them in 4-byte pieces: on the H100 (results/gemm_a8_cuda_sweep.md) it was faster on FLUX fc1, fc2, qkv
# and PixArt fc1 from M = 256 (1.15-1.9x) but 16% slower on fc2 at M = 128; on the H200 with the current
# kernel (results/gemm_a8_cuda_sweep_s14.md) still 1.10-1.25x Triton's time on fc2 at M = 1-128 and up to 1.14x on
# qkv at M <= 16. On codes in its K order, loaded by TMA (quant_linear_a8), the same H200 sweep has it faster than
# Triton's on all four shapes at every M from 1 to 128, both bit widths: 1.04-1.25x on fc2, 1.05-2.32x on the rest
# (fc2 at M = 64-128 included). Hence TMA_MIN_M = 1. LRQ_BACKEND=cuda runs it at any M.
CUDA_GEMM_A8_MIN_M = 256
CUDA_GEMM_A8_TMA_MIN_M = 1
# Tokens from which the weight-only forward (quant_linear_a16) dequantizes the weight with its rotation undone
# (dequantize_weight, one pass over N x K) and runs cuBLAS's GEMM on it, instead of rotating every token and running
# the Triton GEMM that decodes codes between its MMAs. The price is a transient N x K weight in x's dtype. Measured on
# the H200 (`python benchmarks/bench_cuda.py --only a16`, results/bench_cuda_a16.md; 4-bit, M = 32 ...
# 4608): from M = 128 the weight path took 0.36-0.91x the token path's time (the faster of its GEMM with K split and
# unsplit) on PixArt qkv, FLUX qkv, fc1 and fc2; at M = 32 and 64 it took 0.41-0.81x on the weights of at most
# A16_DEQUANT_MAX_SMALL_M_WEIGHT elements (PixArt and FLUX qkv) and 1.22-1.50x on FLUX fc1 and fc2, so those start at
# M = 17 and the others at A16_DEQUANT_MIN_M (M <= 16 keeps the CUDA GEMV).
A16_DEQUANT_MIN_M = 128
A16_DEQUANT_MAX_SMALL_M_WEIGHT = 3072 * 3072
# Tokens from which gemm_a8 (and so quant_linear_a8) decodes the weight's codes to an FP8 matrix (decode_weight_e4m3,
# one pass over N x K) and runs cuBLAS's FP8 GEMM with row-wise scales (torch._scaled_mm) on it, instead of our GEMM
# that decodes codes between its MMAs. Where: LRQ_BACKEND=auto, FP8 codes, per-channel scales, bf16 or fp16 output, a
# GPU of compute capability >= 8.9, N and K multiples of 16. The price is a transient N x K byte matrix. Measured on
# the H200 (benchmarks/bench_cuda.py --only a8, results/bench_cuda_a8.md; whole forward, 4- and 3-bit,
# PixArt fc1 and FLUX qkv, fc1, fc2): at M = 1024 the weight path took 0.92-1.02x the kernel path's time; at 512,
# 1.09-1.26x on the FLUX shapes (0.92x on PixArt fc1); from 2048, 0.77-0.95x.
A8_DEQUANT_MIN_M = 1024
# Opt-in: the weight path's cuBLAS FP8 GEMM with use_fast_accum=True (the tensor cores' partial sums chained over K,
# not promoted to float32; torchao's float8 inference default). Measured on the H200 (benchmarks/fast_accum.py,
# results/fast_accum.md; the M >= 1024 shapes of dit_shapes.json): the GEMM alone 1.05-1.19x faster, its
# relative error against the float64 product of the same codes 0.6e-3-3.0e-3 in float32 out (1.3e-4 without), above
# this library's 1e-3 bound from K = 3072 on; in bf16 out 1.8e-3-3.4e-3 (1.7e-3 without, the rounding to bf16). Off
# by default for that reason.
A8_FAST_ACCUM = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_ok(device: torch.device, want: str) -> bool:
    # on CPU only Triton's interpreter can run a kernel, and only when asked for (the CPU tests do)
    if device.type != "cuda" and not (_interpreting() and want == "triton"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda_why_not(op: str, device: torch.device, shape: dict) -> str:
    """'' when lrq_kernels._C runs `op` for this device and shape, else the reason."""
    if not cuda_kernels.available():
        return cuda_kernels.why_unavailable()
    if not cuda_kernels.device_ok(device):
        return f"needs a CUDA GPU of compute capability >= {cuda_kernels.MIN_CAPABILITY}, got {device}"
    if op in ("rotate_quant", "rotate"):
        return cuda_kernels.rotate_quant_unsupported(shape["k"], shape["block"], shape["dtype"])
    if op == "gemm_a16":
        return cuda_kernels.gemv_a16_unsupported(shape["m"], shape["k"], shape["bits"], shape["group"],
                                                 shape["dtype"])
    if op == "dequantize_weight":
        return cuda_kernels.unrotate_weight_unsupported(shape["k"], shape["block"], shape["bits"], shape["group"],
                                                        shape["dtype"])
    if op == "decode_weight_e4m3":
        return cuda_kernels.decode_weight_e4m3_unsupported(shape["n"], shape["k"], shape["bits"])
    if op == "gemm_a8":
        return cuda_kernels.gemm_a8_unsupported(shape["m"], shape["k"], shape["n"], shape["bits"], shape["group"],
                                                shape["dtype"], device)
    return f"no CUDA kernel for {op}"


def _triton_why_not(op: str, device: torch.device, shape: dict, want: str) -> str:
    if not _triton_ok(device, want):
        return f"Triton cannot run on {device}"
    if op == "rotate_quant":
        k, block = shape["k"], shape["block"]
        nbp = 1 << max(0, (k // block - 1).bit_length())
        if nbp * block > MAX_ROW_REGISTERS:
            return f"K={k} padded to {nbp * block} > {MAX_ROW_REGISTERS} values a token"
    if op == "gemm_a8" and shape.get("fp8") and device.type == "cuda":
        cap = cuda_kernels.capability(device)
        if cap < (8, 9):
            raise RuntimeError(f"FP8 activations need a GPU of compute capability >= 8.9 (Ada, Hopper), got "
                               f"sm_{cap[0]}{cap[1]} on {device}; use QuantConfig(a_format='int')")
    return ""


def _pick(op: str, device: torch.device, **shape) -> str:
    """The implementation for `op` on `device` and this shape; the first that can run it, in this order:

    | op           | on CUDA, auto                                         | otherwise |
    | rotate_quant | cuda (K % 8 == 0), then triton                        | reference |
    | rotate       | cuda (K % 8 == 0)                                     | reference |
    | gemm_a16     | cuda if M <= 16 and K % 128 == 0, else triton         | reference |
    quant_linear_a16 fuses rotate into the CUDA GEMV at M = 1, K <= 4096 (4-bit, per channel, no perm; see
    _fused_rotate_gemv).
    | gemm_a8      | cuda if sm_90, per-channel, K % 128 == 0, M >= 256 (any M with tma), else triton | reference |
    | dequantize_weight | cuda (K % 8 == 0)                                | reference |
    | decode_weight_e4m3 | cuda (K % 64 == 0)                              | reference |
    quant_linear_a16 takes dequantize_weight + cuBLAS from M = A16_DEQUANT_MIN_M where that runs in CUDA; gemm_a8
    takes decode_weight_e4m3 + cuBLAS FP8 from M = A8_DEQUANT_MIN_M (auto only; _a8_weight_path says where).

    Why this order: benchmarks/bench_cuda.py measures CUDA against Triton on the H100 (results in
    benchmarks/results/bench_cuda.md). LRQ_BACKEND=reference|triton|cuda forces one, and raises where it cannot
    run (on CPU, triton needs TRITON_INTERPRET=1, which the CPU tests use).
    """
    want = requested_backend()
    if want == "reference":
        return "reference"
    order = BACKENDS[op]
    if want == "auto":
        min_m = CUDA_GEMM_A8_TMA_MIN_M if shape.get("tma") else CUDA_GEMM_A8_MIN_M
        if op == "gemm_a8" and shape["m"] < min_m:
            order = tuple(b for b in order if b != "cuda")
    else:
        order = (want,) if want in order else ()    # an op with no kernel there runs its reference
    reasons = []
    for backend in order:
        why = _cuda_why_not(op, device, shape) if backend == "cuda" else _triton_why_not(op, device, shape, want)
        if not why:
            return backend
        reasons.append(f"{backend}: {why}")
    if want != "auto" and order:
        raise RuntimeError(f"LRQ_BACKEND={want} but {op} cannot run there on {device} with {shape}: "
                           + "; ".join(reasons))
    return "reference"


# --- hadamard_transform -------------------------------------------------------------------------------------

@torch.library.custom_op(f"{_LIB}::hadamard_transform", mutates_args=())
def _hadamard_transform(x: torch.Tensor, scale: float) -> torch.Tensor:
    return hadamard_transform_ref(x, scale)


@_hadamard_transform.register_fake
def _(x, scale):
    return torch.empty_like(x)


def _ht_setup(ctx, inputs, output):
    ctx.scale = inputs[1]


def _ht_backward(ctx, grad):
    # H is symmetric: the gradient of scale * H x (padded and trimmed) is the same transform of the gradient
    # when the dim is a power of two; with padding, the trim/pad pair is its own adjoint too.
    return _hadamard_transform(grad, ctx.scale), None


_hadamard_transform.register_autograd(_ht_backward, setup_context=_ht_setup)


def hadamard_transform(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * x @ H along the last dim, as fast_hadamard_transform.hadamard_transform computes it.

    H is the unnormalised Sylvester Hadamard matrix of size 2^ceil(log2(d)); x is zero-padded to that size and
    the output trimmed back to d. Pass scale = 1/sqrt(2^ceil(log2 d)) for the normalised (orthogonal)
    transform. Output dtype = x's dtype; differentiable.
    """
    from .._checks import check_tensor
    check_tensor("x", x, min_ndim=1, dtypes=FLOAT_IN + (torch.float64,))
    if x.shape[-1] == 0:
        raise ValueError(f"x's last dim must be > 0, got shape {tuple(x.shape)}")
    if not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    return _hadamard_transform(x, float(scale))


# --- rotate + quantize ----------------------------------------------------------------------------------------

def _rotate_quant(x: torch.Tensor, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor],
                 block: int, a_format: str, a_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes [M, K] e4m3|int8, scales [M] float32): rotation then per-token quantization."""
    check_rotate_quant(x, perm, channel_scale, block, a_format, a_bits)
    backend = _pick("rotate_quant", x.device, k=x.shape[1], block=block, dtype=x.dtype)
    if backend == "cuda":
        return cuda_kernels.rotate_quant_cuda(x, perm, channel_scale, block, a_format, a_bits)
    if backend == "triton":
        from ..triton.rotate_quant import rotate_quant_triton
        return rotate_quant_triton(x, perm, channel_scale, block, a_format, a_bits)
    return rotate_quantize_ref(x, perm, channel_scale, block, a_format, a_bits)


rotate_quant = torch.library.custom_op(f"{_LIB}::rotate_quant", _rotate_quant, mutates_args=())


@rotate_quant.register_fake
def _(x, perm, channel_scale, block, a_format, a_bits):
    check_rotate_quant(x, perm, channel_scale, block, a_format, a_bits)
    m, k = x.shape
    return x.new_empty((m, k), dtype=code_dtype(a_format)), x.new_empty((m,), dtype=torch.float32)


def _rotate(x: torch.Tensor, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor],
           block: int) -> torch.Tensor:
    """x [M, K] -> x[:, perm] * channel_scale times the normalised block Hadamard, in x's dtype (the weight-only
    path's rotation; float32 inside, rounded once at the end)."""
    check_rotation(x, perm, channel_scale, block)
    if _pick("rotate", x.device, k=x.shape[1], block=block, dtype=x.dtype) == "cuda":
        return cuda_kernels.rotate_quant_cuda(x, perm, channel_scale, block, None, 16)[0]
    return rotate_ref(x, perm, channel_scale, block).to(x.dtype)


rotate = torch.library.custom_op(f"{_LIB}::rotate", _rotate, mutates_args=())


@rotate.register_fake
def _(x, perm, channel_scale, block):
    check_rotation(x, perm, channel_scale, block)
    return torch.empty_like(x)


def hadamard_quant(x: torch.Tensor, rotation=None, a_format: str = "fp8", a_bits: int = 8):
    """Rotate, then quantize each token: x [.., K] -> (codes [.., K] e4m3|int8, scales [..] float32).

    rotation: a lrq_kernels.Rotation (from ARS or Rotation.hadamard(K, block)); None means the default block
    Hadamard for K (rotation/rotation.py: default_block). a_format "fp8" (a_bits 8) or "int" (a_bits 8 or 4;
    INT4 levels -7..7 are held in int8). Dequantize as codes.float() * scales[..., None].
    """
    from .._checks import check_tensor
    from ..rotation.rotation import Rotation
    check_tensor("x", x, min_ndim=1, dtypes=FLOAT_IN)
    k = x.shape[-1]
    rot = Rotation.hadamard(k) if rotation is None else rotation
    if not isinstance(rot, Rotation):
        raise TypeError(f"rotation must be a lrq_kernels.Rotation or None, got {type(rotation).__name__}")
    dev = x.device
    perm = None if rot.perm is None else rot.perm.to(dev)
    cs = None if rot.channel_scale is None else rot.channel_scale.to(dev)
    codes, scales = rotate_quant(x.reshape(-1, k), perm, cs, rot.block, a_format, a_bits)
    return codes.reshape(x.shape), scales.reshape(x.shape[:-1])


# --- GEMMs ------------------------------------------------------------------------------------------------

def _gemm_a8(x_codes: torch.Tensor, x_scales: torch.Tensor, packed: torch.Tensor, w_scales: torch.Tensor,
            codebook: torch.Tensor, bits: int, k: int, group_size: int, bias: Optional[torch.Tensor],
            out_dtype: torch.dtype) -> torch.Tensor:
    """y [M, N] = x_scales[m] * (x_codes @ W_deq^T) + bias, in out_dtype (group_size 0: per-channel scales). From
    A8_DEQUANT_MIN_M tokens on a GPU (_a8_weight_path) it is cuBLAS's FP8 GEMM on decode_weight_e4m3's matrix with
    x_scales and w_scales as row-wise scales (with fast accumulation if A8_FAST_ACCUM); else the GEMM kernel that
    decodes codes between its MMAs."""
    n = check_gemm_a8(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
    if _a8_weight_path(x_codes.device, x_codes.shape[0], k, n, bits, group_size, x_codes.dtype, out_dtype):
        w8 = transient_weight("gemm_a8", "A8_DEQUANT_MIN_M", (n, k), torch.float8_e4m3fn, x_codes.shape[0],
                              lambda: _decode_weight_e4m3(packed, codebook, bits, k))
        return torch._scaled_mm(x_codes.contiguous(), w8.t(), scale_a=x_scales.contiguous().reshape(-1, 1),
                                scale_b=w_scales.contiguous().reshape(1, -1),
                                bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype,
                                use_fast_accum=A8_FAST_ACCUM)
    backend = _pick("gemm_a8", x_codes.device, fp8=x_codes.dtype == torch.float8_e4m3fn, m=x_codes.shape[0], k=k,
                    n=n, bits=bits, group=group_size, dtype=x_codes.dtype)
    if backend == "cuda":
        return cuda_kernels.gemm_a8_cuda(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias,
                                         out_dtype)
    if backend == "triton":
        from ..triton.gemm import gemm_a8_triton
        return gemm_a8_triton(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
    w = dequantize_packed(packed, w_scales, codebook, bits, k, group_size or None)
    return gemm_a8_ref(x_codes, x_scales, w, bias).to(out_dtype)


def transient_weight(op: str, threshold: str, shape: tuple, dtype: torch.dtype, m: int, make):
    """make(): the transient decoded weight of the large-M paths. A CUDA out-of-memory there is raised again as
    torch.OutOfMemoryError saying which weight did not fit and how to avoid it; nothing was changed, so the model
    stays usable (a smaller batch, or the fused kernels, still run)."""
    try:
        return make()
    except torch.OutOfMemoryError as e:
        mib = shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size() / 2 ** 20
        raise torch.OutOfMemoryError(
            f"{op}: out of GPU memory for the transient {shape[0]} x {shape[1]} {str(dtype).replace('torch.', '')} "
            f"weight ({mib:.0f} MiB) that M={m} tokens take; free GPU memory, run fewer tokens at a time, or set "
            f"lrq_kernels.ops.{threshold} above {m} to keep the fused kernels (no transient weight). ({e})") from None


def _a8_weight_path(device: torch.device, m: int, k: int, n: int, bits: int, group_size: int, codes_dtype: torch.dtype,
                    out_dtype: torch.dtype) -> bool:
    """Whether gemm_a8 runs as decode_weight_e4m3 + torch._scaled_mm (see A8_DEQUANT_MIN_M): only under
    LRQ_BACKEND=auto, so that LRQ_BACKEND=cuda|triton still name the GEMM kernel that runs."""
    if (requested_backend() != "auto" or m < A8_DEQUANT_MIN_M or codes_dtype != torch.float8_e4m3fn or group_size
            or out_dtype not in (torch.bfloat16, torch.float16) or k % 16 or n % 16 or device.type != "cuda"
            or cuda_kernels.capability(device) < (8, 9)):
        return False
    return _pick("decode_weight_e4m3", device, n=n, k=k, bits=bits) == "cuda"


gemm_a8 = torch.library.custom_op(f"{_LIB}::gemm_a8", _gemm_a8, mutates_args=())


@gemm_a8.register_fake
def _(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype):
    n = check_gemm_a8(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
    return x_codes.new_empty((x_codes.shape[0], n), dtype=out_dtype)


def _gemm_a16(x: torch.Tensor, packed: torch.Tensor, w_scales: torch.Tensor, codebook: torch.Tensor,
             bits: int, group_size: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [M, N] = x @ W_deq^T + bias, in x's dtype (weight-only path)."""
    check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    backend = _pick("gemm_a16", x.device, m=x.shape[0], k=x.shape[1], bits=bits, group=group_size, dtype=x.dtype)
    if backend == "cuda":
        return cuda_kernels.gemv_a16_cuda(x, packed, w_scales, codebook, bits, group_size, bias)
    if backend == "triton":
        from ..triton.gemm import gemm_a16_triton
        return gemm_a16_triton(x, packed, w_scales, codebook, bits, group_size, bias)
    w = dequantize_packed(packed, w_scales, codebook, bits, x.shape[1], group_size or None)
    return gemm_a16_ref(x, w, bias).to(x.dtype)


gemm_a16 = torch.library.custom_op(f"{_LIB}::gemm_a16", _gemm_a16, mutates_args=())


@gemm_a16.register_fake
def _(x, packed, w_scales, codebook, bits, group_size, bias):
    n = check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    return x.new_empty((x.shape[0], n))


# --- the W·A8 linear layer: rotate + quantize, then the GEMM ------------------------------------------------

@torch.library.custom_op(f"{_LIB}::quant_linear_a8", mutates_args=())
def quant_linear_a8(x: torch.Tensor, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor], block: int,
                    a_format: str, a_bits: int, packed: torch.Tensor, w_scales: torch.Tensor, codebook: torch.Tensor,
                    bits: int, group_size: int, bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    """y [M, N] = gemm_a8(*rotate_quant(x, ...), ...): QuantLinear's W·A8 forward. Where both run in CUDA (and
    gemm_a8 does not take the decoded weight to cuBLAS, from A8_DEQUANT_MIN_M), the
    codes pass between them in the GEMM's K order (cuda.gemm_order), which lets the GEMM load them by TMA: FLUX
    fc1, M = 4608: 491 us against 551 with natural-order codes (results/gemm_a8_cuda_sweep.md). The result is the
    same either way: the permutation is applied to both operands of the dot product."""
    check_rotate_quant(x, perm, channel_scale, block, a_format, a_bits)
    m, k = x.shape
    n = packed.shape[0] if packed.dim() == 2 else 0
    fp8 = a_format == "fp8"
    if (fp8 and not _a8_weight_path(x.device, m, k, n, bits, group_size, torch.float8_e4m3fn, out_dtype)
            and _pick("rotate_quant", x.device, k=k, block=block, dtype=x.dtype) == "cuda"
            and _pick("gemm_a8", x.device, fp8=True, m=m, k=k, n=n, bits=bits, group=group_size,
                      dtype=torch.float8_e4m3fn, tma=True) == "cuda"):
        codes, scales = cuda_kernels.rotate_quant_cuda(x, perm, channel_scale, block, a_format, a_bits,
                                                       gemm_order=True)
        check_gemm_a8(codes, scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
        return cuda_kernels.gemm_a8_cuda(codes, scales, packed, w_scales, codebook, bits, k, group_size, bias,
                                         out_dtype, x_gemm_order=True)
    codes, scales = _rotate_quant(x, perm, channel_scale, block, a_format, a_bits)
    return _gemm_a8(codes, scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)


@quant_linear_a8.register_fake
def _(x, perm, channel_scale, block, a_format, a_bits, packed, w_scales, codebook, bits, group_size, bias,
      out_dtype):
    check_rotate_quant(x, perm, channel_scale, block, a_format, a_bits)
    codes = x.new_empty(x.shape, dtype=code_dtype(a_format))
    n = check_gemm_a8(codes, x.new_empty((x.shape[0],), dtype=torch.float32), packed, w_scales, codebook, bits,
                      x.shape[1], group_size, bias, out_dtype)
    return x.new_empty((x.shape[0], n), dtype=out_dtype)


# --- the weight-only linear layer ----------------------------------------------------------------------------

def _dequantize_weight(packed: torch.Tensor, w_scales: torch.Tensor, codebook: torch.Tensor, bits: int, k: int,
                      group_size: int, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor], block: int,
                      dtype: torch.dtype) -> torch.Tensor:
    """W [N, K] in dtype, with x @ W^T == rotate(x, perm, channel_scale, block) @ W_deq^T: the dequantized weight
    with the layer's rotation undone (reference.unrotate_weight_ref; block 1 and no perm/channel_scale: W_deq
    itself). Computed in float32, rounded once."""
    check_dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype)
    if _pick("dequantize_weight", packed.device, k=k, block=block, bits=bits, group=group_size, dtype=dtype) == "cuda":
        return cuda_kernels.unrotate_weight_cuda(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale,
                                                 block, dtype)
    w = dequantize_packed(packed, w_scales, codebook, bits, k, group_size or None)
    return unrotate_weight_ref(w, perm, channel_scale, block).to(dtype)


dequantize_weight = torch.library.custom_op(f"{_LIB}::dequantize_weight", _dequantize_weight, mutates_args=())


@dequantize_weight.register_fake
def _(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype):
    n = check_dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype)
    return packed.new_empty((n, k), dtype=dtype)


def _fused_rotate_gemv(x: torch.Tensor, perm: Optional[torch.Tensor], block: int, bits: int, group_size: int) -> bool:
    """Whether quant_linear_a16 runs as one CUDA GEMV that rotates x itself: where the kernel can (M = 1, K <= 4096,
    block <= 1024: csrc/gemv_a16.cu, "Fused rotation") and where it measured faster than rotate + GEMV: 4-bit codes,
    per-channel scales, no ARS permutation. `python benchmarks/ab_cuda.py --old <the two-kernel build> a16fwd`
    (results/ab_fused_rot.md, H200, names the build): 4-bit 0.83x the time on FLUX qkv (3072 x 3072) and 0.90x on fc1 (3072 ->
    12288); 3-bit 0.94x and 1.03x, with the ARS gather 0.93x and 1.05x, so those stay two kernels."""
    m, k = x.shape
    return (bits == 4 and group_size == 0 and perm is None
            and _pick("rotate", x.device, k=k, block=block, dtype=x.dtype) == "cuda"
            and _pick("gemm_a16", x.device, m=m, k=k, bits=bits, group=group_size, dtype=x.dtype) == "cuda"
            and not cuda_kernels.gemv_a16_rotate_unsupported(m, k, block))


@torch.library.custom_op(f"{_LIB}::quant_linear_a16", mutates_args=())
def quant_linear_a16(x: torch.Tensor, perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor], block: int,
                     packed: torch.Tensor, w_scales: torch.Tensor, codebook: torch.Tensor, bits: int, group_size: int,
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [M, N] = gemm_a16(rotate(x, perm, channel_scale, block), ...), in x's dtype: QuantLinear's weight-only
    forward (block 1 with no perm or channel_scale: no rotation). From M = A16_DEQUANT_MIN_M on a GPU (from M = 17 for
    weights of at most A16_DEQUANT_MAX_SMALL_M_WEIGHT elements) it computes
    the same product as F.linear(x, dequantize_weight(...)): cuBLAS on a transient weight in x's dtype, which rounds
    the rotated weight instead of the rotated tokens (each to x's dtype, relative 2^-9 in bf16). At small M the CUDA
    GEMV rotates x itself where it can (_fused_rotate_gemv), with the same result as the two ops."""
    check_rotation(x, perm, channel_scale, block)
    check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    m, k = x.shape
    small_weight = packed.shape[0] * k <= A16_DEQUANT_MAX_SMALL_M_WEIGHT
    if ((m >= A16_DEQUANT_MIN_M or (m > 16 and small_weight)) and x.dtype in (torch.bfloat16, torch.float16)
            and _pick("dequantize_weight", x.device, k=k, block=block, bits=bits, group=group_size,
                      dtype=x.dtype) == "cuda"):
        w = transient_weight("quant_linear_a16", "A16_DEQUANT_MIN_M", (packed.shape[0], k), x.dtype, m,
                             lambda: _dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm,
                                                       channel_scale, block, x.dtype))
        return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))
    rotated = perm is not None or channel_scale is not None or block > 1
    if rotated and _fused_rotate_gemv(x, perm, block, bits, group_size):
        return cuda_kernels.gemv_a16_cuda(x, packed, w_scales, codebook, bits, group_size, bias, perm, channel_scale,
                                          block)
    xr = _rotate(x, perm, channel_scale, block) if rotated else x
    return _gemm_a16(xr, packed, w_scales, codebook, bits, group_size, bias)


@quant_linear_a16.register_fake
def _(x, perm, channel_scale, block, packed, w_scales, codebook, bits, group_size, bias):
    check_rotation(x, perm, channel_scale, block)
    n = check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    return x.new_empty((x.shape[0], n))


# --- the weight's codes as an FP8 matrix (the W·A8 weight path) ---------------------------------------------------

def _decode_weight_e4m3(packed: torch.Tensor, codebook: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """[N, K] float8_e4m3fn: codebook[code(n, k)] for every packed code, no scales (W_deq = this * w_scales[:, None]
    with per-channel scales). gemm_a8's cuBLAS path multiplies it by FP8 activation codes with row-wise scales."""
    check_decode_weight_e4m3(packed, codebook, bits, k)
    if _pick("decode_weight_e4m3", packed.device, n=packed.shape[0], k=k, bits=bits) == "cuda":
        return cuda_kernels.decode_weight_e4m3_cuda(packed, codebook, bits, k)
    return decode_weight_e4m3_ref(packed, codebook, bits, k)


decode_weight_e4m3 = torch.library.custom_op(f"{_LIB}::decode_weight_e4m3", _decode_weight_e4m3, mutates_args=())


@decode_weight_e4m3.register_fake
def _(packed, codebook, bits, k):
    n = check_decode_weight_e4m3(packed, codebook, bits, k)
    return packed.new_empty((n, k), dtype=torch.float8_e4m3fn)


__all__ = ["hadamard_transform", "hadamard_quant", "rotate", "rotate_quant", "gemm_a8", "gemm_a16",
           "quant_linear_a8", "dequantize_weight", "quant_linear_a16", "decode_weight_e4m3"]
