"""Linear-layer benchmark on the GPU: every shape of benchmarks/dit_shapes.json, all baselines in one run.

    python benchmarks/bench_linear.py [--out DIR] [--only SUBSTRING] [--note TEXT]

Per shape (M tokens, K in, N out), medians of CUDA-graph replays (triton.testing.do_bench_cudagraph, so launch
overhead is out of every number alike), each call on one of several copies of its data taken in turn, together
more than three times the L2 cache (timing.cold_us): every call reads its weights and activations from memory, as a
layer inside a model does. (Timing one copy, warm, would flatter the small-M rows: a 4-bit weight of 19 MB stays in
the 60 MB L2 between calls while bf16's 75 MB does not.)
  bf16      F.linear in bf16 (cuBLAS)
  fp8       torch._scaled_mm, FP8 e4m3 with row-wise scales (per token x per channel), GEMM alone (any M where
            this torch accepts it; "–" where it refuses)
  naive-q   per-token absmax -> FP8 cast in plain PyTorch ops (what a user gets without a fused kernel)
  rq        our fused rotate (block Hadamard) + per-token FP8 quantize, alone; GB/s over bytes read + written
  gemm W4A8 / W3A8   ops.gemm_a8 alone on FP8 codes in natural K order, as dispatched (from Tuning.a8_dequant_min_m:
            decode_weight_e4m3 + torch._scaled_mm)
  kernel W4A8 / W3A8 our Hopper GEMM kernel alone (csrc/gemm_a8_sm90.cu) on the same codes, at every M
  fwd W4A8 / W3A8 / W4A16 / W3A16   the whole QuantLinear forward, bf16 in and out
  fwd W4A8 fast-accum   the W4A8 forward with the opt-in Tuning.a8_fast_accum (only where the weight path runs,
            M >= Tuning.a8_dequant_min_m; its error: benchmarks/fast_accum.py)
Ceilings measured in the same run: device-to-device copy bandwidth, bf16 and FP8 8192^3 GEMM rates.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from timing import bench_us, cold_us, copies_for, copy_gbps, run_meta  # noqa: E402

from lrq_kernels import QuantConfig, QuantLinear, cuda as cuda_kernels, ops  # noqa: E402
from lrq_kernels.rotation.rotation import default_block  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def ceilings():
    copy_gbs = copy_gbps()
    s = 8192
    x = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
    bf16_tf = 2 * s ** 3 / bench_us(lambda: F.linear(x, w)) / 1e6
    xf, wf = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
    sa = torch.ones(s, 1, device="cuda")
    sb = torch.ones(1, s, device="cuda")
    fp8_tf = 2 * s ** 3 / bench_us(lambda: torch._scaled_mm(xf, wf.t(), sa, sb, out_dtype=torch.bfloat16)) / 1e6
    return {"copy_GBps": copy_gbs, "bf16_TFLOPs": bf16_tf, "fp8_rowwise_TFLOPs": fp8_tf}


def naive_quant(x):
    s = x.abs().amax(dim=-1, keepdim=True).float() / 448.0
    return (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


def copies(t, nbytes):
    """t and clones of it: as many as cold_us makes calls for a call of nbytes (timing.copies_for)."""
    return [t] + [t.clone() for _ in range(copies_for(nbytes) - 1)]


def cold(call, nbytes, *lists):
    """µs of call(a, b, ...) where call i takes item i of each list (timing.cold_us, nbytes a call). Each list holds
    at least copies_for(nbytes) distinct copies, so the calls of one round touch more than three L2s of data."""
    return cold_us(lambda i: (lambda items=[lst[i % len(lst)] for lst in lists]: call(*items)), nbytes)


def bench_shape(m, k, n, ceil):
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.float32)
    w_bf16 = lin.weight.detach().to(torch.bfloat16)
    flop = 2 * m * k * n
    r = {"M": m, "K": k, "N": n}
    xs = copies(x, 2 * m * k)                 # the most copies any call below needs
    r["bf16_us"] = cold(F.linear, 2 * m * k + 2 * n * k, xs, copies(w_bf16, 2 * m * k + 2 * n * k))
    xfs = [t.to(torch.float8_e4m3fn) for t in xs[:copies_for(m * k + n * k)]]
    wfs = copies(w_bf16.to(torch.float8_e4m3fn), m * k + n * k)
    sa = torch.rand(m, 1, device="cuda")
    sb = torch.rand(1, n, device="cuda")
    try:
        r["fp8_us"] = cold(lambda a, b: torch._scaled_mm(a, b.t(), sa, sb, out_dtype=torch.bfloat16),
                           m * k + n * k, xfs, wfs)
    except RuntimeError as e:          # older torch / cuBLAS: M % 16 != 0 refused
        print(f"torch._scaled_mm refused M={m}: {e}", flush=True)
    del xfs, wfs
    r["naive_q_us"] = cold(naive_quant, 2 * m * k, xs)
    block = default_block(k)
    r["block"] = block
    rq_bytes = m * k * 2 + m * k + m * 4
    r["rq_us"] = cold(lambda a: ops.rotate_quant(a, None, None, block, "fp8", 8), rq_bytes, xs)
    r["rq_GBps"] = rq_bytes / r["rq_us"] / 1e3
    r["rq_pct_copy"] = 100 * r["rq_GBps"] / ceil["copy_GBps"]
    perm = torch.randperm(k, device="cuda", dtype=torch.int32)      # QuantLinear's perm buffer is int32
    cs = torch.rand(k, device="cuda") + 0.5
    r["rq_ars_us"] = cold(lambda a: ops.rotate_quant(a, perm, cs, block, "fp8", 8), rq_bytes, xs)
    for bits in (4, 3):
        for a_bits in (8, 16):
            cfg = QuantConfig(w_bits=bits, a_bits=a_bits, w_format="int", rotation="hadamard")
            q = QuantLinear.from_linear(lin, cfg)
            tag = f"W{bits}A{a_bits}"
            wbytes = q.qweight.numel() + q.w_scales.numel() * 4
            fwd_bytes = 2 * m * k + wbytes
            qs = [q] + [copy.deepcopy(q) for _ in range(copies_for(fwd_bytes) - 1)]
            if a_bits == 8:
                gemm_bytes = m * k + wbytes
                codes = [ops.rotate_quant(a, None, None, block, "fp8", 8) for a in xs[:copies_for(gemm_bytes)]]
                r[f"gemm_{tag}_us"] = cold(lambda c, qq: ops.gemm_a8(c[0], c[1], qq.qweight, qq.w_scales, qq.codebook,
                                                                    bits, k, 0, None, torch.bfloat16),
                                           gemm_bytes, codes, qs)
                if not cuda_kernels.gemm_a8_unsupported(m, k, n, bits, 0, codes[0][0].dtype, codes[0][0].device):
                    r[f"kernel_{tag}_us"] = cold(lambda c, qq: cuda_kernels.gemm_a8_cuda(
                        c[0], c[1], qq.qweight, qq.w_scales, qq.codebook, bits, k, 0, None, torch.bfloat16),
                        gemm_bytes, codes, qs)
                del codes
            r[f"fwd_{tag}_us"] = cold(lambda a, qq: qq(a), fwd_bytes, xs, qs)
            if tag == "W4A8" and m >= ops.get_tuning().a8_dequant_min_m:
                with ops.tuning(a8_fast_accum=True):
                    r["fwd_W4A8_fast_us"] = cold(lambda a, qq: qq(a), fwd_bytes, xs, qs)
            if a_bits == 16:
                r[f"fwd_{tag}_weight_GBps"] = (wbytes + m * k * 2 + m * n * 2) / r[f"fwd_{tag}_us"] / 1e3
                r[f"fwd_{tag}_pct_copy"] = 100 * r[f"fwd_{tag}_weight_GBps"] / ceil["copy_GBps"]
            del q, qs
    r["bf16_TFLOPs"] = flop / r["bf16_us"] / 1e6
    r["gemm_W4A8_TFLOPs"] = flop / r["gemm_W4A8_us"] / 1e6
    for tag in ("W4A8", "W3A8", "W4A16", "W3A16", "W4A8_fast"):
        if f"fwd_{tag}_us" in r:
            r[f"speedup_{tag}"] = r["bf16_us"] / r[f"fwd_{tag}_us"]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", default="")
    ap.add_argument("--note", default="", help="a sentence for the results' header (what this run is)")
    args = ap.parse_args()
    with open(os.path.join(HERE, "dit_shapes.json")) as f:
        shapes = [s for s in json.load(f)["gemm"] if args.only in f"{s['model']} {s['layer']}"]
    ceil = ceilings()
    print("ceilings:", {k: round(v, 1) for k, v in ceil.items()}, flush=True)
    rows = []
    for s in shapes:
        r = bench_shape(s["M"], s["K"], s["N"], ceil)
        r.update(model=s["model"], layer=s["layer"])
        rows.append(r)
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
        torch.cuda.empty_cache()

    meta = run_meta(ceilings=ceil, note=args.note)
    write_results(meta, rows, args.out)


def summary(rows) -> list[str]:
    """The issue's acceptance ratios, from the rows of one run."""
    def geomean(xs):
        return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
    big = [r for r in rows if r["model"].split("-")[0] in ("flux.1", "sd3.5", "wan2.1")]
    pixart = [r for r in rows if r["model"] == "pixart-sigma"]
    flux = [r for r in rows if r["model"] == "flux.1-dev"]
    w3 = [r["fwd_W3A8_us"] / r["fwd_W4A8_us"] for r in rows]
    large = [r["speedup_W4A16"] for r in rows if r["M"] >= 4096]
    if not (big and flux):
        return []
    return [f"- W4A8 forward over bf16, geometric mean over FLUX.1, SD3.5 and Wan: "
            f"{geomean([r['speedup_W4A8'] for r in big]):.2f}× (PixArt-Σ 1024²: "
            f"{geomean([r['speedup_W4A8'] for r in pixart]):.2f}×)",
            f"- W4A8 forward faster than cuBLAS FP8 GEMM alone on "
            f"{sum(r['fwd_W4A8_us'] < r.get('fp8_us', 0) for r in flux)}"
            f" of {len(flux)} FLUX shapes",
            f"- with Tuning.a8_fast_accum (opt-in): geometric mean "
            f"{geomean([r['speedup_W4A8_fast'] for r in big if 'speedup_W4A8_fast' in r]):.2f}× (PixArt-Σ 1024²: "
            f"{geomean([r['speedup_W4A8_fast'] for r in pixart if 'speedup_W4A8_fast' in r]):.2f}×); faster than "
            f"cuBLAS FP8 GEMM alone (without fast accumulation) on "
            f"{sum(r.get('fwd_W4A8_fast_us', 1e30) < r.get('fp8_us', 0) for r in flux)} of {len(flux)} FLUX shapes",
            f"- W3A8 forward time over W4A8: {min(w3):.2f}× to {max(w3):.2f}×",
            f"- W4A16 forward over bf16 at M ≥ 4096: {min(large):.2f}× to {max(large):.2f}×"]


def write_results(meta, rows, out):
    """bench_linear.json and bench_linear.md under out."""
    ceil = meta["ceilings"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench_linear.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    md = [f"# Linear layers on {meta['gpu']}", "",
          f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, Triton {meta['triton']}, CUDA {meta['cuda']}. "
          f"Medians of CUDA-graph replays over copies of the data larger than L2 together (cold), µs. "
          f"Ceilings in this run: copy {ceil['copy_GBps']:.0f} GB/s, "
          f"bf16 {ceil['bf16_TFLOPs']:.0f} TFLOP/s, FP8 row-wise {ceil['fp8_rowwise_TFLOPs']:.0f} TFLOP/s."
          + (f" {meta['note']}" if meta.get("note") else ""), "",
          "| model | layer | M | K | N | bf16 | fp8 GEMM | naive-q | rq (% copy) | gemm W4A8 | gemm W3A8 "
          "| kernel W4A8 | kernel W3A8 | fwd W4A8 (× bf16) | fwd W3A8 (× W4A8) | fwd W4A16 (× bf16) | fwd W3A16 (× bf16) "
          "| fwd W4A8 fast-accum (× bf16) |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: | ---: |"]

    def us(r, key):
        return f"{r[key]:.1f}" if key in r else "–"
    for r in rows:
        md.append(f"| {r['model']} | {r['layer']} | {r['M']} | {r['K']} | {r['N']} | {r['bf16_us']:.1f} | "
                  f"{us(r, 'fp8_us')} | {r['naive_q_us']:.1f} | {r['rq_us']:.1f} ({r['rq_pct_copy']:.0f}%) | "
                  f"{r['gemm_W4A8_us']:.1f} | {r['gemm_W3A8_us']:.1f} | {us(r, 'kernel_W4A8_us')} | "
                  f"{us(r, 'kernel_W3A8_us')} | {r['fwd_W4A8_us']:.1f} ({r['speedup_W4A8']:.2f}×) | "
                  f"{r['fwd_W3A8_us']:.1f} ({r['fwd_W3A8_us'] / r['fwd_W4A8_us']:.2f}×) | "
                  f"{r['fwd_W4A16_us']:.1f} ({r['speedup_W4A16']:.2f}×) | {r['fwd_W3A16_us']:.1f} "
                  f"({r['speedup_W3A16']:.2f}×) | "
                  + (f"{r['fwd_W4A8_fast_us']:.1f} ({r['speedup_W4A8_fast']:.2f}×) |" if "fwd_W4A8_fast_us" in r
                     else "– |"))
    md += [""] + summary(rows)
    with open(os.path.join(out, "bench_linear.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
