"""Full single-file Flux checkpoints (the layout of the reference's ``flux1-dev-fp8.safetensors``:
``model.diffusion_model.*``, ``vae.*``, ``text_encoders.clip_l.*``, ``text_encoders.t5xxl.*``)
through CheckpointLoaderSimple.

The separate-file path (UNETLoader + DualCLIPLoader flux + VAELoader) is checked against diffusers
in ``test_flux``; here the one-file checkpoint holding the same tensors must give the same
latents and the same VAE round trip through the real server, and an fp8 checkpoint must keep its
fp8 storage (transformer and T5) and compute as the fp8 separate files do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters

from .test_flux import _write_files
from .test_vae16 import _single_file_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FP8 = torch.float8_e4m3fn


def _fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices in fp8, vectors as they are (what the reference's fp8 checkpoints store)."""
    return {k: v.to(FP8) if v.ndim == 2 and v.is_floating_point() else v for k, v in sd.items()}


def _write_all(root: Path, fp8: bool = False) -> None:
    """The separate files (models/diffusion_models, text_encoders, vae) and one checkpoint holding
    the same tensors (models/checkpoints/flux_full.safetensors)."""
    _write_files(root)
    flux_sd = load_file(str(root / "diffusion_models" / "flux_tiny.safetensors"))
    clip_sd = load_file(str(root / "text_encoders" / "clip_l.safetensors"))
    t5_sd = load_file(str(root / "text_encoders" / "t5xxl_tiny.safetensors"))
    if fp8:
        flux_sd, t5_sd = _fp8(flux_sd), _fp8(t5_sd)
        save_file(flux_sd, str(root / "diffusion_models" / "flux_tiny.safetensors"))
        save_file(t5_sd, str(root / "text_encoders" / "t5xxl_tiny.safetensors"))
    vae_sd = _single_file_weights(seed=3)
    (root / "vae").mkdir()
    save_file(vae_sd, str(root / "vae" / "flux_vae.safetensors"))
    full = {"model.diffusion_model." + k: v for k, v in flux_sd.items()}
    full |= {"vae." + k: v for k, v in vae_sd.items()}
    full |= {"text_encoders.clip_l.transformer." + k: v for k, v in clip_sd.items()}
    full["text_encoders.clip_l.logit_scale"] = torch.tensor(4.6052)
    full |= {"text_encoders.t5xxl.transformer." + k: v for k, v in t5_sd.items()}
    (root / "checkpoints").mkdir()
    save_file(full, str(root / "checkpoints" / "flux_full.safetensors"))


def _prompt(model: list[Any], clip: list[Any], vae: list[Any], loaders: dict[str, Any], tag: str) -> dict[str, Any]:
    text = "a lighthouse on a cliff"
    return {
        **loaders,
        "pos": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": clip, "clip_l": text, "t5xxl": text, "guidance": 3.5}},
        "neg": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": clip, "clip_l": "", "t5xxl": "", "guidance": 3.5}},
        "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 3, "cfg": 1.0, "sampler_name": "euler",
                                                   "scheduler": "simple", "denoise": 1.0, "model": model,
                                                   "positive": ["pos", 0], "negative": ["neg", 0],
                                                   "latent_image": ["empty", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": vae}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["decode", 0], "vae": vae}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": f"{tag}_sampled"}},
        "save_vae": {"class_type": "SaveLatent", "inputs": {"samples": ["encode", 0], "filename_prefix": f"{tag}_vae"}},
    }  # fmt: skip


async def test_checkpoint_loader_simple_equals_the_separate_files(comfy_server: Any, tmp_path: Path) -> None:
    from .node_helpers import messages, run_prompt

    _write_all(tmp_path / "models")
    server = await comfy_server(plugins=["core_nodes", "models"])
    one_file = _prompt(["ckpt", 0], ["ckpt", 1], ["ckpt", 2], {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux_full.safetensors"}},
    }, "one")  # fmt: skip
    separate = _prompt(["unet", 0], ["clip", 0], ["vae", 0], {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux_tiny.safetensors", "weight_dtype": "default"}},
        "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                            "clip_name2": "t5xxl_tiny.safetensors", "type": "flux"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "flux_vae.safetensors"}},
    }, "separate")  # fmt: skip
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    root = Path(server.kernel.settings.output_path)
    for tag, prompt in (("one", one_file), ("separate", separate)):
        frames = await run_prompt(server, prompt)
        assert not messages(frames, "execution_error"), messages(frames, "execution_error")
        done = {d["node"]: d["output"]["latents"][0] for d in messages(frames, "executed")}
        outputs[tag] = {
            node: load_file(str(root / done[node]["subfolder"] / done[node]["filename"]))["latent_tensor"]
            for node in ("save", "save_vae")
        }
    for node in ("save", "save_vae"):
        assert torch.equal(outputs["one"][node], outputs["separate"][node]), node
    assert outputs["one"]["save"].shape == (1, 16, 8, 8) and outputs["one"]["save"].abs().max() > 0.1


def test_fp8_checkpoint_keeps_fp8_storage(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _write_all(root, fp8=True)
    model, clip, vae = adapters.load_checkpoint(root / "checkpoints" / "flux_full.safetensors")
    assert model.family.name == "flux" and type(model.model.model_config).__name__ == "Flux"
    assert clip is not None and vae is not None and vae.latent_format.scale_factor == 0.3611
    assert model.unet.double_blocks[0].img_attn.qkv.weight.dtype == FP8
    separate = adapters.load_unet(root / "diffusion_models" / "flux_tiny.safetensors")
    x, t, ctx, y = torch.randn(1, 16, 4, 4), torch.tensor([0.6]), torch.randn(1, 3, 32), torch.randn(1, 64)
    with torch.no_grad():
        got = model.unet(x, t, ctx, y, torch.tensor([3.5]))
        expected = separate.unet(x, t, ctx, y, torch.tensor([3.5]))
    assert torch.equal(got, expected)
    files = [root / "text_encoders" / "clip_l.safetensors", root / "text_encoders" / "t5xxl_tiny.safetensors"]
    pair = adapters.load_clip(files, "flux")
    tokens = clip.tokenize("fp8 text")
    got_cond, got_pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    exp_cond, exp_pooled = pair.encode_from_tokens(pair.tokenize("fp8 text"), return_pooled=True)
    assert torch.equal(got_cond, exp_cond) and torch.equal(got_pooled, exp_pooled)
    assert set(clip.models) == {"l", "t5xxl"}
