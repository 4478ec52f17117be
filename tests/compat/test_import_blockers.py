"""Modules real packs import that used to stop them loading: ``comfy_extras.nodes_hooks`` (with
``comfy.hooks``' builders), and the model-family modules of families this server does not run.

The hook classes are called as AnimateDiff-Evolved calls them, on tiny SD1 checkpoints, with the
shims installed by a real server; what can be honoured is compared with the core LoRA path, what
cannot must fail when it runs with an error naming it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.plugins.core_nodes import tiny_pipeline
from tests.plugins.core_nodes.golden import GOLDEN_DIR

PLUGINS = ["comfy_compat", "models", "core_nodes"]
GOLDEN = GOLDEN_DIR / "object_info_core.json"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "base": tiny_pipeline.write_checkpoint(root / "base.safetensors", "sd1", seed=0),
        "other": tiny_pipeline.write_checkpoint(root / "other.safetensors", "sd1", seed=1),
    }


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kohya LoRA on one CLIP-L MLP layer of the tiny SD1 model."""
    g = torch.Generator().manual_seed(5)
    sd = {
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_down.weight": torch.randn(2, 128, generator=g)
        * 0.3,
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight": torch.randn(64, 2, generator=g) * 0.3,
    }
    path = tmp_path_factory.mktemp("loras") / "clip_lora.safetensors"
    save_file(sd, str(path))
    return path


@pytest.fixture
async def shims(comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path], lora_file: Path) -> Any:
    for folder, paths in {"checkpoints": list(checkpoints.values()), "loras": [lora_file]}.items():
        (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
        for path in paths:
            (tmp_path / "models" / folder / path.name).symlink_to(path)
    return await comfy_server(plugins=PLUGINS)


def _mod(name: str) -> Any:
    return importlib.import_module(name)


def _clip(path: Path) -> Any:
    _, clip, _, _ = _mod("comfy.sd").load_checkpoint_guess_config(str(path))
    return clip


# --- comfy_extras.nodes_hooks ------------------------------------------------------------------


async def test_hook_classes_are_the_server_nodes_with_the_reference_interface(shims: Any) -> None:
    nodes_hooks = _mod("comfy_extras.nodes_hooks")
    status, info = await shims.json("GET", "/object_info")
    assert status == 200
    golden = json.loads(GOLDEN.read_text())
    names = _mod("comfy_extras._catalog").MODULES["nodes_hooks"]
    assert sorted(nodes_hooks.NODE_CLASS_MAPPINGS) == sorted(names)
    for name in names:
        cls = getattr(nodes_hooks, name)
        assert name in info and cls is nodes_hooks.NODE_CLASS_MAPPINGS[name]
        assert cls.NodeId == name and cls.NodeName == golden[name]["display_name"], name
        assert callable(getattr(cls, cls.FUNCTION)), name
    # The reference's Python class names where they differ from the node ids.
    assert nodes_hooks.CombineHooks.NodeId == "CombineHooks2"
    assert nodes_hooks.PairConditioningSetDefaultAndCombine.NodeId == "PairConditioningSetDefaultCombine"


async def test_set_clip_hooks_as_animatediff_calls_it_returns_the_clip(
    shims: Any, checkpoints: dict[str, Path]
) -> None:
    nodes_hooks = _mod("comfy_extras.nodes_hooks")
    clip = _clip(checkpoints["base"])
    hooks = nodes_hooks.CreateHookLora().create_hook("clip_lora.safetensors", 1.0, 1.0)[0]
    # AnimateDiff-Evolved: SetClipHooks.apply_hooks(self, clip, False, lora_hook): the hooks land
    # in apply_to_conds and `hooks` stays None, so the reference returns the CLIP as it is.
    (same,) = nodes_hooks.SetClipHooks.apply_hooks(object(), clip, False, hooks)
    assert same is clip


async def test_clip_lora_hook_equals_the_lora_loader(
    shims: Any, checkpoints: dict[str, Path], lora_file: Path
) -> None:
    nodes_hooks, sd, utils = _mod("comfy_extras.nodes_hooks"), _mod("comfy.sd"), _mod("comfy.utils")
    clip = _clip(checkpoints["base"])
    (hooks,) = nodes_hooks.CreateHookLora().create_hook("clip_lora.safetensors", 0.0, 0.7)
    (hooked,) = nodes_hooks.SetClipHooks().apply_hooks(
        clip, schedule_clip=False, apply_to_conds=False, hooks=hooks
    )
    assert hooked is not clip and hooked.patcher.forced_hooks is not None
    _, loaded = sd.load_lora_for_models(None, clip, utils.load_torch_file(str(lora_file)), 0.0, 0.7)
    torch.testing.assert_close(hooked.encode("a red boat")[0], loaded.encode("a red boat")[0])
    assert not torch.equal(hooked.encode("a red boat")[0], clip.encode("a red boat")[0])
    # The input CLIP is unchanged.
    assert not clip.patcher.patches


async def test_model_as_lora_hook_moves_the_clip_to_the_other_checkpoint(
    shims: Any, checkpoints: dict[str, Path]
) -> None:
    nodes_hooks = _mod("comfy_extras.nodes_hooks")
    base, other = _clip(checkpoints["base"]), _clip(checkpoints["other"])

    # AnimateDiff-Evolved's MaskableSDModelLoader subclasses the node and calls create_hook by keyword.
    class Subclass(nodes_hooks.CreateHookModelAsLora):
        def load(self, ckpt_name: str) -> Any:
            return self.create_hook(ckpt_name=ckpt_name, strength_model=1.0, strength_clip=1.0)[0]

    hooks = Subclass().load("other.safetensors")
    (weight_hook,) = hooks.hooks
    assert weight_hook.weights and all(v[0] == "model_as_lora" for v in weight_hook.weights.values())
    assert not any(k.startswith("model_sampling") for k in weight_hook.weights)
    (hooked,) = nodes_hooks.SetClipHooks().apply_hooks(base, False, False, hooks)
    torch.testing.assert_close(hooked.encode("a cat")[0], other.encode("a cat")[0], atol=1e-4, rtol=1e-4)
    # The model-only variant carries no CLIP strength.
    model_only = nodes_hooks.CreateHookModelAsLoraModelOnly().create_hook_model_only(
        "other.safetensors", 1.0
    )[0]
    assert model_only.hooks[0]._strength_clip == 0.0


async def test_clip_hooks_tag_conds_and_schedule_the_clip(shims: Any, checkpoints: dict[str, Path]) -> None:
    nodes_hooks, hooks_mod = _mod("comfy_extras.nodes_hooks"), _mod("comfy.hooks")
    clip = _clip(checkpoints["base"])
    (hooks,) = nodes_hooks.CreateHookLora().create_hook("clip_lora.safetensors", 1.0, 1.0)
    (tagging,) = nodes_hooks.SetClipHooks().apply_hooks(clip, False, True, hooks)
    (entry,) = tagging.encode_from_tokens_scheduled(tagging.tokenize("a red boat"))
    assert entry[1]["hooks"] is hooks
    keyframed = nodes_hooks.SetHookKeyframes().set_hook_keyframes(
        hooks, nodes_hooks.CreateHookKeyframe().create_hook_keyframe(0.5, 0.3)[0]
    )[0]
    (scheduled,) = nodes_hooks.SetClipHooks().apply_hooks(clip, True, False, keyframed)
    entries = scheduled.encode_from_tokens_scheduled(scheduled.tokenize("a red boat"))
    # Before the keyframe (0..0.3) the hook has no keyframe yet: strength 1; after it, 0.5.
    assert [(e[1]["clip_start_percent"], e[1]["clip_end_percent"]) for e in entries] == [(0.0, 0.3), (0.3, 1.0)]
    cond = [[torch.zeros(1, 77, 8), {"pooled_output": None}]]
    (attached,) = hooks_mod.set_conds_props([cond], 1.0, "default", hooks=hooks)
    assert attached[0][1]["hooks"] is hooks and "hooks" not in cond[0][1]


async def test_conditioning_properties_without_hooks_are_real(shims: Any) -> None:
    nodes_hooks = _mod("comfy_extras.nodes_hooks")
    cond = [[torch.zeros(1, 77, 8), {"pooled_output": None}]]
    mask = torch.ones(4, 4)
    (out,) = nodes_hooks.ConditioningSetProperties().set_properties(
        cond, 0.8, "mask bounds", mask=mask, timesteps=(0.2, 0.6)
    )
    options = out[0][1]
    assert options["mask"].shape == (1, 4, 4) and options["mask_strength"] == 0.8
    assert options["set_area_to_bounds"] is True
    assert (options["start_percent"], options["end_percent"]) == (0.2, 0.6)
    assert "mask" not in cond[0][1]  # the input is not changed
    default = [[torch.ones(1, 77, 8), {}]]
    (combined,) = nodes_hooks.ConditioningSetDefaultAndCombine().set_default_and_combine(cond, default)
    assert len(combined) == 2 and combined[1][1] == {"default": True}
    ranges = nodes_hooks.ConditioningTimestepsRange().create_range(0.25, 0.75)
    assert ranges == ((0.25, 0.75), (0.0, 0.25), (0.75, 1.0))


async def test_keyframes_and_combining(shims: Any) -> None:
    nodes_hooks, hooks_mod = _mod("comfy_extras.nodes_hooks"), _mod("comfy.hooks")
    (kf,) = nodes_hooks.CreateHookKeyframesInterpolated().create_hook_keyframes(
        0.0, 1.0, "ease_in", 0.0, 1.0, 3
    )
    assert [k.start_percent for k in kf.keyframes] == [0.0, 0.5, 1.0]
    assert [k.strength for k in kf.keyframes] == pytest.approx([0.0, 0.25, 1.0])  # p ** 2
    assert [k.guarantee_steps for k in kf.keyframes] == [1, 0, 0]
    (floats,) = nodes_hooks.CreateHookKeyframesFromFloats().create_hook_keyframes([2.0, 4.0], 0.0, 0.5)
    assert [(k.start_percent, k.strength) for k in floats.keyframes] == [(0.0, 2.0), (0.5, 4.0)]
    with pytest.raises(ValueError, match="interpolation"):
        hooks_mod.InterpolationMethod.get_weights(0, 1, 3, "cubic")
    a = hooks_mod.create_hook_lora({}, 1.0, 1.0)
    b = hooks_mod.create_hook_lora({}, 0.5, 0.5)
    (both,) = nodes_hooks.CombineHooksFour().combine_hooks(a, None, b)
    assert len(both) == 2
    assert nodes_hooks.CombineHooks().combine_hooks() == (None,)


# --- model families this server does not run --------------------------------------------------


async def test_cosmos_attention_is_a_real_layer_and_the_model_is_refused(shims: Any) -> None:
    predict2 = _mod("comfy.ldm.cosmos.predict2")
    not_run = _mod("comfy.ldm._not_run")
    torch.manual_seed(0)
    attn = predict2.Attention(16, None, n_heads=2, head_dim=8)
    for p in attn.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(1, 5, 16)
    q, k, v = attn.compute_qkv(x)
    assert q.shape == k.shape == v.shape == (1, 5, 2, 8)
    # By hand: per-head RMS norm of the projections, softmax attention, output projection.
    heads = [t.reshape(1, 5, 2, 8) for t in (x @ attn.q_proj.weight.T, x @ attn.k_proj.weight.T)]
    hq, hk = (
        torch.nn.functional.rms_norm(t, (8,), weight=n.weight, eps=1e-6)
        for t, n in zip(heads, (attn.q_norm, attn.k_norm), strict=True)
    )
    hv = (x @ attn.v_proj.weight.T).reshape(1, 5, 2, 8)
    scores = torch.einsum("bshd,bthd->bhst", hq, hk) / 8**0.5
    mixed = torch.einsum("bhst,bthd->bshd", scores.softmax(-1), hv).reshape(1, 5, 16)
    torch.testing.assert_close(attn(x), mixed @ attn.output_proj.weight.T, atol=1e-4, rtol=1e-4)
    # comfyui-tooling-nodes replaces forward with a function of (self, x, context, rope_emb, ...).
    assert attn.compute_attention(q, k, v, transformer_options={}).shape == (1, 5, 16)
    with pytest.raises(not_run.ModelFamilyNotRun, match="comfykernel does not run Cosmos"):
        predict2.MiniTrainDIT(
            max_img_h=8,
            max_img_w=8,
            max_frames=1,
            in_channels=4,
            out_channels=4,
            patch_spatial=2,
            patch_temporal=1,
        )


async def test_lightricks_helpers_follow_the_reference_and_models_are_refused(
    shims: Any, checkpoints: dict[str, Path]
) -> None:
    patchifier = _mod("comfy.ldm.lightricks.symmetric_patchifier")
    model = _mod("comfy.ldm.lightricks.model")
    audio_vae = _mod("comfy.ldm.lightricks.vae.audio_vae")
    av_model = _mod("comfy.ldm.lightricks.av_model")
    not_run = _mod("comfy.ldm._not_run")

    coords = torch.tensor([[[0, 1, 2], [0, 3, 1], [4, 0, 2]]])  # [B=1, (f, y, x), N=3]
    pixel = patchifier.latent_to_pixel_coords(coords, (8, 32, 32))
    assert pixel.tolist() == [[[0, 8, 16], [0, 96, 32], [128, 0, 64]]]
    causal = patchifier.latent_to_pixel_coords(coords, (8, 32, 32), causal_fix=True)
    assert causal[0, 0].tolist() == [0, 1, 9]  # max(0, f * 8 + 1 - 8)
    assert audio_vae.LATENT_DOWNSAMPLE_FACTOR == 4

    latents = torch.randn(2, 3, 2, 4, 6)
    tokens, grid = patchifier.SymmetricPatchifier(2).patchify(latents)
    assert tokens.shape == (2, 2 * 2 * 3, 3 * 4) and grid.shape == (2, 3, 12)
    assert grid[0, :, 1].tolist() == [0, 0, 2]  # second patch: frame 0, row 0, column 2
    back = patchifier.SymmetricPatchifier(2).unpatchify(tokens, 4, 6, 2, 3)
    assert torch.equal(back, latents)

    # Interleaved RoPE turns the pair (1, 0) by the angle: (cos, sin).
    angle = torch.tensor(0.3)
    pe = (torch.cos(angle).repeat(2), torch.sin(angle).repeat(2))
    rotated = model.apply_rotary_emb(torch.tensor([1.0, 0.0]), pe)
    torch.testing.assert_close(rotated, torch.stack([torch.cos(angle), torch.sin(angle)]))
    torch.testing.assert_close(
        model.generate_freq_grid_np(10000.0, 3, 48), model.generate_freq_grid_pytorch(10000.0, 3, 48, "cpu")
    )
    assert model.LTXRopeType.from_dict({"rope_type": "split"}) is model.LTXRopeType.SPLIT

    block = model.BasicTransformerBlock(16, 2, 8, context_dim=12)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    out = block(torch.randn(1, 4, 16), context=torch.randn(1, 3, 12), timestep=torch.randn(1, 1, 6 * 16))
    assert out.shape == (1, 4, 16) and torch.isfinite(out).all()

    # ComfyUI-LTXVideo subclasses the model; defining the subclass works, building it does not.
    class Patched(model.LTXVModel):
        pass

    for cls in (model.LTXVModel, Patched, av_model.LTXAVModel, audio_vae.AudioVAE):
        with pytest.raises(not_run.ModelFamilyNotRun, match="comfykernel does not run LTX-Video"):
            cls({})
    # isinstance never matches a model this server runs.
    sd_model, _, _, _ = _mod("comfy.sd").load_checkpoint_guess_config(str(checkpoints["base"]))
    modules = list(sd_model.model.modules())
    assert not any(
        isinstance(m, (model.LTXBaseModel, model.CrossAttention, av_model.LTXAVModel)) for m in modules
    )


async def test_nested_tensor_maps_operations_over_its_members(shims: Any) -> None:
    nested = _mod("comfy.nested_tensor")
    video, audio = torch.ones(1, 4, 2, 3, 3), torch.full((1, 8, 5, 2), 2.0)
    both = nested.NestedTensor([video, audio])
    assert both.shape == video.shape and both.ndim == 5 and both.dtype == torch.float32
    scaled = (both * 3 - 1) / 2
    assert torch.equal(scaled.tensors[0], torch.ones_like(video)) and torch.equal(
        scaled.tensors[1], torch.full_like(audio, 2.5)
    )
    summed = both + nested.NestedTensor([video, audio])
    assert torch.equal(summed.tensors[1], audio * 2)
    assert both[0:1].tensors[0].shape == video.shape and both.tensors[0] is video  # operations copy
    joined = nested.cat_nested([both, both], dim=0)
    assert [t.shape[0] for t in joined.unbind()] == [2, 2]


async def test_an_sd1_clip_is_not_a_stable_cascade_clip(shims: Any, checkpoints: dict[str, Path]) -> None:
    # ComfyUI_tinyterraNodes picks its encoding branch by these isinstance checks.
    sdxl_clip, sd1_clip = _mod("comfy.sdxl_clip"), _mod("comfy.sd1_clip")
    stack = _clip(checkpoints["base"]).cond_stage_model
    assert isinstance(stack, sd1_clip.SD1ClipModel)
    assert not isinstance(stack, sdxl_clip.StableCascadeClipModel)
    assert not isinstance(stack, sdxl_clip.SDXLClipModel | sdxl_clip.SDXLRefinerClipModel)
