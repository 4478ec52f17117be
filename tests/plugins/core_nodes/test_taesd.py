"""TAESD: the tiny autoencoders from models/vae_approx, as VAELoader VAEs and as KSampler previews.

The weights are small random ones in the released files' layouts; the expected values come from
the architecture written out here with plain functional ops, and from diffusers' AutoencoderTiny
loaded with the same weights.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from kernel import hookimpl
from kernel.progress import ExecutionContext, executing
from plugins.core_nodes.contracts import SD15
from plugins.core_nodes.ksampler import PreviewOptions, step_callback
from plugins.core_nodes.models.taesd import FAMILIES, TAESD, load_taesd, read_halves

from .node_helpers import messages, run_ok, saved_latents
from .toy_stack import ToyClip, ToyModel, ToyVAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- random weights in the released layout ---------------------------------------------------


def random_halves(
    latent_channels: int = 4, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder, decoder) state dicts with keys as in taesd_encoder / taesd_decoder files."""
    torch.manual_seed(seed)
    net = TAESD(latent_channels)
    for p in net.parameters():
        if p.ndim:  # conv weights and biases; the family scale/shift stay 1 / 0
            p.data.normal_(0.0, 0.08 if p.ndim == 4 else 0.05)
    enc = {k: v.clone() for k, v in net.taesd_encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in net.taesd_decoder.state_dict().items()}
    return enc, dec


def write_pair(folder: Path, family: str, enc: dict[str, torch.Tensor], dec: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(enc, str(folder / f"{family}_encoder.safetensors"))
    torch.save(dec, folder / f"{family}_decoder.pth")  # the .pth form some releases use


# --- the architecture, written out -----------------------------------------------------------


def _conv(x: torch.Tensor, sd: dict[str, torch.Tensor], key: str, stride: int = 1) -> torch.Tensor:
    return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride=stride, padding=1)


def _block(x: torch.Tensor, sd: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    h = F.relu(_conv(x, sd, f"{i}.conv.0"))
    h = F.relu(_conv(h, sd, f"{i}.conv.2"))
    return F.relu(_conv(h, sd, f"{i}.conv.4") + x)


def direct_decode(z: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Model-space latent -> 0..1-ish pixels: soft clamp, conv, 3 x (3 blocks, x2, conv), block, conv."""
    x = F.relu(_conv(torch.tanh(z / 3) * 3, sd, "1"))
    for start in (3, 8, 13):
        for i in range(start, start + 3):
            x = _block(x, sd, i)
        x = _conv(F.interpolate(x, scale_factor=2, mode="nearest"), sd, str(start + 4))
    return _conv(_block(x, sd, 18), sd, "19")


def direct_encode(pixels01: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """0..1 pixels -> model-space latent: conv, block, 3 x (stride-2 conv, 3 blocks), conv."""
    x = _block(_conv(pixels01, sd, "0"), sd, 1)
    for start in (2, 6, 10):
        x = _conv(x, sd, str(start), stride=2)
        for i in range(start + 1, start + 4):
            x = _block(x, sd, i)
    return _conv(x, sd, "14")


# --- the networks ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["taesd", "taesd3"])
def test_vae_space_encode_and_decode_follow_the_architecture(tmp_path: Path, family: str) -> None:
    channels = 16 if family == "taesd3" else 4
    enc, dec = random_halves(channels, seed=1)
    write_pair(tmp_path, family, enc, dec)
    model = load_taesd(tmp_path / f"{family}_encoder.safetensors", tmp_path / f"{family}_decoder.pth", family)
    scale, shift = FAMILIES[family]
    assert model.config.z_channels == channels and model.config.downscale == 8
    torch.manual_seed(2)
    pixels = torch.rand(1, 3, 32, 48)
    z = torch.randn(1, channels, 4, 6)
    with torch.no_grad():
        # The VAE-facing calls speak -1..1 pixels and VAE-space latents.
        encoded = model.encode(pixels * 2 - 1)
        decoded = model.decode(z)
    torch.testing.assert_close(encoded, direct_encode(pixels, enc) / scale + shift, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(decoded, direct_decode((z - shift) * scale, dec) * 2 - 1, atol=1e-5, rtol=1e-4)
    assert encoded.shape == (1, channels, 4, 6) and decoded.shape == (1, 3, 32, 48)


def test_matches_diffusers_autoencoder_tiny() -> None:
    from diffusers import AutoencoderTiny

    enc, dec = random_halves(4, seed=3)
    tiny = AutoencoderTiny(latent_channels=4).eval()
    # diffusers names the stacks encoder.layers.N / decoder.layers.N; its decoder clamps in
    # forward() instead of in a module, so its indices are ours minus one.
    mapped = {f"encoder.layers.{k}": v for k, v in enc.items()}
    for key, value in dec.items():
        index, _, rest = key.partition(".")
        mapped[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    tiny.load_state_dict(mapped)
    ours = TAESD(4)
    ours.taesd_encoder.load_state_dict(enc)
    ours.taesd_decoder.load_state_dict(dec)
    torch.manual_seed(4)
    z, pixels = torch.randn(2, 4, 5, 3), torch.rand(2, 3, 40, 24) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(z), tiny.decode(z).sample, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.encode(pixels), tiny.encode(pixels).latents, atol=1e-5, rtol=1e-4)
    # The diffusers layout read back as a single file gives the same halves.
    got_enc, got_dec = read_halves(mapped)
    assert got_enc is not None and got_dec is not None
    assert all(torch.equal(got_enc[k], v) for k, v in enc.items()) and got_enc.keys() == enc.keys()
    assert all(torch.equal(got_dec[k], v) for k, v in dec.items()) and got_dec.keys() == dec.keys()


@pytest.mark.parametrize("prefixes", [("encoder.", "decoder."), ("taesd_encoder.", "taesd_decoder.")])
def test_single_files_with_both_halves(tmp_path: Path, prefixes: tuple[str, str]) -> None:
    enc, dec = random_halves(4, seed=5)
    combined = {prefixes[0] + k: v for k, v in enc.items()} | {prefixes[1] + k: v for k, v in dec.items()}
    save_file(combined, str(tmp_path / "both.safetensors"))
    model = load_taesd(tmp_path / "both.safetensors", tmp_path / "both.safetensors", "taesdxl")
    assert float(model.vae_scale) == pytest.approx(0.13025)
    for key, value in enc.items():
        assert torch.equal(model.taesd_encoder.state_dict()[key], value)
    for key, value in dec.items():
        assert torch.equal(model.taesd_decoder.state_dict()[key], value)


def test_bare_halves_are_told_apart_and_bad_files_are_refused(tmp_path: Path) -> None:
    enc, dec = random_halves(4, seed=6)
    assert read_halves(enc) == (enc, None)
    assert read_halves(dec) == (None, dec)
    save_file({k: v for k, v in dec.items() if k != "19.weight"}, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match="TAESD layout"):
        load_taesd(None, tmp_path / "broken.safetensors")
    save_file(enc, str(tmp_path / "enc_only.safetensors"))
    with pytest.raises(ValueError, match="no TAESD decoder"):
        load_taesd(None, tmp_path / "enc_only.safetensors")


# --- previews ---------------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.previews: list[Any] = []

    def update(self, node_id: str, value: float, max_value: float, preview: Any = None) -> None:
        self.previews.append(preview)

    def is_interrupted(self) -> bool:
        return False


def test_step_callback_decodes_x0_with_the_family_decoder(tmp_path: Path) -> None:
    _, dec = random_halves(4, seed=7)
    save_file(dec, str(tmp_path / "taesd_decoder.safetensors"))
    found = {"taesd_decoder": tmp_path / "taesd_decoder.safetensors"}
    taesd = PreviewOptions(enabled=True, method="taesd", find_approx=found.get)
    torch.manual_seed(8)
    x0 = torch.randn(2, 4, 6, 5)
    sink = _Sink()
    with executing(ExecutionContext("p", "3", None, sink)):
        step_callback(SD15, 1, taesd)(0, x0, x0, 1)
    expected = direct_decode(x0[:1], dec)[0].clamp(0, 1).movedim(0, -1)
    (image,) = sink.previews
    assert image.shape == (48, 40, 3)
    torch.testing.assert_close(image, expected, atol=1e-5, rtol=1e-4)
    # No decoder for the family (SDXL here), or another method: the linear RGB picture.
    for fmt_options in (
        PreviewOptions(enabled=True, method="taesd", find_approx=lambda _: None),
        PreviewOptions(enabled=True, method="latent2rgb", find_approx=found.get),
    ):
        sink = _Sink()
        with executing(ExecutionContext("p", "3", None, sink)):
            step_callback(SD15, 1, fmt_options)(0, x0, x0, 1)
        torch.testing.assert_close(sink.previews[0], SD15.preview_image(x0))


# --- through the server -----------------------------------------------------------------------


class SD15ToyLoader:
    """The toy stack with the SD1 latent format, so previews look for taesd_decoder."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def load(self) -> tuple[Any, Any, Any]:
        model = ToyModel()
        model.latent_format = SD15
        return (model, ToyClip(), ToyVAE())


class sd15_toy_plugin:  # noqa: N801 - a plugin namespace, registered like a module
    @staticmethod
    @hookimpl
    def register_nodes(register: Any) -> None:
        register("SD15ToyLoader", SD15ToyLoader)


async def test_vae_loader_lists_and_loads_the_families(comfy_server: Any, tmp_path: Path) -> None:
    approx = tmp_path / "models" / "vae_approx"
    enc, dec = random_halves(16, seed=9)
    write_pair(approx, "taesd3", enc, dec)
    _, only_dec = random_halves(4, seed=10)
    save_file(only_dec, str(approx / "taesdxl_decoder.safetensors"))  # no encoder: not offered
    server = await comfy_server(plugins=["core_nodes", "models"], base_directory=tmp_path)
    async with server.get("/object_info/VAELoader") as resp:
        choices = (await resp.json())["VAELoader"]["input"]["required"]["vae_name"][0]
    assert "taesd3" in choices and "taesdxl" not in choices and "taesd" not in choices
    prompt = {
        "img": {
            "class_type": "EmptyImage",
            "inputs": {"width": 48, "height": 32, "batch_size": 1, "color": 0x40A020},
        },
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["vae", 0]}},
        "save_latent": {
            "class_type": "SaveLatent",
            "inputs": {"samples": ["enc", 0], "filename_prefix": "t3"},
        },
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["enc", 0], "vae": ["vae", 0]}},
        "png": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "t3"}},
    }
    frames = await run_ok(server, prompt)
    scale, shift = FAMILIES["taesd3"]
    pixels = (
        torch.tensor([0x40, 0xA0, 0x20], dtype=torch.float32)
        .div(255)
        .reshape(1, 3, 1, 1)
        .expand(1, 3, 32, 48)
    )
    expected = direct_encode(pixels, enc) / scale + shift
    latent = saved_latents(server, frames, prefix="save_")["latent"]
    torch.testing.assert_close(latent, expected, atol=1e-3, rtol=1e-3)
    png = next(d["output"]["images"][0] for d in messages(frames, "executed") if d["node"] == "png")
    saved = torch.tensor(list(Image.open(server.kernel.settings.output_path / png["filename"]).getdata()))
    want = (direct_decode((expected - shift) * scale, dec)[0].clamp(0, 1).movedim(0, -1) * 255).reshape(-1, 3)
    assert (saved.float() - want).abs().max() <= 1.0  # 8-bit rounding only


async def test_ksampler_previews_with_taesd(comfy_server: Any, tmp_path: Path) -> None:
    approx = tmp_path / "models" / "vae_approx"
    approx.mkdir(parents=True)
    _, dec = random_halves(4, seed=11)
    dec["19.weight"] *= 0.1  # mid-range pictures: JPEG keeps them close
    dec["19.bias"].fill_(0.5)
    save_file(dec, str(approx / "taesd_decoder.safetensors"))
    server = await comfy_server(
        plugins=["core_nodes", "models", ("sd15toy", sd15_toy_plugin)],
        base_directory=tmp_path,
        preview_method="taesd",
        # Previews are fitted to this square (small ones enlarged); 64 keeps them at pixel size.
        preview_size=64,
    )
    steps = 3
    prompt = {
        "1": {"class_type": "SD15ToyLoader", "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 7,
                "steps": steps,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "karras",
                "positive": ["2", 0],
                "negative": ["2", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "save_out": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "ks"}},
    }
    frames = await run_ok(server, prompt)
    previews = [f for f in frames if isinstance(f, bytes)]
    assert len(previews) == steps
    images = []
    for frame in previews:
        event, image_format = struct.unpack(">II", frame[:8])
        assert (event, image_format) == (1, 1)  # PREVIEW_IMAGE, JPEG
        image = Image.open(io.BytesIO(frame[8:]))
        assert image.format == "JPEG"
        images.append(image.convert("RGB"))
    # TAESD pictures are full size (8x the latent); the linear preview would be 8 x 6.
    assert all(img.size == (64, 48) for img in images)
    # Euler's last step lands on its x0, so the last preview is the decoding of the result.
    final = saved_latents(server, frames, prefix="save_")["out"]
    want = direct_decode(SD15.process_in(final), dec)[0].clamp(0, 1).movedim(0, -1)
    got = _pixels(images[-1])
    # The same picture through the same JPEG encoding (quality 95); a wrong x0 (say, one not
    # scaled into model space) is far off.
    assert (got - _jpeg(want)).abs().mean() < 0.01
    assert (got - _jpeg(direct_decode(final, dec)[0].clamp(0, 1).movedim(0, -1))).abs().mean() > 0.03


def _pixels(image: Image.Image) -> torch.Tensor:
    return (
        torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32).reshape(
            image.height, image.width, 3
        )
        / 255
    )


def _jpeg(picture: torch.Tensor) -> torch.Tensor:
    """``[H, W, 3]`` 0..1 -> the same through a quality-95 JPEG, as preview frames are sent."""
    out = io.BytesIO()
    Image.fromarray((picture * 255).clamp(0, 255).to(torch.uint8).numpy()).save(
        out, format="JPEG", quality=95
    )
    return _pixels(Image.open(out))
