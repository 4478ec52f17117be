"""The model stack seen through ``plugins.core_nodes.contracts``: what the loader nodes hand out.

* :class:`DiffusionModel` (MODEL): a UNet as a denoiser. The network sees ``x / sqrt(sigma^2 + 1)``
  at the nearest discrete timestep and predicts noise (eps) or v; the discrete model sampling turns
  that into the denoised latent. SDXL's ADM vector is built here from the pooled text output and
  the size / crop conditioning; as in the reference, a missing ``width`` / ``height`` is the
  latent's size times 8, the target size defaults to it and the crop to 0 (the refiner's
  aesthetic score to 6).
* :class:`TextEncoder` (CLIP): tokenizer + encoders with clip skip, each adapter its own layer.
* :class:`Autoencoder` (VAE): pixels <-> latents, plain and tiled (tile sizes in pixels).

Files are loaded through the server's model manager (cached by path + mtime, moved to the compute
device when used, released on ``/free``); the manager is found through the kernel whose node is
executing (:mod:`plugins.core_nodes.serving`). Outside a node (tests, benchmarks) files load
uncached on the CPU. LoRA (:func:`apply_lora`) returns new adapters over the same cached modules
with patched weights overlaid per call, so the cached model is never changed.

Custom-node packs (``comfy_compat``) call the reference's object API on these values, so each
adapter also carries the commonly used, cheap part of it: ``ModelPatcher``'s ``clone``,
``model_options``, ``get_model_object``, ``model_dtype`` and ``.model``; ``CLIP``'s ``tokenize``,
``encode_from_tokens(_scheduled)``, ``clone`` and ``clip_layer``; ``VAE``'s ratios, crop and the
keyword form of the tiled calls. Those methods give the same numbers as the core nodes' paths.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from kernel.progress import throw_if_interrupted
from plugins.core_nodes.contracts import SD15, SDXL, LatentFormat
from plugins.core_nodes.models import checkpoint as ckpt
from plugins.core_nodes.models.lora import (
    LoraError,
    PatchedWeights,
    Patches,
    add_patches,
    read_deltas,
    resolve,
)
from plugins.core_nodes.models.manager import ModelManager, get_manager
from plugins.core_nodes.models.text_encoder import (
    Chunks,
    ClipEncoder,
    TextEncoderStack,
    load_state_dict_file,
    read_embedding,
    stack_from_encoder_files,
    stack_from_state_dict,
)
from plugins.core_nodes.models.tokenizer import EmbeddingLookup
from plugins.core_nodes.models.unet import ADM_SCALAR_DIM, UNetModel, sdxl_adm
from plugins.core_nodes.models.vae import VAE
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete
from plugins.core_nodes.serving import current_kernel

T = TypeVar("T")
log = logging.getLogger("comfykernel.core_nodes")
# The reference sizes SDXL's default size conditioning by 8 pixels per latent pixel whatever
# the VAE, so this is not the VAE's downscale ratio.
_ADM_PIXELS_PER_LATENT = 8
_EMBEDDING_SUFFIXES = ("", ".safetensors", ".pt", ".bin", ".pth")


def latent_format_for(family: str) -> LatentFormat:
    return SDXL if family.startswith("sdxl") else SD15


# --- the manager, when a server is around ----------------------------------------------------


def _manager() -> ModelManager | None:
    kernel = current_kernel()
    return get_manager(kernel) if kernel is not None else None


def _load(
    kind: str, path: Path, loader: Callable[[Path, Callable[[], None]], T], also: Sequence[Path] = ()
) -> T:
    manager = _manager()
    if manager is None:
        return loader(Path(path), throw_if_interrupted)
    return manager.load(kind, Path(path), loader, also=also)


def _compute_dtype(manager: ModelManager | None) -> torch.dtype | None:
    """fp32 on the CPU (half-precision matmuls there are slow or missing); the file's dtype on GPUs."""
    device = manager.compute_device if manager is not None else torch.device("cpu")
    return torch.float32 if device.type == "cpu" else None


@contextlib.contextmanager
def _using(manager: ModelManager | None, modules: Sequence[nn.Module]) -> Iterator[torch.device]:
    if manager is None:
        first = next(iter(modules[0].parameters()), None) if modules else None
        yield first.device if first is not None else torch.device("cpu")
        return
    with manager.use(*modules) as device:
        yield device


# --- what the manager caches ------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """A checkpoint's built parts; ``text_models`` lists the encoders' modules for the manager."""

    family: ckpt.ModelFamily
    unet: UNetModel
    vae: VAE | None
    stack: TextEncoderStack | None
    text_models: tuple[nn.Module, ...]


@dataclass
class LoadedText:
    stack: TextEncoderStack
    text_models: tuple[nn.Module, ...]


def _cast_stack(stack: TextEncoderStack, dtype: torch.dtype | None) -> tuple[nn.Module, ...]:
    models = tuple(encoder.model for encoder in stack.encoders.values())
    if dtype is not None:
        for model in models:
            model.to(dtype)
    return models


def _embedding_lookup() -> EmbeddingLookup | None:
    kernel = current_kernel()
    models = getattr(kernel, "models", None) if kernel is not None else None
    if models is None:
        return None

    def lookup(name: str, key: str, size: int) -> torch.Tensor | None:
        for suffix in _EMBEDDING_SUFFIXES:
            try:
                path = models.get_full_path("embeddings", name + suffix)
            except Exception:  # an unsafe or odd name is simply not an embedding
                return None
            if path is not None and Path(path).is_file():
                try:
                    return read_embedding(path, key, size)
                except ValueError:
                    return None
        return None

    return lookup


def _read_checkpoint(dtype: torch.dtype | None, embeddings: EmbeddingLookup | None) -> Any:
    def loader(path: Path, check: Callable[[], None]) -> LoadedCheckpoint:
        parts = ckpt.load_checkpoint(path, check, dtype)
        stack = None
        models: tuple[nn.Module, ...] = ()
        if parts.text_encoder_weights:
            try:
                stack = stack_from_state_dict(parts.text_encoder_weights, embeddings=embeddings)
            except (ValueError, KeyError, RuntimeError) as e:
                raise ckpt.CheckpointError(
                    f"{path.name} has text encoder weights that do not fit ({e})"
                ) from None
            models = _cast_stack(stack, dtype)
        return LoadedCheckpoint(parts.family, parts.unet, parts.vae, stack, models)

    return loader


# --- MODEL ------------------------------------------------------------------------------------


def _copy_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``model_options`` for a clone: nested dicts and lists copied, everything else shared.

    The reference's clone rule, so a pack that adds an entry to a clone's ``transformer_options``
    (the usual ``to["patches"][name].append(...)`` dance) leaves the original's untouched.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            out[key] = _copy_options(value)
        elif isinstance(value, list):
            out[key] = list(value)
        else:
            out[key] = value
    return out


class BaseModelView:
    """What a pack reaches as ``model.model`` (the reference's ``BaseModel``): read-only parts."""

    def __init__(self, unet: UNetModel, model_sampling: ModelSamplingDiscrete, fmt: LatentFormat) -> None:
        self.diffusion_model = unet
        self.model_sampling = model_sampling
        self.latent_format = fmt

    def get_dtype(self) -> torch.dtype:
        return next(self.diffusion_model.parameters()).dtype


class DiffusionModel:
    """A UNet as the denoiser KSampler drives (``contracts.DiffusionModel``).

    The reference ``ModelPatcher`` API packs use: :meth:`clone`, ``model_options`` (a dict, the
    reference's ``{"transformer_options": {}}`` to start with; clones get their own copy),
    :meth:`get_model_object`, :meth:`model_dtype` and ``model`` (:class:`BaseModelView`).
    The sampler never reads ``model_options``: patches and wrappers a pack puts there (cfg
    functions, attention patches...) are kept and ignored. ``add_patches`` is not offered: the
    reference's patches are keyed by its own state-dict names in ``comfy.lora``'s formats, which
    this server does not produce; LoRA goes through ``comfy.sd.load_lora_for_models``.
    """

    def __init__(
        self,
        unet: UNetModel,
        family: ckpt.ModelFamily,
        manager: ModelManager | None = None,
        patches: Patches | None = None,
    ) -> None:
        self.unet = unet
        self.family = family
        self.manager = manager
        self.model_sampling = ModelSamplingDiscrete(prediction=family.prediction)
        self.latent_format = latent_format_for(family.name)
        self.concat_channels = max(0, unet.config.in_channels - unet.config.out_channels)
        self.weights = PatchedWeights(unet, patches)
        if manager is not None and self.weights.patches:
            manager.track_derived(unet, self.weights)
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.model = BaseModelView(unet, self.model_sampling, self.latent_format)

    @property
    def patches(self) -> Patches:
        return self.weights.patches

    def with_patches(self, patches: Patches) -> DiffusionModel:
        new = DiffusionModel(self.unet, self.family, self.manager, patches)
        new.model_options = _copy_options(self.model_options)
        return new

    def clone(self) -> DiffusionModel:
        """A new MODEL over the same UNet and patches; its ``model_options`` are its own copy."""
        twin = copy.copy(self)
        twin.model_options = _copy_options(self.model_options)
        return twin

    def get_model_object(self, name: str) -> Any:
        """``model_sampling``, ``latent_format``, ``diffusion_model`` (dotted paths go inside it)."""
        found: Any = self.model
        for part in name.split("."):
            try:
                found = getattr(found, part)
            except AttributeError:
                raise AttributeError(
                    f"MODEL has no object {name!r}; this server provides model_sampling, "
                    "latent_format and diffusion_model"
                ) from None
        return found

    def model_dtype(self) -> torch.dtype:
        """The dtype the UNet's weights are stored in (float32 on the CPU)."""
        return self.model.get_dtype()

    def adm(self, cond: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor | None:
        """SDXL's ADM vector for ``cond`` on latents ``x`` (None for models without one)."""
        config = self.unet.config
        if config.adm_in_channels is None:
            return None
        refiner = self.family.name == "sdxl_refiner"
        pooled_width = config.adm_in_channels - (5 if refiner else 6) * ADM_SCALAR_DIM
        pooled = cond.get("pooled_output")
        if pooled is None:
            pooled = torch.zeros(x.shape[0], pooled_width)
        pooled = pooled.to(device=x.device, dtype=torch.float32)
        if pooled.shape[0] != x.shape[0]:
            pooled = pooled[:1].expand(x.shape[0], -1)
        width = float(cond.get("width", x.shape[-1] * _ADM_PIXELS_PER_LATENT))
        height = float(cond.get("height", x.shape[-2] * _ADM_PIXELS_PER_LATENT))
        crop_w, crop_h = float(cond.get("crop_w", 0)), float(cond.get("crop_h", 0))
        if refiner:
            score = float(cond.get("aesthetic_score", 6.0))
            return sdxl_adm(pooled, height, width, crop_h, crop_w, aesthetic_score=score)
        target_w = float(cond.get("target_width", width))
        target_h = float(cond.get("target_height", height))
        return sdxl_adm(pooled, height, width, crop_h, crop_w, target_h, target_w)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        ms = self.model_sampling
        sigma = sigma.reshape(-1).float().cpu()
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        with _using(self.manager, [self.unet]) as device:
            xd = x.to(device)
            inputs = ms.calculate_input(sigma.to(device), xd)
            concat = cond.get("c_concat")
            if concat is not None and self.concat_channels:
                inputs = torch.cat([inputs, concat.to(inputs)], dim=1)
            timesteps = ms.timestep(sigma).float().to(device)
            context = cond["c_crossattn"].to(device)
            y = self.adm(cond, xd)
            output = self.weights.call(inputs, timesteps, context, y)
            denoised = ms.calculate_denoised(sigma.to(device), output.float(), xd.float())
        return denoised.to(x.device, x.dtype)


# --- CLIP -------------------------------------------------------------------------------------


class _PatchedClip:
    """A text model called through its LoRA overlay; everything else is the base model's."""

    def __init__(self, weights: PatchedWeights) -> None:
        self._weights = weights

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._weights.call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._weights.module, name)


class TextEncoder:
    """Tokenizer + encoders (``contracts.TextEncoder``); never changes the cached stack.

    The reference ``CLIP`` API packs use: :meth:`tokenize` gives the reference's tokens (by
    encoder name ``l`` / ``h`` / ``g``, lists of 77-long chunks of ``(token, weight)`` or, with
    ``return_word_ids``, ``(token, weight, word_id)``); :meth:`encode_from_tokens` and
    :meth:`encode_from_tokens_scheduled` encode them (edited or not) at this adapter's clip-skip
    layer and LoRA patches, exactly as :meth:`encode` does text; :meth:`clone` and
    :meth:`clip_layer` are the reference's copy-then-mutate pair.
    """

    def __init__(
        self,
        stack: TextEncoderStack,
        manager: ModelManager | None = None,
        layer: int | None = None,
        patches: Mapping[str, Patches] | None = None,
    ) -> None:
        self.stack = stack
        self.manager = manager
        self.layer = layer
        self.patches: dict[str, Patches] = {k: dict(v) for k, v in (patches or {}).items()}
        self._weights = {
            name: PatchedWeights(encoder.model, self.patches.get(name))
            for name, encoder in stack.encoders.items()
        }
        if manager is not None:
            for weights in self._weights.values():
                if weights.patches:
                    manager.track_derived(weights.module, weights)

    @property
    def models(self) -> dict[str, nn.Module]:
        return {name: encoder.model for name, encoder in self.stack.encoders.items()}

    def _view(self) -> TextEncoderStack:
        """A stack sharing this one's models and tokenizers, at this adapter's layer and patches."""
        encoders: dict[str, ClipEncoder] = {}
        for name, encoder in self.stack.encoders.items():
            weights = self._weights[name]
            model: Any = _PatchedClip(weights) if weights.patches else encoder.model
            view = dataclasses.replace(encoder, model=model)
            view.set_layer(encoder.default_layer if self.layer is None else self.layer)
            encoders[name] = view
        return TextEncoderStack(self.stack.family, self.stack.tokenizers, encoders)

    def _encode_tokens(
        self, tokens: Mapping[str, Chunks], unprojected: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Like the reference, each encoder reads its own key and other keys are ignored.
        missing = [name for name in self.stack.encoders if not tokens.get(name)]
        if missing:
            raise ValueError(
                f"tokens for this CLIP need chunks under {sorted(self.stack.encoders)}; "
                f"missing or empty: {missing}"
            )
        if unprojected:
            self._check_unprojected()
        picked = {name: tokens[name] for name in self.stack.encoders}
        with _using(self.manager, list(self.models.values())):
            cond, pooled = self._view().encode_tokens(picked)
        return cond.float().cpu(), None if pooled is None else pooled.float().cpu()

    def _check_unprojected(self) -> None:
        """The unprojected pooled output is the pooled one when its encoder has no projection."""
        encoders = self.stack.encoders
        pooling = encoders["g"] if "g" in encoders else next(iter(encoders.values()))
        if pooling.model.text_projection is not None:
            raise NotImplementedError(
                "the unprojected pooled output of a projected text encoder (OpenCLIP-H / -G) "
                "is not supported by this server"
            )

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._encode_tokens(self.stack.tokenize(text))

    # The reference's CLIP object API.

    @property
    def layer_idx(self) -> int | None:
        """The reference's name for the clip-skip layer (None: the family's default)."""
        return self.layer

    @layer_idx.setter
    def layer_idx(self, layer_idx: int | None) -> None:
        self.layer = layer_idx

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, Chunks]:
        """The reference's tokens for ``text``. Newer references' extra options (``min_length``,
        ``tokenizer_options``...) are accepted and not used: chunks are always 77 tokens."""
        return {
            name: tokenizer.tokenize_with_weights(text, return_word_ids)
            for name, tokenizer in self.stack.tokenizers.items()
        }

    def encode_from_tokens(
        self, tokens: Mapping[str, Chunks], return_pooled: bool | str = False, return_dict: bool = False
    ) -> Any:
        """``cond``; ``(cond, pooled)`` with ``return_pooled``; ``{"cond", "pooled_output"}`` with
        ``return_dict``. ``return_pooled="unprojected"`` is only served where nothing is projected."""
        cond, pooled = self._encode_tokens(tokens, unprojected=return_pooled == "unprojected")
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        if return_pooled:
            return cond, pooled
        return cond

    def encode_from_tokens_scheduled(
        self,
        tokens: Mapping[str, Chunks],
        unprojected: bool = False,
        add_dict: Mapping[str, Any] | None = None,
        show_pbar: bool = True,
    ) -> list[list[Any]]:
        """A CONDITIONING, as CLIPTextEncode gives: ``[[cond, {"pooled_output": pooled, **add_dict}]]``
        (this server has no hook schedules, so there is always one entry)."""
        cond, pooled = self._encode_tokens(tokens, unprojected=unprojected)
        return [[cond, {"pooled_output": pooled, **(add_dict or {})}]]

    def clone(self) -> TextEncoder:
        """A new CLIP over the same models, layer and patches; :meth:`clip_layer` on it leaves this one."""
        twin = copy.copy(self)
        twin.patches = dict(self.patches)
        return twin

    def clip_layer(self, layer_idx: int | None) -> None:
        """Clip skip in place, as the reference's (packs call it on a clone): -1 last, -2 ..."""
        self.layer = layer_idx

    def load_model(self) -> TextEncoder:
        """Nothing to do: the model manager moves the encoders to the device when they run."""
        return self

    def with_last_layer(self, layer: int) -> TextEncoder:
        return TextEncoder(self.stack, self.manager, layer, self.patches)

    def with_patches(self, patches: Mapping[str, Patches]) -> TextEncoder:
        return TextEncoder(self.stack, self.manager, self.layer, patches)


# --- VAE --------------------------------------------------------------------------------------


class Autoencoder:
    """``contracts.ImageAutoencoder`` over :class:`~plugins.core_nodes.models.vae.VAE`.

    The reference ``VAE`` layouts: ``encode`` takes IMAGE pixels ``[B, H, W, C]`` in 0..1 (cropped,
    centred, to multiples of ``downscale_ratio``; channels past 3 are ignored) and gives latents
    ``[B, C, h, w]``; ``decode`` the reverse. The tiled calls have the reference's signatures:
    ``encode_tiled(pixels, tile_x=512, tile_y=512, overlap=64)`` in pixels,
    ``decode_tiled(latent, tile_x=64, tile_y=64, overlap=16)`` in latent pixels. Tiles are square
    here: unequal ``tile_x`` / ``tile_y`` use the smaller; ``tile_t`` / ``overlap_t`` (video VAEs)
    are accepted and not used.
    """

    def __init__(
        self, vae: VAE, latent_format: LatentFormat = SD15, manager: ModelManager | None = None
    ) -> None:
        self.vae = vae
        self.manager = manager
        self.latent_format = latent_format
        self.downscale_ratio = int(vae.downscale)
        self.upscale_ratio = self.downscale_ratio
        self.latent_channels = int(vae.latent_channels)

    def _use(self) -> contextlib.AbstractContextManager[torch.device]:
        return _using(self.manager, [self.vae.model])

    def spacial_compression_decode(self) -> int:
        return self.upscale_ratio

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    def temporal_compression_decode(self) -> None:
        """None: an image VAE (the reference's tiled nodes ask before using the temporal inputs)."""
        return None

    def vae_encode_crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` cut, centred, to multiples of the downscale ratio (a view)."""
        d = self.downscale_ratio
        h, w = pixels.shape[1] // d * d, pixels.shape[2] // d * d
        y0, x0 = (pixels.shape[1] % d) // 2, (pixels.shape[2] % d) // 2
        return pixels[:, y0 : y0 + h, x0 : x0 + w, :]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._use():
            return self.vae.encode(self.vae_encode_crop_pixels(pixels))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        with self._use():
            return self.vae.decode(latent)

    def _pixel_tiles(self, tile_size: int, overlap: int) -> tuple[int, int]:
        d = self.downscale_ratio
        tile = max(d, tile_size // d * d)
        return tile, min(overlap // d * d, tile - d)

    def encode_tiled(
        self,
        pixels: torch.Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> torch.Tensor:
        """The reference's signature: tiles and overlap in pixels (512, 512, 64 by default)."""
        size = _square_tile(tile_x, tile_y, 512)
        tile, over = self._pixel_tiles(size, 64 if overlap is None else int(overlap))
        with self._use():
            return self.vae.encode_tiled(self.vae_encode_crop_pixels(pixels), tile, over)

    def decode_tiled(
        self,
        latent: torch.Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> torch.Tensor:
        """The reference's signature: tiles and overlap in latent pixels (64, 64, 16 by default)."""
        d = self.downscale_ratio
        size = _square_tile(tile_x, tile_y, 64)
        tile, over = self._pixel_tiles(size * d, (16 if overlap is None else int(overlap)) * d)
        with self._use():
            return self.vae.decode_tiled(latent, tile // d, over // d)


def _square_tile(tile_x: int | None, tile_y: int | None, default: int) -> int:
    """Our tiles are square: the smaller of the reference's two sizes (``default`` when unset)."""
    return min(default if tile_x is None else int(tile_x), default if tile_y is None else int(tile_y))


# --- the functions the loader nodes call ------------------------------------------------------


def load_checkpoint(path: Path) -> tuple[DiffusionModel, TextEncoder | None, Autoencoder | None]:
    """CheckpointLoaderSimple: (MODEL, CLIP or None, VAE or None) from a single-file checkpoint."""
    manager = _manager()
    loaded: LoadedCheckpoint = _load(
        "checkpoint", Path(path), _read_checkpoint(_compute_dtype(manager), _embedding_lookup())
    )
    fmt = latent_format_for(loaded.family.name)
    model = DiffusionModel(loaded.unet, loaded.family, manager)
    clip = TextEncoder(loaded.stack, manager) if loaded.stack is not None else None
    vae = Autoencoder(loaded.vae, fmt, manager) if loaded.vae is not None else None
    return model, clip, vae


def load_vae(path: Path) -> Autoencoder:
    """VAELoader: a standalone autoencoder (its latent format is only used for previews)."""
    manager = _manager()
    dtype = _compute_dtype(manager)
    vae: VAE = _load("vae", Path(path), lambda p, check: ckpt.load_vae(p, check, dtype))
    return Autoencoder(vae, SD15, manager)


def vae_from_state_dict(sd: Mapping[str, torch.Tensor], name: str = "the VAE weights") -> Autoencoder:
    """An autoencoder from weights already read (not cached: there is no file to key it by)."""
    manager = _manager()
    return Autoencoder(ckpt.vae_from_state_dict(sd, name, _compute_dtype(manager)), SD15, manager)


def load_unet(path: Path, weight_dtype: str = "default") -> DiffusionModel:
    """UNETLoader. The fp8 choices load at the compute dtype: fp8 storage is not supported yet."""
    manager = _manager()
    dtype = _compute_dtype(manager)
    family, unet = _load(
        "diffusion_model", Path(path), lambda p, check: ckpt.load_diffusion_model(p, check, dtype)
    )
    return DiffusionModel(unet, family, manager)


# CLIPLoader / DualCLIPLoader types -> the encoder role of each file, in order.
_CLIP_ROLES: dict[tuple[str, int], tuple[str, ...]] = {
    ("stable_diffusion", 1): ("l",),
    ("sdxl", 2): ("l", "g"),
}


def _roles(paths: Sequence[Path], clip_type: str) -> tuple[str, ...]:
    roles = _CLIP_ROLES.get((clip_type, len(paths)))
    if roles is None:
        raise ckpt.CheckpointError(f"text encoder type {clip_type!r} is not supported by this server")
    return roles


def load_clip(
    paths: Sequence[Path], clip_type: str = "stable_diffusion", device: str = "default"
) -> TextEncoder:
    """CLIPLoader / DualCLIPLoader: standalone ``text_encoders/`` files.

    One file of type ``stable_diffusion`` is CLIP-L (SD1) or OpenCLIP-H (SD2, told by its width);
    two files of type ``sdxl`` are CLIP-L and OpenCLIP-G, in either order.
    """
    manager = _manager()
    dtype = _compute_dtype(manager)
    embeddings = _embedding_lookup()
    paths = [Path(p) for p in paths]
    roles = _roles(paths, clip_type)

    def loader(_path: Path, check: Callable[[], None]) -> LoadedText:
        files = []
        for p in paths:
            check()
            files.append(load_state_dict_file_checked(p))
        names = [p.name for p in paths]
        file_roles = roles
        if len(files) == 2 and _width(files[0]) > _width(files[1]):
            files.reverse()  # CLIP-L is the narrower of SDXL's pair, whichever slot it came in
        elif len(files) == 1 and _width(files[0]) == 1024:
            file_roles = ("h",)
        try:
            stack = stack_from_encoder_files(dict(zip(file_roles, files, strict=True)), embeddings=embeddings)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ckpt.CheckpointError(
                f"{', '.join(names)}: not text encoders this server knows ({e})"
            ) from None
        return LoadedText(stack, _cast_stack(stack, dtype))

    # The cache key is the first file; the kind names the whole set so another pair reloads,
    # and a change to any file of the set reloads it.
    kind = "clip:" + clip_type + ":" + "|".join(str(p.resolve()) for p in paths)
    loaded: LoadedText = _load(kind, paths[0], loader, also=paths[1:])
    return TextEncoder(loaded.stack, manager)


def load_state_dict_file_checked(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_state_dict_file(path)
    except ValueError as e:
        raise ckpt.CheckpointError(str(e)) from None


def _width(sd: Mapping[str, torch.Tensor]) -> int:
    for key, value in sd.items():
        if key.endswith("token_embedding.weight"):
            return int(value.shape[-1])
    return 0


def apply_lora(
    model: DiffusionModel | None,
    clip: TextEncoder | None,
    path: Path,
    strength_model: float,
    strength_clip: float,
) -> tuple[DiffusionModel | None, TextEncoder | None]:
    """LoraLoader: new MODEL / CLIP adapters with the LoRA's changes overlaid at the strengths."""
    path = Path(path)
    try:
        sd = load_state_dict_file(path)
    except ValueError as e:
        raise LoraError(str(e)) from None
    return apply_lora_state_dict(model, clip, sd, strength_model, strength_clip, name=path.name)


def apply_lora_state_dict(
    model: DiffusionModel | None,
    clip: TextEncoder | None,
    sd: Mapping[str, torch.Tensor],
    strength_model: float,
    strength_clip: float,
    name: str = "(state dict)",
) -> tuple[DiffusionModel | None, TextEncoder | None]:
    """:func:`apply_lora` on LoRA weights already read (``name`` is what errors call them)."""
    deltas = read_deltas(sd)
    if not deltas:
        raise LoraError(f"{name} holds no LoRA weights this server knows")
    unet = model.unet if isinstance(model, DiffusionModel) else None
    encoders = clip.models if isinstance(clip, TextEncoder) else {}
    found = resolve(deltas, unet, encoders)
    if found.unmatched:
        first = found.unmatched[0]
        reason = found.reasons.get(first)
        log.warning(
            "LoRA %s: %d keys fit no layer of this model, e.g. %s%s",
            name,
            len(found.unmatched),
            first,
            f" ({reason})" if reason else "",
        )
    if not found.unet and not any(found.text.values()):
        raise LoraError(f"{name} does not fit this model: none of its {len(deltas)} LoRA keys match")
    new_model, new_clip = model, clip
    if isinstance(model, DiffusionModel) and found.unet and strength_model != 0:
        new_model = model.with_patches(add_patches(model.patches, found.unet, strength_model))
    if isinstance(clip, TextEncoder) and any(found.text.values()) and strength_clip != 0:
        patches = {
            encoder: add_patches(clip.patches.get(encoder, {}), found.text.get(encoder, {}), strength_clip)
            for encoder in clip.models
        }
        new_clip = clip.with_patches(patches)
    return new_model, new_clip


__all__ = [
    "Autoencoder",
    "DiffusionModel",
    "LoadedCheckpoint",
    "TextEncoder",
    "apply_lora",
    "apply_lora_state_dict",
    "latent_format_for",
    "load_checkpoint",
    "load_clip",
    "load_unet",
    "load_vae",
    "vae_from_state_dict",
]
