"""``comfy_extras.nodes_hooks``: the reference's hook nodes, as classes packs subclass and call.

AnimateDiff-Evolved subclasses ``CreateHookModelAsLora`` and calls ``SetClipHooks.apply_hooks``,
so the classes are defined here with the reference's inputs, outputs, FUNCTION names and method
signatures. They are not registered as server nodes (``NODE_CLASS_MAPPINGS`` lists only what the
kernel registers), because this server's sampler does not apply hooks (issue 19).

What runs for real: building hook groups (``CreateHookLora`` reads a LoRA file,
``CreateHookModelAsLora`` a checkpoint's weights), keyframes, combining, timestep ranges, masks
and timestep ranges on conditioning, and ``SetClipHooks`` on a CLIP when the hooks only change the
CLIP (``apply_to_conds`` false, no clip schedule). Anything that would need the sampler to honour
hooks raises NotImplementedError naming what is unsupported when the method runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import comfy.hooks
import comfy.lora
import comfy.sd
import comfy.utils
import folder_paths
from comfy_extras._exports import module_attributes

log = logging.getLogger("comfykernel.compat")

_HOOKS = ("HOOKS",)
_KEYFRAMES = ("HOOK_KEYFRAMES",)


def _strength(default: float = 1.0, low: float = -20.0, high: float = 20.0) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": low, "max": high, "step": 0.01})


def _percent(default: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.001})


def _props_inputs(*conds: str) -> dict[str, Any]:
    required: dict[str, Any] = {name: ("CONDITIONING",) for name in conds}
    required["strength"] = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})
    required["set_cond_area"] = (["default", "mask bounds"],)
    return {"required": required, "optional": {"mask": ("MASK",), "hooks": _HOOKS, "timesteps": ("TIMESTEPS_RANGE",)}}


class _HookNode:
    EXPERIMENTAL = True
    NodeId: str
    NodeName: str


# --- conditioning ----------------------------------------------------------------------------


class PairConditioningSetProperties(_HookNode):
    NodeId = "PairConditioningSetProperties"
    NodeName = "Cond Pair Set Props"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    CATEGORY = "advanced/hooks/cond pair"
    FUNCTION = "set_properties"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _props_inputs("positive_NEW", "negative_NEW")

    def set_properties(
        self, positive_NEW: Any, negative_NEW: Any, strength: float, set_cond_area: str,  # noqa: N803
        mask: Any = None, hooks: Any = None, timesteps: tuple[float, float] | None = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        positive, negative = comfy.hooks.set_conds_props(
            conds=[positive_NEW, negative_NEW], strength=strength, set_cond_area=set_cond_area,
            mask=mask, hooks=hooks, timesteps_range=timesteps,
        )  # fmt: skip
        return (positive, negative)


class PairConditioningSetPropertiesAndCombine(_HookNode):
    NodeId = "PairConditioningSetPropertiesAndCombine"
    NodeName = "Cond Pair Set Props Combine"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    CATEGORY = "advanced/hooks/cond pair"
    FUNCTION = "set_properties"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _props_inputs("positive", "negative", "positive_NEW", "negative_NEW")

    def set_properties(
        self, positive: Any, negative: Any, positive_NEW: Any, negative_NEW: Any,  # noqa: N803
        strength: float, set_cond_area: str, mask: Any = None, hooks: Any = None,
        timesteps: tuple[float, float] | None = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        out_positive, out_negative = comfy.hooks.set_conds_props_and_combine(
            conds=[positive, negative], new_conds=[positive_NEW, negative_NEW], strength=strength,
            set_cond_area=set_cond_area, mask=mask, hooks=hooks, timesteps_range=timesteps,
        )  # fmt: skip
        return (out_positive, out_negative)


class ConditioningSetProperties(_HookNode):
    NodeId = "ConditioningSetProperties"
    NodeName = "Cond Set Props"
    RETURN_TYPES = ("CONDITIONING",)
    CATEGORY = "advanced/hooks/cond single"
    FUNCTION = "set_properties"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _props_inputs("cond_NEW")

    def set_properties(
        self, cond_NEW: Any, strength: float, set_cond_area: str,  # noqa: N803
        mask: Any = None, hooks: Any = None, timesteps: tuple[float, float] | None = None,
    ) -> tuple[Any]:  # fmt: skip
        (cond,) = comfy.hooks.set_conds_props(
            conds=[cond_NEW], strength=strength, set_cond_area=set_cond_area,
            mask=mask, hooks=hooks, timesteps_range=timesteps,
        )  # fmt: skip
        return (cond,)


class ConditioningSetPropertiesAndCombine(_HookNode):
    NodeId = "ConditioningSetPropertiesAndCombine"
    NodeName = "Cond Set Props Combine"
    RETURN_TYPES = ("CONDITIONING",)
    CATEGORY = "advanced/hooks/cond single"
    FUNCTION = "set_properties"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _props_inputs("cond", "cond_NEW")

    def set_properties(
        self, cond: Any, cond_NEW: Any, strength: float, set_cond_area: str,  # noqa: N803
        mask: Any = None, hooks: Any = None, timesteps: tuple[float, float] | None = None,
    ) -> tuple[Any]:  # fmt: skip
        (combined,) = comfy.hooks.set_conds_props_and_combine(
            conds=[cond], new_conds=[cond_NEW], strength=strength, set_cond_area=set_cond_area,
            mask=mask, hooks=hooks, timesteps_range=timesteps,
        )  # fmt: skip
        return (combined,)


class PairConditioningCombine(_HookNode):
    NodeId = "PairConditioningCombine"
    NodeName = "Cond Pair Combine"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    CATEGORY = "advanced/hooks/cond pair"
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = ("positive_A", "negative_A", "positive_B", "negative_B")
        return {"required": {name: ("CONDITIONING",) for name in names}}

    def combine(self, positive_A: Any, negative_A: Any, positive_B: Any, negative_B: Any) -> tuple[Any, Any]:  # noqa: N803
        positive, negative = comfy.hooks.set_conds_props_and_combine(
            conds=[positive_A, negative_A], new_conds=[positive_B, negative_B]
        )
        return (positive, negative)


class PairConditioningSetDefaultAndCombine(_HookNode):
    NodeId = "PairConditioningSetDefaultCombine"
    NodeName = "Cond Pair Set Default Combine"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    CATEGORY = "advanced/hooks/cond pair"
    FUNCTION = "set_default_and_combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = ("positive", "negative", "positive_DEFAULT", "negative_DEFAULT")
        return {"required": {name: ("CONDITIONING",) for name in names}, "optional": {"hooks": _HOOKS}}

    def set_default_and_combine(
        self, positive: Any, negative: Any, positive_DEFAULT: Any, negative_DEFAULT: Any, hooks: Any = None  # noqa: N803
    ) -> tuple[Any, Any]:
        out_positive, out_negative = comfy.hooks.set_default_conds_and_combine(
            conds=[positive, negative], new_conds=[positive_DEFAULT, negative_DEFAULT], hooks=hooks
        )
        return (out_positive, out_negative)


class ConditioningSetDefaultAndCombine(_HookNode):
    NodeId = "ConditioningSetDefaultCombine"
    NodeName = "Cond Set Default Combine"
    RETURN_TYPES = ("CONDITIONING",)
    CATEGORY = "advanced/hooks/cond single"
    FUNCTION = "set_default_and_combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"cond": ("CONDITIONING",), "cond_DEFAULT": ("CONDITIONING",)}, "optional": {"hooks": _HOOKS}}

    def set_default_and_combine(self, cond: Any, cond_DEFAULT: Any, hooks: Any = None) -> tuple[Any]:  # noqa: N803
        (combined,) = comfy.hooks.set_default_conds_and_combine(conds=[cond], new_conds=[cond_DEFAULT], hooks=hooks)
        return (combined,)


class SetModelHooksOnCond(_HookNode):
    RETURN_TYPES = ("CONDITIONING",)
    CATEGORY = "advanced/hooks/manual"
    FUNCTION = "attach_hook"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",), "hooks": _HOOKS}}

    def attach_hook(self, conditioning: Any, hooks: Any) -> tuple[Any]:
        return (comfy.hooks.set_hooks_for_conditioning(conditioning, hooks),)


# --- CLIP --------------------------------------------------------------------------------------


def _clip_patches(clip: Any, hook: Any) -> dict[Any, Any]:
    """A weight hook's change to ``clip`` as ordinary weight patches by the CLIP's keys."""
    if hook.need_weight_init:
        # A LoRA state dict: read with the CLIP's LoRA key map, as LoraLoader reads it.
        return comfy.lora.load_lora(hook.weights, comfy.lora.model_lora_keys_clip(clip), log_missing=False)
    if not hook.weights_clip:
        return {}
    # Another checkpoint's weights: the patch is its difference to this CLIP's own weight.
    own = clip.get_sd()
    patches = {}
    for key, (_kind, (target,)) in hook.weights_clip.items():
        if key in own and own[key].shape == target.shape:
            patches[key] = ("diff", (target.to(own[key].dtype) - own[key],))
    return patches


def _refuse_unsupported_clip_hooks(hooks: Any, schedule_clip: bool, apply_to_conds: bool) -> None:
    if apply_to_conds:
        raise NotImplementedError(
            "SetClipHooks with apply_to_conds: hooks carried by the conditioning into sampling are not "
            "supported by comfykernel yet; set apply_to_conds to false to apply the hooks to the CLIP only"
        )
    other = [h for h in hooks.hooks if h.hook_type is not comfy.hooks.EnumHookType.Weight]
    if other:
        kinds = sorted({str(h.hook_type) for h in other})
        raise NotImplementedError(f"SetClipHooks: only weight hooks can be applied to a CLIP here, got {kinds}")
    if schedule_clip and any(not h.hook_keyframe.is_empty() for h in hooks.hooks):
        raise NotImplementedError(
            "SetClipHooks with schedule_clip: keyframed CLIP hooks (one encoding per strength range) "
            "are not supported by comfykernel yet"
        )


class SetClipHooks(_HookNode):
    NodeId = "SetClipHooks"
    NodeName = "Set CLIP Hooks"
    RETURN_TYPES = ("CLIP",)
    CATEGORY = "advanced/hooks/clip"
    FUNCTION = "apply_hooks"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP",),
                "apply_to_conds": ("BOOLEAN", {"default": True, "advanced": True}),
                "schedule_clip": ("BOOLEAN", {"default": False, "advanced": True}),
            },
            "optional": {"hooks": _HOOKS},
        }

    def apply_hooks(self, clip: Any, schedule_clip: bool, apply_to_conds: bool, hooks: Any = None) -> tuple[Any]:
        """A clone of ``clip`` whose encodings include the hooks' CLIP weights (each at its
        ``strength_clip``; without a clip schedule, keyframes do not change it). No hooks: ``clip``."""
        if hooks is None:
            return (clip,)
        _refuse_unsupported_clip_hooks(hooks, schedule_clip, apply_to_conds)
        clip = clip.clone()
        forced = hooks.clone()
        forced.set_keyframes_on_hooks(None)
        for hook in forced.hooks:
            clip.add_patches(_clip_patches(clip, hook), hook.strength_clip)
        clip.patcher.forced_hooks = forced
        clip.use_clip_schedule = schedule_clip
        return (clip,)


class ConditioningTimestepsRange(_HookNode):
    NodeId = "ConditioningTimestepsRange"
    NodeName = "Timesteps Range"
    RETURN_TYPES = ("TIMESTEPS_RANGE", "TIMESTEPS_RANGE", "TIMESTEPS_RANGE")
    RETURN_NAMES = ("TIMESTEPS_RANGE", "BEFORE_RANGE", "AFTER_RANGE")
    CATEGORY = "advanced/hooks"
    FUNCTION = "create_range"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"start_percent": _percent(0.0), "end_percent": _percent(1.0)}}

    def create_range(
        self, start_percent: float, end_percent: float
    ) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        return ((start_percent, end_percent), (0.0, start_percent), (end_percent, 1.0))


# --- creating hooks ----------------------------------------------------------------------------


class CreateHookLora(_HookNode):
    NodeId = "CreateHookLora"
    NodeName = "Create Hook LoRA"
    RETURN_TYPES = ("HOOKS",)
    CATEGORY = "advanced/hooks/create"
    FUNCTION = "create_hook"

    def __init__(self) -> None:
        # (path, state dict) of the last LoRA read, as the reference caches it per node instance.
        self.loaded_lora: tuple[str, dict[str, Any]] | None = None

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "lora_name": (folder_paths.get_filename_list("loras"),),
                "strength_model": _strength(),
                "strength_clip": _strength(),
            },
            "optional": {"prev_hooks": _HOOKS},
        }

    def create_hook(
        self, lora_name: str, strength_model: float, strength_clip: float, prev_hooks: Any = None
    ) -> tuple[Any]:
        if prev_hooks is None:
            prev_hooks = comfy.hooks.HookGroup()
        if strength_model == 0 and strength_clip == 0:
            return (prev_hooks,)
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        if self.loaded_lora is None or self.loaded_lora[0] != path:
            self.loaded_lora = (path, comfy.utils.load_torch_file(path, safe_load=True))
        hooks = comfy.hooks.create_hook_lora(self.loaded_lora[1], strength_model, strength_clip)
        return (prev_hooks.clone_and_combine(hooks),)


class CreateHookLoraModelOnly(CreateHookLora):
    NodeId = "CreateHookLoraModelOnly"
    NodeName = "Create Hook LoRA (MO)"
    FUNCTION = "create_hook_model_only"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"lora_name": (folder_paths.get_filename_list("loras"),), "strength_model": _strength()},
            "optional": {"prev_hooks": _HOOKS},
        }

    def create_hook_model_only(self, lora_name: str, strength_model: float, prev_hooks: Any = None) -> tuple[Any]:
        return self.create_hook(lora_name=lora_name, strength_model=strength_model, strength_clip=0, prev_hooks=prev_hooks)


class CreateHookModelAsLora(_HookNode):
    NodeId = "CreateHookModelAsLora"
    NodeName = "Create Hook Model as LoRA"
    RETURN_TYPES = ("HOOKS",)
    CATEGORY = "advanced/hooks/create"
    FUNCTION = "create_hook"

    def __init__(self) -> None:
        # (checkpoint path, model weights, CLIP weights) of the last checkpoint read.
        self.loaded_weights: tuple[str, Any, Any] | None = None

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "ckpt_name": (folder_paths.get_filename_list("checkpoints"),),
                "strength_model": _strength(),
                "strength_clip": _strength(),
            },
            "optional": {"prev_hooks": _HOOKS},
        }

    def create_hook(
        self, ckpt_name: str, strength_model: float, strength_clip: float, prev_hooks: Any = None
    ) -> tuple[Any]:
        """A weight hook moving the weights towards checkpoint ``ckpt_name``'s, combined after ``prev_hooks``."""
        if prev_hooks is None:
            prev_hooks = comfy.hooks.HookGroup()
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        if self.loaded_weights is None or self.loaded_weights[0] != path:
            model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(
                path, output_vae=False, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings")
            )
            weights_model = comfy.hooks.get_patch_weights_from_model(model)
            weights_clip = comfy.hooks.get_patch_weights_from_model(clip.patcher if clip is not None else None)
            self.loaded_weights = (path, weights_model, weights_clip)
        _, weights_model, weights_clip = self.loaded_weights
        hooks = comfy.hooks.create_hook_model_as_lora(weights_model, weights_clip, strength_model, strength_clip)
        return (prev_hooks.clone_and_combine(hooks),)


class CreateHookModelAsLoraModelOnly(CreateHookModelAsLora):
    NodeId = "CreateHookModelAsLoraModelOnly"
    NodeName = "Create Hook Model as LoRA (MO)"
    FUNCTION = "create_hook_model_only"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "ckpt_name": (folder_paths.get_filename_list("checkpoints"),),
                "strength_model": _strength(),
            },
            "optional": {"prev_hooks": _HOOKS},
        }

    def create_hook_model_only(self, ckpt_name: str, strength_model: float, prev_hooks: Any = None) -> tuple[Any]:
        return self.create_hook(ckpt_name=ckpt_name, strength_model=strength_model, strength_clip=0.0, prev_hooks=prev_hooks)


# --- keyframes ---------------------------------------------------------------------------------


class SetHookKeyframes(_HookNode):
    NodeId = "SetHookKeyframes"
    NodeName = "Set Hook Keyframes"
    RETURN_TYPES = ("HOOKS",)
    CATEGORY = "advanced/hooks/scheduling"
    FUNCTION = "set_hook_keyframes"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"hooks": _HOOKS}, "optional": {"hook_kf": _KEYFRAMES}}

    def set_hook_keyframes(self, hooks: Any, hook_kf: Any = None) -> tuple[Any]:
        if hook_kf is not None:
            hooks = hooks.clone()
            hooks.set_keyframes_on_hooks(hook_kf=hook_kf)
        return (hooks,)


class CreateHookKeyframe(_HookNode):
    NodeId = "CreateHookKeyframe"
    NodeName = "Create Hook Keyframe"
    RETURN_TYPES = ("HOOK_KEYFRAMES",)
    RETURN_NAMES = ("HOOK_KF",)
    CATEGORY = "advanced/hooks/scheduling"
    FUNCTION = "create_hook_keyframe"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"strength_mult": _strength(), "start_percent": _percent(0.0)},
            "optional": {"prev_hook_kf": _KEYFRAMES},
        }

    def create_hook_keyframe(self, strength_mult: float, start_percent: float, prev_hook_kf: Any = None) -> tuple[Any]:
        group = (prev_hook_kf or comfy.hooks.HookKeyframeGroup()).clone()
        group.add(comfy.hooks.HookKeyframe(strength=strength_mult, start_percent=start_percent))
        return (group,)


def _add_keyframes(group: Any, percents: Iterable[float], strengths: Iterable[float], show: bool) -> Any:
    """Keyframes at ``percents`` with ``strengths``; only the first guarantees a step."""
    for index, (percent, strength) in enumerate(zip(percents, strengths, strict=False)):
        percent, strength = float(percent), float(strength)
        group.add(comfy.hooks.HookKeyframe(strength=strength, start_percent=percent, guarantee_steps=int(index == 0)))
        if show:
            log.info("Hook Keyframe - start_percent:%s = %s", percent, strength)
    return group


class CreateHookKeyframesInterpolated(_HookNode):
    NodeId = "CreateHookKeyframesInterpolated"
    NodeName = "Create Hook Keyframes Interp."
    RETURN_TYPES = ("HOOK_KEYFRAMES",)
    RETURN_NAMES = ("HOOK_KF",)
    CATEGORY = "advanced/hooks/scheduling"
    FUNCTION = "create_hook_keyframes"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "strength_start": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
                "strength_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
                "interpolation": (list(comfy.hooks.InterpolationMethod._LIST),),
                "start_percent": _percent(0.0),
                "end_percent": _percent(1.0),
                "keyframes_count": ("INT", {"default": 5, "min": 2, "max": 100, "step": 1}),
                "print_keyframes": ("BOOLEAN", {"default": False, "advanced": True}),
            },
            "optional": {"prev_hook_kf": _KEYFRAMES},
        }

    def create_hook_keyframes(
        self, strength_start: float, strength_end: float, interpolation: str, start_percent: float,
        end_percent: float, keyframes_count: int, print_keyframes: bool = False, prev_hook_kf: Any = None,
    ) -> tuple[Any]:  # fmt: skip
        method = comfy.hooks.InterpolationMethod
        percents = method.get_weights(start_percent, end_percent, keyframes_count, method.LINEAR)
        strengths = method.get_weights(strength_start, strength_end, keyframes_count, interpolation)
        group = (prev_hook_kf or comfy.hooks.HookKeyframeGroup()).clone()
        return (_add_keyframes(group, percents.tolist(), strengths.tolist(), print_keyframes),)


class CreateHookKeyframesFromFloats(_HookNode):
    NodeId = "CreateHookKeyframesFromFloats"
    NodeName = "Create Hook Keyframes From Floats"
    RETURN_TYPES = ("HOOK_KEYFRAMES",)
    RETURN_NAMES = ("HOOK_KF",)
    CATEGORY = "advanced/hooks/scheduling"
    FUNCTION = "create_hook_keyframes"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "floats_strength": ("FLOATS", {"default": -1, "min": -1, "step": 0.001, "forceInput": True}),
                "start_percent": _percent(0.0),
                "end_percent": _percent(1.0),
                "print_keyframes": ("BOOLEAN", {"default": False, "advanced": True}),
            },
            "optional": {"prev_hook_kf": _KEYFRAMES},
        }

    def create_hook_keyframes(
        self, floats_strength: float | Iterable[float], start_percent: float, end_percent: float,
        prev_hook_kf: Any = None, print_keyframes: bool = False,
    ) -> tuple[Any]:  # fmt: skip
        if isinstance(floats_strength, int | float):
            floats_strength = [float(floats_strength)]
        elif not isinstance(floats_strength, Iterable):
            raise TypeError(f"floats_strength must be a float or an iterable of floats, not {type(floats_strength).__name__}")
        strengths = list(floats_strength)
        method = comfy.hooks.InterpolationMethod
        percents = method.get_weights(start_percent, end_percent, len(strengths), method.LINEAR)
        group = (prev_hook_kf or comfy.hooks.HookKeyframeGroup()).clone()
        return (_add_keyframes(group, percents.tolist(), strengths, print_keyframes),)


# --- combining ---------------------------------------------------------------------------------


def _combine_inputs(count: int) -> dict[str, Any]:
    return {"required": {}, "optional": {f"hooks_{chr(ord('A') + i)}": _HOOKS for i in range(count)}}


class CombineHooks(_HookNode):
    NodeId = "CombineHooks2"
    NodeName = "Combine Hooks [2]"
    RETURN_TYPES = ("HOOKS",)
    CATEGORY = "advanced/hooks/combine"
    FUNCTION = "combine_hooks"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _combine_inputs(2)

    def combine_hooks(self, hooks_A: Any = None, hooks_B: Any = None) -> tuple[Any]:  # noqa: N803
        return (comfy.hooks.HookGroup.combine_all_hooks([hooks_A, hooks_B]),)


class CombineHooksFour(_HookNode):
    NodeId = "CombineHooks4"
    NodeName = "Combine Hooks [4]"
    RETURN_TYPES = ("HOOKS",)
    CATEGORY = "advanced/hooks/combine"
    FUNCTION = "combine_hooks"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _combine_inputs(4)

    def combine_hooks(
        self, hooks_A: Any = None, hooks_B: Any = None, hooks_C: Any = None, hooks_D: Any = None  # noqa: N803
    ) -> tuple[Any]:
        return (comfy.hooks.HookGroup.combine_all_hooks([hooks_A, hooks_B, hooks_C, hooks_D]),)


class CombineHooksEight(_HookNode):
    NodeId = "CombineHooks8"
    NodeName = "Combine Hooks [8]"
    RETURN_TYPES = ("HOOKS",)
    CATEGORY = "advanced/hooks/combine"
    FUNCTION = "combine_hooks"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _combine_inputs(8)

    def combine_hooks(
        self, hooks_A: Any = None, hooks_B: Any = None, hooks_C: Any = None, hooks_D: Any = None,  # noqa: N803
        hooks_E: Any = None, hooks_F: Any = None, hooks_G: Any = None, hooks_H: Any = None,  # noqa: N803
    ) -> tuple[Any]:  # fmt: skip
        groups = [hooks_A, hooks_B, hooks_C, hooks_D, hooks_E, hooks_F, hooks_G, hooks_H]
        return (comfy.hooks.HookGroup.combine_all_hooks(groups),)


_CLASSES = (
    PairConditioningSetProperties, PairConditioningSetPropertiesAndCombine, ConditioningSetProperties,
    ConditioningSetPropertiesAndCombine, PairConditioningCombine, PairConditioningSetDefaultAndCombine,
    ConditioningSetDefaultAndCombine, SetModelHooksOnCond, SetClipHooks, ConditioningTimestepsRange,
    CreateHookLora, CreateHookLoraModelOnly, CreateHookModelAsLora, CreateHookModelAsLoraModelOnly,
    SetHookKeyframes, CreateHookKeyframe, CreateHookKeyframesInterpolated, CreateHookKeyframesFromFloats,
    CombineHooks, CombineHooksFour, CombineHooksEight,
)  # fmt: skip

__getattr__, __dir__ = module_attributes(__name__, {cls.__name__: cls for cls in _CLASSES})
