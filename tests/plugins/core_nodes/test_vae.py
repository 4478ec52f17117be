"""Our autoencoder against diffusers' AutoencoderKL with the same tiny random weights (fp32).

Tolerance: 1e-5 absolute (observed ~2e-6). Both the single-file layout (converted for diffusers
by its own ``convert_ldm_vae_checkpoint``) and the diffusers layout (loaded by us) are covered.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from plugins.core_nodes.models.vae import LATENT_SCALE, VAE, build_vae, tiled_map

from . import tiny_sd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ATOL = 1e-5


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    weights = tiny_sd.vae_weights()
    config = tiny_sd.diffusers_vae_config()
    ref = AutoencoderKL(**config)
    ldm = {f"first_stage_model.{k}": v for k, v in weights.items()}
    ref.load_state_dict(convert_ldm_vae_checkpoint(ldm, config), strict=True)
    return build_vae(weights), ref.eval()


def test_encode_matches_diffusers(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    ours, ref = pair
    img = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        got = ours.encode(img)
        want = ref.encode(img).latent_dist.mode()
    assert got.shape == (2, 4, 16, 12)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_decode_matches_diffusers(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    ours, ref = pair
    z = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = ours.decode(z)
        want = ref.decode(z).sample
    assert got.shape == (2, 3, 12, 10)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_diffusers_layout_weights_load_too(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    ours, ref = pair
    from_diffusers = build_vae(ref.state_dict())
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(from_diffusers.state_dict()[name], value, atol=0, rtol=0)


def test_image_wrapper_converts_ranges_and_layout(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    ours, _ = pair
    vae = VAE(ours)
    pixels = torch.rand(1, 32, 24, 4)  # BHWC; an alpha channel is ignored
    latent = vae.encode(pixels)
    with torch.no_grad():
        direct = ours.encode(pixels[..., :3].movedim(-1, 1) * 2 - 1)
    torch.testing.assert_close(latent, direct, atol=ATOL, rtol=0)
    image = vae.decode(latent)
    assert image.shape == (1, 32, 24, 3)
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_tiled_with_one_tile_equals_plain(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    vae = VAE(pair[0])
    latent = torch.randn(1, 4, 8, 6)
    torch.testing.assert_close(vae.decode_tiled(latent, tile=64, overlap=16), vae.decode(latent))
    pixels = torch.rand(1, 16, 16, 3)
    torch.testing.assert_close(vae.encode_tiled(pixels, tile=512, overlap=64), vae.encode(pixels))


def test_tiled_with_many_tiles_has_the_right_shape(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    vae = VAE(pair[0])
    image = vae.decode_tiled(torch.randn(1, 4, 20, 14), tile=8, overlap=2)
    assert image.shape == (1, 40, 28, 3)
    assert torch.isfinite(image).all()
    latent = vae.encode_tiled(torch.rand(1, 40, 28, 3), tile=16, overlap=4)
    assert latent.shape == (1, 4, 20, 14)


def test_tiled_map_blends_without_seams() -> None:
    # For a local function, blending overlapped tiles must reproduce the untiled result exactly.
    x = torch.randn(2, 3, 37, 29)
    up = tiled_map(
        lambda t: F.interpolate(t, scale_factor=8.0) * 2, x, tile=10, overlap=4, scale=8.0, out_channels=3
    )
    torch.testing.assert_close(up, F.interpolate(x, scale_factor=8.0) * 2)
    img = torch.randn(1, 3, 64, 48)
    down = tiled_map(lambda t: F.avg_pool2d(t, 8), img, tile=24, overlap=8, scale=1 / 8, out_channels=3)
    torch.testing.assert_close(down, F.avg_pool2d(img, 8))


def test_tiled_map_rejects_bad_tiles() -> None:
    with pytest.raises(ValueError):
        tiled_map(lambda t: t, torch.zeros(1, 1, 8, 8), tile=4, overlap=4, scale=1.0, out_channels=1)
    with pytest.raises(ValueError):
        tiled_map(lambda t: t, torch.zeros(1, 1, 64, 64), tile=20, overlap=4, scale=1 / 8, out_channels=1)


def test_latent_scale_per_family() -> None:
    assert LATENT_SCALE["sd1"] == 0.18215
    assert LATENT_SCALE["sd2"] == 0.18215
    assert LATENT_SCALE["sdxl"] == 0.13025
