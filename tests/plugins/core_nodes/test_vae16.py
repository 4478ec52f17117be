"""The 16-channel autoencoder of Flux / SD3 and the families' latent formats.

A tiny random autoencoder in the reference's single-file layout (no ``quant_conv`` /
``post_quant_conv``) is converted to diffusers by diffusers' own single-file conversion and must
encode and decode as diffusers' ``AutoencoderKL(latent_channels=16, use_quant_conv=False)`` does.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from plugins.core_nodes.models.checkpoint import vae_from_state_dict
from plugins.core_nodes.models.latent_formats import FLUX, SD3
from plugins.core_nodes.models.vae import (
    LATENT_SCALE,
    AutoencoderKL,
    VAEConfig,
    build_vae,
    config_from_state_dict,
)

CONFIG = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, use_quant_conv=False)


def _single_file_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = AutoencoderKL(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _diffusers(sd: dict[str, torch.Tensor]) -> DiffusersVAE:
    vae = DiffusersVAE(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    converted = convert_ldm_vae_checkpoint(sd, dict(vae.config))
    missing, unexpected = vae.load_state_dict(converted, strict=True)
    assert not missing and not unexpected
    return vae.eval()


def test_layout_has_no_quant_convs_and_config_is_read_back() -> None:
    sd = _single_file_weights()
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) for k in sd)
    assert config_from_state_dict(sd) == CONFIG


def test_encode_decode_match_diffusers() -> None:
    sd = _single_file_weights()
    ours = vae_from_state_dict({"first_stage_model." + k: v for k, v in sd.items()}, "tiny flux vae")
    theirs = _diffusers(sd)
    assert ours.latent_channels == 16
    torch.manual_seed(1)
    pixels = torch.rand(2, 32, 48, 3)
    with torch.no_grad():
        expected = theirs.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mean
        latent = ours.encode(pixels)
        assert latent.shape == (2, 16, 16, 24)
        assert torch.allclose(latent, expected, atol=1e-4, rtol=0)
        z = torch.randn(1, 16, 8, 8)
        decoded = theirs.decode(z).sample
        image = ours.decode(z)
    assert torch.allclose(image, ((decoded + 1) / 2).clamp(0, 1).movedim(1, -1), atol=1e-4, rtol=0)


def test_diffusers_layout_loads_too() -> None:
    sd = _single_file_weights(2)
    theirs = _diffusers(sd)
    ours = build_vae(theirs.state_dict())
    z = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        assert torch.allclose(ours.decode(z), theirs.decode(z).sample, atol=1e-4, rtol=0)


def test_latent_formats_scale_and_shift() -> None:
    latent = torch.randn(1, 16, 4, 4)
    assert torch.allclose(FLUX.process_in(latent), (latent - 0.1159) * 0.3611)
    assert torch.allclose(SD3.process_in(latent), (latent - 0.0609) * 1.5305)
    for fmt in (FLUX, SD3):
        assert torch.allclose(fmt.process_out(fmt.process_in(latent)), latent, atol=1e-6)
        assert fmt.latent_channels == 16 and len(fmt.latent_rgb_factors) == 16
        assert fmt.preview_image(latent).shape == (4, 4, 3)
    assert LATENT_SCALE["flux"] == FLUX.scale_factor and LATENT_SCALE["sd3"] == SD3.scale_factor
