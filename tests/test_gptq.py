"""GPTQ rounding (formats/gptq.py): the same codebook and scales, codes chosen for the output error."""
import pytest
import torch
from conftest import student_t

import lrq_kernels as lrq
from lrq_kernels import QuantConfig, QuantLinear, quantize_weight, stats_from_tokens
from lrq_kernels.formats.gptq import gptq_codes, hessian, output_error


def correlated_tokens(t, k, seed=0):
    """Tokens whose channels are strongly correlated (a rank-k/4 signal plus a little noise), the case where
    moving one channel's rounding error onto the others can cancel it."""
    basis = torch.randn(k // 4, k, generator=torch.Generator().manual_seed(1000 + k))   # the same for every seed
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, k // 4, generator=g) @ basis + 0.05 * torch.randn(t, k, generator=g)


@pytest.mark.parametrize("fmt", ["int", "nf", "tlq", "learned"])
@pytest.mark.parametrize("bits", [3, 4])
def test_diagonal_hessian_gives_nearest_rounding(fmt, bits):
    # uncorrelated inputs leave nothing to compensate with: every code is the nearest one, bit for bit
    w = student_t(16, 96, 5)
    h = torch.diag(torch.rand(96, dtype=torch.float64) + 0.5)
    near, gptq = quantize_weight(w, bits, fmt), quantize_weight(w, bits, fmt, hessian=h)
    assert torch.equal(near.packed, gptq.packed) and torch.equal(near.scales, gptq.scales)
    assert gptq.info["rounding"] == "gptq" and near.info["rounding"] == "nearest"


@pytest.mark.parametrize("group_size", [None, 64])
@pytest.mark.parametrize("fmt", ["int", "auto"])
def test_output_error_lower_in_and_out_of_sample(fmt, group_size):
    k = 192 if group_size is None else 128
    w = student_t(48, k, 5)
    h_fit = hessian(correlated_tokens(1024, k, seed=0))
    h_new = hessian(correlated_tokens(1024, k, seed=1))   # other tokens of the same distribution
    near = quantize_weight(w, 4, fmt, group_size)
    gptq = quantize_weight(w, 4, fmt, group_size, hessian=h_fit)
    assert torch.equal(near.scales, gptq.scales) and torch.equal(near.codebook, gptq.codebook)
    assert gptq.info["gptq_gain_db"] > 3.0
    assert output_error(w, gptq.dequantize(), h_new) < 0.5 * output_error(w, near.dequantize(), h_new)


def test_zero_rows_nan_tokens_and_zero_hessian():
    w = torch.randn(6, 64)
    w[2] = 0
    x = correlated_tokens(200, 64)
    x[5, 3] = float("nan")
    h = hessian(x)
    assert torch.isfinite(h).all()           # the NaN token is left out, not spread into H
    q = quantize_weight(w, 4, "nf", hessian=h)
    assert torch.equal(q.dequantize()[2], torch.zeros(64))
    # H = 0 (all calibration tokens zero): nothing to compensate with, nearest rounding
    near = quantize_weight(w, 4, "nf")
    zero_h = quantize_weight(w, 4, "nf", hessian=torch.zeros(64, 64, dtype=torch.float64))
    assert torch.equal(near.packed, zero_h.packed)


def test_gptq_codes_direct_matches_quantize_weight():
    w = student_t(8, 64, 4)
    h = hessian(correlated_tokens(300, 64))
    q = quantize_weight(w, 4, "tlq", hessian=h)
    codes = gptq_codes(w, q.scales, q.codebook, h)
    assert torch.equal(codes.to(torch.uint8), q.codes())


def test_bad_hessian_is_refused():
    with pytest.raises(ValueError, match=r"hessian must be a \[K, K\] = \[64, 64\] tensor .*got \(32, 32\)"):
        quantize_weight(torch.randn(4, 64), 4, "int", hessian=torch.eye(32))


def test_quant_linear_rounds_by_gptq_with_calibration():
    lin = torch.nn.Linear(128, 64)
    x = correlated_tokens(512, 128)
    st = stats_from_tokens(x, 4)
    ref = lin(x)
    err = {}
    for rounding in ("gptq", "nearest"):
        q = QuantLinear.from_linear(lin, QuantConfig(a_bits=16, w_rounding=rounding), st)
        assert q.quant_info["rounding"] == rounding
        err[rounding] = (q(x) - ref).pow(2).sum().item()
    assert err["gptq"] < 0.5 * err["nearest"]
    # without calibration statistics there is nothing to round against: nearest
    assert QuantLinear.from_linear(lin, QuantConfig(rotation="none")).quant_info["rounding"] == "nearest"


def test_rounding_config_error():
    with pytest.raises(ValueError, match=r"w_rounding must be one of \('gptq', 'nearest'\), got 'awq'"):
        QuantConfig(w_rounding="awq")


def test_calibration_hessian_covers_every_finite_token_and_rotates():
    from lrq_kernels import Rotation
    from lrq_kernels.rotation.ars import serpentine_permutation
    x = correlated_tokens(300, 64)
    x[7, 0] = float("nan")
    st = stats_from_tokens(x, 3)
    fin = x[torch.isfinite(x).all(dim=1)].double()
    torch.testing.assert_close(st.input_hessian().double(), fin.t() @ fin, rtol=1e-5, atol=1e-3)
    rot = Rotation("ars", 16, perm=serpentine_permutation(fin.abs().amax(0).float(), 16),
                   channel_scale=torch.rand(64) + 0.5)
    xr = rot.apply(fin.float()).double()
    torch.testing.assert_close(rot.apply_to_hessian(st.input_hessian()).double(), xr.t() @ xr, rtol=1e-4, atol=1e-2)


def test_calibrate_keeps_hessians_within_budget(monkeypatch):
    import lrq_kernels.nn.model as model_mod
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))

    def run(m):
        return m(torch.randn(100, 64))
    st = lrq.calibrate(net, run)
    assert st["0"].hessian.shape == (64, 64) and st["2"].hessian.shape == (32, 32)
    monkeypatch.setattr(model_mod, "HESSIAN_BUDGET_BYTES", 4 * 64 * 64)     # 64^2 + 32^2 floats do not fit
    with pytest.warns(UserWarning, match=r"input Hessians of these 2 layers would take .*512-token samples"):
        st = lrq.calibrate(net, run)
    assert st["0"].hessian is None and st["0"].input_hessian().shape == (64, 64)
    assert lrq.calibrate(net, run, keep_hessian=True)["0"].hessian is not None
