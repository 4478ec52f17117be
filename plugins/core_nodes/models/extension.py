"""Wrappers, callbacks and injections packs register on a MODEL (the reference's patcher extensions).

Packs (AnimateDiff-Evolved, Advanced-ControlNet, tooling-nodes) register functions by a *type*
(``WrappersMP.DIFFUSION_MODEL``, ``CallbacksMP.ON_PRE_RUN`` ...) and a *key* (their own name, so they
can find and remove theirs). Storage is a ``{type: {key: [functions]}}`` dict, either on the MODEL
(:class:`~plugins.core_nodes.models.patcher.ModelPatcher`) or in a ``transformer_options`` dict,
which is where the sampler puts a MODEL's wrappers for one run. A wrapper is called as
``wrapper(executor, *args, **kwargs)`` and continues the chain by calling ``executor(*args,
**kwargs)``; the last link is the wrapped function itself.

The names and string values are the reference's, because packs compare and store them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Registry = dict[str, dict[Any, list[Callable[..., Any]]]]


class CallbacksMP:
    """Callback types a MODEL runs at points of its life (the reference's string values)."""

    ON_CLONE = "on_clone"
    ON_LOAD = "on_load_after"
    ON_DETACH = "on_detach_after"
    ON_CLEANUP = "on_cleanup"
    ON_PRE_RUN = "on_pre_run"
    ON_PREPARE_STATE = "on_prepare_state"
    ON_APPLY_HOOKS = "on_apply_hooks"
    ON_REGISTER_ALL_HOOK_PATCHES = "on_register_all_hook_patches"
    ON_INJECT_MODEL = "on_inject_model"
    ON_EJECT_MODEL = "on_eject_model"

    @classmethod
    def init_callbacks(cls) -> Registry:
        """A new, empty ``{type: {key: [callbacks]}}`` registry."""
        return {}


class WrappersMP:
    """Wrapper types: which call a wrapper surrounds (the reference's string values)."""

    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    PREDICT_NOISE = "predict_noise"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

    @classmethod
    def init_wrappers(cls) -> Registry:
        """A new, empty ``{type: {key: [wrappers]}}`` registry."""
        return {}


def _section(options: dict[str, Any], is_model_options: bool, create: bool) -> dict[str, Any]:
    """The dict the registries live in: ``options`` itself, or its ``transformer_options``."""
    if not is_model_options:
        return options
    if create:
        return options.setdefault("transformer_options", {})
    return options.get("transformer_options", {})


def _add(kind: str, type_: str, key: Any, fn: Callable[..., Any], options: dict[str, Any], is_mo: bool) -> None:
    registry = _section(options, is_mo, create=True).setdefault(kind, {})
    registry.setdefault(type_, {}).setdefault(key, []).append(fn)


def _with_key(kind: str, type_: str, key: Any, options: dict[str, Any], is_mo: bool) -> list[Callable[..., Any]]:
    registry = _section(options, is_mo, create=False).get(kind, {})
    return list(registry.get(type_, {}).get(key, []))


def _all(kind: str, type_: str, options: dict[str, Any], is_mo: bool) -> list[Callable[..., Any]]:
    registry = _section(options, is_mo, create=False).get(kind, {})
    return [fn for fns in registry.get(type_, {}).values() for fn in fns]


def add_callback(
    call_type: str, callback: Callable[..., Any], transformer_options: dict[str, Any], is_model_options: bool = False
) -> None:
    add_callback_with_key(call_type, None, callback, transformer_options, is_model_options)


def add_callback_with_key(
    call_type: str,
    key: Any,
    callback: Callable[..., Any],
    transformer_options: dict[str, Any],
    is_model_options: bool = False,
) -> None:
    """Register ``callback`` under ``transformer_options["callbacks"][call_type][key]``."""
    _add("callbacks", call_type, key, callback, transformer_options, is_model_options)


def get_callbacks_with_key(
    call_type: str, key: Any, transformer_options: dict[str, Any], is_model_options: bool = False
) -> list[Callable[..., Any]]:
    return _with_key("callbacks", call_type, key, transformer_options, is_model_options)


def get_all_callbacks(
    call_type: str, transformer_options: dict[str, Any], is_model_options: bool = False
) -> list[Callable[..., Any]]:
    return _all("callbacks", call_type, transformer_options, is_model_options)


def add_wrapper(
    wrapper_type: str, wrapper: Callable[..., Any], transformer_options: dict[str, Any], is_model_options: bool = False
) -> None:
    add_wrapper_with_key(wrapper_type, None, wrapper, transformer_options, is_model_options)


def add_wrapper_with_key(
    wrapper_type: str,
    key: Any,
    wrapper: Callable[..., Any],
    transformer_options: dict[str, Any],
    is_model_options: bool = False,
) -> None:
    """Register ``wrapper`` under ``transformer_options["wrappers"][wrapper_type][key]``."""
    _add("wrappers", wrapper_type, key, wrapper, transformer_options, is_model_options)


def get_wrappers_with_key(
    wrapper_type: str, key: Any, transformer_options: dict[str, Any], is_model_options: bool = False
) -> list[Callable[..., Any]]:
    return _with_key("wrappers", wrapper_type, key, transformer_options, is_model_options)


def get_all_wrappers(
    wrapper_type: str, transformer_options: dict[str, Any], is_model_options: bool = False
) -> list[Callable[..., Any]]:
    return _all("wrappers", wrapper_type, transformer_options, is_model_options)


class WrapperExecutor:
    """One link of a wrapper chain around ``original``; ``class_obj`` is the object whose method
    is wrapped (wrappers read it as ``executor.class_obj``)."""

    def __init__(
        self, original: Callable[..., Any], class_obj: object, wrappers: list[Callable[..., Any]], idx: int
    ) -> None:
        self.original = original
        self.class_obj = class_obj
        self.wrappers = list(wrappers)
        self.idx = idx
        self.is_last = idx == len(self.wrappers)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Continue the chain: the next wrapper, or the original function after the last one."""
        return self._next().execute(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Start the chain at this link (a wrapper continues it with ``executor(...)`` instead)."""
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    def _next(self) -> WrapperExecutor:
        if self.idx + 1 > len(self.wrappers):
            raise RuntimeError("a wrapper called its executor after the wrapped function had run")
        return type(self)(self.original, self.class_obj, self.wrappers, self.idx + 1)

    @classmethod
    def new_executor(
        cls, original: Callable[..., Any], wrappers: list[Callable[..., Any]], idx: int = 0
    ) -> WrapperExecutor:
        return cls(original, None, wrappers, idx)

    @classmethod
    def new_class_executor(
        cls, original: Callable[..., Any], class_obj: object, wrappers: list[Callable[..., Any]], idx: int = 0
    ) -> WrapperExecutor:
        return cls(original, class_obj, wrappers, idx)


def run_wrapped(
    wrapper_type: str,
    options: dict[str, Any],
    original: Callable[..., Any],
    class_obj: object,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``original(*args, **kwargs)`` inside the ``wrapper_type`` wrappers of the transformer
    options ``options`` (called directly when there are none)."""
    wrappers = get_all_wrappers(wrapper_type, options)
    if not wrappers:
        return original(*args, **kwargs)
    return WrapperExecutor.new_class_executor(original, class_obj, wrappers).execute(*args, **kwargs)


class PatcherInjection:
    """A pair of functions a MODEL calls with itself to put something into its model and take it out."""

    def __init__(self, inject: Callable[..., Any], eject: Callable[..., Any]) -> None:
        self.inject = inject
        self.eject = eject


def copy_nested_dicts(input_dict: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy in which nested dicts are copied the same way and lists are copied; the rest is shared."""
    out = dict(input_dict)
    for key, value in input_dict.items():
        if isinstance(value, dict):
            out[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            out[key] = list(value)
    return out


def merge_nested_dicts(dict1: dict[Any, Any], dict2: Mapping[Any, Any], copy_dict1: bool = True) -> dict[Any, Any]:
    """``dict1`` with ``dict2`` merged in: nested dicts merged, lists concatenated, the rest replaced."""
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            current = merged.setdefault(key, {})
            merged[key] = merge_nested_dicts(value, current)
        elif isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged


def copy_registry(registry: Registry) -> Registry:
    """A clone's registry: its own dicts and lists, the same functions."""
    return {type_: {key: list(fns) for key, fns in by_key.items()} for type_, by_key in registry.items()}


__all__ = [
    "CallbacksMP",
    "PatcherInjection",
    "WrapperExecutor",
    "WrappersMP",
    "add_callback",
    "add_callback_with_key",
    "add_wrapper",
    "add_wrapper_with_key",
    "copy_nested_dicts",
    "copy_registry",
    "get_all_callbacks",
    "get_all_wrappers",
    "get_callbacks_with_key",
    "get_wrappers_with_key",
    "merge_nested_dicts",
]
