"""Hooks: keyframe scheduling by percent of steps, LoRA hooks on conditioning and on a CLIP.

The scheduled LoRA test runs a real guider over the tiny SD1 checkpoint with a LoRA hook on the
positive prompt only, records every guided prediction, and recomputes each one from models whose
weights were merged by hand at the strength the reference's keyframe rules give for that step
(written out in the test): the positive pass with the merged LoRA, the negative pass plain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.hooks import (
    HookGroup,
    HookKeyframe,
    HookKeyframeGroup,
    InterpolationMethod,
    create_hook_lora,
    set_conds_props,
    set_default_conds_and_combine,
)
from plugins.core_nodes.models import adapters
from plugins.core_nodes.nodes import hooks as hook_nodes
from plugins.core_nodes.sampler_objects import KSAMPLER

from . import tiny_pipeline
from .test_workflows_e2e import checkpoints, lora_file  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANK = 4
UNET_MODULE = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
LORA_MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
TE_MODULE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
TOL = {"atol": 2e-4, "rtol": 2e-4}


class LinearSchedule:
    """percent p -> sigma 10 * (1 - p): keyframe sigmas easy to read."""

    def percent_to_sigma(self, percent: float) -> float:
        return 10.0 * (1.0 - percent)


class _Model:
    model_sampling = LinearSchedule()


def _strengths_over(group: HookKeyframeGroup, sigmas: list[float], repeat: int = 1) -> list[float]:
    group.initialize_timesteps(_Model())
    group.reset()
    options = {"sample_sigmas": torch.tensor([*sigmas, 0.0])}
    out = []
    for s in sigmas:
        for _ in range(repeat):  # cond and uncond ask at the same sigma: one step
            group.prepare_current_keyframe(torch.tensor(s), options)
        out.append(group.strength)
    return out


def test_keyframes_follow_percent_schedule_and_guaranteed_steps() -> None:
    group = HookKeyframeGroup()
    group.add(HookKeyframe(1.0, 0.0))
    group.add(HookKeyframe(0.5, 0.3))  # sigma 7
    group.add(HookKeyframe(0.25, 0.35, guarantee_steps=2))  # sigma 6.5
    group.add(HookKeyframe(0.0, 0.7))  # sigma 3
    # sigma 10, 8: still the first keyframe (7 not reached). sigma 6 reaches 7 and 6.5, but the
    # 0.5 keyframe guarantees itself one step first. sigma 4: 0.25, which holds two steps, so at
    # sigma 2 the 0.0 keyframe (reached at 3) waits.
    assert _strengths_over(group, [10.0, 8.0, 6.0, 4.0, 2.0], repeat=2) == [1.0, 1.0, 0.5, 0.25, 0.25]
    # Without guarantees the last keyframe reached wins at once.
    free = HookKeyframeGroup()
    for strength, start in ((1.0, 0.0), (0.5, 0.3), (0.25, 0.35), (0.0, 0.7)):
        free.add(HookKeyframe(strength, start, guarantee_steps=0))
    assert _strengths_over(free, [10.0, 8.0, 6.0, 4.0, 2.0]) == [1.0, 1.0, 0.25, 0.25, 0.0]


def test_keyframe_before_the_run_guarantees_nothing() -> None:
    # A run starting at sigma 5 (a second pass): keyframes at sigma 7 and 6 lie before it.
    group = HookKeyframeGroup()
    group.add(HookKeyframe(1.0, 0.0))
    group.add(HookKeyframe(0.5, 0.3))
    group.add(HookKeyframe(0.2, 0.4))
    assert _strengths_over(group, [5.0, 3.0]) == [0.2, 0.2]


def test_interpolated_and_float_keyframes() -> None:
    node = hook_nodes.CreateHookKeyframesInterpolated()
    (group,) = node.create_hook_keyframes(0.0, 2.0, "ease_in", 0.2, 0.6, 5)
    p = torch.linspace(0, 1, 5)
    assert [k.start_percent for k in group.keyframes] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6])
    assert [k.strength for k in group.keyframes] == pytest.approx((2.0 * p**2).tolist())
    assert [k.guarantee_steps for k in group.keyframes] == [1, 0, 0, 0, 0]
    eased = InterpolationMethod.get_weights(1.0, 3.0, 3, "ease_in_out")
    assert eased.tolist() == pytest.approx([1.0, 2.0, 3.0])
    (floats,) = hook_nodes.CreateHookKeyframesFromFloats().create_hook_keyframes([0.1, 0.7, 0.3], 0.0, 0.5)
    assert [k.start_percent for k in floats.keyframes] == pytest.approx([0.0, 0.25, 0.5])
    assert [k.strength for k in floats.keyframes] == pytest.approx([0.1, 0.7, 0.3])
    with pytest.raises(TypeError, match="floats_strength"):
        hook_nodes.CreateHookKeyframesFromFloats().create_hook_keyframes("x", 0.0, 1.0)  # type: ignore[arg-type]


def test_groups_combine_by_hook_identity() -> None:
    a = create_hook_lora({}, 1.0, 1.0)
    b = create_hook_lora({}, 0.5, 0.5)
    (both,) = hook_nodes.CombineHooks().combine_hooks(hooks_A=a, hooks_B=b)
    assert len(both) == 2
    (again,) = hook_nodes.CombineHooksFour().combine_hooks(hooks_A=both, hooks_C=a.clone())
    assert len(again) == 2  # a clone is the same hook
    assert hook_nodes.CombineHooksEight().combine_hooks() == (None,)
    (kf,) = hook_nodes.CreateHookKeyframe().create_hook_keyframe(0.5, 0.25)
    (scheduled,) = hook_nodes.SetHookKeyframes().set_hook_keyframes(both, kf)
    assert all(h.hook_keyframe.keyframes[0].strength == 0.5 for h in scheduled.hooks)
    assert all(h.hook_keyframe.is_empty() for h in both.hooks)  # the input is left alone
    ranges = hook_nodes.ConditioningTimestepsRange().create_range(0.2, 0.7)
    assert ranges == ((0.2, 0.7), (0.0, 0.2), (0.7, 1.0))


def test_cond_props_attach_hooks_mask_and_range() -> None:
    hooks = create_hook_lora({}, 1.0, 1.0)
    cond = [[torch.zeros(1, 2, 3), {"pooled_output": None}]]
    mask = torch.ones(4, 4)
    (out,) = set_conds_props([cond], 0.5, "mask bounds", mask=mask, hooks=hooks, timesteps_range=(0.1, 0.9))
    options = out[0][1]
    assert options["hooks"] is hooks and options["mask"].shape == (1, 4, 4)
    assert (options["mask_strength"], options["set_area_to_bounds"]) == (0.5, True)
    assert (options["start_percent"], options["end_percent"]) == (0.1, 0.9)
    assert "hooks" not in cond[0][1]
    # Hooks join the ones an entry already carries.
    other = create_hook_lora({}, 1.0, 1.0)
    (twice,) = set_conds_props([out], 1.0, "default", hooks=other)
    assert len(twice[0][1]["hooks"]) == 2
    (combined,) = set_default_conds_and_combine([cond], [cond], hooks=hooks)
    assert len(combined) == 2 and combined[1][1]["default"] is True and "default" not in combined[0][1]


# --- sampling with a scheduled LoRA hook on the tiny SD1 model ------------------------------------


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = tiny_pipeline.checkpoint_dict("sd1")
    path = tmp_path_factory.mktemp("hooks") / "sd1.safetensors"
    save_file(sd, str(path))
    return path, sd


def _lora() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    down = torch.randn(RANK, tiny_pipeline.CLIP_WIDTH, generator=g) * 0.3
    up = torch.randn(32, RANK, generator=g) * 0.3
    te_down = torch.randn(RANK, 64, generator=g) * 0.3
    te_up = torch.randn(64, RANK, generator=g) * 0.3
    lora = {
        f"{LORA_MODULE}.lora_down.weight": down,
        f"{LORA_MODULE}.lora_up.weight": up,
        f"{LORA_MODULE}.alpha": torch.tensor(float(RANK)),
        f"{TE_MODULE}.lora_down.weight": te_down,
        f"{TE_MODULE}.lora_up.weight": te_up,
        f"{TE_MODULE}.alpha": torch.tensor(float(RANK)),
    }
    return lora, up @ down


def _merged_model(tmp_path: Path, sd: dict[str, torch.Tensor], delta: torch.Tensor, scale: float, tag: str) -> Any:
    merged = dict(sd)
    key = f"model.diffusion_model.{UNET_MODULE}.weight"
    merged[key] = sd[key] + scale * delta
    path = tmp_path / f"merged_{tag}.safetensors"
    save_file(merged, str(path))
    return adapters.load_checkpoint(path)[0]


def _recording_sampler(outputs: list[tuple[float, torch.Tensor, torch.Tensor]]) -> KSAMPLER:
    """An euler sampler recording (sigma, x, guided prediction) at each step."""

    def run(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any, callback: Any, disable: Any) -> Any:
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:], strict=True):
            denoised = model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)
            outputs.append((float(sigma), x.clone(), denoised))
            x = x + (x - denoised) / sigma * (nxt - sigma)
        return x

    return KSAMPLER(run)


def test_scheduled_lora_hook_changes_only_its_cond_per_step(sd1: Any, tmp_path: Path) -> None:
    path, sd = sd1
    model, clip, _vae = adapters.load_checkpoint(path)
    lora, delta = _lora()
    strength_model = 0.8
    keyframes = HookKeyframeGroup()
    keyframes.add(HookKeyframe(1.0, 0.0))
    keyframes.add(HookKeyframe(0.5, 0.3))
    keyframes.add(HookKeyframe(0.0, 0.75))
    hooks = create_hook_lora(lora, strength_model, 1.0)
    (hooks,) = hook_nodes.SetHookKeyframes().set_hook_keyframes(hooks, keyframes)
    cond, pooled = clip.encode("a fox")
    uncond, upooled = clip.encode("")
    (positive,) = set_conds_props([[[cond, {"pooled_output": pooled}]]], 1.0, "default", hooks=hooks)
    negative = [[uncond, {"pooled_output": upooled}]]

    sampling = model.model_sampling
    sigmas = torch.cat([sampling.sigmas.flip(0)[:: 1000 // 6][:6], torch.zeros(1)]).float()
    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(4.0)
    outputs: list[tuple[float, torch.Tensor, torch.Tensor]] = []
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    guider.sample(torch.zeros_like(latent), latent, _recording_sampler(outputs), sigmas, seed=0)
    assert len(outputs) == 6

    # The keyframe rules written out: each keyframe starts at the sigma of its percent and,
    # guaranteeing one step, is used from the first step whose sigma is at or below that.
    starts = [(sampling.percent_to_sigma(0.3), 0.5), (sampling.percent_to_sigma(0.75), 0.0)]
    expected_strength = []
    for s in sigmas[:-1].tolist():
        strength = 1.0
        for start, value in starts:
            if start >= s:
                strength = value
        expected_strength.append(strength)
    assert len(set(expected_strength)) == 3  # the run really crosses both keyframes

    plain = adapters.load_checkpoint(path)[0]
    for (sigma, x, got), strength in zip(outputs, expected_strength, strict=True):
        hooked = _merged_model(tmp_path, sd, delta, strength_model * strength, f"{strength}")
        t = torch.tensor([sigma])
        want_cond = hooked(x, t, {"c_crossattn": cond})
        want_uncond = plain(x, t, {"c_crossattn": uncond})
        torch.testing.assert_close(got, want_uncond + 4.0 * (want_cond - want_uncond), **TOL)
    # The MODEL is back to its own weights and registrations after the run.
    assert model.hook_patches == {} and model.current_hooks is None
    t = torch.tensor([1.0])
    torch.testing.assert_close(model(x, t, {"c_crossattn": cond}), plain(x, t, {"c_crossattn": cond}))


def test_clip_hooks_encode_with_the_lora(sd1: Any, tmp_path: Path) -> None:
    path, sd = sd1
    _model, clip, _vae = adapters.load_checkpoint(path)
    lora, _ = _lora()
    hooks = create_hook_lora(lora, 1.0, 0.7)
    (hooked_clip,) = hook_nodes.SetClipHooks().apply_hooks(clip, schedule_clip=False, apply_to_conds=True, hooks=hooks)
    tokens = hooked_clip.tokenize("a fox")
    (entry,) = hooked_clip.encode_from_tokens_scheduled(tokens)
    assert entry[1]["hooks"] is hooks
    te_up, te_down = lora[f"{TE_MODULE}.lora_up.weight"], lora[f"{TE_MODULE}.lora_down.weight"]
    merged = dict(sd)
    key = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    merged[key] = sd[key] + 0.7 * (te_up @ te_down)
    ref_path = tmp_path / "te_merged.safetensors"
    save_file(merged, str(ref_path))
    ref_clip = adapters.load_checkpoint(ref_path)[1]
    want = ref_clip.encode_from_tokens_scheduled(ref_clip.tokenize("a fox"))[0]
    torch.testing.assert_close(entry[0], want[0], **TOL)
    # The CLIP given to the node is unchanged.
    assert "hooks" not in clip.encode_from_tokens_scheduled(tokens)[0][1]
    plain = clip.encode_from_tokens_scheduled(tokens)[0][0]
    assert (plain - entry[0]).abs().max() > 1e-3

    # Scheduled: one encoding per range of constant strength, each at its keyframe's strength.
    kf = HookKeyframeGroup()
    kf.add(HookKeyframe(1.0, 0.0))
    kf.add(HookKeyframe(0.0, 0.5))
    (timed,) = hook_nodes.SetHookKeyframes().set_hook_keyframes(hooks, kf)
    (scheduled_clip,) = hook_nodes.SetClipHooks().apply_hooks(clip, schedule_clip=True, apply_to_conds=False, hooks=timed)
    entries = scheduled_clip.encode_from_tokens_scheduled(tokens)
    assert [(e[1]["clip_start_percent"], e[1]["clip_end_percent"]) for e in entries] == [(0.0, 0.5), (0.5, 1.0)]
    torch.testing.assert_close(entries[0][0], want[0], **TOL)
    torch.testing.assert_close(entries[1][0], plain, **TOL)
    assert all("hooks" not in e[1] for e in entries)


def test_unregistered_hooks_are_dropped_from_conds() -> None:
    from plugins.core_nodes.hooks.sampling import filter_registered_hooks_on_conds

    a, b = create_hook_lora({}, 1.0, 1.0), create_hook_lora({}, 1.0, 1.0)
    both = a.clone_and_combine(b)
    conds = {"positive": [{"hooks": both}, {"hooks": both}], "negative": [{"hooks": b}]}
    registered = HookGroup()
    registered.add(a.hooks[0])
    filter_registered_hooks_on_conds(conds, {"registered_hooks": registered})
    first, second = conds["positive"]
    assert first["hooks"] is second["hooks"] and first["hooks"].hooks == a.hooks
    assert conds["negative"][0]["hooks"] is None
    filter_registered_hooks_on_conds(conds, {})
    assert all("hooks" not in c for c in conds["positive"])


# --- through the server ------------------------------------------------------------------------


async def test_hooked_conditioning_through_the_server(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path], lora_file: Path  # noqa: F811
) -> None:
    """At cfg 1 (no negative pass) a LoRA hook on the positive prompt samples as the LoRA loaded
    on the MODEL; a keyframe at strength 0 from the start samples as no LoRA; EasyCache at
    threshold 0 and context windows longer than the batch leave the run as it is."""
    from .node_helpers import run_ok, saved_latents, start_with_models

    server = await start_with_models(comfy_server, tmp_path, checkpoints=checkpoints["sd1"], loras=lora_file)
    sampler = {"seed": 3, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    lora = {"lora_name": lora_file.name}
    prompt: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoints["sd1"].name}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "hook": {"class_type": "CreateHookLoraModelOnly", "inputs": {**lora, "strength_model": 1.0}},
        "kf": {"class_type": "CreateHookKeyframe", "inputs": {"strength_mult": 0.0, "start_percent": 0.0}},
        "hook0": {"class_type": "SetHookKeyframes", "inputs": {"hooks": ["hook", 0], "hook_kf": ["kf", 0]}},
        "pos_hooked": {"class_type": "ConditioningSetProperties",
                       "inputs": {"cond_NEW": ["pos", 0], "strength": 1.0, "set_cond_area": "default", "hooks": ["hook", 0]}},
        "pos_zero": {"class_type": "ConditioningSetProperties",
                     "inputs": {"cond_NEW": ["pos", 0], "strength": 1.0, "set_cond_area": "default", "hooks": ["hook0", 0]}},
        "loaded": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["ckpt", 0], **lora, "strength_model": 1.0}},
        "cache": {"class_type": "EasyCache", "inputs": {"model": ["ckpt", 0], "reuse_threshold": 0.0,
                                                        "start_percent": 0.0, "end_percent": 1.0, "verbose": False}},
        "ctx": {"class_type": "ContextWindowsManual", "inputs": {
            "model": ["cache", 0], "context_length": 16, "context_overlap": 4, "context_schedule": "standard_static",
            "context_stride": 1, "closed_loop": False, "fuse_method": "pyramid", "dim": 0, "freenoise": False,
            "cond_retain_index_list": "", "split_conds_to_windows": False, "latent_retain_index_list": "",
            "causal_window_fix": True}},
    }  # fmt: skip
    runs = {"plain": ("ckpt", "pos"), "hooked": ("ckpt", "pos_hooked"), "loaded": ("loaded", "pos"),
            "zero": ("ckpt", "pos_zero"), "patched": ("ctx", "pos")}  # fmt: skip
    for name, (model, positive) in runs.items():
        prompt[f"k_{name}"] = {"class_type": "KSampler", "inputs": {**sampler, "model": [model, 0], "positive": [positive, 0],
                                                                   "negative": ["neg", 0], "latent_image": ["latent", 0]}}  # fmt: skip
        prompt[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"k_{name}", 0], "filename_prefix": f"h/{name}"}}
    latents = saved_latents(server, await run_ok(server, prompt))
    assert set(latents) == set(runs)
    assert not torch.allclose(latents["loaded"], latents["plain"], atol=1e-4)
    torch.testing.assert_close(latents["hooked"], latents["loaded"], **TOL)
    torch.testing.assert_close(latents["zero"], latents["plain"], **TOL)
    torch.testing.assert_close(latents["patched"], latents["plain"], **TOL)

