"""The model-sampling nodes, ModelNoiseScale, ModelComputeDtype and TorchCompileModel.

Each ModelSampling* node's installed sampling is checked against the sigma table its formula
implies (written out here), and its prediction reading against the published preconditioning;
the nodes then run through the real server on the tiny SD1 checkpoint, each latent compared
with the same MODEL patched and sampled in-process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.extension import WrappersMP
from plugins.core_nodes.nodes import model_advanced as ma
from plugins.core_nodes.sampling import model_sampling as ms
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete as CoreSchedule

from .node_helpers import messages, run_ok, run_prompt, saved_latents, start_with_models
from .test_workflows_e2e import checkpoints  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd1(checkpoints: dict[str, Path]) -> Any:  # noqa: F811
    model, clip, vae = adapters.load_checkpoint(checkpoints["sd1"])
    return model, clip, vae


def _installed(patched: Any, original: Any) -> Any:
    """The model sampling a node installed (on a clone: the original MODEL keeps its own)."""
    assert patched is not original
    assert "model_sampling" not in original.object_patches
    return patched.object_patches["model_sampling"]


# --- flow shifts: SD3, AuraFlow, Flux -------------------------------------------------------------


@pytest.mark.parametrize("shift", [3.0, 1.0, 6.5])
def test_sd3_sigmas_are_the_shifted_flow_times(sd1: Any, shift: float) -> None:
    model = sd1[0]
    sampling = _installed(ma.ModelSamplingSD3().patch(model, shift)[0], model)
    t = torch.arange(1, 1001, dtype=torch.float32) / 1000
    # sigma(t) = shift t / (1 + (shift - 1) t)
    torch.testing.assert_close(sampling.sigmas, shift * t / (1 + (shift - 1) * t))
    assert float(sampling.sigma_max) == pytest.approx(1.0)
    sigma = torch.tensor([0.25, 0.8])
    torch.testing.assert_close(sampling.timestep(sigma), sigma * 1000)  # SD3 sees 0..1000
    assert sampling.percent_to_sigma(0.4) == pytest.approx(shift * 0.6 / (1 + (shift - 1) * 0.6))
    assert sampling.percent_to_sigma(0.0) == 1.0 and sampling.percent_to_sigma(1.0) == 0.0
    # Rectified flow: x_sigma = sigma * noise + (1 - sigma) * x0, the network predicts noise - x0.
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    xt = sampling.noise_scaling(sigma, noise, x0)
    s = sigma.view(2, 1, 1, 1)
    torch.testing.assert_close(xt, s * noise + (1 - s) * x0)
    torch.testing.assert_close(sampling.calculate_denoised(sigma, noise - x0, xt), x0)
    assert torch.equal(sampling.calculate_input(sigma, xt), xt)


def test_auraflow_uses_the_flow_time_as_its_timestep(sd1: Any) -> None:
    model = sd1[0]
    (patched,) = ma.ModelSamplingAuraFlow().patch_aura(model, 1.73)
    sampling = _installed(patched, model)
    t = torch.arange(1, 1001, dtype=torch.float32) / 1000
    torch.testing.assert_close(sampling.sigmas, 1.73 * t / (1 + 0.73 * t))
    sigma = torch.tensor([0.3])
    torch.testing.assert_close(sampling.timestep(sigma), sigma)
    assert sampling.multiplier == 1.0


@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (512, 512), (768, 1344)])
def test_flux_shift_grows_with_the_image_and_sets_the_sigmas(sd1: Any, width: int, height: int) -> None:
    model = sd1[0]
    (patched,) = ma.ModelSamplingFlux().patch(model, 1.15, 0.5, width, height)
    sampling = _installed(patched, model)
    # mu = base + (max - base) * (patches - 256) / (4096 - 256), patches = w * h / (16 * 16)
    patches = width * height / 256
    mu = 0.5 + (1.15 - 0.5) * (patches - 256) / (4096 - 256)
    assert sampling.shift == pytest.approx(mu)
    if (width, height) == (1024, 1024):
        assert mu == pytest.approx(1.15)
    t = torch.arange(1, 10001, dtype=torch.float32) / 10000
    # sigma(t) = e^mu / (e^mu + 1/t - 1)
    torch.testing.assert_close(sampling.sigmas, math.exp(mu) / (math.exp(mu) + (1 / t - 1)))
    sigma = torch.tensor([0.6])
    assert torch.equal(sampling.timestep(sigma), sigma)
    assert sampling.percent_to_sigma(0.5) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1.0))


# --- continuous EDM / V ---------------------------------------------------------------------------


def _edm_denoised(x: torch.Tensor, out: torch.Tensor, s: torch.Tensor, sd: float, sign: float) -> torch.Tensor:
    """Karras et al. (2022) preconditioning: D = c_skip x + c_out F, c_skip = sd^2 / (s^2 + sd^2),
    c_out = s sd / sqrt(s^2 + sd^2) (sign -1: the v-prediction reading)."""
    s = s.view(-1, 1, 1, 1)
    return x * sd**2 / (s**2 + sd**2) + sign * out * s * sd / (s**2 + sd**2) ** 0.5


@pytest.mark.parametrize(
    ("sampling", "sigma_data", "sign"),
    [("edm", 0.5, 1.0), ("v_prediction", 1.0, -1.0), ("edm_playground_v2.5", 0.5, 1.0), ("eps", 1.0, None)],
)
def test_continuous_edm_table_and_preconditioning(
    sd1: Any, sampling: str, sigma_data: float, sign: float | None
) -> None:
    model = sd1[0]
    (patched,) = ma.ModelSamplingContinuousEDM().patch(model, sampling, 80.0, 0.002)
    installed = _installed(patched, model)
    # sigmas = exp(linspace(log sigma_min, log sigma_max, 1000))
    expected = torch.linspace(math.log(0.002), math.log(80.0), 1000).exp()
    torch.testing.assert_close(installed.sigmas, expected)
    assert installed.sigma_data == sigma_data
    sigma = torch.tensor([0.5, 20.0])
    torch.testing.assert_close(installed.timestep(sigma), 0.25 * sigma.log())
    torch.testing.assert_close(installed.sigma(installed.timestep(sigma)), sigma)
    # percent p -> exp(log min + (1 - p) (log max - log min))
    assert installed.percent_to_sigma(0.25) == pytest.approx(
        math.exp(math.log(0.002) + 0.75 * (math.log(80.0) - math.log(0.002)))
    )
    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    torch.testing.assert_close(
        installed.calculate_input(sigma, x), x / (sigma.view(-1, 1, 1, 1) ** 2 + sigma_data**2) ** 0.5
    )
    got = installed.calculate_denoised(sigma, out, x)
    if sign is None:
        torch.testing.assert_close(got, x - out * sigma.view(-1, 1, 1, 1))
    else:
        torch.testing.assert_close(got, _edm_denoised(x, out, sigma, sigma_data, sign))
    if sampling == "edm_playground_v2.5":
        fmt = patched.object_patches["latent_format"]
        mean = torch.tensor([-1.6574, 1.886, -1.383, 2.5155]).view(1, 4, 1, 1)
        std = torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).view(1, 4, 1, 1)
        torch.testing.assert_close(fmt.process_in(x), (x - mean) * 0.5 / std)
        torch.testing.assert_close(fmt.process_out(fmt.process_in(x)), x)
    else:
        assert "latent_format" not in patched.object_patches


def test_cosmos_rflow_reads_sigma_as_flow_time(sd1: Any) -> None:
    model = sd1[0]
    installed = _installed(ma.ModelSamplingContinuousEDM().patch(model, "cosmos_rflow", 80.0, 0.002)[0], model)
    sigma = torch.tensor([0.5, 4.0])
    t = sigma / (sigma + 1)
    torch.testing.assert_close(installed.timestep(sigma), t)
    torch.testing.assert_close(installed.sigma(t), sigma)
    # Times at or past the top of the table give sigma_max.
    assert float(installed.sigma(torch.tensor(0.9999))) == pytest.approx(80.0)
    g = torch.Generator().manual_seed(2)
    x, out = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    tv = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(installed.calculate_input(sigma, x), x * (1 - tv))
    torch.testing.assert_close(installed.calculate_denoised(sigma, out, x), x * (1 - tv) - out * tv)


def test_continuous_v_uses_the_arctan_timestep(sd1: Any) -> None:
    model = sd1[0]
    installed = _installed(ma.ModelSamplingContinuousV().patch(model, "v_prediction", 500.0, 0.03)[0], model)
    torch.testing.assert_close(installed.sigmas, torch.linspace(math.log(0.03), math.log(500.0), 1000).exp())
    sigma = torch.tensor([0.1, 3.0, 400.0])
    # t = atan(sigma) * 2 / pi, in [0, 1)
    torch.testing.assert_close(installed.timestep(sigma), torch.atan(sigma) * 2 / math.pi)
    torch.testing.assert_close(installed.sigma(installed.timestep(sigma)), sigma, rtol=1e-4, atol=1e-4)
    x, out = torch.ones(3, 4, 1, 1), torch.full((3, 4, 1, 1), 0.5)
    torch.testing.assert_close(installed.calculate_denoised(sigma, out, x), _edm_denoised(x, out, sigma, 1.0, -1.0))


@pytest.mark.parametrize("node", ["edm", "v"])
def test_zero_sigma_bounds_are_refused(sd1: Any, node: str) -> None:
    with pytest.raises(ValueError, match="above 0"):
        if node == "edm":
            ma.ModelSamplingContinuousEDM().patch(sd1[0], "edm", 120.0, 0.0)
        else:
            ma.ModelSamplingContinuousV().patch(sd1[0], "v_prediction", 0.0, 0.03)


# --- Stable Cascade -------------------------------------------------------------------------------


def _cascade_sigma(t: float, shift: float, s: float = 0.008) -> float:
    """abar(t) = cos^2((t + s) / (1 + s) pi/2) / cos^2(s / (1 + s) pi/2); its log-SNR moved by
    -2 log(shift); clamped to [1e-4, 0.9999]; sigma = sqrt((1 - abar) / abar)."""
    abar = math.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    if shift != 1.0:
        log_snr = math.log(abar / (1 - abar)) - 2 * math.log(shift)
        abar = 1 / (1 + math.exp(-log_snr))
    abar = min(max(abar, 1e-4), 0.9999)
    return math.sqrt((1 - abar) / abar)


@pytest.mark.parametrize("shift", [2.0, 1.0])
def test_stable_cascade_cosine_schedule(sd1: Any, shift: float) -> None:
    model = sd1[0]
    installed = _installed(ma.ModelSamplingStableCascade().patch(model, shift)[0], model)
    assert len(installed.sigmas) == 10000
    for index in (0, 99, 4999, 9000, 9999):
        t = (index + 1) / 10000
        assert float(installed.sigmas[index]) == pytest.approx(_cascade_sigma(t, shift), rel=1e-4)
    assert installed.percent_to_sigma(0.3) == pytest.approx(_cascade_sigma(0.7, shift), rel=1e-4)
    if shift == 1.0:  # without a shift, timestep inverts sigma
        t = torch.tensor([0.2, 0.5, 0.8])
        torch.testing.assert_close(installed.timestep(installed.sigma(t)), t, rtol=1e-4, atol=1e-4)
    # EPS reading on top.
    x, out = torch.ones(1, 4, 1, 1), torch.full((1, 4, 1, 1), 0.5)
    torch.testing.assert_close(installed.calculate_denoised(torch.tensor([2.0]), out, x), x - out * 2.0)


# --- ModelNoiseScale / ModelComputeDtype ----------------------------------------------------------


def test_noise_scale_rebuilds_the_flow_sampling_and_scales_the_noise(sd1: Any) -> None:
    model = sd1[0]
    (sd3,) = ma.ModelSamplingSD3().patch(model, 3.0)
    (scaled,) = ma.ModelNoiseScale().patch(sd3, 8.0)
    before, after = sd3.object_patches["model_sampling"], scaled.object_patches["model_sampling"]
    assert type(after) is type(before) and after is not before
    assert (after.shift, after.multiplier, after.noise_scale) == (3.0, 1000, 8.0)
    assert before.noise_scale == 1.0 and torch.equal(after.sigmas, before.sigmas)
    sigma, noise, x0 = torch.tensor([0.4]), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    # x_sigma = sigma * (8 * noise) + (1 - sigma) * x0
    torch.testing.assert_close(after.noise_scaling(sigma, noise, x0), 0.4 * 8.0 * noise + 0.6 * x0)
    # A new shift keeps the scale.
    (reshifted,) = ma.ModelSamplingSD3().patch(scaled, 5.0)
    assert reshifted.object_patches["model_sampling"].noise_scale == 8.0
    with pytest.raises(ValueError, match="flow model sampling"):
        ma.ModelNoiseScale().patch(model, 2.0)


@pytest.mark.parametrize(("name", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16), ("default", None)])
def test_compute_dtype_is_the_manual_cast_object_patch(sd1: Any, name: str, dtype: torch.dtype | None) -> None:
    model = sd1[0]
    (patched,) = ma.ModelComputeDtype().patch(model, name)
    assert patched.get_model_object("manual_cast_dtype") is dtype
    assert "manual_cast_dtype" not in model.object_patches
    with pytest.raises(ValueError, match="unknown dtype"):
        ma.compute_dtype("fp8")


# --- TorchCompileModel ----------------------------------------------------------------------------


def test_torch_compile_model_sets_the_wrapper_and_keeps_the_kwargs(sd1: Any) -> None:
    model = sd1[0]
    (patched,) = ma.TorchCompileModel().patch(model, "inductor")
    assert patched.model_options[ma.TORCH_COMPILE_KWARGS]["backend"] == "inductor"
    assert len(patched.get_wrappers(WrappersMP.DIFFUSION_MODEL, ma.COMPILE_KEY)) == 1
    assert not model.get_wrappers(WrappersMP.DIFFUSION_MODEL, ma.COMPILE_KEY)
    # Again on the compiled MODEL: still one wrapper (the old one is replaced).
    (again,) = ma.TorchCompileModel.execute(patched, "cudagraphs")
    assert len(again.get_wrappers(WrappersMP.DIFFUSION_MODEL, ma.COMPILE_KEY)) == 1
    assert again.model_options[ma.TORCH_COMPILE_KWARGS]["backend"] == "cudagraphs"


def test_compiled_network_runs_and_gives_the_plain_result(sd1: Any) -> None:
    """A recording backend (dynamo hands it each captured graph) proves the forward went through
    torch.compile; the samples equal the plain run's, weight patches included."""
    model, clip = sd1[0], sd1[1]
    graphs: list[Any] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    compiled = model.clone()
    ma.set_torch_compile_wrapper(compiled, recording_backend)
    cond, pooled = clip.encode("a lamp")
    positive, negative = [[cond, {"pooled_output": pooled}]], [[cond * 0, {"pooled_output": pooled}]]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    plain = run_ksampler(model, 3, 2, 5.0, "euler", "normal", positive, negative, latent)["samples"]
    got = run_ksampler(compiled, 3, 2, 5.0, "euler", "normal", positive, negative, latent)["samples"]
    assert graphs, "the forward never reached the compile backend"
    torch.testing.assert_close(got, plain)
    # A weight patch on a clone of the compiled MODEL reaches the compiled forward.
    name = "diffusion_model.out.2.weight"
    weight = model.get_model_object(name)
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(4)) * 0.5
    patched_plain, patched_compiled = model.clone(), compiled.clone()
    for m in (patched_plain, patched_compiled):
        m.add_patches({name: (delta,)}, 1.0)
    expected = run_ksampler(patched_plain, 3, 2, 5.0, "euler", "normal", positive, negative, latent)["samples"]
    assert not torch.allclose(expected, plain)
    got = run_ksampler(patched_compiled, 3, 2, 5.0, "euler", "normal", positive, negative, latent)["samples"]
    torch.testing.assert_close(got, expected)


# --- the shim is the same implementation ----------------------------------------------------------


def test_comfy_model_sampling_reexports_these_classes() -> None:
    import importlib

    shim = importlib.import_module("plugins.comfy_compat.shims.comfy.model_sampling")
    for name in ("ModelSamplingDiscreteFlow", "CONST", "StableCascadeSampling", "ModelSamplingContinuousV"):
        assert getattr(shim, name) is getattr(ms, name)
    # The discrete schedule + EPS is the core SD1 schedule, bit for bit.
    eps = ms.model_sampling_class(ms.ModelSamplingDiscrete, ms.EPS)()
    assert torch.equal(eps.sigmas, CoreSchedule().sigmas)
    assert ms.model_sampling_class(ms.ModelSamplingFlux, ms.CONST) is ms.model_sampling_class(
        ms.ModelSamplingFlux, ms.CONST
    )


# --- through the server ---------------------------------------------------------------------------

SIZE = 64
_PATCHES: dict[str, tuple[str, dict[str, Any]]] = {
    "sd3": ("ModelSamplingSD3", {"shift": 3.0}),
    "aura": ("ModelSamplingAuraFlow", {"shift": 1.73}),
    "flux": ("ModelSamplingFlux", {"max_shift": 1.15, "base_shift": 0.5, "width": 512, "height": 512}),
    "cascade": ("ModelSamplingStableCascade", {"shift": 2.0}),
    "edm": ("ModelSamplingContinuousEDM", {"sampling": "edm", "sigma_max": 80.0, "sigma_min": 0.002}),
    "vcont": ("ModelSamplingContinuousV", {"sampling": "v_prediction", "sigma_max": 500.0, "sigma_min": 0.03}),
    "dtype": ("ModelComputeDtype", {"dtype": "default"}),
}


def _prompt(ckpt: str) -> dict[str, Any]:
    p: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red kite", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "noise_scale": {"class_type": "ModelNoiseScale", "inputs": {"model": ["sd3", 0], "noise_scale": 2.0}},
    }
    for key, (cls, inputs) in _PATCHES.items():
        p[key] = {"class_type": cls, "inputs": {"model": ["ckpt", 0], **inputs}}
    for key in ("plain", *_PATCHES, "noise_scale"):
        model = "ckpt" if key == "plain" else key
        p[f"k_{key}"] = {
            "class_type": "KSampler",
            "inputs": {
                "seed": 11, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
                "denoise": 1.0, "model": [model, 0], "positive": ["pos", 0], "negative": ["neg", 0],
                "latent_image": ["empty", 0],
            },
        }  # fmt: skip
        p[f"save_{key}"] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [f"k_{key}", 0], "filename_prefix": f"latents/{key}"},
        }
    return p


async def test_model_sampling_nodes_through_ksampler(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path], sd1: Any  # noqa: F811
) -> None:
    server = await start_with_models(comfy_server, tmp_path, checkpoints=checkpoints["sd1"])
    latents = saved_latents(server, await run_ok(server, _prompt(checkpoints["sd1"].name)))
    assert len(latents) == len(_PATCHES) + 2
    plain = latents["plain"]
    # The neutral compute dtype is the plain run, bit for bit; every schedule changes the result.
    assert torch.equal(latents["dtype"], plain)
    for key in (*_PATCHES, "noise_scale"):
        assert torch.isfinite(latents[key]).all(), key
        if key != "dtype":
            assert not torch.allclose(latents[key], plain, atol=1e-4), key
    # Each equals the same patch sampled in-process (SaveLatent stores the VAE-space latent).
    model, clip = sd1[0], sd1[1]
    pos, pos_pooled = clip.encode("a red kite")
    neg, neg_pooled = clip.encode("blurry")
    positive, negative = [[pos, {"pooled_output": pos_pooled}]], [[neg, {"pooled_output": neg_pooled}]]
    empty = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    nodes = {
        "sd3": lambda: ma.ModelSamplingSD3().patch(model, 3.0)[0],
        "edm": lambda: ma.ModelSamplingContinuousEDM().patch(model, "edm", 80.0, 0.002)[0],
        "cascade": lambda: ma.ModelSamplingStableCascade().patch(model, 2.0)[0],
        "noise_scale": lambda: ma.ModelNoiseScale().patch(ma.ModelSamplingSD3().patch(model, 3.0)[0], 2.0)[0],
    }
    for key, build in nodes.items():
        expected = run_ksampler(build(), 11, 3, 5.0, "euler", "simple", positive, negative, empty)["samples"]
        torch.testing.assert_close(latents[key], expected, msg=key)


async def test_bad_model_sampling_inputs_are_node_errors(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]  # noqa: F811
) -> None:
    server = await start_with_models(comfy_server, tmp_path, checkpoints=checkpoints["sd1"])
    prompt = _prompt(checkpoints["sd1"].name)
    # ModelNoiseScale straight on the SD1 (discrete) schedule.
    prompt["noise_scale"]["inputs"]["model"] = ["ckpt", 0]
    frames = await run_prompt(server, prompt)
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "ModelNoiseScale" and "flow model sampling" in error["exception_message"]
    prompt = _prompt(checkpoints["sd1"].name)
    prompt["edm"]["inputs"]["sigma_min"] = 0.0
    frames = await run_prompt(server, prompt)
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "ModelSamplingContinuousEDM" and "above 0" in error["exception_message"]
