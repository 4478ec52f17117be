"""`comfy.hooks`: the names of ComfyUI's scheduled-patch ("hook") API, without the scheduling.

Packs (AnimateDiff-Evolved, Advanced-ControlNet) import these at load time and use them only when
a workflow attaches hooks to conditioning. Hook groups can be built and combined here; applying
them (LoRA strength schedules per step, hook keyframes) is not supported by this server, and the
functions that would do it say so.
"""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class EnumHookMode(enum.StrEnum):
    MinVram = "minvram"
    MaxSpeed = "maxspeed"


class EnumHookType(enum.Enum):
    Weight = "weight"
    ObjectPatch = "object_patch"
    AdditionalModels = "add_models"
    TransformerOptions = "transformer_options"
    Injections = "add_injections"
    Wrappers = "wrappers"


class EnumWeightTarget(enum.Enum):
    Model = "model"
    Clip = "clip"


class EnumHookScope(enum.StrEnum):
    AllConditioning = "all_conditioning"
    HookedOnly = "hooked_only"


class _HookRef:
    """Identity of a hook across clones."""


class Hook:
    """One scheduled change; ``strength`` scales it."""

    def __init__(
        self, hook_type: EnumHookType | None = None, hook_ref: _HookRef | None = None, hook_id: str | None = None,
        hook_keyframe: HookKeyframeGroup | None = None, hook_scope: EnumHookScope = EnumHookScope.AllConditioning,
    ) -> None:  # fmt: skip
        self.hook_type = hook_type
        self.hook_ref = hook_ref or _HookRef()
        self.hook_id = hook_id or uuid.uuid4().hex
        self.hook_keyframe = hook_keyframe or HookKeyframeGroup()
        self.hook_scope = hook_scope
        self.custom_should_register = None

    @property
    def strength(self) -> float:
        return self.hook_keyframe.strength

    def initialize_timesteps(self, model: Any) -> None:
        return None

    def reset(self) -> None:
        self.hook_keyframe.reset()

    def clone(self) -> Hook:
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.hook_keyframe = self.hook_keyframe.clone()
        return twin

    def should_register(self, model: Any, model_options: dict[str, Any], target_dict: Any, registered: Any) -> bool:
        return True

    def add_hook_patches(self, model: Any, model_options: dict[str, Any], target_dict: Any, registered: Any) -> None:
        raise NotImplementedError("hooks (scheduled patches) are not supported by this server")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hook) and self.hook_ref is other.hook_ref and type(self) is type(other)

    def __hash__(self) -> int:
        return hash(self.hook_ref)


class WeightHook(Hook):
    def __init__(self, strength_model: float = 1.0, strength_clip: float = 1.0) -> None:
        super().__init__(EnumHookType.Weight)
        self.weights: dict[str, Any] | None = None
        self.weights_clip: dict[str, Any] | None = None
        self.need_weight_init = True
        self._strength_model = strength_model
        self._strength_clip = strength_clip

    @property
    def strength_model(self) -> float:
        return self._strength_model * self.strength

    @property
    def strength_clip(self) -> float:
        return self._strength_clip * self.strength


class ObjectPatchHook(Hook):
    def __init__(self, object_patches: dict[str, Any] | None = None) -> None:
        super().__init__(EnumHookType.ObjectPatch)
        self.object_patches = object_patches or {}


class AdditionalModelsHook(Hook):
    def __init__(self, models: list[Any] | None = None, key: str | None = None) -> None:
        super().__init__(EnumHookType.AdditionalModels)
        self.models = models or []
        self.key = key


class TransformerOptionsHook(Hook):
    def __init__(self, transformers_dict: dict[str, Any] | None = None, hook_scope: EnumHookScope = EnumHookScope.AllConditioning) -> None:  # fmt: skip
        super().__init__(EnumHookType.TransformerOptions, hook_scope=hook_scope)
        self.transformers_dict = transformers_dict or {}


class InjectionsHook(Hook):
    def __init__(self, key: str | None = None, injections: list[Any] | None = None) -> None:
        super().__init__(EnumHookType.Injections)
        self.key = key
        self.injections = injections or []


# The reference's later name for a transformer-options hook that carries wrappers.
class WrapperHook(TransformerOptionsHook):
    def __init__(self, wrappers_dict: dict[str, Any] | None = None) -> None:
        super().__init__(wrappers_dict)
        self.hook_type = EnumHookType.Wrappers


class HookGroup:
    """A set of hooks attached to one conditioning; ``clone`` / ``add`` / ``contains`` / ``combine``."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self._hook_dict: dict[EnumHookType | None, list[Hook]] = {}

    def __len__(self) -> int:
        return len(self.hooks)

    def add(self, hook: Hook) -> None:
        if hook not in self.hooks:
            self.hooks.append(hook)
            self._hook_dict.setdefault(hook.hook_type, []).append(hook)

    def remove(self, hook: Hook) -> None:
        if hook in self.hooks:
            self.hooks.remove(hook)
            self._hook_dict[hook.hook_type].remove(hook)

    def get_type(self, hook_type: EnumHookType) -> list[Hook]:
        return self._hook_dict.get(hook_type, [])

    def contains(self, hook: Hook) -> bool:
        return hook in self.hooks

    def is_subset_of(self, other: HookGroup) -> bool:
        return set(self.hooks).issubset(other.hooks)

    def new_with_common_hooks(self, other: HookGroup) -> HookGroup:
        group = HookGroup()
        for hook in self.hooks:
            if other.contains(hook):
                group.add(hook.clone())
        return group

    def clone(self) -> HookGroup:
        group = HookGroup()
        for hook in self.hooks:
            group.add(hook.clone())
        return group

    def clone_and_combine(self, other: HookGroup) -> HookGroup:
        group = self.clone()
        for hook in other.hooks:
            group.add(hook.clone())
        return group

    def set_keyframes_on_hooks(self, hook_kf: HookKeyframeGroup | None) -> None:
        for hook in self.hooks:
            hook.hook_keyframe = (hook_kf or HookKeyframeGroup()).clone()

    def get_hooks_for_clip_schedule(self) -> list[Any]:
        return []

    def reset(self) -> None:
        for hook in self.hooks:
            hook.reset()

    @staticmethod
    def combine_all_hooks(hooks_list: Iterable[HookGroup | None], require_count: int = 0) -> HookGroup | None:
        groups = [h for h in hooks_list if h is not None]
        if len(groups) < require_count:
            raise ValueError(f"need at least {require_count} hook groups, got {len(groups)}")
        if not groups:
            return None
        combined = groups[0].clone()
        for group in groups[1:]:
            combined = combined.clone_and_combine(group)
        return combined


class HookKeyframe:
    def __init__(self, strength: float, start_percent: float = 0.0, guarantee_steps: int = 1) -> None:
        self.strength = strength
        self.start_percent = float(start_percent)
        self.start_t = 999999999.9
        self.guarantee_steps = guarantee_steps

    def clone(self) -> HookKeyframe:
        twin = HookKeyframe(self.strength, self.start_percent, self.guarantee_steps)
        twin.start_t = self.start_t
        return twin


class HookKeyframeGroup:
    """Strength keyframes; without any, strength 1 throughout."""

    def __init__(self) -> None:
        self.keyframes: list[HookKeyframe] = []

    @property
    def strength(self) -> float:
        return self.keyframes[0].strength if self.keyframes else 1.0

    def reset(self) -> None:
        return None

    def add(self, keyframe: HookKeyframe) -> None:
        self.keyframes.append(keyframe)
        self.keyframes.sort(key=lambda k: k.start_percent)

    def is_empty(self) -> bool:
        return not self.keyframes

    def clone(self) -> HookKeyframeGroup:
        twin = HookKeyframeGroup()
        twin.keyframes = [k.clone() for k in self.keyframes]
        return twin

    def prepare_current_keyframe(self, curr_t: float, transformer_options: Any = None) -> bool:
        return False


def _unsupported(name: str) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"comfy.hooks.{name}: hooks on conditioning are not supported by this server")

    fail.__name__ = name
    return fail


load_hook_lora_for_models = _unsupported("load_hook_lora_for_models")


# --- building hook groups (real: only applying them while sampling is not supported) ----------


class InterpolationMethod:
    """How keyframe strengths are spread between two values (the hook-keyframe nodes' combo)."""

    LINEAR = "linear"
    EASE_IN = "ease_in"
    EASE_OUT = "ease_out"
    EASE_IN_OUT = "ease_in_out"

    _LIST = [LINEAR, EASE_IN, EASE_OUT, EASE_IN_OUT]

    @classmethod
    def get_weights(
        cls, num_from: float, num_to: float, length: int, method: str, reverse: bool = False
    ) -> torch.Tensor:
        """``length`` values from ``num_from`` to ``num_to`` along the ``method`` curve."""
        import torch

        position = torch.linspace(0, 1, length)
        curves = {
            cls.LINEAR: lambda p: p,
            cls.EASE_IN: lambda p: p**2,
            cls.EASE_OUT: lambda p: 1 - (1 - p) ** 2,
            cls.EASE_IN_OUT: lambda p: (1 - torch.cos(p * math.pi)) / 2,
        }
        if method not in curves:
            raise ValueError(f"Unrecognized interpolation method '{method}'.")
        if method == cls.LINEAR:
            weights = torch.linspace(num_from, num_to, length)
        else:
            weights = (num_to - num_from) * curves[method](position) + num_from
        return weights.flip(dims=(0,)) if reverse else weights


def create_hook_lora(lora: dict[str, Any], strength_model: float, strength_clip: float) -> HookGroup:
    """A group with one weight hook carrying the LoRA state dict ``lora`` (read into patches when
    the hook is applied to a MODEL or CLIP)."""
    group = HookGroup()
    hook = WeightHook(strength_model=strength_model, strength_clip=strength_clip)
    hook.weights = lora
    group.add(hook)
    return group


def create_hook_model_as_lora(
    weights_model: dict[str, Any] | None, weights_clip: dict[str, Any] | None, strength_model: float, strength_clip: float
) -> HookGroup:
    """A group with one weight hook whose patches move each weight to another checkpoint's
    (``("model_as_lora", (target,))`` by state-dict key): that checkpoint used as a LoRA."""
    group = HookGroup()
    hook = WeightHook(strength_model=strength_model, strength_clip=strength_clip)
    hook.weights = None if weights_model is None else {k: ("model_as_lora", (v,)) for k, v in weights_model.items()}
    hook.weights_clip = None if weights_clip is None else {k: ("model_as_lora", (v,)) for k, v in weights_clip.items()}
    hook.need_weight_init = False
    group.add(hook)
    return group


def get_patch_weights_from_model(model: Any, discard_model_sampling: bool = True) -> dict[str, Any] | None:
    """The state dict of a MODEL's (or CLIP patcher's) ``.model``, without the noise-schedule
    buffers (``model_sampling.*``) that must never act as a patch."""
    if model is None:
        return None
    weights = dict(model.model.state_dict())
    if discard_model_sampling:
        weights = {k: v for k, v in weights.items() if not k.startswith("model_sampling")}
    return weights


def _hooks_not_supported(where: str) -> NotImplementedError:
    return NotImplementedError(
        f"{where}: hooks attached to conditioning (LoRA / model-as-LoRA weights or keyframes applied "
        "while sampling) are not supported by comfykernel yet; masks and timestep ranges without "
        "hooks are"
    )


def set_hooks_for_conditioning(
    cond: list[Any], hooks: HookGroup | None, append_hooks: bool = True, cache: dict[Any, Any] | None = None
) -> list[Any]:
    """``cond`` itself without hooks; hooks on conditioning cannot be honoured by this server's
    sampler, so giving some is an error rather than a silently ignored ``hooks`` key."""
    if hooks is None:
        return cond
    raise _hooks_not_supported("comfy.hooks.set_hooks_for_conditioning")


def _set_values(cond: list[Any], values: dict[str, Any]) -> list[Any]:
    return [[entry[0], {**entry[1], **values}] for entry in cond]


def set_timesteps_for_conditioning(cond: list[Any], timestep_range: tuple[float, float] | None) -> list[Any]:
    if timestep_range is None:
        return cond
    return _set_values(cond, {"start_percent": timestep_range[0], "end_percent": timestep_range[1]})


def set_mask_for_conditioning(cond: list[Any], mask: Any, set_cond_area: str, strength: float) -> list[Any]:
    if mask is None:
        return cond
    if len(mask.shape) < 3:
        mask = mask.unsqueeze(0)
    values = {"mask": mask, "set_area_to_bounds": set_cond_area != "default", "mask_strength": strength}
    return _set_values(cond, values)


def combine_conditioning(conds: list[list[Any]]) -> list[Any]:
    return [entry for cond in conds for entry in cond]


def set_conds_props(
    conds: list[list[Any]], strength: float, set_cond_area: str, mask: Any = None, hooks: HookGroup | None = None,
    timesteps_range: tuple[float, float] | None = None, append_hooks: bool = True,
) -> list[list[Any]]:  # fmt: skip
    """Each conditioning with the mask (and its strength / area mode) and timestep range set."""
    if hooks is not None:
        raise _hooks_not_supported("comfy.hooks.set_conds_props")
    out = []
    for cond in conds:
        cond = set_mask_for_conditioning(cond, mask, set_cond_area, strength)
        out.append(set_timesteps_for_conditioning(cond, timesteps_range))
    return out


def set_conds_props_and_combine(
    conds: list[list[Any]], new_conds: list[list[Any]], strength: float = 1.0, set_cond_area: str = "default",
    mask: Any = None, hooks: HookGroup | None = None, timesteps_range: tuple[float, float] | None = None,
    append_hooks: bool = True,
) -> list[list[Any]]:  # fmt: skip
    """Each of ``conds`` followed by its partner of ``new_conds`` with the mask / range set."""
    if hooks is not None:
        raise _hooks_not_supported("comfy.hooks.set_conds_props_and_combine")
    changed = set_conds_props(new_conds, strength, set_cond_area, mask, None, timesteps_range)
    return [combine_conditioning([c, n]) for c, n in zip(conds, changed, strict=False)]


def set_default_conds_and_combine(
    conds: list[list[Any]], new_conds: list[list[Any]], hooks: HookGroup | None = None,
    timesteps_range: tuple[float, float] | None = None, append_hooks: bool = True,
) -> list[list[Any]]:  # fmt: skip
    """Each of ``conds`` followed by its partner marked ``default`` (used where no other cond applies)."""
    if hooks is not None:
        raise _hooks_not_supported("comfy.hooks.set_default_conds_and_combine")
    out = []
    for cond, new in zip(conds, new_conds, strict=False):
        new = set_timesteps_for_conditioning(_set_values(new, {"default": True}), timesteps_range)
        out.append(combine_conditioning([cond, new]))
    return out


__all__ = [
    "AdditionalModelsHook",
    "EnumHookMode",
    "EnumHookScope",
    "EnumHookType",
    "EnumWeightTarget",
    "Hook",
    "HookGroup",
    "HookKeyframe",
    "HookKeyframeGroup",
    "InjectionsHook",
    "InterpolationMethod",
    "ObjectPatchHook",
    "TransformerOptionsHook",
    "WeightHook",
    "WrapperHook",
    "combine_conditioning",
    "create_hook_lora",
    "create_hook_model_as_lora",
    "get_patch_weights_from_model",
    "load_hook_lora_for_models",
    "set_conds_props",
    "set_conds_props_and_combine",
    "set_default_conds_and_combine",
    "set_hooks_for_conditioning",
    "set_mask_for_conditioning",
    "set_timesteps_for_conditioning",
]
