import math

import pytest
import torch
from conftest import student_t

from lrq_kernels import quantize_weight, sqnr_db
from lrq_kernels.formats.codebooks import is_e4m3_exact
from lrq_kernels.formats.packing import unpack_codes


@pytest.mark.parametrize("fmt", ["tlq", "int", "nf", "learned", "auto"])
@pytest.mark.parametrize("bits", [3, 4])
def test_codes_round_to_nearest_level(fmt, bits):
    w = student_t(24, 96, 5)
    q = quantize_weight(w, bits, fmt)
    assert q.packed.shape == (24, {4: 48, 3: 36}[bits]) and q.scales.shape == (24,)
    assert is_e4m3_exact(q.codebook) and q.fmt in ("tlq", "int", "nf", "learned")
    codes = unpack_codes(q.packed, bits, 96).long()
    wn = w / q.scales[:, None]
    chosen = (wn - q.codebook[codes]).abs()
    best = (wn[..., None] - q.codebook).abs().min(dim=-1).values
    assert torch.all(chosen <= best + 1e-6)


@pytest.mark.parametrize("group_size", [64, 128])
def test_group_scales(group_size):
    w = torch.randn(8, 256)
    w[:, :group_size] *= 50          # one group far larger: group scales must follow it
    q = quantize_weight(w, 4, "int", group_size=group_size)
    assert q.scales.shape == (8, 256 // group_size)
    assert torch.all(q.scales[:, 0] > 10 * q.scales[:, 1])
    small = slice(group_size, None)   # per-channel scales drown the small groups; group scales keep them
    per_channel = quantize_weight(w, 4, "int").dequantize()
    assert sqnr_db(w[:, small], q.dequantize()[:, small]) > sqnr_db(w[:, small], per_channel[:, small]) + 10


def test_dequantize_is_codebook_times_scale():
    w = torch.randn(5, 40)
    q = quantize_weight(w, 4, "tlq")
    codes = q.codes().long()
    assert torch.equal(q.dequantize(), q.codebook[codes] * q.scales[:, None])


def test_tlq_beats_int_on_long_tails_and_auto_never_loses():
    w = student_t(256, 512, 5)
    db = {f: sqnr_db(w, quantize_weight(w, 4, f).dequantize()) for f in ("int", "tlq", "auto")}
    assert db["tlq"] >= db["int"] + 1.0
    assert db["auto"] >= db["int"] - 0.05


def test_auto_on_gaussian_is_not_worse_than_int():
    w = torch.randn(256, 512)
    a, i = (sqnr_db(w, quantize_weight(w, 3, f).dequantize()) for f in ("auto", "int"))
    assert a >= i - 0.05


def test_zero_rows_get_zero_scale_and_exact_zero():
    w = torch.randn(4, 64)
    w[2] = 0
    q = quantize_weight(w, 4, "auto")
    assert q.scales[2] == 0 and torch.all(q.dequantize()[2] == 0)
    assert torch.isfinite(q.dequantize()).all()


def test_sqnr_sanity_4bit_better_than_3bit():
    w = torch.randn(64, 256)
    assert sqnr_db(w, quantize_weight(w, 4, "int").dequantize()) > sqnr_db(w, quantize_weight(w, 3, "int").dequantize()) + 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(w=torch.randn(8)), r"w must be 2-D, got shape \(8,\)"),
    (dict(w=torch.randn(4, 8), bits=2), r"bits must be one of \(3, 4\), got 2"),
    (dict(w=torch.randn(4, 8), fmt="fp4"), r"fmt must be one of .*got 'fp4'"),
    (dict(w=torch.randn(4, 96), group_size=64), r"group_size=64 must divide K=96"),
    (dict(w=torch.randn(4, 96), group_size=32), r"group_size must be one of .*got 32"),
    (dict(w=torch.randint(0, 3, (4, 8))), r"w must have dtype in .*got int64"),
])
def test_bad_inputs_name_argument_and_value(kwargs, match):
    w = kwargs.pop("w")
    with pytest.raises((ValueError, TypeError), match=match):
        quantize_weight(w, **kwargs)


def test_nan_weight_refused():
    w = torch.randn(4, 8)
    w[1, 3] = math.nan
    with pytest.raises(ValueError, match="1 non-finite values"):
        quantize_weight(w)
