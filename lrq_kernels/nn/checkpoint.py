"""Checkpoints of quantized models: save_quantized, load_quantized, load_quantized_model.

A checkpoint is one safetensors file. Its metadata holds

    format         "lrq_kernels/2" (any other value is refused)
    layouts        JSON {layer name: QuantLinear.layout()}
    checksums      JSON {tensor name: sha256 of its bytes}, verified as each tensor is read
    model_class    "module.QualName" of the model (diffusers models: "diffusers.<...>.FluxTransformer2DModel")
    model_config   the model's diffusers config as JSON (absent for models without one)

`load_quantized_model(path)` builds the model from its class and config with its parameters on the meta device,
puts QuantLinear shells where the layouts say, and materialises only what the file holds, one tensor at a time,
on the target device: loading never needs the float weights, and the peak memory is about the file's size.
It also reads a folder written by diffusers' `save_pretrained` of a quantized model (config.json and
diffusion_pytorch_model*.safetensors; each QuantLinear's layout is its `_extra_state` tensor). Such a folder has
no checksums: its tensors are checked for names, shapes, dtypes and valid values only.

Whatever is refused (a truncated or garbled file, an unknown format, another model's checkpoint, a checksum that
does not match, a missing or unknown model class) raises ValueError naming the file and what is wrong, before
the model is returned or, for load_quantized, before the given model is changed.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
import torch
from torch import nn

from .linear import QuantLinear, decode_layout
from .model import _set_submodule

CHECKPOINT_FORMAT = "lrq_kernels/2"
EXTRA_STATE = "_extra_state"


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (C order, as safetensors stores them)."""
    t = t.detach().contiguous().cpu()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"").hexdigest()


def _quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def save_quantized(model: nn.Module, path: str) -> None:
    """Save a quantized model (every tensor of its state, each QuantLinear's layout, checksums, and the model's
    class and config) as one safetensors file, for `load_quantized_model` or `load_quantized`."""
    from safetensors.torch import save_file
    layers = _quant_layers(model)
    if not layers:
        raise ValueError(f"save_quantized: {type(model).__name__} has no QuantLinear layer; quantize it first "
                         f"(lrq_kernels.quantize_model), or save a float model with its own save_pretrained")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor) and not k.endswith(EXTRA_STATE)}
    meta = {"format": CHECKPOINT_FORMAT,
            "layouts": json.dumps({name: m.layout() for name, m in layers.items()}),
            "checksums": json.dumps({k: tensor_digest(v) for k, v in state.items()}),
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}"}
    if hasattr(model, "to_json_string") and hasattr(model, "config"):
        meta["model_config"] = model.to_json_string()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(state, path, metadata=meta)


# --- reading -------------------------------------------------------------------------------------------------

@dataclass
class _Checkpoint:
    """What a checkpoint holds, read from its header(s) only: tensor names with shape and dtype, layouts,
    checksums (None for a save_pretrained folder), the model's class name and config."""
    path: str
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]]
    files: dict[str, str]                       # tensor name -> safetensors file holding it
    layouts: dict[str, dict]
    checksums: dict[str, str] | None
    model_class: str | None
    model_config: dict | None
    handles: dict = field(default_factory=dict)

    def get(self, key: str) -> torch.Tensor:
        """Tensor `key` on the CPU, its checksum verified."""
        from safetensors import safe_open
        fname = self.files[key]
        try:
            if fname not in self.handles:
                self.handles[fname] = safe_open(fname, framework="pt")
            t = self.handles[fname].get_tensor(key)
        except Exception as e:   # safetensors raises its own error types for truncated or garbled data
            raise ValueError(f"cannot read tensor {key!r} of checkpoint {self.path!r}: {e}") from None
        if self.checksums is not None and tensor_digest(t) != self.checksums.get(key):
            raise ValueError(f"checkpoint {self.path!r}: tensor {key!r} does not match its recorded checksum "
                             f"(the file is corrupted)")
        return t

    def close(self) -> None:
        self.handles.clear()


def _header(fname: str, path: str):
    """(metadata, {name: (shape, dtype)}) of one safetensors file, reading its header only."""
    from safetensors import safe_open
    try:
        with safe_open(fname, framework="pt") as f:
            meta = f.metadata() or {}
            raw = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as e:   # safetensors' own error types: a missing, truncated or garbled file
        raise ValueError(f"cannot read checkpoint {path!r}: {e}") from None
    specs = {k: (shape, _st_dtype(dt, k, path)) for k, (shape, dt) in raw.items()}
    size = os.path.getsize(fname)
    need = _data_end(fname)
    if need is not None and size < need:
        raise ValueError(f"cannot read checkpoint {path!r}: {fname} is truncated ({size} of {need} bytes)")
    return meta, specs


def _data_end(fname: str) -> int | None:
    """Bytes a safetensors file must have: its header's length, the header, and the last tensor's end."""
    with open(fname, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        n = int.from_bytes(head, "little")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def _st_dtype(name: str, key: str, path: str) -> torch.dtype:
    if name not in _ST_DTYPES:
        raise ValueError(f"checkpoint {path!r}: tensor {key!r} has dtype {name}, which no model here holds")
    return _ST_DTYPES[name]


def _json(meta: dict, key: str, path: str):
    try:
        return json.loads(meta[key])
    except KeyError:
        raise ValueError(f"checkpoint {path!r} has no {key!r} in its metadata") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {path!r} has unreadable {key!r} metadata ({e})") from None


def read_tensor_file(path: str, fmt: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a whole safetensors file whose metadata "format" is `fmt` (the assets of
    benchmarks/digits_dit.py); ValueError naming the file otherwise (missing, truncated, garbled, another format)."""
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


def read_checkpoint(path: str) -> _Checkpoint:
    """The header of a checkpoint file of save_quantized, or of a save_pretrained folder of a quantized model."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_pretrained_folder(path)
    if not os.path.exists(path):
        raise ValueError(f"cannot read checkpoint {path!r}: no such file or folder")
    meta, specs = _header(path, path)
    fmt = meta.get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path!r} has format {fmt!r}; this version of lrq_kernels reads "
                         f"{CHECKPOINT_FORMAT!r} (save it again with lrq_kernels.save_quantized)")
    layouts = _json(meta, "layouts", path)
    checksums = _json(meta, "checksums", path)
    if set(checksums) != set(specs):
        raise ValueError(f"checkpoint {path!r}: its checksums name {len(checksums)} tensors, the file holds "
                         f"{len(specs)}")
    config = _json(meta, "model_config", path) if "model_config" in meta else None
    return _Checkpoint(path, specs, {k: path for k in specs}, layouts, checksums, meta.get("model_class"), config)


def _read_pretrained_folder(path: str) -> _Checkpoint:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise ValueError(f"cannot read checkpoint {path!r}: a folder must hold config.json (diffusers' "
                         f"save_pretrained) next to its safetensors files")
    with open(cfg_file) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"checkpoint {path!r}: config.json is unreadable ({e})") from None
    index = os.path.join(path, "diffusion_pytorch_model.safetensors.index.json")
    single = os.path.join(path, "diffusion_pytorch_model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        names = sorted(set(weight_map.values()))
    elif os.path.exists(single):
        names = [os.path.basename(single)]
    else:
        raise ValueError(f"cannot read checkpoint {path!r}: no diffusion_pytorch_model.safetensors in the folder")
    specs, files = {}, {}
    for name in names:
        fname = os.path.join(path, name)
        _, s = _header(fname, path)
        specs.update(s)
        files.update({k: fname for k in s})
    ck = _Checkpoint(path, specs, files, {}, None, config.get("_class_name"), config)
    for key in [k for k in specs if k.endswith("." + EXTRA_STATE)]:
        ck.layouts[key[: -len(EXTRA_STATE) - 1]] = decode_layout(ck.get(key))
        del specs[key], files[key]
    if not ck.layouts:
        raise ValueError(f"checkpoint {path!r} holds no QuantLinear layer (no '*._extra_state' tensors): it is "
                         f"a float model; load it with diffusers' from_pretrained")
    return ck


# --- putting a checkpoint into a model -------------------------------------------------------------------------

def _shells(model: nn.Module, ck: _Checkpoint, device) -> dict[str, QuantLinear]:
    """An empty QuantLinear for every layout, after checking that the model has a matching layer there."""
    shells = {}
    for name, layout in ck.layouts.items():
        try:
            current = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"checkpoint {ck.path!r}: layer {name!r} does not exist in the model "
                             f"({type(model).__name__}); is it another model's checkpoint?") from None
        if not isinstance(current, (nn.Linear, QuantLinear)) or \
                (current.in_features, current.out_features) != (layout.get("in_features"), layout.get("out_features")):
            raise ValueError(f"checkpoint {ck.path!r}: layer {name!r} ({layout.get('in_features')} -> "
                             f"{layout.get('out_features')}) does not match the model's {current!r}")
        shells[name] = QuantLinear.from_layout(layout, device=device)
    return shells


def _owner(key: str, shells: dict) -> str | None:
    prefix = key.rpartition(".")[0]
    return prefix if prefix in shells else None


def _check_specs(ck: _Checkpoint, expected: dict[str, torch.Tensor], shells: dict) -> None:
    """Names, shapes and dtypes of the file against the model-to-be; float tensors outside QuantLinears may
    differ in float dtype (they are cast), everything else must match exactly."""
    missing = sorted(set(expected) - set(ck.specs))
    unexpected = sorted(set(ck.specs) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {ck.path!r} does not match the model: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for key, ref in expected.items():
        shape, dtype = ck.specs[key]
        castable = _owner(key, shells) is None and dtype.is_floating_point and ref.dtype.is_floating_point
        if shape != tuple(ref.shape) or (dtype != ref.dtype and not castable):
            raise ValueError(f"checkpoint {ck.path!r}: tensor {key!r} has shape {shape} and dtype {dtype}, the "
                             f"model expects {tuple(ref.shape)} and {ref.dtype}")


def _expected_state(model: nn.Module, shells: dict) -> dict[str, torch.Tensor]:
    """The tensors the model's state dict will have once the shells are in place (without _extra_state)."""
    expected = {k: t for k, t in model.state_dict(keep_vars=True).items()
                if isinstance(t, torch.Tensor) and not any(k.startswith(n + ".") for n in shells)}
    for name, shell in shells.items():
        for key, t in shell.state_dict(keep_vars=True).items():
            if isinstance(t, torch.Tensor):
                expected[f"{name}.{key}"] = t
    return {k: t for k, t in expected.items() if not k.endswith(EXTRA_STATE)}


def _assign(model: nn.Module, key: str, t: torch.Tensor) -> None:
    prefix, _, attr = key.rpartition(".")
    mod = model.get_submodule(prefix) if prefix else model
    if attr in mod._parameters:
        mod._parameters[attr] = nn.Parameter(t, requires_grad=False)
    elif attr in mod._buffers:
        mod._buffers[attr] = t
    else:
        raise ValueError(f"{key!r} is neither a parameter nor a buffer of {type(mod).__name__}")


def load_quantized(model: nn.Module, path: str) -> nn.Module:
    """Load a checkpoint of `save_quantized` into `model` (the float model, or one already quantized alike).

    Everything is checked first (file integrity and checksums, format, every layer's layout against the model,
    every tensor's name, shape and dtype); the model is changed only when all of it passes, so a corrupted or
    mismatched file leaves the model as it was. Float tensors outside the quantized layers take the model's
    dtype (a checkpoint saved from a float32 model loads into a bf16 one).
    """
    ck = read_checkpoint(path)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    shells = _shells(model, ck, device)
    expected = _expected_state(model, shells)
    _check_specs(ck, expected, shells)
    state = {}
    for key, ref in expected.items():
        t = ck.get(key)
        state[key] = t.to(ref.dtype) if _owner(key, shells) is None and t.dtype != ref.dtype else t
    ck.close()
    for name, shell in shells.items():
        shell.check_state({k[len(name) + 1:]: v for k, v in state.items() if _owner(k, shells) == name})
    for name, shell in shells.items():
        _set_submodule(model, name, shell)
    full = dict(state)
    for name, shell in shells.items():
        full[f"{name}.{EXTRA_STATE}"] = shell.get_extra_state()
    model.load_state_dict(full, strict=True)
    return model


@contextlib.contextmanager
def _parameters_on_meta():
    """Modules built inside take their parameters on the meta device (no memory); buffers are built as usual,
    so the small non-persistent ones a model computes in __init__ (position tables) stay real."""
    register = nn.Module.register_parameter

    def on_meta(self, name, param):
        register(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _model_class(ck: _Checkpoint, model_class):
    if model_class is not None:
        recorded = (ck.model_class or "").rpartition(".")[2]
        if recorded and recorded != model_class.__name__:
            raise ValueError(f"checkpoint {ck.path!r} is a {recorded}, not a {model_class.__name__}")
        return model_class
    if not ck.model_class:
        raise ValueError(f"checkpoint {ck.path!r} records no model class; pass model_class=, or use "
                         f"load_quantized(float_model, path)")
    module, _, qual = ck.model_class.rpartition(".")
    if ck.model_config is None:
        raise ValueError(f"checkpoint {ck.path!r} records no model config, so {ck.model_class} cannot be built; "
                         f"use load_quantized(float_model, path)")
    try:   # classes are looked up in diffusers only: a checkpoint never makes us import other code
        import diffusers
        cls = getattr(diffusers, qual, None)
        if cls is None and module.split(".")[0] == "diffusers":
            cls = getattr(importlib.import_module(module), qual, None)
    except ImportError as e:
        raise ValueError(f"checkpoint {ck.path!r} needs diffusers to build {ck.model_class}: {e}") from None
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"checkpoint {ck.path!r}: unknown model class {ck.model_class!r} (not a diffusers "
                         f"model); pass model_class=")
    return cls


def load_quantized_model(path: str, device="cpu", dtype: torch.dtype | None = None, model_class=None,
                         progress: bool = False) -> nn.Module:
    """The quantized model of a checkpoint (a file of `save_quantized`, or a folder of diffusers' save_pretrained
    of a quantized model), built without its float weights.

    device: where every tensor goes. dtype: the dtype of the float tensors outside the quantized layers (None:
    as saved); the QuantLinear buffers keep their own dtypes. model_class: the class to build (default: the one
    the checkpoint records, looked up in diffusers).
    The model is built with its parameters on the meta device; each tensor of the file is then read, its
    checksum verified, and put in place on `device`, one at a time. Anything refused raises ValueError and no
    model is returned.
    """
    ck = read_checkpoint(path)
    cls = _model_class(ck, model_class)
    device = torch.device(device)
    if ck.model_config is None:   # a model_class= given, a config missing
        raise ValueError(f"checkpoint {ck.path!r} records no model config; use load_quantized(float_model, path)")
    try:
        with _parameters_on_meta():
            model = cls.from_config(dict(ck.model_config))
    except Exception as e:
        raise ValueError(f"checkpoint {ck.path!r}: {cls.__name__}.from_config failed on its config: {e}") from None
    model.eval().requires_grad_(False)
    shells = _shells(model, ck, "meta")
    for name, shell in shells.items():
        _set_submodule(model, name, shell)
    expected = _expected_state(model, {})
    _check_specs(ck, expected, shells)
    keys = list(expected)
    it = keys
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(keys, desc="loading", unit="tensor")
    for key in it:
        t = ck.get(key)
        if _owner(key, shells) is None and t.is_floating_point():
            t = t.to(dtype or ck.specs[key][1])
        _assign(model, key, t.to(device))
    ck.close()
    for name, shell in shells.items():
        shell.check_state({k: v for k, v in shell._buffers.items() if v is not None})
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise ValueError(f"checkpoint {ck.path!r} leaves {len(left)} tensors of the model unset: {left[:5]}")
    # the buffers built in __init__ that the file does not hold (non-persistent ones) follow, as with .to()
    for mod in model.modules():
        for bname, b in mod._buffers.items():
            if b is not None and not isinstance(mod, QuantLinear):
                mod._buffers[bname] = b.to(device, dtype if dtype is not None and b.is_floating_point() else b.dtype)
    return model
