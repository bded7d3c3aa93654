"""Compile the Triton kernels for sm_90 on a machine without a GPU (catches compile errors, shows wgmma use,
shared memory and local-memory traffic) before spending device time: python tools/compile_check.py"""
import sys, triton, torch
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lrq_kernels.triton.rotate_quant import _rotate_quant_kernel
from lrq_kernels.triton.gemm import _gemm_kernel
import triton.language as tl
tgt = GPUTarget("cuda", 90, 32)
def rq(B, NBP, BM, fp8=True, perm=False, scale=False, warps=8):
    sig = {"x_ptr": "*bf16", "perm_ptr": "*i32", "cs_ptr": "*fp32", "codes_ptr": "*fp8e4nv" if fp8 else "*i8", "scales_ptr": "*fp32",
           "M": "i32", "K": "i32", "stride_xm": "i32", "stride_cm": "i32",
           "HAS_PERM": "constexpr", "HAS_SCALE": "constexpr", "B": "constexpr", "LOG_B": "constexpr", "NBP": "constexpr", "BLOCK_M": "constexpr", "QMAX": "constexpr", "IS_FP8": "constexpr", "INTERPRET": "constexpr"}
    import math
    cst = {"HAS_PERM": perm, "HAS_SCALE": scale, "B": B, "LOG_B": int(math.log2(B)), "NBP": NBP, "BLOCK_M": BM, "QMAX": 448.0 if fp8 else 127.0, "IS_FP8": fp8, "INTERPRET": False}
    src = ASTSource(fn=_rotate_quant_kernel, signature=sig, constexprs=cst)
    k = triton.compile(src, target=tgt, options={"num_warps": warps})
    return k
for args in [(128, 16, 1), (1024, 16, 1), (64, 1, 16), (512,16,1)]:
    k = rq(*args)
    import re; ptx = k.asm["ptx"]; print("rq", args, "smem", k.metadata.shared, "local(ld/st.local)", len(re.findall(r"ld.local|st.local", ptx)), "bar.sync", len(re.findall("bar.sync", ptx)), "ptx lines", ptx.count(chr(10)))
k = rq(128, 16, 1, fp8=False); print("rq int8: mul.rn in PTX:", "mul.rn.f32" in k.asm["ptx"])
def gm(bits, group, dot, bm, bn, bk, warps, stages, K=3072, adt="*fp8e4nv", cbdt="*i32", cdt="*bf16", prmt=True):
    sig = {"a_ptr": adt, "sa_ptr": "*fp32", "w_ptr": "*u8", "sw_ptr": "*fp32", "cb_ptr": cbdt, "bias_ptr": "*fp32", "c_ptr": cdt,
           "M": "i32", "N": "i32", "K": "constexpr", "row_bytes": "i32", "hi_offset": "i32", "stride_am": "i32", "stride_cm": "i32", "n_groups": "i32", "M_BUCKET": "i32",
           "BITS": "constexpr", "GROUP": "constexpr", "HAS_BIAS": "constexpr", "HAS_SA": "constexpr", "DOT_DTYPE": "constexpr",
           "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr",
           "USE_PRMT": "constexpr"}
    cst = {"K": K, "BITS": bits, "GROUP": group, "HAS_BIAS": True, "HAS_SA": adt == "*fp8e4nv", "DOT_DTYPE": dot, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
           "USE_PRMT": prmt}
    k = triton.compile(ASTSource(fn=_gemm_kernel, signature=sig, constexprs=cst), target=tgt, options={"num_warps": warps, "num_stages": stages})
    import re
    sass_ok = True
    ptx = k.asm["ptx"]
    print("gemm", bits, group, dot, bm, bn, bk, "wgmma", len(re.findall("wgmma.mma_async", ptx)), "mma.sync", len(re.findall(r"mma.sync", ptx)), "smem", k.metadata.shared, "local", len(re.findall(r"ld.local|st.local", ptx)),
          "prmt" if prmt else "select", "prmt.b32", len(re.findall(r"prmt.b32", ptx)), "ptx lines", ptx.count(chr(10)))
gm(4, 0, tl.float8e4nv, 128, 128, 128, 8, 3, prmt=False)
gm(4, 0, tl.float8e4nv, 128, 128, 128, 8, 3)
gm(3, 0, tl.float8e4nv, 128, 128, 128, 8, 3)
gm(4, 64, tl.float8e4nv, 128, 128, 64, 8, 3)
gm(4, 0, tl.bfloat16, 16, 32, 64, 4, 4, adt="*bf16")
gm(4, 0, tl.bfloat16, 128, 128, 64, 8, 3, adt="*bf16")
