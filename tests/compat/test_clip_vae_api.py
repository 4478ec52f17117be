"""The reference's CLIP and VAE object API, used by a pack's nodes in a real server.

``packs/clipvae_pack`` encodes the way ComfyUI_ADV_CLIP_emb does (``clip.tokenizer``,
``cond_stage_model`` clip options, ``clip.patcher``, ``clip_l.encode_token_weights``), patches a
CLIP clone with ``add_patches`` (Easy-Use / Inspire) and decodes through ``decode_tiled`` and
``first_stage_model`` (Impact). The tests compare what those nodes saved with the core nodes'
results for the same work, on tiny random-weight SD1 and SDXL checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters
from tests.compat.helpers import PACKS
from tests.plugins.core_nodes import test_workflows_e2e, tiny_pipeline
from tests.plugins.core_nodes.node_helpers import messages, run_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGINS = ["comfy_compat", "models", "core_nodes"]
# The tiny SD1 LoRA of the core end-to-end tests (one UNet attention layer, one CLIP-L layer).
lora_file = test_workflows_e2e.lora_file
TEXT = "a (glass:1.3) bottle, (sunny beach:0.8)"
PATCH_VALUE = 0.05
# A clip skip that changes the family's default (SDXL reads the penultimate layer already).
SKIP = {"sd1": -2, "sdxl": -1}
# The checkpoint key of the weight the pack patches, by family, and the reference key it uses.
PATCHED = {
    "sd1": (
        "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
        "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
    ),
    "sdxl": (
        "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight",
        "clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per family the tiny checkpoint and a copy with the patched weight changed in the file."""
    root = tmp_path_factory.mktemp("clipvae")
    out: dict[str, Path] = {}
    for family, (file_key, _) in PATCHED.items():
        sd = tiny_pipeline.checkpoint_dict(family)
        save_file(sd, str(root / f"tiny_{family}.safetensors"))
        sd[file_key] = sd[file_key] + torch.full_like(sd[file_key], PATCH_VALUE)
        save_file(sd, str(root / f"tiny_{family}_changed.safetensors"))
        out[family] = root / f"tiny_{family}.safetensors"
        out[family + "_changed"] = root / f"tiny_{family}_changed.safetensors"
    return out


@pytest.fixture
async def server(comfy_server: Any, tmp_path: Path, files: dict[str, Path]) -> Any:
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    for path in files.values():
        (folder / path.name).symlink_to(path)
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])


def _text_prompt(family: str) -> dict[str, Any]:
    def save(source: str) -> dict[str, Any]:
        return {
            "class_type": "ModelPackSaveConditioning",
            "inputs": {"conditioning": [source, 0], "filename_prefix": f"cond_{source}"},
        }

    clip, changed = ["ckpt", 1], ["changed", 1]
    nodes: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"tiny_{family}.safetensors"}},
        "changed": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": f"tiny_{family}_changed.safetensors"},
        },
        "skip": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": clip, "stop_at_clip_layer": SKIP[family]}},
        "diff": {
            "class_type": "ClipVaePackAddDiff",
            "inputs": {"clip": clip, "key": PATCHED[family][1], "value": PATCH_VALUE},
        },
        "core": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": clip}},
        "core_skip": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": ["skip", 0]}},
        "patched": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": ["diff", 0]}},
        "file_changed": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": changed}},
        "pack": {
            "class_type": "ClipVaePackTokenWeights",
            "inputs": {"clip": clip, "text": TEXT, "filename_prefix": "pack"},
        },
        "pack_skip": {
            "class_type": "ClipVaePackTokenWeights",
            "inputs": {"clip": ["skip", 0], "text": TEXT, "filename_prefix": "pack_skip"},
        },
        "pack_patched": {
            "class_type": "ClipVaePackTokenWeights",
            "inputs": {"clip": ["diff", 0], "text": TEXT, "filename_prefix": "pack_patched"},
        },
        "vae": {
            "class_type": "ClipVaePackVae",
            "inputs": {"vae": ["ckpt", 2], "size": 16, "filename_prefix": "vae"},
        },
    }
    for name in ("core", "core_skip", "patched", "file_changed"):
        nodes["save_" + name] = save(name)
    return nodes


async def _outputs(server: Any, prompt: dict[str, Any]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The tensors each output node saved and the flags it reported, by node id."""
    frames = await run_prompt(server, prompt, timeout=240)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    tensors, flags = {}, {}
    for data in messages(frames, "executed"):
        (saved,) = data["output"]["latents"]
        path = Path(server.kernel.settings.output_path) / saved["subfolder"] / saved["filename"]
        tensors[data["node"].removeprefix("save_")] = load_file(str(path))
        if "flags" in data["output"]:
            flags[data["node"]] = data["output"]["flags"][0]
    return tensors, flags


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
async def test_pack_reaches_into_clip_and_vae_like_real_packs(server: Any, family: str) -> None:
    got, flags = await _outputs(server, _text_prompt(family))
    core, pack = got["core"], got["pack"]
    width = tiny_pipeline.CLIP_WIDTH * (2 if family == "sdxl" else 1)
    assert core["cond"].shape == (1, 77, width)

    # What the pack saw: the reference's classes and object graph.
    seen = flags["pack"]
    assert seen["is_clip"] and seen["patcher_over_model"] and seen["patcher_is_model_patcher"]
    assert seen["has_transformer"]
    assert (seen["is_sd1"], seen["is_sdxl"]) == ((True, False) if family == "sd1" else (False, True))
    assert seen["sub_tokenizers"] == (["clip_l"] if family == "sd1" else ["clip_g", "clip_l"])
    assert seen["layer_idx"] is None and flags["pack_skip"]["layer_idx"] == SKIP[family]

    for pack_node, core_node in (("pack", "core"), ("pack_skip", "core_skip"), ("pack_patched", "patched")):
        theirs, ours = got[pack_node], got[core_node]
        # cond_stage_model.encode_token_weights(tokens) is CLIPTextEncode, bit for bit ...
        assert torch.equal(theirs["cond_set"], ours["cond"]), pack_node
        assert torch.equal(theirs["pooled_set"], ours["pooled_output"]), pack_node
        assert torch.equal(theirs["cond_api"], ours["cond"]) and torch.equal(theirs["pooled_api"], ours["pooled_output"])
        # ... and so are its members, one encoder each (SDXL: CLIP-L's features, then bigG's).
        assert torch.equal(theirs["cond_triples"], theirs["cond_l"])
        if family == "sd1":
            assert torch.equal(theirs["cond_l"], ours["cond"])
        else:
            joined = torch.cat([theirs["cond_l"], theirs["cond_g"]], dim=-1)
            assert torch.equal(joined, ours["cond"]) and torch.equal(theirs["pooled_g"], ours["pooled_output"])
    assert not torch.equal(got["core_skip"]["cond"], core["cond"])

    # add_patches on a clone is the checkpoint changed the same way; the original is untouched.
    assert _close(got["patched"]["cond"], got["file_changed"]["cond"])
    assert _close(got["patched"]["pooled_output"], got["file_changed"]["pooled_output"])
    assert not _close(got["patched"]["cond"], core["cond"])
    assert torch.equal(pack["cond_set"], core["cond"])

    # The VAE: decode_tiled close to decode; first_stage_model is the network decode runs.
    vae, vae_flags = got["vae"], flags["vae"]
    assert vae_flags["is_vae"] and vae_flags["patcher_over_model"] and vae_flags["sd_keys_match"]
    assert vae_flags["decoder_calls"] == 1 and vae_flags["memory_positive"]
    ratio = vae_flags["ratios"][0]
    assert vae_flags["ratios"] == [ratio, ratio, ratio] and vae_flags["channels"] == [4, 3]
    assert vae_flags["temporal"] is None
    assert vae["decoded"].shape == (1, 16 * ratio, 16 * ratio, 3)
    assert 0.0 <= float(vae["decoded"].min()) and float(vae["decoded"].max()) <= 1.0
    assert torch.allclose(vae["by_hand"], vae["decoded"], atol=1e-5)
    # One tile is the plain decode; four overlapping ones blend to nearly it (the tiny random
    # network's group norms see other statistics per tile, so not exactly).
    assert torch.allclose(vae["one_tile"], vae["decoded"], atol=1e-5)
    assert vae["tiled"].shape == vae["decoded"].shape
    assert not torch.equal(vae["tiled"], vae["decoded"])  # it really went through tiles
    assert (vae["tiled"] - vae["decoded"]).abs().mean() < 0.1
    assert vae["encoded"].shape == vae["encoded_tiled"].shape == (1, 4, 16, 16)
    assert torch.allclose(vae["encoded_one"], vae["encoded"], atol=1e-5)
    assert not torch.equal(vae["encoded_tiled"], vae["encoded"])
    # Loose: the random tiny encoder normalizes each tile over its own statistics.
    assert (vae["encoded_tiled"] - vae["encoded"]).abs().mean() < 0.5 * vae["encoded"].abs().mean()


async def test_lora_through_comfy_lora_onto_a_clip_clone_is_lora_loader(
    comfy_server: Any, files: dict[str, Path], lora_file: Path
) -> None:
    """Inspire / Easy-Use LoRA block weights: the CLIP's key map from its ``cond_stage_model``,
    ``comfy.lora.load_lora``, then ``add_patches`` on a clone."""
    await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])
    import comfy.lora
    import comfy.utils

    model, clip, _ = adapters.load_checkpoint(files["sd1"])
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    assert key_map["lora_te_text_model_encoder_layers_1_mlp_fc2"] == (
        "clip_l.transformer.text_model.encoder.layers.1.mlp.fc2.weight"
    )
    patches = comfy.lora.load_lora(comfy.utils.load_torch_file(str(lora_file)), key_map, log_missing=False)
    patched = clip.clone()
    assert patched.add_patches(patches, 0.7) == list(patches)
    _, expected = adapters.apply_lora(model, clip, lora_file, 0.0, 0.7)
    assert expected is not None
    torch.testing.assert_close(patched.encode(TEXT)[0], expected.encode(TEXT)[0])
    assert not torch.equal(patched.encode(TEXT)[0], clip.encode(TEXT)[0])
