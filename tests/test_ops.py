import pytest
import torch

from lrq_kernels import ops, quantize_weight
from lrq_kernels.formats.weight import dequantize_packed
from lrq_kernels.reference import gemm_a8_ref, gemm_a16_ref, quantize_tokens_ref, rotate_ref, unrotate_weight_ref


def _weight(n=48, k=128, bits=4, group=None):
    q = quantize_weight(torch.randn(n, k), bits, "int", group_size=group)
    return q.packed, q.scales, q.codebook


def test_opcheck_hadamard_transform():
    torch.library.opcheck(torch.ops.lrq.hadamard_transform.default, (torch.randn(3, 100, requires_grad=True), 0.5))


@pytest.mark.parametrize("a_format,a_bits", [("fp8", 8), ("int", 8), ("int", 4)])
def test_opcheck_rotate_quant(a_format, a_bits):
    x = torch.randn(7, 128)
    perm = torch.randperm(128)
    cs = torch.rand(128) + 0.5
    torch.library.opcheck(torch.ops.lrq.rotate_quant.default, (x, perm, cs, 64, a_format, a_bits))
    torch.library.opcheck(torch.ops.lrq.rotate_quant.default, (x, None, None, 1, a_format, a_bits))


@pytest.mark.parametrize("bits,group", [(4, 0), (3, 0), (4, 64)])
def test_opcheck_gemms(bits, group):
    packed, ws, cb = _weight(bits=bits, group=group or None)
    bias = torch.randn(48)
    for a_format in ("int", "fp8"):
        codes, sx = quantize_tokens_ref(torch.randn(5, 128), a_format, 8)
        # torch's schema checker multiplies its inputs, which CPU float8 does not support: skip that one for fp8
        utils = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic") \
            if a_format == "fp8" else None
        kw = {"test_utils": utils} if utils else {}
        torch.library.opcheck(torch.ops.lrq.gemm_a8.default, (codes, sx, packed, ws, cb, bits, 128, group, bias,
                                                             torch.bfloat16), **kw)
    torch.library.opcheck(torch.ops.lrq.gemm_a16.default, (torch.randn(5, 128), packed, ws, cb, bits, group, None))


def test_gemm_a8_matches_reference_on_awkward_m():
    packed, ws, cb = _weight(k=136, bits=3)   # K not a power of two, not a multiple of 8's packing pad
    w = dequantize_packed(packed, ws, cb, 3, 136, None)
    for m in (1, 7, 33):
        codes, sx = quantize_tokens_ref(torch.randn(m, 136), "int", 8)
        y = ops.gemm_a8(codes, sx, packed, ws, cb, 3, 136, 0, None, torch.float32)
        assert torch.allclose(y, gemm_a8_ref(codes, sx, w), rtol=1e-5, atol=1e-5)


def test_gemm_fake_checks_name_the_argument():
    packed, ws, cb = _weight()
    codes, sx = quantize_tokens_ref(torch.randn(5, 128), "fp8", 8)
    with pytest.raises(ValueError, match=r"w_scales must have shape \(48,\), got \(47,\)"):
        ops.gemm_a8(codes, sx, packed, ws[:47], cb, 4, 128, 0, None, torch.float32)
    with pytest.raises(ValueError, match="codebook must have 16 entries for bits=4, got 8"):
        ops.gemm_a8(codes, sx, packed, ws, cb[:8], 4, 128, 0, None, torch.float32)
    with pytest.raises(ValueError, match="x_codes has K=128 columns but the weight has K=120"):
        ops.gemm_a8(codes, sx, packed[:, :60], ws, cb, 4, 120, 0, None, torch.float32)
    with pytest.raises(TypeError, match="x_codes must have dtype in .*got float32"):
        ops.gemm_a8(codes.float(), sx, packed, ws, cb, 4, 128, 0, None, torch.float32)
    with pytest.raises(ValueError, match="out_dtype must be one of .*got torch.int32"):
        ops.gemm_a8(codes, sx, packed, ws, cb, 4, 128, 0, None, torch.int32)


def test_backend_env_is_validated(monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="LRQ_BACKEND must be one of .*got 'cudnn'"):
        ops.rotate_quant(torch.randn(2, 64), None, None, 64, "fp8", 8)


# --- the weight-only layer: dequantize_weight and quant_linear_a16 ----------------------------------------------

@pytest.mark.parametrize("perm,smooth", [(False, False), (True, False), (True, True)])
def test_unrotated_weight_times_x_is_rotated_x_times_weight(perm, smooth):
    # the identity the large-M weight-only path rests on: x @ unrotate(W)^T == rotate(x) @ W^T
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(9, 96, generator=g, dtype=torch.float64), torch.randn(40, 96, generator=g)
    p = torch.randperm(96, generator=g) if perm else None
    cs = torch.rand(96, generator=g) + 0.5 if smooth else None
    want = rotate_ref(x.float(), p, cs, 32).double() @ w.double().t()
    got = x @ unrotate_weight_ref(w, p, cs, 32).double().t()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,group", [(4, 0), (3, 0), (4, 64)])
def test_opcheck_weight_only_ops(bits, group):
    packed, ws, cb = _weight(bits=bits, group=group or None)
    perm, cs = torch.randperm(128).to(torch.int32), torch.rand(128) + 0.5
    torch.library.opcheck(torch.ops.lrq.dequantize_weight.default,
                          (packed, ws, cb, bits, 128, group, perm, cs, 64, torch.bfloat16))
    torch.library.opcheck(torch.ops.lrq.quant_linear_a16.default,
                          (torch.randn(5, 128), perm, cs, 64, packed, ws, cb, bits, group, torch.randn(48)))


def test_dequantize_weight_is_the_unrotated_dequantized_weight():
    packed, ws, cb = _weight(k=136, bits=3)
    w = dequantize_packed(packed, ws, cb, 3, 136, None)
    perm = torch.randperm(136)
    got = ops.dequantize_weight(packed, ws, cb, 3, 136, 0, perm, None, 8, torch.float32)
    assert torch.equal(got, unrotate_weight_ref(w, perm, None, 8))
    assert torch.equal(ops.dequantize_weight(packed, ws, cb, 3, 136, 0, None, None, 1, torch.bfloat16),
                       w.to(torch.bfloat16))
    with pytest.raises(ValueError, match="block must be a power of two dividing K=136, got 16"):
        ops.dequantize_weight(packed, ws, cb, 3, 136, 0, None, None, 16, torch.float32)
    with pytest.raises(ValueError, match="dtype must be one of .*got torch.int8"):
        ops.dequantize_weight(packed, ws, cb, 3, 136, 0, None, None, 8, torch.int8)
    with pytest.raises(ValueError, match="perm must have K=136 entries, got 135"):
        ops.dequantize_weight(packed, ws, cb, 3, 136, 0, perm[:135], None, 8, torch.float32)


@pytest.mark.parametrize("m", [1, 7, 300])
def test_quant_linear_a16_is_rotate_then_gemm_a16(m):
    packed, ws, cb = _weight(k=128, bits=4, group=64)
    x = torch.randn(m, 128)
    perm, cs, bias = torch.randperm(128), torch.rand(128) + 0.5, torch.randn(48)
    w = dequantize_packed(packed, ws, cb, 4, 128, 64)
    y = ops.quant_linear_a16(x, perm, cs, 32, packed, ws, cb, 4, 64, bias)
    assert torch.allclose(y, gemm_a16_ref(rotate_ref(x, perm, cs, 32), w, bias), rtol=1e-5, atol=1e-5)
    y1 = ops.quant_linear_a16(x, None, None, 1, packed, ws, cb, 4, 64, None)      # block 1: no rotation
    assert torch.allclose(y1, gemm_a16_ref(x, w), rtol=1e-5, atol=1e-5)


# --- the W·A8 weight path: the codes as an FP8 matrix ------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 3])
def test_decode_weight_e4m3_is_the_codebook_value_of_every_code(bits):
    packed, ws, cb = _weight(k=136, bits=bits)
    w8 = ops.decode_weight_e4m3(packed, cb, bits, 136)
    assert w8.dtype == torch.float8_e4m3fn and w8.shape == (48, 136)
    # times the channel scales it is the dequantized weight (the codebooks are e4m3-exact)
    assert torch.equal(w8.float() * ws[:, None], dequantize_packed(packed, ws, cb, bits, 136, None))
    torch.library.opcheck(torch.ops.lrq.decode_weight_e4m3.default, (packed, cb, bits, 136),
                          test_utils=("test_schema", "test_faketensor"))


def test_decode_weight_e4m3_refuses_bad_input_by_name():
    packed, _, cb = _weight(k=128, bits=4)
    with pytest.raises(ValueError, match="packed must have 64 bytes a row for K=128, bits=4; got shape"):
        ops.decode_weight_e4m3(packed[:, :60], cb, 4, 128)
    with pytest.raises(ValueError, match="codebook must have 16 entries for bits=4, got 8"):
        ops.decode_weight_e4m3(packed, cb[:8], 4, 128)
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        ops.decode_weight_e4m3(packed, cb, 4, 0)
    with pytest.raises(TypeError, match="codebook must have dtype in \\(float32\\), got float64"):
        ops.decode_weight_e4m3(packed, cb.double(), 4, 128)


def test_a8_weight_path_is_never_taken_off_the_gpu():
    from lrq_kernels.ops import get_tuning, plan
    p = plan("gemm_a8", torch.device("cpu"), m=10 * get_tuning().a8_dequant_min_m, k=3072, n=3072, bits=4, group=0,
             codes_dtype=torch.float8_e4m3fn, out_dtype=torch.bfloat16)
    assert p.path == "kernel" and p.backend == "reference"