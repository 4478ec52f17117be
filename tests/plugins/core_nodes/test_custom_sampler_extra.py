"""SamplerER_SDE, SamplerSASolver, CFGOverride and DualModelGuider: the samplers against the
reference's golden outputs (toy denoiser), the guiders against CFG computed by hand, and over HTTP."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from plugins.core_nodes.nodes import custom_sampler as cs
from plugins.core_nodes.nodes import custom_sampler_extra as extra
from plugins.core_nodes.sampler_objects import KSAMPLER
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete, ksampler_sigmas
from plugins.core_nodes.sampling.sde import _sa_coefficients
from plugins.core_nodes.sampling.sde_options import simple_order2_coefficients

from .golden import GOLDEN_DIR
from .node_helpers import messages, run_prompt
from .toy_guidance import SIGMAS, cond, guided_offsets, toy_patcher
from .toy_stack import TOY_PLUGIN, ToyModel

GOLDEN = json.loads((GOLDEN_DIR / "samplers.json").read_text())
TENSORS = load_file(GOLDEN_DIR / "samplers.safetensors")
NOISE = TENSORS["noise"]
SEED = GOLDEN["extra_seed"]


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s**2) + 0.1 * torch.sin(x)


def run_golden_case(sampler: KSAMPLER, key: str) -> torch.Tensor:
    """``sampler`` (a node's KSAMPLER) on one golden case, started as the reference starts it."""
    case = GOLDEN["cases"][key]
    ms = ModelSamplingDiscrete()
    sigmas = ksampler_sigmas(ms, case["scheduler"], case["sampler"], case["steps"], case["denoise"])
    latent = torch.zeros_like(NOISE) if case["latent"] == "zeros" else TENSORS["img2img_latent"]
    full = abs(float(sigmas[0]) - float(ms.sigma_max)) <= 1e-5 * float(ms.sigma_max)
    x = ms.noise_scaling(sigmas[0], NOISE, latent, full)
    return sampler.sampler_function(
        toy_denoiser,
        x,
        sigmas,
        extra_args={"seed": SEED},
        callback=None,
        disable=True,
        **sampler.extra_options,
    )


def assert_golden(out: torch.Tensor, key: str) -> None:
    assert (out - TENSORS[key]).abs().max().item() <= 1e-4


# --- samplers against the golden data ----------------------------------------------------------


@pytest.mark.parametrize("key", ["er_sde__normal_8_1.0_zeros", "er_sde__normal_10_0.6_img2img"])
def test_er_sde_node_defaults_are_the_ksampler_er_sde(key: str) -> None:
    (sampler,) = extra.SamplerER_SDE().get_sampler("ER-SDE", 3, 1.0, 1.0)
    assert_golden(run_golden_case(sampler, key), key)


def test_er_sde_ode_first_stage_is_euler() -> None:
    # With the noise scaler x^1 the first-stage ER step is exactly an Euler step (VE: alpha 1).
    (sampler,) = extra.SamplerER_SDE().get_sampler("ODE", 1, 5.0, 1.0)
    assert sampler.extra_options["s_noise"] == 0.0
    assert_golden(run_golden_case(sampler, "euler__karras_6_1.0_zeros"), "euler__karras_6_1.0_zeros")


def test_reverse_time_sde_first_stage_is_euler_ancestral() -> None:
    # At eta 1 the scaler x^2 gives the ancestral step's sigma_down and sigma_up exactly.
    (sampler,) = extra.SamplerER_SDE().get_sampler("Reverse-time SDE", 1, 1.0, 1.0)
    key = "euler_ancestral__normal_8_1.0_zeros"
    assert_golden(run_golden_case(sampler, key), key)
    # eta 0 is the ODE: no noise.
    (ode,) = extra.SamplerER_SDE().get_sampler("Reverse-time SDE", 1, 0.0, 1.0)
    assert ode.extra_options["s_noise"] == 0.0
    assert_golden(run_golden_case(ode, "euler__karras_6_1.0_zeros"), "euler__karras_6_1.0_zeros")


def test_er_sde_refuses_an_unknown_solver() -> None:
    with pytest.raises(ValueError, match="solver_type"):
        extra.SamplerER_SDE().get_sampler("Langevin", 3, 1.0, 1.0)


@pytest.mark.parametrize(
    ("use_pece", "key"),
    [
        (False, "sa_solver__normal_8_1.0_zeros"),
        (False, "sa_solver__normal_10_0.6_img2img"),
        (True, "sa_solver_pece__karras_6_1.0_zeros"),
    ],
)
def test_sa_solver_node_defaults_are_the_ksampler_sa_solver(use_pece: bool, key: str) -> None:
    (sampler,) = extra.SamplerSASolver().get_sampler(ToyModel(), 1.0, 0.2, 0.8, 1.0, 3, 4, use_pece, False)
    assert_golden(run_golden_case(sampler, key), key)


def test_sa_solver_tau_follows_the_percent_range_and_eta() -> None:
    ms = ModelSamplingDiscrete()
    (sampler,) = extra.SamplerSASolver().get_sampler(ToyModel(), 0.5, 0.1, 0.5, 1.0, 2, 2, False, True)
    tau = sampler.extra_options["tau_func"]
    inside = float(ms.percent_to_sigma(0.3))
    assert tau(torch.tensor(inside)) == 0.5
    assert tau(float(ms.percent_to_sigma(0.05))) == 0.0 and tau(float(ms.percent_to_sigma(0.6))) == 0.0
    (ode,) = extra.SamplerSASolver().get_sampler(ToyModel(), 0.0, 0.1, 0.5, 1.0, 2, 2, False, True)
    assert ode.extra_options["tau_func"](inside) == 0.0
    assert sampler.extra_options["simple_order_2"] is True


def test_simple_order_2_weights_are_the_papers_closed_form() -> None:
    sigma_next, tau = torch.tensor(0.7), 0.6
    lambdas = torch.tensor([-1.2, -0.4])
    lam_s, lam_t = torch.tensor(-0.4), torch.tensor(0.3)
    k, h = 1 + tau**2, lam_t - lam_s
    alpha_t = sigma_next * torch.exp(lam_t)
    whole = alpha_t * (1 - torch.exp(-k * h))
    predictor = simple_order2_coefficients(sigma_next, lambdas, lam_s, lam_t, tau, corrector=False)
    older = alpha_t * 0.5 * k * h**2 / (lambdas[0] - lam_s)
    assert torch.allclose(predictor, torch.stack([older, whole - older]))
    corrector = simple_order2_coefficients(sigma_next, lambdas, lam_s, lam_t, tau, corrector=True)
    assert torch.allclose(corrector, torch.stack([whole - alpha_t * 0.5 * k * h, alpha_t * 0.5 * k * h]))
    # The weights of any order sum to the integral of the decay, as the general scheme's do.
    general = _sa_coefficients(sigma_next, lambdas, lam_s, lam_t, tau)
    assert torch.allclose(predictor.sum(), general.sum()) and torch.allclose(corrector.sum(), whole)


def test_simple_order_2_changes_an_order_2_run() -> None:
    key = "sa_solver__normal_8_1.0_zeros"
    runs = []
    for simple in (False, True):
        (sampler,) = extra.SamplerSASolver().get_sampler(ToyModel(), 1.0, 0.2, 0.8, 1.0, 2, 2, False, simple)
        runs.append(run_golden_case(sampler, key))
    assert torch.isfinite(runs[1]).all() and not torch.allclose(runs[0], runs[1])


# --- guiders -------------------------------------------------------------------------------------


def test_cfg_override_replaces_cfg_inside_its_range_and_the_last_override_wins() -> None:
    ms = ModelSamplingDiscrete()
    base = toy_patcher(0.5)
    # cond 1 vs uncond 0 with bias 0.5: the guided offset is 0.5 * cfg.
    (early,) = extra.CFGOverride().patch(base, 2.0, 0.0, 0.5)
    (late,) = extra.CFGOverride().patch(early, 10.0, 0.4, 1.0)
    assert not base.wrappers and early.wrappers is not late.wrappers
    (guider,) = cs.CFGGuider().get_guider(late, cond(1.0), cond(0.0), 6.0)
    # percent 0.5 is sigma 1.62 and 0.4 is 2.28: sigma 2.0 lies in both ranges, where the later
    # (downstream) override wins.
    assert float(ms.percent_to_sigma(0.5)) < 2.0 < float(ms.percent_to_sigma(0.4))
    offsets = guided_offsets(guider, SIGMAS)
    assert [sigma for sigma, _ in offsets] == pytest.approx([14.6, 6.0, 2.0, 0.5])
    assert [o for _, o in offsets] == pytest.approx([0.5 * c for c in (2.0, 2.0, 10.0, 10.0)], abs=1e-5)
    assert guider.cfg == 6.0  # restored after each step
    # The unpatched MODEL keeps its cfg everywhere.
    (plain,) = cs.CFGGuider().get_guider(base, cond(1.0), cond(0.0), 6.0)
    assert all(o == pytest.approx(3.0, abs=1e-5) for _, o in guided_offsets(plain, SIGMAS))


def test_cfg_override_at_one_skips_the_unconditional_pass() -> None:
    base = toy_patcher(0.5)
    (patched,) = extra.CFGOverride().patch(base, 1.0, 0.0, 1.0)
    (guider,) = cs.CFGGuider().get_guider(patched, cond(1.0), cond(0.0), 6.0)
    offsets = guided_offsets(guider, SIGMAS)
    assert all(o == pytest.approx(0.5, abs=1e-5) for _, o in offsets)
    assert len(base.model.sigmas_seen) == len(SIGMAS) - 1  # one model call per step


def test_dual_model_guider_runs_the_negative_on_its_own_model() -> None:
    positive_model, negative_model = toy_patcher(1.0), toy_patcher(3.0)
    (guider,) = extra.DualModelGuider().get_guider(positive_model, cond(2.0), 4.0, negative_model, cond(0.5))
    # cond: 1.0 * 2.0; uncond: 3.0 * 0.5 on the other network.
    expected = 1.5 + 4.0 * (2.0 - 1.5)
    assert all(o == pytest.approx(expected, abs=1e-5) for _, o in guided_offsets(guider, SIGMAS))
    assert len(positive_model.model.sigmas_seen) == len(negative_model.model.sigmas_seen) == len(SIGMAS) - 1


def test_dual_model_guider_without_a_second_model_is_cfg_guider() -> None:
    model = toy_patcher(1.0)
    (dual,) = extra.DualModelGuider().get_guider(model, cond(2.0), 4.0, None, cond(0.5))
    (plain,) = cs.CFGGuider().get_guider(toy_patcher(1.0), cond(2.0), cond(0.5), 4.0)
    ours = [o for _, o in guided_offsets(dual, SIGMAS)]
    assert ours == [o for _, o in guided_offsets(plain, SIGMAS)]
    assert ours == pytest.approx([0.5 + 4.0 * (2.0 - 0.5)] * 4, abs=1e-5)


def test_dual_model_guider_without_negative_uses_a_text_free_uncond() -> None:
    (guider,) = extra.DualModelGuider().get_guider(toy_patcher(1.0), cond(2.0), 3.0, toy_patcher(5.0), None)
    # The unconditional pass sees zeroed text: its bias term is 0 whatever the model's bias.
    assert all(o == pytest.approx(3.0 * 2.0, abs=1e-5) for _, o in guided_offsets(guider, SIGMAS))
    zeroed = extra.zeroed_conditioning(cond(2.0))
    assert torch.equal(zeroed[0][0], torch.zeros(1, 77, 8))
    assert torch.equal(zeroed[0][1]["pooled_output"], torch.zeros(1, 8))


# --- through the server ----------------------------------------------------------------------------


def _prompt(sampler: dict[str, Any]) -> dict[str, Any]:
    return {
        "1": {"class_type": "ToyStackLoader", "inputs": {"bias": 0.3}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "n": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "g": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 5.0},
        },
        "s": sampler,
        "k": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 4, "denoise": 1.0},
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
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "sde"}},
    }


async def test_sampler_nodes_over_http_equal_the_ksampler_names(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", TOY_PLUGIN])
    samplers = [
        {
            "class_type": "SamplerER_SDE",
            "inputs": {"solver_type": "ER-SDE", "max_stage": 3, "eta": 1.0, "s_noise": 1.0},
        },
        {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "er_sde"}},
        {
            "class_type": "SamplerSASolver",
            "inputs": {
                "model": ["1", 0],
                "eta": 1.0,
                "sde_start_percent": 0.2,
                "sde_end_percent": 0.8,
                "s_noise": 1.0,
                "predictor_order": 3,
                "corrector_order": 4,
                "use_pece": False,
                "simple_order_2": False,
            },
        },  # fmt: skip
        {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "sa_solver"}},
    ]
    pixels = []
    for sampler in samplers:
        frames = await run_prompt(server, _prompt(sampler))
        assert not messages(frames, "execution_error"), messages(frames, "execution_error")
        (image,) = [d["output"]["images"][0] for d in messages(frames, "executed") if d["node"] == "7"]
        with Image.open(server.kernel.settings.output_path / image["filename"]) as png:
            pixels.append(np.asarray(png.convert("RGB")))
    assert pixels[0].std() > 0 and np.array_equal(pixels[0], pixels[1])
    assert np.array_equal(pixels[2], pixels[3]) and not np.array_equal(pixels[0], pixels[2])


async def test_bad_solver_type_is_a_validation_error(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", TOY_PLUGIN])
    prompt = _prompt(
        {
            "class_type": "SamplerER_SDE",
            "inputs": {"solver_type": "SDE", "max_stage": 3, "eta": 1.0, "s_noise": 1.0},
        }
    )
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400
    assert body["node_errors"]["s"]["errors"][0]["type"] == "value_not_in_list"
