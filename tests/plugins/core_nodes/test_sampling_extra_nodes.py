"""SamplerLCM, SamplerLCMUpscale, SamplerEulerCFGpp and OptimalStepsScheduler, and the
InstructPix2Pix / SD x4 upscale / ControlNet-text / T5 tokenizer conditioning nodes.

The samplers run through the real guider on the toy MODEL (its prediction is the golden toy
denoiser plus bias times the prompt's mean, so the guided and unconditional predictions are
known in closed form) and are compared with their update rules written out step by step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.models import adapters
from plugins.core_nodes.nodes import conditioning_extra as ce
from plugins.core_nodes.nodes import sampling_extra as se
from plugins.core_nodes.sampling.noise import next_seed

from .node_helpers import run_ok, saved_latents, start_with_models
from .test_workflows_e2e import checkpoints  # noqa: F401  (fixture)
from .toy_guidance import cond, toy_denoiser, toy_patcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIGMAS = torch.tensor([10.0, 4.0, 1.5, 0.4, 0.0])
BIAS, CFG, SEED = 0.5, 3.0, 5


def _guided_run(sampler: Any, noise: torch.Tensor) -> torch.Tensor:
    guider = CFGGuider(toy_patcher(BIAS))
    guider.set_conds(cond(1.0), cond(-1.0))
    guider.set_cfg(CFG)
    return guider.sample(noise, torch.zeros_like(noise), sampler, SIGMAS, seed=SEED)


def _predictions(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided, unconditional) x0 predictions: toy + BIAS * prompt mean, CFG-combined."""
    base = toy_denoiser(x, sigma.reshape(1))
    cond_pred, uncond_pred = base + BIAS * 1.0, base + BIAS * -1.0
    return uncond_pred + CFG * (cond_pred - uncond_pred), uncond_pred


def _noise() -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize(("s_noise", "s_noise_end", "clip_std"), [(1.0, 1.0, 0.0), (0.5, 2.0, 0.0), (1.0, 1.0, 0.7)])
def test_lcm_sampler_options(s_noise: float, s_noise_end: float, clip_std: float) -> None:
    (sampler,) = se.SamplerLCM().get_sampler(s_noise, s_noise_end, clip_std)
    noise = _noise()
    got = _guided_run(sampler, noise)
    # x <- denoised; x <- denoised + sigma_next * s_i * clip(n_i), s_i linear over the steps,
    # n_i the per-step noise stream (a CPU generator seeded seed + 1).
    generator = torch.Generator().manual_seed(next_seed(SEED))
    x = noise * SIGMAS[0]
    steps = len(SIGMAS) - 1
    for i in range(steps):
        x, _ = _predictions(x, SIGMAS[i])
        if SIGMAS[i + 1] > 0:
            n = torch.randn(x.shape, generator=generator)
            if clip_std > 0:
                n = n.clamp(-clip_std * float(n.std()), clip_std * float(n.std()))
            scale = s_noise + (s_noise_end - s_noise) * i / (steps - 1)
            x = x + SIGMAS[i + 1] * scale * n
    torch.testing.assert_close(got, x)


def test_lcm_sampler_defaults_are_the_plain_lcm() -> None:
    from plugins.core_nodes.sampler_objects import ksampler

    (sampler,) = se.SamplerLCM.execute(1.0, 1.0, 0.0)
    assert torch.equal(_guided_run(sampler, _noise()), _guided_run(ksampler("lcm"), _noise()))


@pytest.mark.parametrize(("ratio", "scale_steps"), [(1.5, -1), (2.0, 1), (1.0, -1)])
def test_lcm_upscale_grows_the_latent_step_by_step(ratio: float, scale_steps: int) -> None:
    (sampler,) = se.SamplerLCMUpscale().get_sampler(ratio, scale_steps, "nearest-exact")
    noise = _noise()
    got = _guided_run(sampler, noise)
    steps = len(SIGMAS) - 1
    # Factors: linspace(1, ratio, n)[1:], n = max(sigmas // 2 + 1, 2), or scale_steps + 1.
    n = max((steps + 1) // 2 + 1, 2) if scale_steps < 0 else scale_steps + 1
    factors = list(np.linspace(1.0, ratio, n)[1:])
    generator = torch.Generator().manual_seed(SEED)
    torch.randn(noise.shape, generator=generator)  # the initial noise's draw from the same stream
    x = noise * SIGMAS[0]
    for i in range(steps):
        x, _ = _predictions(x, SIGMAS[i])
        if i < len(factors):
            size = (round(8 * factors[i]), round(8 * factors[i]))
            x = F.interpolate(x, size=size, mode="nearest-exact")
        if SIGMAS[i + 1] > 0:
            x = x + SIGMAS[i + 1] * torch.randn(x.shape, generator=generator)
    assert got.shape == x.shape == (1, 4, round(8 * ratio), round(8 * ratio))
    torch.testing.assert_close(got, x)
    with pytest.raises(ValueError, match="upscale_method"):
        se.SamplerLCMUpscale().get_sampler(ratio, scale_steps, "lanczos")


@pytest.mark.parametrize("version", ["regular", "alternative"])
def test_euler_cfg_pp_versions(version: str) -> None:
    (sampler,) = se.SamplerEulerCFGpp().get_sampler(version)
    noise = _noise()
    got = _guided_run(sampler, noise)
    x = noise * SIGMAS[0]
    for i in range(len(SIGMAS) - 1):
        sigma, sigma_next = SIGMAS[i], SIGMAS[i + 1]
        denoised, uncond = _predictions(x, sigma)
        if version == "regular":
            # CFG++: step from the guided x0 along the unconditional noise estimate.
            x = denoised + sigma_next * (x - uncond) / sigma
        else:
            # d = (x - denoised + uncond - denoised) / sigma; Euler step.
            x = x + (x - 2 * denoised + uncond) / sigma * (sigma_next - sigma)
    torch.testing.assert_close(got, x)
    with pytest.raises(ValueError, match="version"):
        se.SamplerEulerCFGpp().get_sampler("both")


# --- OptimalStepsScheduler ------------------------------------------------------------------------


def _loglinear(levels: list[float], count: int) -> list[float]:
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(levels[::-1])
    return list(np.exp(np.interp(np.linspace(0, 1, count), xs, ys))[::-1])


def test_optimal_steps_tables_and_interpolation() -> None:
    (flux,) = se.OptimalStepsScheduler().get_sigmas("FLUX", 10, 1.0)
    table = [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808]
    assert flux.dtype == torch.float32 and flux.tolist() == torch.FloatTensor([*table, 0.0]).tolist()
    (wan,) = se.OptimalStepsScheduler.execute("Wan", 8, 1.0)
    expected = _loglinear(list(se.OPTIMAL_NOISE_LEVELS["Wan"]), 9)
    assert wan.tolist() == torch.FloatTensor([*expected[:-1], 0.0]).tolist()
    assert float(wan[0]) == pytest.approx(1.0)
    (part,) = se.OptimalStepsScheduler().get_sigmas("Chroma", 40, 0.5)
    full = se.OptimalStepsScheduler().get_sigmas("Chroma", 40, 1.0)[0]
    assert len(part) == 21 and part[:-1].tolist() == full[-21:-1].tolist() and float(part[-1]) == 0.0
    assert se.OptimalStepsScheduler().get_sigmas("FLUX", 10, 0.0)[0].numel() == 0
    with pytest.raises(ValueError, match="model_type"):
        se.OptimalStepsScheduler().get_sigmas("SD1", 10, 1.0)


# --- conditioning nodes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1(checkpoints: dict[str, Path]) -> Any:  # noqa: F811
    return adapters.load_checkpoint(checkpoints["sd1"])


def test_ip2p_encodes_the_centre_cut_image(sd1: Any) -> None:
    _model, clip, vae = sd1
    c, pooled = clip.encode("make it snowy")
    positive, negative = [[c, {"pooled_output": pooled}]], [[c * 0, {"pooled_output": pooled}]]
    pixels = torch.rand(1, 21, 19, 3, generator=torch.Generator().manual_seed(2))
    pos, neg, latent = ce.InstructPixToPixConditioning().encode(positive, negative, pixels, vae)
    # 21 x 19 -> 16 x 16, cut from row (21 % 8) // 2 = 2 and column (19 % 8) // 2 = 1.
    expected = vae.encode(pixels[:, 2:18, 1:17, :].contiguous())
    for entries in (pos, neg):
        torch.testing.assert_close(entries[0][1]["concat_latent_image"], expected)
        assert entries[0][1]["pooled_output"] is pooled
    assert "concat_latent_image" not in positive[0][1]
    assert torch.equal(latent["samples"], torch.zeros_like(expected))
    with pytest.raises(ValueError, match="smaller than 8"):
        ce.InstructPixToPixConditioning.execute(positive, negative, pixels[:, :5], vae)


def test_x4_upscale_conditioning() -> None:
    images = torch.rand(2, 20, 24, 3, generator=torch.Generator().manual_seed(3))
    c = torch.ones(1, 77, 8)
    pos, neg, latent = ce.SD_4XUpscale_Conditioning().encode(images, [[c, {}]], [[c, {"x": 1}]], 2.0, 0.25)
    # 24 x 20 scaled by 2 -> 48 x 40; latents (and the -1..1 image the model sees) at a quarter.
    expected = F.interpolate(images.movedim(-1, 1) * 2 - 1, size=(10, 12), mode="bilinear", align_corners=False)
    for entries in (pos, neg):
        torch.testing.assert_close(entries[0][1]["concat_image"], expected)
        assert entries[0][1]["noise_augmentation"] == 0.25
    assert neg[0][1]["x"] == 1
    assert torch.equal(latent["samples"], torch.zeros(2, 4, 10, 12))
    with pytest.raises(ValueError, match="scale_ratio"):
        ce.SD_4XUpscale_Conditioning.execute(images, [[c, {}]], [[c, {}]], 0.1, 0.0)


def test_controlnet_text_and_t5_options(sd1: Any) -> None:
    _model, clip, _vae = sd1
    base = [[torch.zeros(1, 77, 8), {"strength": 1.0}]]
    (out,) = ce.CLIPTextEncodeControlnet().encode(clip, base, "a depth map")
    c, pooled = clip.encode("a depth map")
    torch.testing.assert_close(out[0][1]["cross_attn_controlnet"], c)
    torch.testing.assert_close(out[0][1]["pooled_output_controlnet"], pooled)
    assert out[0][1]["strength"] == 1.0 and "cross_attn_controlnet" not in base[0][1]
    (t5,) = ce.T5TokenizerOptions().set_options(clip, 3, 77)
    options = t5.get_tokenizer_options()
    assert options["t5xxl_min_padding"] == 3 and options["umt5xxl_min_length"] == 77 and len(options) == 10
    assert clip.get_tokenizer_options() == {}


# --- through the server ---------------------------------------------------------------------------


def _custom(model: list[Any], sampler: list[Any], sigmas: list[Any], latent: list[Any]) -> dict[str, Any]:
    return {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": model, "add_noise": True, "noise_seed": 4, "cfg": 4.0, "positive": ["pos", 0],
            "negative": ["neg", 0], "sampler": sampler, "sigmas": sigmas, "latent_image": latent,
        },
    }  # fmt: skip


async def test_samplers_and_conditioning_through_the_server(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]  # noqa: F811
) -> None:
    server = await start_with_models(comfy_server, tmp_path, checkpoints=checkpoints["sd1"])
    m, latent = ["ckpt", 0], ["empty", 0]
    p: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoints["sd1"].name}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a field", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sched": {"class_type": "BasicScheduler", "inputs": {"model": m, "scheduler": "normal", "steps": 3, "denoise": 1.0}},
        "optimal": {"class_type": "OptimalStepsScheduler", "inputs": {"model_type": "FLUX", "steps": 4, "denoise": 1.0}},
        "lcm": {"class_type": "SamplerLCM", "inputs": {"s_noise": 1.0, "s_noise_end": 1.0, "noise_clip_std": 0.0}},
        "lcm_named": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "lcm"}},
        "cfgpp": {"class_type": "SamplerEulerCFGpp", "inputs": {"version": "regular"}},
        "cfgpp_named": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_cfg_pp"}},
        "cfgpp_alt": {"class_type": "SamplerEulerCFGpp", "inputs": {"version": "alternative"}},
        "up": {"class_type": "SamplerLCMUpscale", "inputs": {"scale_ratio": 1.5, "scale_steps": -1, "upscale_method": "bilinear"}},
        "ctl": {"class_type": "CLIPTextEncodeControlnet", "inputs": {"clip": ["ckpt", 1], "conditioning": ["pos", 0], "text": "edges"}},
        "t5": {"class_type": "T5TokenizerOptions", "inputs": {"clip": ["ckpt", 1], "min_padding": 1, "min_length": 4}},
        "t5_enc": {"class_type": "CLIPTextEncode", "inputs": {"text": "a field", "clip": ["t5", 0]}},
        "ip2p_img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x808080}},
        "ip2p": {"class_type": "InstructPixToPixConditioning", "inputs": {"positive": ["pos", 0], "negative": ["neg", 0], "vae": ["ckpt", 2], "pixels": ["ip2p_img", 0]}},
        "x4": {"class_type": "SD_4XUpscale_Conditioning", "inputs": {"images": ["ip2p_img", 0], "positive": ["pos", 0], "negative": ["neg", 0], "scale_ratio": 2.0, "noise_augmentation": 0.1}},
    }  # fmt: skip
    runs = {
        "lcm": ("lcm", "sched"),
        "lcm_named": ("lcm_named", "sched"),
        "cfgpp": ("cfgpp", "sched"),
        "cfgpp_named": ("cfgpp_named", "sched"),
        "cfgpp_alt": ("cfgpp_alt", "sched"),
        "up": ("up", "sched"),
        "optimal": ("lcm_named", "optimal"),
    }
    for key, (sampler, sigmas) in runs.items():
        p[f"s_{key}"] = _custom(m, [sampler, 0], [sigmas, 0], latent)
    p["s_ctl"] = {**_custom(m, ["lcm", 0], ["sched", 0], latent)}
    p["s_ctl"]["inputs"]["positive"] = ["ctl", 0]
    p["s_ip2p"] = _custom(m, ["lcm", 0], ["sched", 0], ["ip2p", 2])
    p["s_ip2p"]["inputs"].update(positive=["ip2p", 0], negative=["ip2p", 1])
    p["s_x4"] = _custom(m, ["lcm", 0], ["sched", 0], ["x4", 2])
    p["s_x4"]["inputs"].update(positive=["x4", 0], negative=["x4", 1])
    p["s_t5"] = _custom(m, ["lcm", 0], ["sched", 0], latent)
    p["s_t5"]["inputs"]["positive"] = ["t5_enc", 0]
    for key in (*runs, "ctl", "ip2p", "x4", "t5"):
        p[f"save_{key}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"s_{key}", 0], "filename_prefix": f"l/{key}"}}
    latents = saved_latents(server, await run_ok(server, p))
    assert all(torch.isfinite(v).all() for v in latents.values())
    # The nodes' samplers with neutral options are the named samplers, bit for bit.
    assert torch.equal(latents["lcm"], latents["lcm_named"])
    assert torch.equal(latents["cfgpp"], latents["cfgpp_named"])
    assert not torch.allclose(latents["cfgpp_alt"], latents["cfgpp"])
    assert latents["up"].shape == (1, 4, 12, 12) and latents["lcm"].shape == (1, 4, 8, 8)
    # The SD1 model has no ControlNet / ip2p / x4 inputs: the extra entries leave the prompt's
    # result (up to float rounding: entries with other options are batched apart).
    torch.testing.assert_close(latents["ctl"], latents["lcm"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(latents["ip2p"], latents["lcm"], rtol=1e-4, atol=1e-3)
    assert latents["x4"].shape == (1, 4, 32, 32)
    # CLIP tokenizers ignore the T5 options.
    assert torch.equal(latents["t5"], latents["lcm"])
