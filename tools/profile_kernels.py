"""Launches one hot kernel on a FLUX shape for Nsight Compute (the device machines have ncu):

    ncu --set full --profile-from-start off -o gemv python tools/profile_kernels.py gemv
    ncu --set full --profile-from-start off -o gemv_rot python tools/profile_kernels.py gemv --rotate
    ncu --set full --profile-from-start off -o rq python tools/profile_kernels.py rq
    ncu --set full --profile-from-start off -o rq_ars python tools/profile_kernels.py rq --ars --k 12288
    ncu --set full --profile-from-start off -o gemm python tools/profile_kernels.py gemm
    ncu --set full --profile-from-start off -o gemm_cuda python tools/profile_kernels.py gemm_cuda
    ncu --set full --profile-from-start off -o dq python tools/profile_kernels.py dequant --k 12288 --n 3072

Warm-up calls first (they compile and autotune), then one call between cudaProfilerStart and Stop, which is what
--profile-from-start off profiles. What to read: DRAM throughput against its peak (the GEMV and rotate+quantize
are meant to be memory-bound), issue-slot use and the top warp-stall reasons (long scoreboard: waiting on loads;
wait: fixed-latency dependencies; barrier; math pipe throttle), and, for the GEMM, tensor-pipe utilisation.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lrq_kernels import cuda as cuda_kernels, ops  # noqa: E402
from lrq_kernels.formats.codebooks import TLQGrid, tlq_codebook  # noqa: E402
from lrq_kernels.formats.packing import pack_codes  # noqa: E402

WARMUP = 3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernel", choices=("gemv", "rq", "gemm", "gemm_cuda", "dequant"))
    ap.add_argument("--bits", type=int, default=4, choices=(3, 4))
    ap.add_argument("--m", type=int, help="tokens (default: 1 for gemv, 4608 for rq and gemm)")
    ap.add_argument("--k", type=int, default=3072, help="input features (rq: the activation width)")
    ap.add_argument("--n", type=int, default=12288, help="output features (gemv, gemm)")
    ap.add_argument("--block", type=int, default=1024, help="rq, dequant: Hadamard block")
    ap.add_argument("--tma", action="store_true", help="gemm_cuda: codes in gemm_order, the TMA kernel")
    ap.add_argument("--ars", action="store_true",
                    help="rq, gemv --rotate: with the ARS gather (an int32 permutation and channel scales, as "
                         "QuantLinear keeps them)")
    ap.add_argument("--rotate", action="store_true",
                    help="gemv: the GEMV that rotates x itself (M = 1, K <= 4096; block Hadamard of --block)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_kernels: needs a CUDA GPU")
    g = torch.Generator(device="cuda").manual_seed(0)
    k, n = args.k, args.n                                   # default: FLUX.1 MLP fc1
    m = args.m or (1 if args.kernel == "gemv" else 4608)
    cb = tlq_codebook(args.bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
    packed = pack_codes(torch.randint(0, 2 ** args.bits, (n, k), device="cuda", dtype=torch.uint8, generator=g),
                        args.bits)
    sw = torch.rand(n, device="cuda", generator=g) + 0.5
    if args.kernel == "gemv":
        if not cuda_kernels.available():
            sys.exit(f"profile_kernels: {cuda_kernels.why_unavailable()}")
        x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
        rot = {}
        if args.rotate:
            why = cuda_kernels.why_not("gemv_a16_rotate", torch.device("cuda"), m=m, k=k, block=args.block)
            if why:
                sys.exit(f"profile_kernels: gemv --rotate: {why}")
            rot = dict(block=args.block)
            if args.ars:
                rot.update(perm=torch.randperm(k, device="cuda", generator=g).to(torch.int32),
                           channel_scale=torch.rand(k, device="cuda", generator=g) + 0.5)
        run = lambda: cuda_kernels.gemv_a16_cuda(x, packed, sw, cb, args.bits, 0, None, **rot)  # noqa: E731
    elif args.kernel == "dequant":      # the weight-only path's dequantize_weight (the weight, rotation undone)
        run = lambda: cuda_kernels.unrotate_weight_cuda(packed, sw, cb, args.bits, k, 0, None, None,  # noqa: E731
                                                        args.block, torch.bfloat16)
    elif args.kernel == "rq":
        x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
        perm = torch.randperm(k, device="cuda", generator=g).to(torch.int32) if args.ars else None
        cs = torch.rand(k, device="cuda", generator=g) + 0.5 if args.ars else None
        run = lambda: ops.rotate_quant(x, perm, cs, args.block, "fp8", 8)  # noqa: E731
    else:
        codes, sx = ops.rotate_quant(torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16),
                                     None, None, 1024, "fp8", 8)
        if args.kernel == "gemm":
            run = lambda: ops.gemm_a8(codes, sx, packed, sw, cb, args.bits, k, 0, None, torch.bfloat16)  # noqa: E731
        else:       # the CUDA W4A8 kernel itself, whatever the dispatch would pick
            if args.tma:
                codes = cuda_kernels.gemm_order(codes)
            run = lambda: cuda_kernels.gemm_a8_cuda(codes, sx, packed, sw, cb, args.bits, k, 0, None,  # noqa: E731
                                                    torch.bfloat16, x_gemm_order=args.tma)
    for _ in range(WARMUP):
        run()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    run()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"profile_kernels: {args.kernel} M={m} K={k} N={n}, {WARMUP} warm-up calls, then one profiled")


if __name__ == "__main__":
    main()
