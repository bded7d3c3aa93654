"""The kernel choice (ops/dispatch.py) and its policy (ops/policy.py), on CPU."""
import threading

import pytest
import torch

import lrq_kernels as lrq
from lrq_kernels import ops
from lrq_kernels.ops import dispatch

CPU = torch.device("cpu")
A8 = dict(m=4096, k=3072, n=3072, bits=4, group=0, codes_dtype=torch.float8_e4m3fn, out_dtype=torch.bfloat16)


def test_a_plan_is_made_once_for_its_inputs_and_again_when_they_change(monkeypatch):
    made = []
    real = dispatch._PLANNERS["gemm_a8"]
    monkeypatch.setitem(dispatch._PLANNERS, "gemm_a8", lambda *a, **kw: made.append(1) or real(*a, **kw))
    p = ops.plan("gemm_a8", CPU, **A8)
    assert ops.plan("gemm_a8", CPU, **A8) is p and len(made) == 1
    ops.plan("gemm_a8", CPU, **(A8 | dict(m=5)))
    assert len(made) == 2
    with lrq.tuning(a8_dequant_min_m=8):           # another policy is another key
        ops.plan("gemm_a8", CPU, **A8)
    assert len(made) == 3
    monkeypatch.setenv("LRQ_BACKEND", "reference")
    assert ops.plan("gemm_a8", CPU, **A8).why_not == ("LRQ_BACKEND=reference",) and len(made) == 4


def test_plans_say_why_not_and_describe_themselves():
    p = ops.plan("quant_linear_a8", CPU, m=2, k=1152, n=1152, block=128, a_format="fp8", bits=4, group=0,
                 dtype=torch.bfloat16, out_dtype=torch.bfloat16)
    assert (p.path, p.backend) == ("two-ops", "reference")
    assert [s.op for s in p.steps] == ["rotate_quant", "gemm_a8"]
    assert any(w.startswith("cuda: ") for w in p.steps[0].why_not)
    text = p.describe()
    assert text.startswith("quant_linear_a8: reference (two-ops) [rotate_quant: reference -- not cuda: ")
    assert "triton: Triton cannot run on cpu" in text


def test_quantlinear_kernel_plan_names_its_path():
    q = lrq.QuantLinear.from_linear(torch.nn.Linear(64, 32), lrq.QuantConfig(rotation="hadamard"))
    assert q.kernel_plan(7).startswith("quant_linear_a8: reference (two-ops)")
    w = lrq.QuantLinear.from_linear(torch.nn.Linear(64, 32), lrq.QuantConfig(a_bits=16, rotation="hadamard"))
    assert w.kernel_plan(1).startswith("quant_linear_a16: reference (two-ops) [rotate: reference")


def test_tuning_validates_its_fields_and_names_the_unknown():
    with pytest.raises(ValueError, match="Tuning.a8_dequant_min_m must be a positive int, got 0"):
        lrq.Tuning(a8_dequant_min_m=0)
    with pytest.raises(TypeError, match="Tuning.a8_fast_accum must be a bool, got 1"):
        lrq.Tuning(a8_fast_accum=1)
    with pytest.raises(TypeError, match=r"unknown tuning field\(s\) \['a8_min_m'\]"):
        with lrq.tuning(a8_min_m=3):
            pass
    with pytest.raises(TypeError, match="tuning must be a lrq_kernels.Tuning or None, got dict"):
        lrq.set_tuning({"a8_dequant_min_m": 3})


def test_tuning_block_is_local_to_its_thread_and_set_tuning_is_global():
    default = lrq.get_tuning()
    assert default == lrq.Tuning()
    seen = []
    with lrq.tuning(a8_dequant_min_m=7) as t:
        assert t.a8_dequant_min_m == 7 and lrq.get_tuning() is t
        th = threading.Thread(target=lambda: seen.append(lrq.get_tuning().a8_dequant_min_m))
        th.start()
        th.join()
        with lrq.tuning(a8_fast_accum=True):          # nested blocks change the policy in force
            assert lrq.get_tuning() == lrq.Tuning(a8_dequant_min_m=7, a8_fast_accum=True)
    assert seen == [default.a8_dequant_min_m] and lrq.get_tuning() == default
    try:
        assert lrq.set_tuning(a16_dequant_min_m=64).a16_dequant_min_m == 64
        th = threading.Thread(target=lambda: seen.append(lrq.get_tuning().a16_dequant_min_m))
        th.start()
        th.join()
        assert seen[-1] == 64
    finally:
        lrq.set_tuning()
    assert lrq.get_tuning() == lrq.Tuning()


def test_the_policy_moves_the_plan_on_a_hopper_gpu(monkeypatch):
    """With a Hopper GPU pretended (every CUDA kernel able to run), the W·A8 GEMM's three forms by M, and the
    thresholds moved by tuning()."""
    from lrq_kernels import cuda as cuda_kernels
    monkeypatch.setattr(cuda_kernels, "capability", lambda device: (9, 0))
    rules = {"gemm_a16": lambda m, **_: "" if m <= 16 else "M <= 16",        # the GEMV's, and its fused rotation's
             "gemv_a16_rotate": lambda m, **_: "" if m == 1 else "M = 1"}
    monkeypatch.setattr(cuda_kernels, "why_not", lambda op, device, **shape: rules.get(op, lambda **_: "")(**shape))
    gpu = torch.device("cuda", 0)

    def form(m, **kw):
        p = ops.plan("gemm_a8", gpu, **(A8 | dict(m=m) | kw))
        return p.backend, p.path

    assert form(1024) == ("cuda", "fp8-weight")
    assert form(1023) == ("cuda", "kernel")
    assert form(255) == ("triton", "kernel")
    assert form(1, tma=True) == ("cuda", "kernel")
    assert form(4096, out_dtype=torch.float32) == ("cuda", "kernel")     # cuBLAS's path has 16-bit outputs only
    with lrq.tuning(a8_dequant_min_m=2048, cuda_gemm_a8_min_m=64):
        assert form(1024) == ("cuda", "kernel") and form(64) == ("cuda", "kernel")
    a16 = dict(k=3072, n=12288, block=1024, bits=4, group=0, dtype=torch.bfloat16, rotated=True, permuted=False)
    assert ops.plan("quant_linear_a16", gpu, m=128, **a16).path == "weight"
    assert ops.plan("quant_linear_a16", gpu, m=64, **a16).path == "two-ops"      # a large weight: from M = 128
    assert ops.plan("quant_linear_a16", gpu, m=64, **(a16 | dict(n=3072))).path == "weight"
    assert ops.plan("quant_linear_a16", gpu, m=1, **a16).path == "fused-gemv"
    ql = dict(k=3072, n=3072, block=1024, a_format="fp8", bits=4, group=0, dtype=torch.bfloat16,
              out_dtype=torch.bfloat16)
    assert ops.plan("quant_linear_a8", gpu, m=16, **ql).path == "gemm-order"
    p = ops.plan("quant_linear_a8", gpu, m=4096, **ql)
    assert p.path == "two-ops" and p.steps[1].path == "fp8-weight"


def test_eager_forward_calls_the_implementation_and_equals_the_registered_op():
    """In eager mode without grad the layer calls the op's implementation directly; with an input that wants a
    gradient it goes through the registered op. Both give the same output."""
    torch.manual_seed(0)
    for cfg in (lrq.QuantConfig(rotation="hadamard"), lrq.QuantConfig(a_bits=16, rotation="hadamard")):
        q = lrq.QuantLinear.from_linear(torch.nn.Linear(64, 48), cfg)
        x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
        with torch.no_grad():
            direct = q(x)
        via_op = q(x.clone().requires_grad_(True))
        assert torch.equal(direct, via_op.detach())


def test_cast_is_made_once_and_again_after_an_in_place_write():
    from lrq_kernels import cuda as cuda_kernels
    b = torch.randn(8)
    c = cuda_kernels.cast(b, torch.bfloat16)
    assert c.dtype == torch.bfloat16 and cuda_kernels.cast(b, torch.bfloat16) is c
    assert cuda_kernels.cast(b, torch.float32) is b and cuda_kernels.cast(None, torch.bfloat16) is None
    b.mul_(3)
    assert torch.equal(cuda_kernels.cast(b, torch.bfloat16), b.to(torch.bfloat16))
