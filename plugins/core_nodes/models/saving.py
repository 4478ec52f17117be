"""What the save nodes write: a MODEL / CLIP / VAE's weights, patches merged in, in the reference's
single-file layouts, and the reference's safetensors metadata.

* a checkpoint (``CheckpointSave``, ``ModelSave`` without CLIP and VAE): the UNet under
  ``model.diffusion_model.``, the VAE under ``first_stage_model.``, the text encoders where the
  family's original checkpoints keep them: SD1's CLIP-L under ``cond_stage_model.transformer.``
  (transformers layout), SD2's OpenCLIP-H under ``cond_stage_model.model.`` and SDXL's
  OpenCLIP-G under ``conditioner.embedders.1.model.`` (``.0.`` for the refiner) in the OpenCLIP
  layout (fused ``in_proj`` q/k/v, ``text_projection`` as ``x @ P``), SDXL's CLIP-L under
  ``conditioner.embedders.0.transformer.`` with its ``position_ids``. A v-prediction model gets the
  empty ``v_pred`` marker tensor (``ztsnr`` too when its schedule is zero-terminal).
* a CLIP (``CLIPSave``): one file per encoder, in the transformers layout without a prefix
  (``text_model.encoder.layers...``, ``text_projection.weight``).
* a VAE (``VAESave``): the autoencoder's own keys (``encoder.`` / ``decoder.`` ...).

Metadata: ``prompt`` (the prompt as JSON, ``""`` without one) and each ``extra_pnginfo`` entry as
JSON, unless metadata is disabled; a checkpoint also gets ``modelspec.predict_key`` and, for
SDXL, the ``modelspec.*`` architecture keys the reference writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from plugins.core_nodes.models.clip_objects import split_key
from plugins.core_nodes.models.model_base import SDXL, ModelType, SDXL_instructpix2pix, SDXLRefiner
from plugins.core_nodes.models.weight_patches import calculate_weight

UNET_KEY = "diffusion_model."
CHECKPOINT_UNET = "model.diffusion_model."
CHECKPOINT_VAE = "first_stage_model."
# Per text-encoder family: encoder name -> (checkpoint prefix, OpenCLIP layout?).
CHECKPOINT_TEXT: dict[str, dict[str, tuple[str, bool]]] = {
    "sd1": {"l": ("cond_stage_model.transformer.", False)},
    "sd2": {"h": ("cond_stage_model.model.", True)},
    "sdxl": {"l": ("conditioner.embedders.0.transformer.", False), "g": ("conditioner.embedders.1.model.", True)},
    "sdxl_refiner": {"g": ("conditioner.embedders.0.model.", True)},
}
_POSITIONS = 77


class SaveError(ValueError):
    """Something that cannot be saved (a value this server cannot read weights from)."""


# --- weights with their patches ----------------------------------------------------------------


def _merged(weight: torch.Tensor, entries: Any, key: str) -> torch.Tensor:
    if not entries:
        return weight.detach()
    out = calculate_weight(entries, weight.detach().float().clone(), key)
    return out.to(weight.dtype)


def unet_weights(model: Any) -> dict[str, torch.Tensor]:
    """A MODEL's UNet weights by its own names (``input_blocks.0.0.weight``), patches merged."""
    state = getattr(model, "model_state_dict", None)
    if not callable(state):
        raise SaveError(f"cannot read the weights of a MODEL of type {type(model).__name__}")
    patches: Mapping[str, Any] = getattr(model, "patches", {}) or {}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, weight in state(UNET_KEY).items():
            out[key[len(UNET_KEY) :]] = _merged(weight, patches.get(key), key).cpu()
    if not out:
        raise SaveError("the MODEL has no diffusion model weights to save")
    return out


def text_weights(clip: Any) -> dict[str, dict[str, torch.Tensor]]:
    """A CLIP's weights per encoder name (``l`` / ``h`` / ``g``) by our parameter names
    (transformers layout without ``text_model.``), patches merged."""
    patcher = getattr(clip, "patcher", None)
    stack = getattr(clip, "stack", None)
    if patcher is None or stack is None:
        raise SaveError(f"cannot read the weights of a CLIP of type {type(clip).__name__}")
    # Patches may name text_projection either way (beside or inside text_model): gather by param.
    entries: dict[tuple[str, str], list[Any]] = {}
    for key, found in patcher.patches.items():
        where = split_key(key)
        if where is not None and found:
            entries.setdefault(where, []).extend(found)
    out: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, encoder in stack.encoders.items():
            weights = {}
            for param, weight in encoder.model.state_dict().items():
                key = f"clip_{name}.transformer.text_model.{param}"
                weights[param] = _merged(weight, entries.get((name, param)), key).cpu()
            out[name] = weights
    return out


def text_family(clip: Any) -> str:
    return str(clip.stack.family)


# --- layouts -----------------------------------------------------------------------------------

_TO_OPENCLIP = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def to_openclip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (transformers) text-tower layout -> OpenCLIP's: q/k/v fused into ``attn.in_proj_*``,
    ``text_projection`` stored as the matrix OpenCLIP multiplies by (the Linear weight transposed)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.startswith("encoder.layers."):
            index, rest = key[len("encoder.layers.") :].split(".", 1)
            prefix = f"transformer.resblocks.{index}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, kind = rest.split(".")
                fused.setdefault(f"{prefix}attn.in_proj_{kind}", {})[proj] = value
                continue
            module, param = rest.rsplit(".", 1)
            if module not in _TO_OPENCLIP:
                raise SaveError(f"no OpenCLIP name for text encoder weight {key}")
            out[f"{prefix}{_TO_OPENCLIP[module]}.{param}"] = value
        elif key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.split(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        else:
            raise SaveError(f"no OpenCLIP name for text encoder weight {key}")
    for key, parts in fused.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise SaveError(f"{key}: the text encoder lacks one of q / k / v")
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


def _position_ids() -> torch.Tensor:
    return torch.arange(_POSITIONS).expand((1, -1)).contiguous()


def checkpoint_text(clip: Any) -> dict[str, torch.Tensor]:
    """A CLIP's weights as a checkpoint of its family holds them (see the module docstring)."""
    family = text_family(clip)
    layout = CHECKPOINT_TEXT.get(family)
    if layout is None:
        raise SaveError(f"saving the text encoders of a {family} model is not supported")
    out: dict[str, torch.Tensor] = {}
    for name, weights in text_weights(clip).items():
        prefix, openclip = layout[name]
        if openclip:
            out.update({prefix + k: v for k, v in to_openclip(weights).items()})
            continue
        out.update({f"{prefix}text_model.{k}": v for k, v in weights.items() if not k.startswith("text_projection.")})
        if family == "sdxl":
            out[f"{prefix}text_model.embeddings.position_ids"] = _position_ids()
    return out


def clip_files(clip: Any) -> dict[str, dict[str, torch.Tensor]]:
    """CLIPSave's files: per reference member name (``clip_l`` ...), its weights in the
    transformers layout (``text_model.*``, ``text_projection.weight``)."""
    files: dict[str, dict[str, torch.Tensor]] = {}
    for name, weights in text_weights(clip).items():
        sd = {}
        for key, value in weights.items():
            sd[key if key.startswith("text_projection.") else f"text_model.{key}"] = value
        files[f"clip_{name}"] = sd
    return files


# --- checkpoints and metadata ------------------------------------------------------------------


def _family_name(model: Any) -> str:
    family = getattr(model, "family", None)
    return str(getattr(family, "name", "")) or "unknown"


def _model_type(model: Any) -> Any:
    return getattr(getattr(model, "model", None), "model_type", None)


def _sampling(model: Any) -> Any:
    get = getattr(model, "get_model_object", None)
    try:
        return get("model_sampling") if callable(get) else None
    except AttributeError:
        return None


def checkpoint_state_dict(model: Any, clip: Any = None, vae: Any = None) -> dict[str, torch.Tensor]:
    """The whole checkpoint: UNet, then the text encoders and the VAE when given, markers last."""
    sd = {CHECKPOINT_UNET + k: v for k, v in unet_weights(model).items()}
    if clip is not None:
        sd.update(checkpoint_text(clip))
    if vae is not None:
        get_sd = getattr(vae, "get_sd", None)
        if not callable(get_sd):
            raise SaveError(f"cannot read the weights of a VAE of type {type(vae).__name__}")
        sd.update({CHECKPOINT_VAE + k: v.detach().cpu() for k, v in get_sd().items()})
    if _model_type(model) == ModelType.V_PREDICTION:
        sd["v_pred"] = torch.tensor([])
        if getattr(_sampling(model), "zsnr", False):
            sd["ztsnr"] = torch.tensor([])
    return {k: v.contiguous() for k, v in sd.items()}


def file_metadata(prompt: Any, extra_pnginfo: Any, disabled: bool) -> dict[str, str]:
    """``prompt`` and each ``extra_pnginfo`` entry as JSON (nothing when metadata is disabled)."""
    if disabled:
        return {}
    out = {"prompt": json.dumps(prompt) if prompt is not None else ""}
    if isinstance(extra_pnginfo, Mapping):
        out.update({str(k): json.dumps(v) for k, v in extra_pnginfo.items()})
    return out


def checkpoint_metadata(
    model: Any, title: str, prompt: Any, extra_pnginfo: Any, disabled: bool
) -> dict[str, str]:
    """The reference's checkpoint metadata: ``modelspec.*`` for SDXL models (``title`` is the
    file stem and counter), the prediction key, then the prompt and workflow."""
    meta: dict[str, str] = {}
    base = getattr(model, "model", None)
    architecture = None
    if isinstance(base, SDXL_instructpix2pix):
        architecture = "stable-diffusion-xl-v1-edit"
    elif isinstance(base, SDXL):
        architecture = "stable-diffusion-xl-v1-base"
    elif isinstance(base, SDXLRefiner):
        architecture = "stable-diffusion-xl-v1-refiner"
    if architecture is not None:
        meta["modelspec.architecture"] = architecture
        meta["modelspec.sai_model_spec"] = "1.0.0"
        meta["modelspec.implementation"] = "sgm"
        meta["modelspec.title"] = title
    model_type = _model_type(model)
    if model_type == ModelType.EPS:
        meta["modelspec.predict_key"] = "epsilon"
    elif model_type == ModelType.V_PREDICTION:
        meta["modelspec.predict_key"] = "v"
    meta.update(file_metadata(prompt, extra_pnginfo, disabled))
    return meta


def write(path: Any, sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=dict(metadata) if metadata else None)


__all__ = [
    "CHECKPOINT_TEXT",
    "SaveError",
    "checkpoint_metadata",
    "checkpoint_state_dict",
    "checkpoint_text",
    "clip_files",
    "file_metadata",
    "text_weights",
    "to_openclip",
    "unet_weights",
    "write",
]
