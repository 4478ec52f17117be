"""RescaleCFG, ModelSamplingDiscrete, DifferentialDiffusion, PatchModelAddDownscale and the
Align-Your-Steps / GITS schedulers.

The patch functions are checked against the published formulas written out here; the nodes run
through the real server on the tiny SD1 checkpoint, each sampler's latent saved with SaveLatent
and compared with the unpatched run's (a neutral patch equals it, a real one changes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from plugins.core_nodes.nodes.model_patches import (
    DifferentialDiffusion,
    ModelSamplingDiscrete,
    PatchModelAddDownscale,
    RescaleCFG,
    differential_mask,
    downscale_patches,
    rescale_cfg_function,
)
from plugins.core_nodes.nodes.schedulers_extra import (
    AYS_NOISE_LEVELS,
    AlignYourStepsScheduler,
    GITSScheduler,
    gits_noise_levels,
)
from plugins.core_nodes.sampling.prediction import make_sampling, rescale_zero_terminal_snr_sigmas
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete as CoreSchedule

from .node_helpers import messages, run_prompt
from .test_workflows_e2e import checkpoints  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Recorder:
    """A stand-in MODEL that records what a patch node installs on its clone."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.clones: list[_Recorder] = []
        self.model_options: dict[str, Any] = {}

    def clone(self) -> _Recorder:
        twin = _Recorder()
        self.clones.append(twin)
        return twin

    def get_model_object(self, name: str) -> Any:
        assert name == "model_sampling"
        return CoreSchedule()

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("set_model_") and name != "add_object_patch":
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))


# --- RescaleCFG --------------------------------------------------------------------------------


def _published_rescale(cond_den: torch.Tensor, uncond_den: torch.Tensor, x: torch.Tensor, sigma: float,
                       scale: float, phi: float) -> torch.Tensor:
    """Rescaled CFG (Lin et al. 2023, eq. 15-16) in variance-preserving terms: with
    x_t = alpha x0 + sigma_vp eps (alpha = 1/sqrt(s^2+1), sigma_vp = s alpha) the predictions
    become v = alpha eps - sigma_vp x0, CFG runs on v, the result's std is rescaled to the
    conditional v's and blended by phi, and x0 = alpha x_t - sigma_vp v."""
    s = torch.tensor(sigma)
    alpha = 1 / torch.sqrt(s**2 + 1)
    sigma_vp = s * alpha
    x_t = x * alpha

    def v_of(x0: torch.Tensor) -> torch.Tensor:
        eps = (x - x0) / s
        return alpha * eps - sigma_vp * x0

    v_c, v_u = v_of(cond_den), v_of(uncond_den)
    v_cfg = v_u + scale * (v_c - v_u)
    v_rescaled = v_cfg * (v_c.std(dim=(1, 2, 3), keepdim=True) / v_cfg.std(dim=(1, 2, 3), keepdim=True))
    v = phi * v_rescaled + (1 - phi) * v_cfg
    # x0 = alpha x_t - sigma_vp v
    return alpha * x_t - sigma_vp * v


def _cfg_args(x: torch.Tensor, cond_den: torch.Tensor, uncond_den: torch.Tensor, sigma: float,
              scale: float) -> dict[str, Any]:
    return {
        "cond": x - cond_den,
        "uncond": x - uncond_den,
        "cond_scale": scale,
        "input": x,
        "sigma": torch.tensor([sigma]),
        "timestep": torch.tensor([sigma]),
        "cond_denoised": cond_den,
        "uncond_denoised": uncond_den,
    }


@pytest.mark.parametrize(("sigma", "phi"), [(14.6, 0.7), (0.5, 1.0), (3.0, 0.0)])
def test_rescale_cfg_is_the_published_formula(sigma: float, phi: float) -> None:
    g = torch.Generator().manual_seed(3)
    x, cond_den, uncond_den = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    args = _cfg_args(x, cond_den, uncond_den, sigma, 7.5)
    denoised = x - rescale_cfg_function(phi)(args)  # the sampler's reading of a cfg function
    expected = _published_rescale(cond_den, uncond_den, x, sigma, 7.5, phi)
    torch.testing.assert_close(denoised, expected, rtol=1e-4, atol=1e-4)
    plain = uncond_den + 7.5 * (cond_den - uncond_den)
    if phi == 0.0:
        torch.testing.assert_close(denoised, plain, rtol=1e-4, atol=1e-4)
    else:
        assert not torch.allclose(denoised, plain, atol=1e-3)


def test_rescale_cfg_node_installs_a_cfg_function_on_a_clone() -> None:
    model = _Recorder()
    (patched,) = RescaleCFG().patch(model, 0.7)
    assert patched is model.clones[0] and model.calls == []
    ((name, (fn,)),) = patched.calls
    assert name == "set_model_sampler_cfg_function" and callable(fn)


# --- ModelSamplingDiscrete ---------------------------------------------------------------------


def test_model_sampling_tables() -> None:
    core = CoreSchedule()
    eps = make_sampling("eps")
    vpred = make_sampling("v_prediction")
    # eps and v-prediction share the SD1/SDXL schedule (the reference's 1000-entry table).
    assert torch.equal(eps.sigmas, core.sigmas) and torch.equal(vpred.sigmas, core.sigmas)
    assert float(core.sigmas[0]) == pytest.approx(0.0291675, abs=1e-6)
    assert float(core.sigmas[-1]) == pytest.approx(14.614642, abs=1e-5)
    # zsnr: the top sigma is pinned to alpha-bar 4.8973451890853435e-08, the bottom kept.
    zsnr = make_sampling("v_prediction", zsnr=True)
    top = ((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08) ** 0.5
    assert float(zsnr.sigma_max) == pytest.approx(top, rel=1e-5)
    assert float(zsnr.sigma_min) == pytest.approx(float(core.sigma_min), rel=1e-4)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    exact = rescale_zero_terminal_snr_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
    assert torch.equal(zsnr.sigmas, exact.float())
    # LCM: 50 of the 1000 timesteps (19, 39, ... 999) and timesteps mapped back onto them.
    lcm = make_sampling("lcm")
    assert len(lcm.sigmas) == 50
    assert torch.equal(lcm.sigmas, core.sigmas[19::20])
    assert int(lcm.timestep(lcm.sigma_max)) == 999 and int(lcm.timestep(lcm.sigma_min)) == 19
    assert float(lcm.sigma(torch.tensor(999.0))) == pytest.approx(float(core.sigmas[-1]))


def test_prediction_types_read_the_output_as_the_reference() -> None:
    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(1, 4, 2, 2, generator=g), torch.randn(1, 4, 2, 2, generator=g)
    sigma = torch.tensor([2.0])
    assert torch.equal(make_sampling("eps").calculate_denoised(sigma, out, x), x - out * 2.0)
    v = make_sampling("v_prediction").calculate_denoised(sigma, out, x)
    torch.testing.assert_close(v, x / 5 - out * 2.0 / 5**0.5)
    for kind in ("x0", "img_to_img", "img_to_img_flow"):
        assert torch.equal(make_sampling(kind).calculate_denoised(sigma, out, x), out)
    assert torch.equal(make_sampling("img_to_img").calculate_input(sigma, x), x)
    torch.testing.assert_close(make_sampling("x0").calculate_input(sigma, x), x / 5**0.5)
    # LCM at its top timestep (999 -> scaled 9990): c_skip ~ 0, c_out ~ 1, so the eps estimate.
    lcm = make_sampling("lcm")
    top = lcm.sigma_max.reshape(1)
    torch.testing.assert_close(lcm.calculate_denoised(top, out, x), x - out * top, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown sampling"):
        make_sampling("rectified")


def test_model_sampling_node_object_patches_model_sampling() -> None:
    model = _Recorder()
    (patched,) = ModelSamplingDiscrete().patch(model, "v_prediction", True)
    ((name, (key, obj)),) = patched.calls
    assert (name, key) == ("add_object_patch", "model_sampling")
    assert obj.prediction == "v" and float(obj.sigma_max) > 4000


# --- DifferentialDiffusion ---------------------------------------------------------------------


class _Inner:
    def __init__(self) -> None:
        self.inner_model = type("M", (), {"model_sampling": CoreSchedule()})()


def test_differential_mask_thresholds_by_schedule_progress() -> None:
    ms = CoreSchedule()
    sigmas = torch.tensor([float(ms.sigmas[999]), float(ms.sigmas[499]), float(ms.sigmas[0]), 0.0])
    extra = {"model": _Inner(), "sigmas": sigmas}
    mask = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]])
    # First step: threshold 1 -> only the full-strength pixel is denoised.
    first = differential_mask(sigmas[:1], mask, extra)
    assert first.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]
    # Half-way (timestep 499 of 999..0): threshold 499/999, just under 0.5.
    mid = differential_mask(sigmas[1:2], mask, extra)
    assert mid.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]
    # Strength blends the binary mask with the soft one.
    blended = differential_mask(sigmas[1:2], mask, extra, strength=0.5)
    torch.testing.assert_close(blended, 0.5 * mid + 0.5 * mask)


def test_differential_diffusion_node_sets_the_denoise_mask_function() -> None:
    model = _Recorder()
    (patched,) = DifferentialDiffusion().apply(model)
    ((name, (fn,)),) = patched.calls
    assert name == "set_model_denoise_mask_function"
    ms = CoreSchedule()
    extra = {"model": _Inner(), "sigmas": torch.tensor([float(ms.sigmas[999]), 0.0])}
    assert fn(torch.tensor([float(ms.sigmas[999])]), torch.tensor([0.5, 1.0]), extra_options=extra).tolist() == [
        0.0,
        1.0,
    ]
    assert DifferentialDiffusion.execute(_Recorder(), 0.3)[0].calls[0][0] == "set_model_denoise_mask_function"


# --- PatchModelAddDownscale --------------------------------------------------------------------


def test_deep_shrink_patches_resize_inside_the_window_only() -> None:
    ms = CoreSchedule()
    shrink, grow = downscale_patches(ms, 3, 2.0, 0.0, 0.35, "bicubic", "bicubic")
    h = torch.randn(1, 4, 16, 12)
    high = {"block": ("input", 3), "sigmas": torch.tensor([14.0])}
    assert shrink(h, high).shape == (1, 4, 8, 6)
    assert torch.equal(shrink(h, {**high, "block": ("input", 2)}), h)
    # Past end_percent (sigma below percent_to_sigma(0.35)) nothing is resized.
    low = {"block": ("input", 3), "sigmas": torch.tensor([ms.percent_to_sigma(0.5)])}
    assert torch.equal(shrink(h, low), h)
    small, skip = torch.randn(1, 4, 8, 6), torch.randn(1, 4, 16, 12)
    up, same_skip = grow(small, skip, {})
    assert up.shape == (1, 4, 16, 12) and same_skip is skip
    assert grow(skip, skip, {})[0] is skip


def test_deep_shrink_node_picks_the_input_patch_kind() -> None:
    args = (3, 2.0, 0.0, 0.35)
    after = PatchModelAddDownscale().patch(_Recorder(), *args, True, "bicubic", "bilinear")[0]
    before = PatchModelAddDownscale().patch(_Recorder(), *args, False, "bicubic", "bilinear")[0]
    assert [c[0] for c in after.calls] == [
        "set_model_input_block_patch_after_skip",
        "set_model_output_block_patch",
    ]
    assert [c[0] for c in before.calls] == ["set_model_input_block_patch", "set_model_output_block_patch"]


# --- Align Your Steps / GITS -------------------------------------------------------------------


def _loglinear(levels: list[float], count: int) -> list[float]:
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(levels[::-1])
    return list(np.exp(np.interp(np.linspace(0, 1, count), xs, ys))[::-1])


def test_align_your_steps_table_and_interpolation() -> None:
    (ten,) = AlignYourStepsScheduler().get_sigmas("SD1", 10, 1.0)
    assert ten.dtype == torch.float32
    assert ten.tolist() == torch.FloatTensor([*AYS_NOISE_LEVELS["SD1"][:-1], 0.0]).tolist()
    assert float(ten[0]) == pytest.approx(14.6146412293) and float(ten[5]) == pytest.approx(1.3943805092)
    (twenty,) = AlignYourStepsScheduler().get_sigmas("SDXL", 20, 1.0)
    expected = _loglinear(list(AYS_NOISE_LEVELS["SDXL"]), 21)
    assert len(twenty) == 21 and float(twenty[-1]) == 0.0
    assert twenty[:-1].tolist() == torch.FloatTensor(expected[:-1]).tolist()
    # Every other sigma of the 20-step schedule is a table entry (the grid contains the old one).
    assert float(twenty[2]) == pytest.approx(AYS_NOISE_LEVELS["SDXL"][1], rel=1e-6)
    # denoise keeps the last round(steps * denoise) steps.
    (part,) = AlignYourStepsScheduler().get_sigmas("SD1", 10, 0.45)
    assert part.tolist() == ten[-5:].tolist()
    assert AlignYourStepsScheduler().get_sigmas("SVD", 10, 0.0)[0].numel() == 0


def test_gits_table_rows_and_long_schedules() -> None:
    table = gits_noise_levels()
    assert sorted(table) == [f"{0.8 + 0.05 * i:.2f}" for i in range(15)]
    assert all(len(rows) == 19 and [len(r) for r in rows] == list(range(3, 22)) for rows in table.values())
    # Rows as published for coeff 1.20 (steps 2, 4) and 0.80 (steps 2).
    (two,) = GITSScheduler().get_sigmas(1.2, 2, 1.0)
    assert two.tolist() == torch.FloatTensor([14.61464119, 0.803307, 0.0]).tolist()
    (four,) = GITSScheduler().get_sigmas(1.2, 4, 1.0)
    assert four.tolist() == torch.FloatTensor([14.61464119, 2.36326075, 0.92192322, 0.36617002, 0.0]).tolist()
    assert GITSScheduler().get_sigmas(0.8, 2, 1.0)[0].tolist() == torch.FloatTensor(
        [14.61464119, 7.49001646, 0.0]
    ).tolist()
    # Past 20 steps the 20-step row is stretched log-linearly.
    (thirty,) = GITSScheduler().get_sigmas(1.2, 30, 1.0)
    expected = _loglinear(table["1.20"][-1], 31)
    assert thirty[:-1].tolist() == torch.FloatTensor(expected[:-1]).tolist() and float(thirty[-1]) == 0.0
    (half,) = GITSScheduler.execute(1.2, 10, 0.5)
    full = GITSScheduler().get_sigmas(1.2, 10, 1.0)[0]
    assert half.tolist() == full[-6:].tolist()
    with pytest.raises(ValueError, match="coeff"):
        GITSScheduler().get_sigmas(1.23, 10, 1.0)


# --- through the server: KSampler on the tiny SD1 checkpoint -------------------------------------

SIZE = 64


def _prompt(ckpt: str) -> dict[str, Any]:
    """One prompt, many KSamplers: each variant's MODEL (and latent) sampled with the same seed
    and saved under its own prefix."""
    p: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a glass bottle", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "watermark", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "ones": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": SIZE, "height": SIZE}},
        "half": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": SIZE, "height": SIZE}},
        "masked_ones": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["empty", 0], "mask": ["ones", 0]}},
        "masked_half": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["empty", 0], "mask": ["half", 0]}},
        "rescale0": {"class_type": "RescaleCFG", "inputs": {"model": ["ckpt", 0], "multiplier": 0.0}},
        "rescale7": {"class_type": "RescaleCFG", "inputs": {"model": ["ckpt", 0], "multiplier": 0.7}},
        "eps": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["ckpt", 0], "sampling": "eps", "zsnr": False}},
        "vpred": {
            "class_type": "ModelSamplingDiscrete",
            "inputs": {"model": ["ckpt", 0], "sampling": "v_prediction", "zsnr": False},
        },
        "dd": {"class_type": "DifferentialDiffusion", "inputs": {"model": ["ckpt", 0]}},
    }
    for kind in ("lcm", "x0"):
        p[kind] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["ckpt", 0], "sampling": kind, "zsnr": True}}
    shrink = {
        "downscale_factor": 2.0,
        "start_percent": 0.0,
        "end_percent": 1.0,
        "downscale_after_skip": True,
        "downscale_method": "bicubic",
        "upscale_method": "bicubic",
    }
    p["shrink"] = {"class_type": "PatchModelAddDownscale", "inputs": {"model": ["ckpt", 0], "block_number": 1, **shrink}}
    # No input block 32 in any UNet: the patches never fire.
    p["noshrink"] = {"class_type": "PatchModelAddDownscale", "inputs": {"model": ["ckpt", 0], "block_number": 32, **shrink}}
    runs = {
        "plain": ("ckpt", "empty"),
        "rescale0": ("rescale0", "empty"),
        "rescale7": ("rescale7", "empty"),
        "eps": ("eps", "empty"),
        "vpred": ("vpred", "empty"),
        "lcm": ("lcm", "empty"),
        "x0": ("x0", "empty"),
        "shrink": ("shrink", "empty"),
        "noshrink": ("noshrink", "empty"),
        "inpaint_ones": ("ckpt", "masked_ones"),
        "dd_ones": ("dd", "masked_ones"),
        "inpaint_half": ("ckpt", "masked_half"),
        "dd_half": ("dd", "masked_half"),
    }
    for name, (model, latent) in runs.items():
        p[f"k_{name}"] = {
            "class_type": "KSampler",
            "inputs": {
                "seed": 7,
                "steps": 3,
                "cfg": 6.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": [model, 0],
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": [latent, 0],
            },
        }
        p[f"save_{name}"] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [f"k_{name}", 0], "filename_prefix": f"latents/{name}"},
        }
    return p


async def test_patch_nodes_through_ksampler(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]  # noqa: F811
) -> None:
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / checkpoints["sd1"].name).symlink_to(checkpoints["sd1"])
    server = await comfy_server(plugins=["core_nodes", "models"])
    frames = await run_prompt(server, _prompt(checkpoints["sd1"].name))
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    out_root = Path(server.kernel.settings.output_path)
    latents: dict[str, torch.Tensor] = {}
    for done in messages(frames, "executed"):
        if done["node"].startswith("save_"):
            (entry,) = done["output"]["latents"]
            path = out_root / entry["subfolder"] / entry["filename"]
            latents[done["node"][5:]] = load_file(str(path))["latent_tensor"]
    assert len(latents) == 13
    plain = latents["plain"]
    assert torch.isfinite(plain).all()
    # Neutral patches: bit for bit the unpatched run.
    assert torch.equal(latents["eps"], plain)
    assert torch.equal(latents["noshrink"], plain)
    assert torch.equal(latents["dd_ones"], latents["inpaint_ones"])
    # RescaleCFG at 0 is plain CFG, up to the v-space round trip's float error.
    torch.testing.assert_close(latents["rescale0"], plain, rtol=1e-4, atol=1e-4)
    # Real patches change the result.
    for name in ("rescale7", "vpred", "shrink", "lcm", "x0"):
        assert torch.isfinite(latents[name]).all(), name
        assert not torch.allclose(latents[name], plain, atol=1e-3), name
    assert not torch.allclose(latents["dd_half"], latents["inpaint_half"], atol=1e-3)


# --- as packs call them, through the compatibility modules ------------------------------------


async def test_packs_import_and_call_the_nodes_through_the_shims(
    comfy_server: Any, checkpoints: dict[str, Path]  # noqa: F811
) -> None:
    """tinyterra, Impact-Pack and Easy-Use's calls: ``comfy_extras.nodes_*`` / ``nodes`` serve
    these classes and their reference method names return the reference's tuples."""
    import importlib

    from plugins.core_nodes.models import adapters

    await comfy_server(plugins=["comfy_compat", "models", "core_nodes"])
    advanced = importlib.import_module("comfy_extras.nodes_model_advanced")
    downscale = importlib.import_module("comfy_extras.nodes_model_downscale")
    differential = importlib.import_module("comfy_extras.nodes_differential_diffusion")
    ays = importlib.import_module("comfy_extras.nodes_align_your_steps")
    nodes = importlib.import_module("nodes")
    model, _, _ = adapters.load_checkpoint(checkpoints["sd1"])

    vpred = advanced.ModelSamplingDiscrete().patch(model, "v_prediction", True)[0]
    assert vpred.get_model_object("model_sampling").prediction == "v"
    assert model.get_model_object("model_sampling").prediction == "eps"  # the original is untouched
    rescaled = advanced.RescaleCFG().patch(vpred, 0.7)[0]
    assert callable(rescaled.model_options["sampler_cfg_function"])
    assert "sampler_cfg_function" not in vpred.model_options
    dd = differential.DifferentialDiffusion().apply(model)[0]
    assert callable(dd.model_options["denoise_mask_function"])
    shrunk = downscale.PatchModelAddDownscale().patch(model, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic")[0]
    patches = shrunk.model_options["transformer_options"]["patches"]
    assert len(patches["input_block_patch_after_skip"]) == 1 and len(patches["output_block_patch"]) == 1
    sigmas = ays.AlignYourStepsScheduler().get_sigmas("SD1", 10, 1.0)[0]
    assert float(sigmas[0]) == pytest.approx(14.6146412293) and float(sigmas[-1]) == 0.0
    gits = nodes.NODE_CLASS_MAPPINGS["GITSScheduler"]().get_sigmas(1.2, 10, 1.0)[0]
    assert len(gits) == 11 and float(gits[-1]) == 0.0
