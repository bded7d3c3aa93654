"""Tensor parallelism of QuantLinear (lrq_kernels/nn/parallel.py), on CPU: the sharding itself in one process,
and a tiny FLUX transformer sharded by its own diffusers `_tp_plan` over 2 gloo processes, against the
unsharded model; then the same quantized transformer under diffusers' context parallelism (Ulysses)."""
import copy
import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lrq_kernels as lrq
from lrq_kernels.formats.packing import unpack_codes
from lrq_kernels.integrations.diffusers import DIT_SKIP
from lrq_kernels.nn.parallel import apply_tensor_parallel, local_indices, shard_quant_linear

FLUX_TINY = dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=32,
                 num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 14, 14))
# a row split must not cut a Hadamard block: FLUX's single-block proj_out reads cat(attention 128, MLP 512),
# so at 2 ranks each rank holds 64 + 256 of its 640 channels; blocks of 64 fit
CONFIGS = [lrq.QuantConfig(w_bits=4, a_bits=8, rotation="hadamard", hadamard_block=64),
           lrq.QuantConfig(w_bits=3, a_bits=4, a_format="int", rotation="hadamard", hadamard_block=64, group_size=64),
           lrq.QuantConfig(w_bits=4, a_bits=16, rotation="hadamard", hadamard_block=64)]


def _layer(k=256, n=96, cfg=CONFIGS[0], seed=0):
    torch.manual_seed(seed)
    return lrq.QuantLinear.from_linear(nn.Linear(k, n), cfg)


def test_local_indices_split_every_block():
    assert local_indices(8, None, 1, 2, "x").tolist() == [4, 5, 6, 7]
    assert local_indices(640, [128, 512], 0, 2, "x").tolist() == list(range(64)) + list(range(128, 384))
    with pytest.raises(ValueError, match="not divisible"):
        local_indices(9, [1, 2], 0, 2, "input channels")       # blocks of 3 and 6 over 2 ranks


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_column_shards_concatenate_to_the_layer(cfg):
    full = _layer(cfg=cfg)
    x = torch.randn(5, 256)
    y = full(x)
    parts = [shard_quant_linear(copy.deepcopy(full), "colwise", r, 3)(x) for r in range(3)]
    assert torch.equal(torch.cat(parts, dim=-1), y)


def test_row_shard_holds_its_columns():
    full = _layer(cfg=CONFIGS[1])
    shard = shard_quant_linear(copy.deepcopy(full), "rowwise", 1, 2)
    assert (shard.in_features, shard.out_features) == (128, 96)
    assert torch.equal(unpack_codes(shard.qweight, 3, 128), unpack_codes(full.qweight, 3, 256)[:, 128:])
    assert torch.equal(shard.w_scales, full.w_scales[:, 2:])           # groups of 64: groups 2 and 3
    assert torch.equal(shard.bias, full.bias)                          # added once, after the all-reduce
    assert shard.qweight.numel() * 2 == full.qweight.numel()


def test_bad_row_splits_are_refused():
    with pytest.raises(ValueError, match="Hadamard block"):           # a block of 256 cut in two
        shard_quant_linear(_layer(cfg=lrq.QuantConfig(rotation="hadamard")), "rowwise", 0, 2)
    cfg = lrq.QuantConfig(rotation="ars", hadamard_block=64)
    layer = lrq.QuantLinear(256, 32, cfg, bias=False, w_format="int", rotation_kind="ars", block=64,
                            permuted=True, smoothed=False)
    layer.perm[0], layer.perm[255] = 255, 0                            # channel 255 gathered into position 0
    with pytest.raises(ValueError, match="across ranks"):
        shard_quant_linear(layer, "rowwise", 0, 2)
    with pytest.raises(ValueError, match="rank must be"):
        shard_quant_linear(_layer(), "colwise", 2, 2)
    with pytest.raises(ValueError, match="style"):
        shard_quant_linear(_layer(), "diagonal", 0, 2)
    with pytest.raises(ValueError, match="already sharded"):
        shard_quant_linear(shard_quant_linear(_layer(), "colwise", 0, 2), "colwise", 0, 2)


def _flux_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    b, s, t = 2, 16, 8
    return dict(hidden_states=torch.randn(b, s, 8, generator=g), encoder_hidden_states=torch.randn(b, t, 64, generator=g),
                pooled_projections=torch.randn(b, 32, generator=g), timestep=torch.tensor([0.5, 0.25]),
                img_ids=torch.zeros(s, 3), txt_ids=torch.zeros(t, 3), return_dict=False)


def _worker(rank, world, store_file):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    # a file store has no server process whose exit could race the other rank's teardown; the timeout bounds
    # how long a rank waits in a collective when the other one has failed (the default is 30 minutes)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        from diffusers import FluxTransformer2DModel
        torch.manual_seed(0)
        base = FluxTransformer2DModel(**FLUX_TINY).eval()
        inputs = _flux_inputs()
        with torch.no_grad():
            for cfg in CONFIGS:
                model = lrq.quantize_model(copy.deepcopy(base), cfg, skip=DIT_SKIP, progress=False)
                ref = model(**inputs)[0]
                planned = lambda m: [q for n, q in m.named_modules() if isinstance(q, lrq.QuantLinear)  # noqa: E731
                                     and "norm" not in n]
                bytes_full = sum(q.qweight.numel() for q in planned(model))
                apply_tensor_parallel(model)                       # the model's own diffusers _tp_plan
                out = model(**inputs)[0]
                bytes_rank = sum(q.qweight.numel() for q in planned(model))
                assert bytes_rank * world == bytes_full, (cfg.name, bytes_rank, bytes_full)
                err = ((out - ref).norm() / ref.norm()).item()
                assert err < 1e-5, f"{cfg.name}: relative error {err} against the unsharded model"

            # NaN in one token reaches that token's outputs only, through both all-reduces
            torch.manual_seed(1)
            up = lrq.QuantLinear.from_linear(nn.Linear(128, 256), CONFIGS[0])
            down = lrq.QuantLinear.from_linear(nn.Linear(256, 64), CONFIGS[0])
            x = torch.randn(3, 128)
            x[1, 5] = float("nan")
            ref = down(torch.relu(up(x)))
            shard_quant_linear(up, "colwise", rank, world)
            shard_quant_linear(down, "rowwise", rank, world)
            out = down(torch.relu(up(x)))
            assert bool(torch.isnan(out[1]).all()) and bool(torch.isfinite(out[[0, 2]]).all())
            assert torch.allclose(out[[0, 2]], ref[[0, 2]], rtol=1e-5, atol=1e-6)

            # diffusers' own context parallelism (Ulysses: sequence shards, heads exchanged by all-to-all) over a
            # W4A8 model whose QuantLinears stay whole on each rank: per-token quantization needs no other token.
            # Ring attention needs an attention backend that returns the log-sum-exp (flash, on GPUs only).
            from diffusers import ContextParallelConfig
            torch.accelerator.device_count = lambda: 1     # diffusers picks device rank % count: 0 on a CPU box
            model = lrq.quantize_model(copy.deepcopy(base), CONFIGS[0], skip=DIT_SKIP, progress=False)
            ref = model(**inputs)[0]
            mesh = dist.device_mesh.init_device_mesh("cpu", (1, world), mesh_dim_names=("ring", "ulysses"))
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world, mesh=mesh))
            out = model(**inputs)[0]
            err = ((out - ref).norm() / ref.norm()).item()
            assert err < 1e-5, f"context parallel: relative error {err} against the unsharded model"
        dist.barrier()                                             # both ranks done before either tears down
    finally:
        dist.destroy_process_group()
    # every check has passed by here. Leave without interpreter finalization: in CI a passing rank once died
    # there with SIGABRT ("terminate called without an active exception") from a gloo thread torn down late.
    # A failed check above still raises, and mp.spawn reports it.
    os._exit(0)


def test_flux_tensor_and_context_parallel_two_ranks_match_one(tmp_path):
    pytest.importorskip("diffusers")
    mp.spawn(_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)
