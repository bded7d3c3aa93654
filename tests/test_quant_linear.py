import pytest
import torch
from conftest import rel_err

from lrq_kernels import QuantConfig, QuantLinear, load_quantized, save_quantized, stats_from_tokens
from lrq_kernels.reference import dequantize_tokens_ref, quantize_tokens_ref

CONFIGS = [QuantConfig(), QuantConfig(w_bits=3), QuantConfig(a_bits=4, a_format="int"),
           QuantConfig(a_format="int"), QuantConfig(a_bits=16), QuantConfig(group_size=64, rotation="none"),
           QuantConfig(w_format="tlq", rotation="hadamard", hadamard_block=32)]


def _layer_and_stats(k=192, n=80, bias=True):
    lin = torch.nn.Linear(k, n, bias=bias)
    x = torch.randn(256, k)
    x[:, [2, 50]] *= 30
    return lin, stats_from_tokens(x, 4)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-{c.w_format}-g{c.group_size}-{c.rotation}")
def test_forward_equals_explicit_dequantized_math(cfg):
    lin, st = _layer_and_stats()
    q = QuantLinear.from_linear(lin, cfg, st)
    x = torch.randn(3, 5, 192)
    rot, w_rot = q.rotation, q.quantized_weight().dequantize()
    xr = rot.apply(x.reshape(-1, 192))
    if cfg.a_bits != 16:
        xr = dequantize_tokens_ref(*quantize_tokens_ref(xr, cfg.a_format, cfg.a_bits))
    want = (xr.double() @ w_rot.double().t() + lin.bias.double()).reshape(3, 5, 80)
    assert rel_err(q(x), want) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_output_dtype_follows_input_and_sqnr_floor(dtype):
    lin, st = _layer_and_stats()
    q = QuantLinear.from_linear(lin, QuantConfig(), st)
    x = torch.randn(33, 192)
    x[:, [2, 50]] *= 30
    y = q(x.to(dtype))
    assert y.dtype == dtype and y.shape == (33, 80)
    # W4A8: ~18 dB a 4-bit weight (6 dB a bit) minus FP8 activations' share; 15 dB leaves margin for bf16 output
    assert rel_err(y.float(), lin(x).detach()) < 10 ** (-15 / 20)


def test_no_bias_m1_and_extra_repr():
    lin, st = _layer_and_stats(bias=False)
    q = QuantLinear.from_linear(lin, QuantConfig(w_bits=3), st)
    assert q.bias is None and q(torch.randn(1, 192)).shape == (1, 80)
    r = repr(q)
    assert "w=" in r and "3" in r and "a=fp8" in r and "rotation=" in r


def test_state_dict_roundtrip_is_exact():
    lin, st = _layer_and_stats()
    q = QuantLinear.from_linear(lin, QuantConfig(), st)
    assert q.perm is not None and q.perm.dtype == torch.int32     # what the rotate kernels read fastest
    q2 = QuantLinear.from_layout(q.layout())
    q2.load_state_dict(q.state_dict())
    x = torch.randn(4, 192)
    assert torch.equal(q(x), q2(x))
    for k, v in q.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, q2.state_dict()[k])


def test_truncated_tensor_is_refused_and_nothing_is_loaded():
    lin, st = _layer_and_stats()
    q = QuantLinear.from_linear(lin, QuantConfig(), st)
    target = QuantLinear.from_layout(q.layout())
    before = {k: v.clone() for k, v in target.state_dict().items() if isinstance(v, torch.Tensor)}
    sd = q.state_dict()
    sd["qweight"] = sd["qweight"][:-1]
    with pytest.raises(ValueError, match=r"'qweight' must have shape \(80, 96\).*got \(\(79, 96\)"):
        target.load_state_dict(sd)
    for k, v in target.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, before[k])


def test_mismatched_layout_is_refused():
    lin, st = _layer_and_stats()
    q4 = QuantLinear.from_linear(lin, QuantConfig(rotation="hadamard"), st)
    q3 = QuantLinear.from_linear(lin, QuantConfig(w_bits=3, rotation="hadamard"), st)
    with pytest.raises(ValueError, match="does not match"):
        q3.load_state_dict(q4.state_dict())


def test_corrupted_values_are_refused():
    lin, st = _layer_and_stats()
    q = QuantLinear.from_linear(lin, QuantConfig(rotation="hadamard"), st)
    sd = q.state_dict()
    sd["codebook"] = sd["codebook"] + 0.01
    with pytest.raises(ValueError, match="'codebook' is not exactly representable in e4m3"):
        QuantLinear.from_layout(q.layout()).load_state_dict(sd)
    sd = q.state_dict()
    sd["w_scales"][3] = float("inf")
    with pytest.raises(ValueError, match="'w_scales' has non-finite values"):
        QuantLinear.from_layout(q.layout()).load_state_dict(sd)


def test_model_cast_keeps_quantized_buffers():
    lin, st = _layer_and_stats()
    model = torch.nn.Sequential(QuantLinear.from_linear(lin, QuantConfig(), st), torch.nn.GELU())
    x = torch.randn(4, 192)
    y32 = model(x)
    model = model.to(torch.bfloat16)
    assert model[0].w_scales.dtype == torch.float32 and model[0].qweight.dtype == torch.uint8
    assert rel_err(model(x.bfloat16()).float(), y32) < 2e-2


def test_nan_input_propagates_per_token():
    lin, st = _layer_and_stats()
    q = QuantLinear.from_linear(lin, QuantConfig(), st)
    x = torch.randn(4, 192)
    x[1, 7] = float("nan")
    y = q(x)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2, 3]]).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(w_bits=2), r"w_bits must be one of \(3, 4\), got 2"),
    (dict(a_bits=6), r"a_bits must be one of \(4, 8, 16\), got 6"),
    (dict(a_bits=4), r"a_bits=4 needs a_format='int'.*got a_format='fp8'"),
    (dict(rotation="quarot"), r"rotation must be one of .*got 'quarot'"),
    (dict(w_format="fp4"), r"w_format must be one of .*got 'fp4'"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_forward_bad_inputs():
    lin, st = _layer_and_stats()
    q = QuantLinear.from_linear(lin, QuantConfig(rotation="hadamard"))
    with pytest.raises(ValueError, match=r"x's last dim must be in_features=192, got shape \(2, 100\)"):
        q(torch.randn(2, 100))
    with pytest.raises(TypeError, match="x must have dtype in .*got int64"):
        q(torch.ones(2, 192, dtype=torch.long))
    with pytest.raises(ValueError, match=r"hadamard_block must be a power of two dividing in_features=192, got 256"):
        QuantLinear.from_linear(lin, QuantConfig(hadamard_block=256))
    with pytest.raises(ValueError, match="act_stats has 64 channels but the layer has in_features=192"):
        QuantLinear.from_linear(lin, QuantConfig(), stats_from_tokens(torch.randn(8, 64)))
    with pytest.raises(TypeError, match="linear must be an nn.Linear, got Conv1d"):
        QuantLinear.from_linear(torch.nn.Conv1d(2, 2, 1), QuantConfig())
