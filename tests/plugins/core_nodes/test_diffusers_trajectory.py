"""euler and dpmpp_2m trajectories against diffusers' schedulers on the same tiny SD1 model.

Ours: the tiny checkpoint through ``adapters.load_checkpoint`` (our UNet, discrete model sampling,
CFG in the guider), sampled with the ``simple`` scheduler. diffusers: ``UNet2DConditionModel``
holding the same weights (converted by diffusers' own ``convert_ldm_unet_checkpoint``), driven
step by step by ``EulerDiscreteScheduler`` and ``DPMSolverMultistepScheduler`` (solver_order=2,
``dpmsolver++``), both with ``timestep_spacing="trailing"``, whose integer timesteps are exactly
the ``simple`` schedule's, and CFG on the noise prediction. Both start from the same latent.

Euler works in the variance-exploding space ``x`` like ours; DPM-Solver keeps the
variance-preserving ``x / sqrt(1 + sigma^2)``, so our states are converted before comparing.
Tolerance (fp32): every state within 2e-5 of the reference, relative to the state's largest
magnitude (measured: at most 2.3e-6). It covers the two UNets' kernels and diffusers' float32
noise table against our float64-derived one, accumulated over the steps.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from plugins.core_nodes.guidance import Guider
from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.sampling.noise import prepare_noise
from plugins.core_nodes.sampling.samplers import sample
from plugins.core_nodes.sampling.schedules import ksampler_sigmas

from . import tiny_pipeline, tiny_sd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = 8  # divides 1000, so "simple" and "trailing" pick the same integer timesteps
CFG = 5.0
SEED = 42
REL_TOL = 2e-5
SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    path = tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("traj") / "sd1.safetensors", "sd1")
    model, clip, _ = adapters.load_checkpoint(path)
    assert clip is not None
    config = {**tiny_sd.diffusers_unet_config("sd1"), "cross_attention_dim": tiny_pipeline.CLIP_WIDTH}
    sd = {f"model.diffusion_model.{k}": v for k, v in model.unet.state_dict().items()}
    reference = UNet2DConditionModel(**config)
    reference.load_state_dict(convert_ldm_unet_checkpoint(sd, config), strict=True)
    cond, _ = clip.encode("a lighthouse on a cliff, stormy sea")
    uncond, _ = clip.encode("blurry")
    latent = torch.zeros(1, 4, 8, 8)
    return {
        "model": model,
        "reference": reference.eval(),
        "cond": cond,
        "uncond": uncond,
        "latent": latent,
        "noise": prepare_noise(latent, SEED),
    }


def _ours(setup: dict[str, Any], sampler: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    model = setup["model"]
    sigmas = ksampler_sigmas(model.model_sampling, "simple", sampler, STEPS, 1.0)
    positive, negative = [[setup["cond"], {}]], [[setup["uncond"], {}]]
    guider = Guider(model, positive, negative, CFG, setup["latent"])
    states: list[torch.Tensor] = []
    final = sample(
        guider,
        setup["noise"],
        sigmas,
        sampler,
        SEED,
        setup["latent"],
        callback=lambda i, denoised, x, total: states.append(x.clone()),
        model_sampling=model.model_sampling,
    )
    return [*states, final], sigmas


def _theirs(
    setup: dict[str, Any], scheduler: Any, start: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    unet = setup["reference"]
    scheduler.set_timesteps(STEPS)
    context = torch.cat([setup["uncond"], setup["cond"]])
    latents = start
    states = [latents]
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps_uncond, eps_cond = unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
            eps = eps_uncond + CFG * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
            states.append(latents)
    return states, scheduler.sigmas


def _assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert len(ours) == len(theirs) == STEPS + 1
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        scale = b.abs().max().item()
        assert scale > 1e-2
        err = (a - b).abs().max().item() / scale
        assert err <= REL_TOL, f"step {step}: relative error {err:.2e}"


def test_euler_matches_euler_discrete_scheduler(setup: dict[str, Any]) -> None:
    from diffusers import EulerDiscreteScheduler

    ours, sigmas = _ours(setup, "euler")
    scheduler = EulerDiscreteScheduler(**SCHEDULE, timestep_spacing="trailing")
    theirs, their_sigmas = _theirs(setup, scheduler, ours[0])
    torch.testing.assert_close(sigmas, their_sigmas.float(), rtol=1e-5, atol=0)
    _assert_close(ours, theirs)
    # The KSampler plumbing (noise from the seed, latent format scaling) lands on the same latent.
    out = run_ksampler(
        setup["model"], SEED, STEPS, CFG, "euler", "simple",
        [[setup["cond"], {}]], [[setup["uncond"], {}]], {"samples": setup["latent"]},
    )["samples"]  # fmt: skip
    fmt = setup["model"].latent_format
    _assert_close([*ours[:-1], fmt.process_in(out)], theirs)


def _dpmpp_2m_scheduler() -> Any:
    """diffusers' DPM-Solver++ (2M), on the same schedule as ours."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        **SCHEDULE,
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
    )


def _variance_preserving(ours: list[torch.Tensor], sigmas: torch.Tensor) -> list[torch.Tensor]:
    # diffusers' DPM-Solver state is the variance-preserving latent x / sqrt(1 + sigma^2).
    return [x / (1 + s**2) ** 0.5 for x, s in zip(ours, sigmas, strict=True)]


def test_dpmpp_2m_matches_dpm_solver_multistep(setup: dict[str, Any]) -> None:
    ours, sigmas = _ours(setup, "dpmpp_2m")
    vp = _variance_preserving(ours, sigmas)
    theirs, their_sigmas = _theirs(setup, _dpmpp_2m_scheduler(), vp[0])
    torch.testing.assert_close(sigmas, their_sigmas.float(), rtol=1e-5, atol=0)
    _assert_close(vp, theirs)


def test_the_comparison_can_fail(setup: dict[str, Any]) -> None:
    """Euler's trajectory is not DPM-Solver's: the tolerance separates samplers."""
    ours, sigmas = _ours(setup, "euler")
    vp = _variance_preserving(ours, sigmas)
    theirs, _ = _theirs(setup, _dpmpp_2m_scheduler(), vp[0])
    with pytest.raises(AssertionError, match="relative error"):
        _assert_close(vp, theirs)


def test_checkpoint_written_for_the_trajectories_is_sd1(setup: dict[str, Any]) -> None:
    assert setup["model"].family.name == "sd1" and setup["model"].family.prediction == "eps"
