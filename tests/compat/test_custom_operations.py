"""Quantized models through a pack's own layer classes (``model_options["custom_operations"]``).

``packs/quant_ops_pack`` loads models the way ComfyUI-GGUF does: its layers (subclasses of
``comfy.ops.manual_cast``'s) keep the stored weights (int8 + scale, or GGUF Q8_0 blocks read with
the ``gguf`` package) and dequantize them in ``forward``. Sampled through a real server, each
gives the very latent of a plain checkpoint holding the dequantized weights, and the pack's
report shows its layers hold the quantized weights and ran.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.compat.helpers import PACKS
from tests.plugins.core_nodes import tiny_pipeline
from tests.plugins.core_nodes.node_helpers import messages, run_prompt

PLUGINS = ["comfy_compat", "models", "core_nodes"]
UNET = "model.diffusion_model."
TEXT = "cond_stage_model."
SIZE = 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _layer_weights(sd: dict[str, torch.Tensor], prefix: str) -> list[str]:
    """Linear (2-D) and Conv2d (4-D) weights under ``prefix``; embedding tables stay float."""
    return [
        k for k, v in sd.items()
        if k.startswith(prefix) and k.endswith(".weight") and v.ndim in (2, 4) and "embedding" not in k
    ]  # fmt: skip


def quantize_int8(
    sd: dict[str, torch.Tensor], keys: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(stored, plain)``: ``keys`` stored as int8 + ``<layer>.weight_scale``, and the float
    weights they stand for (exactly what the pack's layers compute from them)."""
    stored, plain = dict(sd), dict(sd)
    for key in keys:
        weight = sd[key].float()
        scale = weight.abs().max() / 127.0
        q = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
        stored[key] = q
        stored[key.removesuffix("weight") + "weight_scale"] = scale
        plain[key] = q.to(torch.float32) * scale
    return stored, plain


def write_q8_gguf(path: Path, unet: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """A ``.gguf`` UNet as ComfyUI-GGUF's converter writes one (un-prefixed keys, arch ``sd1``):
    Linear weights Q8_0, the rest F32. Returns the weights it stands for and the Q8_0 count."""
    writer = gguf.GGUFWriter(str(path), arch="sd1")
    plain: dict[str, torch.Tensor] = {}
    quantized = 0
    for name, tensor in unet.items():
        array = tensor.float().numpy()
        if tensor.ndim == 2 and tensor.shape[-1] % 32 == 0:
            blocks = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            array = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
            quantized += 1
        else:
            writer.add_tensor(name, array)
        plain[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return plain, quantized


class Graph:
    """Prompts, an empty latent and, per branch, KSampler + a saved latent (+ the pack's report)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Any] = {
            "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        }

    def add(self, name: str, class_type: str, **inputs: Any) -> str:
        self.nodes[name] = {"class_type": class_type, "inputs": inputs}
        return name

    def branch(self, name: str, model: list[Any], clip: list[Any], report: bool = False) -> None:
        pos = self.add(f"pos_{name}", "CLIPTextEncode", text="a red kite", clip=clip)
        neg = self.add(f"neg_{name}", "CLIPTextEncode", text="fog", clip=clip)
        self.add(
            f"ks_{name}", "KSampler", model=model, positive=[pos, 0], negative=[neg, 0],
            latent_image=["empty", 0], seed=5, steps=2, cfg=5.0, sampler_name="euler",
            scheduler="normal", denoise=1.0,
        )  # fmt: skip
        self.add(f"save_{name}", "ModelPackSaveLatent", samples=[f"ks_{name}", 0], filename_prefix=name)
        if report:
            self.add(f"report_{name}", "QuantOpsReport", model=model, clip=clip, after=[f"ks_{name}", 0])


async def _run(server: Any, graph: Graph) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
    """The latent each ``save_<name>`` wrote and each ``report_<name>``'s figures, by ``<name>``."""
    frames = await run_prompt(server, graph.nodes)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    latents, reports = {}, {}
    for data in messages(frames, "executed"):
        node = data["node"]
        if node.startswith("save_"):
            (saved,) = data["output"]["latents"]
            path = Path(server.kernel.settings.output_path) / saved["subfolder"] / saved["filename"]
            latents[node.removeprefix("save_")] = load_file(str(path))["samples"]
        elif node.startswith("report_"):
            pairs = (line.split("=") for line in data["output"]["text"])
            reports[node.removeprefix("report_")] = {k: int(v) for k, v in pairs}
    return latents, reports


async def _server(comfy_server: Any, tmp_path: Path, files: dict[str, Callable[[Path], Any]]) -> Any:
    """A server over ``models/<folder>/<file>``s written by ``files[...]`` (keyed ``folder/file``)."""
    for relative, write in files.items():
        path = tmp_path / "models" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])


async def test_int8_layers_of_a_pack_sample_as_the_dequantized_checkpoint(comfy_server: Any, tmp_path: Path) -> None:
    """A checkpoint whose UNet and CLIP layers are int8 (``load_checkpoint_guess_config`` with
    ``model_options`` / ``te_model_options``), its UNet alone (``load_diffusion_model_state_dict``)
    and its text encoder alone (``load_text_encoder_state_dicts``) sample as a plain checkpoint
    holding ``int8 * scale``."""
    full = tiny_pipeline.checkpoint_dict("sd1")
    unet_keys, text_keys = _layer_weights(full, UNET), _layer_weights(full, TEXT)
    stored, plain = quantize_int8(full, unet_keys + text_keys)
    unet_only = {k.removeprefix(UNET): v for k, v in stored.items() if k.startswith(UNET)}
    text_only = {k.removeprefix(TEXT + "transformer."): v for k, v in stored.items() if k.startswith(TEXT)}
    server = await _server(comfy_server, tmp_path, {
        "checkpoints/plain.safetensors": lambda p: save_file(plain, str(p)),
        "checkpoints/int8.safetensors": lambda p: save_file(stored, str(p)),
        "diffusion_models/unet_int8.safetensors": lambda p: save_file(unet_only, str(p)),
        "text_encoders/clip_l_int8.safetensors": lambda p: save_file(text_only, str(p)),
    })  # fmt: skip

    g = Graph()
    g.add("plain", "CheckpointLoaderSimple", ckpt_name="plain.safetensors")
    g.add("int8", "QuantOpsCheckpointLoader", ckpt_name="int8.safetensors")
    g.add("unet", "QuantOpsUNetLoader", unet_name="unet_int8.safetensors")
    g.add("clip", "QuantOpsCLIPLoader", clip_name="clip_l_int8.safetensors")
    g.branch("plain", ["plain", 0], ["plain", 1])
    g.branch("int8", ["int8", 0], ["int8", 1], report=True)
    g.branch("unet", ["unet", 0], ["plain", 1], report=True)
    g.branch("clip", ["plain", 0], ["clip", 0], report=True)
    latents, reports = await _run(server, g)

    assert latents["plain"].shape == (1, 4, SIZE // 8, SIZE // 8)
    assert torch.equal(latents["int8"], latents["plain"])
    assert torch.equal(latents["unet"], latents["plain"])
    assert torch.equal(latents["clip"], latents["plain"])
    # The pack's layers hold every quantized weight, of the UNet and of CLIP, and did the work.
    assert reports["int8"]["unet_layers"] == len(unet_keys)
    assert reports["int8"]["clip_layers"] == len(text_keys)
    assert reports["unet"]["unet_layers"] == len(unet_keys)
    assert reports["unet"]["clip_layers"] == 0
    assert reports["clip"]["clip_layers"] == len(text_keys)
    assert reports["unet"]["int8"] > 0


def write_lora(path: Path) -> None:
    """A kohya LoRA on a cross-attention key projection (a Q8_0 weight in the GGUF file)."""
    g = torch.Generator().manual_seed(3)
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    save_file({
        f"{name}.lora_down.weight": torch.randn(4, tiny_pipeline.CLIP_WIDTH, generator=g) * 0.3,
        f"{name}.lora_up.weight": torch.randn(32, 4, generator=g) * 0.3,
        f"{name}.alpha": torch.tensor(4.0),
    }, str(path))  # fmt: skip


async def test_a_real_gguf_file_loads_through_a_packs_dequantizing_layers(comfy_server: Any, tmp_path: Path) -> None:
    """A ``.gguf`` UNet (Q8_0 Linear weights kept as raw blocks in a tensor subclass, as
    ComfyUI-GGUF keeps them) samples as a checkpoint holding the dequantized weights; a LoRA on
    it, applied by the pack's own ``ModelPatcher`` class after dequantizing, samples as the same
    LoRA on that checkpoint, and the MODEL without the LoRA is unchanged afterwards."""
    full = tiny_pipeline.checkpoint_dict("sd1")
    unet = {k.removeprefix(UNET): v for k, v in full.items() if k.startswith(UNET)}
    quantized: list[int] = []

    def write_gguf(path: Path) -> None:
        plain_unet, count = write_q8_gguf(path, unet)
        quantized.append(count)
        full.update({UNET + k: v for k, v in plain_unet.items()})

    server = await _server(comfy_server, tmp_path, {
        "diffusion_models/tiny_unet.gguf": write_gguf,
        "checkpoints/plain.safetensors": lambda p: save_file(full, str(p)),
        "loras/tiny_lora.safetensors": write_lora,
    })  # fmt: skip
    assert quantized[0] > 20

    g = Graph()
    g.add("plain", "CheckpointLoaderSimple", ckpt_name="plain.safetensors")
    g.add("gguf", "QuantOpsUNetLoader", unet_name="tiny_unet.gguf")
    lora = {"lora_name": "tiny_lora.safetensors", "strength_model": 1.0}
    g.add("plain_lora", "LoraLoaderModelOnly", model=["plain", 0], **lora)
    g.add("gguf_lora", "LoraLoaderModelOnly", model=["gguf", 0], **lora)
    g.branch("plain", ["plain", 0], ["plain", 1])
    g.branch("gguf", ["gguf", 0], ["plain", 1], report=True)
    g.branch("plain_lora", ["plain_lora", 0], ["plain", 1])
    g.branch("gguf_lora", ["gguf_lora", 0], ["plain", 1])
    latents, reports = await _run(server, g)

    assert torch.equal(latents["gguf"], latents["plain"])
    assert not torch.equal(latents["plain_lora"], latents["plain"])
    assert torch.equal(latents["gguf_lora"], latents["plain_lora"])
    g2 = Graph()
    g2.add("gguf", "QuantOpsUNetLoader", unet_name="tiny_unet.gguf")
    g2.add("plain", "CheckpointLoaderSimple", ckpt_name="plain.safetensors")
    g2.branch("again", ["gguf", 0], ["plain", 1])
    assert torch.equal((await _run(server, g2))[0]["again"], latents["plain"])
    assert reports["gguf"]["unet_layers"] == quantized[0]
    assert reports["gguf"]["q8_0"] > 0
    assert reports["gguf"]["model_dtype_float32"] == 1


async def test_layer_classes_without_the_needed_layers_are_refused_by_name(comfy_server: Any) -> None:
    await comfy_server(plugins=PLUGINS)
    import comfy.sd

    unet_sd = {k: v for k, v in tiny_pipeline.checkpoint_dict("sd1").items() if k.startswith(UNET)}

    class NoLayers:
        Linear = torch.nn.Linear

    with pytest.raises(TypeError, match="NoLayers.*has no Conv2d, GroupNorm, LayerNorm"):
        comfy.sd.load_diffusion_model_state_dict(unet_sd, model_options={"custom_operations": NoLayers})


async def test_a_storage_dtype_alone_keeps_weights_in_it_and_computes_in_float(
    comfy_server: Any, tmp_path: Path
) -> None:
    """``model_options["dtype"]`` without layer classes: the weights are stored in that dtype and
    the reference's casting layers (``comfy.ops.manual_cast``) compute in float32, giving the
    output of float32 weights rounded to it."""
    await comfy_server(plugins=PLUGINS)
    import comfy.ops
    import comfy.sd

    full = tiny_pipeline.checkpoint_dict("sd1")
    unet_sd = {k: v for k, v in full.items() if k.startswith(UNET)}
    rounded = {k: v.to(torch.bfloat16).float() for k, v in unet_sd.items()}
    stored = comfy.sd.load_diffusion_model_state_dict(unet_sd, model_options={"dtype": torch.bfloat16})
    plain = comfy.sd.load_diffusion_model_state_dict(rounded)

    unet = stored.model.diffusion_model
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
    assert isinstance(unet.input_blocks[0][0], comfy.ops.manual_cast.Conv2d)
    assert stored.model_dtype() == torch.float32
    # The file loaders take the same options (and build for the caller, past the cache).
    path = tmp_path / "unet.safetensors"
    save_file({k.removeprefix(UNET): v for k, v in unet_sd.items()}, str(path))
    from_file = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.bfloat16})
    assert {p.dtype for p in from_file.model.diffusion_model.parameters()} == {torch.bfloat16}
    text = {k.removeprefix(TEXT + "transformer."): v for k, v in full.items() if k.startswith(TEXT)}
    save_file(text, str(tmp_path / "clip_l.safetensors"))
    clip = comfy.sd.load_clip([str(tmp_path / "clip_l.safetensors")], model_options={"dtype": torch.bfloat16})
    assert {p.dtype for p in clip.cond_stage_model.parameters()} == {torch.bfloat16}
    assert clip.encode_from_tokens(clip.tokenize("a kite")).dtype == torch.float32
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, tiny_pipeline.CLIP_WIDTH, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    with torch.no_grad():
        out = unet(x, t, context)
        assert out.dtype == torch.float32
        assert torch.equal(out, plain.model.diffusion_model(x, t, context))
