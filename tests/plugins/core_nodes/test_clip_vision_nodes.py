"""CLIPVisionLoader / CLIPVisionEncode on a tiny transformers-layout CLIP vision tower.

The encoder's fields are compared with transformers' own CLIPVisionModelWithProjection on the same
weights; the nodes run through the real server with the file in ``models/clip_vision``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models.clip_vision import (
    CLIP_MEAN,
    CLIP_STD,
    ClipVisionError,
    clip_preprocess,
    config_from_state_dict,
    load_clip_vision,
)
from plugins.core_nodes.nodes.clip_vision import CLIPVisionEncode, unCLIPConditioning

from .node_helpers import messages, run_prompt
from .test_workflows_e2e import checkpoints  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_SIZE = 16


def _reference_model() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=16,
        image_size=IMAGE_SIZE,
        patch_size=4,
        projection_dim=8,
        hidden_act="quick_gelu",
    )
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():  # non-trivial norms and class embedding, so every weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    model = _reference_model()
    path = tmp_path_factory.mktemp("clip_vision") / "tiny_clip_vision.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.rand(2, IMAGE_SIZE, IMAGE_SIZE, 3, generator=g)


def test_config_is_read_off_the_weights(tiny_file: tuple[Path, Any]) -> None:
    cfg = config_from_state_dict(load_file(str(tiny_file[0])))
    assert (cfg.width, cfg.layers, cfg.heads, cfg.mlp_width) == (32, 3, 16, 64)
    assert (cfg.patch_size, cfg.image_size, cfg.projection_dim, cfg.quick_gelu) == (4, 16, 8, True)


def test_encoder_matches_transformers(tiny_file: tuple[Path, Any]) -> None:
    path, reference = tiny_file
    ours = load_clip_vision(load_file(str(path)))
    images = _images()
    out = ours.encode_image(images, crop=True)
    pixels = clip_preprocess(images, IMAGE_SIZE)
    with torch.no_grad():
        ref = reference(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["penultimate_hidden_states"], ref.hidden_states[-2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.image_embeds, ref.image_embeds, rtol=1e-5, atol=1e-5)
    assert out.image_sizes == [pixels.shape[1:]] * 2 and out.mm_projected is None


def test_model_called_directly_as_ip_adapter_does(tiny_file: tuple[Path, Any]) -> None:
    """IP-Adapter preprocesses itself, calls ``clip_vision.model(pixel_values=..., intermediate_output=-2)``
    and reads the tuple by position."""
    vision = load_clip_vision(load_file(str(tiny_file[0])))
    images = _images()
    pixels = clip_preprocess(images.to(vision.load_device), IMAGE_SIZE).float()
    last, penultimate, embeds, projected = vision.model(pixel_values=pixels, intermediate_output=-2)
    encoded = vision.encode_image(images)
    assert torch.equal(last, encoded.last_hidden_state) and torch.equal(embeds, encoded.image_embeds)
    assert torch.equal(penultimate, encoded.penultimate_hidden_states) and projected is None
    first = vision.model(pixel_values=pixels, intermediate_output=0)[1]
    assert first is not None and not torch.equal(first, penultimate)
    assert vision.model(pixel_values=pixels, intermediate_output=None)[1] is None


def test_preprocess_rounds_normalises_and_crops() -> None:
    images = _images()
    pixels = clip_preprocess(images, IMAGE_SIZE)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    expected = ((images.movedim(-1, 1) * 255).round() / 255 - mean) / std
    torch.testing.assert_close(pixels, expected)
    # A wide picture: "center" keeps the middle square, "none" squashes the whole width.
    wide = torch.zeros(1, 32, 96, 3)
    wide[:, :, 32:64] = 1.0
    centre = clip_preprocess(wide, IMAGE_SIZE, crop=True)
    squashed = clip_preprocess(wide, IMAGE_SIZE, crop=False)
    assert centre.shape == squashed.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    white = (1.0 - mean) / std
    torch.testing.assert_close(centre[0, :, :, 2:-2], white.expand(3, IMAGE_SIZE, IMAGE_SIZE - 4))
    assert squashed[0, 0, :, 0].max() < 0  # the black left third survives the squash


def test_encode_node_crop_choice(tiny_file: tuple[Path, Any]) -> None:
    vision = load_clip_vision(load_file(str(tiny_file[0])))
    wide = torch.rand(1, 16, 40, 3, generator=torch.Generator().manual_seed(2))
    (centre,) = CLIPVisionEncode().encode(vision, wide, "center")
    (none,) = CLIPVisionEncode().encode(vision, wide, "none")
    assert not torch.allclose(centre.image_embeds, none.image_embeds)
    torch.testing.assert_close(centre.image_embeds, vision.encode_image(wide, crop=True).image_embeds)


def _to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers layout -> OpenCLIP's ``visual.*`` layout (fused q/k/v, ``proj`` as a matrix)."""
    out: dict[str, torch.Tensor] = {}
    names = {
        "vision_model.embeddings.class_embedding": "class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "positional_embedding",
        "vision_model.pre_layrnorm.weight": "ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "ln_pre.bias",
        "vision_model.post_layernorm.weight": "ln_post.weight",
        "vision_model.post_layernorm.bias": "ln_post.bias",
    }
    for key, name in names.items():
        out["visual." + name] = sd[key]
    out["visual.proj"] = sd["visual_projection.weight"].t()
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(3):
        src, dst = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            for ours, theirs in parts.items():
                out[dst + f"{theirs}.{kind}"] = sd[src + f"{ours}.{kind}"]
    return out


def test_openclip_layout_loads_to_the_same_encoder(tiny_file: tuple[Path, Any]) -> None:
    sd = load_file(str(tiny_file[0]))
    hf = load_clip_vision(sd).encode_image(_images())
    converted = load_clip_vision(_to_openclip(sd)).encode_image(_images())
    assert torch.equal(converted.image_embeds, hf.image_embeds)
    assert torch.equal(converted.penultimate_hidden_states, hf.penultimate_hidden_states)


def test_unclip_conditioning_appends_to_copies() -> None:
    vision_out = object()
    cond = [[torch.zeros(1, 2, 3), {"pooled_output": None}], [torch.ones(1, 2, 3), {}]]
    (same,) = unCLIPConditioning().apply_adm(cond, vision_out, 0.0, 0.5)
    assert same is cond
    (once,) = unCLIPConditioning().apply_adm(cond, vision_out, 0.8, 0.1)
    (twice,) = unCLIPConditioning().apply_adm(once, vision_out, -1.0, 0.0)
    entry = {"clip_vision_output": vision_out, "strength": 0.8, "noise_augmentation": 0.1}
    assert [o["unclip_conditioning"] for _, o in once] == [[entry], [entry]]
    assert twice[0][1]["unclip_conditioning"][1]["strength"] == -1.0 and len(once[0][1]["unclip_conditioning"]) == 1
    assert once[0][1]["pooled_output"] is None and "unclip_conditioning" not in cond[0][1]
    assert once[1][0] is cond[1][0]


def test_other_files_are_refused_clearly() -> None:
    with pytest.raises(ClipVisionError, match="transformers layout"):
        load_clip_vision({"model.diffusion_model.x": torch.zeros(1)})


async def test_nodes_through_the_server(
    comfy_server: Any, tmp_path: Path, tiny_file: tuple[Path, Any], checkpoints: dict[str, Path]  # noqa: F811
) -> None:
    folder = tmp_path / "models" / "clip_vision"
    folder.mkdir(parents=True)
    (folder / "tiny.safetensors").symlink_to(tiny_file[0])
    save_file({"not_clip": torch.zeros(2)}, str(folder / "broken.safetensors"))
    ckpts = tmp_path / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "sd1.safetensors").symlink_to(checkpoints["sd1"])
    server = await comfy_server(plugins=["core_nodes", "models"])
    status, info = await server.json("GET", "/object_info/CLIPVisionLoader")
    assert status == 200
    assert info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0] == ["broken.safetensors", "tiny.safetensors"]

    def prompt(name: str) -> dict[str, Any]:
        return {
            "load": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": name}},
            "img": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 1, "color": 0x3366AA}},
            "enc": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["load", 0], "image": ["img", 0], "crop": "center"}},
            "show": {"class_type": "PreviewAny", "inputs": {"source": ["enc", 0]}},
        }

    frames = await run_prompt(server, prompt("tiny.safetensors"))
    assert not messages(frames, "execution_error")
    assert messages(frames, "execution_success")
    # unCLIP conditioning on an SD1 checkpoint: ignored by the model, as in the reference.
    graph = {
        **prompt("tiny.safetensors"),
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["ckpt", 1]}},
        "unclip": {
            "class_type": "unCLIPConditioning",
            "inputs": {"conditioning": ["pos", 0], "clip_vision_output": ["enc", 0], "strength": 1.0, "noise_augmentation": 0.1},
        },
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    for name, positive in (("plain", "pos"), ("unclip", "unclip")):
        graph[f"k_{name}"] = {
            "class_type": "KSampler",
            "inputs": {"seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                       "model": ["ckpt", 0], "positive": [positive, 0], "negative": ["pos", 0], "latent_image": ["empty", 0]},
        }
        graph[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"k_{name}", 0], "filename_prefix": name}}
    frames = await run_prompt(server, graph)
    assert not messages(frames, "execution_error")
    saved = {d["node"]: d["output"]["latents"][0] for d in messages(frames, "executed") if d["node"].startswith("save_")}
    root = Path(server.kernel.settings.output_path)
    plain, unclip = (load_file(str(root / saved[n]["subfolder"] / saved[n]["filename"]))["latent_tensor"]
                     for n in ("save_plain", "save_unclip"))
    assert torch.equal(plain, unclip)

    frames = await run_prompt(server, prompt("broken.safetensors"))
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "CLIPVisionLoader"
    assert "not a CLIP vision model" in error["exception_message"]
