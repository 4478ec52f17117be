"""Model / CLIP merging and the save nodes, on two tiny random SD1 checkpoints (and one SDXL).

Merges are checked against the formulas written out per key on the two models' own weights;
saved files are read back through our checkpoint / VAE / CLIP loaders (and diffusers'
``from_single_file``) and must give the in-memory merge's UNet and text-encoder outputs exactly.
The nodes also run through the real server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from plugins.core_nodes.models import adapters, saving
from plugins.core_nodes.models.merging import block_ratio
from plugins.core_nodes.nodes.model_merging import (
    MODEL_SPECIFIC,
    CLIPMergeAdd,
    CLIPMergeSimple,
    CLIPMergeSubtract,
    ModelMergeAdd,
    ModelMergeBlocks,
    ModelMergeSimple,
    ModelMergeSubtract,
)

from . import tiny_pipeline, tiny_sd
from .node_helpers import messages, run_prompt, start_with_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge_ckpts")
    return {
        "a": tiny_pipeline.write_checkpoint(root / "tiny_a.safetensors", "sd1", seed=0),
        "b": tiny_pipeline.write_checkpoint(root / "tiny_b.safetensors", "sd1", seed=7),
    }


@pytest.fixture(scope="module")
def loaded(pair: dict[str, Path]) -> dict[str, Any]:
    (m1, c1, v1), (m2, c2, _) = adapters.load_checkpoint(pair["a"]), adapters.load_checkpoint(pair["b"])
    return {"m1": m1, "c1": c1, "v1": v1, "m2": m2, "c2": c2}


def _unet(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in model.unet.state_dict().items()}


def _clip_l(clip: Any) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in clip.stack.encoders["l"].model.state_dict().items()}


def _close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tol: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    worst = max(float((got[k].float() - want[k]).abs().max()) for k in want)
    assert worst <= tol, worst


def _denoise(model: Any, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, tiny_pipeline.CLIP_WIDTH, generator=g)
    return model(x, torch.tensor([2.5]), {"c_crossattn": context})


# --- merge formulas --------------------------------------------------------------------------------


def test_block_ratio_takes_the_longest_matching_name() -> None:
    ratios = {"input_blocks.1": 0.1, "input_blocks.1.1.": 0.2, "out": 0.3}
    assert block_ratio("input_blocks.1.1.proj_in.weight", ratios, 0.9) == 0.2
    assert block_ratio("input_blocks.1.0.skip.weight", ratios, 0.9) == 0.1
    assert block_ratio("output_blocks.3.0.weight", ratios, 0.9) == 0.3  # "out" prefixes "output_blocks"
    assert block_ratio("time_embed.0.weight", ratios, 0.9) == 0.9


def test_simple_subtract_add_are_the_formulas_per_key(loaded: dict[str, Any]) -> None:
    m1, m2 = loaded["m1"], loaded["m2"]
    w1, w2 = _unet(m1), _unet(m2)
    (simple,) = ModelMergeSimple().merge(m1, m2, 0.3)
    _close(saving.unet_weights(simple), {k: 0.3 * w1[k] + 0.7 * w2[k] for k in w1})
    (diff,) = ModelMergeSubtract().merge(m1, m2, 1.5)
    _close(saving.unet_weights(diff), {k: 1.5 * (w1[k] - w2[k]) for k in w1})
    (added,) = ModelMergeAdd().merge(m1, diff)
    _close(saving.unet_weights(added), {k: w1[k] + 1.5 * (w1[k] - w2[k]) for k in w1}, 1e-5)
    # The inputs are left as they were.
    _close(saving.unet_weights(m1), w1, 0.0)
    assert not m1.patches


def test_merging_a_merge_carries_the_other_models_patches(loaded: dict[str, Any]) -> None:
    m1, m2 = loaded["m1"], loaded["m2"]
    w1, w2 = _unet(m1), _unet(m2)
    (half,) = ModelMergeSimple().merge(m1, m2, 0.5)
    (again,) = ModelMergeSimple().merge(m2, half, 0.25)  # 0.25 * m2 + 0.75 * (m1 + m2) / 2
    _close(saving.unet_weights(again), {k: 0.25 * w2[k] + 0.375 * (w1[k] + w2[k]) for k in w1})


def test_model_merge_blocks_against_a_per_key_ratio(loaded: dict[str, Any]) -> None:
    m1, m2 = loaded["m1"], loaded["m2"]
    w1, w2 = _unet(m1), _unet(m2)
    (merged,) = ModelMergeBlocks().merge(m1, m2, input=0.2, middle=0.5, out=0.9)

    def ratio(key: str) -> float:
        # Written out: input_blocks.* -> input, middle_block.* -> middle, output_blocks.* and out.*
        # -> out (both start with "out"), the rest (time_embed) -> the first ratio, input.
        head = key.split(".")[0]
        return {"input_blocks": 0.2, "middle_block": 0.5, "output_blocks": 0.9, "out": 0.9}.get(head, 0.2)

    _close(saving.unet_weights(merged), {k: ratio(k) * w1[k] + (1 - ratio(k)) * w2[k] for k in w1})


def test_model_specific_sd1_merge_uses_each_blocks_ratio(loaded: dict[str, Any]) -> None:
    m1, m2 = loaded["m1"], loaded["m2"]
    w1, w2 = _unet(m1), _unet(m2)
    node = MODEL_SPECIFIC["ModelMergeSD1"]
    names = node.INPUT_TYPES()["required"]
    ratios = {name: (i % 10) / 10 for i, name in enumerate(n for n in names if not n.startswith("model"))}
    (merged,) = node().merge(m1, m2, **ratios)

    def ratio(key: str) -> float:
        parts = key.split(".")
        block = f"{parts[0]}.{parts[1]}." if parts[0] in ("input_blocks", "middle_block", "output_blocks") else parts[0] + "."
        return ratios[block]

    _close(saving.unet_weights(merged), {k: ratio(k) * w1[k] + (1 - ratio(k)) * w2[k] for k in w1})


def test_clip_merges_are_the_formulas_and_leave_position_ids(loaded: dict[str, Any]) -> None:
    c1, c2 = loaded["c1"], loaded["c2"]
    l1, l2 = _clip_l(c1), _clip_l(c2)
    (simple,) = CLIPMergeSimple().merge(c1, c2, 0.25)
    _close(saving.text_weights(simple)["l"], {k: 0.25 * l1[k] + 0.75 * l2[k] for k in l1})
    (diff,) = CLIPMergeSubtract().merge(c1, c2, 2.0)
    _close(saving.text_weights(diff)["l"], {k: 2.0 * (l1[k] - l2[k]) for k in l1}, 1e-5)
    (added,) = CLIPMergeAdd().merge(c1, c2)
    _close(saving.text_weights(added)["l"], {k: l1[k] + l2[k] for k in l1}, 1e-5)
    assert not any(k.endswith((".position_ids", ".logit_scale")) for k in added.patcher.patches)


# --- saving and reading back -----------------------------------------------------------------------


def test_saved_merge_reloads_to_the_in_memory_merge(loaded: dict[str, Any], tmp_path: Path) -> None:
    m1, m2, c1, c2, vae = loaded["m1"], loaded["m2"], loaded["c1"], loaded["c2"], loaded["v1"]
    (model,) = ModelMergeSimple().merge(m1, m2, 0.4)
    (clip,) = CLIPMergeSimple().merge(c1, c2, 0.6)
    path = tmp_path / "merged.safetensors"
    saving.write(path, saving.checkpoint_state_dict(model, clip, vae), {"prompt": ""})
    back_model, back_clip, back_vae = adapters.load_checkpoint(path)
    assert torch.equal(_denoise(back_model), _denoise(model))
    assert not torch.equal(_denoise(model), _denoise(m1))
    for got, want in zip(back_clip.encode("a tiny glass bottle"), clip.encode("a tiny glass bottle"), strict=True):
        assert want is not None and torch.equal(got, want)
    pixels = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(back_vae.encode(pixels), vae.encode(pixels))


def test_sdxl_checkpoint_layout_round_trips_openclip_g(tmp_path: Path) -> None:
    source = tiny_pipeline.write_checkpoint(tmp_path / "xl.safetensors", "sdxl", seed=2)
    model, clip, vae = adapters.load_checkpoint(source)
    sd = saving.checkpoint_state_dict(model, clip, vae)
    original = load_file(str(source))
    # Every tensor the original file holds comes back under the same key, unchanged.
    for key, value in original.items():
        assert key in sd, key
        assert torch.equal(sd[key].to(value.dtype), value), key
    assert sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"].shape == (1, 77)
    meta = saving.checkpoint_metadata(model, "xl 3", {"1": {}}, None, False)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.title"] == "xl 3" and meta["modelspec.predict_key"] == "epsilon"


def test_v_prediction_model_gets_the_marker(loaded: dict[str, Any]) -> None:
    from plugins.core_nodes.models.model_base import ModelType

    v_model = loaded["m1"].clone()
    v_model.model = type(v_model.model).__new__(type(v_model.model))
    v_model.model.__dict__.update(loaded["m1"].model.__dict__)
    v_model.model.model_type = ModelType.V_PREDICTION
    sd = saving.checkpoint_state_dict(v_model)
    assert sd["v_pred"].numel() == 0
    assert saving.checkpoint_metadata(v_model, "t", None, None, False)["modelspec.predict_key"] == "v"
    assert "modelspec.architecture" not in saving.checkpoint_metadata(v_model, "t", None, None, False)


def test_diffusers_reads_the_saved_checkpoint(loaded: dict[str, Any], tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    (model,) = ModelMergeSimple().merge(loaded["m1"], loaded["m2"], 0.7)
    path = tmp_path / "merged.safetensors"
    saving.write(path, saving.checkpoint_state_dict(model, loaded["c1"], loaded["v1"]), None)
    config = tmp_path / "config" / "unet"
    config.mkdir(parents=True)
    (config / "config.json").write_text(
        json.dumps({"sample_size": 16, **tiny_sd.diffusers_config(tiny_pipeline.UNETS["sd1"])})
    )
    unet = UNet2DConditionModel.from_single_file(
        str(path), config=str(config.parent), subfolder="unet", local_files_only=True
    )
    merged = saving.unet_weights(model)
    assert torch.equal(unet.conv_in.weight, merged["input_blocks.0.0.weight"])
    assert torch.equal(unet.conv_out.bias, merged["out.2.bias"])
    assert torch.equal(
        unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight,
        merged["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"],
    )
    assert sum(p.numel() for p in unet.parameters()) == sum(t.numel() for t in merged.values())


def test_clip_files_load_through_the_clip_loader(loaded: dict[str, Any], tmp_path: Path) -> None:
    (clip,) = CLIPMergeSimple().merge(loaded["c1"], loaded["c2"], 0.5)
    files = saving.clip_files(clip)
    assert list(files) == ["clip_l"]
    path = tmp_path / "clip_l.safetensors"
    saving.write(path, files["clip_l"], None)
    back = adapters.load_clip([path], "stable_diffusion")
    for got, want in zip(back.encode("glass"), clip.encode("glass"), strict=True):
        assert want is not None and torch.equal(got, want)


# --- through the server ----------------------------------------------------------------------------


async def test_merge_and_save_nodes_through_the_server(
    comfy_server: Any, tmp_path: Path, pair: dict[str, Path], loaded: dict[str, Any]
) -> None:
    server = await start_with_models(comfy_server, tmp_path, checkpoints=list(pair.values()))
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": pair["a"].name}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": pair["b"].name}},
        "3": {"class_type": "ModelMergeSD1", "inputs": {
            "model1": ["1", 0], "model2": ["2", 0],
            **{n: 0.3 for n in MODEL_SPECIFIC["ModelMergeSD1"].BLOCKS}, "middle_block.1.": 0.8,
        }},  # fmt: skip
        "4": {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.5}},
        "5": {"class_type": "CheckpointSave", "inputs": {
            "model": ["3", 0], "clip": ["4", 0], "vae": ["1", 2], "filename_prefix": "checkpoints/merged",
        }},  # fmt: skip
        "6": {"class_type": "ModelSave", "inputs": {"model": ["3", 0], "filename_prefix": "unets/m"}},
        "7": {"class_type": "VAESave", "inputs": {"vae": ["1", 2], "filename_prefix": "vae/ComfyUI_vae"}},
        "8": {"class_type": "CLIPSave", "inputs": {"clip": ["4", 0], "filename_prefix": "clip/merged"}},
    }
    workflow = {"nodes": [], "version": 0.4}
    # A second prompt (another CLIP ratio: the saver runs again, not from the cache) numbers on.
    second = {**prompt, "4": {**prompt["4"], "inputs": {**prompt["4"]["inputs"], "ratio": 0.25}}}
    for run in (prompt, second):
        frames = await run_prompt(server, run, extra_data={"extra_pnginfo": {"workflow": workflow}})
        assert not messages(frames, "execution_error"), messages(frames, "execution_error")
        assert messages(frames, "execution_success")
    out = Path(server.kernel.settings.output_path)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "merged_00001_.safetensors",
        "merged_00002_.safetensors",
    ]
    saved = out / "checkpoints" / "merged_00001_.safetensors"
    with safe_open(str(saved), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prompt"]) == prompt and json.loads(meta["workflow"]) == workflow
    assert meta["modelspec.predict_key"] == "epsilon"

    ratios = {n: 0.3 for n in MODEL_SPECIFIC["ModelMergeSD1"].BLOCKS} | {"middle_block.1.": 0.8}
    (model,) = MODEL_SPECIFIC["ModelMergeSD1"]().merge(loaded["m1"], loaded["m2"], **ratios)
    (clip,) = CLIPMergeSimple().merge(loaded["c1"], loaded["c2"], 0.5)
    back_model, back_clip, _ = adapters.load_checkpoint(saved)
    assert torch.equal(_denoise(back_model), _denoise(model))
    assert torch.equal(back_clip.encode("bottle")[0], clip.encode("bottle")[0])
    unet_only = load_file(str(out / "unets" / "m_00001_.safetensors"))
    assert all(k.startswith("model.diffusion_model.") for k in unet_only)
    assert torch.equal(
        adapters.load_unet(out / "unets" / "m_00001_.safetensors").unet.state_dict()["middle_block.1.proj_in.weight"],
        saving.unet_weights(model)["middle_block.1.proj_in.weight"],
    )
    vae = adapters.load_vae(out / "vae" / "ComfyUI_vae_00001_.safetensors")
    assert vae.get_sd().keys() == loaded["v1"].get_sd().keys()
    with safe_open(str(out / "clip" / "merged_clip_l_00001_.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "pt"


async def test_a_save_prefix_outside_the_output_folder_is_a_node_error(
    comfy_server: Any, tmp_path: Path, pair: dict[str, Path]
) -> None:
    server = await start_with_models(comfy_server, tmp_path, checkpoints=pair["a"])
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": pair["a"].name}},
        "2": {"class_type": "VAESave", "inputs": {"vae": ["1", 2], "filename_prefix": "../../escape"}},
    }
    frames = await run_prompt(server, prompt)
    (error,) = messages(frames, "execution_error")
    assert error["node_id"] == "2"
    assert not list(tmp_path.rglob("escape*"))
