"""The reference's MODEL / CLIP / VAE object API on our adapters, as custom-node packs call it.

Runs on the tiny SD1 / SDXL checkpoints of the end-to-end tests. The text paths are compared bit
for bit with ``TextEncoder.encode`` and the core CLIPTextEncode / CLIPSetLastLayer nodes; the VAE's
keyword (reference) forms of the tiled calls with the core nodes' pixel forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from plugins.core_nodes.contracts import SD15, SDXL
from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.text_encoder import stack_from_encoder_files
from plugins.core_nodes.models.tokenizer import END_TOKEN, START_TOKEN
from plugins.core_nodes.nodes.conditioning import CLIPSetLastLayer, CLIPTextEncode

from . import tiny_pipeline
from .test_workflows_e2e import checkpoints, lora_file  # noqa: F401  (fixtures)

PROMPT = "a (glass bottle:1.3) on a beach, sunset"
LONG_PROMPT = ", ".join(["a very long prompt about many things"] * 12)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded(checkpoints: dict[str, Path]) -> dict[str, tuple[Any, Any, Any]]:  # noqa: F811
    return {family: adapters.load_checkpoint(path) for family, path in checkpoints.items()}


@pytest.fixture(scope="module")
def lora_sd1(loaded: dict[str, Any], lora_file: Path) -> tuple[Any, Any]:  # noqa: F811
    model, clip, _ = loaded["sd1"]
    return adapters.apply_lora(model, clip, lora_file, 1.0, 1.0)


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and torch.equal(a, b)


def _variants(loaded: dict[str, Any], lora_sd1: tuple[Any, Any]) -> dict[str, Any]:
    """CLIPs whose encodings all differ: two families, a clip skip and a LoRA (on the last of the
    two layers, so a LoRA with clip skip -2 would be the plain skip)."""
    sd1, sdxl = loaded["sd1"][1], loaded["sdxl"][1]
    return {
        "sd1": sd1,
        "sd1_skip": sd1.with_last_layer(-2),
        "sd1_lora": lora_sd1[1],
        "sdxl": sdxl,
        "sdxl_skip": sdxl.with_last_layer(-1),
    }


# --- CLIP: tokens ------------------------------------------------------------------------------


def test_tokenize_gives_the_reference_tokens_by_encoder_name(loaded: dict[str, Any]) -> None:
    sd1, sdxl = loaded["sd1"][1], loaded["sdxl"][1]
    tokens = sd1.tokenize(PROMPT)
    assert list(tokens) == ["l"]
    assert sorted(sdxl.tokenize(PROMPT)) == ["g", "l"]
    (chunk,) = tokens["l"]
    assert len(chunk) == 77 and all(len(pair) == 2 for pair in chunk)
    assert chunk[0] == (START_TOKEN, 1.0)
    assert all(isinstance(t, int) and isinstance(w, float) for t, w in chunk)
    # The weighted words carry 1.3, the rest 1.0; CLIP-L pads with the end token, OpenCLIP-G with 0.
    assert sorted({w for _, w in chunk}) == [1.0, 1.3]
    assert chunk[-1] == (END_TOKEN, 1.0)
    assert sdxl.tokenize(PROMPT)["g"][0][-1] == (0, 1.0)
    assert len(sd1.tokenize(LONG_PROMPT)["l"]) == 2
    # The same chunks the encoders' own tokenizers make, and other keyword options are accepted.
    assert tokens == sd1.stack.tokenize(PROMPT) == sd1.tokenize(PROMPT, min_length=1)


def test_tokenize_with_word_ids(loaded: dict[str, Any]) -> None:
    (chunk,) = loaded["sd1"][1].tokenize("red fox", return_word_ids=True)["l"]
    assert all(len(triple) == 3 for triple in chunk)
    assert chunk[0] == (START_TOKEN, 1.0, 0) and chunk[-1][2] == 0
    assert [i for _, _, i in chunk if i] == [1, 1]  # one text segment: every word is group 1


def test_sd2_tokens_are_named_h() -> None:
    weights = tiny_pipeline.clip_weights(tiny_pipeline.CLIP_G, 7)
    named = {k if k.startswith("text_projection") else "text_model." + k: v for k, v in weights.items()}
    clip = adapters.TextEncoder(stack_from_encoder_files({"h": named}))
    tokens = clip.tokenize("a cat")
    assert list(tokens) == ["h"] and tokens["h"][0][-1] == (0, 1.0)
    assert torch.equal(clip.encode_from_tokens(tokens), clip.encode("a cat")[0])


# --- CLIP: encoding tokens ---------------------------------------------------------------------


def test_encode_from_tokens_equals_encode_at_the_layer_and_patches(
    loaded: dict[str, Any], lora_sd1: tuple[Any, Any]
) -> None:
    variants = _variants(loaded, lora_sd1)
    conds = {}
    for name, clip in variants.items():
        for text in (PROMPT, LONG_PROMPT):
            cond, pooled = clip.encode(text)
            tokens = clip.tokenize(text)
            assert torch.equal(clip.encode_from_tokens(tokens), cond), name
            got_cond, got_pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            assert torch.equal(got_cond, cond) and _equal(got_pooled, pooled), name
            as_dict = clip.encode_from_tokens(tokens, return_dict=True)
            assert sorted(as_dict) == ["cond", "pooled_output"]
            assert torch.equal(as_dict["cond"], cond) and _equal(as_dict["pooled_output"], pooled)
        conds[name] = cond
    # The layer and the patches really took part: every variant's numbers differ.
    names = list(conds)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if conds[a].shape == conds[b].shape:
                assert not torch.equal(conds[a], conds[b]), (a, b)


def test_edited_token_weights_are_the_reference_weights(loaded: dict[str, Any]) -> None:
    """Weighting every word of a prompt by hand is the prompt syntax's ``(text:w)``."""
    clip = loaded["sd1"][1]
    tokens = clip.tokenize("a glass bottle", return_word_ids=True)
    edited = {
        k: [[(t, w * 1.5, i) if i else (t, w, i) for t, w, i in c] for c in v] for k, v in tokens.items()
    }
    assert torch.equal(clip.encode_from_tokens(edited), clip.encode("(a glass bottle:1.5)")[0])
    assert not torch.equal(clip.encode_from_tokens(edited), clip.encode_from_tokens(tokens))
    # Factor 1 on every pair (specials included) changes nothing, bit for bit.
    same = {k: [[(t, w * 1.0) for t, w, _ in c] for c in v] for k, v in tokens.items()}
    assert torch.equal(clip.encode_from_tokens(same), clip.encode("a glass bottle")[0])


def test_tokens_need_every_encoders_key(loaded: dict[str, Any]) -> None:
    sd1, sdxl = loaded["sd1"][1], loaded["sdxl"][1]
    only_l = {"l": sdxl.tokenize(PROMPT)["l"]}
    with pytest.raises(ValueError, match=r"\['g', 'l'\].*missing or empty: \['g'\]"):
        sdxl.encode_from_tokens(only_l)
    with pytest.raises(ValueError, match="missing or empty"):
        sd1.encode_from_tokens({"l": []})
    # Keys of other encoders are ignored, as in the reference.
    extra = {**sd1.tokenize(PROMPT), "g": sdxl.tokenize(PROMPT)["g"]}
    assert torch.equal(sd1.encode_from_tokens(extra), sd1.encode(PROMPT)[0])


def test_unprojected_pooled_output(loaded: dict[str, Any]) -> None:
    sd1, sdxl = loaded["sd1"][1], loaded["sdxl"][1]
    # CLIP-L has no projection here, so its unprojected pooled output is its pooled output.
    _, pooled = sd1.encode_from_tokens(sd1.tokenize(PROMPT), return_pooled="unprojected")
    assert torch.equal(pooled, sd1.encode(PROMPT)[1])
    # bigG's is the end token's state before its text projection.
    cond, projected = sdxl.encode(PROMPT)
    got, unprojected = sdxl.encode_from_tokens(sdxl.tokenize(PROMPT), return_pooled="unprojected")
    assert torch.equal(got, cond) and not torch.equal(unprojected, projected)
    with torch.no_grad():
        again = sdxl.models["g"].text_projection(unprojected)
    torch.testing.assert_close(again, projected)
    ((_, options),) = sdxl.encode_from_tokens_scheduled(sdxl.tokenize(PROMPT), unprojected=True)
    assert torch.equal(options["pooled_output"], unprojected)
    # The reference's cond_stage_model option gives the same.
    model = sdxl.clone().cond_stage_model
    model.set_clip_options({"projected_pooled": False})
    assert torch.equal(model.encode_token_weights(sdxl.tokenize(PROMPT))[1], unprojected)


def test_encode_from_tokens_scheduled_is_clip_text_encode(
    loaded: dict[str, Any], lora_sd1: tuple[Any, Any]
) -> None:
    for name, clip in _variants(loaded, lora_sd1).items():
        ((cond, options),) = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
        ((core_cond, core_options),) = CLIPTextEncode().encode(clip, PROMPT)[0]
        assert torch.equal(cond, core_cond) and options.keys() == core_options.keys() == {"pooled_output"}
        assert torch.equal(options["pooled_output"], core_options["pooled_output"]), name
    clip = loaded["sdxl"][1]
    ((_, options),) = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT), add_dict={"width": 512})
    assert sorted(options) == ["pooled_output", "width"] and options["width"] == 512


# --- CLIP: clone, clip_layer ---------------------------------------------------------------------


def test_clone_then_clip_layer_is_clip_set_last_layer(
    loaded: dict[str, Any], lora_sd1: tuple[Any, Any]
) -> None:
    for clip in (loaded["sd1"][1], lora_sd1[1], loaded["sdxl"][1]):
        before = clip.encode(PROMPT)[0]
        twin = clip.clone()
        assert twin is not clip and twin.models == clip.models and twin.patches == clip.patches
        assert twin.layer_idx is None and torch.equal(twin.encode(PROMPT)[0], before)
        twin.clip_layer(-2)
        assert twin.layer_idx == -2 and clip.layer_idx is None
        (skipped,) = CLIPSetLastLayer().set_last_layer(clip, -2)
        assert torch.equal(twin.encode(PROMPT)[0], skipped.encode(PROMPT)[0])
        # The original is untouched: a clone's layer is its own.
        assert torch.equal(clip.encode(PROMPT)[0], before)
    sd1 = loaded["sd1"][1]
    twin = sd1.clone()
    twin.clip_layer(-2)
    assert not torch.equal(twin.encode(PROMPT)[0], sd1.encode(PROMPT)[0])
    twin.clip_layer(None)  # back to the family's default
    assert torch.equal(twin.encode(PROMPT)[0], sd1.encode(PROMPT)[0])
    twin.layer_idx = -2  # packs also set the attribute directly
    assert torch.equal(twin.encode(PROMPT)[0], sd1.with_last_layer(-2).encode(PROMPT)[0])
    assert sd1.load_model() is sd1.patcher


# --- MODEL ---------------------------------------------------------------------------------------


def _denoise(model: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond = {"c_crossattn": torch.randn(1, 77, tiny_pipeline.CLIP_WIDTH, generator=g)}
    return model(x, torch.tensor([2.0]), cond)


def test_model_clone_shares_the_unet_and_patches_but_not_options(
    loaded: dict[str, Any], lora_sd1: tuple[Any, Any]
) -> None:
    for model in (loaded["sd1"][0], lora_sd1[0]):
        assert model.model_options == {"transformer_options": {}}
        twin = model.clone()
        assert twin is not model and twin.unet is model.unet and twin.patches == model.patches
        assert torch.equal(_denoise(twin), _denoise(model))
        options = twin.model_options["transformer_options"]
        options.setdefault("patches", {}).setdefault("marker_patch", []).append(print)
        twin.model_options["sampler_cfg_function"] = print
        assert model.model_options == {"transformer_options": {}}
        # A clone of the clone gets its own copies of the nested dicts and lists too.
        third = twin.clone()
        third.model_options["transformer_options"]["patches"]["marker_patch"].append(len)
        assert twin.model_options["transformer_options"]["patches"]["marker_patch"] == [print]
        assert third.model_options["sampler_cfg_function"] is print
        # Unknown options are kept and ignored: the outputs do not change.
        assert torch.equal(_denoise(third), _denoise(model))
    assert not torch.equal(_denoise(loaded["sd1"][0]), _denoise(lora_sd1[0]))


def test_lora_keeps_the_model_options(loaded: dict[str, Any], lora_file: Path) -> None:  # noqa: F811
    model = loaded["sd1"][0].clone()
    model.model_options["transformer_options"]["marker"] = [1]
    patched, _ = adapters.apply_lora(model, None, lora_file, 1.0, 1.0)
    assert patched.patches and patched.model_options == model.model_options
    assert patched.model_options["transformer_options"] is not model.model_options["transformer_options"]


def test_get_model_object_and_dtype(loaded: dict[str, Any]) -> None:
    for family, fmt in (("sd1", SD15), ("sdxl", SDXL)):
        model = loaded[family][0]
        assert model.get_model_object("model_sampling") is model.model_sampling
        assert model.get_model_object("latent_format") is fmt is model.model.latent_format
        assert model.get_model_object("diffusion_model") is model.unet is model.model.diffusion_model
        assert model.model.model_sampling is model.model_sampling
        assert model.get_model_object("diffusion_model.out") is model.unet.out
        assert model.model_dtype() == torch.float32 == model.model.get_dtype()
        # The sampling object packs read: sigma range and percent -> sigma.
        ms = model.get_model_object("model_sampling")
        assert float(ms.sigma_max) > float(ms.sigma_min) > 0
        assert ms.percent_to_sigma(0.0) > ms.percent_to_sigma(0.5) > ms.percent_to_sigma(1.0)
        with pytest.raises(AttributeError, match="no object 'clip_vision'.*model_sampling"):
            model.get_model_object("clip_vision")
        # The latent format under the reference's attribute names too.
        assert (fmt.latent_channels, fmt.latent_dimensions, fmt.spacial_downscale_ratio) == (4, 2, 8)
        assert fmt.latent_rgb_factors == [list(row) for row in fmt.rgb_factors]
        assert len(fmt.latent_rgb_factors) == 4 and all(len(row) == 3 for row in fmt.latent_rgb_factors)
        assert fmt.latent_rgb_factors_bias == list(fmt.rgb_bias)


# --- VAE -----------------------------------------------------------------------------------------


def _image(height: int, width: int, channels: int = 3) -> torch.Tensor:
    return torch.rand(1, height, width, channels, generator=torch.Generator().manual_seed(1))


def test_vae_layouts_and_ratios(loaded: dict[str, Any]) -> None:
    vae = loaded["sd1"][2]
    assert vae.spacial_compression_encode() == vae.spacial_compression_decode() == 8
    assert vae.downscale_ratio == vae.upscale_ratio == 8 and vae.latent_channels == 4
    assert vae.temporal_compression_decode() is None
    pixels = _image(64, 48)
    latent = vae.encode(pixels)
    assert latent.shape == (1, 4, 8, 6) and latent.dtype == torch.float32
    image = vae.decode(latent)
    assert image.shape == (1, 64, 48, 3) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    # Sizes off the grid are cropped, centred, like the reference; an alpha channel is ignored.
    wide = _image(70, 51, channels=4)
    assert vae.vae_encode_crop_pixels(wide).shape == (1, 64, 48, 4)
    assert torch.equal(vae.encode(wide), vae.encode(wide[:, 3:67, 1:49, :3].contiguous()))
    cropped = wide[:, 3:67, 1:49, :3]
    assert torch.equal(vae.encode_tiled(wide, 32, 32, 8), vae.encode_tiled(cropped, 32, 32, 8))


def test_tiled_calls_take_the_references_arguments_and_units(loaded: dict[str, Any]) -> None:
    """``(tile_x, tile_y, overlap)`` positionally or by keyword, as the reference's VAE takes
    them: pixels for encode_tiled, latent pixels for decode_tiled."""
    vae = loaded["sd1"][2]
    pixels = _image(64, 64)
    latent = vae.encode(pixels)
    # 4 latent pixels = 32 pixels, overlap 1 = 8 pixels.
    tiled = vae.decode_tiled(latent, 4, 4, 1)
    assert torch.equal(vae.decode_tiled(latent, tile_x=4, tile_y=4, overlap=1), tiled)
    assert torch.equal(vae.decode_tiled(latent, tile_x=4, tile_y=6, overlap=1), tiled)
    assert not torch.equal(tiled, vae.decode(latent))  # it really tiled
    # The reference's defaults (64 latent, overlap 16) cover this image with one tile.
    assert torch.equal(vae.decode_tiled(latent), vae.decode(latent))
    tiled = vae.encode_tiled(pixels, 32, 32, 8)
    assert torch.equal(vae.encode_tiled(pixels, tile_x=32, tile_y=32, overlap=8), tiled)
    assert torch.equal(vae.encode_tiled(pixels, tile_x=48, tile_y=32, overlap=8, tile_t=64), tiled)
    assert not torch.equal(tiled, latent)
    assert torch.equal(vae.encode_tiled(pixels), vae.encode_tiled(pixels, 512, 512, 64))
    # A pack's usual positional call is a sane tiling, not a 512-pixel overlap.
    assert torch.equal(vae.encode_tiled(pixels, 512, 512), vae.encode_tiled(pixels))
