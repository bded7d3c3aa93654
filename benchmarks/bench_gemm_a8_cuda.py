"""The CUDA W·A8 GEMM (csrc/gemm_a8_sm90.cu) against the Triton one and cuBLAS, by M, on four DiT weight shapes:
where the dispatcher should pick CUDA (Tuning.cuda_gemm_a8_min_m, lrq_kernels/ops/policy.py). Needs an sm_90 GPU.

    python benchmarks/bench_gemm_a8_cuda.py [--out benchmarks/results] [--ms 1,16,...] [--bits 4,3] [--name N]

Columns, all kernels alone on the same inputs (random FP8 codes, 4- or 3-bit TLQ weights, bf16 out, no bias):
  bf16      F.linear on bf16 (cuBLAS)
  fp8       torch._scaled_mm, FP8 e4m3 with row-wise scales (cuBLAS; M % 16 == 0 only)
  triton    lrq_kernels/triton/gemm.py
  cuda      natural-order codes: the producer warpgroup copies them in 4-byte pieces (what ops.gemm_a8 runs)
  cuda tma  codes already in the kernel's K order (cuda.gemm_order; the QuantLinear forward has rotate_quant
            write them so): one TMA box a stage
  err       the cuda tma kernel's float32 output against a float64 oracle of the same quantized math,
            ||y - ref|| / ||ref|| (the tests' bound is 1e-3)
Medians of CUDA-graph replays on a warm L2. Writes NAME.json / .md (default gemm_a8_cuda_sweep).
"""
import argparse
import datetime
import json
import os
import sys

import torch
import torch.nn.functional as F
import triton

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import bench_us  # noqa: E402

from lrq_kernels import cuda as cuda_kernels  # noqa: E402
from lrq_kernels.formats.codebooks import TLQGrid, tlq_codebook  # noqa: E402
from lrq_kernels.formats.packing import pack_codes, unpack_codes  # noqa: E402
from lrq_kernels.triton.gemm import gemm_a8_triton  # noqa: E402

SHAPES = [(3072, 12288), (12288, 3072), (3072, 3072), (1152, 4608)]   # FLUX fc1, fc2, qkv/o, PixArt fc1 (K, N)
MS = (1, 16, 64, 128, 256, 512, 1024, 2048, 4608)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="comma-separated M values")
    ap.add_argument("--bits", default="4", help="comma-separated weight bit widths (4, 3)")
    ap.add_argument("--name", default="gemm_a8_cuda_sweep", help="results file name, without extension")
    args = ap.parse_args()
    why = cuda_kernels.gemm_a8_unsupported(128, 3072, 3072, 4, 0, torch.float8_e4m3fn, torch.device("cuda"))
    if why:
        sys.exit(f"bench_gemm_a8_cuda: {why}")
    ms = [int(v) for v in args.ms.split(",")]
    rows = []
    for bits, (k, n) in ((b, s) for b in (int(v) for v in args.bits.split(",")) for s in SHAPES):
        g = torch.Generator(device="cuda").manual_seed(0)
        packed = pack_codes(torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8, generator=g),
                            bits)
        cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
        sw = torch.rand(n, device="cuda", generator=g) + 0.5
        w16 = torch.randn(n, k, device="cuda", generator=g).to(torch.bfloat16)
        wf = torch.randn(n, k, device="cuda", generator=g).to(torch.float8_e4m3fn)
        w64 = cb.double()[unpack_codes(packed, bits, k).long()] * sw.double()[:, None]   # the oracle's weights
        for m in ms:
            x = torch.randn(m, k, device="cuda", generator=g).to(torch.float8_e4m3fn)
            sx = torch.rand(m, device="cuda", generator=g)
            x16 = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
            r = dict(bits=bits, M=m, K=k, N=n)
            r["bf16_us"] = bench_us(lambda: F.linear(x16, w16))
            if m % 16 == 0:
                sa, sb = sx[:, None].contiguous(), sw[None, :].contiguous()
                r["fp8_us"] = bench_us(lambda: torch._scaled_mm(x, wf.t(), sa, sb, out_dtype=torch.bfloat16))
            r["triton_us"] = bench_us(lambda: gemm_a8_triton(x, sx, packed, sw, cb, bits, k, 0, None,
                                                                torch.bfloat16))
            r["cuda_us"] = bench_us(lambda: cuda_kernels.gemm_a8_cuda(x, sx, packed, sw, cb, bits, k, 0, None,
                                                                      torch.bfloat16))
            xg = cuda_kernels.gemm_order(x)
            r["cuda_tma_us"] = bench_us(lambda: cuda_kernels.gemm_a8_cuda(
                xg, sx, packed, sw, cb, bits, k, 0, None, torch.bfloat16, x_gemm_order=True))
            y32 = cuda_kernels.gemm_a8_cuda(xg, sx, packed, sw, cb, bits, k, 0, None, torch.float32,
                                            x_gemm_order=True).double()
            ref = (x.double() @ w64.t()) * sx.double()[:, None]
            r["err"] = ((y32 - ref).norm() / ref.norm()).item()
            del y32, ref
            rows.append(r)
            print(json.dumps({a: round(v, 2) if isinstance(v, float) else v for a, v in r.items()}), flush=True)
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                command="python " + " ".join(["benchmarks/bench_gemm_a8_cuda.py"] + sys.argv[1:]))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)

    def us(r, key):
        return f"{r[key]:.1f}" if key in r else "–"
    cuda_cols = ["cuda", "cuda_tma"]
    cols = ["bf16", "fp8", "triton"] + cuda_cols
    md = [f"# CUDA W·A8 GEMM kernels against Triton's and cuBLAS, by M ({meta['gpu']})", "",
          f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, Triton {meta['triton']}. Medians of "
          "CUDA-graph replays, warm L2, bf16 out, no bias; µs. Column meanings: the script's docstring.", "",
          "| bits | M | K | N | " + " | ".join(c.replace("_", " ") for c in cols)
          + " | best CUDA vs Triton | vs bf16 | err |",
          "| ---: " * (7 + len(cols)) + "|"]
    for r in rows:
        best = min(r[c + "_us"] for c in cuda_cols)
        md.append(f"| {r.get('bits', 4)} | {r['M']} | {r['K']} | {r['N']} | "
                  + " | ".join(us(r, c + "_us") for c in cols)
                  + f" | {r['triton_us'] / best:.2f}× | {r['bf16_us'] / best:.2f}× | {r['err']:.1e} |")
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
