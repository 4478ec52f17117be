"""``comfy.sd``, ``comfy.sample`` and ``nodes.common_ksampler`` over the core nodes' model stack.

The end-to-end tests run ``packs/model_pack`` through a real server and compare its tensors bit for
bit with the graph the core nodes build for the same work: a one-node checkpoint + LoRA + sampling
that calls ComfyUI's helpers (against CheckpointLoaderSimple + LoraLoader + KSampler), and nodes
that use the CLIP object's ``tokenize`` / ``encode_from_tokens(_scheduled)`` / ``clone`` /
``clip_layer`` (against CLIPTextEncode and CLIPSetLastLayer). The other tests call the shims
directly, as a pack's code would, on tiny random-weight checkpoints.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.manager import get_manager
from plugins.core_nodes.sampling import noise as core_noise
from tests.compat.helpers import PACKS
from tests.plugins.core_nodes import test_workflows_e2e, tiny_pipeline
from tests.plugins.core_nodes.node_helpers import messages, run_prompt

SIZE = 64  # pixels; 8 x 8 latents
STEPS = 3
PLUGINS = ["comfy_compat", "models", "core_nodes"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_sd1.safetensors", "sd1")


# The tiny SD1 LoRA of the core end-to-end tests (one UNet attention layer, one CLIP-L layer).
lora_file = test_workflows_e2e.lora_file


@pytest.fixture
async def shims(comfy_server: Any) -> Any:
    """A server with the shims installed; calls made outside a node load uncached on the CPU."""
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])


def _shim(name: str) -> Any:
    return importlib.import_module(name)


# --- end to end: the pack against the core nodes' graph ---------------------------------------


async def _model_server(comfy_server: Any, tmp_path: Path, files: dict[str, Path]) -> Any:
    """``files`` maps a models/ folder to a file linked into it."""
    for folder, path in files.items():
        (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / folder / path.name).symlink_to(path)
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)], preview_method="latent2rgb")


def _sampling(seed: int = 11) -> dict[str, Any]:
    return {"seed": seed, "steps": STEPS, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}


def pack_prompt(ckpt: str, lora: str, strength: float, prefix: str) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "ModelPackTxt2Latent",
            "inputs": {
                "ckpt_name": ckpt,
                "lora_name": lora,
                "strength_model": strength,
                "strength_clip": strength,
                "positive": "a glass bottle on a beach",
                "negative": "text, watermark",
                "width": SIZE,
                "height": SIZE,
                **_sampling(),
            },
        },
        "2": {
            "class_type": "ModelPackSaveLatent",
            "inputs": {"samples": ["1", 0], "filename_prefix": prefix},
        },
    }


def core_prompt(ckpt: str, lora: str, strength: float, prefix: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": lora,
                "strength_model": strength,
                "strength_clip": strength,
            },
        },
        "3": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a glass bottle on a beach", "clip": ["2", 1]},
        },
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["2", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["2", 0],
                "positive": ["3", 0],
                "negative": ["4", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
                **_sampling(),
            },
        },
        "7": {
            "class_type": "ModelPackSaveLatent",
            "inputs": {"samples": ["6", 0], "filename_prefix": prefix},
        },
    }


async def _run(server: Any, prompt: dict[str, Any]) -> tuple[torch.Tensor, list[bytes]]:
    """The saved latent of ``prompt`` and the preview frames its run sent."""
    frames = await run_prompt(server, prompt)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    saver = next(n for n, node in prompt.items() if node["class_type"] == "ModelPackSaveLatent")
    (output,) = [d["output"] for d in messages(frames, "executed") if d["node"] == saver]
    (saved,) = output["latents"]
    path = Path(server.kernel.settings.output_path) / saved["subfolder"] / saved["filename"]
    return load_file(str(path))["samples"], [f for f in frames if isinstance(f, bytes)]


async def test_pack_sampling_through_comfy_helpers_equals_the_core_graph(
    comfy_server: Any, tmp_path: Path, checkpoint: Path, lora_file: Path
) -> None:
    server = await _model_server(comfy_server, tmp_path, {"checkpoints": checkpoint, "loras": lora_file})
    ckpt, lora = checkpoint.name, lora_file.name

    from_pack, pack_previews = await _run(server, pack_prompt(ckpt, lora, 1.0, "pack"))
    from_core, core_previews = await _run(server, core_prompt(ckpt, lora, 1.0, "core"))
    assert from_pack.shape == (1, 4, SIZE // 8, SIZE // 8)
    assert torch.equal(from_pack, from_core)
    # Both loaded the checkpoint through the server's model manager: one cached copy, shared.
    assert [m.kind for m in get_manager(server.kernel).loaded()] == ["checkpoint"]
    # Previews as the core KSampler sends them: one JPEG frame per step.
    assert len(pack_previews) == len(core_previews) == STEPS
    assert all(frame[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x01" for frame in pack_previews)

    # The LoRA really took part: without it (strength 0) both give another latent, again equal.
    plain_pack, _ = await _run(server, pack_prompt(ckpt, lora, 0.0, "pack_plain"))
    plain_core, _ = await _run(server, core_prompt(ckpt, lora, 0.0, "core_plain"))
    assert torch.equal(plain_pack, plain_core)
    assert not torch.equal(plain_pack, from_pack)


async def test_a_broken_checkpoint_in_a_pack_is_an_execution_error(
    comfy_server: Any, tmp_path: Path, lora_file: Path
) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model at all")
    server = await _model_server(comfy_server, tmp_path, {"checkpoints": broken, "loras": lora_file})
    frames = await run_prompt(server, pack_prompt(broken.name, lora_file.name, 1.0, "broken"))
    (error,) = messages(frames, "execution_error")
    assert error["node_id"] == "1"
    assert "broken.safetensors" in error["exception_message"]


def _encode_prompt(ckpt: str, text: str) -> dict[str, Any]:
    """Every way to encode ``text``: the core nodes and the pack's CLIP-API nodes, each saved."""

    def saved(source: str) -> dict[str, Any]:
        return {
            "class_type": "ModelPackSaveConditioning",
            "inputs": {"conditioning": [source, 0], "filename_prefix": f"cond_{source}"},
        }

    clip = ["ckpt", 1]
    nodes = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "core": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}},
        "skip": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": clip, "stop_at_clip_layer": -2}},
        "core_skip": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["skip", 0]}},
        "pack_skip": {
            "class_type": "ModelPackClipSkipEncode",
            "inputs": {"clip": clip, "text": text, "stop_at_clip_layer": -2},
        },
    }
    for factor in (1.0, 1.5):
        nodes[f"pack_x{factor}"] = {
            "class_type": "ModelPackWeightedEncode",
            "inputs": {"clip": clip, "text": text, "factor": factor},
        }
    encoders = [name for name in nodes if name not in ("ckpt", "skip")]
    return {**nodes, **{f"save_{name}": saved(name) for name in encoders}}


async def _conditionings(server: Any, prompt: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors each ``save_<name>`` node of ``prompt`` wrote, by ``<name>``."""
    frames = await run_prompt(server, prompt)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    out = {}
    for data in messages(frames, "executed"):
        (saved,) = data["output"]["latents"]
        path = Path(server.kernel.settings.output_path) / saved["subfolder"] / saved["filename"]
        out[data["node"].removeprefix("save_")] = load_file(str(path))
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys() == {"cond", "pooled_output"}
    return all(torch.equal(a[k], b[k]) for k in a)


async def test_pack_clip_api_equals_the_core_text_nodes(
    comfy_server: Any, tmp_path: Path, checkpoint: Path
) -> None:
    server = await _model_server(comfy_server, tmp_path, {"checkpoints": checkpoint})
    got = await _conditionings(server, _encode_prompt(checkpoint.name, "a (glass:1.2) bottle on a beach"))
    assert sorted(got) == ["core", "core_skip", "pack_skip", "pack_x1.0", "pack_x1.5"]
    assert got["core"]["cond"].shape == (1, 77, tiny_pipeline.CLIP_WIDTH)
    # tokenize -> weights x1 -> encode_from_tokens is CLIPTextEncode, bit for bit; x1.5 is not.
    assert _same(got["pack_x1.0"], got["core"])
    assert not torch.equal(got["pack_x1.5"]["cond"], got["core"]["cond"])
    # clone().clip_layer(-2) + encode_from_tokens_scheduled is CLIPSetLastLayer + CLIPTextEncode.
    assert _same(got["pack_skip"], got["core_skip"])
    assert not torch.equal(got["core_skip"]["cond"], got["core"]["cond"])

    # The pack's clip_layer changed its clone only: the cached loader's CLIP (the same object the
    # pack got) still encodes at the default layer, so a new text differs with and without skip.
    again = await _conditionings(server, _encode_prompt(checkpoint.name, "a red fox"))
    assert not torch.equal(again["core"]["cond"], again["core_skip"]["cond"])
    assert _same(again["pack_x1.0"], again["core"]) and _same(again["pack_skip"], again["core_skip"])
    assert [m.kind for m in get_manager(server.kernel).loaded()] == ["checkpoint"]


# --- comfy.sd, called as a pack calls it ------------------------------------------------------


async def test_load_checkpoint_guess_config_honours_the_output_flags(shims: Any, checkpoint: Path) -> None:
    sd = _shim("comfy.sd")
    model, clip, vae, clipvision = sd.load_checkpoint_guess_config(str(checkpoint))
    assert isinstance(model, adapters.DiffusionModel)
    assert isinstance(clip, adapters.TextEncoder)
    assert isinstance(vae, adapters.Autoencoder)
    assert clipvision is None
    only_model = sd.load_checkpoint_guess_config(
        str(checkpoint), output_vae=False, output_clip=False, output_clipvision=True
    )
    assert isinstance(only_model[0], adapters.DiffusionModel) and only_model[1:] == (None, None, None)
    no_model = sd.load_checkpoint_guess_config(checkpoint, output_model=False, model_options={})
    assert no_model[0] is None and isinstance(no_model[1], adapters.TextEncoder)
    assert isinstance(no_model[2], adapters.Autoencoder)


async def test_missing_files_are_clear_errors(shims: Any, tmp_path: Path) -> None:
    sd = _shim("comfy.sd")
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match=r"load_checkpoint_guess_config.*nowhere\.safetensors"):
        sd.load_checkpoint_guess_config(str(missing))
    with pytest.raises(FileNotFoundError, match=r"load_diffusion_model.*nowhere\.safetensors"):
        sd.load_diffusion_model(str(missing))
    with pytest.raises(FileNotFoundError, match=r"load_clip.*nowhere\.safetensors"):
        sd.load_clip([str(missing)])
    with pytest.raises(AttributeError, match="comfy.sd.load_state_dict_guess_config is not provided"):
        sd.load_state_dict_guess_config  # noqa: B018


async def test_vae_from_a_state_dict_decodes_as_the_checkpoints_vae(shims: Any, checkpoint: Path) -> None:
    """``comfy.sd.VAE(sd=...)`` with the checkpoint's prefixed keys or a bare VAE file's keys
    decodes exactly as the checkpoint's own VAE; anything else is a clear error."""
    sd, utils = _shim("comfy.sd"), _shim("comfy.utils")
    _, _, ckpt_vae, _ = sd.load_checkpoint_guess_config(str(checkpoint))
    weights = utils.load_torch_file(str(checkpoint))
    prefixed = {k: v for k, v in weights.items() if k.startswith("first_stage_model.")}
    bare = {k[len("first_stage_model.") :]: v for k, v in prefixed.items()}
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = ckpt_vae.decode(latent)
    for state in (prefixed, bare):
        vae = sd.VAE(sd=state)
        assert isinstance(vae, adapters.Autoencoder)
        assert torch.equal(vae.decode(latent), expected)
    with pytest.raises(TypeError, match="state dict"):
        sd.VAE()
    with pytest.raises(Exception, match="not a VAE this server knows"):
        sd.VAE(sd={"unrelated": torch.zeros(2)})


async def test_load_lora_for_models_takes_a_state_dict(shims: Any, checkpoint: Path, lora_file: Path) -> None:
    sd, utils = _shim("comfy.sd"), _shim("comfy.utils")
    model, clip, _, _ = sd.load_checkpoint_guess_config(str(checkpoint))
    lora = utils.load_torch_file(str(lora_file))
    new_model, new_clip = sd.load_lora_for_models(model, clip, lora, 0.5, 1.0)
    by_path = adapters.apply_lora(model, clip, lora_file, 0.5, 1.0)
    # The same patches as the LoraLoader's (path) route, on new objects; the inputs are unchanged.
    assert new_model is not model and new_clip is not clip and not model.patches
    assert new_model.patches.keys() == by_path[0].patches.keys() != set()
    assert torch.equal(new_clip.encode("a cat")[0], by_path[1].encode("a cat")[0])
    assert not torch.equal(new_clip.encode("a cat")[0], clip.encode("a cat")[0])
    with pytest.raises(TypeError, match="state dict"):
        sd.load_lora_for_models(model, clip, str(lora_file), 1.0, 1.0)


async def test_load_lora_for_models_always_gives_new_objects(
    shims: Any, checkpoint: Path, lora_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As the reference: where the LoRA changes nothing (no text-encoder keys, strength 0, keys
    that fit nothing) the results are clones, so a pack's clip_layer / model_options on them
    never reach the cached loader's objects; a LoRA that fits nothing is a warning."""
    sd, utils = _shim("comfy.sd"), _shim("comfy.utils")
    model, clip, _, _ = sd.load_checkpoint_guess_config(str(checkpoint))
    lora = utils.load_torch_file(str(lora_file))
    unet_only = {k: v for k, v in lora.items() if k.startswith("lora_unet_")}
    before = clip.encode("a cat")[0]
    for weights, strengths in ((unet_only, (1.0, 1.0)), (lora, (0.0, 0.0)), ({"x": torch.zeros(2)}, (1, 1))):
        new_model, new_clip = sd.load_lora_for_models(model, clip, weights, *strengths)
        assert new_model is not model and new_clip is not clip
        new_clip.clip_layer(-2)
        new_model.model_options["transformer_options"]["mark"] = True
        assert clip.layer_idx is None and "mark" not in model.model_options["transformer_options"]
        assert torch.equal(clip.encode("a cat")[0], before)
    assert "nothing was applied" in caplog.text
    clip_only = sd.load_lora_for_models(None, clip, unet_only, 0.0, 1.0)
    assert clip_only[0] is None and clip_only[1] is not clip


async def test_load_diffusion_model_reads_a_standalone_unet(
    shims: Any, checkpoint: Path, tmp_path: Path
) -> None:
    sd = _shim("comfy.sd")
    prefix = "model.diffusion_model."
    unet_file = tmp_path / "unet.safetensors"
    weights = load_file(str(checkpoint))
    save_file({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, str(unet_file))
    from_checkpoint = sd.load_checkpoint_guess_config(str(checkpoint))[0].unet.state_dict()
    for model in (sd.load_diffusion_model(str(unet_file)), sd.load_unet(str(unet_file))):
        assert isinstance(model, adapters.DiffusionModel) and model.family.name == "sd1"
        loaded = model.unet.state_dict()
        assert loaded.keys() == from_checkpoint.keys()
        assert all(torch.equal(loaded[k], from_checkpoint[k]) for k in loaded)


async def test_load_clip_types(shims: Any, checkpoint: Path, tmp_path: Path) -> None:
    sd = _shim("comfy.sd")
    weights = load_file(str(checkpoint))
    prefix = "cond_stage_model.transformer."
    clip_l = tmp_path / "clip_l.safetensors"
    save_file({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, str(clip_l))
    standalone = sd.load_clip([str(clip_l)], clip_type=sd.CLIPType.STABLE_DIFFUSION)
    _, from_checkpoint, _, _ = sd.load_checkpoint_guess_config(str(checkpoint))
    assert torch.equal(standalone.encode("a cat")[0], from_checkpoint.encode("a cat")[0])

    # SDXL's pair: CLIPType.SDXL is STABLE_DIFFUSION with two files, as the reference loads it.
    xl = tiny_pipeline.checkpoint_dict("sdxl")
    l_prefix, g_prefix = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
    pair = [tmp_path / "xl_l.safetensors", tmp_path / "xl_g.safetensors"]
    save_file({k[len(l_prefix) :]: v for k, v in xl.items() if k.startswith(l_prefix)}, str(pair[0]))
    save_file({k[len(g_prefix) :]: v for k, v in xl.items() if k.startswith(g_prefix)}, str(pair[1]))
    assert sd.CLIPType.SDXL is sd.CLIPType.STABLE_DIFFUSION
    for clip_type in (sd.CLIPType.SDXL, sd.CLIPType.STABLE_DIFFUSION):
        dual = sd.load_clip([str(p) for p in pair], clip_type=clip_type)
        assert sorted(dual.models) == ["g", "l"]

    with pytest.raises(ValueError, match=r"CLIPType\.FLUX text encoders are not supported"):
        sd.load_clip([str(clip_l)], clip_type=sd.CLIPType.FLUX)
    with pytest.raises(ValueError, match="one or two files, not 3"):
        sd.load_clip([str(clip_l)] * 3)
    with pytest.raises(ValueError, match="is not a CLIPType"):
        sd.load_clip([str(clip_l)], clip_type=999)


# --- comfy.sample -----------------------------------------------------------------------------


async def test_prepare_noise_is_the_core_noise(shims: Any) -> None:
    sample = _shim("comfy.sample")
    latent = torch.zeros(3, 4, 8, 8)
    assert torch.equal(sample.prepare_noise(latent, 42), core_noise.prepare_noise(latent, 42))
    sliced = torch.zeros(2, 4, 8, 8)
    inds = [2, 0]
    got = sample.prepare_noise(sliced, 42, inds)
    assert torch.equal(got, core_noise.prepare_noise(sliced, 42, inds))
    # Batch index k gets item k of the draws for the whole batch, one item at a time.
    g = torch.Generator().manual_seed(42)
    draws = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(3)]
    assert torch.equal(got, torch.cat([draws[2], draws[0]]))
    assert not torch.equal(got, sample.prepare_noise(sliced, 43, inds))


async def test_fix_empty_latent_channels(shims: Any, checkpoint: Path) -> None:
    sample, sd = _shim("comfy.sample"), _shim("comfy.sd")
    model = sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=False)[0]
    empty = torch.zeros(2, 4, 8, 8)
    assert sample.fix_empty_latent_channels(model, empty) is empty
    wide = sample.fix_empty_latent_channels(model, torch.zeros(2, 16, 8, 8))
    assert wide.shape == (2, 4, 8, 8) and not wide.any()
    # A latent made for a VAE with 16x downscale becomes the 8x model's size.
    assert sample.fix_empty_latent_channels(model, empty, 16).shape == (2, 4, 16, 16)
    busy = torch.ones(2, 16, 8, 8)
    assert sample.fix_empty_latent_channels(model, busy) is busy
    with pytest.raises(TypeError, match="not a MODEL"):
        sample.fix_empty_latent_channels(object(), empty)
