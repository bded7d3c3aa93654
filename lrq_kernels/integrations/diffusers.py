"""What is specific to diffusers DiTs: which linears stay in float, and PixArt-style models for the demo."""
from __future__ import annotations

import torch

# Linears kept in float by default: embeddings (patch, timestep, caption, context), adaLN modulation and the
# final projection. They hold few of the FLOPs, and PTQ studies of DiTs (PTQ4DiT, Q-DiT, LRQ-DiT) keep them
# at full precision because their errors reach every block.
DIT_SKIP = ("*timestep_embedder*", "*time_text_embed*", "*time_embed*", "*adaln_single*", "*norm1.linear",
            "*norm1_context.linear", "*norm.linear", "*norm_out*", "*caption_projection*", "*context_embedder*",
            "*x_embedder*", "*pos_embed*", "proj_out*", "*proj_out_1", "*proj_out_2")

# PixArt-Sigma 1024^2 (../shared/dit_shapes.json, e2e.pixart-sigma-1024): 28 blocks of width 1152.
PIXART_SIGMA = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                    cross_attention_dim=1152, sample_size=128, patch_size=2, norm_type="ada_norm_single",
                    caption_channels=4096, use_additional_conditions=False, interpolation_scale=2)


def pixart_config(num_layers: int | None = None, sample_size: int | None = None) -> dict:
    """PixArt-Sigma's config, optionally with fewer blocks or a smaller latent (the CPU demo uses 2 and 32)."""
    cfg = dict(PIXART_SIGMA)
    if num_layers is not None:
        cfg["num_layers"] = num_layers
    if sample_size is not None:
        cfg["sample_size"] = sample_size
    return cfg


def make_pixart(config: dict, seed: int = 0):
    """A PixArtTransformer2DModel with random weights (diffusers' own initialisation), in float32."""
    from diffusers import PixArtTransformer2DModel
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(**config).eval()


def pixart_inputs(config: dict, batch: int = 2, text_tokens: int = 300, timestep: float = 500.0,
                  seed: int = 0, device="cpu", dtype=torch.float32) -> dict:
    """Random inputs of the shapes a PixArt pipeline feeds the transformer at one timestep."""
    g = torch.Generator().manual_seed(seed)
    s = config["sample_size"]
    return dict(
        hidden_states=torch.randn(batch, config["in_channels"], s, s, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch, text_tokens, config["caption_channels"], generator=g).to(device, dtype),
        timestep=torch.full((batch,), timestep).to(device),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )


# --- the real DiT configs of benchmarks/dit_shapes.json (e2e), with random weights --------------------------------

# The adaLN modulation linears: they run at M = batch (one token a sample), so their weights are read once a
# forward; quantized weight-only (W·A16, the small-M GEMV), they cost little time and most of FLUX's float weights.
DIT_ADALN = ("*norm1.linear", "*norm1_context.linear", "*norm.linear")
# Kept in float by the plan below: embeddings, the final norm and projection (few FLOPs; errors reach every block).
DIT_FLOAT = tuple(p for p in DIT_SKIP if p not in DIT_ADALN)


def dit_plan(config, adaln: str = "weight-only") -> dict:
    """quantize_model's `skip` and `overrides` for a diffusers DiT: the embeddings, final norm and projection in
    float; the adaLN modulation linears weight-only at the config's w_bits (adaln="weight-only") or in float
    (adaln="float", which is DIT_SKIP); every other linear under `config`."""
    from dataclasses import replace
    if adaln == "float":
        return {"skip": DIT_SKIP, "overrides": {}}
    if adaln != "weight-only":
        raise ValueError(f"adaln must be 'weight-only' or 'float', got {adaln!r}")
    wo = replace(config, a_bits=16, a_format="fp8")
    return {"skip": DIT_FLOAT, "overrides": {p: wo for p in DIT_ADALN}}


WAN_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6)

# name -> (diffusers class, config, batch, the config's "tiny" variant for CPU tests: same class, small widths)
MODELS = {
    "pixart-sigma": ("PixArtTransformer2DModel", PIXART_SIGMA, 2,
                     dict(pixart_config(num_layers=2, sample_size=8), num_attention_heads=2, attention_head_dim=64,
                          cross_attention_dim=128, caption_channels=64)),
    "sd3.5-large": ("SD3Transformer2DModel",
                    dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                         num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192), 2,
                    dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=32,
                         num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=64,
                         pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16)),
    "flux.1-dev": ("FluxTransformer2DModel", dict(guidance_embeds=True), 1,
                   dict(num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
                        joint_attention_dim=64, pooled_projection_dim=32, in_channels=16, guidance_embeds=True,
                        axes_dims_rope=(8, 12, 12))),
    "wan2.1-14b": ("WanTransformer3DModel", WAN_14B, 1,
                   dict(WAN_14B, num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
                        text_dim=64, freq_dim=32, ffn_dim=128, num_layers=2)),
}


def model_config(name: str, tiny: bool = False) -> tuple[str, dict, int]:
    """(diffusers class name, config, batch) of a named model of MODELS (its tiny variant with tiny=True)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}")
    cls, cfg, batch, tiny_cfg = MODELS[name]
    return cls, dict(tiny_cfg if tiny else cfg), batch


def is_tiny(name: str, model) -> bool:
    """Whether `model` has the tiny config of MODELS[name] (then model_inputs should be given tiny=True)."""
    norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v   # noqa: E731  (configs store lists)
    return all(norm(model.config.get(k)) == norm(v) for k, v in MODELS[name][3].items())


def spread_linear_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Every nn.Linear weight drawn from N(0, 1/in_features) and its bias zeroed: diffusers' own initialisation
    leaves some layers at zero (adaLN-zero, output projections), which would hide their quantization error."""
    gens = {}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            dev = mod.weight.device
            g = gens.setdefault(dev, torch.Generator(device=dev).manual_seed(seed))
            mod.weight.data.normal_(0.0, mod.in_features ** -0.5, generator=g)
            if mod.bias is not None:
                mod.bias.data.zero_()


def build_model(name: str, device="cpu", dtype=torch.bfloat16, tiny: bool = False, seed: int = 0):
    """A named DiT transformer with random weights (spread_linear_weights), built directly on `device` in `dtype`
    (a 12B model never passes through float32 or the CPU); modules the class keeps in float32 stay there."""
    import diffusers
    cls_name, cfg, _ = model_config(name, tiny)
    cls = getattr(diffusers, cls_name)
    default = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = cls(**cfg)
    finally:
        torch.set_default_dtype(default)
    from diffusers.utils import logging as diffusers_logging
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()   # its advice on .to(dtype) is for from_pretrained models
    try:
        model = model.to(device, dtype).eval().requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(level)
    with torch.no_grad():
        spread_linear_weights(model, seed)
        keep = getattr(model, "_keep_in_fp32_modules", None) or ()
        for pname, p in model.named_parameters():
            if any(k in pname.split(".") for k in keep):
                p.data = p.data.float()
    return model


def model_inputs(name: str, model, tiny: bool = False, batch: int | None = None, seed: int = 0,
                 timestep: float = 0.5, device="cpu", dtype=torch.bfloat16) -> dict:
    """Random inputs of the shapes a pipeline feeds the named transformer (its config read from `model`) at one
    timestep (`timestep` in [0, 1]: 0 is clean, 1 is pure noise). Real configs: PixArt-Sigma and SD3.5 at 1024^2
    (latent 128^2), FLUX.1 at 1024^2 (4096 image and 512 text tokens), Wan2.1 at 480p with 81 frames (latent
    21 x 60 x 104, 32760 tokens); tiny=True: a few tokens, for the tiny configs."""
    cfg = model.config
    b = batch or MODELS[name][2]
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    t = torch.full((b,), float(timestep))
    if name == "pixart-sigma":
        return pixart_inputs(dict(cfg), batch=b, text_tokens=8 if tiny else 300, timestep=1000 * float(timestep),
                             seed=seed, device=device, dtype=dtype)
    if name == "sd3.5-large":
        s, text = cfg["sample_size"], (8 if tiny else 333)
        return dict(hidden_states=rand(b, cfg["in_channels"], s, s),
                    encoder_hidden_states=rand(b, text, cfg["joint_attention_dim"]),
                    pooled_projections=rand(b, cfg["pooled_projection_dim"]), timestep=(t * 1000).to(device, dtype),
                    return_dict=False)
    if name == "flux.1-dev":
        side, text = (8, 8) if tiny else (64, 512)
        ids = torch.zeros(side, side, 3)
        ids[..., 1] = torch.arange(side)[:, None]
        ids[..., 2] = torch.arange(side)[None, :]
        return dict(hidden_states=rand(b, side * side, cfg["in_channels"]),
                    encoder_hidden_states=rand(b, text, cfg["joint_attention_dim"]),
                    pooled_projections=rand(b, cfg["pooled_projection_dim"]), timestep=t.to(device, dtype),
                    img_ids=ids.reshape(-1, 3).to(device, dtype), txt_ids=torch.zeros(text, 3).to(device, dtype),
                    guidance=torch.full((b,), 3.5).to(device, dtype), return_dict=False)
    if name == "wan2.1-14b":
        f, h, w, text = (3, 8, 8, 8) if tiny else (21, 60, 104, 512)
        return dict(hidden_states=rand(b, cfg["in_channels"], f, h, w), timestep=(t * 1000).to(device),
                    encoder_hidden_states=rand(b, text, cfg["text_dim"]), return_dict=False)
    raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}")
