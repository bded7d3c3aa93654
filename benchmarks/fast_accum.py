"""cuBLAS's FP8 GEMM with and without fast accumulation (torch._scaled_mm(use_fast_accum=...)): speed and error, on
the shapes of benchmarks/dit_shapes.json with M >= Tuning.a8_dequant_min_m (where the W·A8 weight path runs it).

    python benchmarks/fast_accum.py [--out DIR]

Per shape: x [M, K] and W [N, K] of standard normals quantized to e4m3 with row-wise (per token, per channel)
scales; the GEMM's µs (median of CUDA-graph replays) with and without fast accumulation, and its relative error
(Frobenius) against the float64 product of the same codes and scales, in float32 and in bf16 output. This is what
Tuning.a8_fast_accum (opt-in) trades. Writes fast_accum.json and fast_accum.md with the GPU, versions, date and command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
from timing import bench_us, run_meta  # noqa: E402

from lrq_kernels import ops  # noqa: E402


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def measure(m: int, k: int, n: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda")
    sx = x.abs().amax(1, keepdim=True) / 448
    sw = w.abs().amax(1, keepdim=True) / 448
    xq, wq = (x / sx).to(torch.float8_e4m3fn), (w / sw).to(torch.float8_e4m3fn)
    del x, w
    ref = (xq.double() * sx.double()) @ (wq.double() * sw.double()).t()
    r = {"M": m, "K": k, "N": n}
    for tag, fast in (("exact", False), ("fast", True)):
        def gemm(dtype, fast=fast):
            return torch._scaled_mm(xq, wq.t(), sx, sw.t(), out_dtype=dtype, use_fast_accum=fast)
        r[f"{tag}_us"] = bench_us(lambda: gemm(torch.bfloat16))
        r[f"{tag}_err_fp32"] = rel_err(gemm(torch.float32), ref)
        r[f"{tag}_err_bf16"] = rel_err(gemm(torch.bfloat16), ref)
    r["speedup"] = r["exact_us"] / r["fast_us"]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    with open(os.path.join(HERE, "dit_shapes.json")) as f:
        shapes = [s for s in json.load(f)["gemm"] if s["M"] >= ops.get_tuning().a8_dequant_min_m]
    rows = []
    for s in shapes:
        r = measure(s["M"], s["K"], s["N"])
        r.update(model=s["model"], layer=s["layer"])
        rows.append(r)
        print({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
        torch.cuda.empty_cache()
    meta = run_meta()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fast_accum.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    md = [f"# cuBLAS FP8 GEMM, fast accumulation or not, on {meta['gpu']}", "",
          f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, CUDA {meta['cuda']}. torch._scaled_mm with "
          "row-wise scales, bf16 out, medians of CUDA-graph replays (µs); relative error against the float64 product "
          "of the same codes and scales.", "",
          "| model | layer | M | K | N | µs | µs fast | speed-up | error fp32 out | fast | error bf16 out | fast |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        md.append(f"| {r['model']} | {r['layer']} | {r['M']} | {r['K']} | {r['N']} | {r['exact_us']:.1f} | "
                  f"{r['fast_us']:.1f} | {r['speedup']:.2f}× | {r['exact_err_fp32']:.1e} | {r['fast_err_fp32']:.1e} | "
                  f"{r['exact_err_bf16']:.1e} | {r['fast_err_bf16']:.1e} |")
    with open(os.path.join(args.out, "fast_accum.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
