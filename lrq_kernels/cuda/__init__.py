"""The CUDA kernels of lrq_kernels._C (csrc/), called with tensors.

The compiled module takes data pointers, sizes and a stream; this file turns validated tensors (ops/checks.py
has already run) into those arguments, on PyTorch's current stream, so the launches order with the rest of the
program and are captured by CUDA graphs. `available()` is False when the extension was not built (no nvcc at
install time, LRQ_SKIP_CUDA_BUILD=1) or cannot load; importing this file never fails.
"""
from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

try:
    from .. import _C  # type: ignore[attr-defined]
    _IMPORT_ERROR: Optional[str] = None
except ImportError as e:             # not built, or built for another Python
    _C = None
    _IMPORT_ERROR = str(e)

_DTYPE = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
MIN_CAPABILITY = (8, 0)              # the module holds sm_80 and sm_90a machine code (CMakeLists.txt)


def available() -> bool:
    return _C is not None


def why_unavailable() -> str:
    return "" if _C is not None else f"lrq_kernels._C is not built or does not load ({_IMPORT_ERROR})"


_CAPABILITIES: dict[int, tuple[int, int]] = {}


def capability(device: torch.device) -> tuple[int, int]:
    """torch.cuda.get_device_capability(device), asked once a device: a GPU's capability never changes, and the
    query costs microseconds of host time on every call of every layer."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = _CAPABILITIES.get(index)
    if cap is None:
        cap = _CAPABILITIES[index] = torch.cuda.get_device_capability(index)
    return cap


def device_ok(device: torch.device) -> bool:
    return _C is not None and device.type == "cuda" and capability(device) >= MIN_CAPABILITY


def rotate_quant_unsupported(k: int, block: int, dtype: torch.dtype) -> str:
    """'' when rotate_quant_cuda runs this K, block and input dtype, else why not."""
    if _C is None:
        return why_unavailable()
    if dtype not in _DTYPE:
        return f"x's dtype must be bf16, fp16 or fp32, got {dtype}"
    return _C.rotate_quant_unsupported(k, block)


def unrotate_weight_unsupported(k: int, block: int, bits: int, group_size: int, dtype: torch.dtype) -> str:
    """'' when unrotate_weight_cuda runs this K, block, bit width, group and output dtype, else why not."""
    if _C is None:
        return why_unavailable()
    if dtype not in _DTYPE:
        return f"the output dtype must be bf16, fp16 or fp32, got {dtype}"
    return _C.unrotate_weight_unsupported(k, block, bits, group_size)


def decode_weight_e4m3_unsupported(n: int, k: int, bits: int) -> str:
    """'' when decode_weight_e4m3_cuda runs this N, K and bit width, else why not."""
    if _C is None:
        return why_unavailable()
    return _C.decode_weight_e4m3_unsupported(n, k, bits)


def gemv_a16_unsupported(m: int, k: int, bits: int, group_size: int, dtype: torch.dtype) -> str:
    if _C is None:
        return why_unavailable()
    if dtype not in (torch.bfloat16, torch.float16):
        return f"x's dtype must be bf16 or fp16, got {dtype}"
    return _C.gemv_a16_unsupported(m, k, bits, group_size)


def gemm_a8_unsupported(m: int, k: int, n: int, bits: int, group_size: int, codes_dtype: torch.dtype,
                        device: torch.device) -> str:
    """'' when gemm_a8_cuda runs this shape on `device` (a Hopper GPU, sm_90), else why not."""
    if _C is None:
        return why_unavailable()
    if codes_dtype != torch.float8_e4m3fn:
        return f"the CUDA W·A8 GEMM takes FP8 e4m3 activation codes, got {codes_dtype}"
    if device.type != "cuda" or capability(device) != (9, 0):
        return f"the CUDA W·A8 GEMM runs on sm_90 (Hopper) only, got {device}"
    return _C.gemm_a8_unsupported(m, k, n, bits, group_size)


def why_not(op: str, device: torch.device, **shape) -> str:
    """'' when lrq_kernels._C runs `op` on `device` with these shape arguments (ops/dispatch.py passes them), else
    the reason. "gemv_a16_rotate": gemv_a16 rotating x itself (on top of gemm_a16's own conditions)."""
    if _C is None:
        return why_unavailable()
    if not device_ok(device):
        return f"needs a CUDA GPU of compute capability >= {MIN_CAPABILITY}, got {device}"
    if op in ("rotate_quant", "rotate"):
        return rotate_quant_unsupported(shape["k"], shape["block"], shape["dtype"])
    if op == "gemm_a16":
        return gemv_a16_unsupported(shape["m"], shape["k"], shape["bits"], shape["group"], shape["dtype"])
    if op == "gemv_a16_rotate":
        return _C.gemv_a16_rotate_unsupported(shape["m"], shape["k"], shape["block"])
    if op == "dequantize_weight":
        return unrotate_weight_unsupported(shape["k"], shape["block"], shape["bits"], shape["group"], shape["dtype"])
    if op == "decode_weight_e4m3":
        return decode_weight_e4m3_unsupported(shape["n"], shape["k"], shape["bits"])
    if op == "gemm_a8":
        return gemm_a8_unsupported(shape["m"], shape["k"], shape["n"], shape["bits"], shape["group"], shape["dtype"],
                                   device)
    return f"no CUDA kernel for {op}"


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t contiguous and starting on a 16-byte boundary (the kernels use 16-byte loads; a view can start anywhere):
    t itself where it is, else a copy."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _stream(index: int) -> int:
    """PyTorch's current stream on GPU `index`, as the raw handle the launchers take (the C++ side makes `index` the
    current device for the launch and restores the caller's after it: csrc/common.cuh, DeviceScope)."""
    return torch._C._cuda_getCurrentRawStream(index)


def scale_lanes(channel_scale: torch.Tensor) -> torch.Tensor:
    """channel_scale [K] reordered as rotate_quant's gather loads it (csrc/rotate_quant.cu: load_scales8): inside each
    chunk of 128 columns (the last may be shorter, K % 8 == 0), the first four scales of every 8 columns, then the last
    four. Scale c0 + 8m + 4q + t lands at c0 + q * L / 2 + 4m + t, L the chunk's length."""
    k = channel_scale.numel()
    full = k // 128 * 128
    parts = [channel_scale[:full].reshape(-1, 16, 2, 4).transpose(1, 2).reshape(-1)]
    if k > full:
        parts.append(channel_scale[full:].reshape(-1, 2, 4).transpose(0, 1).reshape(-1))
    return torch.cat(parts)


def _check_permutation(perm: torch.Tensor) -> None:
    """The kernel reads x's row at every perm index: one outside 0..K-1 would read past it (the ops' checks do not
    look at the values, which would cost a device sync on every call; here it is paid once per cached table)."""
    k = perm.numel()
    if not torch.equal(torch.sort(perm).values, torch.arange(k, device=perm.device, dtype=perm.dtype)):
        raise ValueError(f"perm must be a permutation of 0..{k - 1} (each index once), got values from "
                         f"{int(perm.min())} to {int(perm.max())} with {int(torch.unique(perm).numel())} distinct")


def _make_gather_tables(perm, channel_scale):
    perm16 = None if perm is None else _aligned(perm.to(torch.int16))
    lanes = None if channel_scale is None else _aligned(scale_lanes(channel_scale.float().contiguous()))
    return perm16, lanes


def _cached(cache, key, other, make, perm):
    """make(), cached in cache on the tensor key (and the identity of other, a second source tensor or None), and made
    again when either was written in place (its version counter moved); on a miss, perm (if not None) is first checked
    to be a permutation (ValueError if not). Neither cached nor checked for inference tensors (no version counter) or
    while a CUDA graph is being captured (a value made then holds nothing until the graph replays; a check would
    synchronize): warm up before capturing, as PyTorch asks."""
    if key.is_inference() or (other is not None and other.is_inference()):
        return make()
    versions = (key._version, None if other is None else other._version)
    with _CACHE_LOCK:      # threads sharing one model share these caches
        hit = cache.get(key)
    if hit is not None:
        other_ref, cached_versions, value = hit
        if cached_versions == versions and (None if other_ref is None else other_ref()) is other:
            return value
    if key.is_cuda and torch.cuda.is_current_stream_capturing():
        return make()
    if perm is not None:
        _check_permutation(perm)
    value = make()
    with _CACHE_LOCK:
        cache[key] = (None if other is None else weakref.ref(other), versions, value)
    return value


# Kernel-side copies of a layer's rotation buffers, by the tensor they were made from, kept as long as it lives: a
# QuantLinear's buffers are converted (and its permutation checked) once rather than on every forward.
_CACHE_LOCK = threading.Lock()
_GATHER_TABLES = WeakIdKeyDictionary()      # perm (or channel_scale without one) -> (perm16, scale_lanes)
_UNROTATE_PERMS = WeakIdKeyDictionary()     # perm -> int32 perm


_CASTS: dict = {}                           # dtype -> WeakIdKeyDictionary: tensor -> its copy in dtype


def cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """t in dtype (t itself if it has it), made once and cached on t as _cached says: a layer's float32 bias handed
    to cuBLAS in the output's dtype on every call costs a conversion kernel and its host time each time."""
    if t is None or t.dtype == dtype:
        return t
    with _CACHE_LOCK:
        cache = _CASTS.setdefault(dtype, WeakIdKeyDictionary())
    return _cached(cache, t, None, lambda: t.to(dtype), None)


def gather_tables(perm: Optional[torch.Tensor], channel_scale: Optional[torch.Tensor]):
    """(perm16, scale_lanes): the ARS gather's permutation as int16 and its channel scales in the kernel's lane order
    (scale_lanes()), the layout csrc/rotate_quant.cu reads (half the L1 wavefronts of int32 indices and natural-order
    scales). Cached on the source tensors and perm checked once, as _cached says."""
    key = perm if perm is not None else channel_scale
    if key is None:
        return None, None
    other = channel_scale if perm is not None else None
    return _cached(_GATHER_TABLES, key, other, lambda: _make_gather_tables(perm, channel_scale), perm)


def unrotate_perm(perm: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """perm as unrotate_weight reads it: contiguous, 16-byte aligned int32 (16-byte loads), whatever its dtype.
    Cached on perm and checked once, as _cached says: the kernel writes the weight's column perm[j] for every j."""
    if perm is None:
        return None
    return _cached(_UNROTATE_PERMS, perm, None, lambda: _aligned(perm.to(torch.int32)), perm)


def rotate_quant_cuda(x: torch.Tensor, perm, channel_scale, block: int, a_format: Optional[str], a_bits: int,
                      gemm_order: bool = False):
    """x [M, K] -> (codes [M, K], scales [M]); a_format None: the rotated values in x's dtype (scales unused).
    gemm_order: the codes come out permuted as gemm_order() permutes them (K % 128 == 0), for gemm_a8_cuda."""
    from ..reference.act_quant import act_qmax, code_dtype
    m, k = x.shape
    x = _aligned(x)
    if a_format is None:
        out = torch.empty_like(x)
        fmt, qmax = _C.OUT_SAME, 0.0
    else:
        out = torch.empty((m, k), dtype=code_dtype(a_format), device=x.device)
        fmt, qmax = (_C.OUT_FP8 if a_format == "fp8" else _C.OUT_INT), act_qmax(a_format, a_bits)
    scales = torch.empty((m,), dtype=torch.float32, device=x.device)
    perm16, lanes = gather_tables(perm, channel_scale)
    _C.rotate_quant(x=x.data_ptr(), stride_x=x.stride(0), x_dtype=_DTYPE[x.dtype],
                    perm16=0 if perm16 is None else perm16.data_ptr(),
                    scale_lanes=0 if lanes is None else lanes.data_ptr(), out=out.data_ptr(),
                    stride_out=out.stride(0), scales=scales.data_ptr(), m=m, k=k, block=block, out_format=fmt,
                    qmax=qmax, device=x.device.index, stream=_stream(x.device.index), gemm_order=gemm_order)
    return out, scales


def unrotate_weight_cuda(packed, w_scales, codebook, bits: int, k: int, group_size: int, perm, channel_scale,
                         block: int, dtype: torch.dtype) -> torch.Tensor:
    """W [N, K] in dtype with x @ W^T == rotate(x, perm, channel_scale, block) @ W_deq^T (reference:
    unrotate_weight_ref of the dequantized weight), from the packed codes in one pass (csrc/unrotate_weight.cu)."""
    n = packed.shape[0]
    packed = _aligned(packed)
    w_scales = w_scales.contiguous()
    codebook = codebook.float().contiguous()
    perm = unrotate_perm(perm)
    cs = None if channel_scale is None else _aligned(channel_scale)
    out = torch.empty((n, k), dtype=dtype, device=packed.device)
    _C.unrotate_weight(packed.data_ptr(), packed.stride(0), bits, w_scales.data_ptr(), group_size,
                       codebook.data_ptr(), 0 if perm is None else perm.data_ptr(),
                       0 if cs is None else cs.data_ptr(), n, k, block, out.data_ptr(), _DTYPE[dtype],
                       packed.device.index, _stream(packed.device.index))
    return out


def decode_weight_e4m3_cuda(packed, codebook, bits: int, k: int) -> torch.Tensor:
    """[N, K] float8_e4m3fn: the codebook value of every code (no scales), from the packed codes in one pass
    (csrc/decode_weight.cu; reference: decode_weight_e4m3_ref)."""
    n = packed.shape[0]
    packed = _aligned(packed)
    codebook = codebook.float().contiguous()
    out = torch.empty((n, k), dtype=torch.float8_e4m3fn, device=packed.device)
    _C.decode_weight_e4m3(packed.data_ptr(), packed.stride(0), bits, codebook.data_ptr(), n, k, out.data_ptr(),
                          packed.device.index, _stream(packed.device.index))
    return out


def gemv_a16_cuda(x, packed, w_scales, codebook, bits: int, group_size: int, bias, perm=None, channel_scale=None,
                  block: int = 1):
    """y [M, N] = x @ W_deq^T + bias in x's dtype, M <= 16 (codebook values exact in x's dtype). With perm,
    channel_scale or block > 1, x is first rotated inside the kernel, bit-equal to rotate_quant_cuda(x, perm,
    channel_scale, block, None, 16)[0] (why_not("gemv_a16_rotate", ...) says where it can be)."""
    m, k = x.shape
    n = packed.shape[0]
    x = _aligned(x)
    packed = _aligned(packed)
    w_scales = w_scales.contiguous()
    codebook = codebook.contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    rotation = {}
    if perm is not None or channel_scale is not None or block > 1:
        perm16, lanes = gather_tables(perm, channel_scale)
        rotation = dict(perm16=0 if perm16 is None else perm16.data_ptr(),
                        scale_lanes=0 if lanes is None else lanes.data_ptr(), block=block)
    _C.gemv_a16(x.data_ptr(), _DTYPE[x.dtype], m, k, n, packed.data_ptr(), bits, w_scales.data_ptr(),
                group_size, codebook.data_ptr(), 0 if bias32 is None else bias32.data_ptr(), y.data_ptr(),
                x.device.index, _stream(x.device.index), **rotation)
    return y


def gemm_order(codes: torch.Tensor) -> torch.Tensor:
    """Activation codes [M, K] (K % 128 == 0) with K permuted inside each 128 as the Hopper W·A8 GEMM reads it
    (csrc/gemm_a8_sm90.cu, "K order"): the code of K = 32q + 8j + 4h + e goes to place 32j + 16h + 4q + e."""
    m, k = codes.shape
    return codes.reshape(m, k // 128, 4, 4, 2, 4).permute(0, 1, 3, 4, 2, 5).reshape(m, k)


def gemm_a8_cuda(x_codes, x_scales, packed, w_scales, codebook, bits: int, k: int, group_size: int, bias,
                 out_dtype: torch.dtype, x_gemm_order: bool = False):
    """y [M, N] = x_scales[m] * (x_codes @ W_deq^T) + bias in out_dtype: FP8 codes, 3- or 4-bit weights,
    per-channel scales, on Hopper (gemm_a8_unsupported says when it cannot run). x_gemm_order: x_codes are in
    gemm_order() (the kernel then loads them by TMA, its faster form)."""
    m = x_codes.shape[0]
    n = packed.shape[0]
    x_codes = _aligned(x_codes)
    packed = _aligned(packed)
    x_scales = x_scales.contiguous()
    w_scales = w_scales.contiguous()
    codebook = codebook.float().contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty((m, n), dtype=out_dtype, device=x_codes.device)
    if m == 0:
        return y
    _C.gemm_a8(x_codes.data_ptr(), x_codes.stride(0), x_scales.data_ptr(), m, k, n, packed.data_ptr(),
               packed.stride(0), bits, w_scales.data_ptr(), group_size, codebook.data_ptr(),
               0 if bias32 is None else bias32.data_ptr(), y.data_ptr(), _DTYPE[out_dtype], x_codes.device.index,
               _stream(x_codes.device.index), x_gemm_order)
    return y
