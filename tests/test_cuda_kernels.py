"""The CUDA backend (lrq_kernels._C, csrc/). On CPU: the extension builds and imports where nvcc exists, refuses
bad launches with a message (and without a GPU says so), and the dispatcher never picks it. On a GPU: codes equal
to the reference's on every K of dit_shapes.json and the full Hadamard sizes, the GEMV within 1e-3 of a float64
oracle, the Hopper W4A8 GEMM within 1e-3 of one on awkward shapes, agreement with the Triton kernels, CUDA-graph
capture and torch.compile."""
import json
import os
import shutil

import pytest
import torch
from conftest import assert_compile_and_cuda_graph_match_eager, rel_err

from lrq_kernels import QuantConfig, QuantLinear, cuda as cuda_kernels, ops
from lrq_kernels.formats.codebooks import TLQGrid, nf_codebook, tlq_codebook
from lrq_kernels.formats.packing import pack_codes
from lrq_kernels.formats.weight import dequantize_packed
from lrq_kernels.reference import rotate_quantize_ref
from lrq_kernels.reference.act_quant import rotate_ref
from lrq_kernels.reference.gemm import decode_weight_e4m3_ref, unrotate_weight_ref
from lrq_kernels.rotation.rotation import default_block

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not (HAS_GPU and cuda_kernels.available()), reason="needs a CUDA GPU and lrq_kernels._C")
hopper = pytest.mark.skipif(not (HAS_GPU and cuda_kernels.available() and torch.cuda.get_device_capability() == (9, 0)),
                            reason="the CUDA W4A8 GEMM needs an sm_90 GPU and lrq_kernels._C")

with open(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "dit_shapes.json")) as f:
    SHAPES = json.load(f)["gemm"]
DIT_K = sorted({s["K"] for s in SHAPES})
DIT_KN = sorted({(s["K"], s["N"]) for s in SHAPES})


# --- CPU: build, import, refusals, dispatch ---------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvcc") is None or os.environ.get("LRQ_SKIP_CUDA_BUILD") == "1",
                    reason="the extension is built only where nvcc is found")
def test_extension_was_built_and_imports():
    assert cuda_kernels.available(), cuda_kernels.why_unavailable()
    from lrq_kernels import _C
    assert "sm_90a" in _C.CUDA_ARCHS


@pytest.mark.skipif(not cuda_kernels.available(), reason="lrq_kernels._C not built")
def test_extension_refuses_unsupported_shapes_with_a_message():
    from lrq_kernels import _C
    assert _C.rotate_quant_unsupported(1152, 128) == ""
    assert "multiple of 8" in _C.rotate_quant_unsupported(137, 1)
    assert "power of two dividing K=1152" in _C.rotate_quant_unsupported(1152, 256)
    assert _C.gemv_a16_unsupported(16, 3072, 4, 128) == ""
    assert "M must be <= 16, got M=17" in _C.gemv_a16_unsupported(17, 3072, 4, 0)
    assert "multiple of 128, got K=100" in _C.gemv_a16_unsupported(1, 100, 4, 0)
    assert "group_size must be 0" in _C.gemv_a16_unsupported(1, 3072, 3, 32)
    assert _C.unrotate_weight_unsupported(12288, 1024, 3, 128) == ""
    assert "multiple of 8, got K=100" in _C.unrotate_weight_unsupported(100, 4, 4, 0)
    assert "multiple of group_size=128" in _C.unrotate_weight_unsupported(1000, 8, 4, 128)
    assert "power of two <= 16384 dividing K=1152, got 256" in _C.unrotate_weight_unsupported(1152, 256, 4, 0)
    with pytest.raises(RuntimeError, match="row_bytes must be the packed row of K=128, got 63"):
        _C.unrotate_weight(16, 63, 4, 16, 0, 16, 0, 0, 8, 128, 128, 16, 0, 0, 0)   # refused before any device call
    with pytest.raises(RuntimeError, match="M must be <= 16, got M=17"):
        _C.gemv_a16(16, 0, 17, 3072, 8, 16, 4, 16, 0, 16, 0, 16, 0, 0)     # refused before touching a device
    assert _C.gemv_a16_rotate_unsupported(1, 4096, 1024) == ""
    assert "M = 1, got M=2" in _C.gemv_a16_rotate_unsupported(2, 1152, 128)
    assert "K <= 4096, got K=12288" in _C.gemv_a16_rotate_unsupported(1, 12288, 1024)
    assert "block <= 1024 dividing K=4096, got 4096" in _C.gemv_a16_rotate_unsupported(1, 4096, 4096)
    with pytest.raises(RuntimeError, match="M = 1, got M=2"):
        _C.gemv_a16(16, 0, 2, 3072, 8, 16, 4, 16, 0, 16, 0, 16, 0, 0, 0, 0, 1024)   # refused before any device call
    assert _C.gemm_a8_unsupported(333, 2432, 2432, 4, 0) == ""
    assert _C.gemm_a8_unsupported(333, 2432, 2432, 3, 0) == ""
    assert "3- or 4-bit codes, got bits=2" in _C.gemm_a8_unsupported(64, 3072, 3072, 2, 0)
    assert "per-channel scales, got group_size=64" in _C.gemm_a8_unsupported(64, 3072, 3072, 4, 64)
    assert "K % 128 == 0, got K=200" in _C.gemm_a8_unsupported(64, 200, 3072, 4, 0)
    assert "N % 8 == 0, got N=100" in _C.gemm_a8_unsupported(64, 3072, 100, 4, 0)
    with pytest.raises(RuntimeError, match="K % 128 == 0, got K=200"):
        _C.gemm_a8(16, 200, 16, 4, 200, 8, 16, 112, 4, 16, 0, 16, 0, 16, 0, 0, 0)   # refused before any device call
    assert _C.decode_weight_e4m3_unsupported(3072, 1152, 3) == ""
    assert "K % 64 == 0, got K=96" in _C.decode_weight_e4m3_unsupported(8, 96, 4)
    assert "3- or 4-bit codes, got bits=2" in _C.decode_weight_e4m3_unsupported(8, 128, 2)
    assert "N * K / 32 < 2^31" in _C.decode_weight_e4m3_unsupported(1 << 26, 2048, 4)
    with pytest.raises(RuntimeError, match="packed rows must be contiguous \\(64 bytes\\), got a stride of 80"):
        _C.decode_weight_e4m3(16, 80, 4, 16, 8, 128, 16, 0, 0)     # refused before any device call


@pytest.mark.skipif(HAS_GPU or not cuda_kernels.available(), reason="checks the no-GPU error")
def test_extension_launch_without_gpu_raises_not_crashes():
    from lrq_kernels import _C
    with pytest.raises(RuntimeError, match="cuda"):
        _C.rotate_quant(16, 1152, 0, 0, 0, 32, 1152, 48, 1, 1152, 128, 0, 448.0, 0, 0)


def test_dispatch_on_cpu_is_the_reference_and_forced_cuda_says_why(monkeypatch):
    from lrq_kernels.ops import plan
    cpu = torch.device("cpu")
    assert plan("gemm_a16", cpu, m=1, k=3072, bits=4, group=0, dtype=torch.bfloat16).backend == "reference"
    assert plan("rotate", cpu, k=3072, block=1024, dtype=torch.bfloat16).backend == "reference"
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="LRQ_BACKEND=cuda but rotate_quant cannot run"):
        ops.rotate_quant(torch.randn(2, 64), None, None, 64, "fp8", 8)
    a8 = dict(m=64, k=3072, n=3072, bits=4, group=0, codes_dtype=torch.float8_e4m3fn, out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="LRQ_BACKEND=cuda but gemm_a8 cannot run"):
        plan("gemm_a8", cpu, **a8)
    monkeypatch.delenv("LRQ_BACKEND")
    p = plan("gemm_a8", cpu, **(a8 | dict(m=4096)))
    assert p.backend == "reference" and [w.split(":")[0] for w in p.why_not] == ["cuda", "triton"]


@pytest.mark.skipif(not cuda_kernels.available(), reason="lrq_kernels._C not built")
def test_weight_only_forward_fuses_the_rotation_only_where_it_measured_faster(monkeypatch):
    """The fused-gemv path's rule, with every op's kernel pretended to be CUDA's: one kernel at M = 1, K <= 4096, for
    4-bit per-channel weights without a permutation (docs/tuning.md: fused-gemv); rotate + GEMV otherwise."""
    from lrq_kernels.ops import dispatch
    monkeypatch.setattr(dispatch, "_kernel", lambda op, device, want, order=None, **shape: dispatch.Plan(op, "cuda"))
    monkeypatch.setattr(cuda_kernels, "device_ok", lambda device: True)
    cpu = torch.device("cpu")

    def path(m=1, k=3072, block=1024, bits=4, group=0, permuted=False):
        return dispatch.plan("quant_linear_a16", cpu, m=m, k=k, n=3072, block=block, bits=bits, group=group,
                             dtype=torch.bfloat16, rotated=True, permuted=permuted).path

    assert path() == "fused-gemv"
    assert path(permuted=True) == "two-ops"           # ARS gather: 0.93-1.05x, not kept
    assert path(bits=3) == "two-ops"                  # 3-bit: 0.94-1.03x
    assert path(group=128) == "two-ops"               # group scales: not measured
    assert path(m=2) == "two-ops"
    assert path(k=12288) == "two-ops"
    assert path(k=4096, block=4096) == "two-ops"


def test_rotate_op_is_the_reference_rotation_in_x_dtype():
    torch.manual_seed(0)
    x = torch.randn(5, 96, dtype=torch.bfloat16)
    perm = torch.randperm(96)
    cs = torch.rand(96) + 0.5
    got = ops.rotate(x, perm, cs, 32)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, rotate_ref(x, perm, cs, 32).to(torch.bfloat16))


# --- GPU: rotate + quantize ---------------------------------------------------------------------------------------

def _frac_diff(a, b):
    a, b = a.float(), b.float()
    both_nan = torch.isnan(a) & torch.isnan(b)
    return ((a != b) & ~both_nan).float().mean().item()


ROT_CASES = ([(k, default_block(k)) for k in DIT_K] + [(k, 128) for k in (1152, 3072)] +
             [(k, k) for k in (256, 1024, 2048, 4096, 8192, 16384)] + [(k, 8) for k in (40, 1000)])


@gpu
@pytest.mark.parametrize("m", [1, 7, 333])
@pytest.mark.parametrize("k,block", ROT_CASES, ids=str)
def test_cuda_rotate_quant_codes_equal_reference(k, block, m, monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    torch.manual_seed(k + m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x[:, 3] *= 50                                                    # an outlier channel
    for a_format, a_bits in (("fp8", 8), ("int", 8), ("int", 4)):
        codes, scales = ops.rotate_quant(x, None, None, block, a_format, a_bits)
        rc, rs = rotate_quantize_ref(x, None, None, block, a_format, a_bits)
        assert codes.dtype == rc.dtype and _frac_diff(codes, rc) <= 1e-4, (a_format, a_bits)
        assert torch.equal(scales, rs)


@gpu
@pytest.mark.parametrize("m", [1, 77, 333])       # 333: more token groups than CTAs for the larger K (ring wraps)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("k,block", [(1152, 128), (4608, 512), (3072, 1024), (4096, 4096), (12288, 1024),
                                     (13824, 512), (15360, 1024), (16384, 16384), (40, 8), (1000, 8)], ids=str)
def test_cuda_rotate_quant_ars_gather_and_dtypes(k, block, dtype, m, monkeypatch):
    """K = 40 and 1000 end in a chunk shorter than 128 columns (the scale table's tail, cuda.scale_lanes)."""
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    torch.manual_seed(1)
    x = torch.randn(m, k, device="cuda", dtype=dtype) * 3
    cs = torch.rand(k, device="cuda") + 0.5
    # int64 and int32 permutations, and one that starts 8 bytes into its storage (the kernel loads perm in
    # 16-byte pieces: the wrapper must hand it an aligned copy)
    offset = torch.cat([torch.zeros(1, dtype=torch.int64, device="cuda"), torch.randperm(k, device="cuda")])[1:]
    for perm in (torch.randperm(k, device="cuda"), torch.randperm(k, device="cuda").to(torch.int32), offset, None):
        codes, scales = ops.rotate_quant(x, perm, cs, block, "fp8", 8)
        rc, rs = rotate_quantize_ref(x, perm, cs, block, "fp8", 8)
        assert _frac_diff(codes, rc) <= 1e-4 and torch.equal(scales, rs)
    perm = torch.randperm(k, device="cuda")
    got = ops.rotate(x, perm, cs, block)
    assert got.dtype == dtype and torch.equal(got, rotate_ref(x, perm, cs, block).to(dtype))


@gpu
def test_cuda_rotate_quant_nan_and_zero_tokens(monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    x = torch.randn(6, 1152, device="cuda", dtype=torch.bfloat16)
    x[1] = 0
    x[4, 17] = float("nan")
    for a_format, a_bits in (("fp8", 8), ("int", 8)):
        codes, scales = ops.rotate_quant(x, None, None, 128, a_format, a_bits)
        assert scales[1] == 0 and (codes[1].float() == 0).all()
        assert torch.isnan(scales[4]) and not torch.isnan(scales[[0, 2, 3, 5]]).any()
        rc, rs = rotate_quantize_ref(x, None, None, 128, a_format, a_bits)
        assert _frac_diff(codes, rc) == 0


# (K, block) of the transposed path: blocks of 1024; blocks of 512 and 128 whose warps' 1024 values straddle two
# tokens (K = 1152, 1536, 2432, 2560, 4608, 13824; blocks of 128 run without the transpose, csrc/rotate_quant.cu
# four_lane_group). At M = 999 K = 1152 and 1024 take 4 tokens a CTA (a last group of 3), 2432, 1536, 2560 and
# 4608 2 (a last group of 1); at M = 333 K = 1152 takes 2; at M = 1 and 5, 1 (the plan keeps a CTA for every SM).
TRANSPOSED_CASES = [(1024, 1024), (2048, 1024), (3072, 1024), (5120, 1024), (12288, 1024), (15360, 1024),
                    (1536, 512), (2560, 512), (4608, 512), (13824, 512), (2048, 512), (1152, 128), (2432, 128),
                    (1024, 128)]


@gpu
@pytest.mark.parametrize("m", [1, 5, 333, 999])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("k,block", TRANSPOSED_CASES, ids=str)
def test_cuda_rotate_quant_transposed_path_equals_the_strided_one(k, block, dtype, m):
    """Blocks of 128, 512 and 1024 with codes out, K >= 1024 and no gather take the transposed path
    (csrc/rotate_quant.cu, TR); a channel scale of ones sends the same values down the strided path. The codes and
    scales of the two are identical, and the reference's."""
    g = torch.Generator(device="cuda").manual_seed(k + m + block)
    x = (torch.randn(m, k, device="cuda", generator=g) * 3).to(dtype)
    x[:, 5] *= 40                                                    # an outlier channel
    x[m // 2, k - 100] = 500                                         # a token's max late in its row
    ones = torch.ones(k, device="cuda")
    for a_format, a_bits in (("fp8", 8), ("int", 8), ("int", 4)):
        codes, scales = cuda_kernels.rotate_quant_cuda(x, None, None, block, a_format, a_bits)
        strided, strided_scales = cuda_kernels.rotate_quant_cuda(x, None, ones, block, a_format, a_bits)
        assert torch.equal(codes.view(torch.uint8), strided.view(torch.uint8)), (a_format, a_bits)
        assert torch.equal(scales, strided_scales)
        rc, rs = rotate_quantize_ref(x, None, None, block, a_format, a_bits)
        assert _frac_diff(codes, rc) <= 1e-4 and torch.equal(scales, rs)
    codes_g, _ = cuda_kernels.rotate_quant_cuda(x, None, None, block, "fp8", 8, gemm_order=True)
    codes, _ = cuda_kernels.rotate_quant_cuda(x, None, None, block, "fp8", 8)
    assert torch.equal(cuda_kernels.gemm_order(codes).view(torch.uint8), codes_g.view(torch.uint8))


@gpu
@pytest.mark.parametrize("m,k,block", [(7, 3072, 1024), (1000, 1536, 512), (1000, 4608, 512), (999, 1152, 128)],
                         ids=str)
def test_cuda_rotate_quant_transposed_path_nan_and_zero_tokens(m, k, block):
    """A zero token and a NaN token; at K = 1152, 1536 and 4608 their rows share warps with their neighbours'."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    zero, nan = 2, m - 2
    x[zero] = 0
    x[nan, k - 3] = float("nan")
    codes, scales = cuda_kernels.rotate_quant_cuda(x, None, None, block, "fp8", 8)
    assert scales[zero] == 0 and (codes[zero].float() == 0).all()
    others = [i for i in range(m) if i != nan]
    assert torch.isnan(scales[nan]) and not torch.isnan(scales[others]).any()
    rc, rs = rotate_quantize_ref(x, None, None, block, "fp8", 8)
    assert _frac_diff(codes, rc) <= 1e-4 and torch.isnan(rs[nan]) and torch.equal(scales[others], rs[others])


@gpu
@pytest.mark.parametrize("m", [1, 600], ids=str)
def test_cuda_rotate_quant_blocks_of_128_zeros(m):
    """Blocks of 128 (csrc/rotate_quant.cu, four_lane_group) carry signs across their lane stages and give an exact
    zero as +0. Small integers cancel to exact zeros all through the butterflies; a zero token, a token of -0 and a
    block of -0 give zeros. Codes are the reference's as bytes except where its rotated value is -0 (which only a
    block of signed-zero inputs gives), and there they are +0."""
    g = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randint(-2, 3, (m, 1152), device="cuda", generator=g).to(torch.bfloat16)
    x[m // 3] = 0
    x[m // 2] = -0.0
    x[m - 1, 256:384] = -0.0
    rot = rotate_ref(x, None, None, 128)
    neg_zero = (rot == 0) & torch.signbit(rot)
    assert m == 1 or neg_zero.any()
    for a_format in ("fp8", "int"):
        codes, scales = cuda_kernels.rotate_quant_cuda(x, None, None, 128, a_format, 8)
        rc, rs = rotate_quantize_ref(x, None, None, 128, a_format, 8)
        got, want = codes.view(torch.uint8), rc.view(torch.uint8)
        assert torch.equal(scales, rs)
        assert torch.equal(got[~neg_zero], want[~neg_zero]) and (got[neg_zero] == 0).all(), a_format


@gpu
def test_cuda_rotate_quant_strided_rows(monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    base = torch.randn(9, 2 * 1152, device="cuda", dtype=torch.bfloat16)
    x = base[:, :1152]                                                # row stride 2304: a view, not contiguous
    codes, scales = ops.rotate_quant(x, None, None, 128, "fp8", 8)
    rc, rs = rotate_quantize_ref(x, None, None, 128, "fp8", 8)
    assert _frac_diff(codes, rc) == 0 and torch.equal(scales, rs)


# --- GPU: small-M GEMV --------------------------------------------------------------------------------------------

def _weights(n, k, bits, group, codebook="tlq"):
    codes = torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8)
    cb = (tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)) if codebook == "tlq" else nf_codebook(bits)).cuda()
    shape = (n, k // group) if group else (n,)
    sw = torch.rand(shape, device="cuda") * 0.01 + 1e-3
    return pack_codes(codes, bits), sw, cb


def _oracle(x, packed, sw, cb, bits, k, group, bias):
    w = dequantize_packed(packed, sw, cb, bits, k, group or None)
    y = x.double() @ w.double().t()
    return y + bias.double() if bias is not None else y


@gpu
@pytest.mark.parametrize("m", [1, 2, 7, 8, 9, 16])
@pytest.mark.parametrize("k,n", DIT_KN, ids=str)
def test_cuda_gemv_dit_shapes(k, n, m, monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    torch.manual_seed(m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    for bits in (4, 3):
        packed, sw, cb = _weights(n, k, bits, 0)
        y = ops.gemm_a16(x, packed, sw, cb, bits, 0, None)
        assert y.dtype == torch.bfloat16
        # the kernel's fp32 sums round once to bf16: compare in float32 against the float64 sum
        assert rel_err(y.float(), _oracle(x, packed, sw, cb, bits, k, 0, None)) <= 4e-3


@gpu
@pytest.mark.parametrize("group", [0, 64, 128])
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,k,n", [(1, 1152, 1152), (5, 3072, 1000), (16, 2432, 2432), (3, 128, 24)], ids=str)
def test_cuda_gemv_groups_bits_dtypes_bias(m, k, n, dtype, bits, group, monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    torch.manual_seed(k + n)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    packed, sw, cb = _weights(n, k, bits, group, "nf")
    bias = torch.randn(n, device="cuda", dtype=dtype)
    got = ops.gemm_a16(x, packed, sw, cb, bits, group, bias)
    assert got.dtype == dtype
    # bf16 output rounding alone is up to 2^-9 relative per element; the float32 sums are checked to 1e-3 below
    assert rel_err(got.float(), _oracle(x, packed, sw, cb, bits, k, group, bias)) <= 4e-3


@gpu
@pytest.mark.parametrize("ars", [False, True], ids=["hadamard", "ars"])
@pytest.mark.parametrize("k,block,bits,group,dtype", [
    (3072, 1024, 4, 0, torch.bfloat16), (3072, 1024, 3, 0, torch.float16), (4096, 1024, 4, 128, torch.bfloat16),
    (4096, 256, 3, 64, torch.bfloat16), (1152, 128, 4, 0, torch.float16), (2432, 128, 3, 128, torch.bfloat16),
    (2048, 512, 4, 64, torch.float16), (128, 1, 4, 0, torch.bfloat16), (256, 8, 3, 0, torch.float16)], ids=str)
def test_cuda_gemv_fused_rotation_equals_rotate_then_gemv(k, block, bits, group, dtype, ars):
    """The GEMV that rotates x itself gives the bits of ops.rotate's CUDA kernel followed by the plain GEMV (same
    rotated values, same sums), and stays within the float64 oracle's bound on the reference rotation."""
    torch.manual_seed(k + bits)
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    x[0, :: max(1, k // 7)] *= 40.0                                   # outlier channels, as ARS sees them
    perm = torch.randperm(k, device="cuda") if ars else None
    cs = (torch.rand(k, device="cuda") + 0.5) if ars else None
    packed, sw, cb = _weights(333, k, bits, group)
    bias = torch.randn(333, device="cuda", dtype=dtype)
    assert cuda_kernels.why_not("gemv_a16_rotate", torch.device("cuda"), m=1, k=k, block=block) == ""
    fused = cuda_kernels.gemv_a16_cuda(x, packed, sw, cb, bits, group, bias, perm, cs, block)
    xr = cuda_kernels.rotate_quant_cuda(x, perm, cs, block, None, 16)[0]
    assert torch.equal(fused, cuda_kernels.gemv_a16_cuda(xr, packed, sw, cb, bits, group, bias))
    xr_ref = rotate_ref(x.cpu(), None if perm is None else perm.cpu(), None if cs is None else cs.cpu(), block)
    want = _oracle(xr_ref.to(dtype).cuda(), packed, sw, cb, bits, k, group, bias)
    assert rel_err(fused.float(), want) <= 4e-3


@gpu
def test_quant_linear_a16_fuses_the_rotation_where_it_measured_faster_and_nan_stays_in_its_token(monkeypatch):
    """Fused at M = 1 with 4-bit per-channel weights and no permutation (the fused-gemv plan); two kernels at
    M = 2, with a permutation, with 3-bit codes. Either way the same bits, and a NaN stays in its token's row."""
    torch.manual_seed(0)
    k, n = 3072, 512
    weights = {bits: _weights(n, k, bits, 0) for bits in (4, 3)}
    perm, cs = torch.randperm(k, device="cuda"), torch.rand(k, device="cuda") + 0.5
    rotations = _spy(monkeypatch, "rotate_quant_cuda")
    for m, bits, p, fused in ((1, 4, None, True), (2, 4, None, False), (1, 4, perm, False), (1, 3, None, False)):
        packed, sw, cb = weights[bits]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        x[-1, 7] = float("nan")
        before = len(rotations)
        y = ops.quant_linear_a16(x, p, cs, 1024, packed, sw, cb, bits, 0, None)
        assert (len(rotations) == before) == fused, (m, bits, p is not None)
        assert torch.isnan(y[-1]).all() and not torch.isnan(y[:-1]).any()
        want = ops.gemm_a16(ops.rotate(x, p, cs, 1024), packed, sw, cb, bits, 0, None)
        torch.testing.assert_close(y, want, rtol=0, atol=0, equal_nan=True)


@gpu
def test_cuda_gemv_fp32_accuracy_within_1e3(monkeypatch):
    """The acceptance bound (1e-3) on the FLUX shapes, with fp16 output: its rounding (2^-11 relative) leaves
    room to see the kernel's own float32 error, which bf16's (2^-9) would hide."""
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    torch.manual_seed(3)
    for k, n in ((3072, 12288), (12288, 3072), (15360, 3072)):
        x = torch.randn(4, k, device="cuda", dtype=torch.float16)
        packed, sw, cb = _weights(n, k, 4, 0)
        y = ops.gemm_a16(x, packed, sw, cb, 4, 0, None)
        assert rel_err(y.float(), _oracle(x, packed, sw, cb, 4, k, 0, None)) <= 1e-3


@gpu
def test_cuda_and_triton_gemv_agree(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(16, 3072, device="cuda", dtype=torch.bfloat16)
    packed, sw, cb = _weights(3072, 3072, 4, 128)
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    a = ops.gemm_a16(x, packed, sw, cb, 4, 128, None).float()
    monkeypatch.setenv("LRQ_BACKEND", "triton")
    b = ops.gemm_a16(x, packed, sw, cb, 4, 128, None).float()
    assert rel_err(a, b) <= 4e-3


@gpu
def test_cuda_and_triton_rotate_quant_agree(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(333, 4608, device="cuda", dtype=torch.bfloat16)
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    a = ops.rotate_quant(x, None, None, 512, "fp8", 8)
    monkeypatch.setenv("LRQ_BACKEND", "triton")
    b = ops.rotate_quant(x, None, None, 512, "fp8", 8)
    assert _frac_diff(a[0], b[0]) <= 1e-4 and torch.equal(a[1], b[1])


def _fp8_tokens(m, k, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(m, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    return x, torch.rand(m, device="cuda", generator=g) * 0.01 + 1e-3


def _a8_oracle(x, sx, packed, sw, cb, k, bias, bits=4):
    y = _oracle(x, packed, sw, cb, bits, k, 0, None) * sx.double()[:, None]
    return y + bias.double() if bias is not None else y


@hopper
@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,k,n", [(1, 128, 8), (7, 256, 136), (129, 384, 200), (333, 2432, 2432),
                                   (1000, 1152, 4608), (77, 12288, 3072), (4608, 3072, 12288)], ids=str)
def test_cuda_gemm_a8_matches_oracle(m, k, n, dtype, bits, monkeypatch):
    """The Hopper W4A8/W3A8 GEMM on awkward shapes (M = 1, odd M, N not a multiple of the 128-row tile,
    K = 2432): float32 output within the 1e-3 bound of a float64 oracle; 16-bit outputs add their own rounding."""
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    x, sx = _fp8_tokens(m, k, m + k)
    packed, sw, cb = _weights(n, k, bits, 0, "nf" if m % 2 else "tlq")
    bias = None if m == 7 else torch.randn(n, device="cuda")
    y = ops.gemm_a8(x, sx, packed, sw, cb, bits, k, 0, bias, dtype)
    assert y.dtype == dtype and y.shape == (m, n)
    assert rel_err(y.double(), _a8_oracle(x, sx, packed, sw, cb, k, bias, bits)) <= (
        1e-3 if dtype == torch.float32 else 5e-3)


@hopper
@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,k,n", [(1, 128, 8), (7, 256, 136), (129, 3072, 200), (333, 2432, 2432),
                                   (300, 1152, 4608), (4608, 3072, 12288)], ids=str)
def test_cuda_gemm_a8_tma_kernel_on_gemm_order_codes_matches_oracle(m, k, n, dtype, bits):
    """The TMA kernel reads codes permuted by gemm_order(); the product is the natural-order one."""
    x, sx = _fp8_tokens(m, k, m + k)
    packed, sw, cb = _weights(n, k, bits, 0)
    bias = torch.randn(n, device="cuda")
    xg = cuda_kernels.gemm_order(x)
    y = cuda_kernels.gemm_a8_cuda(xg, sx, packed, sw, cb, bits, k, 0, bias, dtype, x_gemm_order=True)
    assert rel_err(y.double(), _a8_oracle(x, sx, packed, sw, cb, k, bias, bits)) <= (
        1e-3 if dtype == torch.float32 else 5e-3)


def test_gemm_order_is_the_documented_permutation():
    k = 256
    codes = torch.arange(k, dtype=torch.int32).repeat(3, 1)
    g = cuda_kernels.gemm_order(codes)
    for kk in range(k):
        q, j, h, e = (kk % 128) // 32, (kk % 32) // 8, (kk % 8) // 4, kk % 4
        assert g[1, (kk // 128) * 128 + 32 * j + 16 * h + 4 * q + e] == kk


@pytest.mark.parametrize("k", [8, 24, 128, 200, 1152, 3072])
def test_scale_lanes_is_the_layout_the_kernel_reads(k):
    """csrc/rotate_quant.cu (load_scales8) reads the scales of columns c .. c + 7 as two 16-byte loads, at
    c0 + (c % 128) / 2 and half a chunk further (c0 = c rounded down to 128, the chunk min(128, K - c0) long)."""
    cs = torch.arange(k, dtype=torch.float32)
    lanes = cuda_kernels.scale_lanes(cs)
    assert torch.equal(lanes.sort().values, cs)
    for c in range(0, k, 8):
        c0 = c - c % 128
        p, half = c0 + (c % 128) // 2, min(128, k - c0) // 2
        assert torch.equal(lanes[p:p + 4], cs[c:c + 4]) and torch.equal(lanes[p + half:p + half + 4], cs[c + 4:c + 8])


def test_gather_tables_are_made_once_and_follow_in_place_writes():
    k = 1152
    perm, cs = torch.randperm(k).to(torch.int32), torch.rand(k) + 0.5
    perm16, lanes = cuda_kernels.gather_tables(perm, cs)
    assert perm16.dtype == torch.int16 and torch.equal(perm16.long(), perm.long())
    assert torch.equal(lanes, cuda_kernels.scale_lanes(cs))
    again = cuda_kernels.gather_tables(perm, cs)
    assert again[0] is perm16 and again[1] is lanes                  # cached on perm
    perm.copy_(torch.randperm(k))                                     # a load_state_dict writes buffers in place
    assert torch.equal(cuda_kernels.gather_tables(perm, cs)[0].long(), perm.long())
    cs2 = torch.rand(k) + 0.5                                         # another scale tensor with the same perm
    assert torch.equal(cuda_kernels.gather_tables(perm, cs2)[1], cuda_kernels.scale_lanes(cs2))
    cs2.mul_(2)
    assert torch.equal(cuda_kernels.gather_tables(perm, cs2)[1], cuda_kernels.scale_lanes(cs2))
    assert cuda_kernels.gather_tables(None, cs)[0] is None
    assert cuda_kernels.gather_tables(None, None) == (None, None)
    for bad in (torch.arange(k) + 1, torch.zeros(k, dtype=torch.int64)):   # past K; repeated indices
        with pytest.raises(ValueError, match="perm must be a permutation of 0..1151"):
            cuda_kernels.gather_tables(bad, cs)
    with torch.inference_mode():                                      # no version counter: made, not cached
        p_inf, c_inf = torch.randperm(k), torch.rand(k)
        t = cuda_kernels.gather_tables(p_inf, c_inf)
    assert torch.equal(t[0].long(), p_inf) and torch.equal(t[1], cuda_kernels.scale_lanes(c_inf))


def test_unrotate_perm_is_checked_once_and_follows_in_place_writes():
    """dequantize_weight's permutation (written as W[:, perm[j]] by the kernel): int32, cached, checked on a miss."""
    k = 1000
    perm = torch.randperm(k)                                          # int64, as torch.randperm gives it
    p32 = cuda_kernels.unrotate_perm(perm)
    assert p32.dtype == torch.int32 and torch.equal(p32.long(), perm)
    assert cuda_kernels.unrotate_perm(perm) is p32                    # cached on perm
    perm.copy_(torch.randperm(k))                                     # written in place: made again
    assert torch.equal(cuda_kernels.unrotate_perm(perm).long(), perm)
    assert cuda_kernels.unrotate_perm(None) is None
    for bad in (torch.arange(k) - 1, torch.ones(k, dtype=torch.int32)):   # below 0; repeated indices
        with pytest.raises(ValueError, match="perm must be a permutation of 0..999"):
            cuda_kernels.unrotate_perm(bad)


@gpu
@pytest.mark.parametrize("m,k,block,ars", [(1, 128, 128, False), (333, 1152, 128, True), (77, 3072, 1024, False),
                                           (40, 12288, 1024, True)], ids=str)
def test_cuda_rotate_quant_writes_gemm_order(m, k, block, ars):
    """gemm_order=True stores the very codes of the natural-order call, permuted as cuda.gemm_order permutes."""
    g = torch.Generator(device="cuda").manual_seed(m + k)
    x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
    perm = torch.randperm(k, device="cuda", generator=g).to(torch.int32) if ars else None
    cs = torch.rand(k, device="cuda", generator=g) + 0.5 if ars else None
    codes, scales = cuda_kernels.rotate_quant_cuda(x, perm, cs, block, "fp8", 8)
    codes_g, scales_g = cuda_kernels.rotate_quant_cuda(x, perm, cs, block, "fp8", 8, gemm_order=True)
    assert torch.equal(cuda_kernels.gemm_order(codes).view(torch.uint8), codes_g.view(torch.uint8))
    assert torch.equal(scales, scales_g)
    with pytest.raises(RuntimeError, match="GEMM order need FP8 or INT codes and K % 128 == 0, got K=136"):
        cuda_kernels.rotate_quant_cuda(torch.randn(m, 136, device="cuda").to(torch.bfloat16), None, None, 8, "fp8", 8,
                                       gemm_order=True)


@hopper
@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("m", [1, 130, 600], ids=str)
def test_quant_linear_a8_fused_cuda_path_matches_the_two_ops(m, bits, monkeypatch):
    """ops.quant_linear_a8 on CUDA (codes in GEMM order, the TMA kernel from M = 64) against rotate_quant then
    gemm_a8 run apart, and against the reference backend."""
    g = torch.Generator(device="cuda").manual_seed(m)
    k, n = 1152, 392
    x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
    perm = torch.randperm(k, device="cuda", generator=g).to(torch.int32)
    cs = torch.rand(k, device="cuda", generator=g) + 0.5
    packed, sw, cb = _weights(n, k, bits, 0)
    bias = torch.randn(n, device="cuda", generator=g)
    y = ops.quant_linear_a8(x, perm, cs, 128, "fp8", 8, packed, sw, cb, bits, 0, bias, torch.float32)
    codes, scales = ops.rotate_quant(x, perm, cs, 128, "fp8", 8)
    two = ops.gemm_a8(codes, scales, packed, sw, cb, bits, k, 0, bias, torch.float32)
    assert rel_err(y.double(), two.double()) <= 1e-4
    monkeypatch.setenv("LRQ_BACKEND", "reference")
    ref = ops.quant_linear_a8(x, perm, cs, 128, "fp8", 8, packed, sw, cb, bits, 0, bias, torch.float32)
    assert rel_err(y.double(), ref.double()) <= 1e-3


@hopper
def test_cuda_gemm_a8_nan_token_stays_in_its_row(monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    x, sx = _fp8_tokens(20, 256, 0)
    x[3, 17] = float("nan")
    packed, sw, cb = _weights(64, 256, 4, 0)
    y = ops.gemm_a8(x, sx, packed, sw, cb, 4, 256, 0, None, torch.float32)
    assert torch.isnan(y[3]).all() and torch.isfinite(y[torch.arange(20, device="cuda") != 3]).all()


@hopper
def test_cuda_and_triton_gemm_a8_agree_and_cuda_runs_when_forced(monkeypatch):
    from lrq_kernels.ops import plan
    x, sx = _fp8_tokens(256, 3072, 1)
    packed, sw, cb = _weights(3072, 3072, 4, 0)
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    a = ops.gemm_a8(x, sx, packed, sw, cb, 4, 3072, 0, None, torch.float32)
    monkeypatch.setenv("LRQ_BACKEND", "triton")
    b = ops.gemm_a8(x, sx, packed, sw, cb, 4, 3072, 0, None, torch.float32)
    assert rel_err(a, b) <= 1e-3
    monkeypatch.delenv("LRQ_BACKEND")
    shape = dict(k=3072, n=3072, bits=4, group=0, codes_dtype=torch.float8_e4m3fn, out_dtype=torch.float32)
    dev = torch.device("cuda")

    def backend(**kw):
        return plan("gemm_a8", dev, **(shape | kw)).backend

    assert backend(m=256) == "cuda"                 # from Tuning.cuda_gemm_a8_min_m tokens
    assert backend(m=128) == "triton"
    assert backend(m=1, tma=True) == "cuda"         # codes in GEMM order (quant_linear_a8)
    assert backend(m=256, bits=3) == "cuda"         # 3-bit codes too
    assert backend(m=256, group=128) == "triton"    # per-channel scales only
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    assert backend(m=64) == "cuda"
    with pytest.raises(RuntimeError, match="per-channel scales, got group_size=128"):
        backend(m=64, group=128)


@hopper
def test_w4a8_quantlinear_on_cuda_gemm_graph_and_compile(monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(1152, 1152).cuda(), QuantConfig(w_bits=4, a_format="fp8"))
    assert_compile_and_cuda_graph_match_eager(q, torch.randn(2, 40, 1152, device="cuda", dtype=torch.bfloat16))


# --- GPU: the W·A8 layer at large M (decode_weight_e4m3, then cuBLAS's FP8 GEMM) --------------------------------

@gpu
@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("n,k", [(1, 64), (7, 1152), (333, 2432), (40, 15360), (3072, 3072), (5, 192)], ids=str)
def test_cuda_decode_weight_e4m3_equals_reference(n, k, bits, monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    packed, sw, cb = _weights(n, k, bits, 0, "nf" if n % 2 else "tlq")
    got = ops.decode_weight_e4m3(packed, cb, bits, k)
    assert got.dtype == torch.float8_e4m3fn and got.shape == (n, k)
    assert torch.equal(got.view(torch.uint8), decode_weight_e4m3_ref(packed, cb, bits, k).view(torch.uint8))


def _set_tuning(monkeypatch, **changes):
    """The process-wide tuning policy with these changes for the rest of the test."""
    from dataclasses import replace
    from lrq_kernels.ops import policy
    monkeypatch.setattr(policy, "_DEFAULT", replace(policy.get_tuning(), **changes))


def _spy(monkeypatch, name):
    calls, real = [], getattr(cuda_kernels, name)
    monkeypatch.setattr(cuda_kernels, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.mark.skipif(not (HAS_GPU and cuda_kernels.available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="FP8 GEMMs need a GPU of compute capability >= 8.9 and lrq_kernels._C")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("m,k,n", [(1, 128, 16), (7, 1152, 4608), (333, 2432, 2432), (1030, 12288, 3072),
                                   (4608, 3072, 12288)], ids=str)
def test_gemm_a8_weight_path_matches_oracle(m, k, n, bits, dtype, monkeypatch):
    """From Tuning.a8_dequant_min_m tokens (here lowered to 1, so that awkward M run it too) gemm_a8 with bf16 or fp16
    output decodes the weight to FP8 and runs torch._scaled_mm: within the 16-bit bound of the float64 oracle; fp32
    output keeps our GEMM."""
    _set_tuning(monkeypatch, a8_dequant_min_m=1)
    decoded = _spy(monkeypatch, "decode_weight_e4m3_cuda")
    x, sx = _fp8_tokens(m, k, m + k)
    packed, sw, cb = _weights(n, k, bits, 0)
    bias = None if m == 7 else torch.randn(n, device="cuda")
    y = ops.gemm_a8(x, sx, packed, sw, cb, bits, k, 0, bias, dtype)
    assert decoded and y.dtype == dtype and y.shape == (m, n)
    # the bias is rounded to the output dtype before cuBLAS adds it (bf16: 2^-9 of it), the output too
    assert rel_err(y.double(), _a8_oracle(x, sx, packed, sw, cb, k, bias, bits)) <= 5e-3
    decoded.clear()
    y32 = ops.gemm_a8(x, sx, packed, sw, cb, bits, k, 0, bias, torch.float32)
    assert not decoded and rel_err(y.double(), y32.double()) <= 5e-3


@pytest.mark.skipif(not (HAS_GPU and cuda_kernels.available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="FP8 GEMMs need a GPU of compute capability >= 8.9 and lrq_kernels._C")
def test_a8_weight_path_fast_accum_is_opt_in(monkeypatch):
    """Tuning.a8_fast_accum (off by default) asks cuBLAS for fast accumulation; both stay within the 16-bit output
    bound of the float64 oracle at K = 12288 (the fast one's error grows with K: results/fast_accum.md)."""
    _set_tuning(monkeypatch, a8_dequant_min_m=1)
    asked, real = [], torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **kw: asked.append(kw.get("use_fast_accum")) or real(*a, **kw))
    m, k, n = 333, 12288, 256
    x, sx = _fp8_tokens(m, k, 3)
    packed, sw, cb = _weights(n, k, 4, 0)
    want = _a8_oracle(x, sx, packed, sw, cb, k, None, 4)
    y = ops.gemm_a8(x, sx, packed, sw, cb, 4, k, 0, None, torch.bfloat16)
    _set_tuning(monkeypatch, a8_fast_accum=True)
    y_fast = ops.gemm_a8(x, sx, packed, sw, cb, 4, k, 0, None, torch.bfloat16)
    assert asked == [False, True]
    assert rel_err(y.double(), want) <= 5e-3 and rel_err(y_fast.double(), want) <= 5e-3


@pytest.mark.skipif(not (HAS_GPU and cuda_kernels.available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="FP8 GEMMs need a GPU of compute capability >= 8.9 and lrq_kernels._C")
def test_a8_weight_path_nan_token_stays_in_its_row_and_quantlinear_takes_it(monkeypatch):
    decoded = _spy(monkeypatch, "decode_weight_e4m3_cuda")
    m = ops.get_tuning().a8_dequant_min_m + 3
    x, sx = _fp8_tokens(m, 256, 0)
    x[3, 17] = float("nan")
    packed, sw, cb = _weights(64, 256, 4, 0)
    y = ops.gemm_a8(x, sx, packed, sw, cb, 4, 256, 0, None, torch.bfloat16)
    assert decoded
    assert torch.isnan(y[3]).all() and torch.isfinite(y[torch.arange(m, device="cuda") != 3]).all()
    # QuantLinear's W4A8 forward (quant_linear_a8) takes the same path at this M, and matches the reference backend
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(1152, 1152).cuda(), QuantConfig(w_bits=4, a_format="fp8"))
    xb = torch.randn(m, 1152, device="cuda", dtype=torch.bfloat16)
    decoded.clear()
    y = q(xb)
    assert decoded
    monkeypatch.setenv("LRQ_BACKEND", "reference")
    assert rel_err(y.double(), q(xb).double()) <= 5e-3


@pytest.mark.skipif(not (HAS_GPU and cuda_kernels.available() and torch.cuda.get_device_capability() >= (8, 9)),
                    reason="FP8 GEMMs need a GPU of compute capability >= 8.9 and lrq_kernels._C")
def test_w4a8_quantlinear_weight_path_graph_and_compile(monkeypatch):
    _set_tuning(monkeypatch, a8_dequant_min_m=64)
    decoded = _spy(monkeypatch, "decode_weight_e4m3_cuda")
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(1152, 1152).cuda(), QuantConfig(w_bits=3, a_format="fp8"))
    assert_compile_and_cuda_graph_match_eager(q, torch.randn(2, 40, 1152, device="cuda", dtype=torch.bfloat16))
    assert decoded


# --- GPU: the weight-only layer at large M (dequantize_weight, then cuBLAS) -------------------------------------

# Blocks of 1024 without the permutation take the transposed kernel (4 and 2 rows a CTA at K = 1024 and 2048;
# 300 rows of K = 12288 outnumber its persistent CTAs).
UNROTATE_CASES = [(1, 1152, 128), (7, 4608, 512), (33, 3072, 1024), (5, 12288, 1024), (3, 4096, 4096),
                  (2, 16384, 16384), (9, 2432, 128), (4, 40, 8), (300, 256, 256), (6, 1024, 1024), (3, 2048, 1024),
                  (300, 12288, 1024)]


@gpu
@pytest.mark.parametrize("bits,group", [(4, 0), (3, 0), (4, 128), (3, 64)], ids=str)
@pytest.mark.parametrize("n,k,block", UNROTATE_CASES, ids=str)
def test_cuda_dequantize_weight_equals_reference(n, k, block, bits, group, monkeypatch):
    if group and k % group:
        pytest.skip("group must divide K")
    monkeypatch.setenv("LRQ_BACKEND", "cuda")
    torch.manual_seed(n + k + bits)
    packed = pack_codes(torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8), bits)
    cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
    ws = torch.rand((n, k // group) if group else (n,), device="cuda") + 0.01
    w = dequantize_packed(packed, ws, cb, bits, k, group or None)
    for perm, cs in ((None, None), (torch.randperm(k, device="cuda"), torch.rand(k, device="cuda") + 0.5)):
        want = unrotate_weight_ref(w, perm, cs, block)       # the same float32 operations in the same order
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            got = ops.dequantize_weight(packed, ws, cb, bits, k, group, perm, cs, block, dtype)
            assert got.dtype == dtype and torch.equal(got, want.to(dtype)), (dtype, perm is not None)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bits,group", [(4, 0), (3, 128)], ids=str)
def test_quant_linear_a16_large_m_takes_the_dequantized_weight_and_matches(bits, group, dtype, monkeypatch):
    torch.manual_seed(bits)
    m, k, n = ops.get_tuning().a16_dequant_min_m + 77, 3072, 1000
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    x[:, 11] *= 30
    packed = pack_codes(torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8), bits)
    cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
    ws = torch.rand((n, k // group) if group else (n,), device="cuda") * 0.01 + 1e-3
    perm, cs, bias = torch.randperm(k, device="cuda"), torch.rand(k, device="cuda") + 0.5, torch.randn(n, device="cuda")
    calls = []
    real = cuda_kernels.unrotate_weight_cuda
    monkeypatch.setattr(cuda_kernels, "unrotate_weight_cuda", lambda *a: calls.append(1) or real(*a))
    y = ops.quant_linear_a16(x, perm, cs, 1024, packed, ws, cb, bits, group, bias)
    assert calls and y.dtype == dtype
    w = dequantize_packed(packed, ws, cb, bits, k, group or None)
    want = rotate_ref(x, perm, cs, 1024).double() @ w.double().t() + bias.double()
    # bf16: the rotated weight and the output are rounded to 8-bit significands (2^-9), as the token path rounds
    # the rotated tokens and the output
    assert rel_err(y, want) <= (3e-3 if dtype == torch.bfloat16 else 1e-3)
    monkeypatch.setenv("LRQ_BACKEND", "reference")
    assert rel_err(y, ops.quant_linear_a16(x, perm, cs, 1024, packed, ws, cb, bits, group, bias)) <= 4e-3


@gpu
@pytest.mark.parametrize("m,n,weight_path", [(17, 1000, True), (127, 3072, True), (127, 4096, False),
                                             (128, 4096, True), (16, 1000, False)], ids=str)
def test_quant_linear_a16_picks_the_path_the_benchmark_measured_faster(m, n, weight_path, monkeypatch):
    """Tuning.a16_dequant_min_m and a16_dequant_max_small_m_weight: the dequantized weight from M = 17 for weights of at
    most 3072 x 3072 elements, from M = 128 for larger ones; the token path's output agrees with it."""
    torch.manual_seed(0)
    k, bits = 3072, 4
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    packed = pack_codes(torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8), bits)
    cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
    ws = torch.rand(n, device="cuda") * 0.01 + 1e-3
    calls = []
    real = cuda_kernels.unrotate_weight_cuda
    monkeypatch.setattr(cuda_kernels, "unrotate_weight_cuda", lambda *a: calls.append(1) or real(*a))
    y = ops.quant_linear_a16(x, None, None, 1024, packed, ws, cb, bits, 0, None)
    assert bool(calls) == weight_path
    want = rotate_ref(x, None, None, 1024).double() @ dequantize_packed(packed, ws, cb, bits, k, None).double().t()
    assert rel_err(y, want) <= 3e-3


# --- GPU: in serving stacks ---------------------------------------------------------------------------------------

@gpu
@pytest.mark.parametrize("tokens", [1, 300], ids=lambda t: f"M={t}")     # the GEMV; dequantize_weight + cuBLAS
def test_weight_only_quantlinear_on_cuda_graph_and_compile(tokens):
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(3072, 3072).cuda(), QuantConfig(a_bits=16, group_size=128))
    assert_compile_and_cuda_graph_match_eager(q, torch.randn(1, tokens, 3072, device="cuda", dtype=torch.bfloat16))
