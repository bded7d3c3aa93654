import math

import pytest
import torch
from conftest import rel_err

from lrq_kernels import Rotation, hadamard_quant
from lrq_kernels.reference import quantize_tokens_ref

CASES = [("fp8", 8, 448.0), ("int", 8, 127.0), ("int", 4, 7.0)]


@pytest.mark.parametrize("a_format,a_bits,qmax", CASES)
def test_per_token_scale_and_code_range(a_format, a_bits, qmax):
    x = torch.randn(9, 64) * torch.logspace(-2, 2, 9)[:, None]
    codes, scales = quantize_tokens_ref(x, a_format, a_bits)
    assert torch.allclose(scales, x.abs().amax(1) / qmax)
    c = codes.float()
    assert torch.all(c.abs() <= qmax) and torch.all(c.abs().amax(1) == qmax)   # every token reaches its max
    if a_format == "int":
        assert codes.dtype == torch.int8
        assert torch.equal(c, torch.round(x * (qmax / x.abs().amax(1, keepdim=True))))


@pytest.mark.parametrize("a_format,a_bits,qmax", CASES)
def test_all_zero_token_no_division_by_zero(a_format, a_bits, qmax):
    x = torch.randn(3, 32)
    x[1] = 0
    codes, scales = quantize_tokens_ref(x, a_format, a_bits)
    assert scales[1] == 0 and torch.all(codes[1].float() == 0)
    assert torch.isfinite(codes.float()).all() and torch.isfinite(scales).all()


@pytest.mark.parametrize("a_format,a_bits,qmax", CASES)
def test_nan_stays_in_its_token(a_format, a_bits, qmax):
    x = torch.randn(4, 32)
    x[2, 5] = math.nan
    codes, scales = hadamard_quant(x, Rotation.hadamard(32), a_format, a_bits)
    deq = codes.float() * scales[:, None]
    assert torch.isnan(deq[2]).all()
    others = torch.tensor([0, 1, 3])
    assert torch.isfinite(deq[others]).all()
    clean_codes, clean_scales = hadamard_quant(x[others], Rotation.hadamard(32), a_format, a_bits)
    assert torch.equal(codes[others].float(), clean_codes.float()) and torch.equal(scales[others], clean_scales)


@pytest.mark.parametrize("a_format,a_bits,bound", [("fp8", 8, 0.05), ("int", 8, 0.02), ("int", 4, 0.35)])
def test_dequantized_error_is_bounded(a_format, a_bits, bound):
    x = torch.randn(64, 256)
    codes, scales = quantize_tokens_ref(x, a_format, a_bits)
    assert rel_err(codes.float() * scales[:, None], x) < bound


def test_hadamard_quant_keeps_leading_dims_and_matches_rotation():
    x = torch.randn(2, 5, 1152, dtype=torch.bfloat16)
    rot = Rotation.hadamard(1152)
    codes, scales = hadamard_quant(x, rot)
    assert codes.shape == x.shape and codes.dtype == torch.float8_e4m3fn and scales.shape == (2, 5)
    r = rot.apply(x.reshape(-1, 1152))
    deq = codes.reshape(-1, 1152).float() * scales.reshape(-1, 1)
    assert rel_err(deq, r) < 0.05


def test_odd_m_and_m_equal_1():
    for m in (1, 7, 333):
        codes, scales = hadamard_quant(torch.randn(m, 192))
        assert codes.shape == (m, 192) and scales.shape == (m,)


def test_hadamard_quant_bad_inputs():
    with pytest.raises(ValueError, match=r"\(a_format, a_bits\) must be one of .*got \('fp8', 4\)"):
        hadamard_quant(torch.randn(2, 64), None, "fp8", 4)
    with pytest.raises(TypeError, match="rotation must be a lrq_kernels.Rotation or None, got str"):
        hadamard_quant(torch.randn(2, 64), "hadamard")
    with pytest.raises(ValueError, match="block must be a power of two dividing K=96, got 64"):
        hadamard_quant(torch.randn(2, 96), Rotation("hadamard", 64))
    with pytest.raises(TypeError, match="x must have dtype in .*got int64"):
        hadamard_quant(torch.ones(2, 64, dtype=torch.long))
