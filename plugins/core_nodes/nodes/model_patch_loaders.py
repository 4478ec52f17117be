"""Model patch nodes (``comfy_extras.nodes_model_patch``): ModelPatchLoader and the nodes that
attach a MODEL_PATCH to a MODEL — the Qwen-Image DiffSynth and Z-Image Fun ControlNets, the USO
style reference (Flux) and SUPIR.

Loading tells the patch's kind from its keys (:mod:`plugins.core_nodes.models.model_patch`).
Each apply node clones the MODEL and registers its patch object on the reference's patch point
(``double_block``, ``noise_refiner``, ``post_input``, ``middle_block_after_patch``) plus a family
check run before sampling: the families these patches are made for are not ones this server
samples, so sampling the patched MODEL stops with an error naming the patch's family and the
MODEL's, rather than the patch being silently ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import CoreNode
from plugins.core_nodes.nodes.loaders import _Loader

MODULE = "comfy_extras.nodes_model_patch"


def _strength() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})


class ModelPatchLoader(_Loader):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = MODULE
    CATEGORY = "model/loaders"
    EXPERIMENTAL = True
    RETURN_TYPES = ("MODEL_PATCH",)
    FUNCTION = "load_model_patch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"name": (cls.names("model_patches"),)}}

    def load_model_patch(self, name: str) -> tuple[Any]:
        from plugins.core_nodes.models.model_patch import load_model_patch

        return (load_model_patch(self.path("model_patches", name)),)


class _ApplyPatch(CoreNode):
    """A node that attaches a MODEL_PATCH to a clone of its MODEL."""

    RELATIVE_PYTHON_MODULE: ClassVar[str] = MODULE
    EXPERIMENTAL = True
    RETURN_TYPES = ("MODEL",)


class QwenImageDiffsynthControlnet(_ApplyPatch):
    CATEGORY = "model/patch/qwen"
    FUNCTION = "diffsynth_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "model_patch": ("MODEL_PATCH",),
                "vae": ("VAE",),
                "image": ("IMAGE",),
                "strength": _strength(),
            },
            "optional": {"mask": ("MASK",)},
        }

    def diffsynth_controlnet(
        self,
        model: Any,
        model_patch: Any,
        vae: Any,
        image: Any = None,
        strength: float = 1.0,
        inpaint_image: Any = None,
        mask: Any = None,
    ) -> tuple[Any]:
        from plugins.core_nodes.models.model_patch import (
            QWEN_IMAGE,
            TARGET_FAMILY,
            Z_IMAGE,
            FamilyCheck,
            require_family,
            require_kind,
        )
        from plugins.core_nodes.models.model_patch_hooks import DitControlPatch

        node = type(self).__name__
        kind = require_kind(model_patch, (QWEN_IMAGE, Z_IMAGE), node)
        if image is not None:
            image = image[..., :3]
        if inpaint_image is not None:
            inpaint_image = inpaint_image[..., :3]
        if mask is not None:
            # [B, 1, 1, H, W] with 1 where the image is kept, as the patches read it.
            if mask.ndim == 3:
                mask = mask.unsqueeze(1)
            if mask.ndim == 4:
                mask = mask.unsqueeze(2)
            mask = 1.0 - mask
        patched = model.clone()
        patch = DitControlPatch(kind, model_patch, vae, image, strength, inpaint_image=inpaint_image, mask=mask)
        if kind == Z_IMAGE:
            patched.set_model_noise_refiner_patch(patch)
        patched.set_model_double_block_patch(patch)
        target = TARGET_FAMILY[kind]
        class_name = "Lumina2" if kind == Z_IMAGE else "QwenImage"
        require_family(patched, FamilyCheck(node, target, accepts=lambda name: name == class_name))
        return (patched,)


class ZImageFunControlnet(QwenImageDiffsynthControlnet):
    CATEGORY = "model/patch/z-image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "model_patch": ("MODEL_PATCH",),
                "vae": ("VAE",),
                "strength": _strength(),
            },
            "optional": {"image": ("IMAGE",), "inpaint_image": ("IMAGE",), "mask": ("MASK",)},
        }


class USOStyleReference(_ApplyPatch):
    CATEGORY = "model/patch/flux"
    FUNCTION = "apply_patch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "model_patch": ("MODEL_PATCH",),
                "clip_vision_output": ("CLIP_VISION_OUTPUT",),
            }
        }

    def apply_patch(self, model: Any, model_patch: Any, clip_vision_output: Any) -> tuple[Any]:
        from plugins.core_nodes.models.model_patch import USO, FamilyCheck, require_family, require_kind
        from plugins.core_nodes.models.model_patch_hooks import UsoStyleProjectorPatch, stack_siglip_layers

        node = type(self).__name__
        require_kind(model_patch, (USO,), node)
        patched = model.clone()
        patched.set_model_post_input_patch(UsoStyleProjectorPatch(model_patch, stack_siglip_layers(clip_vision_output)))
        require_family(patched, FamilyCheck(node, "Flux (USO)", accepts=lambda name: name in ("Flux", "Flux2")))
        return (patched,)


class SUPIRApply(_ApplyPatch):
    # The reference's schema names no display name: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True
    CATEGORY = "model/patch/supir"
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        strength = {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}
        return {
            "required": {
                "model": ("MODEL", {}),
                "model_patch": ("MODEL_PATCH", {}),
                "vae": ("VAE", {}),
                "image": ("IMAGE", {}),
                "strength_start": ("FLOAT", dict(strength)),
                "strength_end": ("FLOAT", dict(strength)),
                "restore_cfg": ("FLOAT", {"advanced": True, "default": 4.0, "min": 0.0, "max": 20.0, "step": 0.1}),
                "restore_cfg_s_tmin": (
                    "FLOAT",
                    {"advanced": True, "default": 0.05, "min": 0.0, "max": 1.0, "step": 0.01},
                ),
            }
        }

    def execute(
        self,
        model: Any,
        model_patch: Any,
        vae: Any,
        image: Any,
        strength_start: float,
        strength_end: float,
        restore_cfg: float,
        restore_cfg_s_tmin: float,
    ) -> tuple[Any]:
        from plugins.core_nodes.models.model_patch import SUPIR, FamilyCheck, require_family, require_kind
        from plugins.core_nodes.models.model_patch_hooks import SupirPatchSettings

        node = type(self).__name__
        require_kind(model_patch, (SUPIR,), node)
        patched = model.clone()
        settings = SupirPatchSettings(
            model_patch, vae, image[..., :3], strength_start, strength_end, restore_cfg, restore_cfg_s_tmin
        )
        patched.set_model_middle_block_after_patch(settings)
        message = (
            "SUPIR's control encoder and its adapters on the UNet's output blocks are not supported by "
            "this server, so a MODEL ({family}) carrying a SUPIR patch cannot be sampled"
        )
        require_family(patched, FamilyCheck(node, "SDXL (SUPIR)", message=message))
        return (patched,)


NODES: dict[str, tuple[type, str | None]] = {
    "ModelPatchLoader": (ModelPatchLoader, "Load Model Patch"),
    "QwenImageDiffsynthControlnet": (QwenImageDiffsynthControlnet, "Apply Qwen Image DiffSynth ControlNet"),
    "ZImageFunControlnet": (ZImageFunControlnet, "Apply Z-Image Fun ControlNet"),
    "USOStyleReference": (USOStyleReference, "Apply USO Style Reference"),
    "SUPIRApply": (SUPIRApply, None),
}
