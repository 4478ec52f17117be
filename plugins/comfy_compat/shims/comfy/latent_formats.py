"""``comfy.latent_formats``: how each model family's latents are scaled and previewed.

A latent format turns VAE latents into what the diffusion model sees (``process_in``) and back
(``process_out``), and carries the linear latent->RGB fit used for cheap previews. SD15, SDXL,
Playground v2.5, SD3 and Flux take their numbers from the core nodes' own formats, so previews
and scaling agree with the core samplers; the other families carry their published constants.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from plugins.core_nodes import contracts
from plugins.core_nodes.models import latent_formats as core_formats
from plugins.core_nodes.models.latent_formats import ShiftedLatentFormat
from plugins.core_nodes.nodes.model_advanced import PLAYGROUND_2_5

Rows = list[list[float]]


class LatentFormat:
    """Identity-scaled 4-channel 2-D latents; subclasses set their constants."""

    scale_factor: float = 1.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors: Rows | None = None
    latent_rgb_factors_bias: list[float] | None = None
    latent_rgb_factors_reshape: Any = None
    taesd_decoder_name: str | None = None
    spacial_downscale_ratio = 8
    temporal_downscale_ratio = 1

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor


class _Standardised(LatentFormat):
    """Latents normalised per channel with a mean and standard deviation before scaling."""

    latents_mean: torch.Tensor
    latents_std: torch.Tensor

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        mean = self.latents_mean.to(latent.device, latent.dtype)
        std = self.latents_std.to(latent.device, latent.dtype)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        mean = self.latents_mean.to(latent.device, latent.dtype)
        std = self.latents_std.to(latent.device, latent.dtype)
        return latent * std / self.scale_factor + mean


class _Shifted(LatentFormat):
    """Latents shifted by ``shift_factor`` before scaling (SD3, Flux)."""

    shift_factor = 0.0

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor


def _rows(table: Any) -> Rows:
    return [list(row) for row in table]


def _channels(values: tuple[float, ...], dims: int) -> torch.Tensor:
    return torch.tensor(values).view(1, len(values), *([1] * dims))


# --- published constants of the other families ---------------------------------------------
_SD_X4_RGB = (
    (-0.234, -0.3863, -0.3257),
    (0.0994, 0.0885, -0.0908),
    (-0.2833, -0.2349, -0.3741),
    (0.2523, -0.0055, -0.1651),
)
_SC_PRIOR_RGB = (
    (-0.0326, -0.0204, -0.0127),
    (-0.1592, -0.0427, 0.0216),
    (0.0873, 0.0638, -0.002),
    (-0.0602, 0.0442, 0.1304),
    (0.08, -0.0313, -0.1796),
    (-0.081, -0.0638, -0.1581),
    (0.1791, 0.118, 0.0967),
    (0.074, 0.1416, 0.0432),
    (-0.1745, -0.1888, -0.1373),
    (0.2412, 0.1577, 0.0928),
    (0.1908, 0.0998, 0.0682),
    (0.0209, 0.0365, -0.0092),
    (0.0448, -0.065, -0.1728),
    (-0.1658, -0.1045, -0.1308),
    (0.0542, 0.1545, 0.1325),
    (-0.0352, -0.1672, -0.2541),
)
_SC_B_RGB = (
    (0.1121, 0.2006, 0.1023),
    (-0.2093, -0.0222, -0.0195),
    (-0.3087, -0.1535, 0.0366),
    (0.029, -0.1574, -0.4078),
)
_HUNYUANVIDEO_RGB = (
    (-0.0395, -0.0331, 0.0445),
    (0.0696, 0.0795, 0.0518),
    (0.0135, -0.0945, -0.0282),
    (0.0108, -0.025, -0.0765),
    (-0.0209, 0.0032, 0.0224),
    (-0.0804, -0.0254, -0.0639),
    (-0.0991, 0.0271, -0.0669),
    (-0.0646, -0.0422, -0.04),
    (-0.0696, -0.0595, -0.0894),
    (-0.0799, -0.0208, -0.0375),
    (0.1166, 0.1627, 0.0962),
    (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.192, -0.1355),
    (-0.027, 0.0401, -0.0821),
    (-0.0616, -0.0997, -0.0727),
    (0.0249, -0.0469, -0.1703),
)
_HUNYUANVIDEO_BIAS = (0.0259, -0.0192, -0.0761)
_WAN21_RGB = (
    (-0.1299, -0.1692, 0.2932),
    (0.0671, 0.0406, 0.0442),
    (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.142),
    (0.0313, 0.0189, -0.0328),
    (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925),
    (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.074, 0.1636),
    (0.068, 0.3019, 0.1128),
    (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699),
    (0.006, -0.0633, 0.0005),
    (0.3477, 0.2275, 0.295),
    (0.1984, 0.0913, 0.1861),
)
_WAN21_BIAS = (-0.1835, -0.0868, -0.336)
_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916)


class SD15(LatentFormat):
    def __init__(self, scale_factor: float = contracts.SD15.scale_factor) -> None:
        self.scale_factor = scale_factor
        self.latent_rgb_factors = contracts.SD15.latent_rgb_factors
        self.taesd_decoder_name = "taesd_decoder"


class SDXL(LatentFormat):
    scale_factor = contracts.SDXL.scale_factor

    def __init__(self) -> None:
        self.latent_rgb_factors = contracts.SDXL.latent_rgb_factors
        self.latent_rgb_factors_bias = contracts.SDXL.latent_rgb_factors_bias
        self.taesd_decoder_name = "taesdxl_decoder"


class SDXL_Playground_2_5(_Standardised):  # noqa: N801 - the reference's class name
    def __init__(self) -> None:
        # The numbers of the core ModelSamplingContinuousEDM node's Playground v2.5 format.
        self.scale_factor = PLAYGROUND_2_5.scale_factor
        self.latents_mean = _channels(PLAYGROUND_2_5.mean, 2)
        self.latents_std = _channels(PLAYGROUND_2_5.std, 2)
        self.latent_rgb_factors = PLAYGROUND_2_5.latent_rgb_factors
        self.taesd_decoder_name = "taesdxl_decoder"


class SD_X4(LatentFormat):  # noqa: N801 - the reference's class name
    def __init__(self) -> None:
        self.scale_factor = 0.08333
        self.latent_rgb_factors = _rows(_SD_X4_RGB)


class SC_Prior(LatentFormat):  # noqa: N801 - the reference's class name
    latent_channels = 16
    spacial_downscale_ratio = 42

    def __init__(self) -> None:
        self.scale_factor = 1.0
        self.latent_rgb_factors = _rows(_SC_PRIOR_RGB)


class SC_B(LatentFormat):  # noqa: N801 - the reference's class name
    spacial_downscale_ratio = 4

    def __init__(self) -> None:
        self.scale_factor = 1.0 / 0.43
        self.latent_rgb_factors = _rows(_SC_B_RGB)


class SD3(_Shifted):
    latent_channels = 16
    _core: ClassVar[ShiftedLatentFormat] = core_formats.SD3  # the core samplers' own numbers
    _taesd: ClassVar[str] = "taesd3_decoder"

    def __init__(self) -> None:
        self.scale_factor = self._core.scale_factor
        self.shift_factor = self._core.shift_factor
        self.latent_rgb_factors = self._core.latent_rgb_factors
        self.latent_rgb_factors_bias = self._core.latent_rgb_factors_bias
        self.taesd_decoder_name = self._taesd


class StableAudio1(LatentFormat):
    latent_channels = 64
    latent_dimensions = 1
    temporal_downscale_ratio = 2048


class Flux(SD3):
    latent_channels = 16
    _core = core_formats.FLUX
    _taesd = "taef1_decoder"


_MOCHI_MEAN = (
    -0.06730895953510081, -0.038011381506090416, -0.07477820912866141, -0.05565264470995561,
    0.012767231469026969, -0.04703542746246419, 0.043896967884726704, -0.09346305707025976,
    -0.09918314763016893, -0.008729793427399178, -0.011931556316503654, -0.0321993391887285,
)
_MOCHI_STD = (
    0.9263795028493863, 0.9248894543193766, 0.9393059390890617, 0.959253732819592,
    0.8244560132752793, 0.917259975397747, 0.9294154431013696, 1.3720942357788521,
    0.881393668867029, 0.9168315692124348, 0.9185249279345552, 0.9274757570805041,
)


class Mochi(_Standardised):
    """Mochi's 12-channel video latents (no RGB preview fit here)."""

    latent_channels = 12
    latent_dimensions = 3
    temporal_downscale_ratio = 6

    def __init__(self) -> None:
        self.scale_factor = 1.0
        self.latents_mean = _channels(_MOCHI_MEAN, 3)
        self.latents_std = _channels(_MOCHI_STD, 3)


class HunyuanVideo(LatentFormat):
    latent_channels = 16
    latent_dimensions = 3
    temporal_downscale_ratio = 4
    scale_factor = 0.476986
    latent_rgb_factors = _rows(_HUNYUANVIDEO_RGB)
    latent_rgb_factors_bias = list(_HUNYUANVIDEO_BIAS)
    taesd_decoder_name = "taehv"


class Wan21(_Standardised):
    latent_channels = 16
    latent_dimensions = 3
    temporal_downscale_ratio = 4
    latent_rgb_factors = _rows(_WAN21_RGB)
    latent_rgb_factors_bias = list(_WAN21_BIAS)

    def __init__(self) -> None:
        self.scale_factor = 1.0
        self.latents_mean = _channels(_WAN21_MEAN, 3)
        self.latents_std = _channels(_WAN21_STD, 3)
        self.taesd_decoder_name = "lighttaew2_1"
