"""Model-side ``comfy.*`` modules packs import: latent formats, conds, CLIP vision, previews, helpers.

Checked against independent computations: transformers' CLIP vision model for the encoder, plain
arithmetic for latent scaling and batching, PIL for previews.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
async def shims(comfy_server: Any) -> Any:
    return await comfy_server(plugins=["comfy_compat", "models", "core_nodes"], cpu=True, preview_method="latent2rgb")


def _mod(name: str) -> Any:
    return importlib.import_module(name)


async def test_latent_formats_scale_like_the_core_nodes(shims: Any) -> None:
    lf = _mod("comfy.latent_formats")
    from plugins.core_nodes import contracts

    x = torch.randn(1, 4, 2, 2)
    sd15 = lf.SD15()
    assert sd15.scale_factor == 0.18215 and sd15.latent_channels == 4
    assert torch.allclose(sd15.process_in(x), contracts.SD15.process_in(x))
    assert torch.allclose(sd15.process_out(sd15.process_in(x)), x)
    assert lf.SD15(scale_factor=0.5).process_in(x).equal(x * 0.5)
    sdxl = lf.SDXL()
    assert sdxl.scale_factor == 0.13025 and sdxl.latent_rgb_factors_bias == [0.1084, -0.0175, -0.0011]
    assert isinstance(sdxl, lf.LatentFormat) and len(sdxl.latent_rgb_factors) == 4

    flux = lf.Flux()
    y = torch.randn(1, 16, 2, 2)
    assert isinstance(flux, lf.SD3) and flux.latent_channels == 16
    assert torch.allclose(flux.process_in(y), (y - 0.1159) * 0.3611)
    assert torch.allclose(flux.process_out(flux.process_in(y)), y, atol=1e-6)
    pg = lf.SDXL_Playground_2_5()
    assert torch.allclose(pg.process_out(pg.process_in(x)), x, atol=1e-5)
    assert lf.SC_Prior().spacial_downscale_ratio == 42 and lf.SC_B().scale_factor == pytest.approx(1 / 0.43)
    wan = lf.Wan21()
    v = torch.randn(1, 16, 2, 2, 2)
    assert torch.allclose(wan.process_out(wan.process_in(v)), v, atol=1e-5)


async def test_conds_batch_and_concat(shims: Any) -> None:
    conds = _mod("comfy.conds")
    a = conds.CONDRegular(torch.ones(1, 4, 8, 8))
    assert a.process_cond(3).cond.shape == (3, 4, 8, 8)
    b = conds.CONDRegular(torch.zeros(1, 4, 8, 8))
    assert a.can_concat(b) and a.concat([b]).shape == (2, 4, 8, 8)
    assert not a.can_concat(conds.CONDRegular(torch.zeros(1, 4, 4, 4)))

    noise = conds.CONDNoiseShape(torch.arange(64.0).reshape(1, 1, 8, 8))
    cut = noise.process_cond(2, area=(2, 3, 1, 4))
    assert cut.cond.shape == (2, 1, 2, 3) and torch.equal(cut.cond[0, 0], torch.arange(64.0).reshape(8, 8)[1:3, 4:7])

    short = conds.CONDCrossAttn(torch.randn(1, 77, 8))
    long = conds.CONDCrossAttn(torch.randn(1, 154, 8))
    assert short.can_concat(long)
    joined = short.concat([long])
    assert joined.shape == (2, 154, 8) and torch.equal(joined[0, 77:], short.cond[0])
    assert not short.can_concat(conds.CONDCrossAttn(torch.randn(1, 77 * 5, 8)))

    const = conds.CONDConstant({"k": torch.ones(2)})
    assert const.can_concat(conds.CONDConstant({"k": torch.ones(2)}))
    assert not const.can_concat(conds.CONDConstant({"k": torch.zeros(2)}))
    assert const.process_cond(4).cond is const.cond and const.size() == [1]
    lst = conds.CONDList([torch.ones(1, 2), torch.ones(1, 3)])
    assert [t.shape for t in lst.process_cond(2).cond] == [(2, 2), (2, 3)]
    assert [t.shape for t in lst.concat([lst])] == [(2, 2), (2, 3)]


async def test_node_helpers(shims: Any) -> None:
    helpers = _mod("node_helpers")
    t = torch.zeros(1)
    cond = [[t, {"a": [1], "keep": 1}]]
    out = helpers.conditioning_set_values(cond, {"a": [2], "b": 3}, append=True)
    assert out == [[t, {"a": [1, 2], "keep": 1, "b": 3}]] and cond[0][1] == {"a": [1], "keep": 1}
    ranged = helpers.conditioning_set_values_with_timestep_range(cond, {"x": 1}, 0.25, 0.5)
    spans = [(c[1]["start_percent"], c[1]["end_percent"], c[1].get("x")) for c in ranged]
    assert spans == [(0.0, pytest.approx(0.25 - 1e-5), None), (0.25, 0.5, 1), (pytest.approx(0.5 + 1e-5), 1.0, None)]
    assert helpers.string_to_torch_dtype("bf16") == torch.bfloat16 and helpers.string_to_torch_dtype("x") is None
    rgb, rgba = torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 4)
    assert helpers.image_alpha_fix(rgb, rgba)[1].shape[-1] == 3
    _, padded = helpers.image_alpha_fix(rgba, rgb)
    assert padded.shape[-1] == 4 and torch.equal(padded[..., 3], torch.ones(1, 2, 2))
    assert helpers.hasher()(b"x").hexdigest() == __import__("hashlib").sha256(b"x").hexdigest()


async def test_latent_preview_callback_reports_with_previews(shims: Any) -> None:
    lp = _mod("latent_preview")
    lf = _mod("comfy.latent_formats")
    utils = _mod("comfy.utils")
    previewer = lp.get_previewer("cpu", lf.SD15())
    assert isinstance(previewer, lp.Latent2RGBPreviewer)
    latent = torch.zeros(1, 4, 3, 5)
    latent[0, 0] = 1.0
    fmt, image, size = previewer.decode_latent_to_preview_image("JPEG", latent)
    assert (fmt, image.size, size) == ("JPEG", (5, 3), shims.kernel.settings.preview_size)
    # Channel 0 = 1 maps to rgb factors row 0, then (x + 1) / 2 to 0..255.
    expected = [round(((v + 1) / 2) * 255 - 0.5 + 0.5) for v in (0.3512, 0.2297, 0.3227)]
    assert all(abs(a - b) <= 1 for a, b in zip(image.getpixel((0, 0)), expected, strict=True))

    class Model:
        class model:  # noqa: N801 - what packs reach as model.model
            latent_format = lf.SD15()

    seen: list[Any] = []
    server_hook = utils.PROGRESS_BAR_HOOK
    utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: seen.append((v, t, p is not None)))
    try:
        store: dict[str, Any] = {}
        callback = lp.prepare_callback(Model(), 3, store)
        callback(0, latent, latent, 3)
    finally:
        utils.set_progress_bar_global_hook(server_hook)
    assert seen == [(1, 3, True)] and store["x0"] is latent


async def test_stochastic_rounding(shims: Any) -> None:
    fl = _mod("comfy.float")
    x = torch.tensor([0.3, -1.7, 1000.0])
    assert fl.stochastic_rounding(x, torch.float16).dtype == torch.float16
    values = torch.full((20000,), 0.3)
    rounded = fl.stochastic_rounding(values, torch.float8_e4m3fn, seed=1)
    assert rounded.dtype == torch.float8_e4m3fn
    # 0.3 lies between the fp8 neighbours 0.28125 and 0.3125: both appear, the mean stays 0.3.
    assert set(rounded.float().unique().tolist()) == {0.28125, 0.3125}
    assert rounded.float().mean().item() == pytest.approx(0.3, abs=2e-3)
    assert torch.equal(rounded, fl.stochastic_rounding(values, torch.float8_e4m3fn, seed=1))
    assert fl.stochastic_rounding(torch.tensor([1e6]), torch.float8_e4m3fn).float().item() == 448.0


async def test_clip_preprocess_matches_reference_steps(shims: Any) -> None:
    cv = _mod("comfy.clip_vision")
    torch.manual_seed(3)
    image = torch.rand(2, 224, 224, 4)
    out = cv.clip_preprocess(image)
    mean = torch.tensor(cv.CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(cv.CLIP_STD).view(3, 1, 1)
    expected = ((image[..., :3].movedim(-1, 1) * 255).round() / 255 - mean) / std
    assert torch.allclose(out, expected, atol=1e-6)

    # A wide image: short side scaled to 224, then the centre crop; a flat image stays flat.
    flat = torch.full((1, 100, 300, 3), 0.6)
    out = cv.clip_preprocess(flat)
    assert out.shape == (1, 3, 224, 224)
    assert torch.allclose(out, ((torch.full((3, 1, 1), 153 / 255)) - mean) / std, atol=1e-5)
    # transformers' CLIPImageProcessor agrees on an 8-bit image already at the model's size.
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor

    pixels8 = (torch.rand(224, 224, 3) * 255).round().to(torch.uint8)
    hf = CLIPImageProcessor()(images=Image.fromarray(pixels8.numpy()), return_tensors="pt")["pixel_values"]
    ours = cv.clip_preprocess(pixels8.float().unsqueeze(0) / 255.0)
    assert torch.allclose(ours, hf, atol=1e-5) and np.isfinite(ours.numpy()).all()

    striped = torch.zeros(1, 100, 300, 3)
    striped[:, :, 150:] = 1.0
    cropped = cv.clip_preprocess(striped, crop=True)
    squashed = cv.clip_preprocess(striped, crop=False)
    assert cropped[0, 0, 0, 0] < cropped[0, 0, 0, -1] and squashed.shape == cropped.shape


def _tiny_clip_vision(layers: int = 23) -> tuple[Any, dict[str, torch.Tensor]]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=16,
        image_size=28, patch_size=14, projection_dim=24, hidden_act="quick_gelu",
    )
    torch.manual_seed(4)
    model = CLIPVisionModelWithProjection(config).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items() if "position_ids" not in k}


async def test_clip_vision_matches_transformers(shims: Any) -> None:
    cv = _mod("comfy.clip_vision")
    reference, sd = _tiny_clip_vision()
    clip = cv.load_clipvision_from_sd(dict(sd))
    assert isinstance(clip, cv.ClipVisionModel) and clip.image_size == 28
    # The reference stores text/vision encoders in fp16; compare with the same rounded weights.
    reference.load_state_dict({k: v.half().float() for k, v in sd.items()}, strict=False)
    image = torch.rand(2, 40, 30, 3)
    out = clip.encode_image(image)
    pixels = cv.clip_preprocess(image, size=28)
    with torch.no_grad():
        ref = reference(pixel_values=pixels, output_hidden_states=True)
    assert torch.allclose(out.image_embeds, ref.image_embeds, atol=1e-4)
    assert torch.allclose(out["last_hidden_state"], ref.last_hidden_state, atol=1e-4)
    assert torch.allclose(out.penultimate_hidden_states, ref.hidden_states[-2], atol=1e-4)
    assert out.image_sizes == [pixels.shape[1:]] * 2
    # IP-Adapter calls the module directly: the tuple (last, penultimate, embeds, projector output).
    direct = clip.model(pixel_values=pixels, intermediate_output=-2)
    assert torch.allclose(direct[2], out.image_embeds) and direct[3] is None and not direct[0].requires_grad


def _to_openclip_visual(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers vision tower in OpenCLIP's ``visual.*`` layout (fused q/k/v, ``proj``)."""
    out: dict[str, torch.Tensor] = {}
    renames = {
        "embeddings.class_embedding": "class_embedding",
        "embeddings.patch_embedding.weight": "conv1.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "pre_layrnorm.weight": "ln_pre.weight",
        "pre_layrnorm.bias": "ln_pre.bias",
        "post_layernorm.weight": "ln_post.weight",
        "post_layernorm.bias": "ln_post.bias",
    }
    blocks = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
              "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for key, value in sd.items():
        name = key.removeprefix("vision_model.")
        if name in renames:
            out["visual." + renames[name]] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
        elif name.startswith("encoder.layers."):
            layer, rest = name.split(".", 3)[2:]
            module, param = rest.rsplit(".", 1)
            if module in blocks:
                out[f"visual.transformer.resblocks.{layer}.{blocks[module]}.{param}"] = value
            elif module == "self_attn.q_proj":
                fused = torch.cat([sd[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")])
                out[f"visual.transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
    return out


async def test_clip_vision_shim_is_the_core_encoder(shims: Any, tmp_path: Any) -> None:
    """comfy.clip_vision builds the core CLIP vision encoder: a pack's model (from a state dict,
    an OpenCLIP file or a JSON config) is a CLIP_VISION the nodes take, and encodes exactly as
    the core loader's on the same (fp16-stored, as the reference keeps them) weights."""
    cv = _mod("comfy.clip_vision")
    from plugins.core_nodes.models import clip_vision as core

    _, sd = _tiny_clip_vision()  # 23 layers: read as a ViT-L tower
    sd = {k: v.half().float() for k, v in sd.items()}
    node = core.load_clip_vision(sd)
    image = torch.rand(2, 40, 30, 3)
    expected = node.encode_image(image)

    path = tmp_path / "openclip_vision.safetensors"
    _mod("comfy.utils").save_torch_file(_to_openclip_visual(sd), str(path))
    config = {**cv.CONFIGS["vitl"], "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 23,
              "image_size": 28, "projection_dim": 24}
    from_json = cv.ClipVisionModel(config)
    assert not from_json.load_sd(sd).missing_keys
    for clip in (cv.load_clipvision_from_sd(dict(sd)), cv.load(str(path)), from_json):
        assert isinstance(clip, core.ClipVision) and isinstance(clip.model, core.ClipVisionModel)
        assert clip.model.visual_projection.weight.dtype == torch.float16
        out = clip.encode_image(image)
        assert isinstance(out, cv.Output) and cv.Output is core.ClipVisionOutput
        for name in ("last_hidden_state", "penultimate_hidden_states", "image_embeds"):
            assert torch.equal(out[name], expected[name]), name
        assert out.image_sizes == expected.image_sizes and out.mm_projected is None
        assert clip.get_sd().keys() == node.get_sd().keys()
    # ... and the node encodes a pack's model.
    from plugins.core_nodes.nodes.clip_vision import CLIPVisionEncode

    (encoded,) = CLIPVisionEncode().encode(from_json, image, "none")
    assert torch.equal(encoded.image_embeds, node.encode_image(image, crop=False).image_embeds)
    with pytest.raises(ValueError, match="not supported"):
        cv.ClipVisionModel({**config, "hidden_act": "gelu_pytorch_tanh"})
    with pytest.raises(ValueError, match="siglip_vision_model image encoders are not supported"):
        cv.ClipVisionModel({**config, "model_type": "siglip_vision_model"})


async def test_clip_vision_load_rejects_unknown(shims: Any, tmp_path: Any) -> None:
    cv = _mod("comfy.clip_vision")
    assert cv.load_clipvision_from_sd({"foo.weight": torch.zeros(1)}) is None
    path = tmp_path / "dino.safetensors"
    _mod("comfy.utils").save_torch_file({"encoder.layer.0.norm1.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not supported"):
        cv.load(str(path))


# --- model detection and family configs ----------------------------------------------------

SD15_UNET = {
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}


def _sd15_shaped_state_dicts() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(ldm, diffusers) state dicts with SD1.5's key set; only the shapes detection reads are real."""
    utils = _mod("comfy.utils")
    mapping = utils.unet_to_diffusers(SD15_UNET)
    ldm: dict[str, torch.Tensor] = {}
    diffusers: dict[str, torch.Tensor] = {}
    for diff_key, ldm_key in mapping.items():
        if diff_key.startswith(("class_embedding.", "add_embedding.", "down_blocks.3.downsamplers", "up_blocks.3.upsamplers")):
            continue  # SD1.5 has no ADM input, and its last level neither down- nor upsamples
        tensor = torch.empty(1)
        if diff_key in ("conv_in.weight",):
            tensor = torch.empty(320, 4, 1, 1)
        elif diff_key == "conv_out.weight":
            tensor = torch.empty(4, 1, 1, 1)
        elif diff_key.endswith("attn2.to_k.weight"):
            tensor = torch.empty(1, 768)
        elif diff_key.endswith("proj_in.weight"):
            tensor = torch.empty(1, 1, 1, 1)
        elif ".resnets." in diff_key and diff_key.endswith("conv2.weight") and diff_key.startswith("down_blocks."):
            tensor = torch.empty(320 * SD15_UNET["channel_mult"][int(diff_key.split(".")[1])])
        ldm[ldm_key] = tensor
        diffusers[diff_key] = tensor
    return {f"model.diffusion_model.{k}": v for k, v in ldm.items()}, diffusers


async def test_detect_unet_config_sd15_layout(shims: Any) -> None:
    md = _mod("comfy.model_detection")
    sm = _mod("comfy.supported_models")
    ldm, diffusers = _sd15_shaped_state_dicts()
    assert md.unet_prefix_from_state_dict(ldm) == "model.diffusion_model."
    assert md.unet_prefix_from_state_dict({"model.x": 1}) == "model."
    config = md.detect_unet_config(ldm, "model.diffusion_model.")
    for key, value in SD15_UNET.items():
        assert config[key] == value, key
    assert (config["model_channels"], config["in_channels"], config["out_channels"]) == (320, 4, 4)
    assert config["context_dim"] == 768 and config["use_linear_in_transformer"] is False
    assert config["adm_in_channels"] is None and config["use_temporal_attention"] is False
    model_config = md.model_config_from_unet(ldm, "model.diffusion_model.")
    assert type(model_config) is sm.SD15 and model_config.unet_config["num_heads"] == 8
    assert isinstance(model_config.latent_format, _mod("comfy.latent_formats").SD15)
    assert md.detect_unet_config({"x": torch.zeros(1)}, "") is None

    from_diffusers = md.unet_config_from_diffusers_unet(diffusers)
    assert from_diffusers is not None and from_diffusers["context_dim"] == 768
    assert from_diffusers["transformer_depth_output"] == SD15_UNET["transformer_depth_output"]
    assert md.count_blocks(diffusers, "down_blocks.{}") == 4
    assert md.count_blocks(list(ldm), "model.diffusion_model.input_blocks.{}.") == 12


async def test_detect_unet_config_agrees_with_core_loader(shims: Any, tmp_path: Any) -> None:
    from safetensors.torch import load_file

    from plugins.core_nodes.models.unet import config_from_state_dict
    from tests.plugins.core_nodes import tiny_pipeline

    md = _mod("comfy.model_detection")
    for family in ("sd1", "sdxl"):
        sd = load_file(str(tiny_pipeline.write_checkpoint(tmp_path / f"{family}.safetensors", family)))
        prefix = md.unet_prefix_from_state_dict(sd)
        ours = md.detect_unet_config(sd, prefix)
        core = config_from_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
        assert ours["model_channels"] == core.model_channels
        assert ours["context_dim"] == core.context_dim
        assert ours["adm_in_channels"] == core.adm_in_channels
        assert list(ours["channel_mult"]) == list(core.channel_mult)
        assert ours["use_linear_in_transformer"] == core.use_linear_in_transformer


async def test_convert_config_and_family_configs(shims: Any) -> None:
    md = _mod("comfy.model_detection")
    sm = _mod("comfy.supported_models")
    base = _mod("comfy.supported_models_base")
    legacy = {"num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "attention_resolutions": [4, 2, 1], "transformer_depth": 1}
    out = md.convert_config(legacy)
    assert out["num_res_blocks"] == [2, 2, 2, 2] and "attention_resolutions" not in out
    assert out["transformer_depth"] == SD15_UNET["transformer_depth"]
    assert out["transformer_depth_output"] == SD15_UNET["transformer_depth_output"]
    assert out["transformer_depth_middle"] == 1

    sdxl = sm.SDXL({"adm_in_channels": 2816, "in_channels": 4})
    assert isinstance(sdxl, base.BASE) and sdxl.unet_config["num_head_channels"] == 64
    assert sdxl.latent_format.scale_factor == 0.13025 and not sdxl.inpaint_model()
    assert sdxl.missing_attribute is None  # the reference answers None for unknown attributes
    assert sm.Flux({}).sampling_settings == {} and sm.FluxSchnell({}).sampling_settings["shift"] == 1.0
    assert sm.SD3.matches({"in_channels": 16, "pos_embed_scaling_factor": None})
    assert not sm.SD15.matches({"context_dim": 1024})
    target = sm.SD15({}).clip_target()
    assert target.tokenizer is _mod("comfy.sd1_clip").SD1Tokenizer and target.params == {}

    class ServerConfig:  # what the server's own MODELs carry as model.model.model_config
        name = "SDXL"
        unet_config = {"model_channels": 320}

    assert isinstance(ServerConfig(), sm.SDXL) and not isinstance(ServerConfig(), sm.SD15)

    class Unnamed:
        unet_config = {"context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False,
                       "adm_in_channels": None, "use_temporal_attention": False, "in_channels": 4}

    assert isinstance(Unnamed(), sm.SD15) and not isinstance(Unnamed(), sm.SDXL)
    assert not isinstance(object(), sm.SD15)
