"""``comfy.sd``: ComfyUI's model-loading functions over the core nodes' model stack.

Everything here hands back the very objects the core loader nodes do (``plugins.core_nodes.models
.adapters``): a pack's MODEL / CLIP / VAE can go into any core node and the other way round, and
files are cached by the server's model manager like the loader nodes' are.

* ``load_checkpoint_guess_config(ckpt_path, output_vae, output_clip, output_clipvision,
  embedding_directory, output_model, model_options, te_model_options)`` -> ``(model, clip, vae,
  clip_vision)``; an ``output_*`` flag that is False gives None in its place. The CLIP vision
  model is an unCLIP checkpoint's image encoder (None for checkpoints without one).
* ``load_lora_for_models(model, clip, lora, strength_model, strength_clip)`` -> ``(model, clip)``
  for ``lora`` a state dict (what ``comfy.utils.load_torch_file`` returns).
* ``load_diffusion_model(unet_path, model_options)`` (and the older ``load_unet(unet_path,
  dtype)``) -> MODEL.
* ``load_clip(ckpt_paths, embedding_directory, clip_type, model_options)`` -> CLIP, for
  ``CLIPType.STABLE_DIFFUSION`` only: one file (SD1's CLIP-L or SD2's OpenCLIP-H) or two (SDXL's
  pair, in either order). ``CLIPType.SDXL`` is another name for it, for packs that look a type up
  by the DualCLIPLoader's ``"sdxl"``.
* ``VAE(sd=...)`` -> VAE from a state dict (``load_torch_file``'s result); not cached.
* ``load_torch_file`` (from ``comfy.utils``).

``model_options`` / ``te_model_options`` are read as the reference reads them:
``custom_operations`` (a pack's layer classes, e.g. ComfyUI-GGUF's dequantizing ones; see
``plugins.core_nodes.models.operations``) builds the UNet / text encoders from those layers,
which load the weights themselves; ``dtype`` / ``weight_dtype`` store the weights in that dtype
and compute in the server's (through ``comfy.ops.manual_cast`` when no layers are given). A model
loaded with options is built for the caller, not taken from the server's cache. Without options,
weights load at the server's compute dtype on its devices. ``embedding_directory`` is only read
by ``load_text_encoder_state_dicts``: the loaders take textual inversions from the server's
``embeddings`` folders. A missing file is a ``FileNotFoundError`` naming it; a
file this server cannot read is the core loaders' ``CheckpointError`` / ``LoraError``.
``load_style_model(path)`` / ``load_gligen(path)`` give the StyleModelLoader / GLIGENLoader
nodes' values (``StyleModel``, and a patcher over ``comfy.gligen.Gligen``).
``load_checkpoint(config_path, ckpt_path, ...)`` is the deprecated YAML-config form, reading the
family from the file instead; ``isinstance(clip, CLIP)`` holds for the CLIP values.
Anything else of the reference's module (``load_state_dict_guess_config``...) is an
``AttributeError`` saying the compatibility layer does not provide it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from comfy.utils import load_torch_file

log = logging.getLogger("comfykernel.compat")


class CLIPType(enum.Enum):
    """The reference's text-encoder types (its numbering); only STABLE_DIFFUSION loads here."""

    STABLE_DIFFUSION = 1
    # Not a type of its own in the reference: its DualCLIPLoader loads "sdxl" as STABLE_DIFFUSION.
    SDXL = 1
    STABLE_CASCADE = 2
    SD3 = 3
    STABLE_AUDIO = 4
    HUNYUAN_DIT = 5
    FLUX = 6
    MOCHI = 7
    LTXV = 8
    HUNYUAN_VIDEO = 9
    PIXART = 10
    COSMOS = 11
    LUMINA2 = 12
    WAN = 13
    HIDREAM = 14
    CHROMA = 15
    ACE = 16
    OMNIGEN2 = 17
    QWEN_IMAGE = 18
    HUNYUAN_IMAGE = 19
    HUNYUAN_VIDEO_15 = 20
    OVIS = 21
    KANDINSKY5 = 22
    KANDINSKY5_IMAGE = 23
    NEWBIE = 24
    FLUX2 = 25


# Number of files -> the core CLIPLoader / DualCLIPLoader type that loads them.
_SD_CLIP_TYPES = {1: "stable_diffusion", 2: "sdxl"}

__all__ = [
    "CLIP",
    "VAE",
    "CLIPType",
    "load_checkpoint_guess_config",
    "StyleModel",
    "load_checkpoint",
    "load_clip",
    "load_diffusion_model",
    "load_diffusion_model_state_dict",
    "load_gligen",
    "load_lora_for_models",
    "load_style_model",
    "load_text_encoder_state_dicts",
    "load_torch_file",
    "load_unet",
    "load_unet_state_dict",
]


def _adapters() -> Any:
    # Imported on first use: it pulls in torch, which a pack importing comfy.sd must not pay for.
    from plugins.core_nodes.models import adapters

    return adapters


def _model_file(path: str | Path, caller: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"comfy.sd.{caller}: no model file at {str(file)!r}")
    return file


def _storage_dtype(model_options: Mapping[str, Any] | None) -> Any:
    """The weight dtype ``model_options`` asks for (``dtype``, or ``weight_dtype``), or None."""
    if not model_options:
        return None
    import torch

    for key in ("dtype", "weight_dtype"):
        value = model_options.get(key)
        if isinstance(value, torch.dtype):
            return value
    return None


def _wants_own_build(model_options: Mapping[str, Any] | None) -> bool:
    """True when ``model_options`` change how a model is built (so the server's cache is not used)."""
    return bool(model_options) and (
        model_options.get("custom_operations") is not None or _storage_dtype(model_options) is not None
    )


def _operations(model_options: Mapping[str, Any] | None, file_dtype: Any) -> tuple[Any, Any]:
    """``(layer classes, weight dtype)`` for a build: the caller's layers if any; else, when the
    weights are to be stored in another dtype than they come in, the reference's casting layers."""
    from plugins.core_nodes.models.operations import custom_operations

    ops = custom_operations(model_options)
    storage = _storage_dtype(model_options)
    if ops is None and storage is not None and storage != file_dtype:
        import comfy.ops

        ops = comfy.ops.manual_cast
    return ops, storage


def load_checkpoint_guess_config(
    ckpt_path: str | Path,
    output_vae: bool = True,
    output_clip: bool = True,
    output_clipvision: bool = False,
    embedding_directory: str | None = None,
    output_model: bool = True,
    model_options: Mapping[str, Any] | None = None,
    te_model_options: Mapping[str, Any] | None = None,
) -> tuple[Any, Any, Any, Any]:
    """``(MODEL, CLIP, VAE, CLIP vision)`` of a single-file checkpoint, None where not asked for
    (the CLIP vision model is an unCLIP checkpoint's image encoder, None for other checkpoints)."""
    path = _model_file(ckpt_path, "load_checkpoint_guess_config")
    if _wants_own_build(model_options) or _wants_own_build(te_model_options):
        model, clip, vae = _checkpoint_with_options(
            path, output_model, output_clip, output_vae, embedding_directory, model_options, te_model_options
        )
    else:
        model, clip, vae = _adapters().load_checkpoint(path)
    return (
        model if output_model else None,
        clip if output_clip else None,
        vae if output_vae else None,
        _checkpoint_clip_vision(path) if output_clipvision else None,
    )


def _checkpoint_clip_vision(path: Path) -> Any:
    from plugins.core_nodes.models.clip_vision import clip_vision_from_checkpoint

    return clip_vision_from_checkpoint(path)


def load_lora_for_models(
    model: Any, clip: Any, lora: Mapping[str, Any], strength_model: float, strength_clip: float
) -> tuple[Any, Any]:
    """New MODEL / CLIP with the LoRA state dict ``lora`` applied; the inputs stay unchanged.

    Like the reference, the results are always new objects (clones where the LoRA changes
    nothing, so a pack may set ``clip_layer`` or ``model_options`` on them without touching its
    inputs), and a LoRA that fits nothing is logged, not an error.
    """
    if not isinstance(lora, Mapping):
        raise TypeError(
            "comfy.sd.load_lora_for_models takes the LoRA's state dict "
            f"(comfy.utils.load_torch_file(path)), not {type(lora).__name__}"
        )
    from plugins.core_nodes.models.lora import LoraError

    try:
        new_model, new_clip = _adapters().apply_lora_state_dict(
            model, clip, lora, strength_model, strength_clip, name="given to load_lora_for_models"
        )
    except LoraError as e:
        log.warning("comfy.sd.load_lora_for_models: %s; nothing was applied", e)
        new_model, new_clip = model, clip
    return _fresh(new_model, model), _fresh(new_clip, clip)


def _fresh(result: Any, given: Any) -> Any:
    if result is given and hasattr(given, "clone"):
        return given.clone()
    return result


def _checkpoint_with_options(
    path: Path,
    output_model: bool,
    output_clip: bool,
    output_vae: bool,
    embedding_directory: str | Sequence[str] | None,
    model_options: Mapping[str, Any] | None,
    te_model_options: Mapping[str, Any] | None,
) -> tuple[Any, Any, Any]:
    """A checkpoint's parts built for this caller (not cached): the UNet and the text encoders
    with the layers / dtypes their options ask for, the VAE as the server builds it."""
    from plugins.core_nodes.models import checkpoint as ckpt

    sd, metadata = load_torch_file(str(path), return_metadata=True)
    model = clip = vae = None
    if output_model:
        unet_sd = ckpt.strip_prefix(sd, ckpt.UNET_PREFIX)
        model = _diffusion_model(unet_sd, model_options, metadata, sd.keys(), path.name)
    if output_clip:
        text = {k: v for k, v in sd.items() if k.startswith(ckpt.TEXT_ENCODER_PREFIXES)}
        if text:
            clip = _text_encoder(text, None, te_model_options, path.name, embedding_directory)
    if output_vae and any(k.startswith(ckpt.VAE_PREFIXES) for k in sd):
        vae = VAE(sd=sd)
    return model, clip, vae


def load_diffusion_model(unet_path: str | Path, model_options: Mapping[str, Any] | None = None) -> Any:
    """MODEL from a standalone UNet file (``diffusion_models/``)."""
    path = _model_file(unet_path, "load_diffusion_model")
    if _wants_own_build(model_options):
        sd, metadata = load_torch_file(str(path), return_metadata=True)
        return load_diffusion_model_state_dict(sd, model_options, metadata)
    return _adapters().load_unet(path)


def load_unet(unet_path: str | Path, dtype: Any = None) -> Any:
    """The reference's older name for :func:`load_diffusion_model` (``dtype``: the weights')."""
    return load_diffusion_model(_model_file(unet_path, "load_unet"), {"dtype": dtype} if dtype is not None else None)


def _core_clip_type(clip_type: Any, count: int) -> str:
    try:
        member = CLIPType(clip_type.value if isinstance(clip_type, enum.Enum) else clip_type)
    except ValueError:
        raise ValueError(f"comfy.sd.load_clip: {clip_type!r} is not a CLIPType") from None
    if member is not CLIPType.STABLE_DIFFUSION:
        raise ValueError(
            f"comfy.sd.load_clip: CLIPType.{member.name} text encoders are not supported by "
            "comfykernel; only CLIPType.STABLE_DIFFUSION (one SD1/SD2 file or SDXL's two files)"
        )
    core = _SD_CLIP_TYPES.get(count)
    if core is None:
        raise ValueError(f"comfy.sd.load_clip: CLIPType.STABLE_DIFFUSION takes one or two files, not {count}")
    return core


def load_clip(
    ckpt_paths: Sequence[str | Path],
    embedding_directory: str | None = None,
    clip_type: CLIPType = CLIPType.STABLE_DIFFUSION,
    model_options: Mapping[str, Any] | None = None,
) -> Any:
    """CLIP from standalone text-encoder files (``text_encoders/``)."""
    if isinstance(ckpt_paths, str | Path):
        ckpt_paths = [ckpt_paths]
    core_type = _core_clip_type(clip_type, len(ckpt_paths))
    paths = [_model_file(p, "load_clip") for p in ckpt_paths]
    if _wants_own_build(model_options):
        files = [load_torch_file(str(p)) for p in paths]
        return _text_encoder(None, files, model_options, "load_clip", embedding_directory)
    return _adapters().load_clip(paths, core_type)


def _diffusion_model(
    unet_sd: Mapping[str, Any],
    model_options: Mapping[str, Any] | None,
    metadata: Any,
    all_keys: Any,
    name: str,
) -> Any:
    """MODEL from un-prefixed UNet weights, built with the layers / dtype ``model_options`` ask for."""
    from plugins.core_nodes.models import checkpoint as ckpt
    from plugins.core_nodes.models.unet import build_unet

    meta = metadata if isinstance(metadata, Mapping) else None
    family = ckpt.detect_family(unet_sd, name, all_keys, meta)
    first = unet_sd.get("input_blocks.0.0.weight")
    ops, storage = _operations(model_options, getattr(first, "dtype", None))
    try:
        unet = build_unet(unet_sd, family.unet_config, None, operations=ops, weight_dtype=storage)
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as e:
        raise ckpt.CheckpointError(f"{name} does not fit the detected model ({str(e).splitlines()[0][:300]})") from None
    return _adapters().DiffusionModel(unet, family)


def load_diffusion_model_state_dict(
    sd: Mapping[str, Any], model_options: Mapping[str, Any] | None = None, metadata: Any = None
) -> Any:
    """MODEL from a UNet state dict (``model.diffusion_model.`` prefix or none; the ldm layout or
    a known diffusers layout). Not cached, like the reference's; errors are ``CheckpointError``.

    ``model_options["custom_operations"]`` builds the network from those layer classes, which
    are handed the state dict's tensors as they are (ComfyUI-GGUF's quantized ones included)."""
    if not isinstance(sd, Mapping):
        raise TypeError("comfy.sd.load_diffusion_model_state_dict needs a state dict")
    from plugins.core_nodes.models import checkpoint as ckpt

    unet_sd = ckpt.strip_prefix(sd, ckpt.UNET_PREFIX) or dict(sd)
    if "conv_in.weight" in unet_sd and "input_blocks.0.0.weight" not in unet_sd:
        import comfy.diffusers_convert

        try:
            unet_sd = comfy.diffusers_convert.convert_unet_state_dict(unet_sd)
        except ValueError as e:
            raise ckpt.CheckpointError(f"the UNet state dict given to load_diffusion_model_state_dict: {e}") from None
    name = "the UNet state dict given to load_diffusion_model_state_dict"
    return _diffusion_model(unet_sd, model_options, metadata, unet_sd.keys(), name)


def load_unet_state_dict(sd: Mapping[str, Any], dtype: Any = None) -> Any:
    """The reference's older name for :func:`load_diffusion_model_state_dict` (``dtype``: the weights')."""
    return load_diffusion_model_state_dict(sd, {"dtype": dtype} if dtype is not None else None)


def _style_model_class() -> type:
    from plugins.core_nodes.models.style_model import StyleModel as CoreStyleModel

    return CoreStyleModel


class _StyleModelType(type):
    """``isinstance(value, comfy.sd.StyleModel)`` holds for the StyleModelLoader node's values too."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return type.__instancecheck__(cls, obj) or (cls is StyleModel and isinstance(obj, _style_model_class()))


class StyleModel(metaclass=_StyleModelType):
    """A style model (T2I style adapter, Flux Redux): CLIP vision output -> extra conditioning.

    Around a network (an ``nn.Module``) it is the STYLE_MODEL value the loader node gives, run on
    the server's compute device; around any other callable, ``get_cond`` just calls it on the
    vision output's ``last_hidden_state``.
    """

    def __init__(self, model: Any, device: Any = "cpu") -> None:
        self.model = model

    def get_cond(self, input: Any) -> Any:  # noqa: A002 - the reference's parameter name
        import torch

        if isinstance(self.model, torch.nn.Module):
            return _style_model_class().get_cond(self, input)
        return self.model(input.last_hidden_state)


def load_style_model(ckpt_path: str | Path) -> Any:
    """The StyleModelLoader node's STYLE_MODEL for a file (T2I style adapter or Flux Redux),
    cached by the model manager; a file of another kind is a ``StyleModelError`` naming it."""
    from plugins.core_nodes.models.style_model import load_style_model as core_load_style_model

    return core_load_style_model(_model_file(ckpt_path, "load_style_model"))


def load_gligen(ckpt_path: str | Path) -> Any:
    """The GLIGENLoader node's value for a file: a ``ModelPatcher`` whose ``.model`` is the
    ``comfy.gligen.Gligen`` network (cached by the model manager)."""
    from plugins.core_nodes.models.gligen import load_gligen_file

    return load_gligen_file(_model_file(ckpt_path, "load_gligen"))


class _VAEType(type):
    """``isinstance(vae, comfy.sd.VAE)`` holds for the VAEs the server's loaders give too."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        return cls is VAE and isinstance(obj, _adapters().Autoencoder)


class VAE(metaclass=_VAEType):
    """The reference's ``VAE(sd=...)``: a VAE from a state dict (``load_torch_file``'s result), in
    the single-file or the diffusers layout, with or without the checkpoint's prefix.

    A class, because packs subclass it (with their own ``__init__``) and test ``isinstance``;
    ``VAE(sd=...)`` itself gives the server's VAE object, as the loaders do.
    """

    def __new__(
        cls,
        sd: Mapping[str, Any] | None = None,
        device: Any = None,
        config: Any = None,
        dtype: Any = None,
        metadata: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if cls is not VAE:
            return super().__new__(cls)
        if not isinstance(sd, Mapping):
            raise TypeError("comfy.sd.VAE needs the VAE's state dict: comfy.sd.VAE(sd=load_torch_file(path))")
        return _adapters().vae_from_state_dict(sd, "comfy.sd.VAE(sd=...)")


def _text_encoder_width(sd: Mapping[str, Any]) -> int:
    for key, value in sd.items():
        if key.endswith(("token_embedding.weight", "token_embedding")):
            return int(value.shape[-1])
    return 0


def load_text_encoder_state_dicts(
    state_dicts: Sequence[Mapping[str, Any]] = (),
    embedding_directory: str | Sequence[str] | None = None,
    clip_type: CLIPType = CLIPType.STABLE_DIFFUSION,
    model_options: Mapping[str, Any] | None = None,
) -> Any:
    """CLIP from text-encoder state dicts already read (``load_clip`` without the files): one
    (CLIP-L, or OpenCLIP-H told by its width) or SDXL's two, in either order. Textual inversions
    are looked up in ``embedding_directory``; ``model_options`` as in the module doc (a pack's
    ``custom_operations`` build the encoders from its layers); the result is not cached."""
    dicts = [dict(sd) for sd in state_dicts]
    _core_clip_type(clip_type, len(dicts))
    return _text_encoder(None, dicts, model_options, "load_text_encoder_state_dicts", embedding_directory)


def _text_encoder(
    checkpoint_sd: Mapping[str, Any] | None,
    files: Sequence[Mapping[str, Any]] | None,
    model_options: Mapping[str, Any] | None,
    name: str,
    embedding_directory: str | Sequence[str] | None = None,
) -> Any:
    """CLIP built for a caller: from a checkpoint's text-encoder weights (``checkpoint_sd``) or
    from standalone encoder files (``files``), with the layers / dtype ``model_options`` ask for."""
    from plugins.core_nodes.models import checkpoint as ckpt
    from plugins.core_nodes.models.text_encoder import stack_from_encoder_files, stack_from_state_dict

    embeddings = None
    if embedding_directory:
        import comfy.sd1_clip

        def embeddings(name: str, key: str, size: int) -> Any:
            return comfy.sd1_clip.load_embed(name, embedding_directory, size, key)

    weights = checkpoint_sd if checkpoint_sd is not None else {k: v for f in files or () for k, v in f.items()}
    first = next((v for k, v in weights.items() if k.endswith("token_embedding.weight")), None)
    ops, storage = _operations(model_options, getattr(first, "dtype", None))
    try:
        if checkpoint_sd is not None:
            stack = stack_from_state_dict(checkpoint_sd, embeddings=embeddings, operations=ops, weight_dtype=storage)
        else:
            dicts = [dict(f) for f in files or ()]
            if len(dicts) == 2:
                # CLIP-L is the narrower of SDXL's pair, whichever slot it came in.
                dicts.sort(key=_text_encoder_width)
                roles: tuple[str, ...] = ("l", "g")
            else:
                roles = ("h",) if _text_encoder_width(dicts[0]) == 1024 else ("l",)
            stack = stack_from_encoder_files(
                dict(zip(roles, dicts, strict=True)), embeddings=embeddings, operations=ops, weight_dtype=storage
            )
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ckpt.CheckpointError(f"{name}: not text encoders this server knows ({e})") from None
    return _adapters().TextEncoder(stack)


def load_checkpoint(
    config_path: str | Path | None = None,
    ckpt_path: str | Path | None = None,
    output_vae: bool = True,
    output_clip: bool = True,
    embedding_directory: str | None = None,
    state_dict: Any = None,
    config: Any = None,
) -> tuple[Any, Any, Any]:
    """The reference's deprecated loader with a YAML config: ``(MODEL, CLIP, VAE)``.

    The model family is read from the checkpoint itself, as ``load_checkpoint_guess_config``
    does, so ``config_path`` / ``config`` are not needed and not read.
    """
    if ckpt_path is None:
        raise TypeError("comfy.sd.load_checkpoint needs ckpt_path")
    model, clip, vae, _ = load_checkpoint_guess_config(
        ckpt_path, output_vae=output_vae, output_clip=output_clip, embedding_directory=embedding_directory
    )
    return model, clip, vae


class _CLIPType(type):
    """``isinstance(clip, comfy.sd.CLIP)`` holds for the CLIP values the server's loaders give."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        return cls is CLIP and isinstance(obj, _adapters().TextEncoder)


class CLIP(metaclass=_CLIPType):
    """The reference's CLIP class, for annotations, ``isinstance`` checks and subclasses.

    Building one from a ``ClipTarget`` (``CLIP(target)``) is not supported: text encoders load
    through :func:`load_clip`, :func:`load_text_encoder_state_dicts` or the checkpoint loaders.
    ``CLIP(no_init=True)`` gives an empty object, as in the reference.
    """

    def __new__(cls, target: Any = None, embedding_directory: Any = None, no_init: bool = False, *args: Any, **kwargs: Any) -> Any:
        if cls is not CLIP or no_init:
            return super().__new__(cls)
        raise NotImplementedError(
            "comfy.sd.CLIP(target): building text encoders from a ClipTarget is not supported by "
            "comfykernel; load them with comfy.sd.load_clip or load_text_encoder_state_dicts"
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        return None


def __getattr__(name: str) -> Any:
    raise AttributeError(f"comfy.sd.{name} is not provided by comfykernel's compatibility layer")
