"""A tiny PixArt-Sigma pipeline from random components (no downloads): quantized through the command line, saved,
loaded by load_quantized_model in a fresh process, and its image close to the float pipeline's. Also the
command line's other paths on a tiny named config."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from lrq_kernels import cli  # noqa: E402

PROMPT = "a photo of a red cat"
RUN = ["--prompt", PROMPT, "--steps", "4", "--height", "32", "--device", "cpu", "--dtype", "fp32"]


def tiny_pixart_pipeline():
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel
    words = ["<pad>", "</s>", "<unk>"] + "a photo of cat dog red blue".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                           num_heads=2)).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        layers_per_block=1, norm_num_groups=8).eval()
    transformer = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=8,
                                           num_layers=2, cross_attention_dim=128, sample_size=16, patch_size=2,
                                           norm_type="ada_norm_single", caption_channels=32,
                                           use_additional_conditions=False, interpolation_scale=1).eval()
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "lrq_kernels", *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


@pytest.mark.slow
def test_quantized_pipeline_through_the_command_line_matches_float(tmp_path):
    pipe = tiny_pixart_pipeline()
    pipe.save_pretrained(str(tmp_path / "pipe"))
    ns = argparse.Namespace(prompt=PROMPT, steps=4, height=32, width=None, guidance=None)
    with torch.no_grad():
        want = np.array(cli._pipeline_call(pipe, ns, torch.Generator().manual_seed(0)).images[0])
    out = _cli("quantize", "--pipeline", str(tmp_path / "pipe"), "--calibrate", "2",
               "--out", str(tmp_path / "q.safetensors"), *RUN)
    assert "quantized 20 linears to W4A8(fp8)" in out       # 2 blocks x 10 (the embeddings stay in float)
    out = _cli("run", str(tmp_path / "q.safetensors"), "--pipeline", str(tmp_path / "pipe"),
               "--output", str(tmp_path / "q.png"), *RUN)
    from PIL import Image
    got = np.array(Image.open(tmp_path / "q.png"))
    assert got.shape == want.shape == (32, 32, 3)
    db = psnr(got, want)
    print(f"quantized pipeline image against the float one: {db:.1f} dB PSNR")
    # W4A8 with ARS and GPTQ from two calibration steps, this 2-block model, four solver steps: measured 51.9 dB
    assert db > 40


def test_command_line_on_a_tiny_named_config(tmp_path, capsys):
    path = str(tmp_path / "f.safetensors")
    assert cli.main(["quantize", "--model", "flux.1-dev", "--tiny", "--device", "cpu", "--dtype", "fp32",
                     "--out", path]) == 0
    assert cli.main(["info", path]) == 0
    assert cli.main(["run", path, "--device", "cpu", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "quantized 20 linears to W4A8(fp8)" in out and "FluxTransformer2DModel" in out
    assert "output (1, 64, 16) float32" in out                 # the tiny config's inputs
    assert "finite True" in out
    with pytest.raises(SystemExit, match="give exactly one of"):
        cli.main(["quantize", "--out", path])
    with pytest.raises(SystemExit, match="cannot read checkpoint"):
        cli.main(["info", str(tmp_path / "absent.safetensors")])


def test_command_line_quantizes_a_local_transformer_folder(tmp_path, capsys):
    from lrq_kernels.integrations.diffusers import build_model
    build_model("sd3.5-large", tiny=True, dtype=torch.float32).save_pretrained(str(tmp_path / "sd3"))
    path = str(tmp_path / "sd3.safetensors")
    assert cli.main(["quantize", "--pretrained", str(tmp_path / "sd3"), "--calibrate", "2", "--device", "cpu",
                     "--dtype", "fp32", "--out", path]) == 0
    assert cli.main(["run", path, "--device", "cpu", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "SD3Transformer2DModel" in out and "finite True" in out
    with pytest.raises(SystemExit, match="not a diffusers model folder"):
        cli.main(["quantize", "--pretrained", str(tmp_path), "--out", path])
