"""Tiny random-weight model files for the pack yardstick's smoke workflows.

Real packs load real model files by name from the server's model folders. The bench cannot
download any, so it writes small random-weight stand-ins, built here from the test suite's tiny
SD1 pipeline (``tests/plugins/core_nodes/tiny_pipeline.py``), into ``<home>/models`` before the
server starts. The files have the layouts the real ones have (single-file checkpoint, ESRGAN,
kohya LoRA, ControlNet, GGUF UNet, IC-Light UNet, WD14 ONNX tagger with its tag list), so a pack's own loader reads them as
it would read a download; the images they make are noise, which is all a smoke run needs. The
DepthAnythingV2 file is only a name: that pack's loader tolerates a file without its keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = "tiny_sd1.safetensors"
UPSCALER = "tiny_esrgan_x2.safetensors"
LORA = "tiny_lora.safetensors"
GGUF_UNET = "tiny_sd1_unet.gguf"
IC_LIGHT = "tiny_iclight_sd1.safetensors"
CONTROLNET = "tiny_controlnet_sd1.safetensors"
TAGGER = "tiny-tagger"
DEPTH_ANYTHING = "depth_anything_v2_vits_fp32.safetensors"
SAM2 = "sam2.1_hiera_tiny.safetensors"
SAM2_PACK = "ComfyUI-segment-anything-2"
# Run in a child process: builds SAM 2.1 Hiera-T the way the pack's own loader does (its config,
# its classes) with fresh random weights, and saves the state dict its loader expects. Loading
# the pack's loader module needs only ``comfy.utils.load_torch_file``, stubbed here, because the
# point is the network's layout, not any weights.
SAM2_BUILDER = """
import importlib, sys, types
root, pack, config, out = sys.argv[1:5]
sys.path.insert(0, root)
import kernel  # its torchvision hook: the pack's modules import torchvision
import torch
from safetensors.torch import save_file
stub_comfy = types.ModuleType("comfy")
stub_utils = types.ModuleType("comfy.utils")
stub_utils.load_torch_file = lambda path: {}
stub_comfy.utils = stub_utils
sys.modules.update({"comfy": stub_comfy, "comfy.utils": stub_utils})
package = types.ModuleType("sam2_pack")
package.__path__ = [pack]
sys.modules["sam2_pack"] = package
loader = importlib.import_module("sam2_pack.load_model")
torch.manual_seed(0)
torch.nn.Module.load_state_dict = lambda self, sd, *args, **kwargs: None
predictor = loader.load_model(out, config, "single_image", torch.float32, torch.device("cpu"))
state = {k: v.contiguous() for k, v in predictor.model.state_dict().items()}
save_file(state, out)
"""
TAGGER_SIZE = 32  # pixels: the ONNX input is a TAGGER_SIZE x TAGGER_SIZE BGR image
TAGS = [("rating", "general", "9"), ("rating", "explicit", "9"), ("tag", "solo", "0")]
TAGS += [("tag", "noise", "0"), ("tag", "someone", "4")]


def write_models(home: Path, packs: dict[str, Path] | None = None) -> dict[str, Path]:
    """Write every stand-in under ``home/models``; kind -> the file written. ``packs`` (name ->
    folder) are the packs under test: a stand-in built with a pack's own code needs its pack."""
    if str(ROOT) not in sys.path:  # the bench runs as a script from bench/
        sys.path.insert(0, str(ROOT))
    import kernel  # noqa: F401, PLC0415 - its torchvision hook lets spandrel import beside CPU torch
    from tests.plugins.core_nodes import tiny_pipeline  # noqa: PLC0415 - torch only when wanted

    models = home / "models"
    checkpoint = tiny_pipeline.checkpoint_dict("sd1")
    written = {"checkpoint": models / "checkpoints" / CHECKPOINT}
    _save(written["checkpoint"], checkpoint)
    written["upscale_model"] = _write_esrgan(models / "upscale_models" / UPSCALER)
    written["controlnet"] = _write_controlnet(models / "controlnet" / CONTROLNET)
    written["lora"] = _write_lora(models / "loras" / LORA)
    unet = {k.removeprefix("model.diffusion_model."): v for k, v in checkpoint.items() if k.startswith("model.")}
    written["gguf_unet"] = _write_gguf(models / "unet" / GGUF_UNET, unet)
    written["ic_light"] = _write_ic_light(models / "unet" / IC_LIGHT, unet)
    written["tagger"] = _write_tagger(models / "wd14_tagger", TAGGER)
    written["depth_anything"] = _write_placeholder(models / "depthanything" / DEPTH_ANYTHING)
    sam2_pack = (packs or {}).get(SAM2_PACK)
    if sam2_pack is not None:
        written["sam2"] = _write_sam2(models / "sam2" / SAM2, sam2_pack)
    return written


def extra_model_paths(home: Path) -> str:
    """An extra_model_paths.yaml for the folders only packs know (the reference has no such kinds
    by default; a pack that finds one registered uses it instead of a folder inside itself)."""
    return f"bench:\n  base_path: {home / 'models'}\n  wd14_tagger: wd14_tagger\n"


def _save(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _write_placeholder(path: Path) -> Path:
    """A file for loaders that read it with ``load_state_dict(strict=False)`` (DepthAnythingV2):
    its one tensor matches no key, so the pack's freshly initialised network runs as it is. Real
    weights would only change the numbers, not what the pack's code does with them."""
    import torch  # noqa: PLC0415

    return _save(path, {"bench.placeholder": torch.zeros(1)})


def _write_sam2(path: Path, pack: Path) -> Path:
    """SAM 2.1 Hiera-T with random weights, built by the pack's own loader in a child process
    (the pack's modules must not be imported into the bench)."""
    import subprocess  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    config = pack / "sam2_configs" / "sam2.1_hiera_t.yaml"
    command = [sys.executable, "-c", SAM2_BUILDER, str(ROOT), str(pack.resolve()), str(config), str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:  # the workflow then fails on the missing file, which says enough
        print(f"bench: could not build {path.name}:\n{done.stderr[-2000:]}", file=sys.stderr)
    return path


def _write_controlnet(path: Path) -> Path:
    """A ControlNet for the tiny UNet in the single-file layout (``control_model.`` + LDM names):
    diffusers' ``ControlNetModel`` at the tiny UNet's sizes, renamed as the test suite does."""
    import logging  # noqa: PLC0415

    import torch  # noqa: PLC0415

    # diffusers imports bitsandbytes, which warns on CPU about GPU kernels no tiny ControlNet uses.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from diffusers import ControlNetModel  # noqa: PLC0415

    from plugins.core_nodes.models.controlnet import from_diffusers  # noqa: PLC0415
    from tests.plugins.core_nodes import tiny_pipeline, tiny_sd  # noqa: PLC0415

    full = tiny_sd.diffusers_config(tiny_pipeline.UNETS["sd1"])
    keep = (
        "in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
        "attention_head_dim", "use_linear_projection", "transformer_layers_per_block",
    )  # fmt: skip
    torch.manual_seed(5)
    model = ControlNetModel(**{k: full[k] for k in keep if k in full})
    with torch.no_grad():  # diffusers zero-initialises the output convolutions: make them count
        for parameter in model.parameters():
            parameter.copy_(0.05 * torch.randn_like(parameter))
    return _save(path, {f"control_model.{k}": v for k, v in from_diffusers(model.state_dict()).items()})


def _write_esrgan(path: Path) -> Path:
    import torch  # noqa: PLC0415
    from spandrel.architectures.ESRGAN import ESRGAN  # noqa: PLC0415

    torch.manual_seed(0)
    return _save(path, ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2).state_dict())


def _write_lora(path: Path) -> Path:
    """A kohya LoRA on one cross-attention key projection of the tiny UNet and one CLIP MLP."""
    import torch  # noqa: PLC0415

    from tests.plugins.core_nodes import tiny_pipeline  # noqa: PLC0415

    g = torch.Generator().manual_seed(7)
    unet = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    te = "lora_te_text_model_encoder_layers_1_mlp_fc2"
    width = tiny_pipeline.CLIP_WIDTH
    return _save(
        path,
        {
            f"{unet}.lora_down.weight": torch.randn(4, width, generator=g) * 0.1,
            f"{unet}.lora_up.weight": torch.randn(32, 4, generator=g) * 0.1,
            f"{unet}.alpha": torch.tensor(4.0),
            f"{te}.lora_down.weight": torch.randn(2, 2 * width, generator=g) * 0.1,
            f"{te}.lora_up.weight": torch.randn(width, 2, generator=g) * 0.1,
        },
    )


def _write_ic_light(path: Path, unet: dict) -> Path:
    """An IC-Light UNet in the LDM layout its loader applies as ``diff`` patches: zero differences
    everywhere except the first convolution, which takes 8 channels (latent + foreground), as
    IC-Light's does; the loader pads the 4-channel base weight to match."""
    import torch  # noqa: PLC0415

    first = "input_blocks.0.0.weight"
    diffs = {key: torch.zeros_like(value) for key, value in unet.items()}
    out_channels, in_channels, *kernel = unet[first].shape
    g = torch.Generator().manual_seed(11)
    diffs[first] = torch.randn(out_channels, 2 * in_channels, *kernel, generator=g) * 0.01
    return _save(path, diffs)


def _write_gguf(path: Path, unet: dict) -> Path:
    """The UNet alone, as ComfyUI-GGUF's converter writes it: unprefixed keys, arch ``sd1``, the
    2-D (linear) weights quantized to Q8_0 and everything else F32, so a smoke run goes through the
    pack's dequantization (its custom operations) as a real quantized file does."""
    import gguf  # noqa: PLC0415

    q8 = gguf.GGMLQuantizationType.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[q8]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="sd1")
    for name, tensor in unet.items():
        data = tensor.float().numpy()
        if data.ndim == 2 and data.shape[-1] % block == 0:  # Q8_0 packs each row in blocks of 32
            writer.add_tensor(name, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_tagger(folder: Path, name: str) -> Path:
    """A WD14-style tagger: NHWC BGR image in, one sigmoid score per line of the CSV out."""
    import numpy as np  # noqa: PLC0415
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    weights = np.random.default_rng(0).standard_normal((3, len(TAGS))).astype(np.float32) / 100.0
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input_1:0"], ["pooled"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weights"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [1, TAGGER_SIZE, TAGGER_SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [1, len(TAGS)])],
        [numpy_helper.from_array(weights, "weights")],
    )
    # ReduceMean's axes are an attribute up to opset 17; pin one onnxruntime surely runs.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    rows = ["tag_id,name,category,count"] + [f"{i},{tag},{cat},1" for i, (_, tag, cat) in enumerate(TAGS)]
    (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return path
