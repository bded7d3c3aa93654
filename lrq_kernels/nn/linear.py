"""QuantConfig and QuantLinear: a drop-in replacement of nn.Linear running the quantized data path.

    y = gemm(rotate_quant(x), packed W_rot codes) * scales + bias        (a_bits 8 or 4)
    y = gemm_a16(rotate(x), packed W_rot codes) + bias                    (a_bits 16: weight-only)

State (all buffers, so .to() and state_dict carry them):
    qweight        uint8 [N, packed_row_bytes(K, w_bits)]   packed codes of W_rot (formats/packing.py)
    w_scales       float32 [N] or [N, K / group_size]
    codebook       float32 [2^w_bits], e4m3-exact
    bias           float32 [N] (absent when the linear had none)
    perm           int32 [K]   (absent unless the rotation permutes; the CUDA rotate+quantize reads an int16 copy,
                               made once: lrq_kernels.cuda.gather_tables)
    channel_scale  float32 [K] (absent unless the rotation smooths)
and the layout metadata in `_extra_state`, a uint8 tensor of its JSON (so a state dict holds only tensors and
any tensor serializer, diffusers' `save_pretrained` included, can write it), checked on load before any tensor
is copied.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .._checks import check_choice, check_tensor
from ..formats.codebooks import is_e4m3_exact
from ..formats.packing import packed_row_bytes
from ..formats.weight import FORMATS, GROUP_SIZES, QuantizedWeight, quantize_weight
from ..ops import gemm_a8, quant_linear_a8, quant_linear_a16, rotate
from ..ops import linear as linear_ops
from ..rotation.ars import ActStats, choose_rotation
from ..rotation.rotation import KINDS, Rotation, check_block, default_block

STATE_VERSION = 1
ROUNDINGS = ("gptq", "nearest")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a linear layer.

    w_bits: 3 or 4.  a_bits: 8, 4 (INT4 levels, simulated through the 8-bit path) or 16 (weight-only).
    w_format: "auto" | "tlq" | "int" | "nf" | "learned" (formats/weight.py).  a_format: "fp8" or "int".
    group_size: None (a scale per output channel), 64 or 128.
    rotation: "ars" (chosen per layer from calibration statistics; the block Hadamard where a layer has none),
              "hadamard" (block Hadamard) or "none".
    hadamard_block: None (the default for K: rotation.default_block) or a power of two dividing K.
    w_rounding: "gptq" (default: the codes are rounded by GPTQ against the calibration tokens of the layer,
                formats/gptq.py; a layer built without calibration statistics rounds to nearest) or "nearest".
    """
    w_bits: int = 4
    a_bits: int = 8
    w_format: str = "auto"
    a_format: str = "fp8"
    group_size: int | None = None
    rotation: str = "ars"
    hadamard_block: int | None = None
    w_rounding: str = "gptq"

    def __post_init__(self):
        check_choice("w_bits", self.w_bits, (3, 4))
        check_choice("a_bits", self.a_bits, (4, 8, 16))
        check_choice("w_format", self.w_format, FORMATS)
        check_choice("a_format", self.a_format, ("fp8", "int"))
        check_choice("group_size", self.group_size, GROUP_SIZES)
        check_choice("rotation", self.rotation, ("ars", "hadamard", "none"))
        check_choice("w_rounding", self.w_rounding, ROUNDINGS)
        if self.a_bits == 4 and self.a_format != "int":
            raise ValueError(f"a_bits=4 needs a_format='int' (INT4 levels; there is no 4-bit float format here), "
                             f"got a_format={self.a_format!r}")
        if self.hadamard_block is not None and (not isinstance(self.hadamard_block, int) or self.hadamard_block < 1):
            raise ValueError(f"hadamard_block must be None or a positive power of two, got {self.hadamard_block!r}")

    @property
    def name(self) -> str:
        a = "16" if self.a_bits == 16 else f"{self.a_bits}({self.a_format})"
        return f"W{self.w_bits}A{a}"


class QuantLinear(nn.Module):
    """A quantized nn.Linear. Build it with `QuantLinear.from_linear(linear, config, act_stats)`."""

    def __init__(self, in_features: int, out_features: int, config: QuantConfig, *, bias: bool,
                 w_format: str, rotation_kind: str, block: int, permuted: bool, smoothed: bool,
                 device=None):
        super().__init__()
        check_choice("rotation_kind", rotation_kind, KINDS)
        check_block(block, in_features)
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.w_format, self.rotation_kind, self.block = w_format, rotation_kind, block
        n, k, g = out_features, in_features, config.group_size
        self.register_buffer("qweight", torch.zeros(n, packed_row_bytes(k, config.w_bits), dtype=torch.uint8,
                                                    device=device))
        self.register_buffer("w_scales", torch.zeros((n, k // g) if g else (n,), device=device))
        self.register_buffer("codebook", torch.zeros(2 ** config.w_bits, device=device))
        self.register_buffer("bias", torch.zeros(n, device=device) if bias else None)
        self.register_buffer("perm", torch.arange(k, dtype=torch.int32, device=device) if permuted else None)
        self.register_buffer("channel_scale", torch.ones(k, device=device) if smoothed else None)
        self.rotation_note = ""
        # tensor parallelism (nn/parallel.py sets these when it shards the layer): "colwise" needs nothing at
        # run time; "rowwise" all-reduces each token's absmax and the partial outputs over tp_group
        self.tp_style, self.tp_group = None, None

    def _apply(self, fn, recurse=True):
        # .to(device) moves every buffer; .to(dtype) / .half() / .bfloat16() leave them in their own dtypes
        # (codes are uint8, scales and codebook float32 by specification), so a whole model can be cast.
        for name, t in self._buffers.items():
            if t is not None:
                out = fn(t)
                self._buffers[name] = out if out.dtype == t.dtype else t.to(out.device)
        return self

    # --- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig, act_stats: ActStats | None = None
                    ) -> "QuantLinear":
        """Quantize `linear` under `config`. `act_stats` (from lrq_kernels.calibrate) lets the layer choose its
        rotation by measured output error (rotation="ars"; without it the layer takes the block Hadamard) and
        round its codes by GPTQ on the calibration tokens (w_rounding="gptq"; without it, to nearest)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
        k, n = linear.in_features, linear.out_features
        block = config.hadamard_block or default_block(k)
        check_block(block, k)
        if config.group_size and k % config.group_size:
            raise ValueError(f"group_size={config.group_size} must divide in_features={k}")
        if act_stats is not None and act_stats.in_features != k:
            raise ValueError(f"act_stats has {act_stats.in_features} channels but the layer has in_features={k}")
        w = linear.weight.detach().float()

        if config.rotation == "none":
            rot = Rotation.identity()
        elif config.rotation == "hadamard" or act_stats is None:
            rot = Rotation("hadamard", block)
        else:
            # Candidates are scored with the weights quantized by a fixed-codebook proxy of the layer's format
            # (NF for the searched formats auto/tlq/learned): fitting a codebook per candidate made ARS 4x
            # slower (4.3 s of 5.7 s for a 1152 x 1152 layer on this repo's 2-core CPU, measured with cProfile).
            proxy = config.w_format if config.w_format in ("int", "nf") else "nf"
            rot = choose_rotation(act_stats, config.a_format, config.a_bits, block, weight=w,
                                  quantize_w=lambda w_rot: quantize_weight(w_rot, config.w_bits, proxy,
                                                                           config.group_size).dequantize())
        h = None
        if config.w_rounding == "gptq" and act_stats is not None:
            h = rot.apply_to_hessian(act_stats.input_hessian().to(w.device))
        qw = quantize_weight(rot.fold_into_weight(w), config.w_bits, config.w_format, config.group_size, h)
        mod = cls(k, n, config, bias=linear.bias is not None, w_format=qw.fmt, rotation_kind=rot.kind,
                  block=rot.block, permuted=rot.perm is not None, smoothed=rot.channel_scale is not None,
                  device=w.device)
        mod.qweight.copy_(qw.packed)
        mod.w_scales.copy_(qw.scales)
        mod.codebook.copy_(qw.codebook)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        if rot.perm is not None:
            mod.perm.copy_(rot.perm)
        if rot.channel_scale is not None:
            mod.channel_scale.copy_(rot.channel_scale)
        mod.rotation_note = rot.note
        mod.quant_info = qw.info
        for attr in ("_tp_packed_col_blocks", "_tp_packed_row_blocks"):   # diffusers' packed tensor-parallel plans
            if hasattr(linear, attr):
                setattr(mod, attr, getattr(linear, attr))
        return mod

    @property
    def rotation(self) -> Rotation:
        return Rotation(self.rotation_kind, self.block, self.perm, self.channel_scale, self.rotation_note)

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.qweight, self.w_scales, self.codebook, self.config.w_bits, self.w_format,
                               (self.out_features, self.in_features), self.config.group_size)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this layer computes with, in the original input space (rotation undone)."""
        w_rot = self.quantized_weight().dequantize()
        return self.rotation.unfold_weight(w_rot)

    # --- forward -----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, min_ndim=1, dtypes=(torch.float32, torch.float16, torch.bfloat16))
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x's last dim must be in_features={self.in_features}, got shape {tuple(x.shape)}")
        if x.device != self.qweight.device:
            raise ValueError(f"x is on {x.device} but this QuantLinear is on {self.qweight.device}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.tp_style == "rowwise":
            return self._row_parallel_forward(x2).reshape(*lead, self.out_features)
        cfg = self.config
        g = cfg.group_size or 0
        direct = _runs_eagerly(x)
        if cfg.a_bits == 16:
            op = linear_ops._quant_linear_a16 if direct else quant_linear_a16
            y = op(x2, self.perm, self.channel_scale, self.block, self.qweight, self.w_scales, self.codebook,
                   cfg.w_bits, g, self.bias)
        else:
            op = linear_ops._quant_linear_a8 if direct else quant_linear_a8
            y = op(x2, self.perm, self.channel_scale, self.block, cfg.a_format, cfg.a_bits, self.qweight,
                   self.w_scales, self.codebook, cfg.w_bits, g, self.bias, x.dtype)
        return y.reshape(*lead, self.out_features)

    def kernel_plan(self, tokens: int, dtype: torch.dtype = torch.bfloat16) -> str:
        """Which kernels a forward of `tokens` rows in `dtype` runs on this layer's device, and why not the others
        (ops/dispatch.py)."""
        c, dev, k, n = self.config, self.qweight.device, self.in_features, self.out_features
        if c.a_bits == 16:
            rotated = self.perm is not None or self.channel_scale is not None or self.block > 1
            p = linear_ops.plan_a16(dev, tokens, k, n, self.block, c.w_bits, c.group_size or 0, dtype, rotated,
                                    self.perm is not None)
        else:
            p = linear_ops.plan_a8(dev, tokens, k, n, self.block, c.a_format, c.w_bits, c.group_size or 0, dtype,
                                   dtype)
        return p.describe()

    def _row_parallel_forward(self, x2: torch.Tensor) -> torch.Tensor:
        """This rank holds input channels of the layer (nn/parallel.py). Every rank quantizes its channels of
        a token with the absmax of the whole token (all-reduced), so the codes are the unsharded layer's; the
        partial outputs are summed in float32 and the bias is added once, after the sum."""
        import torch.distributed as dist
        from ..reference.act_quant import quantize_tokens_with_amax_ref, token_absmax   # no kernel takes an
        # outside absmax yet
        cfg = self.config
        g = cfg.group_size or 0
        if cfg.a_bits == 16:
            y = quant_linear_a16(x2, self.perm, self.channel_scale, self.block, self.qweight,
                                 self.w_scales, self.codebook, cfg.w_bits, g, None).float()
        else:
            xf = x2.float()
            r = xf if self.rotation_kind == "none" else rotate(xf, self.perm, self.channel_scale, self.block)
            local = token_absmax(r)
            amax = local.clone()
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=self.tp_group)
            amax = torch.where(torch.isnan(local), local, amax)   # NaN stays NaN, whatever MAX makes of it
            codes, scales = quantize_tokens_with_amax_ref(r, amax, cfg.a_format, cfg.a_bits)
            y = gemm_a8(codes, scales, self.qweight, self.w_scales, self.codebook, cfg.w_bits, self.in_features,
                        g, None, torch.float32)
        dist.all_reduce(y, group=self.tp_group)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x2.dtype)

    def extra_repr(self) -> str:
        g = f", group={self.config.group_size}" if self.config.group_size else ""
        c = self.config
        a = "float (weight-only)" if c.a_bits == 16 else ("fp8" if c.a_format == "fp8" else f"int{c.a_bits}")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"w={self.w_format}{self.config.w_bits}{g}, a={a}, rotation={self.rotation_kind}"
                f"(block={self.block})" + (f", tensor-parallel {self.tp_style} shard" if self.tp_style else ""))

    # --- state dict: metadata in _extra_state, everything checked before anything is copied ---------------

    def layout(self) -> dict:
        return {"version": STATE_VERSION, "in_features": self.in_features, "out_features": self.out_features,
                "config": asdict(self.config), "w_format": self.w_format, "rotation_kind": self.rotation_kind,
                "block": self.block, "bias": self.bias is not None, "permuted": self.perm is not None,
                "smoothed": self.channel_scale is not None}

    def get_extra_state(self) -> torch.Tensor:
        return encode_layout(self.layout())

    def set_extra_state(self, state):
        if decode_layout(state) != self.layout():
            raise ValueError(f"checkpoint layout {decode_layout(state)} does not match this QuantLinear's "
                             f"{self.layout()}")

    @classmethod
    def from_layout(cls, layout: dict, device=None) -> "QuantLinear":
        """An empty QuantLinear with the layout of a checkpoint (to load it into)."""
        try:
            if layout.get("version") != STATE_VERSION:
                raise ValueError(f"version {layout.get('version')!r}, expected {STATE_VERSION}")
            return cls(layout["in_features"], layout["out_features"], QuantConfig(**layout["config"]),
                       bias=layout["bias"], w_format=layout["w_format"], rotation_kind=layout["rotation_kind"],
                       block=layout["block"], permuted=layout["permuted"], smoothed=layout["smoothed"],
                       device=device)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"invalid QuantLinear layout in checkpoint ({e}): {layout!r}") from None

    def check_state(self, state_dict: dict, prefix: str = "") -> None:
        """Raise unless `state_dict` holds exactly this layer's tensors with the right shapes, dtypes and
        values a kernel can trust (finite scales, e4m3-exact codebook, a valid permutation)."""
        own = {name: t for name, t in list(self._buffers.items()) if t is not None}
        for name, ref in own.items():
            key = prefix + name
            if key not in state_dict:
                raise ValueError(f"checkpoint is missing {key!r}")
            t = state_dict[key]
            if not isinstance(t, torch.Tensor) or t.shape != ref.shape or t.dtype != ref.dtype:
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"checkpoint tensor {key!r} must have shape {tuple(ref.shape)} and dtype "
                                 f"{ref.dtype}, got {got}")
        for name in ("perm", "channel_scale"):
            if self._buffers.get(name) is None and prefix + name in state_dict:
                raise ValueError(f"checkpoint has {prefix + name!r} but this layer's layout has no {name}")
        if not bool(torch.isfinite(state_dict[prefix + "w_scales"]).all()):
            raise ValueError(f"checkpoint tensor {prefix + 'w_scales'!r} has non-finite values")
        if not is_e4m3_exact(state_dict[prefix + "codebook"]):
            raise ValueError(f"checkpoint tensor {prefix + 'codebook'!r} is not exactly representable in e4m3")
        if self.perm is not None:
            p = state_dict[prefix + "perm"]
            if not torch.equal(torch.sort(p.cpu()).values, torch.arange(self.in_features)):
                raise ValueError(f"checkpoint tensor {prefix + 'perm'!r} is not a permutation of "
                                 f"0..{self.in_features - 1}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None and decode_layout(extra) != self.layout():
            raise ValueError(f"{prefix or 'QuantLinear'}: checkpoint layout {decode_layout(extra)} does not match "
                             f"this layer's {self.layout()}")
        self.check_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _runs_eagerly(x: torch.Tensor) -> bool:
    """Whether a forward can call its op's implementation directly rather than through the dispatcher: in eager
    mode, with no tracing, no dispatch or function mode and no gradient wanted, the dispatcher has nothing to do
    for these ops (one implementation, no autograd) but costs host time on every layer (docs/tuning.md:
    direct-eager-call). torch.compile, export, FakeTensor, profilers' modes and autograd see the registered op."""
    return not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
                or torch._C._is_torch_function_mode_enabled() or (x.requires_grad and torch.is_grad_enabled()))


def encode_layout(layout: dict) -> torch.Tensor:
    """A QuantLinear's layout as the uint8 tensor of its JSON (its `_extra_state` in a state dict)."""
    return torch.frombuffer(bytearray(json.dumps(layout, sort_keys=True).encode()), dtype=torch.uint8)


def decode_layout(state) -> dict:
    """The layout dict of an `_extra_state` entry (the uint8 JSON tensor, or the dict itself)."""
    if isinstance(state, dict):
        return state
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1:
        try:
            return json.loads(bytes(state.cpu().tolist()).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"QuantLinear _extra_state is not a readable layout ({e})") from None
    raise ValueError(f"QuantLinear _extra_state must be a layout dict or its uint8 JSON tensor, got "
                     f"{type(state).__name__}")


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of `module` (quantized layers count their packed codes)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total

