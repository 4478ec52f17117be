"""Flux.1: the transformer against diffusers' ``FluxTransformer2DModel`` on the same tiny random
weights, detection of dev / schnell from full-size key layouts (meta tensors, shapes only), and
the family through the loaders and the real server (see the later tests in this file).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from plugins.core_nodes.models.flux import (
    FLUX_DEV,
    FLUX_SCHNELL,
    FluxTransformer,
    build_flux,
    config_from_state_dict,
)

from .flux_reference import TINY, diffusers_flux, tiny_flux_weights


def _diffusers_call(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
                    y: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """diffusers' packing (FluxPipeline._pack_latents / _prepare_latent_image_ids) around its model."""
    b, c, h, w = x.shape
    packed = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    out = model(
        hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=y, timestep=t,
        img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(ctx.shape[1], 3), guidance=guidance,
    ).sample  # fmt: skip
    return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize("guidance_embed", [True, False], ids=["dev", "schnell"])
def test_transformer_matches_diffusers(guidance_embed: bool) -> None:
    config = replace(TINY, guidance_embed=guidance_embed)
    sd = tiny_flux_weights(config, prefix="model.diffusion_model.")
    ours = build_flux(sd)
    assert ours.config == config
    theirs = diffusers_flux({k[len("model.diffusion_model.") :]: v for k, v in sd.items()}, config)
    torch.manual_seed(3)
    x, ctx, y = torch.randn(2, 16, 8, 6), torch.randn(2, 7, 32), torch.randn(2, 24)
    t = torch.tensor([0.7, 0.3])
    g = torch.tensor([3.5, 2.0]) if guidance_embed else None
    with torch.no_grad():
        got = ours(x, t, ctx, y, g)
        expected = _diffusers_call(theirs, x, t, ctx, y, g)
    assert got.shape == x.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    if guidance_embed:  # the distilled guidance really enters
        with torch.no_grad():
            other = ours(x, t, ctx, y, torch.tensor([1.0, 1.0]))
        assert not torch.allclose(other, got, atol=1e-3)


def test_odd_latent_sizes_are_padded_and_cut_back() -> None:
    ours = build_flux(tiny_flux_weights())
    x = torch.randn(1, 16, 7, 5)
    with torch.no_grad():
        out = ours(x, torch.tensor([0.5]), torch.randn(1, 3, 32), torch.randn(1, 24), torch.tensor([3.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def _meta_layout(config: object, prefix: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = FluxTransformer(config)  # type: ignore[arg-type]
    return {prefix + k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("config", "variant"), [(FLUX_DEV, "dev"), (FLUX_SCHNELL, "schnell")])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_full_size_layouts_are_recognised(config: object, variant: str, prefix: str) -> None:
    sd = _meta_layout(config, prefix)
    inner = {k[len(prefix) :]: v for k, v in sd.items()}
    found = config_from_state_dict(inner)
    assert found == config and found.variant == variant
    assert (found.hidden_size, found.num_heads, found.depth, found.depth_single_blocks) == (3072, 24, 19, 38)
    assert found.axes_dim == (16, 56, 56) and found.latent_channels == 16
