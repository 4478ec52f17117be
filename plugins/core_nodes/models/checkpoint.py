"""Single-file checkpoints: reading tensors safely, telling the model family, building the parts.

``.safetensors`` files are read with safetensors; ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` only
through ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers. The family is read from key names and tensor shapes (see :func:`detect_family`), so
a narrow test model of a known architecture is recognised like the real thing. Every failure is a
:class:`CheckpointError` whose message names the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .flux import FluxConfig, FluxTransformer, is_flux_state_dict
from .flux import config_from_state_dict as flux_config
from .mmdit import MMDiT, MMDiTConfig, is_mmdit, load_mmdit
from .mmdit import config_from_state_dict as mmdit_config
from .unet import ADM_SCALAR_DIM, UNetConfig, UNetModel, build_unet, config_from_state_dict
from .vae import LATENT_SCALE, VAE, build_vae

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
# SD3 checkpoints keep theirs under text_encoders.clip_l / clip_g / t5xxl.
TEXT_ENCODER_PREFIXES = ("cond_stage_model.", "conditioner.embedders.", "text_encoders.")
# unCLIP checkpoints: the image-embedding noise augmentor and the CLIP vision tower they carry.
UNCLIP_PREFIXES = ("noise_augmentor.", "embedder.model.visual.")
# A full-size SD2.1 unCLIP UNet without those keys (a UNet file alone) is told by its widths: the
# OpenCLIP-H context and an ADM input of an image embedding plus its noise-level embedding
# (ViT-L: 768 + 768, ViT-H: 1024 + 1024), as the reference's SD21UnclipL / SD21UnclipH configs.
_SD2_CONTEXT = 1024
_UNCLIP_ADM_WIDTHS = (1536, 2048)
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

CheckInterrupt = Callable[[], None]


class CheckpointError(Exception):
    """A model file could not be read or is not a model this server knows; names the file."""


@dataclass(frozen=True)
class ModelFamily:
    """What a diffusion model is: ``name`` is ``sd1``, ``sd2``, ``sdxl`` or ``sdxl_refiner`` (an
    SD2 UNet with an ADM input is SD2.1 unCLIP, see :attr:`unclip`) with a UNet, or ``sd3`` (SD3 /
    SD3.5, prediction ``flow``) with an MMDiT; ``unet_config`` is the network's config."""

    name: str
    prediction: str
    unet_config: UNetConfig | MMDiTConfig | FluxConfig

    @property
    def unclip(self) -> bool:
        """SD2.1 unCLIP: its ADM input is a noise-augmented CLIP image embedding."""
        return (
            self.name == "sd2"
            and isinstance(self.unet_config, UNetConfig)
            and self.unet_config.adm_in_channels is not None
        )

    @property
    def latent_scale(self) -> float:
        return LATENT_SCALE[self.name]


@dataclass
class Checkpoint:
    """The parts of a single-file checkpoint; text encoders stay raw weights for the CLIP code."""

    family: ModelFamily
    unet: UNetModel | MMDiT
    vae: VAE | None
    text_encoder_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _noop() -> None:
    return None


def load_state_dict(
    path: Path, check_interrupt: CheckInterrupt | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a model file (on the CPU) and its safetensors metadata.

    ``check_interrupt`` is called between tensors and may raise to abandon the load.
    """
    check = check_interrupt or _noop
    name = path.name
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CheckpointError(f"Model file not found: {name}")
    if suffix in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path, check)
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, check), {}
    raise CheckpointError(f"Unsupported model file type {suffix or '(none)'!r}: {name}")


def _load_safetensors(path: Path, check: CheckInterrupt) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                check()
                out[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"Could not read {path.name}: not a valid safetensors file ({e})") from None
    return out, metadata


# CPU kernels pick their vector paths by the address of the weights. A model built with
# ``assign=True`` keeps tensors that are slices of the file's mapping wherever the file put them
# (safetensors packs them after an 8-byte-aligned header), so the same weights read from two
# files (a checkpoint and its extracted UNet) could round differently. Torch allocates at 64.
_ALIGNMENT = 64


def _realign(module: Any) -> Any:
    """Copy, one tensor at a time, the parameters and buffers of ``module`` that do not start on
    a 64-byte boundary; those a dtype cast already copied are left as they are."""
    if isinstance(module, torch.nn.Module):
        with torch.no_grad():
            for tensor in (*module.parameters(), *module.buffers()):
                if tensor.data_ptr() % _ALIGNMENT:
                    tensor.data = tensor.data.clone()
    return module


def _load_pickle(path: Path, check: CheckInterrupt) -> dict[str, torch.Tensor]:
    check()
    try:
        data: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # A disallowed class or function shows as "Unsupported global"; anything else is damage.
        if "unsupported global" in str(e).lower():
            raise CheckpointError(
                f"Refusing to load {path.name}: it holds objects other than tensors (only weights are loaded)"
            ) from None
        raise CheckpointError(f"Could not read {path.name}: not a valid checkpoint") from None
    except Exception as e:  # a damaged pickle can fail in any way at all
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"Could not read {path.name}: not a valid checkpoint ({detail})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"Could not read {path.name}: it does not hold a dictionary of tensors")
    check()
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _is_unet(sd: Mapping[str, torch.Tensor]) -> bool:
    return all(k in sd for k in ("input_blocks.0.0.weight", "time_embed.0.weight", "out.2.weight"))


def _wants_v_prediction(
    family: str,
    config: UNetConfig,
    unet_sd: Mapping[str, torch.Tensor],
    keys: Any,
    metadata: Mapping[str, str],
) -> bool:
    # Checkpoints trained for v-prediction often carry an empty marker tensor named "v_pred".
    if "v_pred" in keys:
        return True
    if metadata.get("modelspec.prediction_type", "").lower() in ("v", "v_prediction"):
        return True
    # SD2 768-v checkpoints carry no marker; their late-block norm biases are noticeably spread
    # while the 512 eps model's stay near zero (not applied to inpainting models).
    if family == "sd2" and config.in_channels == 4:
        bias = unet_sd.get("output_blocks.11.1.transformer_blocks.0.norm1.bias")
        if bias is not None and not bias.is_meta and float(torch.std(bias.float(), unbiased=False)) > 0.09:
            return True
    return False


def detect_family(
    unet_sd: Mapping[str, torch.Tensor],
    name: str,
    all_keys: Any = (),
    metadata: Mapping[str, str] | None = None,
) -> ModelFamily:
    """Tell SD1 / SD2 / SD2.1 unCLIP / SDXL / SDXL-refiner apart from un-prefixed UNet weights.

    - An ADM input (``label_emb``) means SD2.1 unCLIP (family ``sd2``) when the file carries
      unCLIP parts (the noise augmentor's tables, the image encoder) or the full-size widths;
      otherwise SDXL. The refiner's ADM holds the pooled text embedding (as wide as its
      context) plus five embedded scalars; the base holds six.
    - Otherwise linear transformer projections mean SD2 (OpenCLIP-H), convolutions SD1 (CLIP-L).
    ``all_keys`` (the whole file's keys) lets text-encoder layout and a ``v_pred`` marker count.
    """
    metadata = metadata or {}
    if is_mmdit(unet_sd):
        return _mmdit_family(unet_sd, name)
    if is_flux_state_dict(unet_sd):
        # Flux dev / schnell (told by guidance_in); the config is read from the shapes.
        return ModelFamily(name="flux", prediction="flow", unet_config=flux_config(unet_sd))
    if not _is_unet(unet_sd):
        raise CheckpointError(
            f"{name} is not a Stable Diffusion model this server knows: no UNet weights found"
        )
    try:
        config = config_from_state_dict(unet_sd)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{name} has an unrecognised UNet layout ({e})") from None
    keys = set(all_keys) | set(unet_sd)
    if _is_unclip(config, keys):
        # Its ADM input is a noise-augmented CLIP image embedding, not SDXL's size conditioning.
        adm = config.adm_in_channels or 0
        if not config.use_linear_in_transformer or config.context_dim is None or adm % 2:
            raise CheckpointError(
                f"{name} carries unCLIP weights but its UNet fits no SD2.1 unCLIP layout "
                f"(ADM input of {adm} features, {'linear' if config.use_linear_in_transformer else 'convolution'} "
                "transformer projections)"
            )
        family = "sd2"
    elif config.adm_in_channels is not None:
        if config.context_dim is None:
            raise CheckpointError(
                f"{name} is not a Stable Diffusion model this server knows: no cross-attention"
            )
        refiner_text = any(k.startswith("conditioner.embedders.0.model.") for k in keys) and not any(
            k.startswith("conditioner.embedders.1.") for k in keys
        )
        if refiner_text or config.adm_in_channels == config.context_dim + 5 * ADM_SCALAR_DIM:
            family = "sdxl_refiner"
        elif config.adm_in_channels > 6 * ADM_SCALAR_DIM:
            family = "sdxl"
        else:
            raise CheckpointError(
                f"{name} is not a Stable Diffusion model this server knows "
                f"(ADM input of {config.adm_in_channels} features fits no SDXL layout)"
            )
    elif config.context_dim is None:
        raise CheckpointError(f"{name} is not a Stable Diffusion model this server knows: no cross-attention")
    else:
        family = "sd2" if config.use_linear_in_transformer else "sd1"
    prediction = "v" if _wants_v_prediction(family, config, unet_sd, keys, metadata) else "eps"
    return ModelFamily(name=family, prediction=prediction, unet_config=config)


def _mmdit_family(sd: Mapping[str, torch.Tensor], name: str) -> ModelFamily:
    """SD3 medium / SD3.5 large / SD3.5 medium: one family, told apart by the config's sizes."""
    try:
        config = mmdit_config(sd)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{name} has an unrecognised SD3 MMDiT layout ({e})") from None
    if config.in_channels != 16 or config.hidden_size % config.num_heads:
        raise CheckpointError(
            f"{name} is not an SD3 model this server knows ({config.in_channels} latent channels, "
            f"{config.hidden_size} wide)"
        )
    return ModelFamily(name="sd3", prediction="flow", unet_config=config)


def build_network(
    sd: Mapping[str, torch.Tensor], family: ModelFamily, dtype: torch.dtype | None = None, weight_dtype: str = "default"
) -> UNetModel | MMDiT | FluxTransformer:
    """The family's diffusion network holding these (un-prefixed) weights."""
    if isinstance(family.unet_config, FluxConfig):
        from .flux_family import load_flux_file

        return load_flux_file(sd, dtype, weight_dtype)
    if isinstance(family.unet_config, MMDiTConfig):
        return load_mmdit(sd, family.unet_config, dtype, weight_dtype)
    return build_unet(sd, family.unet_config, dtype)


def _is_unclip(config: UNetConfig, keys: Any) -> bool:
    """An SD2.1 unCLIP UNet: an ADM input, and the file's unCLIP parts or the full-size widths."""
    if config.adm_in_channels is None:
        return False
    if any(k.startswith(UNCLIP_PREFIXES) for k in keys):
        return True
    return config.context_dim == _SD2_CONTEXT and config.adm_in_channels in _UNCLIP_ADM_WIDTHS


def _build(name: str, builder: Callable[[], Any]) -> Any:
    try:
        return _realign(builder())
    except (RuntimeError, KeyError, ValueError, IndexError) as e:
        # load_state_dict lists missing/unexpected keys and shape mismatches; keep it short.
        detail = str(e).splitlines()[0][:300]
        raise CheckpointError(f"{name} has weights that do not fit the detected model ({detail})") from None


def load_checkpoint(
    path: Path, check_interrupt: CheckInterrupt | None = None, dtype: torch.dtype | None = None
) -> Checkpoint:
    """Diffusion network, VAE and raw text-encoder weights of a single-file SD1 / SD2 / SDXL / SD3 checkpoint."""
    sd, metadata = load_state_dict(path, check_interrupt)
    if not sd:
        raise CheckpointError(f"{path.name} holds no tensors")
    unet_sd = strip_prefix(sd, UNET_PREFIX)
    family = detect_family(unet_sd, path.name, sd.keys(), metadata)
    unet = _build(path.name, lambda: build_network(unet_sd, family, dtype))
    vae: VAE | None = None
    for prefix in VAE_PREFIXES:
        vae_sd = strip_prefix(sd, prefix)
        if vae_sd:
            vae = VAE(_build(path.name, lambda vae_sd=vae_sd: build_vae(vae_sd, dtype)))
            break
    text = {k: v for k, v in sd.items() if k.startswith(TEXT_ENCODER_PREFIXES)}
    return Checkpoint(family=family, unet=unet, vae=vae, text_encoder_weights=text, metadata=metadata)


def load_diffusion_model(
    path: Path,
    check_interrupt: CheckInterrupt | None = None,
    dtype: torch.dtype | None = None,
    weight_dtype: str = "default",
) -> tuple[ModelFamily, UNetModel | MMDiT | FluxTransformer]:
    """A standalone UNet / MMDiT / Flux file (``diffusion_models/``), with or without the checkpoint
    prefix (``weight_dtype``: UNETLoader's storage choice, fp8 kept for Flux and SD3)."""
    sd, metadata = load_state_dict(path, check_interrupt)
    unet_sd = strip_prefix(sd, UNET_PREFIX) or sd
    if "conv_in.weight" in unet_sd and "input_blocks.0.0.weight" not in unet_sd:
        raise CheckpointError(f"{path.name} uses the diffusers UNet layout, which is not supported yet")
    family = detect_family(unet_sd, path.name, sd.keys(), metadata)
    return family, _build(path.name, lambda: build_network(unet_sd, family, dtype, weight_dtype))


def load_vae(
    path: Path, check_interrupt: CheckInterrupt | None = None, dtype: torch.dtype | None = None
) -> VAE:
    """A standalone VAE file (``vae/``) in the single-file or the diffusers layout."""
    sd, _ = load_state_dict(path, check_interrupt)
    return vae_from_state_dict(sd, path.name, dtype)


def vae_from_state_dict(sd: Mapping[str, torch.Tensor], name: str, dtype: torch.dtype | None = None) -> VAE:
    """A VAE from its weights (a checkpoint's ``first_stage_model.`` prefix or none, either
    layout); ``name`` is what errors call them."""
    for prefix in VAE_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd = strip_prefix(sd, prefix)
            break
    if "encoder.conv_in.weight" not in sd or "decoder.conv_in.weight" not in sd:
        raise CheckpointError(f"{name} is not a VAE this server knows: no autoencoder weights found")
    return VAE(_build(name, lambda: build_vae(sd, dtype)))
