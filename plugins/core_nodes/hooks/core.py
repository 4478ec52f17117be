"""Hooks: changes a conditioning carries into sampling (the reference's ``comfy.hooks`` objects).

A :class:`HookGroup` is a set of :class:`Hook`\\ s attached to CONDITIONING entries (their
``"hooks"`` option) or forced onto a CLIP. The kind that matters most is :class:`WeightHook`: a
LoRA (or another checkpoint used as one) whose weights apply only to the model calls of the conds
that carry it, at ``strength`` times the strength of its current :class:`HookKeyframe`.

Keyframes are scheduled by percent of the sampling schedule: each keyframe's ``start_percent`` is
turned into a sigma (``start_t``) when sampling starts, and before each model call the group moves
to the last keyframe whose ``start_t`` the current sigma has reached, after the current one was
used for its ``guarantee_steps`` steps (see :meth:`HookKeyframeGroup.prepare_current_keyframe`).

Equality follows the reference: two hooks are equal when they are of one class and share a
``hook_ref`` (clones do), so a group combined from clones holds each hook once; a group itself is
compared by identity (the sampler groups conds by the group object).
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from plugins.core_nodes.models.extension import merge_nested_dicts


class EnumHookMode(enum.Enum):
    """Whether weights merged for a hook group may be kept between model calls."""

    MinVram = "minvram"
    MaxSpeed = "maxspeed"


class EnumHookType(enum.Enum):
    Weight = "weight"
    ObjectPatch = "object_patch"
    AdditionalModels = "add_models"
    TransformerOptions = "transformer_options"
    Injections = "add_injections"
    # Spellings of older references that packs may still name.
    AddModels = "add_models"
    Wrappers = "wrappers"


class EnumWeightTarget(enum.Enum):
    Model = "model"
    Clip = "clip"


class EnumHookScope(enum.Enum):
    """``AllConditioning``: the hook changes every model call; ``HookedOnly``: only its conds'."""

    AllConditioning = "all_conditioning"
    HookedOnly = "hooked_only"


class _HookRef:
    """Identity of a hook, shared by its clones."""


def default_should_register(hook: Hook, model: Any, model_options: Any, target_dict: Any, registered: Any) -> bool:
    return True


def create_target_dict(target: EnumWeightTarget | None = None, **kwargs: Any) -> dict[str, Any]:
    """The ``target_dict`` registration passes hooks: which model kind, plus anything a pack adds."""
    out: dict[str, Any] = {}
    if target is not None:
        out["target"] = target
    out.update(kwargs)
    return out


def _target_of(target_dict: Any) -> EnumWeightTarget | None:
    # Older packs pass the bare enum instead of a dict.
    if isinstance(target_dict, EnumWeightTarget):
        return target_dict
    if isinstance(target_dict, Mapping):
        return target_dict.get("target")
    return None


class Hook:
    """One change a conditioning carries; ``strength`` is its current keyframe's."""

    def __init__(
        self,
        hook_type: EnumHookType | None = None,
        hook_ref: _HookRef | None = None,
        hook_id: str | None = None,
        hook_keyframe: HookKeyframeGroup | None = None,
        hook_scope: EnumHookScope = EnumHookScope.AllConditioning,
    ) -> None:
        self.hook_type = hook_type
        self.hook_ref = hook_ref if hook_ref is not None else _HookRef()
        self.hook_id = hook_id
        self.hook_keyframe = hook_keyframe if hook_keyframe is not None else HookKeyframeGroup()
        self.custom_should_register: Callable[..., bool] = default_should_register
        self.auto_apply_to_nonpositive = False
        self.hook_scope = hook_scope

    @property
    def strength(self) -> float:
        return self.hook_keyframe.strength

    def initialize_timesteps(self, model: Any) -> None:
        """Sampling starts on ``model``: keyframes back to the first, their percents as sigmas."""
        self.reset()
        self.hook_keyframe.initialize_timesteps(model)

    def reset(self) -> None:
        self.hook_keyframe.reset()

    def clone(self) -> Hook:
        """A hook equal to this one; the keyframe group is shared (its state is the hook's)."""
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin

    def should_register(self, model: Any, model_options: Any, target_dict: Any, registered: Any) -> bool:
        return bool(self.custom_should_register(self, model, model_options, target_dict, registered))

    def add_hook_patches(self, model: Any, model_options: Any, target_dict: Any, registered: Any) -> bool:
        raise NotImplementedError(f"{type(self).__name__} cannot be registered on a model")

    def on_apply(self, model: Any, transformer_options: dict[str, Any]) -> None:
        return None

    def on_unapply(self, model: Any, transformer_options: dict[str, Any]) -> None:
        return None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.hook_ref is getattr(other, "hook_ref", None)

    def __hash__(self) -> int:
        return hash(self.hook_ref)


class WeightHook(Hook):
    """Weight patches (a LoRA's, or ``model_as_lora`` differences) for the hooked conds only."""

    def __init__(self, strength_model: float = 1.0, strength_clip: float = 1.0) -> None:
        # Weights can only follow their conds: the scope is always HookedOnly.
        super().__init__(hook_type=EnumHookType.Weight, hook_scope=EnumHookScope.HookedOnly)
        self.weights: Mapping[str, Any] | None = None
        self.weights_clip: Mapping[str, Any] | None = None
        # True: ``weights`` is a LoRA state dict, read into patches for the model it lands on.
        self.need_weight_init = True
        self._strength_model = strength_model
        self._strength_clip = strength_clip

    @property
    def strength_model(self) -> float:
        return self._strength_model * self.strength

    @property
    def strength_clip(self) -> float:
        return self._strength_clip * self.strength

    def add_hook_patches(self, model: Any, model_options: Any, target_dict: Any, registered: Any) -> bool:
        if not self.should_register(model, model_options, target_dict, registered):
            return False
        target = _target_of(target_dict)
        clip = target == EnumWeightTarget.Clip
        strength = self._strength_clip if clip else self._strength_model
        if self.need_weight_init:
            from plugins.core_nodes.hooks.lora_patches import lora_patches_for

            patches = lora_patches_for(model, self.weights or {}, clip)
        else:
            patches = (self.weights_clip if clip else self.weights) or {}
        model.add_hook_patches(hook=self, patches=patches, strength_patch=strength)
        registered.add(self)
        return True


class ObjectPatchHook(Hook):
    def __init__(self, object_patches: dict[str, Any] | None = None) -> None:
        super().__init__(hook_type=EnumHookType.ObjectPatch)
        self.object_patches = object_patches

    def add_hook_patches(self, model: Any, model_options: Any, target_dict: Any, registered: Any) -> bool:
        raise NotImplementedError("ObjectPatchHook cannot be registered (the reference does not support it either)")


class AdditionalModelsHook(Hook):
    """Models to load beside the MODEL while sampling (always for every cond)."""

    def __init__(self, models: list[Any] | None = None, key: str | None = None) -> None:
        super().__init__(hook_type=EnumHookType.AdditionalModels)
        self.models = models
        self.key = key
        self.append_when_same = True

    def clone(self) -> AdditionalModelsHook:
        twin = super().clone()
        assert isinstance(twin, AdditionalModelsHook)
        twin.models = list(self.models) if self.models else self.models
        return twin

    def add_hook_patches(self, model: Any, model_options: Any, target_dict: Any, registered: Any) -> bool:
        if not self.should_register(model, model_options, target_dict, registered):
            return False
        registered.add(self)
        return True


AddModelsHook = AdditionalModelsHook


class TransformerOptionsHook(Hook):
    """Patches, wrappers or callbacks for ``transformer_options``: every model call's
    (``AllConditioning``) or only its conds' (``HookedOnly``)."""

    def __init__(
        self,
        transformers_dict: dict[str, Any] | None = None,
        hook_scope: EnumHookScope = EnumHookScope.AllConditioning,
    ) -> None:
        super().__init__(hook_type=EnumHookType.TransformerOptions, hook_scope=hook_scope)
        self.transformers_dict = transformers_dict

    def add_hook_patches(self, model: Any, model_options: Any, target_dict: Any, registered: Any) -> bool:
        if not self.should_register(model, model_options, target_dict, registered):
            return False
        if self.hook_scope == EnumHookScope.AllConditioning:
            add = {"transformer_options": self.transformers_dict or {}, "to_load_options": self.transformers_dict or {}}
        else:
            add = {"to_load_options": self.transformers_dict or {}}
        merge_nested_dicts(model_options, add, copy_dict1=False)
        registered.add(self)
        return True

    def on_apply_hooks(self, model: Any, transformer_options: dict[str, Any]) -> None:
        merge_nested_dicts(transformer_options, self.transformers_dict or {}, copy_dict1=False)


# The reference's older name for the same hook.
WrapperHook = TransformerOptionsHook


class InjectionsHook(Hook):
    def __init__(self, key: str | None = None, injections: list[Any] | None = None) -> None:
        super().__init__(hook_type=EnumHookType.Injections)
        self.key = key
        self.injections = injections

    def add_hook_patches(self, model: Any, model_options: Any, target_dict: Any, registered: Any) -> bool:
        raise NotImplementedError("InjectionsHook cannot be registered (the reference does not support it either)")


SetInjectionsHook = InjectionsHook


class HookGroup:
    """The hooks attached to one conditioning; each hook at most once (by ``hook_ref``)."""

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

    def clone_and_combine(self, other: HookGroup | None) -> HookGroup:
        group = self.clone()
        if other is not None:
            for hook in other.hooks:
                group.add(hook.clone())
        return group

    def set_keyframes_on_hooks(self, hook_kf: HookKeyframeGroup | None) -> None:
        """Every hook of the group follows one copy of ``hook_kf`` (None: no keyframes)."""
        keyframes = HookKeyframeGroup() if hook_kf is None else hook_kf.clone()
        for hook in self.hooks:
            hook.hook_keyframe = keyframes

    def get_dict_repr(self) -> dict[EnumHookType | None, dict[Hook, None]]:
        out: dict[EnumHookType | None, dict[Hook, None]] = {}
        for hook in self.hooks:
            out.setdefault(hook.hook_type, {})[hook] = None
        return out

    def get_hooks_for_clip_schedule(self) -> list[tuple[tuple[float, float], list[tuple[WeightHook, Any]]]]:
        """The percent ranges over which the weight hooks' strengths stay constant, each with the
        keyframe (or None: strength 1) of every weight hook there: how a CLIP encodes a
        scheduled prompt, one encoding per range."""
        per_hook: dict[Hook, list[tuple[tuple[float, float], HookKeyframe | None]]] = {}
        for hook in self.get_type(EnumHookType.Weight):
            keyframes = hook.hook_keyframe.keyframes
            if not keyframes:
                per_hook[hook] = [((0.0, 1.0), None)]
                continue
            ranges: list[tuple[tuple[float, float], HookKeyframe | None]] = []
            current = keyframes[0]
            for keyframe in keyframes:
                if keyframe.start_percent > current.start_percent and not math.isclose(
                    keyframe.strength, current.strength
                ):
                    ranges.append(((current.start_percent, keyframe.start_percent), current))
                    current = keyframe
                elif keyframe.start_percent == current.start_percent:
                    current = keyframe
            if not math.isclose(current.start_percent, 1.0):
                ranges.append(((current.start_percent, 1.0), current))
            per_hook[hook] = ranges
        bounds = sorted({0.0, *itertools.chain.from_iterable(r for rs in per_hook.values() for r, _ in rs)})
        out = []
        for low, high in itertools.pairwise(bounds):
            picks: list[tuple[WeightHook, Any]] = []
            for hook, ranges in per_hook.items():
                found = next((kf for (a, b), kf in ranges if a < high and b > low), None)
                picks.append((hook, found))  # type: ignore[arg-type]
            out.append(((low, high), picks))
        return out

    def reset(self) -> None:
        for hook in self.hooks:
            hook.reset()

    @staticmethod
    def combine_all_hooks(hooks_list: Iterable[HookGroup | None], require_count: int = 0) -> HookGroup | None:
        """One group of all the given groups' hooks (None when none given; a single group as is)."""
        groups = [g for g in hooks_list if g is not None]
        if len(groups) < require_count:
            raise ValueError(f"Need at least {require_count} hooks to combine, but only had {len(groups)}.")
        if not groups:
            return None
        if len(groups) == 1:
            return groups[0]
        combined = groups[0].clone()
        for group in groups[1:]:
            combined = combined.clone_and_combine(group)
        return combined


class HookKeyframe:
    """A strength multiplier from ``start_percent`` on, held for at least ``guarantee_steps`` steps."""

    def __init__(self, strength: float, start_percent: float = 0.0, guarantee_steps: int = 1) -> None:
        self.strength = strength
        self.start_percent = float(start_percent)
        # A sigma above any schedule's until sampling sets it from start_percent.
        self.start_t = 999999999.9
        self.guarantee_steps = guarantee_steps

    def get_effective_guarantee_steps(self, max_sigma: torch.Tensor | float) -> int:
        """A keyframe starting before this run's first sigma guarantees nothing."""
        if self.start_t > max_sigma:
            return 0
        return self.guarantee_steps

    def clone(self) -> HookKeyframe:
        twin = HookKeyframe(self.strength, self.start_percent, self.guarantee_steps)
        twin.start_t = self.start_t
        return twin


def _stable_sort_by_start(keyframes: list[HookKeyframe]) -> list[HookKeyframe]:
    # Keyframes with equal start keep their order of addition (the later one wins there).
    return sorted(keyframes, key=lambda k: k.start_percent)


class HookKeyframeGroup:
    """A hook's keyframes and where sampling is in them."""

    def __init__(self) -> None:
        self.keyframes: list[HookKeyframe] = []
        self._current_keyframe: HookKeyframe | None = None
        self._current_used_steps = 0
        self._current_index = 0
        self._current_strength: float | None = None
        self._curr_t: Any = -1.0

    @property
    def strength(self) -> float:
        if self._current_keyframe is not None:
            return self._current_keyframe.strength
        return 1.0

    def reset(self) -> None:
        # The reference leaves the last seen sigma (_curr_t) as it was: a new run whose first
        # sigma equals the old run's last one does not count that first call as a step.
        self._current_keyframe = None
        self._current_used_steps = 0
        self._current_index = 0
        self._current_strength = None
        self._set_first_as_current()

    def add(self, keyframe: HookKeyframe) -> None:
        self.keyframes.append(keyframe)
        self.keyframes = _stable_sort_by_start(self.keyframes)
        self._set_first_as_current()

    def _set_first_as_current(self) -> None:
        self._current_keyframe = self.keyframes[0] if self.keyframes else None

    def has_guarantee_steps(self) -> bool:
        return any(k.guarantee_steps > 0 for k in self.keyframes)

    def has_index(self, index: int) -> bool:
        return 0 <= index < len(self.keyframes)

    def is_empty(self) -> bool:
        return not self.keyframes

    def clone(self) -> HookKeyframeGroup:
        twin = HookKeyframeGroup()
        twin.keyframes = [k.clone() for k in self.keyframes]
        twin._set_first_as_current()
        return twin

    def initialize_timesteps(self, model: Any) -> None:
        sampling = model.model_sampling
        for keyframe in self.keyframes:
            keyframe.start_t = sampling.percent_to_sigma(keyframe.start_percent)

    def prepare_current_keyframe(self, curr_t: Any, transformer_options: Mapping[str, Any] | None = None) -> bool:
        """Move to the keyframe for sigma ``curr_t`` (one step per distinct sigma); True when the
        strength changed. ``transformer_options["sample_sigmas"]`` gives this run's first sigma:
        keyframes starting before it guarantee no steps."""
        if self.is_empty() or self._current_keyframe is None:
            return False
        if bool(curr_t == self._curr_t):
            return False
        sigmas = (transformer_options or {}).get("sample_sigmas")
        max_sigma = torch.max(sigmas) if sigmas is not None else curr_t
        prev_index, prev_strength = self._current_index, self._current_strength
        if self._current_used_steps >= self._current_keyframe.get_effective_guarantee_steps(max_sigma):
            for i in range(self._current_index + 1, len(self.keyframes)):
                candidate = self.keyframes[i]
                # Sigmas fall as sampling goes on: a keyframe starts once curr_t is at or below it.
                if not bool(candidate.start_t >= curr_t):
                    break
                self._current_index = i
                self._current_strength = candidate.strength
                self._current_keyframe = candidate
                self._current_used_steps = 0
                if candidate.get_effective_guarantee_steps(max_sigma) > 0:
                    break
        self._current_used_steps += 1
        self._curr_t = curr_t
        return prev_index != self._current_index and prev_strength != self._current_strength


class InterpolationMethod:
    """How keyframe strengths are spread between two values (the keyframe nodes' combo)."""

    LINEAR = "linear"
    EASE_IN = "ease_in"
    EASE_OUT = "ease_out"
    EASE_IN_OUT = "ease_in_out"

    _LIST = [LINEAR, EASE_IN, EASE_OUT, EASE_IN_OUT]

    @classmethod
    def get_weights(cls, num_from: float, num_to: float, length: int, method: str, reverse: bool = False) -> torch.Tensor:
        """``length`` values from ``num_from`` to ``num_to`` along ``method``'s curve."""
        if method == cls.LINEAR:
            return _maybe_flip(torch.linspace(num_from, num_to, length), reverse)
        p = torch.linspace(0, 1, length)
        if method == cls.EASE_IN:
            curve = p**2
        elif method == cls.EASE_OUT:
            curve = 1 - (1 - p) ** 2
        elif method == cls.EASE_IN_OUT:
            curve = (1 - torch.cos(p * math.pi)) / 2
        else:
            raise ValueError(f"Unrecognized interpolation method '{method}'.")
        return _maybe_flip((num_to - num_from) * curve + num_from, reverse)


def _maybe_flip(weights: torch.Tensor, reverse: bool) -> torch.Tensor:
    return weights.flip(dims=(0,)) if reverse else weights


# --- building groups ----------------------------------------------------------------------------


def create_hook_lora(lora: Mapping[str, torch.Tensor], strength_model: float, strength_clip: float) -> HookGroup:
    """A group with one weight hook carrying the LoRA state dict ``lora``."""
    group = HookGroup()
    hook = WeightHook(strength_model=strength_model, strength_clip=strength_clip)
    hook.weights = lora
    group.add(hook)
    return group


def create_hook_model_as_lora(
    weights_model: Mapping[str, torch.Tensor] | None,
    weights_clip: Mapping[str, torch.Tensor] | None,
    strength_model: float,
    strength_clip: float,
) -> HookGroup:
    """A group with one weight hook moving each weight towards another checkpoint's (by key):
    ``weight + strength * (theirs - original)``."""
    group = HookGroup()
    hook = WeightHook(strength_model=strength_model, strength_clip=strength_clip)
    if weights_model is not None:
        hook.weights = {k: ("model_as_lora", (v,)) for k, v in weights_model.items()}
    if weights_clip is not None:
        hook.weights_clip = {k: ("model_as_lora", (v,)) for k, v in weights_clip.items()}
    hook.need_weight_init = False
    group.add(hook)
    return group


def get_patch_weights_from_model(model: Any, discard_model_sampling: bool = True) -> dict[str, torch.Tensor] | None:
    """A MODEL's (or CLIP patcher's) weights by state-dict key, without the noise schedule's
    buffers (which must never act as a patch)."""
    if model is None:
        return None
    weights = dict(model.model.state_dict())
    if discard_model_sampling:
        weights = {k: v for k, v in weights.items() if not k.startswith("model_sampling")}
    return weights


def load_hook_lora_for_models(
    model: Any, clip: Any, lora: Mapping[str, torch.Tensor], strength_model: float, strength_clip: float
) -> tuple[Any, Any, HookGroup]:
    """Register a LoRA as a weight hook directly on clones of ``model`` and ``clip``."""
    from plugins.core_nodes.hooks.lora_patches import lora_patches_for

    group = HookGroup()
    hook = WeightHook()
    group.add(hook)
    new_model = new_clip = None
    if model is not None:
        new_model = model.clone()
        new_model.add_hook_patches(hook=hook, patches=lora_patches_for(new_model, lora, False), strength_patch=strength_model)
    if clip is not None:
        new_clip = clip.clone()
        patcher = new_clip.patcher
        patcher.add_hook_patches(hook=hook, patches=lora_patches_for(patcher, lora, True), strength_patch=strength_clip)
    return new_model, new_clip, group


# --- hooks on conditioning ----------------------------------------------------------------------


def _set_values(cond: list[Any], values: Mapping[str, Any]) -> list[Any]:
    return [[entry[0], {**entry[1], **values}] for entry in cond]


def _combine_hooks_from_values(
    options: dict[str, Any], values: Mapping[str, Any], cache: dict[tuple[Any, Any], HookGroup]
) -> None:
    """``options["hooks"]`` joined with ``values["hooks"]``; one combined group per pair of groups."""
    if "hooks" not in values:
        return
    if "hooks" not in options:
        if values.get("hooks") is not None:
            options["hooks"] = values["hooks"]
        return
    pair = (options["hooks"], values["hooks"])
    key = (id(pair[0]), id(pair[1]))
    if key not in cache:
        cache[key] = pair[0].clone_and_combine(pair[1])
    options["hooks"] = cache[key]


def conditioning_set_values_with_hooks(
    conditioning: list[Any],
    values: Mapping[str, Any] | None = None,
    append_hooks: bool = True,
    cache: dict[tuple[Any, Any], HookGroup] | None = None,
) -> list[Any]:
    """Each entry with ``values`` set; ``hooks`` joins the entry's own group when ``append_hooks``."""
    values = values or {}
    cache = {} if cache is None else cache
    out = []
    for entry in conditioning:
        options = dict(entry[1])
        for key, value in values.items():
            if append_hooks and key == "hooks":
                _combine_hooks_from_values(options, values, cache)
            else:
                options[key] = value
        out.append([entry[0], options])
    return out


def set_hooks_for_conditioning(
    cond: list[Any], hooks: HookGroup | None, append_hooks: bool = True, cache: dict[Any, Any] | None = None
) -> list[Any]:
    if hooks is None:
        return cond
    return conditioning_set_values_with_hooks(cond, {"hooks": hooks}, append_hooks=append_hooks, cache=cache)


def set_timesteps_for_conditioning(cond: list[Any], timestep_range: tuple[float, float] | None) -> list[Any]:
    if timestep_range is None:
        return cond
    return _set_values(cond, {"start_percent": timestep_range[0], "end_percent": timestep_range[1]})


def set_mask_for_conditioning(cond: list[Any], mask: torch.Tensor | None, set_cond_area: str, strength: float) -> list[Any]:
    if mask is None:
        return cond
    if mask.ndim < 3:
        mask = mask.unsqueeze(0)
    values = {"mask": mask, "set_area_to_bounds": set_cond_area != "default", "mask_strength": strength}
    return _set_values(cond, values)


def combine_conditioning(conds: Iterable[list[Any]]) -> list[Any]:
    return [entry for cond in conds for entry in cond]


def combine_with_new_conds(conds: list[list[Any]], new_conds: list[list[Any]]) -> list[list[Any]]:
    return [combine_conditioning([c, n]) for c, n in zip(conds, new_conds, strict=False)]


def set_conds_props(
    conds: list[list[Any]],
    strength: float,
    set_cond_area: str,
    mask: torch.Tensor | None = None,
    hooks: HookGroup | None = None,
    timesteps_range: tuple[float, float] | None = None,
    append_hooks: bool = True,
) -> list[list[Any]]:
    """Each conditioning with ``hooks`` attached, the mask (its strength and area mode) and the
    timestep range set."""
    cache: dict[Any, Any] = {}
    out = []
    for cond in conds:
        cond = set_hooks_for_conditioning(cond, hooks, append_hooks=append_hooks, cache=cache)
        cond = set_mask_for_conditioning(cond, mask, set_cond_area, strength)
        out.append(set_timesteps_for_conditioning(cond, timesteps_range))
    return out


def set_conds_props_and_combine(
    conds: list[list[Any]],
    new_conds: list[list[Any]],
    strength: float = 1.0,
    set_cond_area: str = "default",
    mask: torch.Tensor | None = None,
    hooks: HookGroup | None = None,
    timesteps_range: tuple[float, float] | None = None,
    append_hooks: bool = True,
) -> list[list[Any]]:
    """Each of ``conds`` followed by its partner of ``new_conds``, the partner given the props."""
    cache: dict[Any, Any] = {}
    out = []
    for cond, new in zip(conds, new_conds, strict=False):
        new = set_hooks_for_conditioning(new, hooks, append_hooks=append_hooks, cache=cache)
        new = set_mask_for_conditioning(new, mask, set_cond_area, strength)
        new = set_timesteps_for_conditioning(new, timesteps_range)
        out.append(combine_conditioning([cond, new]))
    return out


def set_default_conds_and_combine(
    conds: list[list[Any]],
    new_conds: list[list[Any]],
    hooks: HookGroup | None = None,
    timesteps_range: tuple[float, float] | None = None,
    append_hooks: bool = True,
) -> list[list[Any]]:
    """Each of ``conds`` followed by its partner marked ``default``: sampled only where the other
    entries leave weight unused."""
    cache: dict[Any, Any] = {}
    out = []
    for cond, new in zip(conds, new_conds, strict=False):
        new = set_hooks_for_conditioning(new, hooks, append_hooks=append_hooks, cache=cache)
        new = _set_values(new, {"default": True})
        new = set_timesteps_for_conditioning(new, timesteps_range)
        out.append(combine_conditioning([cond, new]))
    return out


__all__ = [
    "AddModelsHook",
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
    "SetInjectionsHook",
    "TransformerOptionsHook",
    "WeightHook",
    "WrapperHook",
    "combine_conditioning",
    "combine_with_new_conds",
    "conditioning_set_values_with_hooks",
    "create_hook_lora",
    "create_hook_model_as_lora",
    "create_target_dict",
    "default_should_register",
    "get_patch_weights_from_model",
    "load_hook_lora_for_models",
    "set_conds_props",
    "set_conds_props_and_combine",
    "set_default_conds_and_combine",
    "set_hooks_for_conditioning",
    "set_mask_for_conditioning",
    "set_timesteps_for_conditioning",
]
