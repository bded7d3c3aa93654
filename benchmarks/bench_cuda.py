"""The CUDA kernels (lrq_kernels._C) against the Triton kernels and cuBLAS, on the GPU, in one run.

    python benchmarks/bench_cuda.py [--out DIR]

1. rotate + per-token FP8 quantize (block Hadamard of rotation.default_block, as QuantLinear runs it) on every
   activation shape of dit_shapes.json: CUDA vs Triton vs naive PyTorch quantization (no rotation) vs
   fast-hadamard-transform (Hadamard alone, where it is installed); GB/s over bytes read + written, % of copy.
2. the small-M weight-only GEMM on the FLUX.1 shapes, M in {1, 4, 16}, 4- and 3-bit codes, per-channel and
   group-128 scales: CUDA vs Triton vs F.linear bf16 (cuBLAS); GB/s over the packed weight bytes, % of copy.
3. the whole weight-only QuantLinear forward (rotate + GEMM, bf16 in and out) on FLUX fc1 at M = 1 and 16.
4. (--only a16) the two ways of the weight-only forward from M = 32 up, 4-bit codes, block Hadamard: the token
   path (rotate every token, then the Triton GEMM that decodes codes) against the weight path (dequantize_weight:
   the weight with its rotation undone, one pass over N x K, then F.linear bf16), and F.linear bf16 alone; the
   dequantize_weight pass alone in GB/s over its bytes (packed + scales read, 2 NK written). Sets
   Tuning.a16_dequant_min_m.
5. (--only a8) the two ways of the W·A8 forward (rotate + FP8 quantize, then the GEMM; 4- and 3-bit codes) from
   M = 256 up: the kernel path (codes in the GEMM's K order, our Hopper GEMM that decodes the weight codes between
   its MMAs) against the weight path (decode_weight_e4m3: the codes as an FP8 matrix, one pass over N x K, then
   cuBLAS's FP8 GEMM with row-wise scales, torch._scaled_mm), with F.linear bf16 and torch._scaled_mm alone on
   pre-quantized operands; the decode pass alone in GB/s over its bytes (packed read, NK written). Sets
   Tuning.a8_dequant_min_m.
Every time is a median of CUDA-graph replays over copies of the data that do not fit in L2 (timing.py).
Results: results/bench_cuda.json and results/bench_cuda.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from timing import cold_us, copy_gbps, run_meta  # noqa: E402

from lrq_kernels import QuantConfig, QuantLinear, cuda as cuda_kernels, ops  # noqa: E402
from lrq_kernels.formats.codebooks import TLQGrid, tlq_codebook  # noqa: E402
from lrq_kernels.formats.packing import pack_codes  # noqa: E402
from lrq_kernels.rotation.rotation import default_block  # noqa: E402
import lrq_kernels.triton.gemm as triton_gemm  # noqa: E402
from lrq_kernels.triton.gemm import gemm_a16_triton  # noqa: E402
from lrq_kernels.triton.rotate_quant import rotate_quant_triton  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FLUX_GEMV = [("attn qkv", 3072, 3072), ("mlp fc1", 3072, 12288), ("mlp fc2", 12288, 3072),
             ("single proj_in", 3072, 21504), ("single proj_out", 15360, 3072)]


def naive_quant(x):
    s = x.abs().amax(dim=-1, keepdim=True).float() / 448.0
    return (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


def fht_or_none():
    try:
        from fast_hadamard_transform import hadamard_transform
        return hadamard_transform
    except ImportError:
        return None


def bench_rotate(m, k, copy_bw):
    block = default_block(k)
    nbytes = m * k * 2 + m * k + 4 * m
    x_ = pool_of(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    r = {"M": m, "K": k, "block": block}
    r["cuda_us"] = cold_us(lambda i: (lambda x=x_(i): cuda_kernels.rotate_quant_cuda(x, None, None, block, "fp8", 8)),
                           nbytes)
    r["triton_us"] = cold_us(lambda i: (lambda x=x_(i): rotate_quant_triton(x, None, None, block, "fp8", 8)), nbytes)
    r["naive_us"] = cold_us(lambda i: (lambda x=x_(i): naive_quant(x)), nbytes)
    # PyTorch's elementwise cast moves the same bytes (x read, one byte a value written) with nothing to compute:
    # what the memory does at this size, for comparison with the copy bandwidth (a 512 MiB bf16 copy).
    r["cast_us"] = cold_us(lambda i: (lambda x=x_(i): x.to(torch.float8_e4m3fn)), nbytes)
    perm = torch.randperm(k, device="cuda", dtype=torch.int32)      # QuantLinear's perm buffer is int32
    cs = torch.rand(k, device="cuda") + 0.5
    r["cuda_ars_us"] = cold_us(lambda i: (lambda x=x_(i): cuda_kernels.rotate_quant_cuda(x, perm, cs, block, "fp8", 8)),
                               nbytes)
    fht = fht_or_none()
    if fht is not None and (k & (k - 1)) == 0:
        r["fht_us"] = cold_us(lambda i: (lambda x=x_(i): fht(x, k ** -0.5)), 4 * m * k)
    for name in ("cuda", "triton", "cuda_ars", "cast"):
        r[f"{name}_pct_copy"] = 100 * nbytes / r[f"{name}_us"] / 1e3 / copy_bw
    r["cuda_over_triton"] = r["triton_us"] / r["cuda_us"]
    return r


def pool_of(base):
    """copy i of `base` (a tensor, a tuple of tensors or a module), made on first use; copy 0 is base itself."""
    import copy
    items = [base]

    def get(i):
        while len(items) <= i:
            items.append(copy.deepcopy(base))
        return items[i]
    return get


def bench_gemv(layer, k, n, m, bits, group, copy_bw):
    torch.manual_seed(0)
    cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
    codes = torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8)
    w = pool_of((pack_codes(codes, bits), torch.rand((n, k // group) if group else (n,), device="cuda") + 0.5))
    del codes
    wbytes = w(0)[0].numel() + 4 * w(0)[1].numel()
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    r = {"layer": layer, "M": m, "K": k, "N": n, "bits": bits, "group": group, "weight_MB": wbytes / 1e6}
    r["cuda_us"] = cold_us(lambda i: (lambda p=w(i): cuda_kernels.gemv_a16_cuda(x, p[0], p[1], cb, bits, group, None)),
                           wbytes)
    r["triton_us"] = cold_us(lambda i: (lambda p=w(i): gemm_a16_triton(x, p[0], p[1], cb, bits, group, None)), wbytes)
    del w
    wb = pool_of(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    r["bf16_us"] = cold_us(lambda i: (lambda t=wb(i): F.linear(x, t)), 2 * n * k)
    del wb
    torch.cuda.empty_cache()
    r["cuda_GBps"] = wbytes / r["cuda_us"] / 1e3
    r["cuda_pct_copy"] = 100 * r["cuda_GBps"] / copy_bw
    r["cuda_over_bf16"] = r["bf16_us"] / r["cuda_us"]
    r["triton_over_bf16"] = r["bf16_us"] / r["triton_us"]
    return r


def bench_forward(k, n, m, bits):
    """The weight-only QuantLinear forward (as dispatched: rotate then GEMM) against F.linear in bf16."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, bias=False, device="cuda")
    cfg = QuantConfig(w_bits=bits, a_bits=16, w_format="int", rotation="hadamard")
    q = pool_of(QuantLinear.from_linear(lin, cfg))
    wbytes = q(0).qweight.numel() + 4 * q(0).w_scales.numel()
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    us = cold_us(lambda i: (lambda layer=q(i): layer(x)), wbytes)
    del q
    wb = pool_of(lin.weight.detach().to(torch.bfloat16))
    bf16 = cold_us(lambda i: (lambda t=wb(i): F.linear(x, t)), 2 * n * k)
    torch.cuda.empty_cache()
    return {"M": m, "K": k, "N": n, "bits": bits, "fwd_us": us, "bf16_us": bf16, "speedup": bf16 / us,
            "weight_MB": wbytes / 1e6}


A16_SHAPES = [("pixart attn qkv/o", 1152, 1152), ("flux attn qkv", 3072, 3072), ("flux mlp fc1", 3072, 12288),
              ("flux mlp fc2", 12288, 3072)]


def path_inputs(layer, k, n, m, bits):
    """The inputs of the path comparisons (items 4 and 5): a TLQ codebook, a pool of random packed N x K weights with
    per-channel scales, its bytes, bf16 tokens [M, K], and the result row's keys."""
    torch.manual_seed(0)
    block = default_block(k)
    cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
    codes = torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8)
    w = pool_of((pack_codes(codes, bits), torch.rand(n, device="cuda") + 0.5))
    del codes
    wbytes = w(0)[0].numel() + 4 * n
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    return block, cb, w, wbytes, x, {"layer": layer, "M": m, "K": k, "N": n, "bits": bits, "block": block}


def bench_a16_paths(layer, k, n, m, copy_bw, bits=4):
    """Weight-only forward at M tokens: token path vs weight path vs bf16 (see the module docstring, item 4)."""
    block, cb, w, wbytes, x, r = path_inputs(layer, k, n, m, bits)

    def token_path(p):
        return gemm_a16_triton(ops.rotate(x, None, None, block), p[0], p[1], cb, bits, 0, None)

    def dequant(p):
        return cuda_kernels.unrotate_weight_cuda(p[0], p[1], cb, bits, k, 0, None, None, block, torch.bfloat16)

    r["token_path_us"] = cold_us(lambda i: (lambda p=w(i): token_path(p)), wbytes + 4 * m * k)
    if m <= triton_gemm.SPLIT_K_MAX_M:          # the same with the Triton GEMM's K unsplit, as before split-K
        saved, triton_gemm.SPLIT_K_MAX_M = triton_gemm.SPLIT_K_MAX_M, 0
        try:
            r["token_path_unsplit_us"] = cold_us(lambda i: (lambda p=w(i): token_path(p)), wbytes + 4 * m * k)
        finally:
            triton_gemm.SPLIT_K_MAX_M = saved
    r["weight_path_us"] = cold_us(lambda i: (lambda p=w(i): F.linear(x, dequant(p))), wbytes)
    r["dequant_us"] = cold_us(lambda i: (lambda p=w(i): dequant(p)), wbytes)
    del w
    wb = pool_of(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    r["bf16_us"] = cold_us(lambda i: (lambda t=wb(i): F.linear(x, t)), 2 * n * k)
    del wb
    torch.cuda.empty_cache()
    r["dequant_pct_copy"] = 100 * (wbytes + 2 * n * k) / r["dequant_us"] / 1e3 / copy_bw
    r["token_over_bf16"] = r["bf16_us"] / r["token_path_us"]
    r["weight_over_bf16"] = r["bf16_us"] / r["weight_path_us"]
    return r


A8_SHAPES = [("pixart mlp fc1", 1152, 4608), ("flux attn qkv", 3072, 3072), ("flux mlp fc1", 3072, 12288),
             ("flux mlp fc2", 12288, 3072)]


def bench_a8_paths(layer, k, n, m, bits, copy_bw):
    """W·A8 forward at M tokens: kernel path vs weight path vs bf16 and FP8 cuBLAS (module docstring, item 5)."""
    block, cb, w, wbytes, x, r = path_inputs(layer, k, n, m, bits)

    def kernel_path(p):
        xc, sx = cuda_kernels.rotate_quant_cuda(x, None, None, block, "fp8", 8, gemm_order=True)
        return cuda_kernels.gemm_a8_cuda(xc, sx, p[0], p[1], cb, bits, k, 0, None, torch.bfloat16, x_gemm_order=True)

    def decode(p):
        return cuda_kernels.decode_weight_e4m3_cuda(p[0], cb, bits, k)

    def weight_path(p):
        xc, sx = cuda_kernels.rotate_quant_cuda(x, None, None, block, "fp8", 8)
        return torch._scaled_mm(xc, decode(p).t(), scale_a=sx.reshape(-1, 1), scale_b=p[1].reshape(1, -1),
                                out_dtype=torch.bfloat16)

    r["kernel_path_us"] = cold_us(lambda i: (lambda p=w(i): kernel_path(p)), wbytes + 3 * m * k)
    r["weight_path_us"] = cold_us(lambda i: (lambda p=w(i): weight_path(p)), wbytes + 3 * m * k)
    r["decode_us"] = cold_us(lambda i: (lambda p=w(i): decode(p)), wbytes)
    w8 = pool_of(decode(w(0)))
    del w
    xc, sx = cuda_kernels.rotate_quant_cuda(x, None, None, block, "fp8", 8)
    sw = torch.rand(1, n, device="cuda") + 0.5
    r["fp8_gemm_us"] = cold_us(lambda i: (lambda t=w8(i): torch._scaled_mm(xc, t.t(), scale_a=sx.reshape(-1, 1),
                                                                            scale_b=sw, out_dtype=torch.bfloat16)),
                               n * k)
    del w8
    wb = pool_of(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    r["bf16_us"] = cold_us(lambda i: (lambda t=wb(i): F.linear(x, t)), 2 * n * k)
    del wb
    torch.cuda.empty_cache()
    r["decode_pct_copy"] = 100 * (wbytes - 4 * n + n * k) / r["decode_us"] / 1e3 / copy_bw
    r["kernel_over_bf16"] = r["bf16_us"] / r["kernel_path_us"]
    r["weight_over_bf16"] = r["bf16_us"] / r["weight_path_us"]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", choices=("all", "gemv", "rq", "a16", "a8"), default="all",
                    help="gemv / rq / a16 / a8: the small-M GEMV, the rotate+quantize, the weight-only or the W·A8 "
                         "paths table alone, into bench_cuda_<name>.*")
    args = ap.parse_args()
    assert cuda_kernels.available(), cuda_kernels.why_unavailable()
    with open(os.path.join(HERE, "dit_shapes.json")) as f:
        shapes = json.load(f)["gemm"]
    copy_bw = copy_gbps()
    print(f"copy {copy_bw:.0f} GB/s", flush=True)
    rot_shapes = sorted({(s["M"], s["K"]) for s in shapes if s["M"] >= 512}) if args.only in ("all", "rq") else []
    rot = []
    for m, k in rot_shapes:
        rot.append(bench_rotate(m, k, copy_bw))
        print({a: (round(b, 2) if isinstance(b, float) else b) for a, b in rot[-1].items()}, flush=True)
        torch.cuda.empty_cache()
    gemv = []
    for layer, k, n in (FLUX_GEMV if args.only in ("all", "gemv") else []):
        for m in (1, 4, 16):
            for bits, group in ((4, 0), (3, 0), (4, 128)):
                gemv.append(bench_gemv(layer, k, n, m, bits, group, copy_bw))
                print({a: (round(b, 2) if isinstance(b, float) else b) for a, b in gemv[-1].items()}, flush=True)
    fwd = [bench_forward(3072, 12288, m, bits) for m in (1, 16) for bits in (4, 3)] if args.only == "all" else []
    for r in fwd:
        print(r, flush=True)
    a16 = []
    for layer, k, n in (A16_SHAPES if args.only == "a16" else []):
        for m in (32, 64, 128, 256, 512, 1024, 4608):
            a16.append(bench_a16_paths(layer, k, n, m, copy_bw))
            print({a: (round(b, 2) if isinstance(b, float) else b) for a, b in a16[-1].items()}, flush=True)
    a8 = []
    for layer, k, n in (A8_SHAPES if args.only == "a8" else []):
        for m in (256, 512, 1024, 2048, 4608):
            for bits in (4, 3):
                a8.append(bench_a8_paths(layer, k, n, m, bits, copy_bw))
                print({a: (round(b, 2) if isinstance(b, float) else b) for a, b in a8[-1].items()}, flush=True)

    meta = run_meta(copy_GBps=copy_bw, fast_hadamard_transform=fht_or_none() is not None)
    os.makedirs(args.out, exist_ok=True)
    stem = "bench_cuda" if args.only == "all" else f"bench_cuda_{args.only}"
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "rotate_quant": rot, "gemv_a16": gemv, "forward_a16": fwd, "a16_paths": a16,
                   "a8_paths": a8}, f,
                  indent=1)
    md = [f"# CUDA kernels (lrq_kernels._C) on {meta['gpu']}", "",
          f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, Triton {meta['triton']}, CUDA {meta['cuda']}. "
          f"Medians of CUDA-graph replays over copies of the data larger than L2 together, µs. "
          f"Copy bandwidth in this run: {copy_bw:.0f} GB/s (read + write). fast-hadamard-transform installed: "
          f"{meta['fast_hadamard_transform']}."]
    if rot:     # --only gemv leaves out this section and the forward one
        md += ["", "## rotate + per-token FP8 quantize (block Hadamard)", "",
               "| M | K | block | CUDA µs (% copy) | Triton µs (% copy) | CUDA / Triton speed | CUDA with ARS gather "
               "(% copy) | naive PyTorch quantize, no rotation | x.to(fp8), the same bytes (% copy) |",
               "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rot:
        md.append(f"| {r['M']} | {r['K']} | {r['block']} | {r['cuda_us']:.1f} ({r['cuda_pct_copy']:.0f}%) | "
                  f"{r['triton_us']:.1f} ({r['triton_pct_copy']:.0f}%) | {r['cuda_over_triton']:.2f}× | "
                  f"{r['cuda_ars_us']:.1f} ({r['cuda_ars_pct_copy']:.0f}%) | {r['naive_us']:.1f} | "
                  f"{r['cast_us']:.1f} ({r['cast_pct_copy']:.0f}%) |")
    md += [] if not gemv else ["", "## small-M weight-only GEMM, FLUX.1 shapes", "",
           "| layer | K | N | M | bits | group | weight MB | CUDA µs (% copy) | Triton µs | bf16 µs | CUDA × bf16 "
           "| Triton × bf16 |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in gemv:
        md.append(f"| {r['layer']} | {r['K']} | {r['N']} | {r['M']} | {r['bits']} | {r['group'] or '–'} | "
                  f"{r['weight_MB']:.1f} | {r['cuda_us']:.1f} ({r['cuda_pct_copy']:.0f}%) | {r['triton_us']:.1f} | "
                  f"{r['bf16_us']:.1f} | {r['cuda_over_bf16']:.2f}× | {r['triton_over_bf16']:.2f}× |")
    if fwd:
        md += ["", "## weight-only QuantLinear forward (rotate + GEMM), FLUX fc1", "",
               "| M | bits | forward µs | bf16 µs | × bf16 |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in fwd:
        md.append(f"| {r['M']} | {r['bits']} | {r['fwd_us']:.1f} | {r['bf16_us']:.1f} | {r['speedup']:.2f}× |")
    if a16:
        md += ["", "## weight-only forward from M = 32: token path vs weight path (4-bit, block Hadamard)", "",
               "Token path: rotate every token (CUDA), then the Triton GEMM (its K split between programs up to M = "
               "SPLIT_K_MAX_M; 'unsplit': the same GEMM without). Weight path: dequantize_weight (CUDA, the "
               "weight with its rotation undone, bf16) then F.linear. % copy: dequantize_weight's bytes over its time.",
               "", "| layer | K | N | M | bf16 µs | token path µs (× bf16) | token path unsplit µs | "
               "weight path µs (× bf16) | dequantize_weight µs (% copy) |",
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in a16:
        unsplit = f"{r['token_path_unsplit_us']:.1f}" if "token_path_unsplit_us" in r else "–"
        md.append(f"| {r['layer']} | {r['K']} | {r['N']} | {r['M']} | {r['bf16_us']:.1f} | {r['token_path_us']:.1f} "
                  f"({r['token_over_bf16']:.2f}×) | {unsplit} | {r['weight_path_us']:.1f} "
                  f"({r['weight_over_bf16']:.2f}×) | {r['dequant_us']:.1f} ({r['dequant_pct_copy']:.0f}%) |")
    if a8:
        md += ["", "## W·A8 forward from M = 256: kernel path vs weight path (block Hadamard, FP8 activations)", "",
               "Kernel path: rotate + quantize (CUDA, codes in the GEMM's K order), then our Hopper GEMM. Weight path: "
               "rotate + quantize (CUDA), decode_weight_e4m3 (CUDA), torch._scaled_mm. FP8 GEMM: torch._scaled_mm "
               "alone on quantized operands. % copy: decode_weight_e4m3's bytes over its time.",
               "", "| layer | K | N | M | bits | bf16 µs | FP8 GEMM alone µs | kernel path µs (× bf16) | weight path µs "
               "(× bf16) | decode µs (% copy) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in a8:
        md.append(f"| {r['layer']} | {r['K']} | {r['N']} | {r['M']} | {r['bits']} | {r['bf16_us']:.1f} | "
                  f"{r['fp8_gemm_us']:.1f} | {r['kernel_path_us']:.1f} ({r['kernel_over_bf16']:.2f}×) | "
                  f"{r['weight_path_us']:.1f} ({r['weight_over_bf16']:.2f}×) | {r['decode_us']:.1f} "
                  f"({r['decode_pct_copy']:.0f}%) |")
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
