"""LoraSave (LoRA extraction), the bypass LoRA loaders and HypernetworkLoader.

Extraction is checked against the SVD and clamp written out here and read back through our LoRA
loader; bypass against the merged LoRA; the hypernetwork patch against its MLPs written out by
hand. All four nodes also run through the real server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters, saving
from plugins.core_nodes.models.hypernetwork import HypernetworkError, build_patch
from plugins.core_nodes.models.lora_bypass import BypassLayer, bypass_lora
from plugins.core_nodes.models.lora_extract import extract, extract_lora
from plugins.core_nodes.nodes.model_merging import CLIPMergeSubtract, ModelMergeSubtract

from . import tiny_pipeline
from .node_helpers import messages, run_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WIDTH = tiny_pipeline.CLIP_WIDTH


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora_tools")
    g = torch.Generator().manual_seed(11)
    lora = {
        # A linear LoRA on a cross-attention key, a 3x3 LoCon on the first convolution, a bias
        # difference, and a CLIP-L LoRA.
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(4, WIDTH, generator=g),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(32, 4, generator=g),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(2.0),
        "lora_unet_input_blocks_0_0.lora_down.weight": torch.randn(2, 4, 3, 3, generator=g) * 0.3,
        "lora_unet_input_blocks_0_0.lora_up.weight": torch.randn(32, 2, 1, 1, generator=g) * 0.3,
        "lora_unet_out_2.diff_b": torch.randn(4, generator=g) * 0.1,
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_down.weight": torch.randn(2, 128, generator=g) * 0.3,
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight": torch.randn(WIDTH, 2, generator=g) * 0.3,
    }
    save_file(lora, str(root / "tiny_lora.safetensors"))
    torch.save(_hypernetwork(), root / "tiny_hn.pt")
    return {
        "a": tiny_pipeline.write_checkpoint(root / "hn_a.safetensors", "sd1", seed=0),
        "b": tiny_pipeline.write_checkpoint(root / "hn_b.safetensors", "sd1", seed=5),
        "lora": root / "tiny_lora.safetensors",
        "hypernetwork": root / "tiny_hn.pt",
    }


def _hypernetwork() -> dict[Any, Any]:
    """An A1111 hypernetwork: relu MLPs with layer norms for the 32-wide self-attention and the
    64-wide cross-attention context."""
    g = torch.Generator().manual_seed(2)

    def mlp(dim: int) -> dict[str, torch.Tensor]:
        return {
            "linear.0.weight": torch.randn(2 * dim, dim, generator=g) * 0.2,
            "linear.0.bias": torch.randn(2 * dim, generator=g) * 0.1,
            "linear.1.weight": 1 + 0.1 * torch.randn(2 * dim, generator=g),
            "linear.1.bias": 0.1 * torch.randn(2 * dim, generator=g),
            "linear.2.weight": torch.randn(dim, 2 * dim, generator=g) * 0.2,
            "linear.2.bias": torch.randn(dim, generator=g) * 0.1,
            "linear.3.weight": 1 + 0.1 * torch.randn(dim, generator=g),
            "linear.3.bias": 0.1 * torch.randn(dim, generator=g),
        }

    return {
        32: [mlp(32), mlp(32)],
        WIDTH: [mlp(WIDTH), mlp(WIDTH)],
        "activation_func": "relu",
        "is_layer_norm": True,
        "use_dropout": False,
        "activate_output": False,
        "name": "tiny",
    }


def _denoise(model: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, WIDTH, generator=g)
    return model(x, torch.tensor([2.5]), {"c_crossattn": context})


# --- extraction ------------------------------------------------------------------------------------


def _written_out(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's extraction: rank capped by both sizes; SVD of the (flattened) difference;
    up = U_r S_r, down = V_r^T; both clamped to +-(0.99 quantile of their entries together)."""
    out_dim, in_dim = diff.shape[:2]
    r = min(rank, out_dim, in_dim)
    u, s, vh = torch.linalg.svd(diff.reshape(out_dim, -1))
    up, down = u[:, :r] * s[:r], vh[:r]
    q = torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.99)
    up, down = up.clamp(-q, q), down.clamp(-q, q)
    if diff.ndim == 4:
        return up.reshape(out_dim, r, 1, 1), down.reshape(r, in_dim, *diff.shape[2:])
    return up, down


@pytest.mark.parametrize("shape", [(24, 40), (16, 8, 3, 3), (16, 8, 1, 1)])
@pytest.mark.parametrize("rank", [3, 64])
def test_extract_lora_is_the_clamped_svd(shape: tuple[int, ...], rank: int) -> None:
    diff = torch.randn(*shape, generator=torch.Generator().manual_seed(4)) * 0.01
    up, down = extract_lora(diff, rank)
    want_up, want_down = _written_out(diff, rank)
    assert up.shape == want_up.shape and down.shape == want_down.shape
    # SVD signs are the library's; the product is not.
    assert torch.allclose(up.flatten(1) @ down.flatten(1), want_up.flatten(1) @ want_down.flatten(1), atol=1e-6)


def test_a_full_rank_extraction_reproduces_the_difference() -> None:
    # A small rank-1 difference (a per-output-channel change, nearly flat along the inputs): its
    # SVD factors hold no outliers, so the reference's clamp trims nothing and the extracted pair
    # gives the difference back. (Random differences lose their top 1% of factor entries to the
    # clamp, by the reference's design: see test_extract_lora_is_the_clamped_svd.)
    g = torch.Generator().manual_seed(6)
    diff = 1e-3 * (torch.randn(24, 1, generator=g) @ (1 + 0.01 * torch.randn(1, 40, generator=g)))
    up, down = extract_lora(diff, 24)
    assert up.shape == (24, 24) and down.shape == (24, 40)
    assert torch.allclose(up @ down, diff, atol=1e-8, rtol=0)


def test_lora_save_round_trip_through_the_lora_loader(files: dict[str, Path], tmp_path: Path) -> None:
    (m1, c1, _), (m2, c2, _) = adapters.load_checkpoint(files["a"]), adapters.load_checkpoint(files["b"])
    (model_diff,) = ModelMergeSubtract().merge(m1, m2, 1.0)
    (clip_diff,) = CLIPMergeSubtract().merge(c1, c2, 1.0)
    # full_diff: every weight as it is (fp16); loaded onto model2 it gives model1 back.
    sd = extract(model_diff, clip_diff, 8, "full_diff", True)
    assert "diffusion_model.input_blocks.0.0.diff" in sd and "diffusion_model.input_blocks.0.0.diff_b" in sd
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.diff" in sd
    path = tmp_path / "full.safetensors"
    saving.write(path, sd, None)
    back, back_clip = adapters.apply_lora(m2, c2, path, 1.0, 1.0)
    w1, w2, got = saving.unet_weights(m1), saving.unet_weights(m2), saving.unet_weights(back)
    for key in w1:
        want = w2[key] + (w1[key] - w2[key]).half().float()
        assert torch.allclose(got[key], want, atol=1e-6), key
    t1, t2, tgot = saving.text_weights(c1)["l"], saving.text_weights(c2)["l"], saving.text_weights(back_clip)["l"]
    for key in t1:
        assert torch.allclose(tgot[key], t2[key] + (t1[key] - t2[key]).half().float(), atol=1e-6), key

    # standard: a pair per matrix, the extracted pair's product is what the loader adds.
    sd = extract(model_diff, None, 4, "standard", False)
    name = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    assert sd[name + ".lora_up.weight"].dtype == torch.float16 and sd[name + ".lora_up.weight"].shape == (32, 4)
    assert not any(k.endswith((".diff", ".diff_b")) for k in sd)  # vectors and biases need bias_diff
    path = tmp_path / "standard.safetensors"
    saving.write(path, sd, None)
    back, _ = adapters.apply_lora(m2, None, path, 1.0, 0.0)
    key = name[len("diffusion_model.") :] + ".weight"
    up, down = sd[name + ".lora_up.weight"].float(), sd[name + ".lora_down.weight"].float()
    assert torch.allclose(saving.unet_weights(back)[key], w2[key] + up @ down, atol=1e-6)


# --- bypass ----------------------------------------------------------------------------------------


def test_bypass_lora_equals_the_merged_lora(files: dict[str, Path]) -> None:
    model, clip, _ = adapters.load_checkpoint(files["a"])
    sd = load_file(str(files["lora"]))
    merged, merged_clip = adapters.apply_lora_state_dict(model, clip, sd, 0.8, 0.5)
    bypassed, bypassed_clip = bypass_lora(model, clip, sd, 0.8, 0.5)
    # The UNet's weights are untouched where the LoRA runs beside them; the bias difference merges.
    layers = {k: v for k, v in bypassed.object_patches.items() if isinstance(v, BypassLayer)}
    assert sorted(layers) == [
        "diffusion_model.input_blocks.0.0",
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    ]
    assert list(bypassed.patches) == ["diffusion_model.out.2.bias"]
    assert torch.allclose(_denoise(bypassed), _denoise(merged), atol=1e-5)
    assert not torch.allclose(_denoise(bypassed), _denoise(model), atol=1e-3)
    assert torch.allclose(bypassed_clip.encode("bottle")[0], merged_clip.encode("bottle")[0], atol=1e-6)
    # Stacked: a second bypass on the same layers adds its paths beside the first ones.
    twice, _ = bypass_lora(bypassed, None, sd, 0.2, 0.0)
    once, _ = adapters.apply_lora_state_dict(model, None, sd, 1.0, 0.0)
    assert torch.allclose(_denoise(twice), _denoise(once), atol=1e-5)
    assert not model.object_patches and not model.patches


# --- hypernetwork ----------------------------------------------------------------------------------


def _mlp_by_hand(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """linear -> relu -> layer norm -> linear -> relu -> layer norm. The reference counts the layer
    norms among the layers when it asks "is this the last one?", so with layer norms the last
    linear is activated too."""
    h = torch.relu(x @ weights["linear.0.weight"].T + weights["linear.0.bias"])
    h = torch.nn.functional.layer_norm(h, h.shape[-1:], weights["linear.1.weight"], weights["linear.1.bias"])
    h = torch.relu(h @ weights["linear.2.weight"].T + weights["linear.2.bias"])
    return torch.nn.functional.layer_norm(h, h.shape[-1:], weights["linear.3.weight"], weights["linear.3.bias"])


def test_hypernetwork_patch_against_its_mlps_by_hand() -> None:
    sd = _hypernetwork()
    patch = build_patch(sd, 0.7)
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 5, WIDTH, generator=g) for _ in range(3))
    q2, k2, v2 = patch(q, k, v, {})
    assert q2 is q
    assert torch.allclose(k2, k + 0.7 * _mlp_by_hand(sd[WIDTH][0], k), atol=1e-6)
    assert torch.allclose(v2, v + 0.7 * _mlp_by_hand(sd[WIDTH][1], v), atol=1e-6)
    other = torch.randn(2, 5, 48, generator=g)  # no network for this width: unchanged
    assert patch(q, other, other, {})[1] is other


def test_hypernetwork_refuses_what_it_cannot_build() -> None:
    with pytest.raises(HypernetworkError, match="activation"):
        build_patch({**_hypernetwork(), "activation_func": "gelu-ish"}, 1.0)
    with pytest.raises(HypernetworkError, match="no networks"):
        build_patch({"activation_func": "relu"}, 1.0)


# --- through the server ----------------------------------------------------------------------------


def _sample(model: list[Any], seed: int = 4) -> dict[str, Any]:
    return {
        "class_type": "KSampler",
        "inputs": {
            "seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["20", 0], "negative": ["21", 0], "latent_image": ["22", 0],
        },
    }  # fmt: skip


async def test_lora_tools_through_the_server(comfy_server: Any, tmp_path: Path, files: dict[str, Path]) -> None:
    for folder, key in (("checkpoints", "a"), ("checkpoints", "b"), ("loras", "lora"), ("hypernetworks", "hypernetwork")):
        target = tmp_path / "models" / folder
        target.mkdir(parents=True, exist_ok=True)
        (target / files[key].name).symlink_to(files[key])
    server = await comfy_server(plugins=["core_nodes", "models"])
    lora, hn = files["lora"].name, files["hypernetwork"].name
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files["a"].name}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files["b"].name}},
        "3": {"class_type": "ModelMergeSubtract", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "multiplier": 1.0}},
        "4": {"class_type": "LoraSave", "inputs": {
            "filename_prefix": "loras/extracted", "rank": 4, "lora_type": "standard", "bias_diff": True,
            "model_diff": ["3", 0],
        }},
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle", "clip": ["1", 1]}},
        "21": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "22": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "LoraLoaderBypass", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "strength_model": 0.8, "strength_clip": 0.5,
        }},
        "6": {"class_type": "LoraLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "strength_model": 0.8, "strength_clip": 0.5,
        }},
        "7": _sample(["5", 0]),
        "8": _sample(["6", 0]),
        "9": {"class_type": "HypernetworkLoader", "inputs": {"model": ["1", 0], "hypernetwork_name": hn, "strength": 0.0}},
        "10": {"class_type": "HypernetworkLoader", "inputs": {"model": ["1", 0], "hypernetwork_name": hn, "strength": 1.0}},
        "11": _sample(["9", 0]),
        "12": _sample(["10", 0]),
        "13": _sample(["1", 0]),
        "14": {"class_type": "LoraLoaderBypassModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora, "strength_model": 0.0}},
        "15": _sample(["14", 0]),
    }  # fmt: skip
    for node in ("7", "8", "11", "12", "13", "15"):
        prompt["s" + node] = {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": f"l/{node}"}}
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    out = Path(server.kernel.settings.output_path)

    def latent(node: str) -> torch.Tensor:
        (path,) = (out / "l").glob(f"{node}_*.latent")
        return load_file(str(path))["latent_tensor"]

    assert torch.allclose(latent("7"), latent("8"), atol=1e-3, rtol=1e-5)  # bypass == merged LoRA
    assert not torch.allclose(latent("7"), latent("13"), atol=1e-3)
    assert torch.equal(latent("11"), latent("13"))  # strength 0: the plain model
    assert torch.equal(latent("15"), latent("13"))
    assert not torch.allclose(latent("12"), latent("13"), atol=1e-3)
    (extracted,) = (out / "loras").glob("extracted_*.safetensors")
    sd = load_file(str(extracted))
    assert sd["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_down.weight"].shape == (4, WIDTH)
    assert "diffusion_model.out.2.diff_b" in sd


async def test_a_broken_hypernetwork_is_a_node_error(comfy_server: Any, tmp_path: Path, files: dict[str, Path]) -> None:
    target = tmp_path / "models" / "hypernetworks"
    target.mkdir(parents=True)
    (target / "broken.pt").write_bytes(b"not a pickle")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / files["a"].name).symlink_to(files["a"])
    server = await comfy_server(plugins=["core_nodes", "models"])
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files["a"].name}},
        "2": {"class_type": "HypernetworkLoader", "inputs": {"model": ["1", 0], "hypernetwork_name": "broken.pt", "strength": 1.0}},
        "3": {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": "x"}},
    }  # fmt: skip
    frames = await run_prompt(server, prompt)
    (error,) = messages(frames, "execution_error")
    assert error["node_id"] == "2" and "hypernetwork" in error["exception_message"]
