"""The KL autoencoder (the "VAE") of SD1.x / SD2.x / SDXL, plain and tiled.

Parameter names follow the single-file layout (``encoder.down.N.block.M``, ``decoder.up.N``,
``quant_conv``, ``post_quant_conv``); :func:`convert_diffusers_vae` maps the diffusers layout
(``down_blocks`` / ``up_blocks`` / ``mid_block``) onto it, so standalone VAE files in either layout
load. The latent scale belongs to the model family, not to the VAE: the same autoencoder
architecture serves SD1 (0.18215) and SDXL (0.13025). Flux and SD3 use the same architecture
with 16 latent channels and no ``quant_conv`` / ``post_quant_conv``; both are read off the weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LATENT_SCALE: dict[str, float] = {
    "sd1": 0.18215,
    "sd2": 0.18215,
    "sdxl": 0.13025,
    "sdxl_refiner": 0.13025,
    "sd3": 1.5305,
    "flux": 0.3611,
}


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    in_channels: int = 3
    out_ch: int = 3
    # The 16-channel autoencoders of Flux / SD3 have no 1x1 convolutions around the latent.
    use_quant_conv: bool = True

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 if channels % 32 == 0 else math.gcd(32, channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(n), self.k(n), self.v(n)))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (right/bottom only), as the original autoencoder was trained with.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self._resample_name = name
        if resample is not None:
            self.add_module(name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        resample = getattr(self, self._resample_name, None)
        return x if resample is None else resample(x)


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        levels: list[_Level] = []
        block_in = c.ch
        for i, mult in enumerate(c.ch_mult):
            block_out = c.ch * mult
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            down = Downsample(block_in) if i != len(c.ch_mult) - 1 else None
            levels.append(_Level(blocks, down, "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in)
        levels: list[_Level | None] = [None] * len(c.ch_mult)
        for i in reversed(range(len(c.ch_mult))):
            block_out = c.ch * c.ch_mult[i]
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            levels[i] = _Level(blocks, Upsample(block_in) if i != 0 else None, "upsample")
        # Stored by level index (up.0 is the full-resolution level) but run from the deepest up.
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.z_channels, 1)
            self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        # Read off the weights, so a ModelPatcher around the module (VAE.patcher) finds a device
        # and does not write a stale one onto this shared, cached network.
        return self.encoder.conv_in.weight.device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (BCHW) -> the latent distribution's mean (deterministic)."""
        moments = self.encoder(x.to(self.dtype))
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        return moments[:, : self.config.z_channels]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (BCHW) -> images in roughly [-1, 1] (BCHW)."""
        z = z.to(self.dtype)
        return self.decoder(self.post_quant_conv(z) if self.config.use_quant_conv else z)


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> VAEConfig:
    """Read the autoencoder architecture off un-prefixed single-file-layout weights."""
    conv_in = sd["encoder.conv_in.weight"]
    ch = conv_in.shape[0]
    levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    return VAEConfig(
        ch=ch,
        ch_mult=mult,
        num_res_blocks=blocks,
        z_channels=sd["decoder.conv_in.weight"].shape[1],
        in_channels=conv_in.shape[1],
        out_ch=sd["decoder.conv_out.weight"].shape[0],
        use_quant_conv="post_quant_conv.weight" in sd,
    )


_DIFFUSERS_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."), r"encoder.down.\1.block.\2."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\."), r"encoder.down.\1.downsample."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\."), r"\1.mid.block_@\2."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\."), r"\1.mid.attn_1."),
    (re.compile(r"^(encoder|decoder)\.conv_norm_out\."), r"\1.norm_out."),
    (re.compile(r"\.conv_shortcut\."), ".nin_shortcut."),
    (re.compile(r"\.attn_1\.group_norm\."), ".attn_1.norm."),
    (re.compile(r"\.attn_1\.(?:to_q|query)\."), ".attn_1.q."),
    (re.compile(r"\.attn_1\.(?:to_k|key)\."), ".attn_1.k."),
    (re.compile(r"\.attn_1\.(?:to_v|value)\."), ".attn_1.v."),
    (re.compile(r"\.attn_1\.(?:to_out\.0|proj_attn)\."), ".attn_1.proj_out."),
]


def is_diffusers_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    return "encoder.conv_norm_out.weight" in sd or "decoder.conv_norm_out.weight" in sd


def convert_diffusers_vae(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers-layout autoencoder weights to the single-file layout."""
    levels = 1 + max(
        (int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1
    )
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.", key)
        if m:
            # diffusers counts decoder levels from the deepest; the single-file layout from the top.
            level = levels - 1 - int(m.group(1))
            part = f"block.{m.group(3)}" if m.group(2) == "resnets" else "upsample"
            new = f"decoder.up.{level}.{part}.{key[m.end() :]}"
        for pattern, repl in _DIFFUSERS_RENAMES:
            new = pattern.sub(repl, new)
        new = new.replace("mid.block_@0.", "mid.block_1.").replace("mid.block_@1.", "mid.block_2.")
        out[new] = value
    return out


def _as_conv_attention(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Some files store the mid-block attention projections as linear (2-D) weights.
    for key, value in sd.items():
        if ".attn_1." in key and key.endswith("weight") and value.ndim == 2:
            sd[key] = value[:, :, None, None]
    return sd


def build_vae(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> AutoencoderKL:
    """An autoencoder with exactly these (un-prefixed, either layout) weights."""
    weights = convert_diffusers_vae(sd) if is_diffusers_layout(sd) else dict(sd)
    weights = _as_conv_attention(weights)
    config = config_from_state_dict(weights)
    with torch.device("meta"):
        model = AutoencoderKL(config)
    model.load_state_dict(weights, strict=True, assign=True)
    model.to(dtype or weights["encoder.conv_in.weight"].dtype)
    return model.eval().requires_grad_(False)


def _ramp(n: int, feather: int, at_start: bool, at_end: bool) -> torch.Tensor:
    w = torch.ones(n)
    if feather <= 0:
        return w
    ramp = (torch.arange(feather, dtype=torch.float32) + 1) / (feather + 1)
    if at_start:
        w[:feather] = torch.minimum(w[:feather], ramp[: min(feather, n)])
    if at_end:
        w[-feather:] = torch.minimum(w[-feather:], ramp.flip(0)[-min(feather, n) :])
    return w


def _starts(size: int, tile: int, overlap: int, align: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    # Starts stay on multiples of ``align`` so encoded tiles land on whole latent pixels.
    starts.append((size - tile) // align * align)
    return sorted(set(starts))


def tiled_map(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: float,
    out_channels: int,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping ``tile``-sized squares of ``x`` and blend the results.

    ``scale`` is output pixels per input pixel (8 for decoding, 1/8 for encoding); overlaps are
    cross-faded linearly so seams do not show. One tile covering ``x`` is just ``fn(x)``.
    """
    if overlap >= tile:
        raise ValueError("tile overlap must be smaller than the tile")
    b, _, h, w = x.shape
    out_h, out_w = round(h * scale), round(w * scale)
    out = torch.zeros(b, out_channels, out_h, out_w, dtype=torch.float32)
    weight = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32)
    feather = round(overlap * scale)
    align = round(1 / scale) if scale < 1 else 1
    if tile % align or overlap % align:
        raise ValueError(f"tile and overlap must be multiples of {align}")
    ys, xs = _starts(h, tile, overlap, align), _starts(w, tile, overlap, align)
    for y0 in ys:
        for x0 in xs:
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            piece = fn(x[:, :, y0:y1, x0:x1]).float().cpu()
            oy, ox = round(y0 * scale), round(x0 * scale)
            ph, pw = piece.shape[-2:]
            mask = _ramp(ph, feather, y0 > 0, y1 < h)[:, None] * _ramp(pw, feather, x0 > 0, x1 < w)[None, :]
            out[:, :, oy : oy + ph, ox : ox + pw] += piece * mask
            weight[:, :, oy : oy + ph, ox : ox + pw] += mask
    return out / weight.clamp(min=1e-8)


class VAE:
    """ComfyUI-style image <-> latent conversion around an :class:`AutoencoderKL`.

    Images are ``[B, H, W, C]`` floats in [0, 1] on the CPU; latents are raw (unscaled) ``[B, 4, h, w]``
    float32 on the CPU. Work runs on whatever device the autoencoder sits on.
    """

    def __init__(self, model: AutoencoderKL) -> None:
        self.model = model
        self.downscale = model.config.downscale
        self.latent_channels = model.config.z_channels

    @property
    def device(self) -> torch.device:
        return self.model.encoder.conv_in.weight.device

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x.to(self.device)).float().cpu()

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z.to(self.device)).float().cpu()

    @staticmethod
    def _to_model(pixels: torch.Tensor) -> torch.Tensor:
        return pixels[..., :3].movedim(-1, 1).float() * 2.0 - 1.0

    @staticmethod
    def _to_image(x: torch.Tensor) -> torch.Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._encode(self._to_model(pixels))

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self._to_image(self._decode(latent))

    @torch.inference_mode()
    def encode_tiled(self, pixels: torch.Tensor, tile: int = 512, overlap: int = 64) -> torch.Tensor:
        d = self.downscale
        return tiled_map(self._encode, self._to_model(pixels), tile, overlap, 1.0 / d, self.latent_channels)

    @torch.inference_mode()
    def decode_tiled(self, latent: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
        out_ch = self.model.config.out_ch
        return self._to_image(tiled_map(self._decode, latent, tile, overlap, float(self.downscale), out_ch))
