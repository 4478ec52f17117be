"""Upscale models: files written in the real layouts of spandrel's architectures (ESRGAN's old
"model.N" names, Real-ESRGAN Compact, SwinIR as a ``{"params_ema": ...}`` .pth and as a
DataParallel "module." dict, SPAN) load and upscale exactly as the model spandrel builds from the
same file; images larger than a tile follow the reference's tile and overlap rules (written out
here independently); progress counts the tiles; and the nodes run through the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.nodes import upscale

from .node_helpers import messages, run_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomized(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def esrgan() -> dict[str, torch.Tensor]:
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    return _randomized(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2), 0)


def compact() -> dict[str, torch.Tensor]:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(1)
    return _randomized(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2), 1)


def swinir() -> dict[str, torch.Tensor]:
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(2)
    net = SwinIR(img_size=16, patch_size=1, in_chans=3, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                 mlp_ratio=2, upscale=2, upsampler="pixelshuffledirect", resi_connection="1conv")  # fmt: skip
    return _randomized(net, 2)


def span() -> dict[str, torch.Tensor]:
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(3)
    return _randomized(SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2), 3)


def _write(folder: Path, layout: str) -> Path:
    """One file per layout, as the models are published."""
    if layout == "esrgan_old_names":
        sd = esrgan()
        assert "model.0.weight" in sd  # the original ESRGAN repository's names
        save_file(sd, str(folder / "esrgan.safetensors"))
        return folder / "esrgan.safetensors"
    if layout == "compact":
        torch.save(compact(), folder / "compact.pth")
        return folder / "compact.pth"
    if layout == "swinir_params_ema":
        torch.save({"params_ema": swinir()}, folder / "swinir.pth")
        return folder / "swinir.pth"
    if layout == "swinir_data_parallel":
        torch.save({"module." + k: v for k, v in swinir().items()}, folder / "swinir_dp.pth")
        return folder / "swinir_dp.pth"
    save_file(span(), str(folder / "span.safetensors"))
    return folder / "span.safetensors"


LAYOUTS = ["esrgan_old_names", "compact", "swinir_params_ema", "swinir_data_parallel", "span"]
ARCHITECTURES = {"esrgan_old_names": "ESRGAN", "compact": "RealESRGAN Compact", "swinir_params_ema": "SwinIR",
                 "swinir_data_parallel": "SwinIR", "span": "SPAN"}  # fmt: skip


def _spandrel_direct(path: Path) -> Any:
    """The model as spandrel itself reads the file."""
    import spandrel

    return spandrel.ModelLoader().load_from_file(str(path)).eval()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_upscales_as_spandrel_does(tmp_path: Path, layout: str) -> None:
    path = _write(tmp_path, layout)
    ours = upscale.load_upscale_model(upscale.read_upscale_state_dict(path))
    direct = _spandrel_direct(path)
    assert ours.architecture.name == direct.architecture.name == ARCHITECTURES[layout]
    assert ours.scale == 2
    image = torch.rand(1, 20, 28, 3, generator=torch.Generator().manual_seed(4))
    (out,) = upscale.ImageUpscaleWithModel().upscale(ours, image)
    with torch.no_grad():
        expected = direct(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert out.shape == (1, 40, 56, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# --- the reference's tiling, written out ---------------------------------------------------------


def _ramp(length: int, feather: int) -> torch.Tensor:
    """Per-row weight along one axis of a tile's output: rising over ``feather`` rows at both
    ends (the two ramps multiply where they meet); flat when the axis is no longer than the ramp."""
    if feather >= length:
        return torch.ones(length)
    i = torch.arange(length, dtype=torch.float32)
    rise = torch.clamp((i + 1) / feather, max=1.0)
    return rise * rise.flip(0)


def reference_tiling(image: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], scale: int,
                     tile: int, overlap: int) -> tuple[torch.Tensor, int]:  # fmt: skip
    """comfy.utils.tiled_scale's rules: origins every (tile - overlap) below size - overlap, tiles
    cut short at the border, outputs weighted by the ramps and averaged."""
    _, _, h, w = image.shape
    if h <= tile and w <= tile:
        return fn(image), 1
    ys = range(0, h - overlap, tile - overlap) if h > tile else [0]
    xs = range(0, w - overlap, tile - overlap) if w > tile else [0]
    total = torch.zeros(1, 3, h * scale, w * scale)
    weights = torch.zeros(1, 1, h * scale, w * scale)
    count = 0
    for y in ys:
        for x in xs:
            part = fn(image[:, :, y : min(y + tile, h), x : min(x + tile, w)])
            weight = torch.outer(_ramp(part.shape[2], overlap * scale), _ramp(part.shape[3], overlap * scale))
            total[:, :, y * scale : y * scale + part.shape[2], x * scale : x * scale + part.shape[3]] += part * weight
            weights[:, :, y * scale : y * scale + part.shape[2], x * scale : x * scale + part.shape[3]] += weight
            count += 1
    return total / weights, count


def test_tiles_follow_the_reference_rules(tmp_path: Path) -> None:
    model = upscale.load_upscale_model(upscale.read_upscale_state_dict(_write(tmp_path, "compact")))
    image = torch.rand(1, 3, 50, 70, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = upscale.tiled_upscale(image, model, 2, tile=32, overlap=6)
        expected, tiles = reference_tiling(image, model, 2, tile=32, overlap=6)
        whole = model(image)
    # rows start at 0, 26 (50 - 6 = 44 stops there); columns at 0, 26, 52 (the last one 18 wide)
    assert tiles == 2 * 3 == upscale.tile_steps(70, 50, 32, 6)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert (ours - whole).abs().max() > 1e-4  # the seams are really there: tiling is exercised


@pytest.mark.parametrize(
    ("width", "height", "steps"),
    [(512, 512, 1), (600, 40, 2), (970, 970, 4), (993, 100, 3), (2000, 1000, 5 * 3)],
)
def test_progress_total_is_the_reference_tile_count(width: int, height: int, steps: int) -> None:
    assert upscale.tile_steps(width, height, 512, 32) == steps
    tiles = len(upscale.tile_starts(width, 512, 32)) * len(upscale.tile_starts(height, 512, 32))
    assert tiles == steps


def test_a_wide_image_is_upscaled_in_two_tiles(tmp_path: Path) -> None:
    model = upscale.load_upscale_model(upscale.read_upscale_state_dict(_write(tmp_path, "compact")))
    image = torch.rand(1, 24, 600, 3, generator=torch.Generator().manual_seed(6))
    (out,) = upscale.ImageUpscaleWithModel().upscale(model, image)
    with torch.no_grad():
        expected, tiles = reference_tiling(image.movedim(-1, 1), model, 2, tile=512, overlap=32)
    assert tiles == 2
    torch.testing.assert_close(out, expected.clamp(0, 1).movedim(1, -1), rtol=0, atol=1e-6)


def test_a_pickle_of_something_else_is_refused(tmp_path: Path) -> None:
    torch.save({"params_ema": {"x.weight": torch.zeros(2, 2)}}, tmp_path / "odd.pth")
    with pytest.raises(upscale.UpscaleModelError, match="Not an upscale model"):
        upscale.load_upscale_model(upscale.read_upscale_state_dict(tmp_path / "odd.pth"))


async def test_through_the_server_with_tile_progress(comfy_server: Any, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "upscale_models"
    folder.mkdir(parents=True)
    path = _write(folder, "swinir_params_ema")
    server = await comfy_server(plugins=["core_nodes", "models"])
    prompt = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 530, "height": 16, "batch_size": 1, "color": 0x3080C0}},
        "load": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "swinir.pth"}},
        "up": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["load", 0], "image": ["img", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["up", 0], "filename_prefix": "up"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    progress = [m for m in messages(frames, "progress") if m["node"] == "up"]
    assert [(m["value"], m["max"]) for m in progress][-1] == (2, 2)
    from PIL import Image

    (saved,) = (tmp_path / "output").glob("up_*.png")
    pixels = torch.from_numpy(np.asarray(Image.open(saved), dtype=np.float32) / 255.0)
    color = torch.tensor([0x30, 0x80, 0xC0], dtype=torch.float32) / 255
    image = color.view(1, 3, 1, 1).expand(1, 3, 16, 530)
    with torch.no_grad():
        expected, _ = reference_tiling(image, _spandrel_direct(path), 2, tile=512, overlap=32)
    assert pixels.shape == (32, 1060, 3)
    assert (pixels - expected.clamp(0, 1)[0].movedim(0, -1)).abs().max() <= 1 / 255 + 1e-6
