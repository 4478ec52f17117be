"""Model patch nodes: ModelPatchLoader's kind detection on tiny files in each published layout,
the two small networks against formulas written out here, the apply nodes' patch points, and
through the server: a MODEL carrying a patch for a family this server does not sample stops at
sampling with an error naming both families, while the unpatched MODEL still samples.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.model_patch import (
    MULTITALK,
    QWEN_IMAGE,
    SUPIR,
    USO,
    Z_IMAGE,
    ModelPatchError,
    QwenImageBlockWiseControlNet,
    SiglipStyleProjector,
    StoredPatchWeights,
    UnsupportedModelFamily,
    build_model_patch,
    load_model_patch,
    patch_kind,
)
from plugins.core_nodes.models.model_patch_hooks import UsoStyleProjectorPatch, stack_siglip_layers
from plugins.core_nodes.nodes.model_patch_loaders import (
    QwenImageDiffsynthControlnet,
    SUPIRApply,
    USOStyleReference,
    ZImageFunControlnet,
)

from . import tiny_pipeline
from .node_helpers import messages, run_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM, EXTRA, BLOCKS = 16, 4, 2
SIGLIP_TOKENS, STYLE_TOKENS, SIGLIP_DIM, HIDDEN = 5, 3, 8, 6


def _rand(g: torch.Generator, *shape: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def qwen_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    """A Qwen-Image DiffSynth inpainting ControlNet (mask channels beyond the 64 latent ones)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"img_in.weight": _rand(g, DIM, 64 + EXTRA), "img_in.bias": _rand(g, DIM)}
    for i in range(BLOCKS):
        p = f"controlnet_blocks.{i}."
        sd.update({
            p + "x_rms.weight": 1 + _rand(g, DIM), p + "y_rms.weight": 1 + _rand(g, DIM),
            p + "input_proj.weight": _rand(g, DIM, DIM), p + "input_proj.bias": _rand(g, DIM),
            p + "output_proj.weight": _rand(g, DIM, DIM), p + "output_proj.bias": _rand(g, DIM),
        })  # fmt: skip
    return sd


def uso_sd(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for level in ("high", "mid", "low"):
        p = f"feature_embedder.{level}_"
        sd.update({
            p + "embedding_linear.0.weight": _rand(g, STYLE_TOKENS, SIGLIP_TOKENS),
            p + "embedding_linear.0.bias": _rand(g, STYLE_TOKENS),
            p + "layer_norm.weight": 1 + _rand(g, SIGLIP_DIM), p + "layer_norm.bias": _rand(g, SIGLIP_DIM),
            p + "projection.weight": _rand(g, HIDDEN, SIGLIP_DIM), p + "projection.bias": _rand(g, HIDDEN),
        })  # fmt: skip
    return sd


def z_image_sd(layers: int, zero_refiner: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    sd = {"control_all_x_embedder.2-1.weight": _rand(g, 4, 4)}
    for i in range(layers):
        p = f"control_layers.{i}."
        sd[p + "adaLN_modulation.0.weight"] = _rand(g, 4, 4)
        for name in ("to_q", "to_k", "to_v"):
            sd[p + f"attention.{name}.weight"] = _rand(g, 4, 4)
        sd[p + "attention.to_out.0.weight"] = _rand(g, 4, 4)
        sd[p + "attention.norm_q.weight"] = _rand(g, 4)
    sd["control_noise_refiner.0.after_proj.weight"] = torch.zeros(4, 4) if zero_refiner else _rand(g, 4, 4)
    return sd


def supir_sd(prefixed: bool) -> dict[str, torch.Tensor]:
    control = "model.control_model." if prefixed else "control_model."
    project = "model.diffusion_model.project_modules." if prefixed else "project_modules."
    return {
        control + "input_hint_block.0.weight": torch.ones(2, 4, 3, 3),
        control + "mask_LQ": torch.ones(1),
        project + "0.zero_conv.weight": torch.ones(2, 2, 1, 1),
        "first_stage_model.denoise_encoder.conv_in.weight": torch.full((2, 3, 3, 3), 0.5),
        "model.diffusion_model.input_blocks.0.0.weight": torch.ones(1),  # the SDXL UNet: not kept
    }


# --- kinds and networks --------------------------------------------------------------------------


def test_each_layout_is_told_by_its_keys() -> None:
    assert patch_kind(qwen_sd()) == QWEN_IMAGE
    assert patch_kind(uso_sd()) == USO
    assert patch_kind(z_image_sd(6)) == Z_IMAGE
    assert patch_kind({"audio_proj.proj1.weight": torch.zeros(1)}) == MULTITALK
    assert patch_kind(supir_sd(prefixed=True)) == SUPIR
    assert patch_kind(supir_sd(prefixed=False)) == SUPIR
    with pytest.raises(ModelPatchError, match="not a model patch"):
        patch_kind({"unet.conv_in.weight": torch.zeros(1)})


def _rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def test_qwen_control_block_against_its_formula() -> None:
    sd = qwen_sd()
    net = build_model_patch(sd)
    assert isinstance(net, QwenImageBlockWiseControlNet)
    assert net.additional_in_dim == EXTRA and len(net.controlnet_blocks) == BLOCKS
    img, hint = torch.randn(2, 7, DIM), torch.randn(2, 7, DIM)
    for block in range(BLOCKS):
        p = f"controlnet_blocks.{block}."
        summed = _rms(img, sd[p + "x_rms.weight"]) + _rms(hint, sd[p + "y_rms.weight"])
        hidden = F.gelu(summed @ sd[p + "input_proj.weight"].T + sd[p + "input_proj.bias"])
        expected = hidden @ sd[p + "output_proj.weight"].T + sd[p + "output_proj.bias"]
        with torch.no_grad():
            got = net.control_block(img, hint, block)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _uso_level(sd: dict[str, torch.Tensor], level: str, h: torch.Tensor) -> torch.Tensor:
    p = f"feature_embedder.{level}_"
    # A linear map over the token axis, SiLU, a layer norm over channels, then the projection.
    tokens = F.silu(torch.einsum("st,btc->bsc", sd[p + "embedding_linear.0.weight"], h) + sd[p + "embedding_linear.0.bias"][:, None])
    normed = F.layer_norm(tokens, (SIGLIP_DIM,), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
    return normed @ sd[p + "projection.weight"].T + sd[p + "projection.bias"]


def test_uso_projector_and_its_post_input_patch() -> None:
    sd = uso_sd()
    net = build_model_patch(sd)
    assert isinstance(net, SiglipStyleProjector)
    layers = torch.randn(2, 24, SIGLIP_TOKENS, SIGLIP_DIM)  # [B, layers, tokens, dim]
    penultimate = torch.randn(2, SIGLIP_TOKENS, SIGLIP_DIM)
    stacked = stack_siglip_layers(SimpleNamespace(all_hidden_states=layers, penultimate_hidden_states=penultimate))
    assert stacked is not None
    assert torch.equal(stacked[0], layers[:, -20]) and torch.equal(stacked[1], layers[:, -11])
    expected = torch.cat([_uso_level(sd, "high", penultimate), _uso_level(sd, "mid", layers[:, -11]),
                          _uso_level(sd, "low", layers[:, -20])], dim=1)  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(net(stacked), expected, rtol=1e-5, atol=1e-5)

        patch = UsoStyleProjectorPatch(SimpleNamespace(model=net), stacked)
        txt, txt_ids = torch.randn(2, 4, HIDDEN), torch.randn(2, 4, 3)
        out = patch({"txt": txt, "txt_ids": txt_ids, "img": "kept"})
    assert out["img"] == "kept"
    torch.testing.assert_close(out["txt"], torch.cat([expected, txt], dim=1), rtol=1e-5, atol=1e-5)
    assert out["txt_ids"].shape == (2, 3 * STYLE_TOKENS + 4, 3)
    assert out["txt_ids"][:, : 3 * STYLE_TOKENS].eq(0).all() and torch.equal(out["txt_ids"][:, 9:], txt_ids)
    # A CLIP encoder output without per-layer states (CLIP, not SigLIP) gives nothing to project.
    assert stack_siglip_layers(SimpleNamespace(penultimate_hidden_states=penultimate)) is None


@pytest.mark.parametrize(
    ("layers", "zero_refiner", "config"),
    [
        (6, False, {"n_control_layers": 6, "additional_in_dim": 0, "refiner_control": False, "broken": False}),
        (3, False, {"n_control_layers": 3, "additional_in_dim": 17, "refiner_control": True, "broken": False}),
        (15, False, {"n_control_layers": 15, "additional_in_dim": 17, "refiner_control": True, "broken": False}),
        (15, True, {"n_control_layers": 15, "additional_in_dim": 17, "refiner_control": True, "broken": True}),
    ],
)
def test_z_image_weights_are_renamed_and_their_settings_read(layers: int, zero_refiner: bool, config: dict[str, Any]) -> None:
    sd = z_image_sd(layers, zero_refiner)
    stored = build_model_patch(sd)
    assert isinstance(stored, StoredPatchWeights) and stored.config == config
    w = stored.weights
    p = "control_layers.0.attention."
    assert torch.equal(w[p + "qkv.weight"], torch.cat([sd[p + "to_q.weight"], sd[p + "to_k.weight"], sd[p + "to_v.weight"]]))
    assert torch.equal(w[p + "out.weight"], sd[p + "to_out.0.weight"])
    assert torch.equal(w[p + "q_norm.weight"], sd[p + "norm_q.weight"])
    assert not any(".to_q." in k or ".to_k." in k or ".to_v." in k for k in w)


@pytest.mark.parametrize("prefixed", [True, False])
def test_supir_weights_are_kept_under_the_reference_names(prefixed: bool) -> None:
    stored = build_model_patch(supir_sd(prefixed))
    assert isinstance(stored, StoredPatchWeights)
    assert sorted(stored.weights) == ["control_model.input_hint_block.0.weight", "project_modules.0.zero_conv.weight"]
    assert list(stored.denoise_encoder_sd) == ["conv_in.weight"]


def test_multitalk_sizes_are_read_off_the_weights() -> None:
    sd = {
        "audio_proj.proj1.weight": torch.zeros(12, 5),
        "audio_proj.norm.weight": torch.zeros(7),
        "blocks.0.audio_cross_attn.proj.weight": torch.zeros(9, 7),
    }
    stored = build_model_patch(sd)
    assert isinstance(stored, StoredPatchWeights)
    assert (stored.config["in_dim"], stored.config["intermediate_dim"], stored.config["out_dim"]) == (9, 12, 7)


def test_weights_that_do_not_fit_are_refused_clearly() -> None:
    sd = qwen_sd()
    sd["controlnet_blocks.1.input_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ModelPatchError, match="Qwen-Image patch's weights do not fit"):
        build_model_patch(sd)


# --- apply nodes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "sd1")
    model, _, vae = adapters.load_checkpoint(path)
    return model, vae


def _patch_file(tmp_path: Path, sd: dict[str, torch.Tensor]) -> Any:
    save_file(sd, str(tmp_path / "p.safetensors"))
    return load_model_patch(tmp_path / "p.safetensors")


def test_apply_nodes_register_on_the_reference_patch_points(sd1_model: Any, tmp_path: Path) -> None:
    model, vae = sd1_model
    image, mask = torch.rand(1, 16, 16, 4), torch.rand(1, 16, 16)
    qwen = _patch_file(tmp_path, qwen_sd())
    (patched,) = QwenImageDiffsynthControlnet().diffsynth_controlnet(model, qwen, vae, image, 0.5, mask=mask)
    (patch,) = patched.model_options["transformer_options"]["patches"]["double_block"]
    assert patch.strength == 0.5 and patch.image.shape == (1, 16, 16, 3) and patch.models() == [qwen]
    assert patch.mask.shape == (1, 1, 1, 16, 16) and torch.allclose(patch.mask[0, 0, 0], 1 - mask[0])
    assert "patches" not in model.model_options.get("transformer_options", {})  # the input MODEL is untouched

    z = _patch_file(tmp_path, z_image_sd(3))
    (patched,) = ZImageFunControlnet().diffsynth_controlnet(model, z, vae, None, 1.0, inpaint_image=image)
    patches = patched.model_options["transformer_options"]["patches"]
    assert patches["double_block"] == patches["noise_refiner"] and patches["double_block"][0].inpaint_image.shape[-1] == 3

    uso = _patch_file(tmp_path, uso_sd())
    (patched,) = USOStyleReference().apply_patch(model, uso, SimpleNamespace(penultimate_hidden_states=torch.zeros(1)))
    assert len(patched.model_options["transformer_options"]["patches"]["post_input"]) == 1

    supir = _patch_file(tmp_path, supir_sd(prefixed=True))
    (patched,) = SUPIRApply().execute(model, supir, vae, image, 1.0, 0.5, 4.0, 0.05)
    (settings,) = patched.model_options["transformer_options"]["patches"]["middle_block_after_patch"]
    assert (settings.strength_start, settings.strength_end, settings.restore_cfg) == (1.0, 0.5, 4.0)


def test_a_patch_of_the_wrong_kind_is_refused_by_the_node(sd1_model: Any, tmp_path: Path) -> None:
    model, vae = sd1_model
    uso = _patch_file(tmp_path, uso_sd())
    with pytest.raises(ModelPatchError, match="needs a Qwen-Image, Z-Image model patch; this MODEL_PATCH is a Flux"):
        QwenImageDiffsynthControlnet().diffsynth_controlnet(model, uso, vae, torch.rand(1, 8, 8, 3), 1.0)
    with pytest.raises(ModelPatchError, match="USOStyleReference needs a Flux"):
        USOStyleReference().apply_patch(model, _patch_file(tmp_path, qwen_sd()), SimpleNamespace())


def test_the_family_check_runs_before_sampling(sd1_model: Any, tmp_path: Path) -> None:
    model, vae = sd1_model
    qwen = _patch_file(tmp_path, qwen_sd())
    (patched,) = QwenImageDiffsynthControlnet().diffsynth_controlnet(model, qwen, vae, torch.rand(1, 8, 8, 3), 1.0)
    with pytest.raises(UnsupportedModelFamily, match="for Qwen-Image models, but the MODEL being sampled is SD1.x"):
        patched.pre_run()
    model.pre_run()  # the unpatched MODEL has no check


# --- through the server --------------------------------------------------------------------------


@pytest.fixture
async def server(comfy_server: Any, tmp_path: Path) -> Any:
    models = tmp_path / "models"
    tiny_pipeline.write_checkpoint(models / "checkpoints" / "tiny.safetensors", "sd1")
    folder = models / "model_patches"
    folder.mkdir(parents=True)
    save_file(qwen_sd(), str(folder / "qwen.safetensors"))
    save_file(z_image_sd(15), str(folder / "zimage.safetensors"))
    save_file(supir_sd(prefixed=True), str(folder / "supir.safetensors"))
    save_file({"x": torch.zeros(1)}, str(folder / "broken.safetensors"))
    return await comfy_server(plugins=["core_nodes", "models"])


def _graph(patch_node: dict[str, Any] | None, patch_file: str = "qwen.safetensors") -> dict[str, Any]:
    graph: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a house"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "mp": {"class_type": "ModelPatchLoader", "inputs": {"name": patch_file}},
        "ks": {"class_type": "KSampler",
               "inputs": {"model": ["patch", 0] if patch_node else ["ckpt", 0], "positive": ["pos", 0],
                          "negative": ["neg", 0], "latent_image": ["lat", 0], "seed": 1, "steps": 1, "cfg": 2.0,
                          "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "out": {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "mp"}},
    }  # fmt: skip
    if patch_node:
        graph["patch"] = patch_node
    return graph


QWEN_NODE = {
    "class_type": "QwenImageDiffsynthControlnet",
    "inputs": {"model": ["ckpt", 0], "model_patch": ["mp", 0], "vae": ["ckpt", 2], "image": ["img", 0], "strength": 1.0},
}
Z_IMAGE_NODE = {
    "class_type": "ZImageFunControlnet",
    "inputs": {"model": ["ckpt", 0], "model_patch": ["mp", 0], "vae": ["ckpt", 2], "strength": 0.7, "image": ["img", 0]},
}
SUPIR_NODE = {
    "class_type": "SUPIRApply",
    "inputs": {"model": ["ckpt", 0], "model_patch": ["mp", 0], "vae": ["ckpt", 2], "image": ["img", 0],
               "strength_start": 1.0, "strength_end": 1.0, "restore_cfg": 4.0, "restore_cfg_s_tmin": 0.05},
}  # fmt: skip


@pytest.mark.parametrize(
    ("node", "patch_file", "expected"),
    [
        (QWEN_NODE, "qwen.safetensors", "for Qwen-Image models, but the MODEL being sampled is SD1.x"),
        (Z_IMAGE_NODE, "zimage.safetensors", "for Z-Image models, but the MODEL being sampled is SD1.x"),
        (SUPIR_NODE, "supir.safetensors", "SUPIR's control encoder"),
    ],
)
async def test_sampling_a_patched_sd1_model_names_the_unsupported_family(
    server: Any, node: dict[str, Any], patch_file: str, expected: str
) -> None:
    frames = await run_prompt(server, _graph(node, patch_file))
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "KSampler" and error["node_id"] == "ks"
    assert error["exception_type"].endswith("UnsupportedModelFamily")
    assert expected in error["exception_message"]
    assert error["exception_message"].startswith(node["class_type"])


async def test_the_unpatched_model_samples_and_bad_files_fail_at_the_loader(server: Any) -> None:
    frames = await run_prompt(server, _graph(None))
    assert not messages(frames, "execution_error") and messages(frames, "execution_success")

    frames = await run_prompt(server, _graph(QWEN_NODE, "broken.safetensors"))
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "ModelPatchLoader" and "not a model patch" in error["exception_message"]


async def test_packs_find_the_classes_in_the_reference_module(comfy_server: Any, tmp_path: Path) -> None:
    """``comfy_extras.nodes_model_patch`` (what packs import) holds the server's classes, and a
    pack calling the loader and an apply node as the reference's gets a patched MODEL."""
    import importlib

    folder = tmp_path / "models" / "model_patches"
    folder.mkdir(parents=True)
    save_file(qwen_sd(), str(folder / "qwen.safetensors"))
    await comfy_server(plugins=["comfy_compat", "models", "core_nodes"])
    module = importlib.import_module("comfy_extras.nodes_model_patch")
    assert sorted(module.NODE_CLASS_MAPPINGS) == sorted(
        ["ModelPatchLoader", "QwenImageDiffsynthControlnet", "SUPIRApply", "USOStyleReference", "ZImageFunControlnet"]
    )
    (patch,) = module.ModelPatchLoader().load_model_patch("qwen.safetensors")
    assert isinstance(patch.model, QwenImageBlockWiseControlNet)
