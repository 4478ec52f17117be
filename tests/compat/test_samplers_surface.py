"""``comfy.samplers``, ``comfy.sample``, ``comfy.sampler_helpers`` and ``comfy.k_diffusion.sampling``.

End to end, ``packs/cfg_pack`` hooks the sampler the way packs do (a cloned MODEL's
``sampler_cfg_function`` / ``sampler_post_cfg_function`` / ``model_function_wrapper``, and a
replaced ``comfy.samplers.sampling_function``) and the core KSampler node, run through the real
server on a tiny random-weight SD1 checkpoint, must honour each hook with the reference's
semantics. The other tests call the shims directly, as a pack's code would.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.sampling.noise import prepare_noise
from plugins.core_nodes.sampling.samplers import sample as core_sample
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete, ksampler_sigmas
from tests.compat.helpers import PACKS
from tests.plugins.core_nodes import tiny_pipeline
from tests.plugins.core_nodes.golden import GOLDEN_DIR
from tests.plugins.core_nodes.node_helpers import messages, run_prompt

PLUGINS = ["comfy_compat", "models", "core_nodes"]
STEPS = 3
SIZE = 64
GOLDEN = json.loads((GOLDEN_DIR / "samplers.json").read_text())
TENSORS = load_file(str(GOLDEN_DIR / "samplers.safetensors"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_sd1.safetensors", "sd1")


@pytest.fixture
async def server(comfy_server: Any, tmp_path: Path, checkpoint: Path) -> Any:
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])


@pytest.fixture
async def shims(comfy_server: Any) -> Any:
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])


def _shim(name: str) -> Any:
    return importlib.import_module(name)


# --- end to end through the server ------------------------------------------------------------


def graph(
    ckpt: str, patches: list[tuple[str, dict[str, Any]]], cfg: float, sampler: str = "euler"
) -> dict[str, Any]:
    """Checkpoint -> the pack's MODEL patches in order -> KSampler -> saved latent."""
    nodes: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1},
        },
    }
    model: list[Any] = ["ckpt", 0]
    for i, (class_type, inputs) in enumerate(patches):
        nodes[f"patch{i}"] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [f"patch{i}", 0]
    nodes["ks"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "positive": ["pos", 0],
            "negative": ["neg", 0],
            "latent_image": ["empty", 0],
            "seed": 5,
            "steps": STEPS,
            "cfg": cfg,
            "sampler_name": sampler,
            "scheduler": "normal",
            "denoise": 1.0,
        },
    }
    nodes["save"] = {
        "class_type": "ModelPackSaveLatent",
        "inputs": {"samples": ["ks", 0], "filename_prefix": "s"},
    }
    return nodes


async def run(server: Any, prompt: dict[str, Any]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The saved latent of ``prompt`` and its ``executed`` messages."""
    frames = await run_prompt(server, prompt)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    executed = messages(frames, "executed")
    (output,) = [d["output"] for d in executed if d["node"] == "save"]
    (saved,) = output["latents"]
    path = Path(server.kernel.settings.output_path) / saved["subfolder"] / saved["filename"]
    return load_file(str(path))["samples"], executed


async def test_sampler_cfg_function_is_applied_on_noise_predictions(server: Any, checkpoint: Path) -> None:
    ckpt = checkpoint.name
    scaled, _ = await run(server, graph(ckpt, [("CfgPackScaledCfg", {"scale": 5.0})], cfg=2.0))
    plain5, _ = await run(server, graph(ckpt, [], cfg=5.0))
    plain2, _ = await run(server, graph(ckpt, [], cfg=2.0))
    # The function replaced KSampler's cfg 2 by plain CFG at 5 (in x - denoised form, so equal
    # up to float rounding, not bit for bit).
    assert torch.allclose(scaled, plain5, atol=1e-4, rtol=1e-4), (scaled - plain5).abs().max()
    assert not torch.allclose(scaled, plain2, atol=1e-3)


async def test_post_cfg_function_result_is_what_the_sampler_steps_with(server: Any, checkpoint: Path) -> None:
    out, _ = await run(server, graph(checkpoint.name, [("CfgPackZeroPostCfg", {})], cfg=7.0))
    # Denoised is 0 at every step, so Euler only rescales the initial noise: x *= s_next / s in
    # k-diffusion's form, down to sigma 0, computed here with the same operations.
    ms = ModelSamplingDiscrete()
    sigmas = ksampler_sigmas(ms, "normal", "euler", STEPS, 1.0)
    noise = prepare_noise(torch.zeros(1, 4, SIZE // 8, SIZE // 8), 5)
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0) + torch.zeros_like(noise)
    for i in range(STEPS):
        x = x + (x - torch.zeros_like(x)) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    expected = x / 0.18215
    assert torch.equal(out, expected), (out - expected).abs().max()
    assert out.abs().max() < 1e-5


async def test_model_function_wrapper_sees_every_model_call(server: Any, checkpoint: Path) -> None:
    ckpt = checkpoint.name
    prompt = graph(ckpt, [("CfgPackCountCalls", {})], cfg=7.0)
    prompt["report"] = {
        "class_type": "CfgPackReport",
        "inputs": {"model": ["patch0", 0], "samples": ["ks", 0]},
    }
    wrapped, executed = await run(server, prompt)
    (calls,) = [d["output"]["calls"] for d in executed if d["node"] == "report"]
    # Euler: one guided evaluation per step, cond and uncond batched in one model call (uncond
    # first), as the reference batches them.
    assert len(calls) == STEPS
    assert [c["cond_or_uncond"] for c in calls] == [[1, 0]] * STEPS
    for call in calls:
        assert call["options_cond_or_uncond"] == call["cond_or_uncond"]
        assert call["options_sigma"] == call["sigma"]
        assert call["sample_sigmas"] == STEPS + 1
        assert call["shape"] == [2, 4, SIZE // 8, SIZE // 8]
    sigmas = [c["sigma"] for c in calls]
    assert sigmas == sorted(sigmas, reverse=True) and len(set(sigmas)) == STEPS
    # A wrapper that passes the call on changes nothing.
    plain, _ = await run(server, graph(ckpt, [], cfg=7.0))
    assert torch.equal(wrapped, plain)


async def test_replaced_sampling_function_runs_and_changes_nothing(server: Any, checkpoint: Path) -> None:
    ckpt = checkpoint.name
    prompt = graph(ckpt, [], cfg=7.0)
    prompt["pack"] = {
        "class_type": "CfgPackPatchedKSampler",
        "inputs": {
            "model": ["ckpt", 0],
            "positive": ["pos", 0],
            "negative": ["neg", 0],
            "latent_image": ["empty", 0],
            "seed": 5,
            "steps": STEPS,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
        },
    }
    prompt["save_pack"] = {
        "class_type": "ModelPackSaveLatent",
        "inputs": {"samples": ["pack", 0], "filename_prefix": "p"},
    }
    core, executed = await run(server, prompt)
    (pack_ui,) = [d["output"] for d in executed if d["node"] == "pack"]
    assert pack_ui["wrapped_calls"] == [STEPS]
    (saved,) = [d["output"]["latents"][0] for d in executed if d["node"] == "save_pack"]
    path = Path(server.kernel.settings.output_path) / saved["subfolder"] / saved["filename"]
    assert torch.equal(load_file(str(path))["samples"], core)
    # The pack put the original back.
    from plugins.core_nodes.cfg import sampling_function

    assert _shim("comfy.samplers").sampling_function is sampling_function


async def test_core_ksampler_goes_through_a_replaced_comfy_sample_sample(
    server: Any, checkpoint: Path
) -> None:
    # Impact-Pack wraps comfy.sample.sample at import to improve error messages; the core node
    # must call the wrapper, as ComfyUI's KSampler (nodes.common_ksampler) does.
    module = _shim("comfy.sample")
    original = module.sample
    calls: list[tuple[dict[str, Any], torch.Tensor]] = []

    def informative_sample(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        calls.append((kwargs, result))
        return result

    module.sample = informative_sample
    try:
        wrapped, _ = await run(server, graph(checkpoint.name, [], cfg=7.0))
    finally:
        module.sample = original
    ((kwargs, result),) = calls
    assert kwargs["seed"] == 5 and kwargs["denoise"] == 1.0
    assert torch.equal(wrapped, result)


# --- the shims called directly ----------------------------------------------------------------


def _toy_denoiser(x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s**2) + 0.1 * torch.sin(x)


KDIFF_CASES = [
    key
    for key, case in GOLDEN["cases"].items()
    if "error" not in case and case["sampler"] not in ("ddim", "uni_pc", "uni_pc_bh2")
]


@pytest.mark.parametrize("key", sorted(KDIFF_CASES))
async def test_k_diffusion_functions_equal_the_core_samplers(shims: Any, key: str) -> None:
    case = GOLDEN["cases"][key]
    sampling = _shim("comfy.k_diffusion.sampling")
    samplers = _shim("comfy.samplers")
    ms = ModelSamplingDiscrete()
    noise = TENSORS["noise"]
    latent = torch.zeros_like(noise) if case["latent"] == "zeros" else TENSORS["img2img_latent"]
    sigmas = ksampler_sigmas(ms, case["scheduler"], case["sampler"], case["steps"], case["denoise"])
    max_denoise = samplers.Sampler().max_denoise(_Wrap(ms), sigmas)
    x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise)
    steps: list[int] = []
    extra = {"seed": GOLDEN["extra_seed"]}
    if case["sampler"] in ("dpm_fast", "dpm_adaptive"):
        function = samplers.ksampler(case["sampler"]).sampler_function
        out = function(_toy_denoiser, x, sigmas, extra, lambda d: steps.append(d["i"]), False)
    else:
        function = getattr(sampling, f"sample_{case['sampler']}")
        out = function(_toy_denoiser, x, sigmas, extra_args=extra, callback=lambda d: steps.append(d["i"]))
    expected = core_sample(_toy_denoiser, noise, sigmas, case["sampler"], GOLDEN["extra_seed"], latent)
    assert torch.equal(out, expected)
    assert (out - TENSORS[key]).abs().max().item() <= 1e-4
    assert steps and steps[0] == 0


class _Wrap:
    """What ``Sampler.max_denoise`` reads: ``model_wrap.inner_model.model_sampling``."""

    def __init__(self, ms: ModelSamplingDiscrete) -> None:
        self.inner_model = self
        self.model_sampling = ms


async def test_ksampler_sigmas_are_calculate_sigmas(shims: Any, checkpoint: Path) -> None:
    samplers = _shim("comfy.samplers")
    model, _clip, _vae = adapters.load_checkpoint(checkpoint)
    ms = model.get_model_object("model_sampling")
    for scheduler in samplers.KSampler.SCHEDULERS:
        ks = samplers.KSampler(model, 7, "cpu", sampler="euler", scheduler=scheduler)
        assert torch.equal(ks.sigmas, samplers.calculate_sigmas(ms, scheduler, 7)), scheduler
    assert "dpm_2" in samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    full = samplers.calculate_sigmas(ms, "karras", 8)
    discard = samplers.KSampler(model, 7, "cpu", sampler="dpm_2", scheduler="karras").sigmas
    assert torch.equal(discard, torch.cat([full[:-2], full[-1:]]))
    partial = samplers.KSampler(model, 4, "cpu", sampler="euler", scheduler="normal", denoise=0.5).sigmas
    assert torch.equal(partial, samplers.calculate_sigmas(ms, "normal", 8)[-5:])
    assert (
        samplers.SAMPLER_NAMES
        == samplers.KSampler.SAMPLERS
        == samplers.KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]
    )
    assert list(samplers.SCHEDULER_HANDLERS) == samplers.SCHEDULER_NAMES
    with pytest.raises(ValueError, match="nope"):
        samplers.calculate_sigmas(ms, "nope", 4)


async def test_a_scheduler_added_to_scheduler_handlers_is_used(shims: Any) -> None:
    samplers = _shim("comfy.samplers")
    ramp = samplers.SchedulerHandler(
        lambda n, sigma_min, sigma_max: torch.linspace(sigma_max, 0, n + 1), use_ms=False
    )
    samplers.SCHEDULER_HANDLERS["ramp"] = ramp
    ms = ModelSamplingDiscrete()
    assert torch.equal(samplers.calculate_sigmas(ms, "ramp", 4), torch.linspace(float(ms.sigma_max), 0, 5))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde", "euler_ancestral_cfg_pp", "ddim"])
async def test_comfy_sample_sample_equals_the_core_ksampler(
    shims: Any, checkpoint: Path, sampler: str
) -> None:
    comfy_sample = _shim("comfy.sample")
    model, clip, _vae = adapters.load_checkpoint(checkpoint)
    cond, pooled = clip.encode("a lighthouse")
    empty, empty_pooled = clip.encode("")
    positive = [[cond, {"pooled_output": pooled}]]
    negative = [[empty, {"pooled_output": empty_pooled}]]
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, :, SIZE // 2 :] = 1.0
    source = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3))
    latent = {"samples": source, "noise_mask": mask}
    core = run_ksampler(model, 9, STEPS, 6.0, sampler, "karras", positive, negative, latent, denoise=0.8)[
        "samples"
    ]
    noise = comfy_sample.prepare_noise(source, 9)
    samples = comfy_sample.sample(
        model,
        noise,
        STEPS,
        6.0,
        sampler,
        "karras",
        positive,
        negative,
        source,
        denoise=0.8,
        noise_mask=mask,
        seed=9,
    )
    assert torch.equal(samples, core)


async def test_replaced_default_noise_sampler_feeds_the_ancestral_samplers(shims: Any) -> None:
    sampling = _shim("comfy.k_diffusion.sampling")
    original = sampling.default_noise_sampler
    made: list[int | None] = []

    def zero_noise(x: torch.Tensor, seed: int | None = None) -> Any:
        made.append(seed)
        return lambda sigma, sigma_next: torch.zeros_like(x)

    ms = ModelSamplingDiscrete()
    sigmas = ksampler_sigmas(ms, "karras", "euler_ancestral", 5)
    x = TENSORS["noise"] * sigmas[0]
    default = sampling.sample_euler_ancestral(_toy_denoiser, x, sigmas, extra_args={"seed": 4})
    sampling.default_noise_sampler = zero_noise
    try:
        quiet = sampling.sample_euler_ancestral(_toy_denoiser, x, sigmas, extra_args={"seed": 4})
    finally:
        sampling.default_noise_sampler = original
    assert made == [4]
    assert not torch.equal(default, quiet)
    # A noise_sampler passed by the caller wins over both.
    own = sampling.sample_euler_ancestral(
        _toy_denoiser, x, sigmas, extra_args={"seed": 4}, noise_sampler=lambda s, t: torch.zeros_like(x)
    )
    assert torch.equal(own, quiet)


async def test_k_diffusion_schedules_and_helpers(shims: Any) -> None:
    sampling = _shim("comfy.k_diffusion.sampling")
    karras = sampling.get_sigmas_karras(6, 0.03, 14.6)
    assert karras.shape == (7,) and karras[-1] == 0 and karras[0] == pytest.approx(14.6)
    exp = sampling.get_sigmas_exponential(5, 0.1, 10.0)
    assert torch.allclose(exp[:-1].log().diff(), exp[:-1].log().diff()[:1].expand(4), atol=1e-5)
    assert torch.allclose(sampling.get_sigmas_polyexponential(5, 0.1, 10.0, rho=1.0), exp, atol=1e-5)
    vp = sampling.get_sigmas_vp(4)
    assert vp.shape == (5,) and vp[-1] == 0 and bool((vp[:-1].diff() < 0).all())
    down, up = sampling.get_ancestral_step(torch.tensor(2.0), torch.tensor(1.0))
    assert float(down**2 + up**2) == pytest.approx(1.0)
    assert sampling.get_ancestral_step(torch.tensor(2.0), torch.tensor(1.0), eta=0.0)[1] == 0.0
    x, denoised = torch.ones(1, 2), torch.zeros(1, 2)
    assert torch.equal(sampling.to_d(x, torch.tensor([2.0]), denoised), torch.full((1, 2), 0.5))
    tree = sampling.BrownianTreeNoiseSampler(x, torch.tensor(0.1), torch.tensor(10.0), seed=1)
    assert tree(torch.tensor(10.0), torch.tensor(1.0)).shape == (1, 2)
    first = sampling.default_noise_sampler(x, seed=3)(None, None)
    assert torch.equal(first, sampling.default_noise_sampler(x, seed=3)(None, None))
    assert sampling.torch is torch


async def test_k_diffusion_exponential_integrator_helpers_are_the_core_ones(shims: Any) -> None:
    """Packs' own sampler loops import the half-log-SNR helpers, h*phi_k(h) and the RF samplers
    from this module: they are the core functions, flow-aware through the shim's CONST."""
    sampling = _shim("comfy.k_diffusion.sampling")
    from plugins.core_nodes.sampling import common, snr
    from plugins.core_nodes.sampling import kdiffusion as core

    assert sampling.ei_h_phi_1 is common.ei_h_phi_1 and sampling.ei_h_phi_2 is common.ei_h_phi_2
    assert sampling.sigma_to_half_log_snr is snr.sigma_to_half_log_snr
    assert sampling.half_log_snr_to_sigma is snr.half_log_snr_to_sigma
    assert sampling.offset_first_sigma_for_snr is snr.offset_first_sigma_for_snr
    for name in ("euler_ancestral_RF", "dpm_2_ancestral_RF", "dpmpp_2s_ancestral_RF"):
        assert getattr(sampling, f"sample_{name}") is core.SAMPLE_FUNCTIONS[name]
    h = torch.tensor([0.5, 1.0])
    assert torch.allclose(sampling.ei_h_phi_1(h), h.exp() - 1)
    assert torch.allclose(sampling.ei_h_phi_2(h), (h.exp() - 1 - h) / h)
    ms = _shim("comfy.model_sampling")
    flow = type("Flow", (ms.ModelSamplingDiscreteFlow, ms.CONST), {})()
    eps = type("Eps", (ms.ModelSamplingDiscrete, ms.EPS), {})()
    sigma = torch.tensor([0.25])
    assert torch.allclose(sampling.sigma_to_half_log_snr(sigma, flow), torch.log(torch.tensor([3.0])))
    assert torch.allclose(sampling.sigma_to_half_log_snr(sigma, eps), -sigma.log())
    assert torch.allclose(sampling.half_log_snr_to_sigma(torch.log(torch.tensor([3.0])), flow), sigma)
    first = sampling.offset_first_sigma_for_snr(torch.tensor([1.0, 0.5, 0.0]), flow)
    assert 0.99 < float(first[0]) < 1.0


async def test_sampler_helpers(shims: Any) -> None:
    helpers = _shim("comfy.sampler_helpers")
    cross = torch.ones(1, 77, 8)
    (converted,) = helpers.convert_cond([[cross, {"pooled_output": None, "strength": 0.5}]])
    assert converted["cross_attn"] is cross and converted["strength"] == 0.5
    assert converted["model_conds"] == {} and "uuid" in converted
    mask = helpers.prepare_mask(torch.ones(16, 16), (2, 4, 2, 2), "cpu")
    assert mask.shape == (2, 4, 2, 2) and bool((mask == 1).all())
    assert helpers.get_additional_models({}, torch.float32) == ([], 0)

    class Cleans:
        cleaned = False

        def cleanup(self) -> None:
            self.cleaned = True

    thing = Cleans()
    helpers.cleanup_models({}, [thing])
    assert thing.cleaned


async def test_model_sampling_classes_match_the_core_schedule(shims: Any) -> None:
    model_sampling = _shim("comfy.model_sampling")

    class Eps(model_sampling.ModelSamplingDiscrete, model_sampling.EPS):
        pass

    ours, core = Eps(), ModelSamplingDiscrete()
    assert torch.equal(ours.sigmas, core.sigmas) and torch.equal(ours.log_sigmas, core.log_sigmas)
    sigma = torch.tensor([3.0, 0.5])
    x = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours.timestep(sigma), core.timestep(sigma))
    assert torch.equal(ours.sigma(torch.tensor([10.5, 700.0])), core.sigma(torch.tensor([10.5, 700.0])))
    assert ours.percent_to_sigma(0.3) == core.percent_to_sigma(0.3)
    assert torch.equal(ours.calculate_input(sigma, x), core.calculate_input(sigma, x))
    assert torch.equal(ours.calculate_denoised(sigma, x, x * 2), core.calculate_denoised(sigma, x, x * 2))
    assert torch.equal(ours.noise_scaling(sigma, x, x, True), core.noise_scaling(sigma, x, x, True))

    class V(model_sampling.ModelSamplingDiscrete, model_sampling.V_PREDICTION):
        pass

    vcore = ModelSamplingDiscrete(prediction="v")
    assert torch.equal(V().calculate_denoised(sigma, x, x * 2), vcore.calculate_denoised(sigma, x, x * 2))
    zsnr = model_sampling.ModelSamplingDiscrete(zsnr=True)
    assert float(zsnr.sigma_max) > 4000
    flow = model_sampling.ModelSamplingDiscreteFlow()
    assert float(flow.sigma_max) == 1.0 and flow.percent_to_sigma(0.25) == pytest.approx(0.75)
    assert model_sampling.time_snr_shift(3.0, 0.5) == pytest.approx(0.75)
    flux = model_sampling.ModelSamplingFlux()
    assert float(flux.sigma_max) == pytest.approx(1.0) and flux.percent_to_sigma(1.0) == 0.0
    edm = model_sampling.ModelSamplingContinuousEDM()
    assert float(edm.sigma_min) == pytest.approx(0.002) and float(edm.sigma_max) == pytest.approx(120.0)
    const = model_sampling.CONST()
    half = torch.tensor([0.5])
    assert torch.allclose(const.noise_scaling(half, x * 0, x), x * 0.5)
    assert torch.allclose(const.inverse_noise_scaling(half, const.noise_scaling(half, x * 0, x)), x)


async def test_a_model_sampling_object_patch_drives_the_sampler(shims: Any, checkpoint: Path) -> None:
    model_sampling = _shim("comfy.model_sampling")
    model, clip, _vae = adapters.load_checkpoint(checkpoint)
    cond, pooled = clip.encode("a hill")
    positive, negative = [[cond, {"pooled_output": pooled}]], [[cond * 0, {"pooled_output": pooled}]]
    latent = {"samples": torch.zeros(1, 4, 4, 4)}

    def run_with(sampling: Any) -> torch.Tensor:
        patched = model.clone()
        if sampling is not None:
            patched.add_object_patch("model_sampling", sampling)
        return run_ksampler(patched, 2, 2, 5.0, "euler", "karras", positive, negative, latent)["samples"]

    class Eps(model_sampling.ModelSamplingDiscrete, model_sampling.EPS):
        pass

    class V(model_sampling.ModelSamplingDiscrete, model_sampling.V_PREDICTION):
        pass

    plain = run_with(None)
    assert torch.equal(run_with(Eps(model.model.model_config)), plain)
    v = run_with(V(model.model.model_config))
    assert torch.isfinite(v).all() and not torch.allclose(v, plain)


async def test_sample_custom_with_a_wrapping_ksampler_as_detail_daemon_builds_it(
    shims: Any, checkpoint: Path
) -> None:
    samplers, comfy_sample = _shim("comfy.samplers"), _shim("comfy.sample")
    model, clip, _vae = adapters.load_checkpoint(checkpoint)
    cond, pooled = clip.encode("a boat")
    positive, negative = [[cond, {"pooled_output": pooled}]], [[cond * 0, {"pooled_output": pooled}]]
    seen: dict[str, Any] = {}

    def wrapping_sampler(
        model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, *, wrapped: Any, **kwargs: Any
    ) -> Any:
        # What Detail-Daemon / LyingSigmaSampler read before handing over to the wrapped sampler.
        seen["cfg"] = model_k.inner_model.cfg
        seen["sigma_max"] = float(model_k.inner_model.inner_model.model_sampling.sigma_max)

        def model_wrapper(x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
            return model_k(x, sigma, **extra_args)

        model_wrapper.inner_model = model_k.inner_model  # type: ignore[attr-defined]
        return wrapped.sampler_function(model_wrapper, x, sigmas, **kwargs, **wrapped.extra_options)

    sampler = samplers.KSAMPLER(
        wrapping_sampler, extra_options={"wrapped": samplers.sampler_object("dpmpp_2m_sde")}
    )
    latent = torch.zeros(1, 4, 4, 4)
    noise = comfy_sample.prepare_noise(latent, 8)
    sigmas = samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 3)
    custom = comfy_sample.sample_custom(
        model, noise, 4.5, sampler, sigmas, positive, negative, latent, seed=8
    )
    core = run_ksampler(model, 8, 3, 4.5, "dpmpp_2m_sde", "karras", positive, negative, {"samples": latent})
    assert seen == {"cfg": 4.5, "sigma_max": float(ModelSamplingDiscrete().sigma_max)}
    assert torch.equal(custom, core["samples"])


async def test_a_flow_model_sampling_patch_is_used_for_the_noise_scaling_too(
    shims: Any, checkpoint: Path
) -> None:
    model_sampling = _shim("comfy.model_sampling")

    class Flow(model_sampling.ModelSamplingDiscreteFlow, model_sampling.CONST):
        pass

    model, clip, _vae = adapters.load_checkpoint(checkpoint)
    patched = model.clone()
    patched.add_object_patch("model_sampling", Flow())
    cond, pooled = clip.encode("a bird")
    positive = [[cond, {"pooled_output": pooled}]]
    seen: list[tuple[float, torch.Tensor]] = []

    def first_sigma(apply_model: Any, args: dict[str, Any]) -> torch.Tensor:
        seen.append((float(args["timestep"].reshape(-1)[0]), args["input"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched.model_options["model_function_wrapper"] = first_sigma
    source = torch.ones(1, 4, 4, 4)
    noise = torch.zeros(1, 4, 4, 4)
    comfy_sample = _shim("comfy.sample")
    comfy_sample.sample(
        patched, noise, 2, 1.0, "euler", "simple", positive, positive, source, denoise=0.5, seed=1
    )
    # Flow sigmas live in (0, 1]: the sampler started there, and scaled the (zero) noise with
    # CONST's rule, so the model saw (1 - sigma) * latent.
    sigma, first_input = seen[0]
    assert 0 < sigma < 1.0
    assert torch.allclose(first_input, torch.full_like(first_input, (1 - sigma) * 0.18215))


async def test_cast_transformer_options_moves_patch_objects(shims: Any) -> None:
    samplers = _shim("comfy.samplers")
    patch = torch.nn.Linear(2, 2)
    plain = object()
    options = {
        "patches": {"attn1_patch": [patch, plain]},
        "patches_replace": {"attn1": {("input", 1, 0): patch}},
    }
    samplers.cast_transformer_options(options, dtype=torch.float64)
    assert options["patches"]["attn1_patch"][0].weight.dtype == torch.float64
    assert options["patches"]["attn1_patch"][1] is plain
    assert options["patches_replace"]["attn1"][("input", 1, 0)].weight.dtype == torch.float64
    assert callable(_shim("comfy.k_diffusion.sampling").trange)


async def test_a_sampler_a_pack_adds_is_sampled_with(shims: Any, checkpoint: Path) -> None:
    # smZNodes' pattern: a sample_<name> function in k_diffusion.sampling plus the name in the
    # KSampler list.
    samplers, sampling, comfy_sample = (
        _shim("comfy.samplers"),
        _shim("comfy.k_diffusion.sampling"),
        _shim("comfy.sample"),
    )
    used: list[int] = []

    def sample_halfway(
        model: Any,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        extra_args: Any = None,
        callback: Any = None,
        disable: Any = None,
    ) -> torch.Tensor:
        used.append(len(sigmas))
        return sampling.sample_euler(
            model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable
        )

    sampling.sample_halfway = sample_halfway
    samplers.KSampler.SAMPLERS.append("halfway")
    model, clip, _vae = adapters.load_checkpoint(checkpoint)
    cond, pooled = clip.encode("a kite")
    positive = [[cond, {"pooled_output": pooled}]]
    latent = torch.zeros(1, 4, 4, 4)
    noise = comfy_sample.prepare_noise(latent, 2)
    out = comfy_sample.sample(model, noise, 3, 1.0, "halfway", "normal", positive, positive, latent, seed=2)
    euler = comfy_sample.sample(model, noise, 3, 1.0, "euler", "normal", positive, positive, latent, seed=2)
    assert used == [4] and torch.equal(out, euler)
    # The core module's own list is untouched: the next server starts clean.
    from plugins.core_nodes import sampler_objects

    assert "halfway" not in sampler_objects.SAMPLER_NAMES
    with pytest.raises(ValueError, match="unknown sampler"):
        comfy_sample.sample(model, noise, 3, 1.0, "nowhere", "normal", positive, positive, latent, seed=2)
