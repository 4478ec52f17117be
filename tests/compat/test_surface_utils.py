"""``comfy.utils``, ``comfy.model_management`` and ``comfy.ops`` behave like the reference's.

Each test imports the modules the way a pack does, through a kernel with the compatibility
plugin enabled, and checks them against an independent computation (PIL, plain torch layers,
hand-written key maps).
"""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
async def shims(comfy_server: Any) -> Any:
    return await comfy_server(plugins=["comfy_compat", "models", "core_nodes"], cpu=True)


def _mod(name: str) -> Any:
    return importlib.import_module(name)


# --- comfy.utils ---------------------------------------------------------------------------


async def test_state_dict_prefix_replace_mutates_unless_filtering(shims: Any) -> None:
    utils = _mod("comfy.utils")
    sd = {"model.a": 1, "model.b": 2, "other": 3}
    out = utils.state_dict_prefix_replace(sd, {"model.": "m."})
    assert out is sd and sd == {"m.a": 1, "m.b": 2, "other": 3}

    sd = {"model.a": 1, "other": 3}
    out = utils.state_dict_prefix_replace(sd, {"model.": ""}, filter_keys=True)
    assert out == {"a": 1} and sd == {"other": 3}

    sd = {"x": 1, "y": 2}
    assert utils.state_dict_key_replace(sd, {"x": "z", "missing": "w"}) == {"y": 2, "z": 1}


async def test_parameters_dtype_and_attrs(shims: Any) -> None:
    utils = _mod("comfy.utils")
    sd = {"a.w": torch.zeros(2, 3), "a.b": torch.zeros(3, dtype=torch.float16), "b.w": torch.zeros(10, dtype=torch.float16)}
    assert utils.calculate_parameters(sd) == 19
    assert utils.calculate_parameters(sd, "a.") == 9
    assert utils.weight_dtype(sd) == torch.float16
    assert utils.weight_dtype(sd, "a.") == torch.float32
    assert utils.weight_dtype(sd, "nothing") is None

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert utils.get_attr(net, "0.weight") is net[0].weight
    new = torch.ones(2, 2)
    previous = utils.set_attr_param(net, "0.weight", new)
    assert isinstance(net[0].weight, torch.nn.Parameter) and not net[0].weight.requires_grad
    assert torch.equal(net[0].weight, new) and previous is not net[0].weight
    held = net[0].bias
    utils.copy_to_param(net, "0.bias", torch.full((2,), 7.0))
    assert net[0].bias is held and torch.equal(held, torch.full((2,), 7.0))
    assert utils.set_attr(net, "0.extra", 5) is utils.ATTR_UNSET
    assert utils.set_attr(net, "0.extra", utils.ATTR_UNSET) == 5 and not hasattr(net[0], "extra")


async def test_batch_resizing(shims: Any) -> None:
    utils = _mod("comfy.utils")
    t = torch.arange(3).reshape(3, 1)
    assert utils.repeat_to_batch_size(t, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert utils.repeat_to_batch_size(t, 2).flatten().tolist() == [0, 1]
    frames = torch.arange(2).reshape(1, 2)
    assert utils.repeat_to_batch_size(frames, 5, dim=1).tolist() == [[0, 1, 0, 1, 0]]
    five = torch.arange(5)
    assert utils.resize_to_batch_size(five, 3).tolist() == [0, 2, 4]
    assert utils.resize_to_batch_size(torch.arange(2), 4).tolist() == [0, 0, 1, 1]
    assert utils.resize_list_to_batch_size(list("abcde"), 3) == ["a", "c", "e"]


async def test_common_upscale_methods(shims: Any) -> None:
    utils = _mod("comfy.utils")
    torch.manual_seed(0)
    images = torch.rand(2, 3, 12, 20)

    got = utils.common_upscale(images, 33, 17, "lanczos", "disabled")
    for i in range(2):
        pixels = np.clip(255.0 * images[i].movedim(0, -1).numpy(), 0, 255).astype(np.uint8)
        expected = np.array(Image.fromarray(pixels).resize((33, 17), Image.Resampling.LANCZOS)) / 255.0
        assert np.allclose(got[i].movedim(0, -1).numpy(), expected, atol=1e-6)

    nearest = utils.common_upscale(images, 10, 12, "nearest-exact", "center")
    assert torch.equal(nearest, images[:, :, :, 5:15])

    latents = torch.randn(1, 4, 8, 8)
    same = utils.common_upscale(latents, 8, 8, "bislerp", "disabled")
    assert torch.allclose(same, latents, atol=1e-5)
    up = utils.common_upscale(latents, 16, 12, "bislerp", "disabled")
    assert up.shape == (1, 4, 12, 16)
    # Slerp keeps a vector's length between its neighbours' (a straight lerp would shrink it).
    norms = latents.norm(dim=1)
    assert up.norm(dim=1).max() <= norms.max() + 1e-4

    video = torch.rand(1, 3, 2, 8, 8)
    scaled = utils.common_upscale(video, 4, 4, "area", "disabled")
    assert scaled.shape == (1, 3, 2, 4, 4)
    assert torch.allclose(scaled[:, :, 1], torch.nn.functional.interpolate(video[:, :, 1], size=(4, 4), mode="area"))


async def test_tiled_scale_blends_tiles_exactly(shims: Any) -> None:
    utils = _mod("comfy.utils")
    torch.manual_seed(1)
    image = torch.rand(2, 3, 50, 70)
    calls: list[tuple[int, ...]] = []

    def identity(tile: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tile.shape))
        return tile.clone()

    out = utils.tiled_scale(image, identity, tile_x=32, tile_y=24, overlap=8, upscale_amount=1, out_channels=3)
    assert torch.allclose(out, image, atol=1e-6)
    per_image = utils.get_tiled_scale_steps(70, 50, 32, 24, 8)
    assert per_image == 3 * 3 and len(calls) == 2 * per_image
    assert max(c[2] for c in calls) <= 24 and max(c[3] for c in calls) <= 32

    def double(tile: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(tile, scale_factor=2, mode="nearest")

    out = utils.tiled_scale(image, double, tile_x=32, tile_y=24, overlap=8, upscale_amount=2, out_channels=3)
    assert torch.allclose(out, double(image), atol=1e-6)

    class Bar:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    bar = Bar()
    small = torch.rand(1, 3, 16, 16)
    assert torch.allclose(utils.tiled_scale(small, identity, upscale_amount=1, pbar=bar), small)
    assert bar.n == 1


async def test_unet_to_diffusers_sd15_keys(shims: Any) -> None:
    utils = _mod("comfy.utils")
    config = {
        "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "transformer_depth_middle": 1,
    }
    m = utils.unet_to_diffusers(config)
    assert m["down_blocks.0.resnets.0.conv1.weight"] == "input_blocks.1.0.in_layers.2.weight"
    assert m["down_blocks.1.attentions.1.proj_in.weight"] == "input_blocks.5.1.proj_in.weight"
    assert m["down_blocks.0.downsamplers.0.conv.bias"] == "input_blocks.3.0.op.bias"
    assert "down_blocks.3.attentions.0.proj_in.weight" not in m
    assert m["mid_block.resnets.1.norm2.weight"] == "middle_block.2.out_layers.0.weight"
    assert m["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == "middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    assert m["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.1.conv.weight"
    assert m["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    assert m["up_blocks.3.attentions.2.proj_out.bias"] == "output_blocks.11.1.proj_out.bias"
    assert m["conv_in.weight"] == "input_blocks.0.0.weight"
    assert utils.unet_to_diffusers({}) == {}
    assert ("out.2.weight", "conv_out.weight") in utils.UNET_MAP_BASIC


async def test_torch_files_and_seeds(shims: Any, tmp_path: Path) -> None:
    utils = _mod("comfy.utils")
    path = tmp_path / "w.safetensors"
    utils.save_torch_file({"w": torch.arange(3.0)}, str(path))
    assert torch.equal(utils.load_torch_file(str(path))["w"], torch.arange(3.0))
    utils.save_torch_file({"w": torch.ones(1)}, str(path), metadata={"format": "pt"})
    assert utils.load_torch_file(str(path), return_metadata=True)[1] == {"format": "pt"}
    wrapped = tmp_path / "w.ckpt"
    torch.save({"state_dict": {"k": torch.ones(1)}, "global_step": 3}, wrapped)
    assert list(utils.load_torch_file(str(wrapped))) == ["k"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        utils.load_torch_file(str(bad))

    assert utils.string_to_seed("hello") == zlib.crc32(b"hello")
    assert utils.string_to_seed("") == 0


async def test_progress_bar_hook_and_enabled_flag(shims: Any) -> None:
    utils = _mod("comfy.utils")
    seen: list[tuple[Any, ...]] = []
    server_hook = utils.PROGRESS_BAR_HOOK
    assert callable(server_hook)

    def wrapper(value: float, total: float, preview: Any, node_id: str | None = None) -> None:
        seen.append((value, total, node_id))
        server_hook(value, total, preview, node_id=node_id)  # packs chain to the server's hook

    utils.set_progress_bar_global_hook(wrapper)
    try:
        bar = utils.ProgressBar(4, node_id="7")
        bar.update(1)
        bar.update_absolute(9)
    finally:
        utils.set_progress_bar_global_hook(server_hook)
    assert seen == [(1, 4, "7"), (4, 4, "7")]
    assert utils.ProgressBar(2).hook is server_hook
    utils.set_progress_bar_global_hook(None)
    try:
        silent = utils.ProgressBar(2)
        silent.update(1)
        assert silent.hook is None and silent.current == 1
    finally:
        utils.set_progress_bar_global_hook(server_hook)
    utils.PROGRESS_BAR_ENABLED = False
    assert _mod("comfy.utils").PROGRESS_BAR_ENABLED is False
    utils.set_progress_bar_enabled(True)
    assert utils.PROGRESS_BAR_ENABLED is True


async def test_reshape_mask(shims: Any) -> None:
    utils = _mod("comfy.utils")
    mask = torch.rand(1, 8, 8)
    out = utils.reshape_mask(mask, (3, 4, 16, 16))
    assert out.shape == (3, 4, 16, 16)
    expected = torch.nn.functional.interpolate(mask.reshape(1, 1, 8, 8), size=(16, 16), mode="bilinear")
    assert torch.allclose(out[2, 3], expected[0, 0])


# --- comfy.model_management ----------------------------------------------------------------


async def test_model_management_on_cpu(shims: Any) -> None:
    mm = _mod("comfy.model_management")
    cpu = torch.device("cpu")
    assert mm.get_torch_device() == cpu and mm.cpu_mode() and mm.cpu_state is mm.CPUState.CPU
    for fn in (mm.intermediate_device, mm.unet_offload_device, mm.text_encoder_device, mm.text_encoder_offload_device, mm.vae_device, mm.vae_offload_device):
        assert fn() == cpu
    assert not mm.should_use_fp16() and not mm.should_use_bf16(cpu)
    assert mm.unet_dtype() == torch.float32 and mm.vae_dtype(cpu, [torch.float16]) == torch.float32
    assert mm.unet_manual_cast(torch.float16, cpu) == torch.float32
    assert mm.unet_manual_cast(torch.float32, cpu) is None
    assert mm.text_encoder_dtype() == torch.float16
    assert not mm.xformers_enabled() and mm.XFORMERS_IS_AVAILABLE is False
    assert mm.is_device_cpu(cpu) and not mm.is_device_mps(cpu) and not mm.is_device_cuda(cpu)
    assert mm.get_autocast_device(cpu) == "cpu" and mm.get_torch_device_name(cpu) == "cpu"
    assert mm.dtype_size(torch.bfloat16) == 2 and mm.dtype_size(torch.float32) == 4
    assert mm.get_free_memory(cpu) > 0 and len(mm.get_free_memory(cpu, torch_free_too=True)) == 2
    assert issubclass(mm.OOM_EXCEPTION, BaseException)
    x = torch.ones(2, dtype=torch.float16)
    assert mm.cast_to_device(x, cpu, None) is x
    assert mm.cast_to_device(x, cpu, torch.float32).dtype == torch.float32
    assert mm.cast_to(x, copy=True) is not x
    mm.soft_empty_cache()
    assert mm.InterruptProcessingException is _mod("kernel.progress").Interrupted


async def test_load_models_gpu_bookkeeping(shims: Any) -> None:
    mm = _mod("comfy.model_management")

    class Patcher:
        def __init__(self) -> None:
            self.model = torch.nn.Linear(3, 3)
            self.load_device = torch.device("cpu")

    module = torch.nn.Conv2d(1, 1, 1)
    patcher = Patcher()
    mm.load_model_gpu(module)
    mm.load_models_gpu([patcher, module])
    assert mm.loaded_models() == [module, patcher]
    assert mm.module_size(patcher.model) == (9 + 3) * 4
    mm.free_memory(1e30, None)
    assert mm.loaded_models() == []
    mm.load_model_gpu(patcher)
    mm.unload_all_models()
    assert mm.loaded_models() == []


# --- comfy.ops -----------------------------------------------------------------------------


async def test_manual_cast_layers_compute_in_input_dtype(shims: Any) -> None:
    ops = _mod("comfy.ops")
    torch.manual_seed(2)
    lin = ops.manual_cast.Linear(4, 3, dtype=torch.float16)
    lin.weight.data = torch.randn(3, 4).half()
    lin.bias.data = torch.randn(3).half()
    x = torch.randn(2, 4)
    out = lin(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, x @ lin.weight.float().T + lin.bias.float())

    conv = ops.manual_cast.Conv2d(2, 2, 3, padding=1, dtype=torch.bfloat16)
    conv.weight.data = torch.randn(2, 2, 3, 3).bfloat16()
    conv.bias.data = torch.randn(2).bfloat16()
    ref = torch.nn.Conv2d(2, 2, 3, padding=1)
    ref.load_state_dict({k: v.float() for k, v in conv.state_dict().items()})
    img = torch.randn(1, 2, 5, 5)
    assert torch.allclose(conv(img), ref(img), atol=1e-5)

    norm = ops.manual_cast.GroupNorm(2, 4)
    norm.weight.data.fill_(1.0)
    norm.bias.data.zero_()
    assert norm(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)
    ln = ops.manual_cast.LayerNorm(4, dtype=torch.float16)
    ln.weight.data.fill_(1.0)
    ln.bias.data.zero_()
    assert ln(x).dtype == torch.float32
    emb = ops.manual_cast.Embedding(10, 4, dtype=torch.float16)
    assert emb(torch.tensor([1, 2]), out_dtype=torch.float32).dtype == torch.float32


async def test_disable_weight_init_and_weight_functions(shims: Any) -> None:
    ops = _mod("comfy.ops")
    lin = ops.disable_weight_init.Linear(2, 2)
    lin.weight.data.fill_(1.0)
    lin.bias.data.zero_()
    assert not lin.comfy_cast_weights
    lin.reset_parameters()
    assert torch.equal(lin.weight, torch.ones(2, 2))  # reset does nothing
    lin.weight_function = [lambda w: w * 2]
    assert torch.equal(lin(torch.ones(1, 2)), torch.full((1, 2), 4.0))
    assert torch.equal(lin.weight, torch.ones(2, 2))  # the stored weight is untouched

    weight, bias = ops.cast_bias_weight(lin, torch.ones(1, 2, dtype=torch.float64))
    assert weight.dtype == bias.dtype == torch.float64
    weight, bias, stream = ops.cast_bias_weight(lin, torch.ones(1, 2), offloadable=True)
    ops.uncast_bias_weight(lin, weight, bias, stream)

    assert ops.pick_operations(torch.float16, torch.float16) is ops.disable_weight_init
    assert ops.pick_operations(torch.float16, None) is ops.disable_weight_init
    assert ops.pick_operations(torch.float16, torch.float32) is ops.manual_cast
    assert isinstance(ops.manual_cast.conv_nd(2, 1, 1, 1), ops.manual_cast.Conv2d)


async def test_ops_subclass_like_gguf(shims: Any) -> None:
    """A pack layer overriding ``forward_comfy_cast_weights`` with its own 2-tuple ``cast_bias_weight``."""
    ops = _mod("comfy.ops")

    class Dequantizing(torch.nn.Module):
        comfy_cast_weights = True
        weight_function: list[Any] = []
        bias_function: list[Any] = []

        def cast_bias_weight(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            weight = ops.cast_to(self.weight * 0.5, input.dtype, input.device)
            bias = None if self.bias is None else ops.cast_to(self.bias, input.dtype, input.device)
            return weight, bias

        def forward_comfy_cast_weights(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self.forward_pack(input)

    class PackOps(ops.manual_cast):
        class Linear(Dequantizing, ops.manual_cast.Linear):
            def forward_pack(self, input: torch.Tensor) -> torch.Tensor:
                weight, bias = self.cast_bias_weight(input)
                return torch.nn.functional.linear(input, weight, bias)

    layer = PackOps.Linear(2, 2, dtype=torch.float16)
    layer.weight.data = torch.eye(2).half() * 4
    layer.bias.data = torch.zeros(2).half()
    out = layer(torch.ones(1, 2))
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((1, 2), 2.0))
