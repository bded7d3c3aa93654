"""Two builds of lrq_kernels._C timed in one process on the same data: an A/B of a kernel change, with no
machine-to-machine drift between the two numbers.

    git archive OLD_COMMIT csrc CMakeLists.txt | (mkdir -p old && tar -x -C old)
    cmake -S old -B old/build -G Ninja -Dpybind11_DIR=$(python -m pybind11 --cmakedir) \
          -DLRQ_OUTPUT_DIR=$PWD/old/lrq_kernels && cmake --build old/build
    python benchmarks/ab_cuda.py --old old/lrq_kernels/_C*.so [gemv] [rq] [dequant] [--name N] [--out DIR]

"new" is the package's own build. Each time is the smaller of two medians (old, new, old, new in turn) of
CUDA-graph replays over copies of the data larger than L2 together (timing.cold_us), as bench_cuda.py times.
  gemv: the small-M weight-only GEMM, FLUX qkv / fc1 / fc2 / proj_out, M = 1 and 16, 4-bit, 3-bit, 4-bit group 128
  rq:   rotate + per-token FP8 quantize (block of rotation.default_block), plain and with the ARS gather (an int32
        permutation and channel scales, as QuantLinear keeps them; older builds get them in the layout they read)
  a16fwd: the weight-only forward at small M (ops.quant_linear_a16: rotate, then the GEMV, or the GEMV rotating x
        itself), FLUX qkv / fc1 / fc2 / proj_out, M = 1, 4 and 16, 4-bit and 3-bit per channel, block Hadamard
        (rotation.default_block), and at M = 1 also with the ARS gather
  dequant: dequantize_weight (4- and 3-bit, per-channel scales, the weight with its block Hadamard undone, bf16
        out) on the weights of PixArt and FLUX qkv, FLUX fc1 / fc2 / proj_out and Wan fc2 (builds that have dequantize_weight)
Writes NAME.json and NAME.md (default ab_cuda) with the GPU, versions, date and this command.
"""
from __future__ import annotations

import argparse
import glob
import importlib.machinery
import importlib.util
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
from timing import cold_us, copy_gbps, run_meta  # noqa: E402

import lrq_kernels.cuda as ck  # noqa: E402
from lrq_kernels.formats.codebooks import TLQGrid, tlq_codebook  # noqa: E402
from lrq_kernels.formats.packing import pack_codes  # noqa: E402
from lrq_kernels.rotation.rotation import default_block  # noqa: E402

GEMV_SHAPES = ((3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072))
RQ_SHAPES = ((4608, 3072), (4608, 12288), (8192, 1152), (8192, 4608), (32760, 5120), (512, 1152), (8858, 2432),
             (32760, 13824))
DEQUANT_SHAPES = ((1152, 1152), (3072, 3072), (12288, 3072), (3072, 12288), (3072, 15360), (5120, 13824))   # N, K


def load_build(path: str):
    """The extension module at `path`, loaded beside the package's own (pybind11 functions only, no types)."""
    loader = importlib.machinery.ExtensionFileLoader("_C", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("_C", loader))
    loader.exec_module(module)
    return module


def old_and_new(old, make_call, nbytes):
    """{'old': µs, 'new': µs}; lrq_kernels.cuda's wrappers run whichever build is swapped in as its _C."""
    new, times = ck._C, {"old": [], "new": []}
    try:
        for name, build in (("old", old), ("new", new), ("old", old), ("new", new)):
            ck._C = build
            times[name].append(cold_us(make_call, nbytes))
    finally:
        ck._C = new
    return {name: min(t) for name, t in times.items()}


def ab_gemv(old):
    rows = []
    for k, n in GEMV_SHAPES:
        for m in (1, 16):
            for bits, group in ((4, 0), (3, 0), (4, 128)):
                cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
                ws = [(pack_codes(torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8), bits),
                       torch.rand((n, k // group) if group else (n,), device="cuda") + 0.5) for _ in range(8)]
                wbytes = ws[0][0].numel() + 4 * ws[0][1].numel()
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                r = old_and_new(old, lambda i: (lambda p=ws[i % 8]: ck.gemv_a16_cuda(x, p[0], p[1], cb, bits, group,
                                                                                     None)), wbytes)
                r.update(K=k, N=n, M=m, bits=bits, group=group)
                print(r, flush=True)
                rows.append(r)
    return rows


def rq_fp8(x, perm, cs, block):
    """FP8 rotate+quantize through whichever build is swapped in as ck._C. Builds that take gather tables read the int16
    tables (cuda.rotate_quant_cuda); older ones take positional arguments, the ARS gather's indices as int32
    and its scales in natural order (perm, cs: int32 and float32 tensors, or None)."""
    if "perm16" in (ck._C.rotate_quant.__doc__ or ""):
        return ck.rotate_quant_cuda(x, perm, cs, block, "fp8", 8)
    m, k = x.shape
    out = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty((m,), dtype=torch.float32, device=x.device)
    ptr = (lambda t: 0 if t is None else t.data_ptr())
    ck._C.rotate_quant(x.data_ptr(), x.stride(0), 0, ptr(perm), ptr(cs), out.data_ptr(), out.stride(0),
                       scales.data_ptr(), m, k, block, ck._C.OUT_FP8, 448.0, x.device.index,
                       torch.cuda.current_stream().cuda_stream, False)
    return out, scales


def ab_a16fwd(old):
    from lrq_kernels import ops
    rows = []
    for k, n in GEMV_SHAPES:
        block = default_block(k)
        perm = torch.randperm(k, device="cuda", dtype=torch.int32)
        cs = torch.rand(k, device="cuda") + 0.5
        for m, bits, ars in ((1, 4, False), (1, 3, False), (1, 4, True), (4, 4, False), (16, 4, False),
                             (16, 3, False)):
            cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
            ws = [(pack_codes(torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8), bits),
                   torch.rand(n, device="cuda") + 0.5) for _ in range(8)]
            wbytes = ws[0][0].numel() + 4 * n
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            rot = (perm, cs) if ars else (None, None)
            r = old_and_new(old, lambda i: (lambda p=ws[i % 8]: ops.quant_linear_a16(
                x, *rot, block, p[0], p[1], cb, bits, 0, None)), wbytes)
            r.update(K=k, N=n, M=m, bits=bits, group=0, ars=ars)
            print(r, flush=True)
            rows.append(r)
    return rows


def ab_rq(old, copy):
    rows = []
    for m, k in RQ_SHAPES:
        block = default_block(k)
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
        nbytes = m * k * 3 + 4 * m                       # read bf16, write e4m3 codes and float32 scales
        r = old_and_new(old, lambda i: (lambda t=xs[i % 4]: rq_fp8(t, None, None, block)), nbytes)
        perm = torch.randperm(k, device="cuda", dtype=torch.int32)
        cs = torch.rand(k, device="cuda") + 0.5
        g = old_and_new(old, lambda i: (lambda t=xs[i % 4]: rq_fp8(t, perm, cs, block)), nbytes)
        r.update(M=m, K=k, block=block, old_ars=g["old"], new_ars=g["new"],
                 old_pct_copy=100 * nbytes / r["old"] / 1e3 / copy, new_pct_copy=100 * nbytes / r["new"] / 1e3 / copy)
        print(r, flush=True)
        rows.append(r)
    return rows


def ab_dequant(old, copy):
    rows = []
    for bits in (4, 3):
        for n, k in DEQUANT_SHAPES:
            block = default_block(k)
            cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
            ws = [(pack_codes(torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8), bits),
                   torch.rand(n, device="cuda") + 0.5) for _ in range(4)]
            nbytes = n * k * bits // 8 + 4 * n + 2 * n * k            # read codes and scales, write bf16
            r = old_and_new(old, lambda i: (lambda p=ws[i % 4]: ck.unrotate_weight_cuda(
                p[0], p[1], cb, bits, k, 0, None, None, block, torch.bfloat16)), nbytes)
            r.update(N=n, K=k, bits=bits, block=block, old_pct_copy=100 * nbytes / r["old"] / 1e3 / copy,
                     new_pct_copy=100 * nbytes / r["new"] / 1e3 / copy)
            print(r, flush=True)
            rows.append(r)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", help="gemv, a16fwd, rq and/or dequant (default: gemv and rq)")
    ap.add_argument("--old", required=True, help="path (or glob) of the other build's _C*.so")
    ap.add_argument("--name", default="ab_cuda")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    args.what = args.what or ["gemv", "rq"]
    if set(args.what) - {"gemv", "a16fwd", "rq", "dequant"}:
        ap.error(f"what: gemv, a16fwd, rq and/or dequant, got {args.what}")
    assert ck.available(), ck.why_unavailable()
    paths = sorted(glob.glob(args.old))
    if not paths:
        ap.error(f"--old: no file matches {args.old!r} (build the other commit first, see above)")
    if not torch.cuda.is_available():
        sys.exit("ab_cuda: needs a CUDA GPU")
    old = load_build(paths[0])
    copy = copy_gbps()
    gemv = ab_gemv(old) if "gemv" in args.what else []
    a16fwd = ab_a16fwd(old) if "a16fwd" in args.what else []
    rq = ab_rq(old, copy) if "rq" in args.what else []
    dequant = ab_dequant(old, copy) if "dequant" in args.what else []
    meta = run_meta(copy_GBps=copy)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump({"meta": meta, "gemv_a16": gemv, "quant_linear_a16": a16fwd, "rotate_quant": rq,
                   "dequantize_weight": dequant}, f, indent=1)
    md = [f"# A/B of two lrq_kernels._C builds on {meta['gpu']}", "",
          f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, Triton {meta['triton']}, CUDA {meta['cuda']}. "
          f"µs, the smaller of two medians of CUDA-graph replays over copies larger than L2; copy {copy:.0f} GB/s."]
    if gemv:
        md += ["", "| K | N | M | bits | group | old µs | new µs | new / old |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        md += [f"| {r['K']} | {r['N']} | {r['M']} | {r['bits']} | {r['group'] or '–'} | {r['old']:.2f} | {r['new']:.2f} | "
               f"{r['new'] / r['old']:.2f} |" for r in gemv]
    if a16fwd:
        md += ["", "Weight-only forward (ops.quant_linear_a16: rotate + GEMV, or the GEMV rotating x itself):", "",
               "| K | N | M | bits | rotation | old µs | new µs | new / old |",
               "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        md += [f"| {r['K']} | {r['N']} | {r['M']} | {r['bits']} | {'ARS' if r.get('ars') else 'Hadamard'} | "
               f"{r['old']:.2f} | {r['new']:.2f} | {r['new'] / r['old']:.2f} |" for r in a16fwd]
    if rq:
        md += ["", "| M | K | block | old µs (% copy) | new µs (% copy) | new / old | ARS old µs | ARS new µs | ARS new / old |",
               "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        md += [f"| {r['M']} | {r['K']} | {r['block']} | {r['old']:.1f} ({r['old_pct_copy']:.0f}%) | {r['new']:.1f} "
               f"({r['new_pct_copy']:.0f}%) | {r['new'] / r['old']:.2f} | {r['old_ars']:.1f} | {r['new_ars']:.1f} | "
               f"{r['new_ars'] / r['old_ars']:.2f} |" for r in rq]
    if dequant:
        md += ["", "| N | K | bits | block | old µs (% copy) | new µs (% copy) | new / old |",
               "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        md += [f"| {r['N']} | {r['K']} | {r.get('bits', 4)} | {r['block']} | {r['old']:.1f} ({r['old_pct_copy']:.0f}%) | {r['new']:.1f} "
               f"({r['new_pct_copy']:.0f}%) | {r['new'] / r['old']:.3f} |" for r in dequant]
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
