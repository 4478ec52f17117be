"""KSampler / KSamplerAdvanced against a toy model satisfying the contracts, and over HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kernel.progress import ExecutionContext, Interrupted, executing
from plugins.core_nodes.guidance import Guider
from plugins.core_nodes.ksampler import select_sigmas
from plugins.core_nodes.nodes.sampling import SAMPLER_NAMES, SCHEDULER_NAMES, KSampler, KSamplerAdvanced
from plugins.core_nodes.sampling import samplers, schedules

from .golden import GOLDEN_DIR
from .node_helpers import messages, run_prompt
from .toy_stack import TOY_PLUGIN, ToyModel

TENSORS = load_file(GOLDEN_DIR / "samplers.safetensors")
GOLDEN = json.loads((GOLDEN_DIR / "samplers.json").read_text())
ZEROS = {"samples": torch.zeros(2, 4, 8, 8)}


def cond(value: float, **options: Any) -> list[list[Any]]:
    return [[torch.full((1, 77, 8), value), {"pooled_output": None, **options}]]


def ksampler(**kwargs: Any) -> torch.Tensor:
    args: dict[str, Any] = {
        "model": ToyModel(),
        "seed": 42,
        "steps": 8,
        "cfg": 8.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "positive": cond(1.0),
        "negative": cond(0.0),
        "latent_image": ZEROS,
        "denoise": 1.0,
    }
    args.update(kwargs)
    return KSampler().sample(**args)[0]["samples"]


def advanced(**kwargs: Any) -> torch.Tensor:
    args: dict[str, Any] = {
        "model": ToyModel(),
        "add_noise": "enable",
        "noise_seed": 42,
        "steps": 8,
        "cfg": 8.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "positive": cond(1.0),
        "negative": cond(0.0),
        "latent_image": ZEROS,
        "start_at_step": 0,
        "end_at_step": 10000,
        "return_with_leftover_noise": "disable",
    }
    args.update(kwargs)
    return KSamplerAdvanced().sample(**args)[0]["samples"]


def test_combo_lists_are_the_sampling_packages() -> None:
    assert SAMPLER_NAMES == samplers.SAMPLER_NAMES
    assert SCHEDULER_NAMES == schedules.SCHEDULER_NAMES


@pytest.mark.parametrize(
    "key",
    [
        "euler__normal_8_1.0_zeros",
        "euler__karras_6_1.0_zeros",
        "euler_ancestral__normal_8_1.0_zeros",
        "dpmpp_2m__karras_6_1.0_zeros",
        "dpmpp_sde__normal_8_1.0_zeros",
        "euler__normal_10_0.6_img2img",
        "uni_pc__normal_10_0.6_img2img",
    ],
)
def test_ksampler_reproduces_golden_sampler_output(key: str) -> None:
    case = GOLDEN["cases"][key]
    latent = ZEROS if case["latent"] == "zeros" else {"samples": TENSORS["img2img_latent"]}
    out = ksampler(
        sampler_name=case["sampler"],
        scheduler=case["scheduler"],
        steps=case["steps"],
        denoise=case["denoise"],
        latent_image=latent,
    )
    assert torch.allclose(out, TENSORS[key], atol=1e-4), (out - TENSORS[key]).abs().max()


def test_advanced_with_defaults_equals_ksampler() -> None:
    assert torch.equal(advanced(), ksampler())


def test_advanced_split_with_leftover_noise_equals_one_pass() -> None:
    first = advanced(end_at_step=4, return_with_leftover_noise="enable")
    second = advanced(add_noise="disable", start_at_step=4, latent_image={"samples": first})
    assert torch.allclose(second, ksampler(), atol=1e-5)
    # The leftover latent is still noisy; a forced full denoise at step 4 is not.
    forced = advanced(end_at_step=4, return_with_leftover_noise="disable")
    assert not torch.allclose(forced, first)
    assert first.std() > forced.std()


def test_advanced_sigma_selection() -> None:
    model = ToyModel()
    full = select_sigmas(model, "normal", "euler", 8, 1.0, None, None, False)
    leftover = select_sigmas(model, "normal", "euler", 8, 1.0, 0, 4, False)
    forced = select_sigmas(model, "normal", "euler", 8, 1.0, 0, 4, True)
    assert full is not None and leftover is not None and forced is not None
    assert torch.equal(leftover, full[:5])
    assert torch.equal(forced[:-1], full[:4]) and float(forced[-1]) == 0.0
    assert torch.equal(select_sigmas(model, "normal", "euler", 8, 1.0, 3, None, False), full[3:])
    assert select_sigmas(model, "normal", "euler", 8, 1.0, 8, None, False) is None


def test_start_past_the_end_returns_the_input_latent() -> None:
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    out = advanced(start_at_step=8, latent_image=latent)
    assert torch.equal(out, latent["samples"])


def test_disabled_noise_keeps_a_zero_latent_deterministic_of_seed() -> None:
    a = advanced(add_noise="disable", noise_seed=1)
    b = advanced(add_noise="disable", noise_seed=2)
    # Without noise only the sampler's own arithmetic acts on zeros: the seed does not matter.
    assert torch.equal(a, b)
    assert not torch.equal(advanced(noise_seed=1), advanced(noise_seed=2))


def test_cfg_math() -> None:
    model = ToyModel(bias=1.0)
    x = torch.zeros(1, 4, 8, 8)
    sigma = torch.tensor([1.0])
    # With x = 0 the toy output is bias * mean(embedding): 2.0 for positive, 0.5 for negative.
    guider = Guider(model, cond(2.0), cond(0.5), 3.0, x)
    assert torch.allclose(guider(x, sigma), torch.full_like(x, 0.5 + 3.0 * (2.0 - 0.5)))
    denoised, uncond = guider.denoise_with_uncond(x, sigma)
    assert torch.allclose(uncond, torch.full_like(x, 0.5))
    assert torch.allclose(denoised, torch.full_like(x, 5.0))


def test_cfg_one_skips_the_negative_pass() -> None:
    model = ToyModel(bias=1.0)
    x = torch.zeros(1, 4, 8, 8)
    out = Guider(model, cond(2.0), cond(0.5), 1.0, x)(x, torch.tensor([1.0]))
    assert torch.allclose(out, torch.full_like(x, 2.0))
    assert len(model.calls) == 1


def test_denoise_zero_returns_input() -> None:
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    out = ksampler(latent_image=latent, denoise=0.0)
    assert torch.equal(out, latent["samples"])


def test_noise_mask_keeps_the_unmasked_region() -> None:
    source = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, 32:] = 1.0  # repaint the right half only
    out = ksampler(latent_image={"samples": source, "noise_mask": mask}, steps=4)
    assert torch.allclose(out[..., :4], source[..., :4], atol=1e-5)
    assert not torch.allclose(out[..., 4:], source[..., 4:], atol=1e-2)


class _Sink:
    def __init__(self, interrupt_after: int | None = None) -> None:
        self.updates: list[tuple[str, float, float, Any]] = []
        self.interrupt_after = interrupt_after

    def update(self, node_id: str, value: float, max_value: float, preview: Any = None) -> None:
        self.updates.append((node_id, value, max_value, preview))

    def is_interrupted(self) -> bool:
        return self.interrupt_after is not None and len(self.updates) >= self.interrupt_after


def test_progress_per_step_and_interrupt_check() -> None:
    sink = _Sink()
    with executing(ExecutionContext("p", "7", None, sink)):
        ksampler(steps=5)
    assert [(n, v, m) for n, v, m, _ in sink.updates] == [("7", i, 5) for i in range(1, 6)]
    stopped = _Sink(interrupt_after=2)
    model = ToyModel()
    with executing(ExecutionContext("p", "7", None, stopped)), pytest.raises(Interrupted):
        ksampler(model=model, steps=20)
    assert len(stopped.updates) == 2
    assert len(model.calls) < 20 * 2


def test_area_conditioning_predicts_its_region() -> None:
    model = ToyModel(bias=1.0)
    x = torch.zeros(1, 4, 32, 32)
    positive = cond(1.0) + cond(3.0, area=(16, 16, 0, 16), strength=1.0)
    out = Guider(model, positive, cond(0.0), 1.0, x)(x, torch.tensor([1.0]))
    # Left half: only the full-frame entry; top-right core: the average of both.
    assert torch.allclose(out[..., :, :8], torch.ones(1, 4, 32, 8))
    assert torch.allclose(out[..., 0:8, 24:32], torch.full((1, 4, 8, 8), 2.0))
    assert model.calls[1]["shape"] == (1, 4, 16, 16)


def test_mask_and_timestep_range_conditioning() -> None:
    model = ToyModel(bias=1.0)
    x = torch.zeros(1, 4, 8, 8)
    mask = torch.zeros(1, 64, 64)
    mask[:, :32] = 1.0
    positive = cond(1.0) + cond(3.0, mask=mask, mask_strength=1.0, set_area_to_bounds=False)
    out = Guider(model, positive, cond(0.0), 1.0, x)(x, torch.tensor([1.0]))
    assert torch.allclose(out[..., :3, :], torch.full((1, 4, 3, 8), 2.0))
    assert torch.allclose(out[..., 5:, :], torch.ones(1, 4, 3, 8))
    late = cond(5.0, start_percent=0.5, end_percent=1.0)
    high = Guider(model, late + cond(1.0), cond(0.0), 1.0, x)(x, torch.tensor([14.0]))
    low = Guider(model, late + cond(1.0), cond(0.0), 1.0, x)(x, torch.tensor([0.1]))
    assert torch.allclose(high, torch.ones_like(x))
    assert torch.allclose(low, torch.full_like(x, 3.0))


def txt2img_prompt(steps: int = 3, sampler: str = "euler") -> dict[str, Any]:
    return {
        "1": {"class_type": "ToyStackLoader", "inputs": {"bias": 0.5}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 7,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": sampler,
                "scheduler": "karras",
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "toy"}},
    }


async def test_txt2img_over_http_sends_progress_and_previews(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", TOY_PLUGIN], preview_method="latent2rgb")
    frames = await run_prompt(server, txt2img_prompt(steps=3))
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    progress = [(d["value"], d["max"]) for d in messages(frames, "progress") if d["node"] == "5"]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    previews = [f for f in frames if isinstance(f, bytes)]
    assert len(previews) == 3
    assert previews[0][:8] == b"\x00\x00\x00\x01\x00\x00\x00\x01"  # PREVIEW_IMAGE, JPEG
    executed = {d["node"]: d["output"] for d in messages(frames, "executed")}
    assert executed["7"]["images"][0]["filename"] == "toy_00001_.png"
    assert (server.kernel.settings.output_path / "toy_00001_.png").is_file()


async def test_no_previews_when_the_preview_method_is_none(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", TOY_PLUGIN])
    frames = await run_prompt(server, txt2img_prompt(steps=2))
    assert len(messages(frames, "progress")) >= 2
    assert not [f for f in frames if isinstance(f, bytes)]


async def test_unknown_sampler_is_a_validation_error(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", TOY_PLUGIN])
    prompt = txt2img_prompt(sampler="not_a_sampler")
    async with server.post("/prompt", json={"prompt": prompt}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert "5" in body["node_errors"]
