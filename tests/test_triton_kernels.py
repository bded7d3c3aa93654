"""The Triton kernels against the references: on the GPU when there is one, else under TRITON_INTERPRET=1 on
tiny shapes (CI). Codes must equal the reference's (rounding ties allowed on <= 1e-4 of them); GEMM outputs
within 1e-3 relative error of the reference's float32 math."""
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"    # before the kernels are imported: they become interpreted

from conftest import rel_err  # noqa: E402

from lrq_kernels import ops, quantize_weight  # noqa: E402
from lrq_kernels.formats.weight import dequantize_packed  # noqa: E402
from lrq_kernels.reference import gemm_a16_ref, quantize_tokens_ref, rotate_quantize_ref  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"
# the interpreter's bf16 dot is wrong (Triton 3.6), so CPU runs use fp16 inputs
ACT_DTYPE = torch.bfloat16 if ON_GPU else torch.float16


@pytest.fixture(autouse=True)
def _force_triton(monkeypatch):
    monkeypatch.setenv("LRQ_BACKEND", "triton")


def codes_match(got, want, max_frac=1e-4):
    g, w = got.float(), want.float()
    same = (g == w) | (torch.isnan(g) & torch.isnan(w))
    return (1 - same.float().mean().item()) <= max_frac


@pytest.mark.parametrize("m,k,block", [(1, 64, 64), (7, 192, 64), (5, 1152, 128), (3, 4608, 512), (2, 3072, 1024),
                                       (4, 256, 256), (3, 96, 32), (6, 64, 1)])
@pytest.mark.parametrize("a_format,a_bits", [("fp8", 8), ("int", 8), ("int", 4)])
def test_rotate_quant_codes_equal_reference(m, k, block, a_format, a_bits):
    x = torch.randn(m, k, device=DEV).to(ACT_DTYPE)
    x[0, k // 3] *= 60
    codes, scales = ops.rotate_quant(x, None, None, block, a_format, a_bits)
    rc, rs = rotate_quantize_ref(x, None, None, block, a_format, a_bits)
    assert codes.dtype == rc.dtype and codes_match(codes, rc)
    assert torch.allclose(scales, rs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("a_format,a_bits", [("fp8", 8), ("int", 4)])
def test_rotate_quant_ars_gather_zero_and_nan_tokens(a_format, a_bits):
    k = 384
    x = torch.randn(5, k, device=DEV).to(ACT_DTYPE)
    x[1] = 0
    x[3, 10] = float("nan")
    perm = torch.randperm(k, device=DEV)
    cs = torch.rand(k, device=DEV) + 0.5
    codes, scales = ops.rotate_quant(x, perm, cs, 128, a_format, a_bits)
    rc, rs = rotate_quantize_ref(x, perm, cs, 128, a_format, a_bits)
    keep = torch.tensor([0, 1, 2, 4], device=DEV)        # the NaN token's codes are unspecified; its scale is NaN
    assert codes_match(codes[keep], rc[keep])
    assert scales[1] == 0 and torch.all(codes[1].float() == 0)
    assert torch.isnan(scales[3]) and torch.isfinite(scales[keep]).all()


def _weight(n, k, bits, group):
    q = quantize_weight(torch.randn(n, k), bits, "tlq", group_size=group)
    return q.to(DEV)


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group", [None, 64])
@pytest.mark.parametrize("a_format", ["fp8", "int"])
def test_gemm_a8_against_reference(m, bits, group, a_format):
    n, k = 40, 192
    q = _weight(n, k, bits, group)
    bias = torch.randn(n, device=DEV)
    codes, sx = quantize_tokens_ref(torch.randn(m, k, device=DEV), a_format, 8)
    y = ops.gemm_a8(codes, sx, q.packed, q.scales, q.codebook, bits, k, group or 0, bias, torch.float32)
    # float64 oracle: PyTorch's float32 GEMM on a GPU is itself ~1e-3 off
    want = (codes.double() @ q.dequantize().double().t()) * sx.double()[:, None] + bias.double()
    assert rel_err(y, want) <= 1e-3


@pytest.mark.parametrize("swap", ["0", "1"])
@pytest.mark.parametrize("bits,group", [(4, None), (3, 64)])
@pytest.mark.parametrize("a_format", ["fp8", "int", "a16"])
def test_gemm_both_operand_orders_against_reference(bits, group, a_format, swap, monkeypatch):
    """Both forms of the GEMM kernel, acc = x @ w^T and its transpose w @ x^T (the default;
    benchmarks/gemm_variants.py measures the first), compute the same GEMM."""
    import lrq_kernels.triton.gemm as tg
    monkeypatch.setattr(tg, "_SWAP_AB", swap == "1")
    n, k, m = 40, 192, 7
    q = _weight(n, k, bits, group)
    if a_format == "a16":
        x = torch.randn(m, k, device=DEV).to(ACT_DTYPE)
        y = tg.gemm_a16_triton(x, q.packed, q.scales, q.codebook, bits, group or 0, None)
        assert rel_err(y.float(), gemm_a16_ref(x, q.dequantize())) <= 3e-3
        return
    codes, sx = quantize_tokens_ref(torch.randn(m, k, device=DEV), a_format, 8)
    y = tg.gemm_a8_triton(codes, sx, q.packed, q.scales, q.codebook, bits, k, group or 0, None, torch.float32)
    want = (codes.double() @ q.dequantize().double().t()) * sx.double()[:, None]
    assert rel_err(y, want) <= 1e-3


@pytest.mark.parametrize("m", [1, 5, 20])
@pytest.mark.parametrize("bits,group", [(4, None), (3, None), (4, 128)])
def test_gemm_a16_against_reference(m, bits, group):
    n, k = 36, 256
    q = _weight(n, k, bits, group)
    x = torch.randn(m, k, device=DEV).to(ACT_DTYPE)
    y = ops.gemm_a16(x, q.packed, q.scales, q.codebook, bits, group or 0, None)
    assert y.dtype == ACT_DTYPE
    assert rel_err(y.float(), gemm_a16_ref(x, q.dequantize())) <= 3e-3   # bf16/fp16 output rounding: 2^-9


_SPLIT_K_CASES = [(m, k, bits, group) for m, k in ((17, 256), (33, 192), (40, 200), (256, 128))
                  for bits, group in ((4, None), (3, None), (4, 64)) if not (group and k % group)]


@pytest.mark.parametrize("m,k,bits,group", _SPLIT_K_CASES, ids=str)
def test_gemm_a16_split_k_against_reference(m, k, bits, group):
    """16 < M <= SPLIT_K_MAX_M: the K steps of a tile split between programs (lrq_kernels/triton/gemm.py; in two under
    the interpreter where K allows, unsplit at K = 200), partial products summed in a fixed order: the bias added
    once, and the same output on every call."""
    import lrq_kernels.triton.gemm as tg
    n = 40
    q = _weight(n, k, bits, group)
    x = torch.randn(m, k, device=DEV).to(ACT_DTYPE)
    bias = torch.randn(n, device=DEV)
    y = tg.gemm_a16_triton(x, q.packed, q.scales, q.codebook, bits, group or 0, bias)
    assert y.shape == (m, n) and y.dtype == ACT_DTYPE
    assert rel_err(y.float(), gemm_a16_ref(x, q.dequantize(), bias)) <= 3e-3
    assert torch.equal(y, tg.gemm_a16_triton(x, q.packed, q.scales, q.codebook, bits, group or 0, bias))


def test_split_k_pruning():
    """The split-K autotuner's candidates: K a multiple of SPLIT_K K steps, else unsplit; 32-row tiles up to M = 32;
    K steps of 128 per channel, inside one group with group scales."""
    from lrq_kernels.triton.gemm import _gemm_split_k_tuned, _prune_split_k

    def tiles(m, k, group=0):
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_K"], c.kwargs["SPLIT_K"])
                for c in _prune_split_k(_gemm_split_k_tuned.configs, {"M_BUCKET": m, "K": k}, GROUP=group)}
    assert {sk for _, _, sk in tiles(64, 3072)} == {1, 2, 4} and {bm for bm, _, _ in tiles(64, 3072)} == {32, 64}
    assert {bm for bm, _, _ in tiles(32, 3072)} == {32}
    assert {sk for _, _, sk in tiles(64, 1000)} == {1} and {sk for _, _, sk in tiles(64, 384)} == {1}
    assert {bk for _, bk, _ in tiles(64, 3072)} == {128} and {bk for _, bk, _ in tiles(64, 3072, 64)} == {64}


def test_gemm_a8_k_not_multiple_of_block():
    n, k = 24, 200
    q = _weight(n, k, 3, None)
    codes, sx = quantize_tokens_ref(torch.randn(3, k, device=DEV), "fp8", 8)
    y = ops.gemm_a8(codes, sx, q.packed, q.scales, q.codebook, 3, k, 0, None, torch.float32)
    w = dequantize_packed(q.packed, q.scales, q.codebook, 3, k, None).double()
    assert rel_err(y, (codes.double() @ w.t()) * sx.double()[:, None]) <= 1e-3


def _run_ptx(asm: str, regs: dict) -> dict:
    """Execute the b32 and/shr/shl/or/prmt instructions of a PTX block on Python ints (PTX ISA semantics of prmt's
    default mode: selector nibble i picks byte (nibble & 7) of {b, a}, bit 3 replicates that byte's sign)."""
    regs = dict(regs)

    def val(tok):
        tok = tok.strip()
        return int(tok, 0) if tok[0].isdigit() else regs[tok]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line[0] in "{}." or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        d, *src = [a.strip() for a in args.split(",")]
        v = [val(a) for a in src]
        if op == "and.b32":
            r = v[0] & v[1]
        elif op == "or.b32":
            r = v[0] | v[1]
        elif op == "shr.b32":
            r = v[0] >> v[1]
        elif op == "shl.b32":
            r = v[0] << v[1]
        elif op == "prmt.b32":
            pool = (v[0] | (v[1] << 32)).to_bytes(8, "little")
            out = 0
            for i in range(4):
                nib = (v[2] >> (4 * i)) & 0xF
                byte = pool[nib & 7]
                if nib & 8:
                    byte = 0xFF if byte & 0x80 else 0
                out |= byte << (8 * i)
            r = out
        else:
            raise AssertionError(f"unexpected instruction {op}")
        regs[d] = r & 0xFFFFFFFF
    return regs


def test_prmt_decode_ptx_looks_up_every_nibble():
    """The inline-PTX 4-bit decode of triton/gemm.py (run on the GPU only), executed instruction by instruction:
    each output byte is the table entry of the low / high nibble of the input byte in the same position."""
    from lrq_kernels.triton.gemm import _DECODE4_ASM
    asm = _DECODE4_ASM.value if hasattr(_DECODE4_ASM, "value") else _DECODE4_ASM
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        table = torch.randint(0, 256, (16,), generator=g, dtype=torch.int64).tolist()
        words = [int.from_bytes(bytes(table[4 * j: 4 * j + 4]), "little") for j in range(4)]
        packed = torch.randint(0, 256, (4,), generator=g, dtype=torch.int64).tolist()
        if trial < 16:                      # every code in every position at least once
            packed = [(trial << 4 | (15 - trial))] * 4
        w = int.from_bytes(bytes(packed), "little")
        regs = {"$2": w, "$3": words[0], "$7": words[1], "$11": words[2], "$15": words[3]}
        out = _run_ptx(asm, regs)
        lo, hi = out["$0"].to_bytes(4, "little"), out["$1"].to_bytes(4, "little")
        assert list(lo) == [table[b & 15] for b in packed]
        assert list(hi) == [table[b >> 4] for b in packed]


def test_prmt_decode3_ptx_looks_up_every_code():
    """The inline-PTX 3-bit decode, executed instruction by instruction: output i's byte j is the table entry of
    code 4j + i, whose bits 0-1 are in lo byte j (two bits a code) and bit 2 in H byte j (one bit a code)."""
    from lrq_kernels.triton.gemm import _DECODE3_ASM
    asm = _DECODE3_ASM.value if hasattr(_DECODE3_ASM, "value") else _DECODE3_ASM
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        table = torch.randint(0, 256, (8,), generator=g, dtype=torch.int64).tolist()
        words = [int.from_bytes(bytes(table[4 * j: 4 * j + 4]), "little") for j in range(2)]
        codes = torch.randint(0, 8, (4, 4), generator=g, dtype=torch.int64)      # [byte j, code i]
        if trial < 8:                       # every code in every position at least once
            codes = (torch.arange(4)[None, :] + trial + torch.arange(4)[:, None]) % 8
        lo = [sum((int(codes[j, i]) & 3) << (2 * i) for i in range(4)) for j in range(4)]
        hb = [sum((int(codes[j, i]) >> 2) << i for i in range(4)) for j in range(4)]
        regs = {"$4": int.from_bytes(bytes(lo), "little"), "$5": int.from_bytes(bytes(hb), "little"),
                "$6": words[0], "$10": words[1]}
        out = _run_ptx(asm, regs)
        for i in range(4):
            assert list(out[f"${i}"].to_bytes(4, "little")) == [table[int(codes[j, i])] for j in range(4)]


def test_autotune_pruning_keeps_only_tiles_that_fit():
    """The GEMM autotuner's candidates (lrq_kernels/triton/gemm.py): K = 256 steps only for FP8 dots at large M
    and only where a step stays inside one scale group; M <= 16 gets the 16-row tiles; swapped operands need
    BLOCK_N >= 64 (wgmma's M)."""
    import triton.language as tl
    from lrq_kernels.triton.gemm import _gemm_tuned, _prune

    def tiles(m, **kw):
        kw = dict(GROUP=0, DOT_DTYPE=tl.float8e4nv, SWAP_AB=False) | kw
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"])
                for c in _prune(_gemm_tuned.configs, {"M_BUCKET": m}, **kw)}
    assert (128, 128, 256) in tiles(4096) and (128, 128, 128) in tiles(4096)
    assert (128, 64, 128) in tiles(4096, SWAP_AB=True)
    assert (128, 128, 256) not in tiles(4096, DOT_DTYPE=tl.bfloat16)
    assert all(bk <= 64 for _, _, bk in tiles(4096, GROUP=64))
    assert all(bm == 16 for bm, _, _ in tiles(16)) and all(bm <= 64 for bm, _, _ in tiles(200))
    assert all(bn >= 64 for _, bn, _ in tiles(16, SWAP_AB=True))
