"""PhotoMaker: the ID encoder against a direct computation (transformers' CLIP vision model for the
tower, the fuse written out with torch.nn.functional), PhotoMakerEncode's prompt handling on a
real tiny SDXL CLIP, the file layouts, and the nodes through the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.clip_vision import clip_preprocess
from plugins.core_nodes.models.photomaker import PhotoMakerError, build_photomaker, load_photomaker
from plugins.core_nodes.nodes.photomaker import PhotoMakerEncode, drop_word, trigger_word_id

from . import tiny_pipeline
from .node_helpers import messages, run_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_SIZE, WIDTH, PROJ, PROJ2 = 16, 32, 64, 64
EMBED = PROJ + PROJ2  # the tiny SDXL text width (two 64-wide encoders)


def _vision() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16,
        image_size=IMAGE_SIZE, patch_size=4, projection_dim=PROJ, hidden_act="quick_gelu",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _mlp(g: torch.Generator, prefix: str, in_dim: int, out_dim: int) -> dict[str, torch.Tensor]:
    return {
        prefix + "layernorm.weight": 1 + 0.1 * torch.randn(in_dim, generator=g),
        prefix + "layernorm.bias": 0.1 * torch.randn(in_dim, generator=g),
        prefix + "fc1.weight": 0.1 * torch.randn(EMBED, in_dim, generator=g),
        prefix + "fc1.bias": 0.1 * torch.randn(EMBED, generator=g),
        prefix + "fc2.weight": 0.1 * torch.randn(out_dim, EMBED, generator=g),
        prefix + "fc2.bias": 0.1 * torch.randn(out_dim, generator=g),
    }


@pytest.fixture(scope="module")
def encoder_sd() -> tuple[dict[str, torch.Tensor], Any]:
    """A PhotoMaker ID encoder state dict in the published layout, and the transformers tower."""
    vision = _vision()
    g = torch.Generator().manual_seed(7)
    sd = {k: v.detach().clone().contiguous() for k, v in vision.state_dict().items()}
    sd["visual_projection_2.weight"] = 0.2 * torch.randn(PROJ2, WIDTH, generator=g)
    sd.update(_mlp(g, "fuse_module.mlp1.", 2 * EMBED, EMBED))
    sd.update(_mlp(g, "fuse_module.mlp2.", EMBED, EMBED))
    sd["fuse_module.layer_norm.weight"] = 1 + 0.1 * torch.randn(EMBED, generator=g)
    sd["fuse_module.layer_norm.bias"] = 0.1 * torch.randn(EMBED, generator=g)
    return sd, vision


def _direct_mlp(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    h = F.layer_norm(x, (x.shape[-1],), sd[prefix + "layernorm.weight"], sd[prefix + "layernorm.bias"])
    h = F.gelu(F.linear(h, sd[prefix + "fc1.weight"], sd[prefix + "fc1.bias"]))
    return F.linear(h, sd[prefix + "fc2.weight"], sd[prefix + "fc2.bias"])


def direct_fuse(sd: dict[str, torch.Tensor], vision: Any, pixels: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """PhotoMaker v1 written out: the tower's pooled class token through both projections, then
    ``LN(mlp2(mlp1([token, id]) + token))`` with mlp2 residual."""
    with torch.no_grad():
        pooled = vision.vision_model(pixel_values=pixels).pooler_output
    identity = torch.cat([pooled @ sd["visual_projection.weight"].T, pooled @ sd["visual_projection_2.weight"].T], -1)
    mixed = _direct_mlp(sd, "fuse_module.mlp1.", torch.cat([token, identity], dim=-1)) + token
    mixed = _direct_mlp(sd, "fuse_module.mlp2.", mixed) + mixed
    return F.layer_norm(mixed, (EMBED,), sd["fuse_module.layer_norm.weight"], sd["fuse_module.layer_norm.bias"])


def _image(seed: int = 3, height: int = 20, width: int = 24) -> torch.Tensor:
    return torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))


def test_the_fuse_replaces_only_the_class_token(encoder_sd: tuple[dict[str, torch.Tensor], Any]) -> None:
    sd, vision = encoder_sd
    model = build_photomaker(sd)
    assert model.embed_dim == EMBED and model.config.image_size == IMAGE_SIZE
    pixels = clip_preprocess(_image(), IMAGE_SIZE)
    prompt = torch.randn(1, 77, EMBED)
    mask = torch.zeros(1, 77, dtype=torch.bool)
    mask[0, 5] = True
    with torch.no_grad():
        out = model(id_pixel_values=pixels.unsqueeze(0), prompt_embeds=prompt, class_tokens_mask=mask)
    expected = direct_fuse(sd, vision, pixels, prompt[:, 5])
    torch.testing.assert_close(out[:, 5], expected, rtol=1e-5, atol=1e-5)
    keep = torch.ones(77, dtype=torch.bool)
    keep[5] = False
    assert torch.equal(out[:, keep], prompt[:, keep])
    assert not torch.equal(out[:, 5], prompt[:, 5])


def test_one_class_token_takes_the_first_of_several_images(encoder_sd: tuple[dict[str, torch.Tensor], Any]) -> None:
    sd, vision = encoder_sd
    model = build_photomaker(sd)
    pixels = clip_preprocess(torch.cat([_image(1, 16, 16), _image(2, 16, 16)]), IMAGE_SIZE)
    prompt = torch.randn(1, 77, EMBED)
    mask = torch.zeros(1, 77, dtype=torch.bool)
    mask[0, 2] = True
    with torch.no_grad():
        out = model(id_pixel_values=pixels.unsqueeze(0), prompt_embeds=prompt, class_tokens_mask=mask)
    torch.testing.assert_close(out[:, 2], direct_fuse(sd, vision, pixels[:1], prompt[:, 2]), rtol=1e-5, atol=1e-5)


def test_prompt_handling() -> None:
    assert trigger_word_id("photograph of photomaker") == 3
    assert trigger_word_id("a man photomaker, smiling") == -1  # "photomaker," is another word
    assert trigger_word_id("no trigger") == -1
    tokens = {"l": [[(1, 1.0, 0), (5, 1.0, 1), (6, 1.0, 2), (7, 1.0, 2), (2, 1.0, 0), (0, 1.0, 0)]]}
    assert drop_word(tokens, 2) == {"l": [[(1, 1.0, 0), (5, 1.0, 1), (2, 1.0, 0), (0, 1.0, 0), (0, 1.0, 0), (0, 1.0, 0)]]}
    assert drop_word(tokens, -1) == tokens


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("photomaker")
    tiny_pipeline.write_checkpoint(root / "sdxl.safetensors", "sdxl")
    tiny_pipeline.write_checkpoint(root / "sd1.safetensors", "sd1")
    return adapters.load_checkpoint(root / "sdxl.safetensors"), adapters.load_checkpoint(root / "sd1.safetensors")


def _tokens_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all([[t[:2] for t in chunk] for chunk in a[k]] == [[t[:2] for t in chunk] for chunk in b[k]] for k in b)


def test_encode_fuses_the_token_before_the_trigger(encoder_sd: tuple[dict[str, torch.Tensor], Any], sdxl: Any) -> None:
    sd, vision = encoder_sd
    (_, clip, _), _ = sdxl
    image = _image()
    pixels = clip_preprocess(image, IMAGE_SIZE)
    model = build_photomaker(sd)

    # The trigger in a segment of its own (word id 2, its place among the words) is taken out, and
    # token 1 ("man") fused: the tokens are those of "(man)" with one more pad at the end.
    text = "(man) photomaker"
    kept = drop_word(clip.tokenize(text, return_word_ids=True), trigger_word_id(text))
    assert _tokens_equal(kept, clip.tokenize("(man)"))
    ((cond, options),) = PhotoMakerEncode().apply_photomaker(model, image, clip, text)[0]
    plain, pooled = clip.encode_from_tokens(clip.tokenize("(man)"), return_pooled=True)
    expected = plain.clone()
    expected[:, 1] = direct_fuse(sd, vision, pixels, plain[:, 1])
    assert torch.equal(options["pooled_output"], pooled)
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)

    # Inside a plain segment every token has word id 1: the trigger stays (as in the reference)
    # and token 4 ("man" in "photograph of a man") is the one fused.
    text = "photograph of a man photomaker"
    ((cond, options),) = PhotoMakerEncode().apply_photomaker(model, image, clip, text)[0]
    plain, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    expected = plain.clone()
    expected[:, 4] = direct_fuse(sd, vision, pixels, plain[:, 4])
    assert torch.equal(options["pooled_output"], pooled)
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)

    ((untouched, _),) = PhotoMakerEncode().apply_photomaker(model, image, clip, "a man")[0]
    assert torch.equal(untouched, clip.encode_from_tokens(clip.tokenize("a man")))


def test_an_sd1_clip_is_refused_clearly(encoder_sd: tuple[dict[str, torch.Tensor], Any], sdxl: Any) -> None:
    _, (_, sd1_clip, _) = sdxl
    with pytest.raises(PhotoMakerError, match="fuses 128-wide text embeddings .* 64-wide"):
        PhotoMakerEncode().apply_photomaker(build_photomaker(encoder_sd[0]), _image(), sd1_clip, "a man photomaker")


def test_file_layouts(encoder_sd: tuple[dict[str, torch.Tensor], Any], tmp_path: Path) -> None:
    sd, _ = encoder_sd
    # The published .bin: the encoder under "id_encoder", LoRA weights beside it.
    torch.save({"id_encoder": sd, "lora_weights": {"unet.x.lora.down.weight": torch.zeros(1)}}, tmp_path / "v1.bin")
    save_file(sd, str(tmp_path / "flat.safetensors"))
    for name in ("v1.bin", "flat.safetensors"):
        loaded = load_photomaker(tmp_path / name)
        for key, value in sd.items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)
    save_file({k: v for k, v in sd.items() if not k.startswith("fuse_module.")}, str(tmp_path / "vision_only.safetensors"))
    with pytest.raises(PhotoMakerError, match="not a PhotoMaker ID encoder: no fuse_module"):
        load_photomaker(tmp_path / "vision_only.safetensors")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(PhotoMakerError, match="Could not read junk.bin"):
        load_photomaker(tmp_path / "junk.bin")


# --- through the server --------------------------------------------------------------------------


async def test_photomaker_prompt_matches_the_direct_computation(
    comfy_server: Any, tmp_path: Path, encoder_sd: tuple[dict[str, torch.Tensor], Any]
) -> None:
    sd, vision = encoder_sd
    models = tmp_path / "models"
    tiny_pipeline.write_checkpoint(models / "checkpoints" / "sdxl.safetensors", "sdxl")
    (models / "photomaker").mkdir(parents=True)
    save_file(sd, str(models / "photomaker" / "pm.safetensors"))
    (tmp_path / "input").mkdir()
    from PIL import Image

    Image.new("RGB", (24, 20), (180, 60, 20)).save(tmp_path / "input" / "face.png")
    server = await comfy_server(plugins=["core_nodes", "models"])
    status, info = await server.json("GET", "/object_info/PhotoMakerLoader")
    assert status == 200
    assert info["PhotoMakerLoader"]["input"]["required"]["photomaker_model_name"][1]["options"] == ["pm.safetensors"]
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
        "pm": {"class_type": "PhotoMakerLoader", "inputs": {"photomaker_model_name": "pm.safetensors"}},
        "img": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "enc": {"class_type": "PhotoMakerEncode",
                "inputs": {"photomaker": ["pm", 0], "image": ["img", 0], "clip": ["ckpt", 1],
                           "text": "a (man) photomaker"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler",
               "inputs": {"model": ["ckpt", 0], "positive": ["enc", 0], "negative": ["neg", 0], "latent_image": ["lat", 0],
                          "seed": 5, "steps": 2, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "out": {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "pm"}},
    }  # fmt: skip
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    (saved,) = messages(frames, "executed")[-1]["output"]["latents"]
    served = load_file(str(tmp_path / "output" / saved["filename"]))["latent_tensor"]

    model, clip, _ = adapters.load_checkpoint(models / "checkpoints" / "sdxl.safetensors")
    image = torch.zeros(1, 20, 24, 3)
    image[..., 0], image[..., 1], image[..., 2] = 180 / 255, 60 / 255, 20 / 255
    # "a" and "(man)" are words 1 and 2 and segments 1 and 2; the trigger (word and segment 3) goes.
    plain, pooled = clip.encode_from_tokens(clip.tokenize("a (man)"), return_pooled=True)
    fused = plain.clone()
    fused[:, 2] = direct_fuse(sd, vision, clip_preprocess(image, IMAGE_SIZE), plain[:, 2])
    neg, neg_pooled = clip.encode_from_tokens(clip.tokenize("blurry"), return_pooled=True)
    direct = run_ksampler(model, 5, 2, 3.0, "euler", "simple", [[fused, {"pooled_output": pooled}]],
                          [[neg, {"pooled_output": neg_pooled}]], {"samples": torch.zeros(1, 4, 8, 8)})["samples"]  # fmt: skip
    assert torch.allclose(served, direct, atol=1e-4), f"{(served - direct).abs().max():.2e}"


async def test_packs_find_the_classes_in_the_reference_module(
    comfy_server: Any, tmp_path: Path, encoder_sd: tuple[dict[str, torch.Tensor], Any]
) -> None:
    import importlib

    folder = tmp_path / "models" / "photomaker"
    folder.mkdir(parents=True)
    save_file(encoder_sd[0], str(folder / "pm.safetensors"))
    await comfy_server(plugins=["comfy_compat", "models", "core_nodes"])
    module = importlib.import_module("comfy_extras.nodes_photomaker")
    assert sorted(module.NODE_CLASS_MAPPINGS) == ["PhotoMakerEncode", "PhotoMakerLoader"]
    (loaded,) = module.PhotoMakerLoader.execute("pm.safetensors")
    assert loaded.embed_dim == EMBED
