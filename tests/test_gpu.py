"""GPU-only checks (skipped without CUDA): every shape of benchmarks/dit_shapes.json plus M in {1, 7, 333},
torch.compile(fullgraph=True) and CUDA-graph capture of QuantLinear."""
import copy
import json
import os

import pytest
import torch
from conftest import assert_compile_and_cuda_graph_match_eager, rel_err

from lrq_kernels import QuantConfig, QuantLinear, ops
from lrq_kernels.formats.codebooks import TLQGrid, tlq_codebook
from lrq_kernels.formats.packing import pack_codes
from lrq_kernels.formats.weight import dequantize_packed
from lrq_kernels.reference import rotate_quantize_ref
from lrq_kernels.rotation.rotation import default_block

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

with open(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "dit_shapes.json")) as f:
    SHAPES = json.load(f)["gemm"]
CASES = sorted({(s["M"], s["K"], s["N"]) for s in SHAPES} |
               {(m, s["K"], s["N"]) for s in SHAPES for m in (1, 7, 333)})


def _codes_match(got, want, max_frac=1e-4):
    return (got.float() != want.float()).float().mean().item() <= max_frac


@pytest.mark.parametrize("m,k,n", CASES, ids=lambda v: str(v))
def test_shapes_rotate_quant_and_gemm(m, k, n):
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x[:, 5] *= 40
    block = default_block(k)
    codes, sx = ops.rotate_quant(x, None, None, block, "fp8", 8)
    rc, rs = rotate_quantize_ref(x, None, None, block, "fp8", 8)
    assert _codes_match(codes, rc) and torch.allclose(sx, rs, rtol=1e-6, atol=0)
    for bits in (4, 3):
        # random codes under a TLQ codebook: the GEMM must be right for any codes, and this skips the search
        codes_w = torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8)
        cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
        sw = torch.rand(n, device="cuda") * 0.01 + 1e-3
        packed = pack_codes(codes_w, bits)
        y = ops.gemm_a8(rc, rs, packed, sw, cb, bits, k, 0, None, torch.float32)
        w = dequantize_packed(packed, sw, cb, bits, k, None)
        # the oracle in float64. The kernel must add its FP8 products in float32 itself: Hopper's FP8 MMA
        # accumulates with fewer bits, and chained over K = 2432 it gave 1.16e-3 here (M = 333, N = 2432)
        want = (rc.double() @ w.double().t()) * rs.double()[:, None]
        assert rel_err(y, want) <= 1e-3


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(w_bits=3), QuantConfig(a_bits=16),
                                 QuantConfig(a_bits=4, a_format="int")], ids=lambda c: c.name)
def test_quantlinear_cuda_matches_reference_path(cfg, monkeypatch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(1152, 4608).cuda()
    q = QuantLinear.from_linear(lin, cfg)
    x = torch.randn(2, 333, 1152, device="cuda", dtype=torch.bfloat16)
    y = q(x)
    monkeypatch.setenv("LRQ_BACKEND", "reference")
    y_ref = q(x)
    assert y.dtype == torch.bfloat16 and rel_err(y.float(), y_ref.float()) <= 5e-3


def test_torch_compile_fullgraph_and_cuda_graph():
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(3072, 3072).cuda(), QuantConfig())
    assert_compile_and_cuda_graph_match_eager(q, torch.randn(77, 3072, device="cuda", dtype=torch.bfloat16))


def test_weight_only_at_one_token_compiles_and_captures():
    """W4A16 at M = 1: the GEMV that rotates x itself (the fused-gemv plan), under torch.compile and a CUDA graph."""
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(3072, 1024).cuda(), QuantConfig(a_bits=16))
    assert q.perm is None and q.block > 1                                # no calibration: the block Hadamard
    assert_compile_and_cuda_graph_match_eager(q, torch.randn(1, 3072, device="cuda", dtype=torch.bfloat16))


def test_weight_only_split_k_compiles_and_captures():
    """W4A16 at M = 77 on a FLUX fc1-sized weight: rotate, then the Triton GEMM with K split between programs
    (triton/gemm.py, SPLIT_K_MAX_M), whose workspace is summed in a fixed order, so compiled and graph-replayed
    outputs equal eager ones bit for bit."""
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(3072, 12288).cuda(), QuantConfig(a_bits=16))
    assert_compile_and_cuda_graph_match_eager(q, torch.randn(77, 3072, device="cuda", dtype=torch.bfloat16))


def test_gptq_on_cuda_agrees_with_cpu():
    # the same calibration tokens, collected on the GPU and on the CPU: the GPU's GPTQ (cuSOLVER Cholesky,
    # float32 column loop) makes the same codes up to rounding ties, and the same output error
    from lrq_kernels import stats_from_tokens
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 288, generator=g) @ torch.randn(288, 1152, generator=g) + 0.05 * torch.randn(2048, 1152, generator=g)
    lin = torch.nn.Linear(1152, 512)
    cfg = QuantConfig(a_bits=16, rotation="hadamard")
    q_cpu = QuantLinear.from_linear(lin, cfg, stats_from_tokens(x, 4))
    q_gpu = QuantLinear.from_linear(copy.deepcopy(lin).cuda(), cfg, stats_from_tokens(x.cuda(), 4))
    assert q_gpu.qweight.is_cuda and q_gpu.quant_info["rounding"] == "gptq"
    same = (q_gpu.quantized_weight().codes().cpu() == q_cpu.quantized_weight().codes()).float().mean().item()
    assert same >= 0.99
    y = lin(x)
    err_cpu = (q_cpu(x) - y).pow(2).sum().item()
    err_gpu = (q_gpu(x.cuda()).float().cpu() - y).pow(2).sum().item()
    assert abs(err_gpu / err_cpu - 1) < 0.02


# --- more than 2^31 elements (Wan's fc2 input at 160000 tokens: 160000 x 13824 = 2.2e9) ---------------------------

@pytest.mark.parametrize("a_bits", [8, 16])
def test_more_than_2_31_elements_every_path(a_bits):
    """QuantLinear on an input of more than 2^31 elements (int32 offsets would wrap): the rows at both ends, and past
    the 2^31-th element, equal the same layer on those rows alone (tokens are independent), which runs on small
    tensors; rotate+quantize's codes there equal the reference's."""
    m, k, n = 160_000, 13824, 5120
    assert m * k > 2 ** 31
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, device="cuda")
    q = QuantLinear.from_linear(lin, QuantConfig(a_bits=a_bits, rotation="hadamard")).cuda()
    x = torch.empty(m, k, device="cuda", dtype=torch.bfloat16).normal_()
    rows = torch.tensor([0, 1, m // 2, (2 ** 31) // k + 1, m - 2, m - 1], device="cuda")
    with torch.no_grad():
        y = q(x)
        want = q(x[rows])
        assert torch.isfinite(y[rows]).all()
        assert rel_err(y[rows].float(), want.float()) < 1e-2
        if a_bits == 8:
            codes, sx = ops.rotate_quant(x, None, None, q.block, "fp8", 8)
            rc, rs = rotate_quantize_ref(x[rows], None, None, q.block, "fp8", 8)
            assert _codes_match(codes[rows], rc) and torch.allclose(sx[rows], rs, rtol=1e-6, atol=0)
