"""Hooks in a sampling run: the reference's ``comfy.samplers`` / ``comfy.sampler_helpers`` steps.

The guider calls :func:`begin_sampling` before a run (the hooks found on its conds, and its
ControlNets' extra hooks, are registered on the MODEL; the run's ``model_options`` learn which
under ``registered_hooks``) and :func:`end_sampling` after (registrations undone, weights back to
the MODEL's own). :func:`prepare_conds` drops from each cond the hooks that were not registered
and starts every remaining hook's keyframes at this run's schedule.

For each model evaluation, ``calc_cond_batch`` groups the active conds by hook group: each cond's
hooks move to the keyframe of the current sigma (:func:`prepare_keyframes`), and each group's
model calls run with that group's weights (:func:`apply_group`). Conds without hooks run with the
MODEL's own weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import torch

from plugins.core_nodes.hooks.core import (
    EnumHookType,
    EnumWeightTarget,
    HookGroup,
    create_target_dict,
)
from plugins.core_nodes.models.extension import merge_nested_dicts


def _control_extra_hooks(conds: Iterable[Mapping[str, Any]]) -> list[HookGroup]:
    seen: dict[int, Any] = {}
    for c in conds:
        control = c.get("control")
        if control is not None:
            seen.setdefault(id(control), control)
    out: list[HookGroup] = []
    for control in seen.values():
        get = getattr(control, "get_extra_hooks", None)
        if callable(get):
            out.extend(get())
    return out


def _entry_hooks(entries: Sequence[Mapping[str, Any]]) -> Iterator[Any]:
    """The hooks of each cond entry that carries some, in order."""
    for c in entries:
        hooks = c.get("hooks")
        if hooks is not None:
            yield from hooks.hooks


def get_hooks_from_conds(conds: Mapping[str, Sequence[Mapping[str, Any]]]) -> HookGroup:
    """Every hook the conds carry, and their ControlNets' extra hooks, each once."""
    found = HookGroup()
    for entries in conds.values():
        for hook in _entry_hooks(entries):
            found.add(hook)
        extra = HookGroup.combine_all_hooks(_control_extra_hooks(entries))
        if extra is not None:
            for hook in extra.hooks:
                found.add(hook)
    return found


def preprocess_conds_hooks(conds: Mapping[str, list[MutableMapping[str, Any]]]) -> None:
    """A cond whose ControlNet carries extra hooks gets them joined to its own (one combined
    group per ControlNet and group, so those conds still share calls)."""
    replacements: dict[tuple[int, int], tuple[Any, Any, list[MutableMapping[str, Any]]]] = {}
    for entries in conds.values():
        for c in entries:
            control = c.get("control")
            get = getattr(control, "get_extra_hooks", None)
            if control is None or not callable(get) or not get():
                continue
            hooks = c.get("hooks")
            slot = replacements.setdefault((id(control), id(hooks)), (control, hooks, []))
            slot[2].append(c)
    for control, hooks, targets in replacements.values():
        combined = HookGroup.combine_all_hooks([*control.get_extra_hooks(), hooks])
        if combined is not None:
            for c in targets:
                c["hooks"] = combined


def get_total_hook_groups_in_conds(conds: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    return len({id(c.get("hooks")) for entries in conds.values() for c in entries})


def begin_sampling(model: Any, conds: Mapping[str, list[MutableMapping[str, Any]]], model_options: dict[str, Any]) -> bool:
    """Register the conds' hooks on ``model`` (a MODEL) for one run; True when something was.
    ``conds`` are left as they are."""
    conds = {k: [dict(c) for c in v] for k, v in conds.items()}
    preprocess_conds_hooks(conds)
    hooks = get_hooks_from_conds(conds)
    if not len(hooks) or not hasattr(model, "hook_patches"):
        return False
    registered = HookGroup()
    target = create_target_dict(EnumWeightTarget.Model)
    for kind in (EnumHookType.TransformerOptions, EnumHookType.AdditionalModels):
        for hook in hooks.get_type(kind):
            hook.add_hook_patches(model, model_options, target, registered)
    model.register_all_hook_patches(hooks, target, model_options, registered)
    if len(registered):
        model_options["registered_hooks"] = registered
    return True


def end_sampling(model: Any) -> None:
    """The run is over: its registrations undone and no hook group applied."""
    restore = getattr(model, "restore_hook_patches", None)
    if callable(restore):
        restore()
    clean = getattr(model, "clean_hooks", None)
    if callable(clean):
        clean()


def filter_registered_hooks_on_conds(
    conds: Mapping[str, list[MutableMapping[str, Any]]], model_options: Mapping[str, Any]
) -> None:
    """Each cond keeps only the hooks registered for this run (its group replaced by a group of
    the common hooks, shared by the conds that had the same group; None when none is left)."""
    registered: HookGroup | None = model_options.get("registered_hooks")
    if registered is None:
        for entries in conds.values():
            for c in entries:
                c.pop("hooks", None)
        return
    replaced: dict[int, tuple[HookGroup, list[MutableMapping[str, Any]]]] = {}
    for entries in conds.values():
        for c in entries:
            hooks = c.get("hooks")
            if hooks is not None and not hooks.is_subset_of(registered):
                replaced.setdefault(id(hooks), (hooks, []))[1].append(c)
    for hooks, targets in replaced.values():
        common = hooks.new_with_common_hooks(registered)
        for c in targets:
            c["hooks"] = common if len(common) else None


def prepare_conds(model: Any, conds: Mapping[str, list[MutableMapping[str, Any]]], model_options: Mapping[str, Any]) -> None:
    """Before the conds are processed: unregistered hooks dropped, the others' keyframes set to
    this run's schedule (``model`` is the sampler's model view: its ``model_sampling``)."""
    preprocess_conds_hooks(conds)
    filter_registered_hooks_on_conds(conds, model_options)
    for entries in conds.values():
        for hook in _entry_hooks(entries):
            hook.initialize_timesteps(model)


def prepare_keyframes(model: Any, timestep: torch.Tensor, hooks: HookGroup | None, model_options: Mapping[str, Any]) -> None:
    """An active cond's hooks move to their keyframe for ``timestep`` (once per sigma)."""
    if hooks is None:
        return
    patcher = getattr(model, "current_patcher", None)
    prepare = getattr(patcher, "prepare_hook_patches_current_keyframe", None)
    if callable(prepare):
        prepare(timestep, hooks, model_options)


def apply_group(model: Any, hooks: HookGroup | None, model_options: Mapping[str, Any]) -> dict[str, Any]:
    """The next model calls run with ``hooks``' weights; their ``transformer_options`` (what the
    group adds, then the run's own)."""
    patcher = getattr(model, "current_patcher", None)
    apply = getattr(patcher, "apply_hooks", None)
    own = model_options.get("transformer_options", {})
    if not callable(apply):
        return dict(own)
    from_hooks = apply(hooks=hooks)
    if not from_hooks:
        return dict(own)
    return merge_nested_dicts(dict(from_hooks), own, copy_dict1=False)


__all__ = [
    "apply_group",
    "begin_sampling",
    "end_sampling",
    "filter_registered_hooks_on_conds",
    "get_hooks_from_conds",
    "get_total_hook_groups_in_conds",
    "prepare_conds",
    "prepare_keyframes",
    "preprocess_conds_hooks",
]
