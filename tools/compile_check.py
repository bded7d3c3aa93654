"""Compile the Triton kernels for sm_90 on a machine without a GPU, before spending device time: catches compile
errors and shows what the GPU would run. For each GEMM variant it prints the instructions of the main K loop in
SASS (disassembled with the nvdisasm that ships in Triton's wheel): the tensor-core ops, the decode's byte
permutes and logic ops, shared-memory traffic, float32 adds. A static count, not a timing; on the H100 the K loop
of the 4-bit GEMM went from 798 to 353 instructions (select -> prmt decode) and from 935 to 550 us on FLUX fc2.

    python tools/compile_check.py            # rotate+quantize, then the GEMM variants
"""
import collections
import math
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lrq_kernels.triton.gemm import _gemm_kernel  # noqa: E402
from lrq_kernels.triton.rotate_quant import _rotate_quant_kernel  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def compile_kernel(fn, sig, constexprs, divisible, warps, stages=3):
    """Compile as a launch would: Triton specializes pointers and ints that are multiples of 16 (the DiT shapes'
    are), which is what lets it vectorize loads and pipeline them with cp.async."""
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})


def sass_main_loop(kernel):
    """Opcode counts of the largest backward-branch loop that contains a tensor-core op (the K loop): wgmma
    (QGMMA fp8, HGMMA 16-bit) or mma.sync (HMMA, QMMA)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    sass = subprocess.run([NVDISASM, "-c", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    ins, labels, pending = [], {}, []
    for line in sass.splitlines():
        m = re.match(r"\s*\.L_x_(\d+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                labels[name] = addr
            pending = []
            ins.append((addr, m.group(2)))
    body = []
    for addr, text in ins:
        m = re.search(r"BRA\s+`\(\.L_x_(\d+)\)", text)
        if m and labels.get(m.group(1), addr + 1) < addr:
            loop = [t for a, t in ins if labels[m.group(1)] <= a <= addr]
            if any("MMA" in t for t in loop) and len(loop) > len(body):
                body = loop
    return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body), len(body)


def rotate_quant(block, nbp, block_m, fp8=True, warps=8):
    sig = {"x_ptr": "*bf16", "perm_ptr": "*i32", "cs_ptr": "*fp32", "codes_ptr": "*fp8e4nv" if fp8 else "*i8",
           "scales_ptr": "*fp32", "M": "i32", "K": "i32", "stride_xm": "i32", "stride_cm": "i32",
           "HAS_PERM": "constexpr", "HAS_SCALE": "constexpr", "B": "constexpr", "LOG_B": "constexpr",
           "NBP": "constexpr", "BLOCK_M": "constexpr", "QMAX": "constexpr", "IS_FP8": "constexpr",
           "INTERPRET": "constexpr"}
    cst = {"HAS_PERM": False, "HAS_SCALE": False, "B": block, "LOG_B": int(math.log2(block)), "NBP": nbp,
           "BLOCK_M": block_m, "QMAX": 448.0 if fp8 else 127.0, "IS_FP8": fp8, "INTERPRET": False}
    k = compile_kernel(_rotate_quant_kernel, sig, cst, ["x_ptr", "codes_ptr", "K", "stride_xm", "stride_cm"], warps)
    ptx = k.asm["ptx"]
    print(f"rotate_quant B={block} NBP={nbp} BLOCK_M={block_m} fp8={fp8}: smem {k.metadata.shared} "
          f"local ld/st {len(re.findall(r'ld.local|st.local', ptx))} bar.sync {len(re.findall('bar.sync', ptx))}")
    return k


def gemm(bits, dot, tile, a16=False, group=0, k=3072, prmt=True, fp32_steps=True, swap=False):
    bm, bn, bk, warps, stages = tile
    sig = {"a_ptr": "*bf16" if a16 else "*fp8e4nv", "sa_ptr": "*fp32", "w_ptr": "*u8", "sw_ptr": "*fp32",
           "cb_ptr": "*i32", "bias_ptr": "*fp32", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "constexpr",
           "row_bytes": "i32", "hi_offset": "i32", "stride_am": "i32", "stride_cm": "i32", "n_groups": "i32",
           "M_BUCKET": "i32", "BITS": "constexpr", "GROUP": "constexpr", "HAS_BIAS": "constexpr",
           "HAS_SA": "constexpr", "DOT_DTYPE": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
           "BLOCK_K": "constexpr", "GROUP_M": "constexpr", "USE_PRMT": "constexpr", "USE_PRMT3": "constexpr",
           "FP32_STEPS": "constexpr", "SWAP_AB": "constexpr", "SPLIT_K": "constexpr"}
    cst = {"K": k, "BITS": bits, "GROUP": group, "HAS_BIAS": True, "HAS_SA": not a16, "DOT_DTYPE": dot,
           "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "USE_PRMT": prmt, "USE_PRMT3": prmt,
           "FP32_STEPS": fp32_steps and not a16, "SWAP_AB": swap, "SPLIT_K": 1}
    divisible = ["a_ptr", "sa_ptr", "w_ptr", "sw_ptr", "cb_ptr", "bias_ptr", "c_ptr", "N", "row_bytes", "hi_offset",
                 "stride_am", "stride_cm"]
    kern = compile_kernel(_gemm_kernel, sig, cst, divisible, warps, stages)
    ops, n = sass_main_loop(kern)
    ptx = kern.asm["ptx"]
    reg_a = bool(re.search(r"wgmma\.mma_async[^;]*?\}\s*,\s*\{", ptx.replace("\n", " ")))
    keys = ["QGMMA", "HGMMA", "HMMA", "QMMA", "PRMT", "LOP3", "SHF", "SEL", "STS", "LDS", "LDGSTS", "FADD", "BAR",
            "WARPGROUP"]
    name = (f"W{bits}A{16 if a16 else 8} tile {tile} group {group} prmt {int(prmt)} fp32-steps "
            f"{int(fp32_steps and not a16)} swap {int(swap)}")
    print(f"{name:78s} loop {n:4d}  " + " ".join(f"{key} {ops.get(key, 0)}" for key in keys)
          + f"  smem {kern.metadata.shared}  A in registers {reg_a}", flush=True)
    return kern


def main():
    for args in [(128, 16, 1), (1024, 16, 1), (64, 1, 16), (512, 16, 1)]:
        rotate_quant(*args)
    k = rotate_quant(128, 16, 1, fp8=False)
    print("rotate_quant int8: mul.rn in PTX (no FMA contraction of the scaling):", "mul.rn.f32" in k.asm["ptx"])
    big, big_k256, small = (128, 128, 128, 8, 3), (128, 128, 256, 8, 3), (16, 64, 128, 4, 4)
    for bits in (4, 3):
        for prmt in (False, True):
            for swap in (False, True):
                gemm(bits, tl.float8e4nv, big, prmt=prmt, swap=swap)
        gemm(bits, tl.float8e4nv, big, fp32_steps=False)               # the chained FP8 accumulation, for scale
        gemm(bits, tl.float8e4nv, big_k256)
    gemm(4, tl.float8e4nv, small)
    gemm(4, tl.float8e4nv, small, swap=True)
    gemm(4, tl.float8e4nv, (128, 128, 64, 8, 3), group=64)
    for swap in (False, True):
        gemm(4, tl.bfloat16, (128, 128, 64, 8, 3), a16=True, swap=swap)
        gemm(4, tl.bfloat16, (16, 64, 64, 4, 4), a16=True, swap=swap)


if __name__ == "__main__":
    main()
