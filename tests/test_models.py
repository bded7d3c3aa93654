"""quantize_model on small diffusers DiTs (PixArt-style and DiT), calibrate, and checkpoints."""
import copy

import pytest
import torch
from conftest import rel_err

from lrq_kernels import (QuantConfig, QuantLinear, calibrate, load_quantized, quantize_model, save_quantized,
                         sqnr_db)
from lrq_kernels.integrations.diffusers import DIT_SKIP, make_pixart, pixart_config, pixart_inputs

TINY_PIXART = dict(pixart_config(num_layers=2, sample_size=8), num_attention_heads=2, attention_head_dim=64,
                   cross_attention_dim=128, caption_channels=64)


def _dit():
    from diffusers import DiTTransformer2DModel
    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4,
                                 num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()


def _dit_inputs(seed=0, t=5):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([t, t]),
                class_labels=torch.tensor([1, 3]), return_dict=False)


# Floor: 20 dB, one W4A8 layer's own output SQNR (a 4-bit weight quantizer gives 19-20 dB on Gaussian weights,
# 6 dB a bit minus clipping: benchmarks/results/quant_error.md; FP8 activations add ~31 dB noise). In these
# DiTs the quantized branches add into a float residual stream and the embeddings stay in float, so the whole
# model's output must not be noisier than a single quantized layer; measured: 39.6 dB (PixArt), 34.4 dB (DiT).
FLOOR_DB = 20.0


@pytest.mark.parametrize("kind", ["pixart", "dit"])
def test_quantize_model_runs_and_output_sqnr_above_floor(kind):
    torch.set_grad_enabled(False)
    if kind == "pixart":
        model = make_pixart(TINY_PIXART)
        inp = lambda seed=0, t=500.0: pixart_inputs(TINY_PIXART, text_tokens=8, seed=seed, timestep=t)
    else:
        model, inp = _dit(), _dit_inputs
    ref = model(**inp())[0]
    stats = calibrate(model, lambda m: [m(**inp(seed=s, t=t)) for s, t in ((1, 900), (2, 500), (3, 100))],
                      skip=DIT_SKIP)
    qmodel = quantize_model(copy.deepcopy(model), QuantConfig(), calib=stats, skip=DIT_SKIP, progress=False)
    qlayers = [n for n, m in qmodel.named_modules() if isinstance(m, QuantLinear)]
    assert len(qlayers) == (20 if kind == "pixart" else 12)
    assert all("proj_out" not in n and "timestep_embedder" not in n for n in qlayers)
    out = qmodel(**inp())[0]
    db = sqnr_db(ref, out)
    print(f"{kind}: W4A8 output SQNR {db:.2f} dB over {len(qlayers)} layers (floor {FLOOR_DB} dB)")
    assert db > FLOOR_DB


def test_calibrate_records_every_linear_input():
    model = _dit()
    stats = calibrate(model, lambda m: [m(**_dit_inputs(s)) for s in range(3)], skip=DIT_SKIP)
    assert "transformer_blocks.0.attn1.to_q" in stats and "proj_out_2" not in stats
    st = stats["transformer_blocks.1.ff.net.2"]
    assert st.in_features == 512 and st.calls == 3 and st.tokens.shape[1] == 512


def test_checkpoint_roundtrip_and_corruption_refused(tmp_path):
    torch.set_grad_enabled(False)
    model = _dit()
    stats = calibrate(model, lambda m: m(**_dit_inputs(1)), skip=DIT_SKIP)
    qmodel = quantize_model(copy.deepcopy(model), QuantConfig(w_bits=3), calib=stats, skip=DIT_SKIP,
                            progress=False)
    path = tmp_path / "q.safetensors"
    save_quantized(qmodel, str(path))
    fresh = _dit()
    load_quantized(fresh, str(path))
    assert torch.equal(fresh(**_dit_inputs())[0], qmodel(**_dit_inputs())[0])

    # truncated file: refused, and the float model is left exactly as it was
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:-1000])
    victim = _dit()
    before = copy.deepcopy(victim.state_dict())
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_quantized(victim, str(bad))
    assert all(torch.equal(v, victim.state_dict()[k]) for k, v in before.items())
    assert not any(isinstance(m, QuantLinear) for m in victim.modules())

    # a model of another shape: refused before anything changes
    from diffusers import DiTTransformer2DModel
    other = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
                                  num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    with pytest.raises(ValueError, match="does not match"):
        load_quantized(other, str(path))
    assert not any(isinstance(m, QuantLinear) for m in other.modules())


def test_quantize_model_rejects_bad_config():
    with pytest.raises(TypeError, match="config must be a QuantConfig, got dict"):
        quantize_model(torch.nn.Linear(4, 4), {"w_bits": 4})
