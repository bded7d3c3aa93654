"""Input validation of the ops, shared by their fake (meta) and real implementations."""
from __future__ import annotations

import torch

from .._checks import check_choice, check_tensor, is_power_of_two
from ..formats.packing import packed_row_bytes
from ..reference.act_quant import act_qmax

FLOAT_IN = (torch.float32, torch.float16, torch.bfloat16)
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_rotate_quant(x, perm, channel_scale, block, a_format, a_bits):
    check_rotation(x, perm, channel_scale, block)
    act_qmax(a_format, a_bits)


def check_rotation(x, perm, channel_scale, block):
    check_tensor("x", x, ndim=2, dtypes=FLOAT_IN)
    k = x.shape[1]
    if not (isinstance(block, int) and is_power_of_two(block) and k % block == 0):
        raise ValueError(f"block must be a power of two dividing K={k}, got {block!r}")
    if perm is not None:
        check_tensor("perm", perm, ndim=1, dtypes=(torch.int64, torch.int32))
        if perm.numel() != k:
            raise ValueError(f"perm must have K={k} entries, got {perm.numel()}")
    if channel_scale is not None:
        check_tensor("channel_scale", channel_scale, ndim=1, dtypes=(torch.float32,))
        if channel_scale.numel() != k:
            raise ValueError(f"channel_scale must have K={k} entries, got {channel_scale.numel()}")
    for name, t in (("perm", perm), ("channel_scale", channel_scale)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def check_codes(packed, codebook, bits, k):
    """The packed codes and their codebook; returns N."""
    check_choice("bits", bits, (3, 4))
    check_tensor("packed", packed, ndim=2, dtypes=(torch.uint8,))
    n = packed.shape[0]
    if packed.shape[1] != packed_row_bytes(k, bits):
        raise ValueError(f"packed must have {packed_row_bytes(k, bits)} bytes a row for K={k}, bits={bits}; "
                         f"got shape {tuple(packed.shape)}")
    check_tensor("codebook", codebook, ndim=1, dtypes=(torch.float32,))
    if codebook.numel() != 2 ** bits:
        raise ValueError(f"codebook must have {2 ** bits} entries for bits={bits}, got {codebook.numel()}")
    if codebook.device != packed.device:
        raise ValueError(f"codebook is on {codebook.device} but packed is on {packed.device}")
    return n


def check_weight(packed, w_scales, codebook, bits, k, group_size, bias):
    n = check_codes(packed, codebook, bits, k)
    check_tensor("w_scales", w_scales, dtypes=(torch.float32,))
    if group_size:
        if k % group_size:
            raise ValueError(f"group_size={group_size} must divide K={k}")
        want = (n, k // group_size)
    else:
        want = (n,)
    if tuple(w_scales.shape) != want:
        raise ValueError(f"w_scales must have shape {want}, got {tuple(w_scales.shape)}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=FLOAT_IN)
        if bias.numel() != n:
            raise ValueError(f"bias must have N={n} entries, got {bias.numel()}")
    for name, t in (("w_scales", w_scales), ("bias", bias)):
        if t is not None and t.device != packed.device:
            raise ValueError(f"{name} is on {t.device} but packed is on {packed.device}")
    return n


def check_gemm_a8(x_codes, x_scales, packed, w_scales, codebook, bits, k, group_size, bias, out_dtype):
    check_tensor("x_codes", x_codes, ndim=2, dtypes=(torch.float8_e4m3fn, torch.int8))
    check_tensor("x_scales", x_scales, ndim=1, dtypes=(torch.float32,))
    if x_codes.shape[1] != k:
        raise ValueError(f"x_codes has K={x_codes.shape[1]} columns but the weight has K={k}")
    if x_scales.numel() != x_codes.shape[0]:
        raise ValueError(f"x_scales must have M={x_codes.shape[0]} entries, got {x_scales.numel()}")
    if x_codes.device != packed.device or x_scales.device != packed.device:
        raise ValueError(f"x_codes/x_scales are on {x_codes.device}/{x_scales.device} but packed is on {packed.device}")
    check_choice("out_dtype", out_dtype, OUT_DTYPES)
    return check_weight(packed, w_scales, codebook, bits, k, group_size, bias)


def check_linear_a8(x, perm, channel_scale, block, a_format, a_bits, packed, w_scales, codebook, bits, group_size,
                    bias, out_dtype):
    """quant_linear_a8's inputs: the rotate_quant checks of x, then the weight's; returns N."""
    check_rotate_quant(x, perm, channel_scale, block, a_format, a_bits)
    if x.device != packed.device:
        raise ValueError(f"x is on {x.device} but packed is on {packed.device}")
    check_choice("out_dtype", out_dtype, OUT_DTYPES)
    return check_weight(packed, w_scales, codebook, bits, x.shape[1], group_size, bias)


def check_gemm_a16(x, packed, w_scales, codebook, bits, group_size, bias):
    check_tensor("x", x, ndim=2, dtypes=FLOAT_IN)
    if x.device != packed.device:
        raise ValueError(f"x is on {x.device} but packed is on {packed.device}")
    return check_weight(packed, w_scales, codebook, bits, x.shape[1], group_size, bias)


def check_dequantize_weight(packed, w_scales, codebook, bits, k, group_size, perm, channel_scale, block, dtype):
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    n = check_weight(packed, w_scales, codebook, bits, k, group_size, None)
    # the rotation's checks take an x [., K]: an empty one on packed's device stands for it
    check_rotation(packed.new_empty((0, k), dtype=torch.float32), perm, channel_scale, block)
    check_choice("dtype", dtype, OUT_DTYPES)
    return n


def check_decode_weight_e4m3(packed, codebook, bits, k):
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return check_codes(packed, codebook, bits, k)
