"""Model-level helpers: calibrate, quantize_model, save_quantized, load_quantized."""
from __future__ import annotations

import fnmatch
import json
import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from ..rotation.ars import ActStats, ActStatsCollector
from .linear import QuantConfig, QuantLinear

CHECKPOINT_FORMAT = "lrq_kernels/1"


def _linears(model: nn.Module, skip: Iterable[str]):
    skip = tuple(skip)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not any(fnmatch.fnmatch(name, pat) for pat in skip):
            yield name, mod


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


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
                   skip: Iterable[str] = (), progress: bool = True) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by a QuantLinear, except names matching a `skip` pattern
    (fnmatch, e.g. "*proj_out"). `calib` from `calibrate` lets ARS choose each layer's rotation and GPTQ
    round its codes (QuantConfig.rotation, .w_rounding); without it, the block Hadamard and nearest rounding."""
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    todo = list(_linears(model, skip))
    it = todo
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc=f"quantizing {config.name}", unit="layer")
    for name, mod in it:
        stats = calib.get(name) if calib else None
        _set_submodule(model, name, QuantLinear.from_linear(mod, config, stats))
    return model


def save_quantized(model: nn.Module, path: str) -> None:
    """Save the whole state of a quantized model, with each QuantLinear's layout, as safetensors."""
    from safetensors.torch import save_file
    layouts = {name: m.layout() for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    meta = {"format": CHECKPOINT_FORMAT, "layouts": json.dumps(layouts)}
    save_file(state, path, metadata=meta)


def read_checkpoint(path: str, fmt: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file whose metadata "format" is `fmt`; ValueError naming the file
    otherwise (missing, truncated, garbled, or another format)."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f"cannot read checkpoint {path!r}: {e}") from None
    if meta.get("format") != fmt:
        raise ValueError(f"checkpoint {path!r} has format {meta.get('format')!r}, expected {fmt!r}")
    return state, meta


def load_quantized(model: nn.Module, path: str) -> nn.Module:
    """Load a checkpoint of `save_quantized` into `model` (the float model, or one already quantized alike).

    Everything is checked first (file integrity, format, every layer's layout against the model, every tensor's
    name, shape and dtype); the model is changed only when all of it passes, so a corrupted or mismatched file
    leaves the model as it was.
    """
    state, meta = read_checkpoint(path, CHECKPOINT_FORMAT)
    try:
        layouts = json.loads(meta["layouts"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path!r} has no readable layer layouts ({e})") from None

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    shells = {}
    for name, layout in layouts.items():
        try:
            current = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"checkpoint layer {name!r} does not exist in the model") from None
        if not isinstance(current, (nn.Linear, QuantLinear)) or \
                (current.in_features, current.out_features) != (layout.get("in_features"), layout.get("out_features")):
            raise ValueError(f"checkpoint layer {name!r} ({layout.get('in_features')} -> "
                             f"{layout.get('out_features')}) does not match the model's {current!r}")
        shells[name] = QuantLinear.from_layout(layout, device=device)

    # the state dict the model will have once the shells are in place, checked key by key
    expected = {}
    for key, t in model.state_dict().items():
        if not any(key.startswith(n + ".") for n in shells):
            expected[key] = t
    for name, shell in shells.items():
        for key, t in shell.state_dict().items():
            expected[f"{name}.{key}"] = t
        shell.check_state(state, f"{name}.")
    expected = {k: v for k, v in expected.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path!r} does not match the model: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for key, t in expected.items():
        if state[key].shape != t.shape or state[key].dtype != t.dtype:
            raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(state[key].shape)} and dtype "
                             f"{state[key].dtype}, the model expects {tuple(t.shape)} and {t.dtype}")

    for name, shell in shells.items():
        _set_submodule(model, name, shell)
    full = dict(state)
    for name, shell in shells.items():
        full[f"{name}._extra_state"] = shell.layout()
    model.load_state_dict(full, strict=True)
    return model
