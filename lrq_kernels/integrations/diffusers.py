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
