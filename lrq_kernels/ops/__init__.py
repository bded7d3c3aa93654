"""The public ops, registered with torch.library (schema, fake impl, real impl) so that torch.compile and CUDA
graphs see them as single ops. One file a family:

    hadamard.py      lrq::hadamard_transform(x, scale)                 fast_hadamard_transform-compatible
    rotate_quant.py  lrq::rotate_quant(x, perm, channel_scale, block, a_format, a_bits) -> (codes, scales)
                     lrq::rotate(x, perm, channel_scale, block)        x rotated, in x's dtype
                     hadamard_quant(x, rotation, a_format, a_bits)     the same on [.., K] with a Rotation
    gemm.py          lrq::gemm_a8(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype)
                     lrq::gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias)
    weight.py        lrq::dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale,
                                            block, dtype)                W_deq with the rotation undone
                     lrq::decode_weight_e4m3(packed, codebook, bits, k) the codebook value of every code, FP8
    linear.py        lrq::quant_linear_a8(x, perm, channel_scale, block, a_format, a_bits, packed, w_scales, codebook,
                                          bits, group_size, bias, out_dtype)   rotate_quant then gemm_a8
                     lrq::quant_linear_a16(x, perm, channel_scale, block, packed, w_scales, codebook, bits, group_size,
                                           bias)                       rotate then gemm_a16

Each op validates its inputs (checks.py; the fake impl runs the same checks), asks dispatch.py once for its
plan (which kernel: CUDA, lrq_kernels._C through lrq_kernels/cuda; Triton, lrq_kernels/triton; or the PyTorch
reference, lrq_kernels/reference) and runs it. tuning.py holds the measured thresholds of that choice;
LRQ_BACKEND=reference|triton|cuda forces a backend (backend.py).
"""
from .dispatch import Plan, plan
from .gemm import gemm_a8, gemm_a16
from .hadamard import hadamard_transform
from .linear import quant_linear_a8, quant_linear_a16
from .rotate_quant import hadamard_quant, rotate, rotate_quant
from .policy import Tuning, get_tuning, set_tuning, tuning
from .weight import decode_weight_e4m3, dequantize_weight, transient_weight

__all__ = ["hadamard_transform", "hadamard_quant", "rotate", "rotate_quant", "gemm_a8", "gemm_a16",
           "quant_linear_a8", "dequantize_weight", "quant_linear_a16", "decode_weight_e4m3", "transient_weight",
           "Plan", "plan", "Tuning", "get_tuning", "set_tuning", "tuning"]
