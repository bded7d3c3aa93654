"""The CUDA W4A8 GEMM (csrc/gemm_a8_sm90.cu) against the Triton one, by M, on three DiT weight shapes: whether
and where the dispatcher should pick it (lrq_kernels/ops: OPT_IN). Needs an sm_90 GPU.

    python benchmarks/bench_gemm_a8_cuda.py [--out benchmarks/results]

Medians of CUDA-graph replays on a warm L2 (the kernels alone, as in gemm_variants.py), bf16 output, no bias,
random FP8 codes and 4-bit TLQ weights. Writes gemm_a8_cuda_sweep.json / .md.
"""
import argparse
import datetime
import json
import os
import sys

import torch
import triton

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import bench_us  # noqa: E402

from lrq_kernels import cuda as cuda_kernels  # noqa: E402
from lrq_kernels.formats.codebooks import TLQGrid, tlq_codebook  # noqa: E402
from lrq_kernels.formats.packing import pack_codes  # noqa: E402
from lrq_kernels.triton.gemm import gemm_a8_triton  # noqa: E402

SHAPES = [(3072, 12288), (3072, 3072), (1152, 4608)]          # FLUX fc1, FLUX qkv/o, PixArt fc1 (K, N)
MS = (1, 16, 64, 128, 256, 512, 1024, 2048, 4608)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    why = cuda_kernels.gemm_a8_unsupported(128, 3072, 3072, 4, 0, torch.float8_e4m3fn, torch.device("cuda"))
    if why:
        sys.exit(f"bench_gemm_a8_cuda: {why}")
    rows = []
    for k, n in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        packed = pack_codes(torch.randint(0, 16, (n, k), device="cuda", dtype=torch.uint8, generator=g), 4)
        cb = tlq_codebook(4, TLQGrid("geometric", 2 ** 0.5)).cuda()
        sw = torch.rand(n, device="cuda", generator=g) + 0.5
        for m in MS:
            x = torch.randn(m, k, device="cuda", generator=g).to(torch.float8_e4m3fn)
            sx = torch.rand(m, device="cuda", generator=g)
            r = dict(M=m, K=k, N=n)
            r["cuda_us"] = bench_us(lambda: cuda_kernels.gemm_a8_cuda(x, sx, packed, sw, cb, 4, k, 0, None,
                                                                      torch.bfloat16))
            r["triton_us"] = bench_us(lambda: gemm_a8_triton(x, sx, packed, sw, cb, 4, k, 0, None, torch.bfloat16))
            r["triton_over_cuda"] = r["triton_us"] / r["cuda_us"]
            rows.append(r)
            print(json.dumps({a: round(v, 2) if isinstance(v, float) else v for a, v in r.items()}), flush=True)
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                command="python " + " ".join(["benchmarks/bench_gemm_a8_cuda.py"] + sys.argv[1:]))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gemm_a8_cuda_sweep.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    md = [f"# CUDA W4A8 GEMM against Triton's, by M ({meta['gpu']})", "",
          f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, Triton {meta['triton']}. Medians of "
          "CUDA-graph replays, warm L2, bf16 out, no bias.", "",
          "| M | K | N | CUDA µs | Triton µs | Triton / CUDA |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['M']} | {r['K']} | {r['N']} | {r['cuda_us']:.1f} | {r['triton_us']:.1f} | "
           f"{r['triton_over_cuda']:.2f} |" for r in rows]
    with open(os.path.join(args.out, "gemm_a8_cuda_sweep.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
