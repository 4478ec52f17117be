"""ControlNet nodes: loading a CONTROL_NET and attaching it to CONDITIONING.

The apply nodes never mutate their inputs: each entry's options are copied, and a copy of the
CONTROL_NET (:meth:`ControlBase.copy`) carries the hint, strength and percent range, chained to
whatever control the entry had (``previous_controlnet``). The sampler evaluates it per model call
(:mod:`plugins.core_nodes.cfg`).
"""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import ClassExecute, CoreNode
from plugins.core_nodes.nodes.loaders import _Loader

Conditioning = list[list[Any]]

def _strength() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})


def _percent(default: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.001})


def _load(path: Any, model: Any = None) -> Any:
    from plugins.core_nodes.models.control import load_controlnet

    return load_controlnet(path, model)


class ControlNetLoader(_Loader):
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"control_net_name": (cls.names("controlnet"),)}}

    def load_controlnet(self, control_net_name: str) -> tuple[Any]:
        return (_load(self.path("controlnet", control_net_name)),)


class DiffControlNetLoader(_Loader):
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "control_net_name": (cls.names("controlnet"),)}}

    def load_controlnet(self, model: Any, control_net_name: str) -> tuple[Any]:
        return (_load(self.path("controlnet", control_net_name), model),)


class ControlNetApply(CoreNode):
    """The deprecated single-conditioning apply node, kept for saved workflows."""

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"
    CATEGORY = "model/conditioning/controlnet"
    DEPRECATED = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "control_net": ("CONTROL_NET",),
                "image": ("IMAGE",),
                "strength": _strength(),
            }
        }

    def apply_controlnet(
        self, conditioning: Conditioning, control_net: Any, image: Any, strength: float
    ) -> tuple[Conditioning]:
        if strength == 0:
            return (conditioning,)
        hint = image.movedim(-1, 1)
        out: Conditioning = []
        for tensor, options in conditioning:
            control = control_net.copy().set_cond_hint(hint, strength)
            if "control" in options:
                control.set_previous_controlnet(options["control"])
            out.append([tensor, {**options, "control": control, "control_apply_to_uncond": True}])
        return (out,)


class ControlNetApplyAdvanced(CoreNode):
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"
    CATEGORY = "model/conditioning/controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "control_net": ("CONTROL_NET",),
                "image": ("IMAGE",),
                "strength": _strength(),
                "start_percent": _percent(0.0),
                "end_percent": _percent(1.0),
            },
            "optional": {"vae": ("VAE",)},
        }

    def apply_controlnet(
        self,
        positive: Conditioning,
        negative: Conditioning,
        control_net: Any,
        image: Any,
        strength: float,
        start_percent: float,
        end_percent: float,
        vae: Any = None,
        extra_concat: list[Any] | None = None,
    ) -> tuple[Conditioning, Conditioning]:
        if strength == 0:
            return (positive, negative)
        hint = image.movedim(-1, 1)
        # One new control per distinct previous control, shared by the entries that had it (so
        # positive and negative that shared a chain still share one), keyed by identity.
        made: dict[int, Any] = {}
        out: list[Conditioning] = []
        for conditioning in (positive, negative):
            entries: Conditioning = []
            for tensor, options in conditioning:
                previous = options.get("control")
                control = made.get(id(previous))
                if control is None:
                    control = control_net.copy().set_cond_hint(
                        hint, strength, (start_percent, end_percent), vae=vae, extra_concat=extra_concat or []
                    )
                    control.set_previous_controlnet(previous)
                    made[id(previous)] = control
                entries.append([tensor, {**options, "control": control, "control_apply_to_uncond": False}])
            out.append(entries)
        return (out[0], out[1])


class ControlNetInpaintingAliMamaApply(ClassExecute, CoreNode):
    """ControlNetApplyAdvanced for inpainting ControlNets (AliMama's): for a control that takes
    the mask as extra hint channels (``concat_mask``), the masked-out pixels of the image are
    zeroed (the mask resized to the image, bilinear, centre-cropped, rounded) and the kept-area
    mask (1 - mask) goes along as the extra channel; any other control gets the plain apply."""

    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_controlnet"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_inpaint_controlnet"
    CATEGORY = "model/conditioning/controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        percent = {"advanced": True, "min": 0.0, "max": 1.0, "step": 0.001}
        return {
            "required": {
                "positive": ("CONDITIONING", {}),
                "negative": ("CONDITIONING", {}),
                "control_net": ("CONTROL_NET", {}),
                "vae": ("VAE", {}),
                "image": ("IMAGE", {}),
                "mask": ("MASK", {}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                "start_percent": ("FLOAT", {"default": 0.0, **percent}),
                "end_percent": ("FLOAT", {"default": 1.0, **percent}),
            }
        }

    def apply_inpaint_controlnet(
        self,
        positive: Conditioning,
        negative: Conditioning,
        control_net: Any,
        vae: Any,
        image: Any,
        mask: Any,
        strength: float,
        start_percent: float,
        end_percent: float,
    ) -> tuple[Conditioning, Conditioning]:
        extra_concat: list[Any] = []
        if getattr(control_net, "concat_mask", False):
            from plugins.core_nodes.nodes.resize import upscale

            keep = 1.0 - mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
            keep_pixels = upscale(keep, image.shape[2], image.shape[1], "bilinear", "center").round()
            image = image * keep_pixels.movedim(1, -1).repeat(1, 1, 1, image.shape[3])
            extra_concat = [keep]
        return ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, control_net, image, strength, start_percent, end_percent, vae=vae, extra_concat=extra_concat
        )



# The union ControlNet's control types, in the order of its type index.
UNION_CONTROLNET_TYPES = (
    "openpose",
    "depth",
    "hed/pidi/scribble/ted",
    "canny/lineart/anime_lineart/mlsd",
    "normal",
    "segment",
    "tile",
    "repaint",
)


class SetUnionControlNetType(CoreNode):
    """A copy of the CONTROL_NET with the union model's ``control_type`` argument set ("auto":
    none). Plain ControlNets accept and ignore the argument."""

    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_controlnet"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "set_controlnet_type"
    CATEGORY = "model/conditioning/controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"control_net": ("CONTROL_NET", {}), "type": (["auto", *UNION_CONTROLNET_TYPES],)}}

    def set_controlnet_type(self, control_net: Any, type: str) -> tuple[Any]:  # noqa: A002 - the reference's input name
        control = control_net.copy()
        index = UNION_CONTROLNET_TYPES.index(type) if type in UNION_CONTROLNET_TYPES else None
        control.set_extra_arg("control_type", [] if index is None else [index])
        return (control,)


NODES: dict[str, tuple[type, str | None]] = {
    "ControlNetLoader": (ControlNetLoader, "Load ControlNet Model"),
    "DiffControlNetLoader": (DiffControlNetLoader, "Load ControlNet Model (diff)"),
    "ControlNetApply": (ControlNetApply, "Apply ControlNet (DEPRECATED)"),
    "ControlNetApplyAdvanced": (ControlNetApplyAdvanced, "Apply ControlNet"),
    "SetUnionControlNetType": (SetUnionControlNetType, "Set Union ControlNet Type"),
    "ControlNetInpaintingAliMamaApply": (ControlNetInpaintingAliMamaApply, "Apply ControlNet Inpainting (AliMama)"),
}
