"""What the ARS gather of the CUDA rotate+quantize costs, piece by piece (GPU only).

    python benchmarks/bench_rq_gather.py     # prints one line a shape; ~25 s on the H100

For four activation shapes of dit_shapes.json: the plain block Hadamard, then with a channel scale only, a
permutation with and without the scale, and the identity permutation (the gather with no scattering). µs (% of the
copy bandwidth over x read + codes written), CUDA-graph medians over copies of the data larger than L2 (timing.py).
Session 8 compared int64 and int32 permutations here; since session 16 the kernel reads int16 tables made once per
permutation (cuda.gather_tables), whatever the permutation's dtype.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_cuda import pool_of  # noqa: E402
from timing import cold_us, copy_gbps  # noqa: E402

from lrq_kernels import cuda as cuda_kernels  # noqa: E402
from lrq_kernels.rotation.rotation import default_block  # noqa: E402

SHAPES = ((4608, 3072), (8192, 4608), (4608, 15360), (32760, 5120))


def main():
    bw = copy_gbps()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; copy GB/s {bw:.0f}")
    for m, k in SHAPES:
        block = default_block(k)
        nbytes = m * k * 3 + 4 * m
        x_ = pool_of(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
        perm = torch.randperm(k, device="cuda", dtype=torch.int32)
        ident = torch.arange(k, device="cuda", dtype=torch.int32)
        cs = torch.rand(k, device="cuda") + 0.5
        row = []
        for name, p, c in (("plain", None, None), ("cs only", None, cs), ("perm+cs", perm, cs), ("perm", perm, None),
                           ("identity perm", ident, None)):
            us = cold_us(lambda i: (lambda x=x_(i): cuda_kernels.rotate_quant_cuda(x, p, c, block, "fp8", 8)),
                         nbytes)
            row.append(f"{name} {us:.1f} ({100 * nbytes / us / 1e3 / bw:.0f}%)")
        print(m, k, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
