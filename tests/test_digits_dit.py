"""The shipped digits DiT (benchmarks/assets/digits_dit): it loads, quantizes under the default
configuration and samples on CPU; a damaged or mismatched checkpoint is refused; the sample metrics are right
on cases with known answers."""
import math
import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import digits_dit as dd  # noqa: E402

import lrq_kernels as lrq  # noqa: E402
from lrq_kernels.integrations.diffusers import DIT_SKIP  # noqa: E402


def test_checkpoint_loads_quantizes_and_samples_on_cpu():
    model, info = dd.load_generator()
    net, mu, cov, _ = dd.load_classifier()
    assert info["steps"] > 0 and mu.shape == (64,) and cov.shape == (64, 64)
    labels, noise = dd.eval_labels(4), dd.initial_noise(4, seed=0)
    ref = dd.sample(model, labels, noise, steps=3)
    assert ref.shape == (4, 1, 16, 16) and bool(torch.isfinite(ref).all())

    stats = lrq.calibrate(model, lambda m: dd.sample(m, labels, dd.initial_noise(4, seed=1), steps=2), skip=DIT_SKIP)
    assert len(stats) == 6 * 6                  # q, k, v, out, ff in, ff out in each of the 6 blocks
    lrq.quantize_model(model, lrq.QuantConfig(w_bits=4, a_bits=8), calib=stats, skip=DIT_SKIP, progress=False)
    assert sum(isinstance(m, lrq.QuantLinear) for m in model.modules()) == 36
    out = dd.sample(model, labels, noise, steps=3)
    # W4A8 stays close to the float samples (the GPU table measures ~39 dB over 25 steps)
    assert float(dd.psnr(out, ref).mean()) > 25
    m = dd.sample_metrics(out, labels, net, mu, cov, reference=ref)
    assert 0 <= m["accuracy"] <= 100 and m["fd"] >= 0 and 0 < m["ssim"] <= 1


def test_damaged_or_mismatched_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "t.safetensors"
    with open(dd.GENERATOR_FILE, "rb") as f:
        data = f.read()
    bad.write_bytes(data[: len(data) // 2])                        # truncated
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        dd.load_generator(str(bad))
    with pytest.raises(ValueError, match="format"):                 # the classifier is not a generator
        dd.load_generator(dd.CLASSIFIER_FILE)
    from safetensors.torch import save_file
    model, _ = dd.load_generator()
    state = {k: v.half() for k, v in model.state_dict().items()}
    meta = {"format": dd.GENERATOR_FORMAT, "model_config": __import__("json").dumps(dd.MODEL_CONFIG)}
    k0 = next(iter(state))
    save_file({k: v for k, v in state.items() if k != k0}, str(bad), metadata=meta)
    with pytest.raises(ValueError, match="missing"):
        dd.load_generator(str(bad))
    w = "transformer_blocks.0.attn1.to_q.weight"
    save_file({**state, w: torch.full_like(state[w], float("nan"))}, str(bad), metadata=meta)
    with pytest.raises(ValueError, match="non-finite"):
        dd.load_generator(str(bad))


def test_frechet_distance_known_cases():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    mu, cov = dd.feature_stats(a)
    assert abs(dd.frechet_distance(mu, cov, mu, cov)) < 1e-8
    # Gaussians N(m1, s1^2 I), N(m2, s2^2 I) in d dims: |m1 - m2|^2 + d (s1 - s2)^2
    d = 8
    fd = dd.frechet_distance(torch.zeros(d), torch.eye(d), torch.full((d,), 0.5), 4 * torch.eye(d))
    assert math.isclose(fd, d * 0.25 + d * 1.0, rel_tol=1e-9)
    # a non-diagonal pair against scipy's formula, computed here with a general matrix square root
    c1 = torch.cov(a.t())
    c2 = torch.cov((a @ torch.randn(8, 8, generator=g, dtype=torch.float64)).t())
    ev, vec = torch.linalg.eig(c1 @ c2)
    tr_sqrt = (vec @ torch.diag(ev.sqrt()) @ torch.linalg.inv(vec)).trace().real
    expect = float(c1.trace() + c2.trace() - 2 * tr_sqrt)
    assert math.isclose(dd.frechet_distance(torch.zeros(8), c1, torch.zeros(8), c2), expect, rel_tol=1e-6)


def test_psnr_and_ssim_known_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    assert torch.allclose(dd.ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert bool(torch.isinf(dd.psnr(x, x)).all())
    y = x + 0.02
    # a constant offset e: MSE = e^2 on the data range 2 -> PSNR = 10 log10(4 / e^2)
    assert torch.allclose(dd.psnr(y, x), torch.full((3,), 10 * math.log10(4 / 0.02 ** 2), dtype=torch.float64),
                          atol=1e-4)
    # constant images: SSIM is its luminance term (2 a b + C1) / (a^2 + b^2 + C1) on [0, 1] intensities
    a, b = torch.full((1, 1, 16, 16), 0.0), torch.full((1, 1, 16, 16), 0.2)   # 0.5 and 0.6 in [0, 1]
    assert math.isclose(float(dd.ssim(a, b)), (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4), rel_tol=1e-9)
    noisy = x + 0.05 * torch.randn(x.shape, generator=g)
    other = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    assert bool((dd.ssim(noisy, x) > 0.9).all() and (dd.ssim(noisy, x) < 1).all())
    assert bool((dd.ssim(other, x).abs() < 0.3).all())         # independent images: near 0
