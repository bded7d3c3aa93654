"""Runs every CUDA kernel of lrq_kernels._C on small awkward shapes, for compute-sanitizer:

    compute-sanitizer --tool memcheck  --error-exitcode 1 python tools/sanitize_cuda.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python tools/sanitize_cuda.py

Inputs are made on the CPU and copied, so that the sanitizer sees few kernels besides ours. Each output is also
checked against the reference, so a clean sanitizer run is also a correct one.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lrq_kernels import cuda as cuda_kernels  # noqa: E402
from lrq_kernels.formats.codebooks import nf_codebook  # noqa: E402
from lrq_kernels.formats.packing import pack_codes  # noqa: E402
from lrq_kernels.formats.weight import dequantize_packed  # noqa: E402
from lrq_kernels.reference import rotate_quantize_ref, unrotate_weight_ref  # noqa: E402
from lrq_kernels.reference.gemm import decode_weight_e4m3_ref  # noqa: E402


def main():
    assert cuda_kernels.available(), cuda_kernels.why_unavailable()
    g = torch.Generator().manual_seed(0)
    n_cases = 0
    # rotate + quantize: in-warp blocks, blocks across warps (4096), odd M, the ARS gather, every output format
    # 300 tokens of K = 12288 outnumber the persistent grid's CTAs (two an SM), so each CTA's ring wraps around.
    # Blocks of 128, 512 and 1024 without the gather take the transposed path: at M = 333, K = 4608 and 1536 have 2
    # tokens a CTA in 9 and 3 warps (a warp straddling two tokens, the last group 1 token); at M = 999, K = 1152 4 in
    # 5 warps (the last group 3 tokens).
    for m, k, block in ((1, 1152, 128), (7, 4608, 512), (3, 3072, 1024), (5, 4096, 4096), (2, 1000, 8),
                        (300, 12288, 1024), (6, 1024, 1024), (333, 1536, 512), (333, 4608, 512),
                        (999, 1152, 128)):
        x = torch.randn(m, k, generator=g).to(torch.bfloat16)
        perm = torch.randperm(k, generator=g)
        cs = torch.rand(k, generator=g) + 0.5
        xd = x.cuda()
        for p, c in ((None, None), (perm, cs)):
            pd, cd = (None, None) if p is None else (p.cuda(), c.cuda())
            for fmt, bits in (("fp8", 8), ("int", 4)):
                codes, scales = cuda_kernels.rotate_quant_cuda(xd, pd, cd, block, fmt, bits)
                rc, rs = rotate_quantize_ref(x, p, c, block, fmt, bits)
                # the tests' rule: equal scales, codes equal but for rounding ties on <= 1e-4 of them
                diff = (codes.cpu().float() != rc.float()).float().mean().item()
                assert diff <= 1e-4 and torch.equal(scales.cpu(), rs), (m, k, fmt, diff)
            cuda_kernels.rotate_quant_cuda(xd, pd, cd, block, None, 16)
            n_cases += 3
            if k % 128 == 0:                                    # codes in the W4A8 GEMM's K order
                cuda_kernels.rotate_quant_cuda(xd, pd, cd, block, "fp8", 8, gemm_order=True)
                n_cases += 1
    # small-M GEMV: both bit widths, per-channel and group scales, M past 8 (second mma row block), N not a
    # multiple of the CTA's rows
    for m, k, n, bits, group in ((1, 1152, 40, 4, 0), (9, 256, 24, 3, 64), (16, 384, 17, 4, 128), (3, 128, 8, 3, 0)):
        x = torch.randn(m, k, generator=g).to(torch.bfloat16)
        codes = torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.uint8)
        packed = pack_codes(codes, bits)
        sw = torch.rand((n, k // group) if group else (n,), generator=g) + 0.5
        cb = nf_codebook(bits)
        bias = torch.randn(n, generator=g)
        y = cuda_kernels.gemv_a16_cuda(x.cuda(), packed.cuda(), sw.cuda(), cb.cuda(), bits, group, bias.cuda())
        want = x.double() @ dequantize_packed(packed, sw, cb, bits, k, group or None).double().t() + bias.double()
        err = ((y.cpu().double() - want).norm() / want.norm()).item()
        assert err < 4e-3, (m, k, n, bits, group, err)
        n_cases += 1
    # the GEMV rotating x itself (M = 1): K at its 4096 limit, blocks of 1024 (a warp's) and 128, the gather, warps
    # with no live slot (K = 1152)
    for m, k, n, bits, group, block in ((1, 4096, 40, 4, 0, 1024), (1, 2048, 24, 3, 64, 512), (1, 1152, 17, 4, 0, 128)):
        x = torch.randn(m, k, generator=g).to(torch.bfloat16)
        packed = pack_codes(torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.uint8), bits)
        sw = torch.rand((n, k // group) if group else (n,), generator=g) + 0.5
        cb = nf_codebook(bits)
        perm, cs = torch.randperm(k, generator=g), torch.rand(k, generator=g) + 0.5
        for p, c in ((None, None), (perm, cs)):
            pd, cd = (None, None) if p is None else (p.cuda(), c.cuda())
            y = cuda_kernels.gemv_a16_cuda(x.cuda(), packed.cuda(), sw.cuda(), cb.cuda(), bits, group, None, pd, cd,
                                           block)
            xr = cuda_kernels.rotate_quant_cuda(x.cuda(), pd, cd, block, None, 16)[0]
            assert torch.equal(y, cuda_kernels.gemv_a16_cuda(xr, packed.cuda(), sw.cuda(), cb.cuda(), bits, group,
                                                              None)), (m, k, block)
            n_cases += 1
    # the weight with its rotation undone: a block inside a warp and one across warps (staging in shared memory),
    # the permutation's scatter, group scales, a partial last CTA (N = 7 rows of K = 1152, 3 rows a CTA); blocks of
    # 1024 without the permutation take the transposed kernel (4 rows a CTA at K = 1024, the last group of N = 6 half
    # empty; 3-bit codes)
    for n, k, block, bits, group in ((7, 1152, 128, 4, 0), (3, 4096, 4096, 3, 64), (5, 12288, 1024, 4, 128),
                                     (6, 1024, 1024, 3, 0)):
        packed = pack_codes(torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.uint8), bits)
        sw = torch.rand((n, k // group) if group else (n,), generator=g) + 0.5
        cb = nf_codebook(bits)
        perm, cs = torch.randperm(k, generator=g), torch.rand(k, generator=g) + 0.5
        w = dequantize_packed(packed, sw, cb, bits, k, group or None)
        for p, c in ((None, None), (perm, cs)):
            got = cuda_kernels.unrotate_weight_cuda(packed.cuda(), sw.cuda(), cb.cuda(), bits, k, group,
                                                    None if p is None else p.cuda(), None if c is None else c.cuda(),
                                                    block, torch.bfloat16)
            assert torch.equal(got.cpu(), unrotate_weight_ref(w, p, c, block).to(torch.bfloat16)), (n, k, block)
            n_cases += 1
    # the codes as FP8 bytes: both widths, two pieces a row (K = 64, 32 codes a thread), N * K / 32 not a multiple
    # of the 256-thread CTA, and more pieces than the grid's threads (8 CTAs an SM), so the grid-stride loop wraps
    for n, k, bits in ((3, 64, 4), (7, 1152, 3), (5, 192, 4), (4500, 2432, 4), (4500, 2432, 3)):
        packed = pack_codes(torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.uint8), bits)
        cb = nf_codebook(bits)
        got = cuda_kernels.decode_weight_e4m3_cuda(packed.cuda(), cb.cuda(), bits, k)
        assert torch.equal(got.cpu().view(torch.uint8), decode_weight_e4m3_ref(packed, cb, bits, k).view(torch.uint8))
        n_cases += 1
    # W4A8 / W3A8 GEMM (Hopper only): M = 1, a partial token tile, N not a multiple of the 128-row tile, bias or
    # none; natural-order codes (the copying kernel) and gemm_order codes (the TMA kernel); 141 tiles, more than
    # an H100's or H200's 132 CTAs, so that some CTAs of the persistent kernel take a second tile
    for m, k, n, tma, bits in ((1, 128, 8, False, 4), (129, 384, 200, False, 4), (7, 1152, 136, False, 4),
                               (1, 128, 8, True, 4), (129, 384, 200, True, 4), (7, 1152, 136, True, 4),
                               (130, 512, 264, True, 4), (129, 384, 200, False, 3), (7, 1152, 136, True, 3),
                               (130, 512, 264, True, 3), (257, 512, 6016, True, 4), (257, 512, 6016, False, 3)):
        if cuda_kernels.gemm_a8_unsupported(m, k, n, bits, 0, torch.float8_e4m3fn, torch.device("cuda")):
            break
        x = (torch.randn(m, k, generator=g) * 50).to(torch.float8_e4m3fn)
        sx = torch.rand(m, generator=g) * 0.01 + 1e-3
        packed = pack_codes(torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.uint8), bits)
        sw, cb = torch.rand(n, generator=g) + 0.5, nf_codebook(bits)
        bias = None if m == 7 else torch.randn(n, generator=g)
        xc = cuda_kernels.gemm_order(x.cuda()) if tma else x.cuda()
        y = cuda_kernels.gemm_a8_cuda(xc, sx.cuda(), packed.cuda(), sw.cuda(), cb.cuda(), bits, k, 0,
                                      None if bias is None else bias.cuda(), torch.float32, x_gemm_order=tma)
        want = (x.double() @ dequantize_packed(packed, sw, cb, bits, k, None).double().t()) * sx.double()[:, None]
        want = want + bias.double() if bias is not None else want
        err = ((y.cpu().double() - want).norm() / want.norm()).item()
        assert err < 1e-3, (m, k, n, bits, err)
        n_cases += 1
    torch.cuda.synchronize()
    print(f"sanitize_cuda: {n_cases} launches checked against the reference")


if __name__ == "__main__":
    main()
