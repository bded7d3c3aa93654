"""Checkpoints: save_quantized / load_quantized / load_quantized_model, save_pretrained folders, and what is
refused (truncated, flipped bytes, unknown format, another model, unknown class). Also quantize_model's own
refusals (nothing to do) and its skip and overrides arguments."""
import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lrq_kernels as lrq
from lrq_kernels import QuantConfig, QuantLinear
from lrq_kernels.integrations.diffusers import DIT_SKIP, make_pixart, pixart_config, pixart_inputs
from lrq_kernels.nn.checkpoint import _parameters_on_meta

TINY = dict(pixart_config(num_layers=2, sample_size=8), num_attention_heads=2, attention_head_dim=64,
            cross_attention_dim=128, caption_channels=64)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def quantized():
    """(float model, its W4A8 quantized copy, inputs, quantized output), float32 on the CPU."""
    with torch.no_grad():
        model = make_pixart(TINY)
        inp = pixart_inputs(TINY, text_tokens=8)
        q = lrq.quantize_model(copy.deepcopy(model), QuantConfig(), skip=DIT_SKIP, progress=False)
        return model, q, inp, q(**inp)[0]


@pytest.fixture
def ckpt(quantized, tmp_path):
    path = tmp_path / "q.safetensors"
    lrq.save_quantized(quantized[1], str(path))
    return path


def _rewrite(src, dst, **meta_changes):
    """A copy of checkpoint `src` with some metadata keys changed (None deletes one)."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in meta_changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    save_file(state, str(dst), metadata=meta)
    return dst


def test_load_quantized_model_builds_without_float_weights_and_matches(quantized, ckpt):
    _, q, inp, want = quantized
    loaded = lrq.load_quantized_model(str(ckpt))
    assert type(loaded) is type(q)
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 20
    assert not any(isinstance(m, torch.nn.Linear) and m.weight.device.type == "meta" for m in loaded.modules())
    assert torch.equal(loaded(**inp)[0], want)


def test_parameters_on_meta_allocate_nothing_but_buffers_stay_real():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4096, 4096)
            self.register_buffer("table", torch.arange(4.0), persistent=False)

    with _parameters_on_meta():
        m = M()
    assert m.lin.weight.device.type == "meta" and m.lin.bias.device.type == "meta"
    assert m.table.device.type == "cpu" and torch.equal(m.table, torch.arange(4.0))
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"      # the patch is gone afterwards


def test_dtype_of_float_tensors_follows_the_target(quantized, ckpt):
    _, q, _, _ = quantized
    inp16 = pixart_inputs(TINY, text_tokens=8, dtype=torch.bfloat16)
    want = copy.deepcopy(q).to(torch.bfloat16)(**inp16)[0]
    # a float32 checkpoint into a bf16 float model: the float tensors take the model's dtype
    into = lrq.load_quantized(make_pixart(TINY).to(torch.bfloat16), str(ckpt))
    assert into.pos_embed.proj.weight.dtype == torch.bfloat16
    assert torch.equal(into(**inp16)[0], want)
    built = lrq.load_quantized_model(str(ckpt), dtype=torch.bfloat16)
    ql = next(m for m in built.modules() if isinstance(m, QuantLinear))
    assert built.pos_embed.proj.weight.dtype == torch.bfloat16 and ql.w_scales.dtype == torch.float32
    assert torch.equal(built(**inp16)[0], want)


def test_a_flipped_data_byte_is_refused(quantized, ckpt, tmp_path):
    data = bytearray(ckpt.read_bytes())
    data[-3] ^= 0x10                                   # inside the last tensor's bytes
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its recorded checksum"):
        lrq.load_quantized_model(str(bad))
    victim = make_pixart(TINY)
    before = copy.deepcopy(victim.state_dict())
    with pytest.raises(ValueError, match="does not match its recorded checksum"):
        lrq.load_quantized(victim, str(bad))
    assert not any(isinstance(m, QuantLinear) for m in victim.modules())
    assert all(torch.equal(v, victim.state_dict()[k]) for k, v in before.items())


def test_truncated_file_is_refused(ckpt, tmp_path):
    bad = tmp_path / "short.safetensors"
    bad.write_bytes(ckpt.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cannot read"):
        lrq.load_quantized_model(str(bad))
    with pytest.raises(ValueError, match="cannot read checkpoint .*no such file"):
        lrq.load_quantized_model(str(tmp_path / "absent.safetensors"))


def test_unknown_format_version_is_refused(ckpt, tmp_path):
    for fmt in ("lrq_kernels/1", "lrq_kernels/9"):
        bad = _rewrite(ckpt, tmp_path / "v.safetensors", format=fmt)
        with pytest.raises(ValueError, match=f"has format '{fmt}'; this version of lrq_kernels reads"):
            lrq.load_quantized_model(str(bad))


def test_missing_or_unknown_model_class_is_refused(ckpt, tmp_path):
    bad = _rewrite(ckpt, tmp_path / "noclass.safetensors", model_class=None)
    with pytest.raises(ValueError, match="records no model class"):
        lrq.load_quantized_model(str(bad))
    bad = _rewrite(ckpt, tmp_path / "os.safetensors", model_class="os.system")
    with pytest.raises(ValueError, match="unknown model class 'os.system'"):
        lrq.load_quantized_model(str(bad))
    bad = _rewrite(ckpt, tmp_path / "nocfg.safetensors", model_config=None)
    with pytest.raises(ValueError, match="records no model config"):
        lrq.load_quantized_model(str(bad))


def test_another_models_checkpoint_is_refused(ckpt, tmp_path):
    from diffusers import DiTTransformer2DModel
    with pytest.raises(ValueError, match="is a PixArtTransformer2DModel, not a DiTTransformer2DModel"):
        lrq.load_quantized_model(str(ckpt), model_class=DiTTransformer2DModel)
    # the config of a narrower PixArt with this file's tensors: refused on the first layer that differs
    cfg = json.loads(safe_open(str(ckpt), framework="pt").metadata()["model_config"])
    cfg["attention_head_dim"] = 32
    bad = _rewrite(ckpt, tmp_path / "other.safetensors", model_config=json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        lrq.load_quantized_model(str(bad))


def test_save_pretrained_folder_loads(quantized, tmp_path):
    _, q, inp, want = quantized
    q.save_pretrained(str(tmp_path / "pre"))          # the layers' _extra_state is a tensor: no crash
    loaded = lrq.load_quantized_model(str(tmp_path / "pre"))
    assert torch.equal(loaded(**inp)[0], want)
    model, _, _, _ = quantized
    model.save_pretrained(str(tmp_path / "float"))
    with pytest.raises(ValueError, match="holds no QuantLinear layer"):
        lrq.load_quantized_model(str(tmp_path / "float"))


def test_save_needs_a_quantized_model(quantized, tmp_path):
    with pytest.raises(ValueError, match="has no QuantLinear layer; quantize it first"):
        lrq.save_quantized(quantized[0], str(tmp_path / "f.safetensors"))


def test_quantize_model_skip_string_is_one_pattern_and_nothing_to_do_says_so(quantized):
    model = quantized[0]
    q = lrq.quantize_model(copy.deepcopy(model), QuantConfig(rotation="hadamard"), skip="*ff*", progress=False)
    names = [n for n, m in q.named_modules() if isinstance(m, QuantLinear)]
    assert names and not any("ff" in n for n in names)
    assert any("to_q" in n for n in names)
    with pytest.raises(ValueError, match=r"nothing to do on PixArtTransformer2DModel: all \d+ of its nn.Linear "
                                         r"layers match skip=\('\*',\)"):
        lrq.quantize_model(copy.deepcopy(model), QuantConfig(), skip="*", progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        lrq.quantize_model(quantized[1], QuantConfig(), skip=(), progress=False)
    with pytest.raises(ValueError, match="has no nn.Linear layer"):
        lrq.quantize_model(torch.nn.GELU(), QuantConfig(), progress=False)
    with pytest.raises(TypeError, match="skip must be a pattern or an iterable of patterns"):
        lrq.quantize_model(copy.deepcopy(model), QuantConfig(), skip=[3], progress=False)


def test_overrides_give_matching_layers_their_config(quantized):
    model = quantized[0]
    q = lrq.quantize_model(copy.deepcopy(model), QuantConfig(rotation="hadamard"), skip=DIT_SKIP,
                           overrides={"*ff.net.2": QuantConfig(a_bits=16, rotation="hadamard")}, progress=False)
    for name, m in q.named_modules():
        if isinstance(m, QuantLinear):
            assert m.config.a_bits == (16 if name.endswith("ff.net.2") else 8), name
