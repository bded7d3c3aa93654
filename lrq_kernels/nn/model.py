"""Model-level helpers: calibrate and quantize_model (checkpoints: nn/checkpoint.py)."""
from __future__ import annotations

import fnmatch
import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from ..rotation.ars import ActStats, ActStatsCollector
from .linear import QuantConfig, QuantLinear


def skip_patterns(skip) -> tuple[str, ...]:
    """`skip` as a tuple of fnmatch patterns: one string is one pattern (not its characters)."""
    if isinstance(skip, str):
        return (skip,)
    skip = tuple(skip)
    bad = [p for p in skip if not isinstance(p, str)]
    if bad:
        raise TypeError(f"skip must be a pattern or an iterable of patterns (strings), got {bad[0]!r} in it")
    return skip


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in patterns)


def _linears(model: nn.Module, skip):
    skip = skip_patterns(skip)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not _matches(name, skip):
            yield name, mod


def _nothing_to_do(model: nn.Module, skip, what: str) -> ValueError:
    """The error of a call that would change nothing, saying why."""
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    why = "it has no nn.Linear layer" if n_linear == 0 else \
        f"all {n_linear} of its nn.Linear layers match skip={skip_patterns(skip)}"
    return ValueError(f"{what}: nothing to do on {type(model).__name__}: {why}")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_not_quantized(model: nn.Module) -> None:
    n_quant = sum(isinstance(m, QuantLinear) for m in model.modules())
    if n_quant:
        raise ValueError(f"quantize_model: {type(model).__name__} is already quantized ({n_quant} QuantLinear "
                         f"layers); quantize the float model once, giving layers their own configs with overrides=")


# The most memory `calibrate` spends on input Hessians unless told otherwise: a few GiB beside a DiT's weights.
# PixArt-Sigma's 280 quantized linears need 3.5 GiB; FLUX.1's ~67 GiB would not fit beside it on an 80 GB GPU.
HESSIAN_BUDGET_BYTES = 4 << 30


@torch.no_grad()
def calibrate(model: nn.Module, run_fn: Callable[[nn.Module], object], skip: Iterable[str] = (),
              max_tokens: int = 512, keep_hessian: bool | None = None) -> dict[str, ActStats]:
    """Run `run_fn(model)` (a few forwards, e.g. several timesteps) and record the activation statistics of
    every nn.Linear input, keyed by module name, for ARS (rotation/ars.py) and GPTQ rounding (formats/gptq.py).

    keep_hessian: accumulate each input's X^T X over every token (K^2 float32 a layer, on the activations'
    device: 38 MB for K = 3072). Without it GPTQ uses the `max_tokens` sample, which overfits where K is
    larger than the sample (digits DiT: +7.1 dB over nearest rounding out of sample from the 512-token sample,
    +7.8 dB from every token; benchmarks/results/gptq_error.md). None (default): keep them when all of them
    together take at most HESSIAN_BUDGET_BYTES, else warn and use the samples.
    """
    todo = list(_linears(model, skip))
    if not todo:
        raise _nothing_to_do(model, skip, "calibrate")
    if keep_hessian is None:
        need = sum(4 * mod.in_features ** 2 for _, mod in todo)
        keep_hessian = need <= HESSIAN_BUDGET_BYTES
        if not keep_hessian:
            warnings.warn(f"calibrate: the input Hessians of these {len(todo)} layers would take "
                          f"{need / 2 ** 30:.1f} GiB (budget {HESSIAN_BUDGET_BYTES / 2 ** 30:.0f} GiB); GPTQ rounding "
                          f"will use the {max_tokens}-token samples instead (keep_hessian=True keeps them)")
    collectors, handles = {}, []
    for name, mod in todo:
        col = collectors[name] = ActStatsCollector(max_tokens=max_tokens, keep_hessian=keep_hessian)
        handles.append(mod.register_forward_pre_hook(lambda m, args, col=col: col.update(args[0])))
    try:
        run_fn(model)
    finally:
        for h in handles:
            h.remove()
    return {name: col.stats() for name, col in collectors.items() if col.absmax is not None}


def quantize_model(model: nn.Module, config: QuantConfig, calib: dict[str, ActStats] | None = None,
                   skip: Iterable[str] | str = (), overrides: dict[str, QuantConfig] | None = None,
                   progress: bool = True) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by a QuantLinear, except names matching a `skip` pattern
    (fnmatch, e.g. "*proj_out"; one string is one pattern). `overrides` maps patterns to the config of the layers
    they match (the first matching pattern wins; e.g. {"*norm1.linear": QuantConfig(a_bits=16)}); every other
    layer takes `config`. `calib` from `calibrate` lets ARS choose each layer's rotation and GPTQ round its codes
    (QuantConfig.rotation, .w_rounding); without it, the block Hadamard and nearest rounding.
    Raises ValueError when there is no layer to quantize (none left, or all skipped)."""
    overrides = dict(overrides or {})
    for cfg in [config, *overrides.values()]:
        if not isinstance(cfg, QuantConfig):
            raise TypeError(f"config must be a QuantConfig, got {type(cfg).__name__}")
    _check_not_quantized(model)
    todo = list(_linears(model, skip))
    if not todo:
        raise _nothing_to_do(model, skip, "quantize_model")
    it = todo
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc=f"quantizing {config.name}", unit="layer")
    for name, mod in it:
        stats = calib.get(name) if calib else None
        cfg = next((c for pat, c in overrides.items() if fnmatch.fnmatch(name, pat)), config)
        _set_submodule(model, name, QuantLinear.from_linear(mod, cfg, stats))
        del mod
    return model
