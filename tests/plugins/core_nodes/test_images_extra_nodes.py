"""comfy_extras.nodes_images and its neighbours (image compare, Canny, colour picker, bounding
boxes, the mask colour key and preview): pixels against hand-computed values, files read back
with PIL / PyAV, and prompts through the real server."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.core_nodes.nodes.common import bind
from plugins.core_nodes.nodes.images_extra import (
    Canny,
    ColorToRGBInt,
    CreateBoundingBoxes,
    ImageAddNoise,
    ImageFlip,
    ImageFromBatch,
    ImageMergeTileList,
    ImageRotate,
    ImageScaleToMaxDimension,
    ImageStitch,
    PrimitiveBoundingBox,
    RepeatImageBatch,
    ResizeAndPadImage,
    SaveSVGNode,
    SplitImageToTileList,
    tile_grid,
)
from plugins.core_nodes.nodes.mask import ImageColorToMask

from .node_helpers import messages, run_prompt, start


def _ramp(b: int = 1, h: int = 4, w: int = 6, c: int = 3) -> torch.Tensor:
    """An image whose every value is different, so moves and flips show."""
    return torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h, w, c) / (b * h * w * c)


def _executed(frames: list[Any]) -> dict[str, Any]:
    return {d["node"]: d["output"] for d in messages(frames, "executed")}


def _empty_image(width: int, height: int, batch: int = 1, color: int = 0) -> dict[str, Any]:
    return {
        "class_type": "EmptyImage",
        "inputs": {"width": width, "height": height, "batch_size": batch, "color": color},
    }


# --- transforms ----------------------------------------------------------------------------------


def test_flip_about_each_axis() -> None:
    image = _ramp()
    (upside_down,) = ImageFlip().flip(image, "x-axis: vertically")
    (mirrored,) = ImageFlip().flip(image, "y-axis: horizontally")
    h, w = image.shape[1:3]
    for y in range(h):
        for x in range(w):
            assert torch.equal(upside_down[0, y, x], image[0, h - 1 - y, x])
            assert torch.equal(mirrored[0, y, x], image[0, y, w - 1 - x])


def test_rotate_turns_clockwise() -> None:
    image = _ramp(h=3, w=5)
    (none,) = ImageRotate().rotate(image, "none")
    assert torch.equal(none, image)
    (quarter,) = ImageRotate().rotate(image, "90 degrees")
    (half,) = ImageRotate().rotate(image, "180 degrees")
    (three,) = ImageRotate().rotate(image, "270 degrees")
    h, w = 3, 5
    assert quarter.shape == (1, w, h, 3) and three.shape == (1, w, h, 3)
    for y in range(h):
        for x in range(w):
            # Clockwise: the left column becomes the top row, read bottom to top.
            assert torch.equal(quarter[0, x, h - 1 - y], image[0, y, x])
            assert torch.equal(half[0, h - 1 - y, w - 1 - x], image[0, y, x])
            assert torch.equal(three[0, w - 1 - x, y], image[0, y, x])


def test_image_from_batch_counts_from_the_end_and_clamps() -> None:
    batch = _ramp(b=5, h=2, w=2)
    (two,) = ImageFromBatch().frombatch(batch, 1, 2)
    assert torch.equal(two, batch[1:3])
    (last,) = ImageFromBatch().frombatch(batch, -1, 3)
    assert torch.equal(last, batch[4:5])
    (clamped,) = ImageFromBatch().frombatch(batch, 99, 1)
    assert torch.equal(clamped, batch[4:5])
    (from_start,) = ImageFromBatch().frombatch(batch, -99, 10)
    assert torch.equal(from_start, batch)


def test_repeat_image_batch() -> None:
    batch = _ramp(b=2, h=2, w=2)
    (out,) = RepeatImageBatch().repeat(batch, 3)
    assert out.shape == (6, 2, 2, 3)
    assert torch.equal(out[0], batch[0]) and torch.equal(out[1], batch[1]) and torch.equal(out[4], batch[0])


def test_add_noise_is_the_seeded_normal_draw_clipped() -> None:
    image = torch.full((2, 4, 5, 3), 0.5)
    (out,) = ImageAddNoise().repeat(image, 1234, 0.25)
    torch.manual_seed(1234)  # the reference seeds the global generator and draws once
    want = torch.clip(image + 0.25 * torch.randn(image.size()), 0.0, 1.0)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    (again,) = ImageAddNoise().repeat(image, 1234, 0.25)
    assert torch.equal(again, out)
    (huge_seed,) = ImageAddNoise().repeat(image, 2**64 - 1, 0.1)
    assert huge_seed.shape == image.shape


def test_bounding_box_primitive() -> None:
    assert PrimitiveBoundingBox().box(3, 4, 50, 60) == ({"x": 3, "y": 4, "width": 50, "height": 60},)


# --- stitching, padding, scaling ---------------------------------------------------------------------


def test_stitch_without_a_second_image_passes_the_first() -> None:
    image = _ramp()
    assert ImageStitch().stitch(image, "right", True, 0, "white") == (image,)


def test_stitch_matched_size_keeps_the_aspect_ratio() -> None:
    first = torch.zeros(1, 8, 10, 3)
    second = torch.full((1, 4, 6, 3), 0.5)  # aspect 1.5: at height 8 it is 12 wide
    (right,) = ImageStitch().stitch(first, "right", True, 0, "white", second)
    assert right.shape == (1, 8, 22, 3)
    assert torch.equal(right[:, :, :10], first)
    torch.testing.assert_close(right[:, :, 10:], torch.full((1, 8, 12, 3), 0.5), atol=2e-3, rtol=0)
    (down,) = ImageStitch().stitch(first, "down", True, 0, "white", second)
    assert down.shape == (1, 8 + int(10 / 1.5), 10, 3)


def test_stitch_pads_the_smaller_image_and_inserts_even_spacing() -> None:
    first = torch.zeros(1, 4, 3, 3)
    second = torch.full((1, 2, 2, 3), 0.5)
    (left,) = ImageStitch().stitch(first, "left", False, 3, "red", second)
    # image2 first, 4 columns of spacing (3 rounded up to even), then image1; image2 padded
    # from height 2 to 4 with one row above and one below in black (a colour pads with 0).
    assert left.shape == (1, 4, 2 + 4 + 3, 3)
    assert torch.equal(left[0, 1:3, 0:2], torch.full((2, 2, 3), 0.5))
    assert torch.equal(left[0, 0, 0:2], torch.zeros(2, 3)) and torch.equal(left[0, 3, 0:2], torch.zeros(2, 3))
    assert torch.equal(left[0, :, 2:6], torch.tensor([1.0, 0.0, 0.0]).expand(4, 4, 3))
    assert torch.equal(left[0, :, 6:], first[0])
    (white_pad,) = ImageStitch().stitch(first, "up", False, 0, "white", second)
    assert white_pad.shape == (1, 6, 3, 3)
    # The narrower image2 gets its one column of padding on the right (half of it, rounded down, left).
    assert torch.equal(white_pad[0, 0:2, 2], torch.ones(2, 3))


def test_stitch_evens_out_batches_and_channels() -> None:
    first = torch.zeros(3, 2, 2, 4)  # RGBA, three images
    second = torch.stack([torch.full((2, 2, 3), 0.2), torch.full((2, 2, 3), 0.7)])
    (out,) = ImageStitch().stitch(first, "right", False, 2, "black", second)
    assert out.shape == (3, 2, 2 + 2 + 2, 4)
    assert torch.equal(out[2, :, 4:, :3], torch.full((2, 2, 3), 0.7))  # the last image repeated
    assert torch.equal(out[:, :, 4:, 3], torch.ones(3, 2, 2))  # an opaque alpha added
    assert torch.equal(out[:, :, 2:4], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(3, 2, 2, 4))


def test_resize_and_pad_centres_the_fitted_image() -> None:
    image = torch.rand(2, 4, 8, 3)
    (out,) = ResizeAndPadImage().resize_and_pad(image, 4, 4, "black", "nearest-exact")
    # Scale min(4/8, 4/4) = 0.5: a 4x2 picture, one row of padding above and below.
    assert out.shape == (2, 4, 4, 3)
    assert torch.equal(out[:, 0], torch.zeros(2, 4, 3)) and torch.equal(out[:, 3], torch.zeros(2, 4, 3))
    assert torch.equal(out[:, 1:3], image[:, 1::2, 1::2])  # nearest-exact: the pixel centres
    (white,) = ResizeAndPadImage().resize_and_pad(image, 10, 4, "white", "area")
    assert white.shape == (2, 4, 10, 3)
    assert torch.equal(white[:, :, 0], torch.ones(2, 4, 3)) and torch.equal(
        white[:, :, 9], torch.ones(2, 4, 3)
    )


@pytest.mark.parametrize(
    ("size", "largest", "want"),
    [((30, 60), 20, (10, 20)), ((60, 30), 20, (20, 10)), ((40, 40), 25, (25, 25)), ((30, 70), 50, (21, 50))],
)
def test_scale_to_max_dimension(size: tuple[int, int], largest: int, want: tuple[int, int]) -> None:
    image = torch.rand(1, size[0], size[1], 3)
    (out,) = ImageScaleToMaxDimension().upscale(image, "bilinear", largest)
    assert tuple(out.shape[1:3]) == want


def test_scale_to_max_dimension_zero_is_an_error() -> None:
    with pytest.raises(ValueError, match="largest_size"):
        ImageScaleToMaxDimension().upscale(torch.rand(1, 8, 8, 3), "area", 0)


# --- tiles ------------------------------------------------------------------------------------------


def test_tile_grid_ends_each_row_at_the_edge() -> None:
    # Stride 128 - 32 = 96: the second tile would end at 224 and is moved back to 72..200.
    assert tile_grid(200, 200, 128, 128, 32) == [
        (0, 0, 128, 128),
        (72, 0, 200, 128),
        (0, 72, 128, 200),
        (72, 72, 200, 200),
    ]
    # The stride is at least a quarter tile, whatever the overlap.
    assert [t[0] for t in tile_grid(300, 64, 64, 64, 60)] == [
        0,
        16,
        32,
        48,
        64,
        80,
        96,
        112,
        128,
        144,
        160,
        176,
        192,
        208,
        224,
        236,
    ]
    assert tile_grid(50, 40, 64, 64, 0) == [(0, 0, 50, 40)]


def test_split_then_merge_gives_the_image_back() -> None:
    image = torch.rand(2, 150, 170, 3)
    (tiles,) = SplitImageToTileList().split(image, 64, 80, 24)
    assert len(tiles) == len(tile_grid(170, 150, 64, 80, 24))
    x0, y0, x1, y1 = tile_grid(170, 150, 64, 80, 24)[1]
    assert torch.equal(tiles[1], image[:, y0:y1, x0:x1])
    (merged,) = ImageMergeTileList().merge(tiles, [170], [150], [24])
    torch.testing.assert_close(merged, image, atol=1e-4, rtol=0)
    (no_overlap,) = ImageMergeTileList().merge(
        SplitImageToTileList().split(image, 64, 64, 0)[0], [170], [150], [0]
    )
    torch.testing.assert_close(no_overlap, image, atol=1e-6, rtol=0)


def test_merge_blends_overlaps_with_a_sine_window() -> None:
    # Two 64-wide tiles of 0 and 1 over a 100-wide canvas (stride 64 - 28 = 36: the second starts
    # at 36). In the overlap each pixel is the tiles' values weighted by their sine windows.
    a, b = torch.zeros(1, 64, 64, 3), torch.ones(1, 64, 64, 3)
    (out,) = ImageMergeTileList().merge([a, b], [100], [64], [28])
    window = [max(1e-5, math.sin(math.pi * i / 63)) for i in range(64)]
    for x in (36, 50, 63):
        wa, wb = window[x], window[x - 36]
        assert float(out[0, 32, x, 0]) == pytest.approx(wb / (wa + wb), abs=1e-5)
    assert float(out[0, 10, 20, 0]) == pytest.approx(0.0, abs=1e-6)
    assert float(out[0, 10, 80, 0]) == pytest.approx(1.0, abs=1e-6)


def test_merge_of_no_tiles_is_an_error() -> None:
    with pytest.raises(ValueError, match="no tiles"):
        ImageMergeTileList().merge([], [64], [64], [0])


# --- colour, Canny, boxes, colour key -------------------------------------------------------------


def test_color_to_rgb_int() -> None:
    assert ColorToRGBInt().convert("#12ab34") == (0x12AB34, "#12ab34")
    assert ColorToRGBInt().convert("#FFFFFF") == (16777215, "#FFFFFF")
    for bad in ("12ab34", "#12ab3", "#12ab3g", "#12ab345"):
        with pytest.raises(ValueError, match="#RRGGBB"):
            ColorToRGBInt().convert(bad)


def test_canny_is_kornias_edges_as_grey_rgb() -> None:
    from kornia.filters import canny

    image = torch.zeros(1, 16, 16, 3)
    image[:, :, 8:] = 1.0  # a vertical step between columns 7 and 8
    (edges,) = Canny().detect_edge(image, 0.4, 0.8)
    _, want = canny(image.movedim(-1, 1), 0.4, 0.8)
    assert edges.shape == (1, 16, 16, 3)
    assert torch.equal(edges, want.repeat(1, 3, 1, 1).movedim(1, -1))
    columns = set(torch.nonzero(edges[0, 4:12, :, 0])[:, 1].tolist())
    assert columns and columns <= {7, 8}  # the edge is at the step, nowhere else
    with pytest.raises(ValueError, match="above"):
        Canny().detect_edge(image, 0.9, 0.2)


def test_image_color_to_mask_matches_8_bit_colours() -> None:
    image = torch.tensor(
        [[[[1.0, 0.0, 0.0], [0x12 / 255, 0xAB / 255, 0x34 / 255]], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.001]]]]
    )
    (red,) = ImageColorToMask().image_to_mask(image, 0xFF0000)
    assert torch.equal(red, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))  # 0.001 rounds to 0
    (other,) = ImageColorToMask().image_to_mask(image, 0x12AB34)
    assert torch.equal(other, torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))


def test_bounding_boxes_give_pixel_boxes_and_prompt_elements() -> None:
    state = [
        {
            "x": 0,
            "y": 0,
            "width": 512,
            "height": 256,
            "metadata": {"type": "obj", "desc": "sky", "palette": ["#3366ff", ""]},
        },
        {
            "x": 100,
            "y": 300,
            "width": 200,
            "height": 100,
            "metadata": {"type": "text", "text": "Hi", "desc": "sign"},
        },
        "not a box",
    ]
    result = CreateBoundingBoxes().create(512, 512, state)
    assert result["ui"] == {"dims": [512, 512]}
    preview, boxes, elements = result["result"]
    assert preview.shape == (1, 512, 512, 3)
    assert boxes == [
        [{"x": 0, "y": 0, "width": 512, "height": 256}, {"x": 100, "y": 300, "width": 200, "height": 100}]
    ]
    # bbox is [ymin, xmin, ymax, xmax] on a 0..1000 grid.
    assert elements == [
        {"type": "obj", "bbox": [0, 0, 500, 1000], "desc": "sky", "color_palette": ["#3366FF"]},
        {"type": "text", "bbox": [586, 195, 781, 586], "text": "Hi", "desc": "sign"},
    ]
    # The first box's outline is drawn in its colour; the background is the dark grey.
    assert tuple((preview[0, 0, 300] * 255).round().int().tolist()) == (0x33, 0x66, 0xFF)
    assert tuple((preview[0, 500, 500] * 255).round().int().tolist()) == (32, 32, 32)


def test_bounding_boxes_without_boxes_and_with_a_background() -> None:
    background = torch.ones(1, 2048, 1024, 3)
    preview, boxes, elements = CreateBoundingBoxes().create(1024, 1024, [], background)["result"]
    assert boxes == [] and elements == []
    assert preview.shape == (1, 1024, 512, 3)  # the background's shape, longest side 1024
    assert float(preview.mean()) == pytest.approx(64 / 255, abs=1 / 255)  # white darkened to a quarter


# --- saving ------------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def _frames_prompt(save: dict[str, Any]) -> dict[str, Any]:
    return {
        "1": _empty_image(12, 10, batch=3, color=0x204060),
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 7, "strength": 0.3}},
        "3": save | {"inputs": {"images": ["2", 0], **save["inputs"]}},
    }


async def test_animated_webp_has_every_frame_and_the_metadata(comfy_server: Any) -> None:
    server = await start(comfy_server)
    save = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "filename_prefix": "anim/clip",
            "fps": 4.0,
            "lossless": True,
            "quality": 80,
            "method": "fastest",
        },
    }
    prompt = _frames_prompt(save)
    workflow = {"nodes": [], "version": 0.4}
    frames = await run_prompt(server, prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})
    ui = _executed(frames)["3"]
    assert ui == {
        "images": [{"filename": "clip_00001_.webp", "subfolder": "anim", "type": "output"}],
        "animated": [True],
    }
    path = server.kernel.settings.output_path / "anim" / "clip_00001_.webp"
    colour = torch.tensor([0x20 / 255, 0x40 / 255, 0x60 / 255], dtype=torch.float32)
    noisy = ImageAddNoise().repeat(colour.expand(3, 10, 12, 3), 7, 0.3)[0]
    with Image.open(path) as img:
        assert img.n_frames == 3 and img.size == (12, 10)
        exif = img.getexif()
        assert json.loads(exif[0x0110].removeprefix("prompt:")) == prompt
        assert json.loads(exif[0x010F].removeprefix("workflow:")) == workflow
        for index in range(3):
            img.seek(index)
            img.load()  # PIL reads a WEBP frame's timing when it decodes the frame
            assert img.info["duration"] == 250
            got = np.asarray(img.convert("RGB"), dtype=np.int16)
            want = np.clip(255.0 * noisy[index].numpy(), 0, 255).astype(np.uint8)
            assert np.abs(got - want).max() <= 1  # lossless: the 8-bit pixels (colour-converted once)
    # The counter goes on; a single frame is not "animated".
    single = dict(save, inputs={**save["inputs"], "images": ["1", 0]})
    frames = await run_prompt(server, {"1": _empty_image(8, 8), "3": single})
    assert _executed(frames)["3"] == {
        "images": [{"filename": "clip_00002_.webp", "subfolder": "anim", "type": "output"}]
    }


async def test_animated_png_has_every_frame_and_comf_chunks(comfy_server: Any) -> None:
    server = await start(comfy_server)
    save = {
        "class_type": "SaveAnimatedPNG",
        "inputs": {"filename_prefix": "apng", "fps": 10.0, "compress_level": 1},
    }
    prompt = _frames_prompt(save)
    workflow = {"nodes": [1]}
    frames = await run_prompt(server, prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})
    ui = _executed(frames)["3"]
    assert ui == {
        "images": [{"filename": "apng_00001_.png", "subfolder": "", "type": "output"}],
        "animated": [True],
    }
    path = server.kernel.settings.output_path / "apng_00001_.png"
    with Image.open(path) as img:
        assert img.n_frames == 3 and img.info["duration"] == 100
    chunks = _png_chunks(path.read_bytes())
    kinds = [k for k, _ in chunks]
    comf = [body for kind, body in chunks if kind == b"comf"]
    assert kinds.index(b"comf") > max(i for i, k in enumerate(kinds) if k in (b"IDAT", b"fdAT"))
    assert [c.split(b"\0", 1)[0] for c in comf] == [b"prompt", b"workflow"]
    assert json.loads(comf[0].split(b"\0", 1)[1]) == prompt
    assert json.loads(comf[1].split(b"\0", 1)[1]) == workflow


async def test_animated_png_without_metadata(comfy_server: Any) -> None:
    server = await start(comfy_server, disable_metadata=True)
    save = {
        "class_type": "SaveAnimatedPNG",
        "inputs": {"filename_prefix": "bare", "fps": 6.0, "compress_level": 4},
    }
    await run_prompt(server, _frames_prompt(save))
    data = (server.kernel.settings.output_path / "bare_00001_.png").read_bytes()
    assert b"comf" not in [kind for kind, _ in _png_chunks(data)]
    with Image.open(io.BytesIO(data)) as img:
        assert img.n_frames == 3


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _decode(path: Path, codec: str) -> np.ndarray:
    import av

    frames = av.CodecContext.create(codec, "r").decode(av.Packet(path.read_bytes()))
    assert len(frames) == 1
    frame = frames[0]
    return frame.to_ndarray(format={"png": "rgb48le", "exr": "gbrpf32le"}[codec])


def _read_exr(data: bytes) -> tuple[dict[str, tuple[str, bytes]], np.ndarray]:
    """(header attributes, [H, W, RGB] float32) of an uncompressed scanline EXR, read by hand:
    the offset table must point at each scanline for the pixels to come out right."""
    assert data[:4] == b"\x76\x2f\x31\x01"
    attributes, pos = {}, 8
    while data[pos] != 0:
        name_end = data.index(b"\0", pos)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack("<i", data[type_end + 1 : type_end + 5])
        value = data[type_end + 5 : type_end + 5 + size]
        attributes[data[pos:name_end].decode()] = (data[name_end + 1 : type_end].decode(), value)
        pos = type_end + 5 + size
    assert attributes["compression"][1] == b"\0"  # none: one scanline per chunk
    x0, y0, x1, y1 = struct.unpack("<4i", attributes["dataWindow"][1])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    offsets = struct.unpack(f"<{height}Q", data[pos + 1 : pos + 1 + 8 * height])
    pixels = np.zeros((height, width, 3), dtype=np.float32)
    for offset in offsets:
        y, size = struct.unpack("<ii", data[offset : offset + 8])
        row = np.frombuffer(data[offset + 8 : offset + 8 + size], dtype="<f4").reshape(3, width)
        for plane, channel in enumerate("BGR"):  # stored in alphabetical order
            pixels[y - y0, :, "RGB".index(channel)] = row[plane]
    return attributes, pixels


# The widgets each format's option brings, as the frontend fills them in by default.
_FORMAT_DEFAULTS = {
    "png": {"bit_depth": "8-bit", "input_color_space": "sRGB"},
    "exr": {"bit_depth": "32-bit float", "input_color_space": "sRGB"},
}


def _advanced_prompt(fmt: str, **widgets: str) -> dict[str, Any]:
    inputs = {"images": ["1", 0], "filename_prefix": "adv/pic", "format": fmt}
    inputs.update({f"format.{k}": v for k, v in {**_FORMAT_DEFAULTS.get(fmt, {}), **widgets}.items()})
    return {
        "1": _empty_image(5, 3, batch=2, color=0x8040C0),
        "2": {"class_type": "SaveImageAdvanced", "inputs": inputs},
    }


async def test_save_image_advanced_png_8_and_16_bit(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = _advanced_prompt("png", bit_depth="8-bit", input_color_space="sRGB")
    frames = await run_prompt(server, prompt, extra_data={"extra_pnginfo": {"workflow": {"w": 1}}})
    ui = _executed(frames)["2"]
    assert ui == {
        "images": [
            {"filename": "pic_00001.png", "subfolder": "adv", "type": "output"},
            {"filename": "pic_00002.png", "subfolder": "adv", "type": "output"},
        ]
    }
    out = server.kernel.settings.output_path / "adv"
    with Image.open(out / "pic_00001.png") as img:
        assert img.mode == "RGB" and img.size == (5, 3)
        assert img.getpixel((0, 0)) == (0x80, 0x40, 0xC0)
        assert json.loads(img.text["prompt"]) == prompt and json.loads(img.text["workflow"]) == {"w": 1}
    kinds = [k for k, _ in _png_chunks((out / "pic_00001.png").read_bytes())]
    assert kinds[:3] == [b"IHDR", b"tEXt", b"tEXt"]  # the text right after the header
    # 16 bits: the value scaled by 65535 and truncated.
    frames = await run_prompt(server, _advanced_prompt("png", bit_depth="16-bit"))
    assert [i["filename"] for i in _executed(frames)["2"]["images"]] == ["pic_00003.png", "pic_00004.png"]
    pixels = _decode(out / "pic_00003.png", "png")
    want = [int(np.float32(c / 255) * np.float32(65535)) for c in (0x80, 0x40, 0xC0)]
    assert pixels.shape == (3, 5, 3) and pixels[1, 2].tolist() == want
    with Image.open(out / "pic_00003.png") as img:
        assert img.info.get("prompt") is not None  # tEXt chunks in the 16-bit file too


async def test_save_image_advanced_exr_is_linear_light_with_metadata(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = _advanced_prompt("exr", bit_depth="32-bit float", input_color_space="sRGB")
    frames = await run_prompt(server, prompt)
    name = _executed(frames)["2"]["images"][0]["filename"]
    assert name == "pic_00001.exr"
    path = server.kernel.settings.output_path / "adv" / name
    attributes, pixels = _read_exr(path.read_bytes())
    rgb = np.array([0x80, 0x40, 0xC0], dtype=np.float32) / 255
    assert pixels.shape == (3, 5, 3)
    np.testing.assert_allclose(pixels[1, 1], _srgb_to_linear(rgb), rtol=1e-5)
    np.testing.assert_allclose(_decode(path, "exr")[1, 1], pixels[1, 1])  # FFmpeg reads it the same
    assert attributes["prompt"][0] == "string" and json.loads(attributes["prompt"][1]) == prompt
    kind, value = attributes["chromaticities"]
    assert kind == "chromaticities"
    rec709 = [0.64, 0.33, 0.3, 0.6, 0.15, 0.06, 0.3127, 0.329]
    np.testing.assert_allclose(struct.unpack("<8f", value), rec709, rtol=1e-6)
    # HDR input: the inverse HLG curve, Rec.2020 primaries; linear input is written as it is.
    frames = await run_prompt(server, _advanced_prompt("exr", input_color_space="HDR"))
    hdr = server.kernel.settings.output_path / "adv" / _executed(frames)["2"]["images"][0]["filename"]
    a, b, c = 0.17883277, 0.28466892, 0.55991072928
    hlg = np.where(rgb <= 0.5, rgb**2 / 3, (np.exp((np.maximum(rgb, c) - c) / a) + b) / 12)
    hdr_attributes, hdr_pixels = _read_exr(hdr.read_bytes())
    np.testing.assert_allclose(hdr_pixels[0, 0], hlg, rtol=1e-5)
    assert struct.unpack("<8f", hdr_attributes["chromaticities"][1])[0] == pytest.approx(0.708)
    frames = await run_prompt(server, _advanced_prompt("exr", input_color_space="linear"))
    flat = server.kernel.settings.output_path / "adv" / _executed(frames)["2"]["images"][0]["filename"]
    np.testing.assert_allclose(_read_exr(flat.read_bytes())[1][2, 4], rgb, rtol=1e-6)


async def test_save_image_advanced_refuses_unknown_choices(comfy_server: Any) -> None:
    server = await start(comfy_server)
    # Validation checks the choice and the chosen option's widgets, as the reference does.
    for prompt, name in (
        (_advanced_prompt("tiff"), "format"),
        (_advanced_prompt("exr", bit_depth="8-bit"), "format.bit_depth"),
    ):
        status, answer = await server.json("POST", "/prompt", json={"prompt": prompt})
        assert status == 400, answer
        (reason,) = answer["node_errors"]["2"]["errors"]
        assert reason["type"] == "value_not_in_list" and reason["extra_info"]["input_name"] == name
    # The server still works afterwards.
    frames = await run_prompt(server, _advanced_prompt("png"))
    assert _executed(frames)["2"]["images"][0]["filename"].endswith(".png")


class _Svg:
    def __init__(self, *documents: bytes) -> None:
        self.data = [io.BytesIO(d) for d in documents]


async def test_save_svg_writes_each_document_with_metadata(comfy_server: Any) -> None:
    server = await start(comfy_server)
    node = bind(SaveSVGNode, server.kernel)()
    svg = _Svg(
        b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="4" height="4"/></svg>', b"<svg><g/></svg>"
    )
    prompt = {"1": {"class_type": "X", "inputs": {"text": "a ]]> b"}}}
    result = node.save_svg(svg, "vec/drawing", prompt=prompt, extra_pnginfo={"workflow": {"n": 1}})
    assert result["result"] == (svg,)
    assert result["ui"] == {
        "images": [
            {"filename": "drawing_00001_.svg", "subfolder": "vec", "type": "output"},
            {"filename": "drawing_00002_.svg", "subfolder": "vec", "type": "output"},
        ]
    }
    import xml.etree.ElementTree as ET

    text = (server.kernel.settings.output_path / "vec" / "drawing_00001_.svg").read_text()
    root = ET.fromstring(text)  # still well-formed XML, even with "]]>" in the prompt
    metadata = root.find("{http://www.w3.org/2000/svg}metadata")
    assert metadata is not None
    assert json.loads(metadata.text) == {"prompt": prompt, "workflow": {"n": 1}}
    assert root.find("{http://www.w3.org/2000/svg}rect") is not None
    plain = bind(SaveSVGNode, server.kernel)().save_svg(["<svg/>"], "vec/drawing")
    assert plain["ui"]["images"][0]["filename"] == "drawing_00003_.svg"
    assert (server.kernel.settings.output_path / "vec" / "drawing_00003_.svg").read_text() == "<svg/>"
    with pytest.raises(ValueError, match="not an SVG"):
        bind(SaveSVGNode, server.kernel)().save_svg([42], "vec/drawing")


# --- through the server -------------------------------------------------------------------------------


async def test_crop_size_and_stitch_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": _empty_image(64, 48, batch=2, color=0xFF8000),
        "2": {
            "class_type": "ImageCropV2",
            "inputs": {"image": ["1", 0], "crop_region": {"x": 60, "y": 10, "width": 32, "height": 16}},
        },
        "3": {"class_type": "GetImageSize", "inputs": {"image": ["2", 0]}},
        "4": {
            "class_type": "EmptyImage",
            "inputs": {"width": ["3", 0], "height": ["3", 1], "batch_size": ["3", 2], "color": 0},
        },
        "5": {
            "class_type": "ImageStitch",
            "inputs": {
                "image1": ["2", 0],
                "image2": ["4", 0],
                "direction": "down",
                "match_image_size": True,
                "spacing_width": 0,
                "spacing_color": "white",
            },
        },
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "stitched"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    ui = _executed(frames)
    # The corner is kept inside the image (x 60 of 64), so the crop is 4 wide, 16 high.
    assert ui["2"]["animated"] == [False] and len(ui["2"]["images"]) == 2
    preview = ui["2"]["images"][0]
    assert preview["type"] == "temp" and preview["filename"].startswith("ComfyUI_temp_")
    with Image.open(server.kernel.settings.temp_path / preview["filename"]) as img:
        assert img.size == (4, 16) and img.convert("RGB").getpixel((0, 0)) == (255, 128, 0)
    text = [f for f in frames if isinstance(f, bytes) and struct.unpack(">I", f[:4])[0] == 3]
    assert len(text) == 1
    (length,) = struct.unpack(">I", text[0][4:8])
    assert (
        text[0][8 : 8 + length] == b"3" and text[0][8 + length :] == b"width: 4, height: 16\n batch size: 2"
    )
    with Image.open(server.kernel.settings.output_path / "stitched_00001_.png") as img:
        assert img.size == (4, 32)
        assert img.convert("RGB").getpixel((0, 0)) == (255, 128, 0) and img.convert("RGB").getpixel(
            (0, 31)
        ) == (0, 0, 0)


async def test_bad_crop_region_and_colour_are_node_errors(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": _empty_image(8, 8),
        "2": {"class_type": "ImageCropV2", "inputs": {"image": ["1", 0], "crop_region": "everything"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    errors = messages(await run_prompt(server, prompt), "execution_error")
    assert len(errors) == 1 and "crop_region" in errors[0]["exception_message"]
    prompt = {
        "1": {"class_type": "ColorToRGBInt", "inputs": {"color": "red"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    errors = messages(await run_prompt(server, prompt), "execution_error")
    assert len(errors) == 1 and "#RRGGBB" in errors[0]["exception_message"]


async def test_compare_and_mask_preview_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": _empty_image(6, 4, color=0x00FF00),
        "2": {"class_type": "ImageColorToMask", "inputs": {"image": ["1", 0], "color": 0x00FF00}},
        "3": {"class_type": "MaskPreview", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "5": {
            "class_type": "ImageCompare",
            "inputs": {"image_a": ["1", 0], "image_b": ["4", 0], "compare_view": None},
        },
        "6": {"class_type": "ColorToRGBInt", "inputs": {"color": "#00ff00"}},
        "7": {"class_type": "ImageColorToMask", "inputs": {"image": ["1", 0], "color": ["6", 0]}},
        "8": {"class_type": "MaskPreview", "inputs": {"mask": ["7", 0]}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    ui = _executed(frames)
    temp = server.kernel.settings.temp_path
    assert ui["3"]["animated"] == [False] and ui["3"]["images"][0]["type"] == "temp"
    with Image.open(temp / ui["3"]["images"][0]["filename"]) as img:
        assert img.size == (6, 4) and img.convert("RGB").getpixel((2, 2)) == (255, 255, 255)
        assert "prompt" not in img.info  # a preview carries no prompt
    with Image.open(temp / ui["8"]["images"][0]["filename"]) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (255, 255, 255)
    assert set(ui["5"]) == {"a_images", "b_images"}
    a, b = ui["5"]["a_images"][0], ui["5"]["b_images"][0]
    assert a["filename"].startswith("comfy.compare.a_temp_") and b["filename"].startswith(
        "comfy.compare.b_temp_"
    )
    with Image.open(temp / b["filename"]) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (255, 0, 255)
    # Without images the comparison shows nothing.
    frames = await run_prompt(server, {"5": {"class_type": "ImageCompare", "inputs": {"compare_view": None}}})
    assert _executed(frames)["5"] == {"a_images": [], "b_images": []}


async def test_tiles_and_boxes_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    state = [{"x": 64, "y": 64, "width": 128, "height": 64, "metadata": {"type": "obj", "desc": "cat"}}]
    prompt = {
        "1": {
            "class_type": "CreateBoundingBoxes",
            "inputs": {"width": 256, "height": 256, "editor_state": {"__value__": state}},
        },
        "2": {
            "class_type": "SplitImageToTileList",
            "inputs": {"image": ["1", 0], "tile_width": 128, "tile_height": 128, "overlap": 32},
        },
        "3": {
            "class_type": "ImageMergeTileList",
            "inputs": {"image_list": ["2", 0], "final_width": 256, "final_height": 256, "overlap": 32},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "merged"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "boxes"}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    ui = _executed(frames)
    assert ui["1"] == {"dims": [256, 256]}
    assert json.loads(ui["6"]["text"][0]) == [{"type": "obj", "bbox": [250, 250, 500, 750], "desc": "cat"}]
    assert json.loads(ui["7"]["text"][0]) == [[{"x": 64, "y": 64, "width": 128, "height": 64}]]
    out = server.kernel.settings.output_path
    merged = np.asarray(Image.open(out / "merged_00001_.png").convert("RGB"), dtype=np.int16)
    boxes = np.asarray(Image.open(out / "boxes_00001_.png").convert("RGB"), dtype=np.int16)
    assert merged.shape == (256, 256, 3) and np.abs(merged - boxes).max() <= 1  # the tiles put back together
