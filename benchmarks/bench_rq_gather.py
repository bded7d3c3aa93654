"""What the ARS gather of the CUDA rotate+quantize costs, piece by piece (GPU only).

    python benchmarks/bench_rq_gather.py     # prints one line a shape; ~25 s on the H100

For four activation shapes of dit_shapes.json: the plain block Hadamard, then with a channel scale only, a
permutation with and without the scale, and the identity permutation (the gather with no scattering). µs (% of the
copy bandwidth over x read + codes written), CUDA-graph medians over copies of the data larger than L2 (timing.py).
The kernel reads int16 tables made once per
permutation (cuda.gather_tables), whatever the permutation's dtype. "bank-spread perm" is a permutation whose
gathers never conflict in shared memory (bank_spread_perm): against "perm", what random indices' bank conflicts cost.
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


def bank_spread_perm(k: int, gen: torch.Generator) -> torch.Tensor:
    """A random permutation (K % 256 == 0) whose gathers hit 32 distinct shared-memory banks in every warp load of the
    kernel (csrc/hadamard.cuh: lane l reads columns 256s + 8l + j, j = 0..7 a load; a bf16 source c sits in bank
    (c // 2) % 32). Column 256s + 8l + j takes source 64 (j // 2) + 2 ((l + r) % 32) + j % 2 of segment t, with t a
    random permutation of the segments and r random a segment and j."""
    perm = torch.empty(k, dtype=torch.int32)
    lane, j = torch.arange(32).view(32, 1), torch.arange(8).view(1, 8)
    for s, t in enumerate(torch.randperm(k // 256, generator=gen).tolist()):
        r = torch.randint(0, 32, (1, 8), generator=gen)
        perm[256 * s:256 * (s + 1)] = (256 * t + 64 * (j // 2) + 2 * ((lane + r) % 32) + j % 2).reshape(-1)
    assert torch.equal(perm.sort().values, torch.arange(k, dtype=torch.int32))
    return perm


def main():
    bw = copy_gbps()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; copy GB/s {bw:.0f}")
    for m, k in SHAPES:
        block = default_block(k)
        nbytes = m * k * 3 + 4 * m
        x_ = pool_of(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
        perm = torch.randperm(k, device="cuda", dtype=torch.int32)
        ident = torch.arange(k, device="cuda", dtype=torch.int32)
        spread = bank_spread_perm(k, torch.Generator().manual_seed(k)).cuda()
        cs = torch.rand(k, device="cuda") + 0.5
        row = []
        for name, p, c in (("plain", None, None), ("cs only", None, cs), ("perm+cs", perm, cs), ("perm", perm, None),
                           ("identity perm", ident, None), ("bank-spread perm", spread, None),
                           ("bank-spread perm+cs", spread, cs)):
            us = cold_us(lambda i: (lambda x=x_(i): cuda_kernels.rotate_quant_cuda(x, p, c, block, "fp8", 8)),
                         nbytes)
            row.append(f"{name} {us:.1f} ({100 * nbytes / us / 1e3 / bw:.0f}%)")
        print(m, k, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
