"""Hook nodes (comfy_extras.nodes_hooks): LoRA / model-as-LoRA hooks, their keyframes, and
attaching them to conditioning or a CLIP.

A HOOKS value is a :class:`~plugins.core_nodes.hooks.HookGroup`, a HOOK_KEYFRAMES value a
:class:`~plugins.core_nodes.hooks.HookKeyframeGroup`, a TIMESTEPS_RANGE a ``(start, end)``
percent pair. Conditioning carrying hooks is sampled with the hooks' weights for its own model
calls only (see :mod:`plugins.core_nodes.hooks.sampling`). Every node returns new objects: the
groups and keyframes it is given are left as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import CoreNode
from plugins.core_nodes.nodes.loaders import _Loader

log = logging.getLogger("comfykernel.core_nodes")

_MODULE = "comfy_extras.nodes_hooks"
_AREA_MODES = ["default", "mask bounds"]


def _strength(lo: float, hi: float, step: float, default: float = 1.0) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step})


def _percent(default: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.001})


def _props_optional() -> dict[str, Any]:
    return {"mask": ("MASK",), "hooks": ("HOOKS",), "timesteps": ("TIMESTEPS_RANGE",)}


class _HookNode(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    EXPERIMENTAL = True


class _PairNode(_HookNode):
    """A node that hands back a positive / negative conditioning pair."""

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    CATEGORY = "advanced/hooks/cond pair"


class _SingleNode(_HookNode):
    """A node that hands back one conditioning."""

    RETURN_TYPES = ("CONDITIONING",)
    CATEGORY = "advanced/hooks/cond single"


def _props_inputs(*conds: str) -> dict[str, Any]:
    """The set-properties nodes' inputs: the ``conds``, strength and area mode, then the optional
    mask, hooks and timesteps."""
    required: dict[str, Any] = {name: ("CONDITIONING",) for name in conds}
    required["strength"] = _strength(0.0, 10.0, 0.01)
    required["set_cond_area"] = (list(_AREA_MODES),)
    return {"required": required, "optional": _props_optional()}


# --- attaching hooks, masks and ranges to conditioning ------------------------------------------


class PairConditioningSetProperties(_PairNode):
    FUNCTION = "set_properties"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _props_inputs("positive_NEW", "negative_NEW")

    def set_properties(
        self, positive_NEW: Any, negative_NEW: Any, strength: float, set_cond_area: str,
        mask: Any = None, hooks: Any = None, timesteps: Any = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        from plugins.core_nodes.hooks import set_conds_props

        positive, negative = set_conds_props(
            [positive_NEW, negative_NEW], strength, set_cond_area, mask=mask, hooks=hooks, timesteps_range=timesteps
        )
        return (positive, negative)


class PairConditioningSetPropertiesAndCombine(_PairNode):
    FUNCTION = "set_properties"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _props_inputs("positive", "negative", "positive_NEW", "negative_NEW")

    def set_properties(
        self, positive: Any, negative: Any, positive_NEW: Any, negative_NEW: Any, strength: float,
        set_cond_area: str, mask: Any = None, hooks: Any = None, timesteps: Any = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        from plugins.core_nodes.hooks import set_conds_props_and_combine

        out = set_conds_props_and_combine(
            [positive, negative], [positive_NEW, negative_NEW], strength, set_cond_area,
            mask=mask, hooks=hooks, timesteps_range=timesteps,
        )  # fmt: skip
        return (out[0], out[1])


class ConditioningSetProperties(_SingleNode):
    FUNCTION = "set_properties"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _props_inputs("cond_NEW")

    def set_properties(
        self, cond_NEW: Any, strength: float, set_cond_area: str, mask: Any = None, hooks: Any = None,
        timesteps: Any = None,
    ) -> tuple[Any]:  # fmt: skip
        from plugins.core_nodes.hooks import set_conds_props

        (out,) = set_conds_props([cond_NEW], strength, set_cond_area, mask=mask, hooks=hooks, timesteps_range=timesteps)
        return (out,)


class ConditioningSetPropertiesAndCombine(_SingleNode):
    FUNCTION = "set_properties"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _props_inputs("cond", "cond_NEW")

    def set_properties(
        self, cond: Any, cond_NEW: Any, strength: float, set_cond_area: str, mask: Any = None,
        hooks: Any = None, timesteps: Any = None,
    ) -> tuple[Any]:  # fmt: skip
        from plugins.core_nodes.hooks import set_conds_props_and_combine

        (out,) = set_conds_props_and_combine(
            [cond], [cond_NEW], strength, set_cond_area, mask=mask, hooks=hooks, timesteps_range=timesteps
        )
        return (out,)


class PairConditioningCombine(_PairNode):
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = ("positive_A", "negative_A", "positive_B", "negative_B")
        return {"required": {name: ("CONDITIONING",) for name in names}}

    def combine(self, positive_A: Any, negative_A: Any, positive_B: Any, negative_B: Any) -> tuple[Any, Any]:
        from plugins.core_nodes.hooks import set_conds_props_and_combine

        out = set_conds_props_and_combine([positive_A, negative_A], [positive_B, negative_B])
        return (out[0], out[1])


class PairConditioningSetDefaultAndCombine(_PairNode):
    FUNCTION = "set_default_and_combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = ("positive", "negative", "positive_DEFAULT", "negative_DEFAULT")
        return {"required": {name: ("CONDITIONING",) for name in names}, "optional": {"hooks": ("HOOKS",)}}

    def set_default_and_combine(
        self, positive: Any, negative: Any, positive_DEFAULT: Any, negative_DEFAULT: Any, hooks: Any = None
    ) -> tuple[Any, Any]:
        from plugins.core_nodes.hooks import set_default_conds_and_combine

        out = set_default_conds_and_combine([positive, negative], [positive_DEFAULT, negative_DEFAULT], hooks=hooks)
        return (out[0], out[1])


class ConditioningSetDefaultAndCombine(_SingleNode):
    FUNCTION = "set_default_and_combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"cond": ("CONDITIONING",), "cond_DEFAULT": ("CONDITIONING",)},
            "optional": {"hooks": ("HOOKS",)},
        }

    def set_default_and_combine(self, cond: Any, cond_DEFAULT: Any, hooks: Any = None) -> tuple[Any]:
        from plugins.core_nodes.hooks import set_default_conds_and_combine

        (out,) = set_default_conds_and_combine([cond], [cond_DEFAULT], hooks=hooks)
        return (out,)


class SetClipHooks(_HookNode):
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
            "optional": {"hooks": ("HOOKS",)},
        }

    def apply_hooks(self, clip: Any, schedule_clip: bool, apply_to_conds: bool, hooks: Any = None) -> tuple[Any]:
        """A CLIP encoding with ``hooks``' weights (at their keyframes' strengths, one encoding
        per range, with ``schedule_clip``); with ``apply_to_conds`` its conds carry the hooks."""
        from plugins.core_nodes.hooks import EnumWeightTarget, create_target_dict

        if hooks is None:
            return (clip,)
        patcher = getattr(clip, "patcher", None)
        if patcher is None or not hasattr(patcher, "register_all_hook_patches"):
            raise TypeError(f"this CLIP ({type(clip).__name__}) cannot take hooks: it has no model patcher")
        clip = clip.clone()
        if apply_to_conds:
            clip.apply_hooks_to_conds = hooks
        clip.patcher.forced_hooks = hooks.clone()
        clip.use_clip_schedule = schedule_clip
        if not schedule_clip:
            clip.patcher.forced_hooks.set_keyframes_on_hooks(None)
        clip.patcher.register_all_hook_patches(hooks, create_target_dict(EnumWeightTarget.Clip))
        return (clip,)


class ConditioningTimestepsRange(_HookNode):
    RETURN_TYPES = ("TIMESTEPS_RANGE", "TIMESTEPS_RANGE", "TIMESTEPS_RANGE")
    RETURN_NAMES = ("TIMESTEPS_RANGE", "BEFORE_RANGE", "AFTER_RANGE")
    CATEGORY = "advanced/hooks"
    FUNCTION = "create_range"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"start_percent": _percent(0.0), "end_percent": _percent(1.0)}}

    def create_range(self, start_percent: float, end_percent: float) -> tuple[Any, Any, Any]:
        return ((start_percent, end_percent), (0.0, start_percent), (end_percent, 1.0))


# --- creating hooks -------------------------------------------------------------------------------


def _start(prev_hooks: Any) -> Any:
    from plugins.core_nodes.hooks import HookGroup

    return HookGroup() if prev_hooks is None else prev_hooks


class _CreateHook(_Loader):
    """Hooks made from an installed model file, added to ``prev_hooks``."""

    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    EXPERIMENTAL = True
    RETURN_TYPES = ("HOOKS",)
    CATEGORY = "advanced/hooks/create"
    FUNCTION = "create_hook"
    FOLDER: ClassVar[str]  # the model folder the file is picked from
    NAME_INPUT: ClassVar[str]  # the input that names it

    @classmethod
    def _inputs(cls, with_clip: bool) -> dict[str, Any]:
        required: dict[str, Any] = {
            cls.NAME_INPUT: (cls.names(cls.FOLDER),),
            "strength_model": _strength(-20.0, 20.0, 0.01),
        }
        if with_clip:
            required["strength_clip"] = _strength(-20.0, 20.0, 0.01)
        return {"required": required, "optional": {"prev_hooks": ("HOOKS",)}}

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return cls._inputs(with_clip=True)


class CreateHookLora(_CreateHook):
    FOLDER: ClassVar[str] = "loras"
    NAME_INPUT: ClassVar[str] = "lora_name"

    def __init__(self) -> None:
        # (path, state dict) of the last file read: reruns with the same file skip the read.
        self.loaded_lora: tuple[str, Any] | None = None

    def _read(self, lora_name: str) -> Any:
        from plugins.core_nodes.models.text_encoder import load_state_dict_file

        path = str(self.path(self.FOLDER, lora_name, what="LoRA file"))
        if self.loaded_lora is None or self.loaded_lora[0] != path:
            self.loaded_lora = (path, load_state_dict_file(path))
        return self.loaded_lora[1]

    def create_hook(
        self, lora_name: str, strength_model: float, strength_clip: float, prev_hooks: Any = None
    ) -> tuple[Any]:
        from plugins.core_nodes.hooks import create_hook_lora

        prev = _start(prev_hooks)
        if strength_model == 0 and strength_clip == 0:
            return (prev,)
        hooks = create_hook_lora(self._read(lora_name), strength_model, strength_clip)
        return (prev.clone_and_combine(hooks),)


class CreateHookLoraModelOnly(CreateHookLora):
    FUNCTION = "create_hook_model_only"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return cls._inputs(with_clip=False)

    def create_hook_model_only(self, lora_name: str, strength_model: float, prev_hooks: Any = None) -> tuple[Any]:
        return self.create_hook(lora_name, strength_model, 0, prev_hooks)


class CreateHookModelAsLora(_CreateHook):
    FOLDER: ClassVar[str] = "checkpoints"
    NAME_INPUT: ClassVar[str] = "ckpt_name"

    def __init__(self) -> None:
        # (path, model weights, clip weights) of the last checkpoint read.
        self.loaded_weights: tuple[str, Any, Any] | None = None

    def _weights(self, ckpt_name: str) -> tuple[Any, Any]:
        from plugins.core_nodes.hooks import get_patch_weights_from_model
        from plugins.core_nodes.models.adapters import load_checkpoint

        found = self.path(self.FOLDER, ckpt_name, what="checkpoint")
        path = str(found)
        if self.loaded_weights is None or self.loaded_weights[0] != path:
            model, clip, _vae = load_checkpoint(found)
            weights_clip = get_patch_weights_from_model(clip.patcher) if clip is not None else None
            self.loaded_weights = (path, get_patch_weights_from_model(model), weights_clip)
        return self.loaded_weights[1], self.loaded_weights[2]

    def create_hook(
        self, ckpt_name: str, strength_model: float, strength_clip: float, prev_hooks: Any = None
    ) -> tuple[Any]:
        from plugins.core_nodes.hooks import create_hook_model_as_lora

        prev = _start(prev_hooks)
        weights_model, weights_clip = self._weights(ckpt_name)
        hooks = create_hook_model_as_lora(weights_model, weights_clip, strength_model, strength_clip)
        return (prev.clone_and_combine(hooks),)


class CreateHookModelAsLoraModelOnly(CreateHookModelAsLora):
    FUNCTION = "create_hook_model_only"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return cls._inputs(with_clip=False)

    def create_hook_model_only(self, ckpt_name: str, strength_model: float, prev_hooks: Any = None) -> tuple[Any]:
        return self.create_hook(ckpt_name, strength_model, 0.0, prev_hooks)


# --- scheduling -----------------------------------------------------------------------------------


class SetHookKeyframes(_HookNode):
    RETURN_TYPES = ("HOOKS",)
    CATEGORY = "advanced/hooks/scheduling"
    FUNCTION = "set_hook_keyframes"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"hooks": ("HOOKS",)}, "optional": {"hook_kf": ("HOOK_KEYFRAMES",)}}

    def set_hook_keyframes(self, hooks: Any, hook_kf: Any = None) -> tuple[Any]:
        if hook_kf is not None:
            hooks = hooks.clone()
            hooks.set_keyframes_on_hooks(hook_kf)
        return (hooks,)


def _keyframes(prev_hook_kf: Any) -> Any:
    from plugins.core_nodes.hooks import HookKeyframeGroup

    return HookKeyframeGroup() if prev_hook_kf is None else prev_hook_kf.clone()


class CreateHookKeyframe(_HookNode):
    RETURN_TYPES = ("HOOK_KEYFRAMES",)
    RETURN_NAMES = ("HOOK_KF",)
    CATEGORY = "advanced/hooks/scheduling"
    FUNCTION = "create_hook_keyframe"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"strength_mult": _strength(-20.0, 20.0, 0.01), "start_percent": _percent(0.0)},
            "optional": {"prev_hook_kf": ("HOOK_KEYFRAMES",)},
        }

    def create_hook_keyframe(self, strength_mult: float, start_percent: float, prev_hook_kf: Any = None) -> tuple[Any]:
        from plugins.core_nodes.hooks import HookKeyframe

        group = _keyframes(prev_hook_kf)
        group.add(HookKeyframe(strength=strength_mult, start_percent=start_percent))
        return (group,)


def _add_spread(group: Any, percents: Iterable[Any], strengths: Iterable[Any], show: bool) -> None:
    """Keyframes at ``percents`` with ``strengths``; only the first guarantees a step."""
    from plugins.core_nodes.hooks import HookKeyframe

    for i, (percent, strength) in enumerate(zip(percents, strengths, strict=False)):
        percent, strength = float(percent), float(strength)
        group.add(HookKeyframe(strength=strength, start_percent=percent, guarantee_steps=1 if i == 0 else 0))
        if show:
            log.info("Hook Keyframe - start_percent:%s = %s", percent, strength)


class CreateHookKeyframesInterpolated(_HookNode):
    RETURN_TYPES = ("HOOK_KEYFRAMES",)
    RETURN_NAMES = ("HOOK_KF",)
    CATEGORY = "advanced/hooks/scheduling"
    FUNCTION = "create_hook_keyframes"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        from plugins.core_nodes.hooks import InterpolationMethod

        return {
            "required": {
                "strength_start": _strength(0.0, 10.0, 0.001),
                "strength_end": _strength(0.0, 10.0, 0.001),
                "interpolation": (list(InterpolationMethod._LIST),),
                "start_percent": _percent(0.0),
                "end_percent": _percent(1.0),
                "keyframes_count": ("INT", {"default": 5, "min": 2, "max": 100, "step": 1}),
                "print_keyframes": ("BOOLEAN", {"default": False, "advanced": True}),
            },
            "optional": {"prev_hook_kf": ("HOOK_KEYFRAMES",)},
        }

    def create_hook_keyframes(
        self, strength_start: float, strength_end: float, interpolation: str, start_percent: float,
        end_percent: float, keyframes_count: int, print_keyframes: bool = False, prev_hook_kf: Any = None,
    ) -> tuple[Any]:  # fmt: skip
        from plugins.core_nodes.hooks import InterpolationMethod

        group = _keyframes(prev_hook_kf)
        percents = InterpolationMethod.get_weights(start_percent, end_percent, keyframes_count, InterpolationMethod.LINEAR)
        strengths = InterpolationMethod.get_weights(strength_start, strength_end, keyframes_count, interpolation)
        _add_spread(group, percents, strengths, print_keyframes)
        return (group,)


class CreateHookKeyframesFromFloats(_HookNode):
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
            "optional": {"prev_hook_kf": ("HOOK_KEYFRAMES",)},
        }

    def create_hook_keyframes(
        self, floats_strength: Any, start_percent: float, end_percent: float, prev_hook_kf: Any = None,
        print_keyframes: bool = False,
    ) -> tuple[Any]:  # fmt: skip
        from plugins.core_nodes.hooks import InterpolationMethod

        group = _keyframes(prev_hook_kf)
        bad = isinstance(floats_strength, bool | str | bytes)
        if bad or not isinstance(floats_strength, int | float | Iterable):
            raise TypeError(
                f"floats_strength must be a number or a list of numbers, not {type(floats_strength).__name__}"
            )
        values = [float(floats_strength)] if isinstance(floats_strength, int | float) else list(floats_strength)
        if not values:
            raise ValueError("floats_strength is empty: give at least one strength")
        percents = InterpolationMethod.get_weights(start_percent, end_percent, len(values), InterpolationMethod.LINEAR)
        _add_spread(group, percents, values, print_keyframes)
        return (group,)


# --- combining ------------------------------------------------------------------------------------


def _combine_node(count: int) -> type:
    letters = "ABCDEFGH"[:count]

    class _Combine(_HookNode):
        RETURN_TYPES = ("HOOKS",)
        CATEGORY = "advanced/hooks/combine"
        FUNCTION = "combine_hooks"

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {}, "optional": {f"hooks_{x}": ("HOOKS",) for x in letters}}

        def combine_hooks(self, *groups: Any, **named: Any) -> tuple[Any]:
            """The given groups (positionally or as ``hooks_A``...) as one; None when none is."""
            from plugins.core_nodes.hooks import HookGroup

            given = [*groups, *(named.get(f"hooks_{x}") for x in letters[len(groups) :])]
            return (HookGroup.combine_all_hooks(given),)

    return _Combine


class CombineHooks(_combine_node(2)):  # type: ignore[misc]
    """Two hook groups as one (None when neither is given)."""


class CombineHooksFour(_combine_node(4)):  # type: ignore[misc]
    """Four hook groups as one."""


class CombineHooksEight(_combine_node(8)):  # type: ignore[misc]
    """Eight hook groups as one."""


NODES: dict[str, tuple[type, str | None]] = {
    "CreateHookLora": (CreateHookLora, "Create Hook LoRA"),
    "CreateHookLoraModelOnly": (CreateHookLoraModelOnly, "Create Hook LoRA (MO)"),
    "CreateHookModelAsLora": (CreateHookModelAsLora, "Create Hook Model as LoRA"),
    "CreateHookModelAsLoraModelOnly": (CreateHookModelAsLoraModelOnly, "Create Hook Model as LoRA (MO)"),
    "SetHookKeyframes": (SetHookKeyframes, "Set Hook Keyframes"),
    "CreateHookKeyframe": (CreateHookKeyframe, "Create Hook Keyframe"),
    "CreateHookKeyframesInterpolated": (CreateHookKeyframesInterpolated, "Create Hook Keyframes Interp."),
    "CreateHookKeyframesFromFloats": (CreateHookKeyframesFromFloats, "Create Hook Keyframes From Floats"),
    "CombineHooks2": (CombineHooks, "Combine Hooks [2]"),
    "CombineHooks4": (CombineHooksFour, "Combine Hooks [4]"),
    "CombineHooks8": (CombineHooksEight, "Combine Hooks [8]"),
    "ConditioningSetProperties": (ConditioningSetProperties, "Cond Set Props"),
    "ConditioningSetPropertiesAndCombine": (ConditioningSetPropertiesAndCombine, "Cond Set Props Combine"),
    "PairConditioningSetProperties": (PairConditioningSetProperties, "Cond Pair Set Props"),
    "PairConditioningSetPropertiesAndCombine": (PairConditioningSetPropertiesAndCombine, "Cond Pair Set Props Combine"),
    "ConditioningSetDefaultCombine": (ConditioningSetDefaultAndCombine, "Cond Set Default Combine"),
    "PairConditioningSetDefaultCombine": (PairConditioningSetDefaultAndCombine, "Cond Pair Set Default Combine"),
    "PairConditioningCombine": (PairConditioningCombine, "Cond Pair Combine"),
    "SetClipHooks": (SetClipHooks, "Set CLIP Hooks"),
    "ConditioningTimestepsRange": (ConditioningTimestepsRange, "Timesteps Range"),
}

# The reference's classes name themselves (packs read these).
for _node_id, (_cls, _display) in NODES.items():
    _cls.NodeId = _node_id
    _cls.NodeName = _display
