"""Model loader nodes: checkpoints, VAEs, LoRAs, text encoders, diffusion models, clip skip.

The nodes resolve names through the models plugin (``kernel.models``) and hand the file paths
to *adapter functions* looked up at execution time in ``plugins.core_nodes.models.adapters``:

============================  ============================================================
``load_checkpoint(path)``      -> ``(MODEL or None, CLIP or None, VAE or None)``
``load_vae(path)``             -> VAE
``load_taesd_vae(encoder, decoder, family)`` -> VAE (VAELoader's ``taesd`` ... ``taef1``)
``load_unet(path, weight_dtype)``  -> MODEL (``weight_dtype``: a UNETLoader choice)
``load_clip(paths, clip_type, device)`` -> CLIP (one path for CLIPLoader, two for Dual)
``apply_lora(model, clip, path, strength_model, strength_clip)`` -> ``(MODEL, CLIP)``; either
                                input may be None (LoraLoaderModelOnly passes ``clip=None``)
============================  ============================================================

The returned objects satisfy ``plugins.core_nodes.contracts``. Until the model stack provides
the adapter module, executing a loader fails with :class:`ModelStackUnavailable`, naming the
missing function; listing the nodes (``/object_info``) works either way.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugins.core_nodes.nodes.common import KernelNode

ADAPTER_MODULE = "plugins.core_nodes.models.adapters"

CLIP_TYPES = [
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
    "flux2",
    "ovis",
    "longcat_image",
    "cogvideox",
    "lens",
    "pixeldit",
    "ideogram4",
    "boogu",
    "krea2",
]
DUAL_CLIP_TYPES = [
    "sdxl",
    "sd3",
    "flux",
    "hunyuan_video",
    "hidream",
    "hunyuan_image",
    "hunyuan_video_15",
    "kandinsky5",
    "kandinsky5_image",
    "ltxv",
    "newbie",
    "ace",
]
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
DEVICES = ["default", "cpu"]
# TAESD-style approximations offered by VAELoader when both halves are in vae_approx/.
_APPROX_VAES = ("taesd", "taesdxl", "taesd3", "taef1")


class ModelStackUnavailable(RuntimeError):
    """The model stack does not provide the adapter function a loader needs."""


def _adapter(name: str) -> Callable[..., Any]:
    """The model-stack adapter function ``name``, or a clear error naming what is missing."""
    try:
        module = importlib.import_module(ADAPTER_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != ADAPTER_MODULE:
            raise  # a real import error inside the model stack must stay visible
        raise ModelStackUnavailable(
            f"model loading is not available: the model stack ({ADAPTER_MODULE}) is not installed"
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ModelStackUnavailable(f"model loading is not available: {ADAPTER_MODULE} has no {name}()")
    return fn


class _Loader(KernelNode):
    CATEGORY = "model/loaders"

    @classmethod
    def names(cls, folder: str) -> list[str]:
        models = cls.KERNEL.models if cls.KERNEL is not None else None
        if models is None:
            return []
        try:
            return list(models.list_names(folder))
        except KeyError:
            return []

    def path(self, folder: str, name: str, what: str = "model file") -> Path:
        """Where ``name`` is installed in ``folder``; ``what`` names the file in the error."""
        models = self.kernel().models
        found = models.get_full_path(folder, name) if models is not None else None
        if found is None:
            raise FileNotFoundError(f"{what} {name!r} not found in {folder}")
        return Path(found)


class CheckpointLoaderSimple(_Loader):
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    DESCRIPTION = "Loads a diffusion model checkpoint with its text encoder and VAE."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (cls.names("checkpoints"),)}}

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any]:
        model, clip, vae = _adapter("load_checkpoint")(self.path("checkpoints", ckpt_name))
        return (model, clip, vae)


class VAELoader(_Loader):
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"

    @classmethod
    def vae_list(cls) -> list[str]:
        names = cls.names("vae")
        approx = cls.names("vae_approx")
        for family in _APPROX_VAES:
            has_encoder = any(n.startswith(f"{family}_encoder.") for n in approx)
            has_decoder = any(n.startswith(f"{family}_decoder.") for n in approx)
            if has_encoder and has_decoder:
                names.append(family)
        names.append("pixel_space")
        return names

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"vae_name": (cls.vae_list(),)}}

    def load_vae(self, vae_name: str) -> tuple[Any]:
        if vae_name == "pixel_space":  # no file: the image itself is the latent
            return (_adapter("load_pixel_space_vae")(),)
        if vae_name in _APPROX_VAES:  # the two halves from vae_approx, with the family's scale
            encoder, decoder = (self._approx_half(vae_name, half) for half in ("encoder", "decoder"))
            return (_adapter("load_taesd_vae")(encoder, decoder, vae_name),)
        return (_adapter("load_vae")(self.path("vae", vae_name)),)

    def _approx_half(self, family: str, half: str) -> Path:
        prefix = f"{family}_{half}."
        name = next((n for n in self.names("vae_approx") if n.startswith(prefix)), None)
        if name is None:
            raise FileNotFoundError(f"VAE {family!r} needs {prefix}safetensors (or .pth) in vae_approx")
        return self.path("vae_approx", name)


class LoraLoader(_Loader):
    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "lora_name": (cls.names("loras"),),
                "strength_model": ("FLOAT", dict(strength)),
                "strength_clip": ("FLOAT", dict(strength)),
            }
        }

    def load_lora(
        self, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float
    ) -> tuple[Any, Any]:
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        path = self.path("loras", lora_name)
        new_model, new_clip = _adapter("apply_lora")(model, clip, path, strength_model, strength_clip)
        return (new_model, new_clip)


class _ModelOnlyLora(_Loader):
    """The model-only form of a LoRA loader (listed before it in the bases): no CLIP in or out,
    the loader's ``load_lora`` run with no CLIP and a zero CLIP strength."""

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"
    load_lora: Callable[..., tuple[Any, Any]]  # the loader's, found after this class in the MRO

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "lora_name": (cls.names("loras"),),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            }
        }

    def load_lora_model_only(self, model: Any, lora_name: str, strength_model: float) -> tuple[Any]:
        return (self.load_lora(model, None, lora_name, strength_model, 0)[0],)


class LoraLoaderModelOnly(_ModelOnlyLora, LoraLoader):
    pass


class CLIPLoader(_Loader):
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"clip_name": (cls.names("text_encoders"),), "type": (list(CLIP_TYPES),)},
            "optional": {"device": (list(DEVICES), {"advanced": True})},
        }

    def load_clip(
        self, clip_name: str, type: str = "stable_diffusion", device: str = "default"
    ) -> tuple[Any]:  # noqa: A002
        path = self.path("text_encoders", clip_name)
        return (_adapter("load_clip")([path], type, device),)


class DualCLIPLoader(_Loader):
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = cls.names("text_encoders")
        return {
            "required": {
                "clip_name1": (list(names),),
                "clip_name2": (list(names),),
                "type": (list(DUAL_CLIP_TYPES),),
            },
            "optional": {"device": (list(DEVICES), {"advanced": True})},
        }

    def load_clip(
        self,
        clip_name1: str,
        clip_name2: str,
        type: str,
        device: str = "default",  # noqa: A002
    ) -> tuple[Any]:
        paths = [self.path("text_encoders", clip_name1), self.path("text_encoders", clip_name2)]
        return (_adapter("load_clip")(paths, type, device),)


class UNETLoader(_Loader):
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "unet_name": (cls.names("diffusion_models"),),
                "weight_dtype": (list(WEIGHT_DTYPES), {"advanced": True}),
            }
        }

    def load_unet(self, unet_name: str, weight_dtype: str) -> tuple[Any]:
        return (_adapter("load_unet")(self.path("diffusion_models", unet_name), weight_dtype),)


class CheckpointLoader(CheckpointLoaderSimple):
    """The original latent-diffusion way: a checkpoint plus its YAML config. The model is still
    recognised from its weights; from the config this server takes what changes the result: a
    ``parameterization: "v"`` model samples as v-prediction, and the text encoder's
    ``cond_stage_config.params.layer_idx`` sets its clip skip (as the reference does)."""

    DEPRECATED = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"config_name": (cls.names("configs"),), "ckpt_name": (cls.names("checkpoints"),)}}

    def load_checkpoint(self, config_name: str, ckpt_name: str) -> tuple[Any, Any, Any]:  # type: ignore[override]
        params = read_ldm_config(self.path("configs", config_name))
        model, clip, vae = super().load_checkpoint(ckpt_name)
        if params.get("parameterization") == "v":
            from plugins.core_nodes.sampling.prediction import make_sampling

            config = getattr(getattr(model, "model", None), "model_config", None)
            model = model.clone()
            model.add_object_patch(
                "model_sampling", make_sampling("v_prediction", dict(getattr(config, "sampling_settings", None) or {}))
            )
        layer_idx = ((params.get("cond_stage_config") or {}).get("params") or {}).get("layer_idx")
        if clip is not None and layer_idx is not None:
            clip = clip.clone()
            clip.clip_layer(int(layer_idx))
        return (model, clip, vae)


def read_ldm_config(path: Path) -> dict[str, Any]:
    """``model.params`` of a latent-diffusion YAML config; a clear error when it has none."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        params = config["model"]["params"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ValueError(f"{path.name} is not a latent-diffusion model config ({type(e).__name__}: {e})") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path.name} is not a latent-diffusion model config (model.params is not a mapping)")
    return params


class DiffusersLoader(_Loader):
    """A model saved by diffusers: a folder under ``models/diffusers`` with ``model_index.json``."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    DEPRECATED = True

    @classmethod
    def folders(cls) -> list[Path]:
        models = cls.KERNEL.models if cls.KERNEL is not None else None
        if models is None:
            return []
        try:
            return [Path(p) for p in models.folder_paths("diffusers")]
        except KeyError:
            return []

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        found: list[str] = []
        for root in cls.folders():
            for where, _dirs, files in os.walk(root, followlinks=True):
                if "model_index.json" in files:
                    found.append(Path(os.path.relpath(where, root)).as_posix())
        return {"required": {"model_path": (sorted(found),)}}

    def load_checkpoint(self, model_path: str, output_vae: bool = True, output_clip: bool = True) -> tuple[Any, Any, Any]:
        from kernel.paths import UnsafePath, safe_join
        from plugins.core_nodes.models.diffusers_format import load_diffusers

        for root in self.folders():
            try:
                folder = safe_join(root, model_path, allow_root=True)
            except UnsafePath:
                continue
            if folder.is_dir():
                model, clip, vae = load_diffusers(folder)
                return (model, clip if output_clip else None, vae if output_vae else None)
        raise FileNotFoundError(f"diffusers model folder {model_path!r} not found in diffusers")


class unCLIPCheckpointLoader(CheckpointLoaderSimple):  # noqa: N801 - the reference's class name
    """A checkpoint and the CLIP vision encoder stored inside it (None when it has none)."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "CLIP_VISION")

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any, Any]:  # type: ignore[override]
        from plugins.core_nodes.models.clip_vision import clip_vision_from_checkpoint

        model, clip, vae = super().load_checkpoint(ckpt_name)
        return (model, clip, vae, clip_vision_from_checkpoint(self.path("checkpoints", ckpt_name)))


NODES: dict[str, tuple[type, str | None]] = {
    "CheckpointLoaderSimple": (CheckpointLoaderSimple, "Load Checkpoint"),
    "VAELoader": (VAELoader, "Load VAE"),
    "LoraLoader": (LoraLoader, "Load LoRA (Model and CLIP)"),
    "LoraLoaderModelOnly": (LoraLoaderModelOnly, "Load LoRA"),
    "CLIPLoader": (CLIPLoader, "Load CLIP"),
    "DualCLIPLoader": (DualCLIPLoader, "Load CLIP (Dual)"),
    "UNETLoader": (UNETLoader, "Load Diffusion Model"),
    "CheckpointLoader": (CheckpointLoader, "Load Checkpoint With Config (DEPRECATED)"),
    "DiffusersLoader": (DiffusersLoader, "Load Diffusers Model (DEPRECATED)"),
    "unCLIPCheckpointLoader": (unCLIPCheckpointLoader, "Load unCLIP Checkpoint"),
}
