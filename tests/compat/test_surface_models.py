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
    utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: seen.append((v, t, p is not None)))
    try:
        store: dict[str, Any] = {}
        callback = lp.prepare_callback(Model(), 3, store)
        callback(0, latent, latent, 3)
    finally:
        utils.set_progress_bar_global_hook(None)
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


async def test_clip_vision_load_rejects_unknown(shims: Any, tmp_path: Any) -> None:
    cv = _mod("comfy.clip_vision")
    assert cv.load_clipvision_from_sd({"foo.weight": torch.zeros(1)}) is None
    path = tmp_path / "dino.safetensors"
    _mod("comfy.utils").save_torch_file({"encoder.layer.0.norm1.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not supported"):
        cv.load(str(path))
