"""The sampler's conds are the reference's processed cond dicts (packs read and copy them)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from plugins.core_nodes.cond_prep import convert_cond, process_conds
from plugins.core_nodes.conds import CONDCrossAttn, CONDNoiseShape
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete


def test_processed_conds_are_dicts_of_the_options_and_the_placed_values() -> None:
    sampling = ModelSamplingDiscrete()
    text = torch.randn(1, 77, 8)
    options = {"weight": 0.5, "strength": 2.0, "start_percent": 0.25, "area": (8, 8, 0, 8), "my_key": "x"}
    given = {"positive": convert_cond([[text, options]])}
    model = SimpleNamespace(model_sampling=sampling)
    [cond] = process_conds(model, torch.zeros(1, 4, 16, 16), given, "cpu")["positive"]
    # ComfyUI_smZNodes' sampling_function reads cond.get("weight") on every entry;
    # AnimateDiff-Evolved copies each dict per context window.
    assert type(cond) is dict and cond.copy() == cond
    assert cond["weight"] == 0.5 and cond["strength"] == 2.0 and cond["my_key"] == "x"
    assert tuple(cond["area"]) == (8, 8, 0, 8)
    assert cond["timestep_start"] == sampling.percent_to_sigma(0.25)
    assert torch.equal(cond["cross_attn"], text)
    c_crossattn = cond["model_conds"]["c_crossattn"]
    assert isinstance(c_crossattn, CONDCrossAttn) and torch.equal(c_crossattn.cond, text)
    assert "uuid" in cond and "control" not in cond and "mask" not in cond
    assert "timestep_start" not in options  # the CONDITIONING's own options are left alone


def test_model_config_classes_carry_the_reference_family_names() -> None:
    """ComfyUI-IC-Light refuses a MODEL whose config class name lacks "SD15"."""
    from plugins.core_nodes.models import model_base

    names = {family: cls.__name__ for family, cls in model_base.CONFIG_CLASSES.items()}
    assert names == {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL", "sdxl_refiner": "SDXLRefiner", "sd3": "SD3"}
    assert all(issubclass(cls, model_base.ModelConfig) for cls in model_base.CONFIG_CLASSES.values())


def _sd1(tmp_path: Any) -> tuple[Any, list[list[Any]], list[list[Any]]]:
    from plugins.core_nodes.models import adapters

    from . import tiny_pipeline

    model, clip, _ = adapters.load_checkpoint(tiny_pipeline.write_checkpoint(tmp_path / "sd1.safetensors", "sd1"))
    encode = [clip.encode_from_tokens(clip.tokenize(t), return_pooled=True) for t in ("a castle", "")]
    return model, *([[c, {"pooled_output": p}]] for c, p in encode)


def test_an_extra_conds_object_patch_feeds_the_unet(tmp_path: Any) -> None:
    """ComfyUI-IC-Light's way: the first conv grows to 8 input channels through a padded weight
    patch and ``add_object_patch("extra_conds", fn)`` adds the 4 extra channels as ``c_concat``.
    The sampler's model call must be exactly the UNet run on the latent plus those channels."""
    from plugins.core_nodes.ksampler import run_ksampler
    from plugins.core_nodes.sampling.noise import prepare_noise

    model, positive, negative = _sd1(tmp_path)
    key = "diffusion_model.input_blocks.0.0.weight"
    weight = model.model_state_dict()[key]
    grown = torch.zeros(weight.shape[0], 8, *weight.shape[2:])
    grown[:, 4:] = torch.randn(weight.shape[0], 4, *weight.shape[2:], generator=torch.Generator().manual_seed(1))
    light = model.clone()
    light.add_patches({key: ("diff", [grown, {"pad_weight": True}])})
    image = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    seen: list[dict[str, Any]] = []

    def extra_conds(**kwargs: Any) -> dict[str, Any]:
        seen.append(kwargs)
        return {"c_concat": CONDNoiseShape(image), "c_crossattn": CONDCrossAttn(kwargs["cross_attn"])}

    light.add_object_patch("extra_conds", extra_conds)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    # One Euler step at cfg 1: the result is the positive prediction at the first sigma (in the
    # VAE's latent space).
    out = run_ksampler(light, 3, 1, 1.0, "euler", "normal", positive, negative, latent)["samples"]
    assert {k["prompt_type"] for k in seen} == {"positive", "negative"}
    assert seen[0]["width"] == 64 and seen[0]["height"] == 64 and seen[0]["noise"].shape == (1, 4, 8, 8)
    sampling = light.model_sampling
    sigma = sampling.sigma_max.reshape(1)
    x = sampling.noise_scaling(sigma, prepare_noise(latent["samples"], 3), latent["samples"], True)
    direct = light(x, sigma, {"c_crossattn": positive[0][0], "c_concat": image})
    torch.testing.assert_close(out, light.latent_format.process_out(direct), rtol=1e-4, atol=1e-4)
    # The original MODEL is untouched: it still takes 4 channels and no c_concat.
    assert run_ksampler(model, 3, 1, 1.0, "euler", "normal", positive, negative, latent)["samples"].shape == out.shape


def test_a_calc_cond_batch_wrapper_may_copy_and_rewrite_the_cond_dicts(tmp_path: Any) -> None:
    """AnimateDiff-Evolved's context windows: a ``calc_cond_batch`` wrapper copies each cond dict
    and its ``model_conds`` (``_copy_with`` on the cond objects) and calls on with the copies."""
    from plugins.core_nodes.ksampler import run_ksampler
    from plugins.core_nodes.models.extension import WrappersMP

    model, positive, negative = _sd1(tmp_path)
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    plain = run_ksampler(model, 5, 2, 4.0, "euler", "normal", positive, negative, latent)["samples"]
    copied: list[int] = []

    def windows(executor: Any, model_view: Any, conds: list[Any], x: torch.Tensor, t: torch.Tensor, options: Any) -> Any:
        rewritten = []
        for entries in conds:
            if entries is None:
                rewritten.append(None)
                continue
            new_entries = []
            for entry in entries:
                new = entry.copy()
                new["model_conds"] = {k: v._copy_with(v.cond.clone()) for k, v in entry["model_conds"].items()}
                new_entries.append(new)
                copied.append(len(new["model_conds"]))
            rewritten.append(new_entries)
        return executor(model_view, rewritten, x, t, options)

    wrapped = model.clone()
    wrapped.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "test", windows)
    out = run_ksampler(wrapped, 5, 2, 4.0, "euler", "normal", positive, negative, latent)["samples"]
    assert copied and all(n == 1 for n in copied)  # SD1: c_crossattn only
    assert torch.equal(out, plain)
