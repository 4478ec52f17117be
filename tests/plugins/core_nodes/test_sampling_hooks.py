"""The reference's sampling hooks on the core path: ``model_options`` functions, wrappers,
transformer_options, the replaceable module functions (through patchpoints) and the
reference-shaped sampler objects, with the toy model of ``toy_stack``."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from plugins.core_nodes import cfg as cfg_module
from plugins.core_nodes.guidance import CFGGuider, Guider
from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models.extension import WrappersMP, add_wrapper_with_key
from plugins.core_nodes.sampler_objects import KSAMPLER, KSampler, ksampler, sample_latents, sampler_object
from plugins.core_nodes.sampling.noise import prepare_noise

from .toy_stack import ToyModel

X = torch.zeros(1, 4, 8, 8)
SIGMA = torch.tensor([1.0])


def cond(value: float, **options: Any) -> list[list[Any]]:
    return [[torch.full((1, 77, 8), value), {"pooled_output": None, **options}]]


class OptionsModel(ToyModel):
    """The toy model with ``model_options`` and the ``transformer_options`` keyword."""

    def __init__(self, bias: float = 1.0) -> None:
        super().__init__(bias)
        self.model_options: dict[str, Any] = {"transformer_options": {"mine": 1}}
        self.options_seen: list[dict[str, Any]] = []

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any], transformer_options: Any = None
    ) -> torch.Tensor:
        self.options_seen.append(dict(transformer_options))
        return super().__call__(x, sigma, cond)


@pytest.fixture
def fake_module() -> Iterator[types.ModuleType]:
    """A loaded ``comfy.samplers`` stand-in, as the compat layer would install it."""
    module = types.ModuleType("comfy.samplers")
    previous = sys.modules.get("comfy.samplers")
    sys.modules["comfy.samplers"] = module
    try:
        yield module
    finally:
        if previous is None:
            del sys.modules["comfy.samplers"]
        else:
            sys.modules["comfy.samplers"] = previous


def test_pre_cfg_functions_see_the_reference_args_and_replace_the_predictions() -> None:
    model = OptionsModel()
    seen: list[dict[str, Any]] = []

    def pre(args: dict[str, Any]) -> list[torch.Tensor]:
        seen.append(args)
        cond_out, uncond_out = args["conds_out"]
        return [cond_out * 2, uncond_out]

    model.model_options["sampler_pre_cfg_function"] = [pre]
    out = Guider(model, cond(2.0), cond(0.5), 3.0, X)(X, SIGMA)
    # cond 2.0 doubled to 4.0: 0.5 + 3 * (4 - 0.5)
    assert torch.allclose(out, torch.full_like(X, 0.5 + 3.0 * 3.5))
    (args,) = seen
    assert set(args) == {
        "conds",
        "conds_out",
        "cond_scale",
        "timestep",
        "input",
        "sigma",
        "model",
        "model_options",
    }
    assert args["cond_scale"] == 3.0 and args["sigma"] is args["timestep"] and args["input"] is X
    assert args["model"].current_patcher is model


def test_cfg_function_args_and_post_cfg_chain() -> None:
    model = OptionsModel()
    cfg_args: list[dict[str, Any]] = []
    post_args: list[dict[str, Any]] = []

    def cfg_fn(args: dict[str, Any]) -> torch.Tensor:
        cfg_args.append(args)
        return args["cond"]  # noise prediction of the positive only: cfg 1

    def post_a(args: dict[str, Any]) -> torch.Tensor:
        post_args.append(args)
        return args["denoised"] + 1

    def post_b(args: dict[str, Any]) -> torch.Tensor:
        return args["denoised"] * 10

    model.model_options["sampler_cfg_function"] = cfg_fn
    model.model_options["sampler_post_cfg_function"] = [post_a, post_b]
    out = Guider(model, cond(2.0), cond(0.5), 3.0, X)(X, SIGMA)
    assert torch.allclose(out, torch.full_like(X, (2.0 + 1) * 10))
    (args,) = cfg_args
    assert torch.allclose(args["cond"], X - 2.0) and torch.allclose(args["uncond"], X - 0.5)
    assert torch.allclose(args["cond_denoised"], torch.full_like(X, 2.0))
    assert args["cond_scale"] == 3.0 and args["input"] is X
    (post,) = post_args
    assert torch.allclose(post["uncond_denoised"], torch.full_like(X, 0.5))
    assert post["cond"] is not None and post["uncond"] is not None and post["input"] is X


def test_cfg_one_skips_uncond_unless_disabled() -> None:
    model = OptionsModel()
    Guider(model, cond(2.0), cond(0.5), 1.0, X)(X, SIGMA)
    assert len(model.calls) == 1
    assert model.calls[0]["shape"] == (1, 4, 8, 8)
    model.model_options["disable_cfg1_optimization"] = True
    Guider(model, cond(2.0), cond(0.5), 1.0, X)(X, SIGMA)
    # The negative is evaluated again, in the same call as the positive.
    assert len(model.calls) == 2 and model.calls[1]["shape"] == (2, 4, 8, 8)


def test_transformer_options_reach_the_model() -> None:
    model = OptionsModel()
    Guider(model, cond(2.0), cond(0.5), 3.0, X)(X, SIGMA)
    # Cond and uncond share one call, uncond first (the reference's batching order).
    (options,) = model.options_seen
    assert options["cond_or_uncond"] == [1, 0]
    assert options["mine"] == 1 and torch.equal(options["sigmas"], SIGMA)
    assert len(options["uuids"]) == 2 and options["uuids"][0] != options["uuids"][1]
    (call,) = model.calls
    assert call["shape"] == (2, 4, 8, 8) and call["sigma"] == 1.0
    assert call["c_crossattn"][:, 0, 0].tolist() == [0.5, 2.0]
    # The MODEL's own dict is never written to.
    assert model.model_options["transformer_options"] == {"mine": 1}


def test_model_function_wrapper_wraps_each_call() -> None:
    model = OptionsModel()
    seen: list[list[int]] = []

    def wrapper(apply_model: Any, args: dict[str, Any]) -> torch.Tensor:
        seen.append(args["cond_or_uncond"])
        assert set(args) == {"input", "timestep", "c", "cond_or_uncond"}
        return apply_model(args["input"], args["timestep"], **args["c"]) + 1

    model.model_options["model_function_wrapper"] = wrapper
    out = Guider(model, cond(2.0), cond(0.5), 3.0, X)(X, SIGMA)
    assert seen == [[1, 0]]
    assert torch.allclose(out, torch.full_like(X, 1.5 + 3.0 * 1.5))


def test_calc_cond_batch_function_replaces_the_batch_pass() -> None:
    model = OptionsModel()

    def batch(args: dict[str, Any]) -> list[torch.Tensor]:
        assert set(args) == {"conds", "input", "sigma", "model", "model_options"}
        return [torch.full_like(args["input"], 3.0), torch.full_like(args["input"], 1.0)]

    model.model_options["sampler_calc_cond_batch_function"] = batch
    out = Guider(model, cond(2.0), cond(0.5), 2.0, X)(X, SIGMA)
    assert torch.allclose(out, torch.full_like(X, 5.0))
    assert model.calls == []


def test_replaced_module_functions_are_read_at_call_time(fake_module: types.ModuleType) -> None:
    model = OptionsModel()
    calls: list[str] = []

    def sampling_function(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append("sampling_function")
        return cfg_module.sampling_function(*args, **kwargs)

    def calc_cond_batch(*args: Any, **kwargs: Any) -> list[torch.Tensor]:
        calls.append("calc_cond_batch")
        return cfg_module.calc_cond_batch(*args, **kwargs)

    def cfg_function(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append("cfg_function")
        return cfg_module.cfg_function(*args, **kwargs) * 0

    guider = Guider(model, cond(2.0), cond(0.5), 3.0, X)
    before = guider(X, SIGMA)
    fake_module.sampling_function = sampling_function
    fake_module.calc_cond_batch = calc_cond_batch
    fake_module.cfg_function = cfg_function
    after = guider(X, SIGMA)
    assert calls == ["sampling_function", "calc_cond_batch", "cfg_function"]
    assert before.abs().sum() > 0 and torch.equal(after, torch.zeros_like(X))


def test_denoise_mask_function_gets_sigma_mask_and_extra_options() -> None:
    model = OptionsModel(bias=0.0)
    seen: list[tuple[Any, ...]] = []

    def mask_fn(sigma: torch.Tensor, mask: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        seen.append((sigma, mask.shape, set(extra_options)))
        return torch.ones_like(mask)  # repaint everything

    source = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    keep_all = torch.zeros(1, 1, 64, 64)
    latent = {"samples": source, "noise_mask": keep_all}
    kept = run_ksampler(model, 1, 3, 1.0, "euler", "normal", cond(1.0), cond(0.0), latent, denoise=0.5)[
        "samples"
    ]
    assert torch.allclose(kept, source, atol=1e-6)
    model.model_options["denoise_mask_function"] = mask_fn
    repainted = run_ksampler(model, 1, 3, 1.0, "euler", "normal", cond(1.0), cond(0.0), latent, denoise=0.5)
    assert len(seen) == 3 and seen[0][1] == (1, 4, 8, 8) and seen[0][2] == {"model", "sigmas"}
    assert not torch.allclose(repainted["samples"], source, atol=1e-3)


def test_wrappers_of_every_level_run_in_order() -> None:
    model = OptionsModel()
    order: list[str] = []

    def wrap(name: str) -> Any:
        def wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
            order.append(name)
            return executor(*args, **kwargs)

        return wrapper

    for kind in (
        WrappersMP.OUTER_SAMPLE,
        WrappersMP.SAMPLER_SAMPLE,
        WrappersMP.PREDICT_NOISE,
        WrappersMP.CALC_COND_BATCH,
    ):
        add_wrapper_with_key(kind, "test", wrap(kind), model.model_options, is_model_options=True)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    wrapped = run_ksampler(model, 1, 2, 3.0, "euler", "normal", cond(1.0), cond(0.0), latent)["samples"]
    assert order[:2] == [WrappersMP.OUTER_SAMPLE, WrappersMP.SAMPLER_SAMPLE]
    assert order[2:] == [WrappersMP.PREDICT_NOISE, WrappersMP.CALC_COND_BATCH] * 2
    plain = run_ksampler(OptionsModel(), 1, 2, 3.0, "euler", "normal", cond(1.0), cond(0.0), latent)[
        "samples"
    ]
    assert torch.equal(wrapped, plain)


def test_cfg_guider_api_with_a_custom_sampler_function() -> None:
    model = OptionsModel()
    received: dict[str, Any] = {}

    def my_sampler(model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any = None,
                   callback: Any = None, disable: Any = None, scale: float = 1.0) -> torch.Tensor:  # fmt: skip
        received.update(extra_args=extra_args, scale=scale, disable=disable)
        denoised = model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
        callback({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": denoised})
        return denoised * scale

    steps: list[tuple[int, int]] = []
    guider = CFGGuider(model)
    guider.set_conds(cond(2.0), cond(0.5))
    guider.set_cfg(3.0)
    sigmas = torch.tensor([1.0, 0.0])
    out = guider.sample(
        torch.zeros(1, 4, 8, 8),
        torch.zeros(1, 4, 8, 8),
        KSAMPLER(my_sampler, extra_options={"scale": 2.0}),
        sigmas,
        callback=lambda i, d, x, total: steps.append((i, total)),
        disable_pbar=True,
        seed=7,
    )
    assert received["scale"] == 2.0 and received["disable"] is True and received["extra_args"]["seed"] == 7
    assert torch.equal(
        received["extra_args"]["model_options"]["transformer_options"]["sample_sigmas"], sigmas
    )
    assert "sample_sigmas" not in model.model_options["transformer_options"]
    assert steps == [(0, 1)]
    assert out.shape == (1, 4, 8, 8) and out.abs().sum() > 0


def test_sample_latents_equals_run_ksampler_and_ksampler_class() -> None:
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    core = run_ksampler(ToyModel(0.5), 3, 4, 5.0, "dpmpp_2m", "karras", cond(1.0), cond(0.0), latent)[
        "samples"
    ]
    noise = prepare_noise(latent["samples"], 3)
    direct = sample_latents(
        ToyModel(0.5), noise, 4, 5.0, "dpmpp_2m", "karras", cond(1.0), cond(0.0), latent["samples"], seed=3
    )
    assert torch.equal(direct, core)
    ks = KSampler(ToyModel(0.5), 4, None, "dpmpp_2m", "karras")
    assert torch.equal(ks.sample(noise, cond(1.0), cond(0.0), 5.0, latent["samples"], seed=3), core)
    assert KSampler(ToyModel(), 4, None, "not-a-sampler", "nope").sampler == "euler"


def test_sampler_objects_and_bad_names() -> None:
    assert sampler_object("ddim").inpaint_options == {"random": True}
    assert isinstance(sampler_object("uni_pc"), KSAMPLER)
    with pytest.raises(ValueError, match="unknown sampler"):
        ksampler("not-a-sampler")
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_latents(ToyModel(), X, 2, 1.0, "nope", "normal", cond(1.0), cond(0.0), X)
    with pytest.raises(ValueError, match="unknown scheduler"):
        sample_latents(ToyModel(), X, 2, 1.0, "euler", "nope", cond(1.0), cond(0.0), X)
