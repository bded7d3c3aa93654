"""Tensor parallelism of QuantLinear over a torch.distributed process group, with local tensors.

It follows the tensor-parallel plans diffusers models carry (`model._tp_plan`: "colwise", "rowwise" and the
packed variants, as diffusers/hooks/tensor_parallel.py reads them) and gives each rank the same local tensors
as torch's ColwiseParallel / RowwiseParallel with local outputs, which is what diffusers' TP-aware attention
processors expect (`unflatten(-1, (-1, head_dim))`: the head count follows the local width).

    colwise  (split N)  rank r keeps its output channels: code rows, scales, bias. The input is the whole
                        token; the output is this rank's slice of the features. Nothing to communicate.
    rowwise  (split K)  rank r keeps its input channels: code columns, group scales, its slice of the rotation.
                        The input is this rank's slice of the features, the output the whole token. At run time
                        each token's absmax is all-reduced (MAX) before quantizing, so every rank writes the codes
                        of the unsharded layer, and the partial outputs are all-reduced (SUM); the bias is added
                        once, after the sum (QuantLinear._row_parallel_forward).

A "packed" style splits each of its blocks separately (diffusers' PackedColwiseParallel([1, 1]) for a fused
gate + up projection, PackedRowwiseParallel for FLUX's single-block proj_out whose input is cat(attention,
MLP)): rank r keeps the r-th slice of every block.

What a row split needs (checked, with the offending numbers in the message):
  - each rank's slice of each block is a whole number of Hadamard blocks (the rotation is block-diagonal,
    so a block never straddles two ranks) and of scale groups;
  - the ARS permutation keeps every channel on its own rank (a gather across ranks would need communication).
    Quantize with rotation="hadamard", or with a `hadamard_block` small enough, where it does not.
Only QuantLinear layers are sharded here; shard float nn.Linear layers with torch.distributed.tensor.parallel.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..formats.packing import pack_codes, unpack_codes
from .linear import QuantLinear

STYLES = ("colwise", "rowwise")


def _style_of(style) -> tuple[str, list[int] | None]:
    """("colwise" | "rowwise", proportional blocks or None) of a plan entry: a string, or diffusers'
    PackedColwiseParallel / PackedRowwiseParallel (read by name and `.blocks`, so diffusers stays optional)."""
    if isinstance(style, str) and style in STYLES:
        return style, None
    name = type(style).__name__
    if name in ("PackedColwiseParallel", "PackedRowwiseParallel"):
        return ("colwise" if "Colwise" in name else "rowwise"), getattr(style, "blocks", None)
    raise ValueError(f"tensor-parallel style must be 'colwise', 'rowwise', PackedColwiseParallel or "
                     f"PackedRowwiseParallel, got {style!r}")


def local_indices(total: int, blocks: list[int] | None, rank: int, world_size: int, what: str) -> torch.Tensor:
    """Indices [total / world_size] of rank `rank`'s slice: the r-th 1/world_size of each block (blocks are
    proportional sizes summing to a divisor of `total`; None is one block)."""
    blocks = blocks or [1]
    unit, rem = divmod(total, sum(blocks))
    if rem:
        raise ValueError(f"blocks {blocks} do not divide {what}={total}")
    parts, start = [], 0
    for b in blocks:
        size = b * unit
        if size % world_size:
            raise ValueError(f"cannot split a block of {size} {what} over {world_size} ranks: not divisible")
        chunk = size // world_size
        parts.append(torch.arange(start + rank * chunk, start + (rank + 1) * chunk))
        start += size
    return torch.cat(parts)


def _segments(idx: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of the contiguous runs of sorted indices."""
    breaks = (torch.nonzero(idx[1:] != idx[:-1] + 1).flatten() + 1).tolist()
    bounds = [0] + breaks + [idx.numel()]
    return [(int(idx[a]), b - a) for a, b in zip(bounds[:-1], bounds[1:])]


@torch.no_grad()
def shard_quant_linear(layer: QuantLinear, style, rank: int, world_size: int, group=None,
                       blocks: list[int] | None = None) -> QuantLinear:
    """Shard `layer` in place for rank `rank` of `world_size` (see the module docstring) and return it.
    `group`: the process group of the row split's all-reduces (None: the default group)."""
    if not isinstance(layer, QuantLinear):
        raise TypeError(f"layer must be a QuantLinear, got {type(layer).__name__}")
    if layer.tp_style is not None:
        raise ValueError(f"layer is already sharded ({layer.tp_style}); shard the unsharded layer")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    kind, plan_blocks = _style_of(style)
    blocks = blocks if blocks is not None else plan_blocks
    bits, g = layer.config.w_bits, layer.config.group_size
    n, k = layer.out_features, layer.in_features
    dev = layer.qweight.device

    if kind == "colwise":
        idx = local_indices(n, blocks, rank, world_size, "output channels").to(dev)
        layer.qweight = layer.qweight[idx].contiguous()
        layer.w_scales = layer.w_scales[idx].contiguous()
        if layer.bias is not None:
            layer.bias = layer.bias[idx].contiguous()
        layer.out_features = idx.numel()
    else:
        idx = local_indices(k, blocks, rank, world_size, "input channels")
        for start, length in _segments(idx):
            for unit, name in ((layer.block, "Hadamard block"), (g or 1, "scale group")):
                if start % unit or length % unit:
                    raise ValueError(f"row split of in_features={k} over {world_size} ranks: rank {rank}'s "
                                     f"channels [{start}, {start + length}) are not whole {name}s of {unit}; "
                                     f"quantize with a smaller hadamard_block (or group_size)")
        if layer.perm is not None:
            pos = torch.full((k,), -1, dtype=torch.long)
            pos[idx] = torch.arange(idx.numel())
            local = pos[layer.perm.cpu()[idx]]
            if bool((local < 0).any()):
                j = int(torch.nonzero(local < 0)[0])
                raise ValueError(f"row split over {world_size} ranks: the ARS permutation takes channel "
                                 f"{int(layer.perm[idx[j]])} to rank {rank}'s position {int(idx[j])}, across "
                                 f"ranks; quantize this layer with rotation='hadamard' for a row split")
            layer.perm = local.to(dev, torch.int32)
        if layer.channel_scale is not None:
            layer.channel_scale = layer.channel_scale[idx.to(dev)].contiguous()
        codes = unpack_codes(layer.qweight, bits, k)[:, idx.to(dev)]
        layer.qweight = pack_codes(codes, bits)
        if g:
            layer.w_scales = layer.w_scales[:, (idx[::g] // g).to(dev)].contiguous()
        layer.in_features = idx.numel()
    layer.tp_style, layer.tp_group = kind, group
    return layer


def _plan_regex(pattern: str) -> re.Pattern:
    # diffusers' globs: "*" stands for one index of a ModuleList ("transformer_blocks.*.attn.to_q")
    return re.compile("^" + re.escape(pattern).replace(r"\*", r"[^.]+") + "$")


def apply_tensor_parallel(model: nn.Module, tp_plan: dict | None = None, group=None) -> nn.Module:
    """Shard every QuantLinear of `model` that `tp_plan` names (default: the model's own `_tp_plan`, as
    diffusers defines it) over `group` (default: the default process group), in place. A planned layer that is
    not a QuantLinear raises (shard float layers with torch.distributed.tensor.parallel)."""
    import torch.distributed as dist
    plan = tp_plan if tp_plan is not None else getattr(model, "_tp_plan", None)
    if not plan:
        raise ValueError(f"{type(model).__name__} has no _tp_plan; pass tp_plan={{module glob: style}}")
    if not dist.is_initialized():
        raise RuntimeError("apply_tensor_parallel needs torch.distributed initialised (init_process_group)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    rules = [(_plan_regex(p), style) for p, style in plan.items()]
    done = 0
    for name, mod in list(model.named_modules()):
        style = next((s for rx, s in rules if rx.match(name)), None)
        if style is None:
            continue
        if not isinstance(mod, QuantLinear):
            raise TypeError(f"{name} is a {type(mod).__name__}, not a QuantLinear: apply_tensor_parallel shards "
                            f"quantized layers only (shard float ones with torch.distributed.tensor.parallel)")
        kind, blocks = _style_of(style)
        if blocks is None and not isinstance(style, str):
            blocks = getattr(mod, "_tp_packed_col_blocks" if kind == "colwise" else "_tp_packed_row_blocks", None)
            if not blocks:
                raise ValueError(f"{name}: packed style {type(style).__name__} without blocks, and the layer "
                                 f"carries no _tp_packed_*_blocks")
        shard_quant_linear(mod, kind, rank, world, group, blocks)
        done += 1
    if not done:
        raise ValueError(f"tp_plan matched no layer of {type(model).__name__}: {list(plan)[:4]}...")
    return model
