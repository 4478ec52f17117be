"""TAESD: the tiny autoencoders users keep in ``models/vae_approx`` for fast previews and cheap VAEs.

Each family ships as two files, ``<family>_encoder.*`` and ``<family>_decoder.*`` (``taesd`` for
SD1/SD2, ``taesdxl`` for SDXL, ``taesd3`` for SD3, ``taef1`` for Flux), whose keys are the indices
of two plain sequential stacks (``0.weight``, ``1.conv.0.weight``...). The same stacks also
appear inside one file under ``taesd_encoder.`` / ``taesd_decoder.`` (a saved TAESD VAE),
``encoder.`` / ``decoder.``, or diffusers' ``encoder.layers.`` / ``decoder.layers.`` (whose
decoder has no module for the input clamp, so its indices run one lower).

Conventions (the reference's):

* The networks work on *model-space* latents (the VAE latent after the family's shift and
  scale) and on pixels in 0..1: the encoder reads 0..1 pixels, the decoder writes 0..1 pixels.
* As a VAE (VAELoader's ``taesd`` ... ``taef1``) the latents are VAE-space: encoding divides by
  the family's scale and adds its shift, decoding undoes that first, so TAESD latents are
  interchangeable with the full autoencoder's.
* Previews decode the sampler's x0 (already model space) with scale 1 and shift 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from plugins.core_nodes.contracts import SD15, SDXL, LatentFormat
from plugins.core_nodes.models.latent_formats import FLUX, SD3
from plugins.core_nodes.models.vae import VAE, VAEConfig

__all__ = [
    "DECODER_NAMES",
    "FAMILIES",
    "FAMILY_FORMATS",
    "TAESD",
    "TAESDDecoder",
    "TAESDEncoder",
    "TAESDVAE",
    "load_taesd",
    "read_halves",
    "taesd_previewer",
]

log = logging.getLogger(__name__)

# VAELoader family -> (scale, shift) between VAE-space and model-space latents.
FAMILIES: dict[str, tuple[float, float]] = {
    "taesd": (0.18215, 0.0),
    "taesdxl": (0.13025, 0.0),
    "taesd3": (1.5305, 0.0609),
    "taef1": (0.3611, 0.1159),
}
# VAELoader family -> the latent format its VAE object reports (previews, latent channels).
FAMILY_FORMATS: dict[str, LatentFormat] = {"taesd": SD15, "taesdxl": SDXL, "taesd3": SD3, "taef1": FLUX}
# A latent format's name -> the prefix of its preview decoder's file in vae_approx.
DECODER_NAMES: dict[str, str] = {
    "SD15": "taesd_decoder",
    "SD1": "taesd_decoder",
    "SD2": "taesd_decoder",
    "SDXL": "taesdxl_decoder",
    "SD3": "taesd3_decoder",
    "Flux": "taef1_decoder",
}

_WIDTH = 64  # every TAESD layer is 64 channels wide


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the decoder's input to about -3..3 (``3 * tanh(x / 3)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3.0) * 3.0


class Block(nn.Module):
    """Three 3x3 convolutions (ReLU between) plus a skip, ReLU after the sum."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out)
        )
        # The file has a skip weight only when the widths differ (never in the released models).
        self.skip: nn.Module = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TAESDEncoder(nn.Sequential):
    """Pixels in 0..1 ``[B, 3, H, W]`` -> model-space latents ``[B, C, H/8, W/8]``."""

    def __init__(self, latent_channels: int = 4) -> None:
        w = _WIDTH
        layers: list[nn.Module] = [_conv(3, w), Block(w, w)]
        for _ in range(3):  # three stride-2 stages of three blocks each
            layers += [_conv(w, w, stride=2, bias=False), Block(w, w), Block(w, w), Block(w, w)]
        layers.append(_conv(w, latent_channels))
        super().__init__(*layers)


class TAESDDecoder(nn.Sequential):
    """Model-space latents ``[B, C, h, w]`` -> pixels (about 0..1) ``[B, 3, 8h, 8w]``."""

    def __init__(self, latent_channels: int = 4) -> None:
        w = _WIDTH
        layers: list[nn.Module] = [Clamp(), _conv(latent_channels, w), nn.ReLU()]
        for _ in range(3):  # three blocks, then a nearest x2 upsample and a bias-free conv
            layers += [
                Block(w, w),
                Block(w, w),
                Block(w, w),
                nn.Upsample(scale_factor=2),
                _conv(w, w, bias=False),
            ]
        layers += [Block(w, w), _conv(w, 3)]
        super().__init__(*layers)


class TAESD(nn.Module):
    """Both halves plus the family's scale / shift, in the reference's VAE key layout.

    ``encode`` / ``decode`` speak the -1..1 pixel range every VAE network in this package uses.
    """

    def __init__(self, latent_channels: int = 4, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.taesd_encoder = TAESDEncoder(latent_channels)
        self.taesd_decoder = TAESDDecoder(latent_channels)
        self.vae_scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=False)
        self.vae_shift = nn.Parameter(torch.tensor(float(shift)), requires_grad=False)
        # What VAE reads: an 8x downscale (four levels) and the latent width; no 1x1 convolutions.
        self.config = VAEConfig(ch_mult=(1, 1, 1, 1), z_channels=latent_channels, use_quant_conv=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.vae_scale.dtype

    @property
    def device(self) -> torch.device:
        return self.vae_scale.device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in -1..1 -> VAE-space latents."""
        x = x.to(self.dtype)
        return self.taesd_encoder(x * 0.5 + 0.5) / self.vae_scale + self.vae_shift

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """VAE-space latents -> pixels in (about) -1..1."""
        z = z.to(self.dtype)
        return self.taesd_decoder((z - self.vae_shift) * self.vae_scale) * 2.0 - 1.0


class TAESDVAE(VAE):
    """:class:`VAE`'s image <-> latent conversion (clamping, tiling, CPU float32 latents) over
    :class:`TAESD`."""

    def __init__(self, model: TAESD) -> None:
        super().__init__(model)  # type: ignore[arg-type]  # VAE reads config, encode, decode only

    @property
    def device(self) -> torch.device:
        return self.model.device


# --- reading the files ---------------------------------------------------------------------

_ENCODER_PREFIXES = ("taesd_encoder.", "encoder.layers.", "encoder.")
_DECODER_PREFIXES = ("taesd_decoder.", "decoder.layers.", "decoder.")


def _strip(sd: Mapping[str, torch.Tensor], prefix: str, index_shift: int = 0) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if index_shift:
            index, _, tail = rest.partition(".")
            rest = f"{int(index) + index_shift}.{tail}"
        out[rest] = value
    return out


def _half(
    sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...], diffusers_shift: int
) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in sd):
            return _strip(sd, prefix, diffusers_shift if prefix.endswith("layers.") else 0)
    return {}


def read_halves(
    sd: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
    """``(encoder weights, decoder weights)`` of one file in any of the layouts above; a half the
    file does not hold is None. A bare file (keys ``0.weight``...) is an encoder when it has the
    3-channel input convolution at index 0, else a decoder (whose index 0 is the clamp)."""
    encoder = _half(sd, _ENCODER_PREFIXES, 0)
    decoder = _half(sd, _DECODER_PREFIXES, 1)  # diffusers' decoder has no clamp module
    if encoder or decoder:
        return encoder or None, decoder or None
    bare = {k: v for k, v in sd.items() if k[:1].isdigit()}
    if not bare:
        return None, None
    first = bare.get("0.weight")
    if first is not None and first.ndim == 4 and first.shape[1] == 3:
        return bare, None
    return None, bare


def _latent_channels(
    encoder: Mapping[str, torch.Tensor] | None, decoder: Mapping[str, torch.Tensor] | None
) -> int:
    if decoder is not None and "1.weight" in decoder:
        return int(decoder["1.weight"].shape[1])
    if encoder is not None and "14.weight" in encoder:
        return int(encoder["14.weight"].shape[0])
    raise ValueError("not a TAESD file: no latent convolution (decoder 1.weight / encoder 14.weight)")


def _load_into(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not have the TAESD layout (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, value in sd.items():
        if own[key].shape != value.shape:
            raise ValueError(
                f"{what}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}"
            )
    module.load_state_dict({k: v.float() for k, v in sd.items()})


def _read(path: Path) -> dict[str, torch.Tensor]:
    from plugins.core_nodes.models.text_encoder import load_state_dict_file

    return load_state_dict_file(path)


def load_taesd(encoder_path: Path | None, decoder_path: Path, family: str | None = None) -> TAESD:
    """A :class:`TAESD` from its decoder file and (optionally) encoder file, either of which may
    also hold both halves; ``family`` (a :data:`FAMILIES` key) sets the VAE scale and shift,
    None leaves 1 and 0 (model-space latents, as previews use)."""
    encoder_sd, decoder_sd = read_halves(_read(decoder_path))
    if encoder_path is not None and Path(encoder_path) != Path(decoder_path):
        other_encoder, other_decoder = read_halves(_read(encoder_path))
        encoder_sd = other_encoder or encoder_sd
        decoder_sd = decoder_sd or other_decoder
    if decoder_sd is None:
        raise ValueError(f"{Path(decoder_path).name} holds no TAESD decoder")
    if encoder_path is not None and encoder_sd is None:
        raise ValueError(f"{Path(encoder_path).name} holds no TAESD encoder")
    scale, shift = FAMILIES.get(family or "", (1.0, 0.0))
    model = TAESD(_latent_channels(encoder_sd, decoder_sd), scale, shift)
    _load_into(model.taesd_decoder, decoder_sd, f"{Path(decoder_path).name} (decoder)")
    if encoder_sd is not None:
        _load_into(model.taesd_encoder, encoder_sd, f"{Path(encoder_path or decoder_path).name} (encoder)")
    return model.eval()


# --- previews --------------------------------------------------------------------------------

Previewer = Callable[[torch.Tensor], torch.Tensor]


def taesd_previewer(fmt: LatentFormat, find_approx: Callable[[str], Path | None]) -> Previewer | None:
    """The TAESD preview for ``fmt``: x0 (model space) -> ``[H, W, 3]`` pixels in 0..1 of the
    first batch item, computed where x0 lives; None (with the reference's warning) when the
    family has no decoder file in vae_approx."""
    prefix = DECODER_NAMES.get(fmt.name)
    if prefix is None:
        return None
    path = find_approx(prefix)
    if path is None:
        log.warning("TAESD previews enabled, but could not find models/vae_approx/%s", prefix)
        return None
    decoder = load_taesd(None, path).taesd_decoder

    @torch.inference_mode()
    def preview(x0: torch.Tensor) -> torch.Tensor:
        nonlocal decoder
        decoder = decoder.to(x0.device)  # a no-op after the first step
        return decoder(x0[:1].float())[0].clamp(0.0, 1.0).movedim(0, -1).cpu()

    return preview
