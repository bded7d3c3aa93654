"""Reliability at DiT sizes, the parts that run on a CPU: one model called from many threads at once, and the
clear error of an out-of-memory in the transient weight decode. (More than 2^31 elements on every kernel path:
tests/test_gpu.py, on the GPU.)"""
import threading

import pytest
import torch

from lrq_kernels import QuantConfig, QuantLinear, stats_from_tokens
from lrq_kernels.ops import transient_weight


def test_many_threads_calling_one_layer_get_one_threads_outputs():
    lin = torch.nn.Linear(256, 96)
    x = torch.randn(512, 256)
    x[:, [3, 77]] *= 40
    q = QuantLinear.from_linear(lin, QuantConfig(), stats_from_tokens(x, 4))   # ARS: a permutation to gather
    inputs = [torch.randn(1 + 7 * i, 256) for i in range(8)]
    with torch.no_grad():
        want = [q(t) for t in inputs]
        got, errors = [None] * 32, []

        def worker(i):
            try:
                got[i] = q(inputs[i % 8])
            except Exception as e:   # noqa: BLE001  (reported below)
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert all(torch.equal(got[i], want[i % 8]) for i in range(32))


def test_out_of_memory_in_the_transient_weight_says_what_and_how_to_avoid_it():
    def make():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 36.00 MiB")
    with pytest.raises(torch.OutOfMemoryError, match=r"gemm_a8: out of GPU memory for the transient 3072 x 12288 "
                                                     r"float8_e4m3fn weight \(36 MiB\) that M=4608 tokens take.*"
                                                     r"lrq_kernels.tuning\(a8_dequant_min_m=4609\)"):
        transient_weight("gemm_a8", "a8_dequant_min_m", (3072, 12288), torch.float8_e4m3fn, 4608, make)
    assert transient_weight("gemm_a8", "a8_dequant_min_m", (2, 2), torch.bfloat16, 1, lambda: 7) == 7
