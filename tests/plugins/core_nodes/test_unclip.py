"""SD2.1 unCLIP: detection, the noise-augmented ADM vector and sampling through the server.

A tiny random-weight unCLIP checkpoint in the real single-file layout (SD2-style UNet with an ADM
input twice the image embedding's width, OpenCLIP text and vision towers, the noise augmentor's
tables, a VAE) is built here. The ADM vector is checked against the reference's formula written
out (cosine-capped DDPM schedule, noise from ``seed - 10``, sinusoidal level embedding, strength,
the merge of several images), and the UNet against diffusers' ``UNet2DConditionModel`` with a
projection class embedding fed by ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.checkpoint import CheckpointError, detect_family, load_checkpoint
from plugins.core_nodes.models.clip_vision import clip_vision_from_checkpoint
from plugins.core_nodes.models.diffusers_format import unet_to_single_file
from plugins.core_nodes.models.model_base import SD21UNCLIP, BaseModel, build_base_model
from plugins.core_nodes.models.unclip import (
    UNCLIP_SCHEDULE,
    CLIPEmbeddingNoiseAugmentation,
    UnclipError,
    unclip_adm,
)
from plugins.core_nodes.models.unet import UNetModel, build_unet
from plugins.core_nodes.models.vae import LATENT_SCALE

from . import tiny_pipeline, tiny_sd
from .node_helpers import messages, run_prompt
from .test_clip_vision_nodes import _reference_model, _to_openclip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

EMBED = 8  # the tiny vision tower's projection width
UNET = replace(tiny_sd.UNET_CONFIGS["sd2"], context_dim=tiny_pipeline.CLIP_WIDTH, adm_in_channels=2 * EMBED)


# --- the reference's formulas, written out ---------------------------------------------------------


def _alphas_cumprod() -> torch.Tensor:
    """squaredcos_cap_v2 over 1000 steps: betas from the cosine alpha-bar curve capped at 0.999,
    their cumulative product in float64 (numpy), then float32."""
    f = [math.cos((i / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(1001)]
    betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(1000)])
    return torch.from_numpy(np.cumprod(1.0 - betas, axis=0))


def _level_embedding(level: int, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = float(level) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)])[None]


def _augmented(embed: torch.Tensor, amount: float, noise: torch.Tensor) -> torch.Tensor:
    level = round(999 * amount)
    abar = _alphas_cumprod()[level]
    signal, spread = abar.sqrt().float(), (1 - abar).sqrt().float()
    return torch.cat([signal * embed[None] + spread * noise, _level_embedding(level, embed.shape[-1])], dim=1)


def _entry(embeds: torch.Tensor, strength: float, amount: float) -> dict[str, Any]:
    return {
        "clip_vision_output": SimpleNamespace(image_embeds=embeds),
        "strength": strength,
        "noise_augmentation": amount,
    }


def _model(seed: int = 0) -> SD21UNCLIP:
    torch.manual_seed(seed)
    unet = UNetModel(UNET)
    model = build_base_model("sd2", "eps", unet, adapters.latent_format_for("sd2"))
    assert isinstance(model, SD21UNCLIP)
    return model


# --- the noise augmentor and the ADM vector ---------------------------------------------------------


def test_schedule_tables_are_the_references() -> None:
    aug = CLIPEmbeddingNoiseAugmentation(UNCLIP_SCHEDULE, timestep_dim=EMBED)
    abar = _alphas_cumprod()
    assert torch.equal(aug.alphas_cumprod, abar.float())
    assert torch.equal(aug.sqrt_alphas_cumprod, abar.sqrt().float())
    assert torch.equal(aug.sqrt_one_minus_alphas_cumprod, (1 - abar).sqrt().float())
    assert aug.max_noise_level == 1000 and aug.time_embed.dim == EMBED
    # Mean 0 / std 1 unless given: scaling is the identity then.
    x = torch.randn(1, EMBED)
    assert torch.equal(aug.unscale(aug.scale(x)), x)
    with pytest.raises(UnclipError, match="schedule"):
        CLIPEmbeddingNoiseAugmentation({"beta_schedule": "quadratic"})


def test_one_image_is_augmented_with_noise_from_seed_minus_10() -> None:
    model = _model()
    embeds = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(1))
    adm = model.encode_adm(unclip_conditioning=[_entry(embeds, 0.7, 0.3)], device=torch.device("cpu"), seed=42)
    noise = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(32))
    expected = _augmented(embeds[0], 0.3, noise) * 0.7
    assert adm is not None and adm.shape == (1, 2 * EMBED)
    torch.testing.assert_close(adm, expected, rtol=0, atol=1e-6)
    # Level 0 still diffuses a little (the first step's beta), as in the reference.
    zero = model.encode_adm(unclip_conditioning=[_entry(embeds, 1.0, 0.0)], device=torch.device("cpu"), seed=42)
    torch.testing.assert_close(zero, _augmented(embeds[0], 0.0, noise), rtol=0, atol=1e-6)
    assert not torch.equal(zero[:, :EMBED], embeds)
    # No seed in the keywords counts as 0 (noise from -10).
    unseeded = model.encode_adm(unclip_conditioning=[_entry(embeds, 1.0, 0.5)], device=torch.device("cpu"))
    minus_ten = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(-10))
    torch.testing.assert_close(unseeded, _augmented(embeds[0], 0.5, minus_ten), rtol=0, atol=1e-6)


def test_several_images_are_summed_then_merged() -> None:
    model = _model()
    g = torch.Generator().manual_seed(2)
    pair, single = torch.randn(2, EMBED, generator=g), torch.randn(1, EMBED, generator=g)
    entries = [_entry(pair, 0.5, 0.2), _entry(single, 1.5, 0.6)]
    adm = model.encode_adm(unclip_conditioning=entries, device=torch.device("cpu"), seed=7)
    # Every image draws the same noise (a generator freshly seeded with 7 - 10); the merge takes
    # the next draw of that generator, at the default merge level 0.05, without a strength.
    draws = torch.Generator().manual_seed(-3)
    noise, merge_noise = torch.randn(1, EMBED, generator=draws), torch.randn(1, EMBED, generator=draws)
    summed = (
        _augmented(pair[0], 0.2, noise) * 0.5 + _augmented(pair[1], 0.2, noise) * 0.5 + _augmented(single[0], 0.6, noise) * 1.5
    )
    expected = _augmented(summed[0, :EMBED], 0.05, merge_noise)
    torch.testing.assert_close(adm, expected, rtol=0, atol=1e-5)
    other = model.encode_adm(
        unclip_conditioning=entries, device=torch.device("cpu"), seed=7, unclip_noise_augment_merge=0.5
    )
    torch.testing.assert_close(other, _augmented(summed[0, :EMBED], 0.5, merge_noise), rtol=0, atol=1e-5)


def test_no_image_gives_zeros_and_wrong_widths_are_refused() -> None:
    model = _model()
    cpu = torch.device("cpu")
    assert torch.equal(model.encode_adm(device=cpu), torch.zeros(1, 2 * EMBED))
    assert torch.equal(model.encode_adm(device=cpu, unclip_conditioning=[]), torch.zeros(1, 2 * EMBED))
    conds = model.extra_conds(device=cpu, noise=torch.zeros(1, 4, 8, 8), cross_attn=torch.zeros(1, 77, 64))
    assert torch.equal(conds["y"].cond, torch.zeros(1, 2 * EMBED))
    with pytest.raises(UnclipError, match="12 wide but this model takes 8"):
        model.encode_adm(device=cpu, unclip_conditioning=[_entry(torch.zeros(1, 12), 1.0, 0.0)])
    with pytest.raises(UnclipError, match="image embeddings"):
        unclip_adm([{"clip_vision_output": None, "strength": 1.0, "noise_augmentation": 0.0}], cpu, model.noise_augmentor)


def test_embedding_statistics_normalise_around_the_noise() -> None:
    mean, std = torch.randn(EMBED), torch.rand(EMBED) + 0.5
    aug = CLIPEmbeddingNoiseAugmentation(UNCLIP_SCHEDULE, timestep_dim=EMBED, data_mean=mean, data_std=std)
    embed, noise = torch.randn(1, EMBED), torch.randn(1, EMBED)
    z = aug.unscale(aug.q_sample(aug.scale(embed), torch.tensor([400]), noise=noise))
    abar = _alphas_cumprod()[400]
    expected = (abar.sqrt().float() * (embed - mean) / std + (1 - abar).sqrt().float() * noise) * std + mean
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-6)


# --- against diffusers ---------------------------------------------------------------------------------


def test_adm_and_unet_match_diffusers_stable_unclip() -> None:
    import diffusers
    from diffusers.pipelines.stable_diffusion.pipeline_stable_unclip_img2img import (
        StableUnCLIPImg2ImgPipeline,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    config = {
        **tiny_sd.diffusers_config(replace(UNET, adm_in_channels=None)),
        "sample_size": 8,
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": 2 * EMBED,
    }
    torch.manual_seed(5)
    reference = diffusers.UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    unet = build_unet(unet_to_single_file(reference.state_dict()), UNET)
    model = build_base_model("sd2", "eps", unet, adapters.latent_format_for("sd2"))
    assert isinstance(model, SD21UNCLIP)

    # The pipeline's own augmentation: its normaliser (mean 0 / std 1 as the reference's
    # single-file unCLIP) and a DDPM scheduler on the unCLIP schedule, with our noise.
    pipe = SimpleNamespace(
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=EMBED),
        image_noising_scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
    )
    embeds = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(9))
    noise = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(11))  # seed 21 - 10
    amount = 0.4
    with torch.no_grad():
        theirs = StableUnCLIPImg2ImgPipeline.noise_image_embeddings(pipe, embeds, round(999 * amount), noise=noise)
    ours = model.encode_adm(unclip_conditioning=[_entry(embeds, 1.0, amount)], device=torch.device("cpu"), seed=21)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    g = torch.Generator().manual_seed(13)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, UNET.context_dim, generator=g)  # type: ignore[misc]
    t = torch.tensor([10.0, 700.0])
    y = ours.repeat(2, 1)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context, class_labels=y).sample
        got = model.diffusion_model(x, t, context, y)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# --- detection and loading -----------------------------------------------------------------------------


def _vision() -> tuple[Any, dict[str, torch.Tensor]]:
    tower = _reference_model()
    hf = {k: v.contiguous() for k, v in tower.state_dict().items()}
    return tower, {"embedder.model." + k: v.contiguous() for k, v in _to_openclip(hf).items()}


def unclip_checkpoint(path: Path, seed: int = 0) -> Path:
    """A whole tiny SD2.1 unCLIP checkpoint in the real single-file layout."""
    torch.manual_seed(seed)
    sd = {f"model.diffusion_model.{k}": v for k, v in tiny_sd._randomize(UNetModel(UNET), seed).items()}
    sd.update({k: v for k, v in tiny_pipeline.checkpoint_dict("sd1", seed).items() if k.startswith("first_stage_model.")})
    text = tiny_pipeline.to_openclip(tiny_pipeline.clip_weights(tiny_pipeline.CLIP_G, seed + 3))
    sd.update({f"cond_stage_model.model.{k}": v for k, v in text.items()})
    sd.update(_vision()[1])
    tables = CLIPEmbeddingNoiseAugmentation(UNCLIP_SCHEDULE, timestep_dim=EMBED).state_dict()
    sd.update({f"noise_augmentor.{k}": v for k, v in tables.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unclip_checkpoint(tmp_path_factory.mktemp("unclip") / "tiny_unclip.safetensors")


def test_checkpoint_is_detected_as_sd21_unclip(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    assert loaded.family.name == "sd2" and loaded.family.unclip
    assert loaded.unet.config.adm_in_channels == 2 * EMBED
    model, clip, vae = adapters.load_checkpoint(checkpoint)
    assert type(model.model) is SD21UNCLIP and isinstance(model.model, BaseModel)
    assert type(model.model.model_config).__name__ == "SD21UnclipL"
    assert model.model.noise_augmentor.time_embed.dim == EMBED
    assert clip is not None and vae is not None and LATENT_SCALE[loaded.family.name] == 0.18215


def _meta(config: Any) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return dict(UNetModel(config).state_dict())


@pytest.mark.parametrize(("adm", "config_name"), [(1536, "SD21UnclipL"), (2048, "SD21UnclipH")])
def test_full_size_unclip_unets_are_told_by_their_widths(adm: int, config_name: str) -> None:
    sd2 = replace(
        tiny_sd.SD15_UNET, context_dim=1024, use_linear_in_transformer=True, num_heads=None, num_head_channels=64
    )
    family = detect_family(_meta(replace(sd2, adm_in_channels=adm)), "unclip.safetensors")
    assert family.name == "sd2" and family.unclip
    # What the reference names its config, by the embedding half of the ADM width.
    from plugins.core_nodes.models.model_base import UNCLIP_CONFIG_CLASSES

    assert UNCLIP_CONFIG_CLASSES["l" if adm // 2 <= 768 else "h"].__name__ == config_name
    # A plain SD2 UNet stays plain.
    assert not detect_family(_meta(sd2), "sd2.safetensors").unclip


def test_unclip_parts_on_an_unfit_unet_are_refused() -> None:
    sd1_adm = replace(tiny_sd.UNET_CONFIGS["sd1"], adm_in_channels=16)
    with pytest.raises(CheckpointError, match=r"odd\.safetensors carries unCLIP weights.*convolution"):
        detect_family(_meta(sd1_adm), "odd.safetensors", ["noise_augmentor.betas"])
    odd_width = replace(UNET, adm_in_channels=15)
    with pytest.raises(CheckpointError, match="ADM input of 15 features"):
        detect_family(_meta(odd_width), "odd.safetensors", ["embedder.model.visual.proj"])


# --- through the server ---------------------------------------------------------------------------------


async def test_unclip_prompt_through_the_server(comfy_server: Any, tmp_path: Path) -> None:
    unclip_checkpoint(tmp_path / "models" / "checkpoints" / "unclip.safetensors")
    server = await comfy_server(plugins=["core_nodes", "models"])
    seed, strength, amount = 5, 0.8, 0.25
    prompt = {
        "ckpt": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": "unclip.safetensors"}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0x3366AA}},
        "enc": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["ckpt", 3], "image": ["img", 0], "crop": "none"}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a red boat"}},
        "unclip": {"class_type": "unCLIPConditioning",
                   "inputs": {"conditioning": ["text", 0], "clip_vision_output": ["enc", 0], "strength": strength,
                              "noise_augmentation": amount}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }  # fmt: skip
    for name, positive in (("image", "unclip"), ("text", "text")):
        prompt[f"k_{name}"] = {
            "class_type": "KSampler",
            "inputs": {"seed": seed, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                       "denoise": 1.0, "model": ["ckpt", 0], "positive": [positive, 0], "negative": ["text", 0],
                       "latent_image": ["empty", 0]},
        }  # fmt: skip
        prompt[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"k_{name}", 0], "filename_prefix": name}}
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    root = Path(server.kernel.settings.output_path)
    saved = {d["node"]: d["output"]["latents"][0] for d in messages(frames, "executed") if d["node"].startswith("save_")}
    latents = {
        n: load_file(str(root / saved[f"save_{n}"]["subfolder"] / saved[f"save_{n}"]["filename"]))["latent_tensor"]
        for n in ("image", "text")
    }

    # One euler step from the top sigma at cfg 1 is the model's denoised latent of the scaled
    # noise: recompute it on the same weights with the ADM vector written out.
    model, clip, _ = adapters.load_checkpoint(tmp_path / "models" / "checkpoints" / "unclip.safetensors")
    tower = clip_vision_from_checkpoint(tmp_path / "models" / "checkpoints" / "unclip.safetensors")
    assert tower is not None
    image = torch.tensor([0x33, 0x66, 0xAA], dtype=torch.float32).div(255).expand(1, 16, 16, 3)
    embeds = tower.encode_image(image, crop=False).image_embeds
    noise = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(seed - 10))
    y_image = _augmented(embeds[0], amount, noise) * strength
    context = clip.encode_from_tokens(clip.tokenize("a red boat"))
    base = model.model
    sigma = base.model_sampling.sigma_max.reshape(1)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * torch.sqrt(1 + sigma**2)
    for name, y in (("image", y_image), ("text", torch.zeros(1, 2 * EMBED))):
        denoised = base.apply_model(start, sigma, c_crossattn=context, y=y)
        torch.testing.assert_close(latents[name], base.process_latent_out(denoised), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(latents["image"], latents["text"], atol=1e-3)


# --- SDXL's use of image embeddings and the comfy.model_base names -----------------------------------


@pytest.mark.parametrize("family", ["sdxl", "sdxl_refiner"])
def test_sdxl_reads_image_embeddings_as_its_pooled_vector(family: str) -> None:
    torch.manual_seed(0)
    model = build_base_model(family, "eps", UNetModel(tiny_sd.UNET_CONFIGS[family]), adapters.latent_format_for(family))
    width = tiny_sd.POOLED_SDXL
    assert model.noise_augmentor.time_embed.dim == width
    embeds = torch.randn(1, width, generator=torch.Generator().manual_seed(3))
    keywords = {"device": torch.device("cpu"), "seed": 30, "width": 512, "height": 384, "pooled_output": torch.ones(1, width)}
    plain = model.encode_adm(**keywords)
    adm = model.encode_adm(unclip_conditioning=[_entry(embeds, 0.6, 0.1)], **keywords)
    # The image replaces the pooled text (augmented from seed 30 - 10, weighted); the size part stays.
    noise = torch.randn(1, width, generator=torch.Generator().manual_seed(20))
    torch.testing.assert_close(adm[:, :width], _augmented(embeds[0], 0.1, noise)[:, :width] * 0.6, rtol=0, atol=1e-6)
    assert torch.equal(plain[:, :width], torch.ones(1, width)) and torch.equal(adm[:, width:], plain[:, width:])


async def test_comfy_compat_unclip_names(comfy_server: Any, checkpoint: Path) -> None:
    await comfy_server(plugins=["comfy_compat", "models", "core_nodes"], cpu=True)
    import comfy.model_base as mb
    import comfy.sd
    import comfy.supported_models as families

    model, _, _, vision = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_clipvision=True)
    image = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    tower = clip_vision_from_checkpoint(checkpoint)
    assert vision is not None and tower is not None
    assert torch.equal(vision.encode_image(image).image_embeds, tower.encode_image(image).image_embeds)
    assert comfy.sd.load_checkpoint_guess_config(str(checkpoint))[3] is None
    assert isinstance(model.model, mb.SD21UNCLIP)
    config = model.model.model_config
    assert isinstance(config, families.SD21UnclipL) and isinstance(config, families.SD20)
    assert not isinstance(config, families.SD21UnclipH)
    # The reference's augmentor signature, and its SDXL helper, as packs call them.
    aug = mb.CLIPEmbeddingNoiseAugmentation(noise_schedule_config=UNCLIP_SCHEDULE, timestep_dim=EMBED)
    embeds = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(8))
    args = {"unclip_conditioning": [_entry(embeds, 2.0, 0.5)], "device": torch.device("cpu"), "seed": 12}
    noise = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mb.sdxl_pooled(args, aug), _augmented(embeds[0], 0.5, noise)[:, :EMBED] * 2.0, rtol=0, atol=1e-6)
    assert torch.equal(mb.sdxl_pooled({"pooled_output": embeds}, aug), embeds)
    assert mb.unclip_adm(args["unclip_conditioning"], torch.device("cpu"), aug, seed=2).shape == (1, 2 * EMBED)
