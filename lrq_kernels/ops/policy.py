"""The tuning policy: every threshold and switch that chooses between kernels of the same result.

Each default is a measured choice with its row in docs/tuning.md (value, shapes, ratio, command, GPU, date).
Change them for one block of code with `lrq_kernels.tuning(...)`, for the whole process with
`lrq_kernels.set_tuning(...)`:

    with lrq_kernels.tuning(a8_dequant_min_m=4096):
        y = model(x)
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Tuning:
    """Thresholds in tokens (M, the rows of the layer's input) and switches of the kernel choice
    (ops/dispatch.py applies them; none changes which values a layer computes beyond rounding).

    cuda_gemm_a8_min_m: from this M the CUDA W·A8 GEMM (Hopper) runs on codes in natural K order (gemm_a8 alone);
        below it, Triton's.  [docs/tuning.md: cuda_gemm_a8_min_m]
    cuda_gemm_a8_tma_min_m: the same for codes in the GEMM's K order (quant_linear_a8, loaded by TMA).
        [cuda_gemm_a8_tma_min_m]
    a8_dequant_min_m: from this M, W·A8 decodes the weight to an FP8 matrix and runs cuBLAS's FP8 GEMM with
        row-wise scales (a transient N x K byte matrix).  [a8_dequant_min_m]
    a8_fast_accum: that cuBLAS GEMM with fast accumulation (error above this library's bound; off).  [a8_fast_accum]
    a16_dequant_min_m: from this M, the weight-only forward dequantizes the weight (rotation undone) and runs
        cuBLAS in x's dtype (a transient N x K weight).  [a16_dequant_min_m]
    a16_dequant_max_small_m_weight: weights of at most this many elements take that path from M = 17.
        [a16_dequant_max_small_m_weight]
    """
    cuda_gemm_a8_min_m: int = 256
    cuda_gemm_a8_tma_min_m: int = 1
    a8_dequant_min_m: int = 1024
    a8_fast_accum: bool = False
    a16_dequant_min_m: int = 128
    a16_dequant_max_small_m_weight: int = 3072 * 3072

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("bool", bool):
                if not isinstance(v, bool):
                    raise TypeError(f"Tuning.{f.name} must be a bool, got {v!r}")
            elif not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"Tuning.{f.name} must be a positive int, got {v!r}")
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f.name) for f in fields(self))))

    def __hash__(self):       # asked on every op call (ops/dispatch.py keys its plans on the policy): computed once
        return self._hash


_DEFAULT = Tuning()
_OVERRIDE: contextvars.ContextVar[Tuning | None] = contextvars.ContextVar("lrq_tuning", default=None)


def get_tuning() -> Tuning:
    """The policy in force here: the innermost `tuning(...)` block's, else the process-wide one."""
    t = _OVERRIDE.get()
    return _DEFAULT if t is None else t


def set_tuning(tuning: Tuning | None = None, **changes) -> Tuning:
    """Set the process-wide policy: a Tuning, or changes to the current default (no arguments: the defaults
    again). Returns the new policy."""
    global _DEFAULT
    if tuning is not None and not isinstance(tuning, Tuning):
        raise TypeError(f"tuning must be a lrq_kernels.Tuning or None, got {type(tuning).__name__}")
    if tuning is None and not changes:
        _DEFAULT = Tuning()
    else:
        _DEFAULT = _changed(tuning or _DEFAULT, changes)
    return _DEFAULT


@contextlib.contextmanager
def tuning(tuning: Tuning | None = None, **changes):
    """Run a block under another policy (a Tuning, or changes to the one in force); yields it. Thread- and
    task-local: other threads keep theirs."""
    if tuning is not None and not isinstance(tuning, Tuning):
        raise TypeError(f"tuning must be a lrq_kernels.Tuning or None, got {type(tuning).__name__}")
    token = _OVERRIDE.set(_changed(tuning or get_tuning(), changes))
    try:
        yield _OVERRIDE.get()
    finally:
        _OVERRIDE.reset(token)


def _changed(base: Tuning, changes: dict) -> Tuning:
    names = {f.name for f in fields(Tuning)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"unknown tuning field(s) {unknown}; the fields are {sorted(names)}")
    return replace(base, **changes)
