"""A MODEL's (or CLIP patcher's) hook state: the reference's ``ModelPatcher`` hook methods.

``hook_patches`` maps a hook's ``hook_ref`` to its weight patches by state-dict key (entries in
``add_patches``' layout); registration for one sampling run is undone by
:func:`restore_hook_patches`. :func:`apply_hooks` makes a hook group the current one
(``current_hooks``); the weights a model call then uses are the model's own patches followed by
the current group's, each hook's entries scaled by its keyframe strength at that moment
(:func:`get_combined_hook_patches`).

The server's own MODEL and CLIP merge weights per call (:func:`hooked_weights` builds those
views); a pack-built ``ModelPatcher`` over its own module is patched in place, as the reference
does (:func:`patch_hooks`).
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from plugins.core_nodes.hooks.core import EnumHookType, HookGroup, WeightHook
from plugins.core_nodes.models.weight_patches import add_entries, calculate_weight

# Merged weight sets kept per model for hooked groups (cond and uncond alternate every step).
_CACHE_SIZE = 4


def _copy_hook_patches(hook_patches: Mapping[Any, Mapping[str, list[Any]]]) -> dict[Any, dict[str, list[Any]]]:
    return {ref: {key: list(entries) for key, entries in patches.items()} for ref, patches in hook_patches.items()}


def register_all_hook_patches(
    patcher: Any,
    hooks: HookGroup | Mapping[Any, Any],
    target_dict: Any,
    model_options: dict[str, Any] | None = None,
    registered: HookGroup | None = None,
) -> HookGroup:
    """Register the weight hooks of ``hooks`` not registered yet; the state before is kept for
    :func:`restore_hook_patches`. Returns the group of hooks now registered."""
    restore_hook_patches(patcher)
    registered = HookGroup() if registered is None else registered
    if isinstance(hooks, HookGroup):
        weight_hooks = hooks.get_type(EnumHookType.Weight)
    else:  # an older pack's dict form: {hook type: {hook: None}}
        weight_hooks = list(hooks.get(EnumHookType.Weight, {}))
    todo = []
    for hook in weight_hooks:
        if hook.hook_ref in patcher.hook_patches:
            registered.add(hook)
        else:
            todo.append(hook)
    if todo:
        patcher.hook_patches_backup = _copy_hook_patches(patcher.hook_patches)
        for hook in todo:
            hook.add_hook_patches(patcher, model_options, target_dict, registered)
    return registered


def add_hook_patches(
    patcher: Any, hook: WeightHook, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
) -> list[Any]:
    """``hook``'s weight patches (keys as ``add_patches`` takes them); returns the keys that name
    a weight of the model."""
    mine = patcher.hook_patches.setdefault(hook.hook_ref, {})
    added = add_entries(mine, patcher._state_keys(), patches, strength_patch, strength_model)
    patcher.patches_uuid = uuid.uuid4()
    return added


def restore_hook_patches(patcher: Any) -> None:
    """Back to the hook patches registered before the last :func:`register_all_hook_patches`."""
    backup = getattr(patcher, "hook_patches_backup", None)
    if backup is not None:
        patcher.hook_patches = backup
    patcher.hook_patches_backup = None


def get_combined_hook_patches(patcher: Any, hooks: HookGroup | None) -> dict[str, list[Any]]:
    """Per key, the entries of every hook of ``hooks``, strengths times the hook's current one."""
    combined: dict[str, list[Any]] = {}
    if hooks is None:
        return combined
    for hook in hooks.hooks:
        strength = hook.strength
        for key, entries in patcher.hook_patches.get(hook.hook_ref, {}).items():
            out = combined.setdefault(key, [])
            if math.isclose(strength, 1.0):
                out.extend(entries)
            else:
                out.extend((e[0] * strength, *e[1:]) for e in entries)
    return combined


def prepare_hook_patches_current_keyframe(
    patcher: Any, t: torch.Tensor, hook_group: HookGroup, model_options: Mapping[str, Any] | None = None
) -> None:
    """Move each hook of ``hook_group`` to its keyframe for sigma ``t[0]``."""
    options = (model_options or {}).get("transformer_options", {})
    changed = False
    for hook in hook_group.hooks:
        changed |= hook.hook_keyframe.prepare_current_keyframe(t.reshape(-1)[0], options)
    current = getattr(patcher, "current_hooks", None)
    if changed and current is not None and getattr(patcher, "HOOKS_IN_PLACE", True):
        # Weights written in place carry the old strength: take them out (re-applied on use).
        if any(h in current.hooks for h in hook_group.hooks):
            patch_hooks(patcher, None)


def transformer_options_from_hooks(
    patcher: Any, hooks: HookGroup | None, transformer_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``transformer_options`` plus what the group's hooked-only option hooks add."""
    out = dict(transformer_options or {})
    if hooks is not None:
        for hook in hooks.get_type(EnumHookType.TransformerOptions):
            if hook.hook_scope.value == "hooked_only":
                hook.on_apply_hooks(patcher, out)  # type: ignore[attr-defined]
    return out


def apply_hooks(
    patcher: Any, hooks: HookGroup | None, transformer_options: Mapping[str, Any] | None = None, force_apply: bool = False
) -> dict[str, Any]:
    """Make ``hooks`` the group the next model calls run with."""
    if getattr(patcher, "HOOKS_IN_PLACE", True):
        if patcher.current_hooks is not hooks or force_apply:
            patch_hooks(patcher, hooks)
    else:
        patcher.current_hooks = hooks
    return transformer_options_from_hooks(patcher, hooks, transformer_options)


def clean_hooks(patcher: Any) -> None:
    unpatch_hooks(patcher)
    patcher.cached_hook_patches = {}
    patcher.current_hooks = None


# --- in place (a pack's own module) -----------------------------------------------------------


def patch_hooks(patcher: Any, hooks: HookGroup | None) -> None:
    """Write ``hooks``' weights into the module (the previous group's taken out first)."""
    from plugins.core_nodes.models.patcher import get_attr

    unpatch_hooks(patcher)
    if hooks is not None:
        combined = get_combined_hook_patches(patcher, hooks)
        original = {key: [(weight, None)] for key, weight in patcher.model_state_dict().items() if key in combined}
        for key, entries in combined.items():
            weight = get_attr(patcher.model, key)
            patcher.hook_backup[key] = weight.detach().clone()
            merged = calculate_weight(entries, weight.detach().float().clone(), key, original_weights=original)
            with torch.no_grad():
                weight.copy_(merged.to(weight.dtype))
    patcher.current_hooks = hooks


def unpatch_hooks(patcher: Any, whitelist_keys_set: set[str] | None = None) -> None:
    from plugins.core_nodes.models.patcher import get_attr

    backup = getattr(patcher, "hook_backup", {})
    for key in list(backup):
        if whitelist_keys_set and key not in whitelist_keys_set:
            continue
        with torch.no_grad():
            get_attr(patcher.model, key).copy_(backup.pop(key))
    patcher.current_hooks = None


# --- per call (the server's MODEL and CLIP) -----------------------------------------------------


def hook_signature(patcher: Any, hooks: HookGroup | None) -> tuple[Any, ...] | None:
    """What the merged weights of ``hooks`` depend on now (None when they change nothing)."""
    if hooks is None:
        return None
    parts = []
    for hook in hooks.hooks:
        patches = patcher.hook_patches.get(hook.hook_ref)
        if patches:
            parts.append((id(hook.hook_ref), id(patches), sum(map(len, patches.values())), float(hook.strength)))
    return tuple(parts) or None


def _merge_with_hooks(full_key: Callable[[str], str]) -> Callable[[str, torch.Tensor, Any], torch.Tensor]:
    def merge(name: str, weight: torch.Tensor, changes: tuple[Sequence[Any], Sequence[Any]]) -> torch.Tensor:
        own, hooked = changes
        key = full_key(name)
        # model_as_lora differences are taken from the weight before any patch.
        original = {key: [(weight.detach().clone(), None)]}
        merged = calculate_weight(own, weight.clone(), key) if own else weight
        return calculate_weight(hooked, merged, key, original_weights=original)

    return merge


def hooked_weights(
    owner: Any,
    module: torch.nn.Module,
    own: Mapping[str, Sequence[Any]],
    hooks: HookGroup,
    prefix: str,
    manager: Any = None,
    tracked: torch.nn.Module | None = None,
) -> Any:
    """``module`` seen through its own patches ``own`` (by our parameter name) and then the hook
    patches of ``hooks`` (keys ``prefix + name``), merged once per strength set and kept (a few
    sets per owner)."""
    from plugins.core_nodes.models.lora import PatchedWeights

    patcher = owner if hasattr(owner, "hook_patches") else owner.patcher
    signature = (
        getattr(patcher, "patches_uuid", None),
        id(module),
        tuple((k, len(v)) for k, v in own.items()),
        hook_signature(patcher, hooks),
    )
    cache: OrderedDict[Any, Any] = owner.__dict__.setdefault("_hooked_weights", OrderedDict())
    found = cache.get(signature)
    if found is not None:
        cache.move_to_end(signature)
        return found
    combined = get_combined_hook_patches(patcher, hooks)
    names = {k[len(prefix) :] for k in combined if k.startswith(prefix)}
    params = dict(module.named_parameters())
    by_param = {
        name: (tuple(own.get(name, ())), tuple(combined.get(prefix + name, ())))
        for name in set(own) | names
        if name in params
    }
    weights = PatchedWeights(module, by_param, merge=_merge_with_hooks(lambda n: prefix + n))
    if manager is not None and by_param:
        # The manager releases the merged tensors when it moves or drops the cached network.
        manager.track_derived(module if tracked is None else tracked, weights)
    cache[signature] = weights
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return weights


__all__ = [
    "add_hook_patches",
    "apply_hooks",
    "clean_hooks",
    "get_combined_hook_patches",
    "hook_signature",
    "hooked_weights",
    "patch_hooks",
    "prepare_hook_patches_current_keyframe",
    "register_all_hook_patches",
    "restore_hook_patches",
    "transformer_options_from_hooks",
    "unpatch_hooks",
]
