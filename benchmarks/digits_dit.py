"""A small class-conditional DiT trained on scikit-learn's digits, its judge, and the sample metrics.

Used by benchmarks/train_digits_dit.py (trains both networks on the GPU), benchmarks/quality.py (the
quantization quality table) and tests/test_digits_dit.py (the CI smoke test of the shipped checkpoint).

    data        sklearn.datasets.load_digits: 1797 8x8 images, values 0..16, 10 classes; upsampled
                bilinearly to 16x16 and mapped to [-1, 1] (`digits_images`)
    generator   diffusers' DiTTransformer2DModel (adaLN-zero, class labels), 6 blocks of width 256 (4 heads
                of 64), patch 2 on one 16x16 channel: 64 tokens. Predicts the noise (epsilon) of a
                DDPM schedule (squaredcos_cap_v2, 1000 steps); sampled with DDIM (eta 0) and classifier-free
                guidance, the null class being label 10.
    judge       a small CNN classifier (`DigitsClassifier`) trained on the same images; its 64-d penultimate
                activations are the feature space of the Frechet distance.
    metrics     accuracy of the intended label, Frechet distance to the real images' features, and PSNR /
                SSIM of a quantized model's sample against the float model's sample of the same noise.

Checkpoints (benchmarks/assets/digits_dit/): transformer.safetensors holds the generator in float16 (the
float model *is* these float16 values, run in float32) with its config and scheduler in the metadata;
classifier.safetensors holds the judge in float32 with the mean and covariance of the real images' features.
Both are checked in full before anything is loaded (`load_generator`, `load_classifier`).
"""
from __future__ import annotations

import json
import math
import os

import torch
from torch import nn
import torch.nn.functional as F

from lrq_kernels.nn.checkpoint import read_tensor_file

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "digits_dit")
GENERATOR_FILE = os.path.join(ASSETS, "transformer.safetensors")
CLASSIFIER_FILE = os.path.join(ASSETS, "classifier.safetensors")
GENERATOR_FORMAT = "lrq_kernels/digits_dit/1"
CLASSIFIER_FORMAT = "lrq_kernels/digits_classifier/1"

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES            # the label of the unconditional branch (classifier-free guidance)
IMAGE_SIZE = 16

MODEL_CONFIG = dict(num_attention_heads=4, attention_head_dim=64, in_channels=1, out_channels=1, num_layers=6,
                    sample_size=IMAGE_SIZE, patch_size=2, num_embeds_ada_norm=NUM_CLASSES)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                        clip_sample=True)
TEST_SPLIT = 297                    # images held out from both trainings (the judge's test accuracy)


# --- data ---------------------------------------------------------------------------------------------------

def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as float32 [N, 1, 16, 16] in [-1, 1] and int64 labels [N] (needs scikit-learn)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data ships with scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x * 2 - 1, torch.tensor(d.target, dtype=torch.long)


def train_test_split(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test) of a fixed random split; the test part has TEST_SPLIT images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[TEST_SPLIT:], perm[:TEST_SPLIT]


# --- generator ----------------------------------------------------------------------------------------------

def make_generator(seed: int = 0):
    """The DiT with diffusers' initialisation. The per-block label embeddings keep their null-class row but
    never drop labels themselves: diffusers' LabelEmbedding drops in train mode independently in every block,
    whereas classifier-free guidance needs one decision per sample (train_digits_dit.py drops to NULL_CLASS)."""
    from diffusers import DiTTransformer2DModel
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**MODEL_CONFIG)
    for m in model.modules():
        if type(m).__name__ == "LabelEmbedding":
            m.dropout_prob = 0.0
    return model


def scheduler(kind: str = "ddim"):
    from diffusers import DDIMScheduler, DDPMScheduler
    cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[kind]
    return cls(**SCHEDULER_CONFIG)


def _check_state(model: nn.Module, state: dict, path: str) -> None:
    """Every tensor of the model present with its shape and finite; nothing extra. Raises before any copy."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path!r} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, t in expected.items():
        if state[k].shape != t.shape:
            raise ValueError(f"checkpoint tensor {k!r} has shape {tuple(state[k].shape)}, "
                             f"the model expects {tuple(t.shape)}")
        if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()):
            raise ValueError(f"checkpoint tensor {k!r} has non-finite values")


def save_generator(model: nn.Module, path: str, info: dict) -> None:
    from safetensors.torch import save_file
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": GENERATOR_FORMAT, "model_config": json.dumps(MODEL_CONFIG),
            "scheduler_config": json.dumps(SCHEDULER_CONFIG), "info": json.dumps(info)}
    save_file(state, path, metadata=meta)


def load_generator(path: str = GENERATOR_FILE, device="cpu"):
    """(model in float32, eval mode, on `device`; info dict of the training run). Refuses a file whose format,
    config, tensor names, shapes or values do not match, before loading anything."""
    state, meta = read_tensor_file(path, GENERATOR_FORMAT)
    cfg = json.loads(meta.get("model_config", "null"))
    if cfg != MODEL_CONFIG:
        raise ValueError(f"checkpoint {path!r} was trained with model config {cfg}, this code builds {MODEL_CONFIG}")
    model = make_generator()
    _check_state(model, state, path)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.to(device).eval(), json.loads(meta.get("info", "{}"))


# --- judge --------------------------------------------------------------------------------------------------

class DigitsClassifier(nn.Module):
    """16x16 -> 10 classes. features(): the 64-d penultimate activations (the Frechet distance's space)."""

    FEATURES = 64

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),     # 8x8
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(),     # 4x4
        )
        self.fc = nn.Linear(64 * 4 * 4, self.FEATURES)
        self.head = nn.Linear(self.FEATURES, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def save_classifier(model: DigitsClassifier, real_mu: torch.Tensor, real_cov: torch.Tensor, path: str,
                    info: dict) -> None:
    from safetensors.torch import save_file
    state = {f"net.{k}": v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    state["real_mu"] = real_mu.double().contiguous().cpu()
    state["real_cov"] = real_cov.double().contiguous().cpu()
    save_file(state, path, metadata={"format": CLASSIFIER_FORMAT, "info": json.dumps(info)})


def load_classifier(path: str = CLASSIFIER_FILE, device="cpu"):
    """(classifier in eval mode, real-feature mean [64] and covariance [64, 64] in float64, info dict)."""
    state, meta = read_tensor_file(path, CLASSIFIER_FORMAT)
    net = DigitsClassifier()
    d = DigitsClassifier.FEATURES
    for key, shape in (("real_mu", (d,)), ("real_cov", (d, d))):
        if key not in state or tuple(state[key].shape) != shape:
            got = tuple(state[key].shape) if key in state else "nothing"
            raise ValueError(f"checkpoint {path!r} must hold {key!r} of shape {shape}, got {got}")
    net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    _check_state(net, net_state, path)
    net.load_state_dict(net_state, strict=True)
    return (net.to(device).eval(), state["real_mu"].to(device), state["real_cov"].to(device),
            json.loads(meta.get("info", "{}")))


# --- sampling -----------------------------------------------------------------------------------------------

def initial_noise(n: int, seed: int) -> torch.Tensor:
    """The starting noise of n samples, made on the CPU so that every device starts from the same values."""
    return torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def eval_labels(n: int) -> torch.Tensor:
    """n labels cycling through the classes (n a multiple of 10 gives every class n / 10 times)."""
    return torch.arange(n) % NUM_CLASSES


@torch.no_grad()
def sample(model: nn.Module, labels: torch.Tensor, noise: torch.Tensor, steps: int = 25, guidance: float = 1.0,
           batch: int = 500) -> torch.Tensor:
    """DDIM (eta 0: deterministic given the noise) with classifier-free guidance; float32 [N, 1, 16, 16] in
    [-1, 1]. The default guidance 1 (the conditional model alone) is the measured choice: of the scales 1, 1.5,
    2 and 3 it gave the float model its best Frechet distance (15.8 against 31.1 at 1.5, 500 samples) at 98.8%
    accuracy (assets/digits_dit/training.json). The model runs in float32 on the device of its parameters or buffers."""
    device = next(iter(model.state_dict().values())).device
    out = []
    for lo in range(0, labels.numel(), batch):
        y = labels[lo:lo + batch].to(device)
        x = noise[lo:lo + batch].to(device, torch.float32)
        sched = scheduler("ddim")
        sched.set_timesteps(steps)
        guided = guidance != 1.0          # at 1 the guided prediction is the conditional one: skip the rest
        y2 = torch.cat([y, torch.full_like(y, NULL_CLASS)]) if guided else y
        for t in sched.timesteps:
            xin = torch.cat([x, x]) if guided else x
            eps = model(xin, timestep=t.expand(xin.shape[0]).to(device), class_labels=y2, return_dict=False)[0]
            if guided:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            x = sched.step(eps, t, x).prev_sample
        out.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(out)


# --- metrics ------------------------------------------------------------------------------------------------

@torch.no_grad()
def classify(net: DigitsClassifier, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels [N], features float64 [N, 64]) of images in [-1, 1]."""
    device = next(net.parameters()).device
    preds, feats = [], []
    for lo in range(0, images.shape[0], batch):
        x = images[lo:lo + batch].to(device, torch.float32)
        f = net.features(x)
        preds.append(net.head(f).argmax(dim=1).cpu())
        feats.append(f.double().cpu())
    return torch.cat(preds), torch.cat(feats)


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.double()
    return f.mean(dim=0), torch.cov(f.t())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), in float64 via symmetric eigendecompositions
    (the trace of (C1 C2)^1/2 equals that of the symmetric form, which avoids a non-symmetric sqrtm)."""
    mu1, mu2, cov1, cov2 = (t.double().cpu() for t in (mu1, mu2, cov1, cov2))
    w, v = torch.linalg.eigh(cov1)
    s1 = (v * w.clamp_min(0).sqrt()) @ v.t()
    cross = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (data range 2); inf where equal."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of [N, 1, H, W] images in [-1, 1], computed on intensities mapped to
    [0, 1] (its luminance term assumes non-negative intensities): Gaussian window (7 wide for 16x16 images,
    sigma 1.5), valid positions only, K1 = 0.01, K2 = 0.03, data range 1."""
    a, b = (a.double() + 1) / 2, (b.double() + 1) / 2
    r = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]

    def blur(t):
        return F.conv2d(t, k)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


def sample_metrics(images: torch.Tensor, labels: torch.Tensor, net, real_mu, real_cov,
                   reference: torch.Tensor | None = None) -> dict:
    """accuracy (%), Frechet distance to the real images (and its |mean difference|^2 part); with `reference`
    (the float model's samples of the same noise) the Frechet distance to those, mean PSNR (dB; equal images
    are left out of the mean and counted) and mean SSIM."""
    pred, feats = classify(net, images)
    mu, cov = feature_stats(feats)
    out = {"accuracy": 100.0 * float((pred == labels.cpu()).double().mean()),
           "fd": frechet_distance(mu, cov, real_mu, real_cov),
           "fd_mean_term": float((mu - real_mu.cpu()).pow(2).sum())}
    if reference is not None:
        out["fd_to_float"] = frechet_distance(mu, cov, *feature_stats(classify(net, reference)[1]))
        p = psnr(images, reference)
        finite = torch.isfinite(p)
        out["psnr"] = float(p[finite].mean()) if bool(finite.any()) else math.inf
        out["identical"] = int((~finite).sum())
        out["ssim"] = float(ssim(images, reference).mean())
    return out
