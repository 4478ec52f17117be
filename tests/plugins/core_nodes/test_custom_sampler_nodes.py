"""The custom-sampling nodes (SamplerCustom, SamplerCustomAdvanced, schedulers, sigma tools,
noise and guider nodes) against the KSampler node, with the toy model, and over HTTP."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.core_nodes.nodes import custom_sampler as cs
from plugins.core_nodes.nodes.sampling import KSampler
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete, ksampler_sigmas

from .node_helpers import messages, run_prompt
from .toy_stack import TOY_PLUGIN, ToyModel

IMG2IMG = 0.5 * torch.cos(torch.arange(2 * 4 * 8 * 8, dtype=torch.float32).reshape(2, 4, 8, 8) / 7)


def cond(value: float) -> list[list[Any]]:
    return [[torch.full((1, 77, 8), value), {"pooled_output": None}]]


def ksampler(
    sampler: str, scheduler: str, steps: int, denoise: float, latent: dict[str, Any]
) -> torch.Tensor:
    out = KSampler().sample(
        ToyModel(0.5), 42, steps, 6.0, sampler, scheduler, cond(1.0), cond(0.0), latent, denoise
    )
    return out[0]["samples"]


@pytest.mark.parametrize(
    ("sampler", "scheduler", "steps", "denoise"),
    [("euler", "normal", 6, 1.0), ("dpmpp_2m_sde", "karras", 5, 0.6), ("uni_pc", "simple", 6, 1.0)],
)
def test_sampler_custom_equals_ksampler(sampler: str, scheduler: str, steps: int, denoise: float) -> None:
    latent = {"samples": IMG2IMG}
    (sigmas,) = cs.BasicScheduler().get_sigmas(ToyModel(), scheduler, steps, denoise)
    if sampler == "uni_pc":  # KSampler drops the penultimate sigma for UniPC; the node does not
        sigmas = ksampler_sigmas(ModelSamplingDiscrete(), scheduler, sampler, steps, denoise)
    (chosen,) = cs.KSamplerSelect().get_sampler(sampler)
    out, denoised = cs.SamplerCustom().sample(
        ToyModel(0.5), True, 42, 6.0, cond(1.0), cond(0.0), chosen, sigmas, latent
    )
    assert torch.equal(out["samples"], ksampler(sampler, scheduler, steps, denoise, latent))
    assert denoised["samples"].shape == out["samples"].shape
    if sampler != "uni_pc":
        # The last step's x0; these samplers' last step lands on sigma 0, so it is the output.
        assert torch.allclose(denoised["samples"], out["samples"], atol=1e-4)

    (noise,) = cs.RandomNoise().get_noise(42)
    (guider,) = cs.CFGGuider().get_guider(ToyModel(0.5), cond(1.0), cond(0.0), 6.0)
    advanced, _ = cs.SamplerCustomAdvanced().sample(noise, guider, chosen, sigmas, latent)
    assert torch.equal(advanced["samples"], out["samples"])


def test_disabled_noise_and_add_noise() -> None:
    latent = {"samples": IMG2IMG}
    (zeros,) = cs.DisableNoise().get_noise()
    assert torch.equal(zeros.generate_noise(latent), torch.zeros_like(IMG2IMG)) and zeros.seed == 0
    (noise,) = cs.RandomNoise().get_noise(3)
    sigmas = torch.tensor([4.0, 1.0, 0.0])
    (noisy,) = cs.AddNoise().add_noise(ToyModel(), noise, sigmas, latent)
    assert torch.allclose(noisy["samples"], IMG2IMG + noise.generate_noise(latent) * 4.0)
    assert cs.AddNoise().add_noise(ToyModel(), noise, torch.tensor([]), latent)[0] is latent


def test_basic_guider_is_cfg_one_on_its_conditioning() -> None:
    (guider,) = cs.BasicGuider().get_guider(ToyModel(0.5), cond(1.0))
    (sampler,) = cs.KSamplerSelect().get_sampler("euler")
    (sigmas,) = cs.BasicScheduler().get_sigmas(ToyModel(), "normal", 4, 1.0)
    (noise,) = cs.RandomNoise().get_noise(42)
    out, _ = cs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, {"samples": IMG2IMG})
    expected = KSampler().sample(
        ToyModel(0.5), 42, 4, 1.0, "euler", "normal", cond(1.0), cond(5.0), {"samples": IMG2IMG}
    )
    assert torch.equal(out["samples"], expected[0]["samples"])


def test_schedulers_and_sigma_tools() -> None:
    ms = ModelSamplingDiscrete()
    (karras,) = cs.KarrasScheduler().get_sigmas(6, float(ms.sigma_max), float(ms.sigma_min), 7.0)
    assert torch.allclose(karras, ksampler_sigmas(ms, "karras", "euler", 6), rtol=1e-6)
    (exp,) = cs.ExponentialScheduler().get_sigmas(5, 10.0, 0.1)
    (poly,) = cs.PolyexponentialScheduler().get_sigmas(5, 10.0, 0.1, 1.0)
    assert torch.allclose(exp, poly, rtol=1e-5) and exp[-1] == 0
    (vp,) = cs.VPScheduler().get_sigmas(4, 19.9, 0.1, 0.001)
    assert vp.shape == (5,)
    (turbo,) = cs.SDTurboScheduler().get_sigmas(ToyModel(), 2, 1.0)
    assert torch.allclose(turbo[:2], ms.sigma(torch.tensor([999, 899])))
    assert cs.BasicScheduler().get_sigmas(ToyModel(), "normal", 4, 0.0)[0].numel() == 0

    sigmas = torch.tensor([5.0, 4.0, 3.0, 2.0, 0.0])
    high, low = cs.SplitSigmas().get_sigmas(sigmas, 2)
    assert high.tolist() == [5.0, 4.0, 3.0] and low.tolist() == [3.0, 2.0, 0.0]
    high, low = cs.SplitSigmasDenoise().get_sigmas(sigmas, 0.5)
    assert high.tolist() == [5.0, 4.0, 3.0] and low.tolist() == [3.0, 2.0, 0.0]
    (flipped,) = cs.FlipSigmas().get_sigmas(sigmas.clone())
    assert flipped.tolist() == pytest.approx([0.0001, 2.0, 3.0, 4.0, 5.0])
    (first,) = cs.SetFirstSigma().set_first_sigma(sigmas, 9.0)
    assert first.tolist() == [9.0, 4.0, 3.0, 2.0, 0.0] and sigmas[0] == 5.0
    assert cs.SamplingPercentToSigma().get_sigma(ToyModel(), 0.0, True)[0] == pytest.approx(
        float(ms.sigma_max)
    )
    assert cs.SamplingPercentToSigma().get_sigma(ToyModel(), 0.0, False)[0] == 999999999.9


def test_option_sampler_nodes_pass_their_options() -> None:
    (sampler,) = cs.SamplerDPMPP_2M_SDE().get_sampler("heun", 0.5, 1.0, "cpu")
    assert sampler.extra_options == {"eta": 0.5, "s_noise": 1.0, "solver_type": "heun"}
    (gpu,) = cs.SamplerDPMPP_SDE().get_sampler(1.0, 1.0, 0.5, "gpu")
    assert gpu.sampler_function.__name__ == "sample_dpmpp_sde_gpu"
    (lms,) = cs.SamplerLMS().get_sampler(3)
    assert lms.extra_options == {"order": 3}
    latent = {"samples": IMG2IMG}
    (sigmas,) = cs.BasicScheduler().get_sigmas(ToyModel(), "karras", 4, 1.0)
    default, _ = cs.SamplerCustom().sample(
        ToyModel(0.5),
        True,
        1,
        6.0,
        cond(1.0),
        cond(0.0),
        cs.KSamplerSelect().get_sampler("euler_ancestral")[0],
        sigmas,
        latent,
    )
    (quiet,) = cs.SamplerEulerAncestral().get_sampler(0.0, 1.0)  # eta 0: plain Euler
    euler, _ = cs.SamplerCustom().sample(
        ToyModel(0.5), True, 1, 6.0, cond(1.0), cond(0.0), quiet, sigmas, latent
    )
    plain, _ = cs.SamplerCustom().sample(
        ToyModel(0.5),
        True,
        1,
        6.0,
        cond(1.0),
        cond(0.0),
        cs.KSamplerSelect().get_sampler("euler")[0],
        sigmas,
        latent,
    )
    assert torch.allclose(euler["samples"], plain["samples"], atol=1e-6)
    assert not torch.allclose(default["samples"], plain["samples"], atol=1e-3)


def _prompt(custom: bool) -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "1": {"class_type": "ToyStackLoader", "inputs": {"bias": 0.0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {
            "class_type": "SaveImage",
            "inputs": {"images": ["6", 0], "filename_prefix": "custom" if custom else "ks"},
        },
    }
    if custom:
        nodes.update(
            {
                "n": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}},
                "g": {
                    "class_type": "CFGGuider",
                    "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 7.0},
                },
                "s": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
                "k": {
                    "class_type": "BasicScheduler",
                    "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 3, "denoise": 1.0},
                },
                "5": {
                    "class_type": "SamplerCustomAdvanced",
                    "inputs": {
                        "noise": ["n", 0],
                        "guider": ["g", 0],
                        "sampler": ["s", 0],
                        "sigmas": ["k", 0],
                        "latent_image": ["4", 0],
                    },
                },
            }
        )
    else:
        nodes["5"] = {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0], "seed": 7, "steps": 3, "cfg": 7.0, "sampler_name": "dpmpp_2m",
                "scheduler": "karras", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0,
            },
        }  # fmt: skip
    return nodes


async def test_sampler_custom_advanced_over_http_equals_ksampler(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", TOY_PLUGIN])
    files = []
    for custom in (True, False):
        frames = await run_prompt(server, _prompt(custom))
        assert not messages(frames, "execution_error"), messages(frames, "execution_error")
        progress = [(d["value"], d["max"]) for d in messages(frames, "progress") if d["node"] == "5"]
        # Per-step updates (the server may merge ones that come within a few ms of each other).
        assert progress[-1] == (3, 3) and all(m == 3 for _, m in progress)
        (image,) = [d["output"]["images"][0] for d in messages(frames, "executed") if d["node"] == "7"]
        with Image.open(server.kernel.settings.output_path / image["filename"]) as png:
            files.append(np.asarray(png.convert("RGB")))
    # The pixels (the files differ in the prompt they embed).
    assert files[0].std() > 0 and np.array_equal(files[0], files[1])
    status, info = await server.json("GET", "/object_info/SamplerCustomAdvanced")
    assert status == 200
    entry = info["SamplerCustomAdvanced"]
    assert entry["python_module"] == "comfy_extras.nodes_custom_sampler"
    assert (
        entry["output_name"] == ["output", "denoised_output"] and entry["category"] == "model/sampling/custom"
    )


def test_more_schedulers_and_sigma_nodes() -> None:
    ms = ModelSamplingDiscrete()
    (beta,) = cs.BetaSamplingScheduler().get_sigmas(ToyModel(), 6, 0.6, 0.6)
    assert torch.equal(beta, ksampler_sigmas(ms, "beta", "euler", 6))
    (laplace,) = cs.LaplaceScheduler().get_sigmas(5, 14.6, 0.03, 0.0, 0.5)
    assert laplace.shape == (6,) and laplace[-1] == 0 and bool((laplace[:-1].diff() <= 0).all())
    assert float(laplace[0]) == pytest.approx(14.6) and float(laplace[-2]) == pytest.approx(0.03)
    (manual,) = cs.ManualSigmas().get_sigmas("14.6, 7;3.5 1 0")
    assert manual.tolist() == pytest.approx([14.6, 7.0, 3.5, 1.0, 0.0])
    sigmas = torch.tensor([10.0, 6.0, 2.0, 0.0])
    (linear,) = cs.ExtendIntermediateSigmas().extend(sigmas, 2, -1.0, 5.0, "linear")
    assert linear.tolist() == pytest.approx([10.0, 8.0, 6.0, 4.0, 2.0, 0.0])
    (three,) = cs.ExtendIntermediateSigmas().extend(sigmas, 3, 8.0, 0.0, "linear")
    assert three.tolist() == pytest.approx([10.0, 6.0, 6 - 4 / 3, 6 - 8 / 3, 2.0, 2 - 2 / 3, 2 - 4 / 3, 0.0])
    (seeds,) = cs.SamplerSEEDS2().get_sampler("phi_2", 0.5, 1.0, 0.5)
    assert seeds.extra_options == {"eta": 0.5, "s_noise": 1.0, "r": 0.5, "solver_type": "phi_2"}


def test_dual_cfg_guider_styles() -> None:
    from plugins.core_nodes.guidance import DualCFGGuider

    x, sigma = torch.zeros(1, 4, 8, 8), torch.tensor([1.0])
    # The toy model predicts bias * mean(embedding): 3, 2 and 0.5 for the three conds.
    (guider,) = cs.DualCFGGuider().get_guider(
        ToyModel(1.0), cond(3.0), cond(2.0), cond(0.5), 2.0, 4.0, "regular"
    )
    assert isinstance(guider, DualCFGGuider)
    guider.prepare(x)
    regular = guider(x, sigma)
    assert torch.allclose(regular, torch.full_like(x, 0.5 + 4.0 * (2.0 - 0.5) + (3.0 - 2.0) * 2.0))
    guider.set_cfg(2.0, 4.0, nested=True)
    nested = guider(x, sigma)
    text = 2.0 + 2.0 * (3.0 - 2.0)
    assert torch.allclose(nested, torch.full_like(x, 0.5 + 4.0 * (text - 0.5)))
    model = ToyModel(1.0)
    single = DualCFGGuider(model)
    single.set_conds(cond(3.0), cond(2.0), cond(0.5))
    single.set_cfg(1.0, 1.0)
    single.prepare(x)
    assert torch.allclose(single(x, sigma), torch.full_like(x, 3.0))
    assert len(model.calls) == 1  # cfg 1 / 1: only the first conditioning is evaluated


def test_no_sigmas_returns_the_latent_unchanged() -> None:
    (empty,) = cs.ManualSigmas().get_sigmas("no numbers here")
    assert empty.numel() == 0
    (chosen,) = cs.KSamplerSelect().get_sampler("euler")
    latent = {"samples": IMG2IMG}
    out, denoised = cs.SamplerCustom().sample(
        ToyModel(), True, 1, 6.0, cond(1.0), cond(0.0), chosen, empty, latent
    )
    assert torch.equal(out["samples"], IMG2IMG) and denoised is out
    (extended,) = cs.ExtendIntermediateSigmas().extend(empty, 2, -1.0, 0.0, "sine")
    assert extended.numel() == 0
