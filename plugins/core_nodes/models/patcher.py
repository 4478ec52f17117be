"""The MODEL object's API (the reference's ``comfy.model_patcher.ModelPatcher``), for our models and packs'.

A MODEL is a model plus what is to be done to it when it runs: ``model_options`` (cfg functions,
``transformer_options`` with attention and block patches), ``patches`` (weight changes by state-dict
key, see :mod:`~plugins.core_nodes.models.weight_patches`), ``object_patches`` (attributes replaced,
by dotted path), wrappers, callbacks, injections and attachments. Packs copy a MODEL with
:meth:`ModelPatcher.clone` and change the copy; the model itself is shared by all copies.

This base class is what packs construct and subclass around their own ``nn.Module``s
(``ModelPatcher(model, load_device, offload_device)``): for those, :meth:`patch_model` writes the
weight and object patches into the module and :meth:`unpatch_model` restores it, as the reference
does. The server's own MODEL (``adapters.DiffusionModel``) overrides both to leave the cached
network untouched and applies its patches per call instead.

The setters write the reference's ``model_options`` keys; the module-level helpers
(:func:`set_model_options_patch_replace` ...) are the reference's too.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from plugins.core_nodes.models import weight_patches
from plugins.core_nodes.models.extension import (
    CallbacksMP,
    PatcherInjection,
    WrappersMP,
    copy_nested_dicts,
    copy_registry,
)

log = logging.getLogger("comfykernel.core_nodes")


# --- model_options helpers (module-level in the reference) ---------------------------------------


def set_model_options_patch_replace(
    model_options: dict[str, Any],
    patch: Any,
    name: str,
    block_name: str,
    number: int,
    transformer_index: int | None = None,
) -> dict[str, Any]:
    """Put ``patch`` at ``transformer_options["patches_replace"][name][(block_name, number[, index])]``,
    copying the dicts on the way so that a clone sharing them is left alone."""
    to = dict(model_options["transformer_options"])
    replace = dict(to.get("patches_replace", {}))
    table = dict(replace.get(name, {}))
    key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    table[key] = patch
    replace[name] = table
    to["patches_replace"] = replace
    model_options["transformer_options"] = to
    return model_options


def set_model_options_post_cfg_function(
    model_options: dict[str, Any], post_cfg_function: Callable[..., Any], disable_cfg1_optimization: bool = False
) -> dict[str, Any]:
    model_options["sampler_post_cfg_function"] = [*model_options.get("sampler_post_cfg_function", []), post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def set_model_options_pre_cfg_function(
    model_options: dict[str, Any], pre_cfg_function: Callable[..., Any], disable_cfg1_optimization: bool = False
) -> dict[str, Any]:
    model_options["sampler_pre_cfg_function"] = [*model_options.get("sampler_pre_cfg_function", []), pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def create_model_options_clone(orig_model_options: Mapping[str, Any]) -> dict[str, Any]:
    """A clone's ``model_options``: nested dicts and lists copied, the patch functions shared."""
    return copy_nested_dicts(orig_model_options)


def wipe_lowvram_weight(m: nn.Module) -> None:
    """Drop a module's per-call weight functions (the reference's low-VRAM casting state)."""
    if hasattr(m, "prev_comfy_cast_weights"):
        m.comfy_cast_weights = m.prev_comfy_cast_weights
        del m.prev_comfy_cast_weights
    m.weight_function = None
    m.bias_function = None


# --- attribute paths ---------------------------------------------------------------------------


def get_attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_attr(obj: Any, path: str, value: Any) -> Any:
    """Set ``obj.<path>`` to ``value``; returns the value it had."""
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    old = getattr(obj, last)
    setattr(obj, last, value)
    return old


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object sharing ``module``'s parameters, buffers and children, with its own
    tables of them (so one can be swapped on the copy alone)."""
    twin = copy.copy(module)
    for table in ("_modules", "_parameters", "_buffers"):
        twin.__dict__[table] = dict(module.__dict__[table])
    return twin


def object_view(root: nn.Module, patches: Mapping[str, Any]) -> nn.Module:
    """``root`` with the attribute at each dotted path of ``patches`` replaced, built by copying only
    the modules on those paths: ``root`` and everything it holds stay as they are."""
    view = _shallow(root)
    for path, obj in patches.items():
        *parents, last = path.split(".")
        node: Any = view
        for part in parents:
            child = getattr(node, part)
            if isinstance(node, nn.Module) and part in node._modules and isinstance(child, nn.Module):
                child = _shallow(child)
                node._modules[part] = child
            else:
                child = copy.copy(child)
                setattr(node, part, child)
            node = child
        setattr(node, last, obj)
    return view


def module_size(module: Any) -> int:
    """Bytes of a module's parameters and buffers (0 for anything else)."""
    if not isinstance(module, nn.Module):
        return 0
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class ModelPatcher:
    """A model and the changes to make when it runs (see the module docstring)."""

    # Hook weights are written into the module (a pack's own); the server's MODEL and CLIP
    # merge them per call instead.
    HOOKS_IN_PLACE: ClassVar[bool] = True

    def __init__(
        self,
        model: Any,
        load_device: torch.device | str | None = None,
        offload_device: torch.device | str | None = None,
        size: int = 0,
        weight_inplace_update: bool = False,
    ) -> None:
        self.size = size
        self.model = model
        if getattr(model, "device", None) is None:
            with contextlib.suppress(AttributeError, TypeError):
                model.device = offload_device
        self.patches: dict[str, list[Any]] = {}
        self.backup: dict[str, tuple[torch.Tensor, bool]] = {}
        self.object_patches: dict[str, Any] = {}
        self.object_patches_backup: dict[str, Any] = {}
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.patches_uuid = uuid.uuid4()
        self.parent: ModelPatcher | None = None
        self.attachments: dict[str, Any] = {}
        self.additional_models: dict[str, list[ModelPatcher]] = {}
        self.callbacks = CallbacksMP.init_callbacks()
        self.wrappers = WrappersMP.init_wrappers()
        self.is_injected = False
        self.skip_injection = False
        self.injections: dict[str, list[PatcherInjection]] = {}
        # Hooks (plugins.core_nodes.hooks): weight patches by hook, the group applied now.
        self.hook_patches: dict[Any, Any] = {}
        self.hook_patches_backup: dict[Any, Any] | None = None
        self.hook_backup: dict[str, Any] = {}
        self.cached_hook_patches: dict[Any, Any] = {}
        self.current_hooks: Any = None
        self.forced_hooks: Any = None
        self.is_clip = False
        self.hook_mode: Any = None
        self.model_size()

    # --- sampling a pack-built MODEL ----------------------------------------------------------------

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Mapping[str, Any],
        transformer_options: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """The denoised latent, as the sampler asks a MODEL: through the model's ``apply_model``
        (a ``BaseModel``), on the compute device, with this MODEL's weight and object patches
        written in for the call and taken out after (the reference keeps them in while the model
        is loaded).

        The model manager moves the model (and the modules its patches and additional models
        hold) to the compute device first, as it does for the server's own MODEL, so a pack's
        patcher class (ComfyUI-GGUF's swaps the class of a loaded MODEL) runs there too; the
        inputs go there with it and the result comes back to the caller's device."""
        apply = getattr(self.model, "apply_model", None)
        if not callable(apply):
            raise TypeError(f"a MODEL over {type(self.model).__name__} cannot be sampled: it has no apply_model")
        options = {**self.model_options.get("transformer_options", {}), **(transformer_options or {})}
        with self._on_compute_device() as device:
            rest = {k: _to_device(v, device) for k, v in cond.items()}
            args = (rest.pop("c_concat", None), rest.pop("c_crossattn", None), rest.pop("control", None))
            patched = bool(self.patches or self.object_patches)
            if patched:
                self.patch_model()
            try:
                out = apply(_to_device(x, device), _to_device(sigma, device), *args, options, **rest)
            finally:
                if patched:
                    self.unpatch_model()
        return out.to(x.device)

    def _sampling_manager(self) -> Any:
        """The model manager that places this MODEL: its own (the server's MODEL keeps one, and a
        pack's class swapped onto it inherits it), else the running server's, else None."""
        from plugins.core_nodes.models.manager import ModelManager, get_manager

        own = self.__dict__.get("manager")
        if isinstance(own, ModelManager):
            return own
        from plugins.core_nodes.serving import current_kernel

        kernel = current_kernel()
        return get_manager(kernel) if kernel is not None else None

    @contextlib.contextmanager
    def _on_compute_device(self) -> Iterator[torch.device | None]:
        """The model and the modules its patches / additional models hold on the compute device
        for the block (yields it; None where no manager places models, nothing moves then)."""
        manager = self._sampling_manager()
        if manager is None or not isinstance(self.model, nn.Module):
            yield None
            return
        modules: list[nn.Module] = [self.model, *self.model_patches_models()]
        modules += [p.model for p in self.get_nested_additional_models() if isinstance(p.model, nn.Module)]
        with manager.use(*modules) as device:
            yield device

    def __getattr__(self, name: str) -> Any:
        # What the sampler reads off a MODEL, for a pack-built one: its model's parts. Only
        # reached when the attribute is not set, so packs may still assign these names.
        if name in ("model_sampling", "latent_format") and "model" in self.__dict__:
            return self.get_model_object(name)
        if name == "concat_channels" and "model" in self.__dict__:
            channels = getattr(self.__dict__["model"], "concat_channels", None)
            return channels() if callable(channels) else 0
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # --- size and place ------------------------------------------------------------------------

    def model_size(self) -> int:
        if self.size > 0:
            return self.size
        self.size = module_size(self.model)
        return self.size

    def loaded_size(self) -> int:
        loaded = getattr(self.model, "model_loaded_weight_memory", 0)
        return int(loaded) if loaded else self.model_size()

    def lowvram_patch_counter(self) -> int:
        return 0

    def current_loaded_device(self) -> Any:
        return getattr(self.model, "device", self.offload_device)

    def model_dtype(self) -> torch.dtype | None:
        get_dtype = getattr(self.model, "get_dtype", None)
        if get_dtype is not None:
            return get_dtype()
        first = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        return first.dtype if first is not None else None

    def memory_required(self, input_shape: Any) -> Any:
        return self.model.memory_required(input_shape=input_shape)

    # --- copies --------------------------------------------------------------------------------

    def clone(self) -> ModelPatcher:
        """A new MODEL over the same model: its own patches, options and registries, the same functions."""
        n = type(self).__new__(type(self))
        n.__dict__.update(self.__dict__)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.object_patches = dict(self.object_patches)
        n.model_options = create_model_options_clone(self.model_options)
        n.parent = self
        n.attachments = {
            k: a.on_model_patcher_clone() if hasattr(a, "on_model_patcher_clone") else a
            for k, a in self.attachments.items()
        }
        n.additional_models = {k: [m.clone() for m in ms] for k, ms in self.additional_models.items()}
        n.callbacks = copy_registry(self.callbacks)
        n.wrappers = copy_registry(self.wrappers)
        n.injections = {k: list(v) for k, v in self.injections.items()}
        n.hook_patches = {ref: {k: list(v) for k, v in ps.items()} for ref, ps in self.hook_patches.items()}
        n.hook_patches_backup = None if self.hook_patches_backup is None else dict(self.hook_patches_backup)
        n.hook_backup = {}
        n.cached_hook_patches = dict(self.cached_hook_patches)
        for callback in self.get_all_callbacks(CallbacksMP.ON_CLONE):
            callback(self, n)
        return n

    def is_clone(self, other: Any) -> bool:
        return getattr(other, "model", None) is self.model

    def clone_has_same_weights(self, clone: Any) -> bool:
        if not self.is_clone(clone):
            return False
        if self.attachments.keys() != clone.attachments.keys():
            return False
        if self.additional_models.keys() != clone.additional_models.keys():
            return False
        if self.injections.keys() != clone.injections.keys():
            return False
        for key in self.callbacks:
            if len(self.callbacks[key]) != len(clone.callbacks.get(key, {})):
                return False
        for key in self.wrappers:
            if len(self.wrappers[key]) != len(clone.wrappers.get(key, {})):
                return False
        if not self.patches and not clone.patches:
            return True
        return self.patches_uuid == clone.patches_uuid and len(self.patches) == len(clone.patches)

    # --- model_options setters (the reference's keys) ------------------------------------------

    def set_model_sampler_cfg_function(
        self, sampler_cfg_function: Callable[..., Any], disable_cfg1_optimization: bool = False
    ) -> None:
        """``model_options["sampler_cfg_function"]``; an old three-argument ``(cond, uncond, scale)``
        function is adapted to the args-dict form, as the reference does."""
        try:
            old_style = len(inspect.signature(sampler_cfg_function).parameters) == 3
        except (TypeError, ValueError):
            old_style = False
        if old_style:
            fn = sampler_cfg_function
            self.model_options["sampler_cfg_function"] = lambda args: fn(args["cond"], args["uncond"], args["cond_scale"])
        else:
            self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(
        self, post_cfg_function: Callable[..., Any], disable_cfg1_optimization: bool = False
    ) -> None:
        self.model_options = set_model_options_post_cfg_function(
            self.model_options, post_cfg_function, disable_cfg1_optimization
        )

    def set_model_sampler_pre_cfg_function(
        self, pre_cfg_function: Callable[..., Any], disable_cfg1_optimization: bool = False
    ) -> None:
        self.model_options = set_model_options_pre_cfg_function(
            self.model_options, pre_cfg_function, disable_cfg1_optimization
        )

    def set_model_sampler_calc_cond_batch_function(self, fn: Callable[..., Any]) -> None:
        self.model_options["sampler_calc_cond_batch_function"] = fn

    def disable_model_cfg1_optimization(self) -> None:
        """Always run the unconditional pass, even at cfg 1 (patches that read it need it)."""
        self.model_options["disable_cfg1_optimization"] = True

    def set_model_unet_function_wrapper(self, unet_wrapper_function: Callable[..., Any]) -> None:
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_denoise_mask_function(self, denoise_mask_function: Callable[..., Any]) -> None:
        self.model_options["denoise_mask_function"] = denoise_mask_function

    def set_model_patch(self, patch: Any, name: str) -> None:
        """Append ``patch`` to ``transformer_options["patches"][name]`` (a new list: clones keep theirs)."""
        to = self.model_options["transformer_options"]
        patches = to.setdefault("patches", {})
        patches[name] = [*patches.get(name, []), patch]

    def set_model_patch_replace(
        self, patch: Any, name: str, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.model_options = set_model_options_patch_replace(
            self.model_options, patch, name, block_name, number, transformer_index=transformer_index
        )

    def set_model_attn1_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(
        self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(
        self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch: Any) -> None:
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "output_block_patch")

    def set_model_emb_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "emb_patch")

    def set_model_forward_timestep_embed_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "forward_timestep_embed_patch")

    # The DiT families' patch points (model patch nodes register on them; our UNets have none).
    def set_model_double_block_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "double_block")

    def set_model_post_input_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "post_input")

    def set_model_noise_refiner_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "noise_refiner")

    def set_model_middle_block_after_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "middle_block_after_patch")

    def set_model_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """The dtype the network computes in (kept as the reference's ``manual_cast_dtype`` object patch)."""
        self.add_object_patch("manual_cast_dtype", dtype)
        self.patches_uuid = uuid.uuid4()

    def model_patches_to(self, device: Any) -> None:
        """Move patch objects that have a ``.to`` (modules a pack registered) to ``device``."""
        to = self.model_options["transformer_options"]
        for patch_list in to.get("patches", {}).values():
            for i, patch in enumerate(patch_list):
                if hasattr(patch, "to"):
                    patch_list[i] = patch.to(device)
        for table in to.get("patches_replace", {}).values():
            for key, patch in table.items():
                if hasattr(patch, "to"):
                    table[key] = patch.to(device)
        wrapper = self.model_options.get("model_function_wrapper")
        if wrapper is not None and hasattr(wrapper, "to"):
            self.model_options["model_function_wrapper"] = wrapper.to(device)

    def model_patches_models(self) -> list[nn.Module]:
        """The modules among the patches (the model manager loads them beside the model)."""
        to = self.model_options["transformer_options"]
        found = [p for ps in to.get("patches", {}).values() for p in ps if isinstance(p, nn.Module)]
        found += [p for t in to.get("patches_replace", {}).values() for p in t.values() if isinstance(p, nn.Module)]
        return found

    # --- object and weight patches ---------------------------------------------------------------

    def add_object_patch(self, name: str, obj: Any) -> None:
        """Replace the model's attribute at dotted path ``name`` by ``obj`` while this MODEL runs."""
        self.object_patches[name] = obj

    def get_model_object(self, name: str) -> Any:
        """The object at ``name``: this MODEL's replacement when it has one, else the model's."""
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return get_attr(self.model, name)

    def _state_keys(self) -> set[str]:
        return set(self.model.state_dict().keys()) if isinstance(self.model, nn.Module) else set()

    def add_patches(
        self, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
    ) -> list[Any]:
        """Add weight changes (reference formats) by state-dict key, or ``(key, offset[, function])``;
        returns the keys that name a weight of the model (the others are left out)."""
        added = weight_patches.add_entries(self.patches, self._state_keys(), patches, strength_patch, strength_model)
        self.patches_uuid = uuid.uuid4()
        return added

    def get_key_patches(self, filter_prefix: str | None = None) -> dict[str, list[Any]]:
        """Per state-dict key: ``[(weight, convert), *patches]`` (another MODEL's ``add_patches`` takes it)."""
        out: dict[str, list[Any]] = {}
        for key, weight in self.model_state_dict(filter_prefix).items():
            backup = self.backup.get(key)
            base = backup[0] if backup is not None else weight
            out[key] = [(base, _no_convert), *self.patches.get(key, [])]
        return out

    def model_state_dict(self, filter_prefix: str | None = None) -> dict[str, torch.Tensor]:
        sd = self.model.state_dict() if isinstance(self.model, nn.Module) else {}
        if filter_prefix is None:
            return dict(sd)
        return {k: v for k, v in sd.items() if k.startswith(filter_prefix)}

    def calculate_weight(
        self, patches: Sequence[Any], weight: torch.Tensor, key: str, intermediate_dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``comfy.lora.calculate_weight`` (the reference kept this deprecated method)."""
        return weight_patches.calculate_weight(patches, weight, key, intermediate_dtype=intermediate_dtype)

    # --- patching a pack's own module in place (the reference's behaviour) -----------------------

    def patch_weight_to_device(self, key: str, device_to: Any = None, inplace_update: bool = False) -> None:
        if key not in self.patches:
            return
        weight = get_attr(self.model, key)
        if key not in self.backup:
            self.backup[key] = (weight.detach().clone(), True)
        temp = weight.detach().to(device=device_to or weight.device, dtype=torch.float32, copy=True)
        merged = weight_patches.calculate_weight(self.patches[key], temp, key)
        with torch.no_grad():
            weight.copy_(merged.to(weight.dtype))

    def patch_model(
        self, device_to: Any = None, lowvram_model_memory: int = 0, load_weights: bool = True,
        force_patch_weights: bool = False,
    ) -> Any:  # fmt: skip
        """Write the object and weight patches into the model (restored by :meth:`unpatch_model`)."""
        for key, obj in self.object_patches.items():
            old = set_attr(self.model, key, obj)
            self.object_patches_backup.setdefault(key, old)
        if load_weights:
            for key in self.patches:
                self.patch_weight_to_device(key, device_to)
            if device_to is not None and isinstance(self.model, nn.Module):
                self.model.to(device_to)
        self.inject_model()
        for callback in self.get_all_callbacks(CallbacksMP.ON_LOAD):
            callback(self, device_to, lowvram_model_memory, force_patch_weights, True)
        return self.model

    def load(self, device_to: Any = None, lowvram_model_memory: int = 0, force_patch_weights: bool = False,
             full_load: bool = False) -> None:  # fmt: skip
        self.patch_model(device_to, lowvram_model_memory, True, force_patch_weights)

    def unpatch_model(self, device_to: Any = None, unpatch_weights: bool = True) -> None:
        self.eject_model()
        if unpatch_weights:
            with torch.no_grad():
                for key, (weight, _) in self.backup.items():
                    get_attr(self.model, key).copy_(weight)
            self.backup.clear()
            if device_to is not None and isinstance(self.model, nn.Module):
                self.model.to(device_to)
        for key, old in self.object_patches_backup.items():
            set_attr(self.model, key, old)
        self.object_patches_backup.clear()

    def partially_load(self, device_to: Any, extra_memory: int = 0, force_patch_weights: bool = False) -> int:
        return 0

    def partially_unload(self, device_to: Any, memory_to_free: int = 0) -> int:
        return 0

    def detach(self, unpatch_all: bool = True) -> Any:
        self.eject_model()
        self.model_patches_to(self.offload_device)
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        for callback in self.get_all_callbacks(CallbacksMP.ON_DETACH):
            callback(self, unpatch_all)
        return self.model

    def cleanup(self) -> None:
        if getattr(self.model, "current_patcher", None) is self:
            self.model.current_patcher = None
        for callback in self.get_all_callbacks(CallbacksMP.ON_CLEANUP):
            callback(self)

    def pre_run(self) -> None:
        """Sampling is about to start: the model runs through this MODEL (``current_patcher``)."""
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = self
        for callback in self.get_all_callbacks(CallbacksMP.ON_PRE_RUN):
            callback(self)

    def prepare_state(self, timestep: Any, model_options: Mapping[str, Any] | None = None) -> None:
        """A model evaluation is about to run at ``timestep`` (the sampler calls this once per
        evaluation, after the conds are placed): the ``ON_PREPARE_STATE`` callbacks get
        ``(patcher, timestep, model_options)``, the reference's current arguments."""
        options = self.model_options if model_options is None else model_options
        for callback in self.get_all_callbacks(CallbacksMP.ON_PREPARE_STATE):
            callback(self, timestep, options)

    # --- callbacks, wrappers, attachments, injections, additional models ---------------------------

    def add_callback(self, call_type: str, callback: Callable[..., Any]) -> None:
        self.add_callback_with_key(call_type, None, callback)

    def add_callback_with_key(self, call_type: str, key: Any, callback: Callable[..., Any]) -> None:
        self.callbacks.setdefault(call_type, {}).setdefault(key, []).append(callback)

    def remove_callbacks_with_key(self, call_type: str, key: Any) -> None:
        self.callbacks.get(call_type, {}).pop(key, None)

    def get_callbacks(self, call_type: str, key: Any) -> list[Callable[..., Any]]:
        return self.callbacks.get(call_type, {}).get(key, [])

    def get_all_callbacks(self, call_type: str) -> list[Callable[..., Any]]:
        return [c for cs in self.callbacks.get(call_type, {}).values() for c in cs]

    def add_wrapper(self, wrapper_type: str, wrapper: Callable[..., Any]) -> None:
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def add_wrapper_with_key(self, wrapper_type: str, key: Any, wrapper: Callable[..., Any]) -> None:
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key: Any) -> None:
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key: Any) -> list[Callable[..., Any]]:
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    def get_all_wrappers(self, wrapper_type: str) -> list[Callable[..., Any]]:
        return [w for ws in self.wrappers.get(wrapper_type, {}).values() for w in ws]

    def set_attachments(self, key: str, attachment: Any) -> None:
        self.attachments[key] = attachment

    def remove_attachments(self, key: str) -> None:
        self.attachments.pop(key, None)

    def get_attachment(self, key: str) -> Any:
        return self.attachments.get(key)

    def set_injections(self, key: str, injections: list[PatcherInjection]) -> None:
        self.injections[key] = injections

    def remove_injections(self, key: str) -> None:
        self.injections.pop(key, None)

    def get_injections(self, key: str) -> list[PatcherInjection]:
        return self.injections.get(key, [])

    def set_additional_models(self, key: str, models: list[ModelPatcher]) -> None:
        self.additional_models[key] = models

    def remove_additional_models(self, key: str) -> None:
        self.additional_models.pop(key, None)

    def get_additional_models_with_key(self, key: str) -> list[ModelPatcher]:
        return self.additional_models.get(key, [])

    def get_additional_models(self) -> list[ModelPatcher]:
        return [m for ms in self.additional_models.values() for m in ms]

    def get_nested_additional_models(self) -> list[ModelPatcher]:
        """Every additional model, and theirs, each once."""
        found: list[ModelPatcher] = []
        seen: set[int] = set()
        todo = self.get_additional_models()
        while todo:
            model = todo.pop(0)
            if id(model) in seen:
                continue
            seen.add(id(model))
            found.append(model)
            todo.extend(model.get_additional_models())
        return found

    def inject_model(self) -> None:
        if self.is_injected or self.skip_injection:
            return
        for injections in self.injections.values():
            for injection in injections:
                injection.inject(self)
                self.is_injected = True
        if self.is_injected:
            for callback in self.get_all_callbacks(CallbacksMP.ON_INJECT_MODEL):
                callback(self)

    def eject_model(self) -> None:
        if not self.is_injected:
            return
        for injections in self.injections.values():
            for injection in injections:
                injection.eject(self)
        self.is_injected = False
        for callback in self.get_all_callbacks(CallbacksMP.ON_EJECT_MODEL):
            callback(self)

    @contextlib.contextmanager
    def use_ejected(self, skip_and_inject_on_exit_only: bool = False) -> Iterator[None]:
        """Injections taken out for the duration (and put back after)."""
        was_injected = self.is_injected
        self.eject_model()
        try:
            yield
        finally:
            if was_injected or skip_and_inject_on_exit_only:
                self.inject_model()

    # --- hooks (plugins.core_nodes.hooks): weights scheduled per cond group ------------------------

    def set_hook_mode(self, hook_mode: Any) -> None:
        self.hook_mode = hook_mode

    def register_all_hook_patches(
        self, hooks: Any, target_dict: Any, model_options: Any = None, registered: Any = None
    ) -> Any:
        """Register the weight hooks of ``hooks`` (a HookGroup) not registered yet; undone by
        :meth:`restore_hook_patches`. Returns the group of registered hooks."""
        from plugins.core_nodes.hooks import state

        return state.register_all_hook_patches(self, hooks, target_dict, model_options, registered)

    def add_hook_patches(
        self, hook: Any, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
    ) -> list[Any]:
        from plugins.core_nodes.hooks import state

        return state.add_hook_patches(self, hook, patches, strength_patch, strength_model)

    def get_combined_hook_patches(self, hooks: Any) -> dict[str, list[Any]]:
        from plugins.core_nodes.hooks import state

        return state.get_combined_hook_patches(self, hooks)

    def apply_hooks(self, hooks: Any, transformer_options: Any = None, force_apply: bool = False) -> dict[str, Any]:
        """Make ``hooks`` the group the next model calls run with; returns the transformer
        options its hooks add."""
        from plugins.core_nodes.hooks import state

        return state.apply_hooks(self, hooks, transformer_options, force_apply)

    def prepare_hook_patches_current_keyframe(self, t: Any, hook_group: Any, model_options: Any = None) -> None:
        from plugins.core_nodes.hooks import state

        state.prepare_hook_patches_current_keyframe(self, t, hook_group, model_options)

    def patch_hooks(self, hooks: Any) -> None:
        from plugins.core_nodes.hooks import state

        if self.HOOKS_IN_PLACE:
            state.patch_hooks(self, hooks)
        else:
            self.current_hooks = hooks

    def restore_hook_patches(self) -> None:
        from plugins.core_nodes.hooks import state

        state.restore_hook_patches(self)

    def clear_cached_hook_weights(self) -> None:
        self.cached_hook_patches = {}
        self.patch_hooks(None)

    def clean_hooks(self) -> None:
        from plugins.core_nodes.hooks import state

        state.clean_hooks(self)

    def unpatch_hooks(self, whitelist_keys_set: Any = None) -> None:
        from plugins.core_nodes.hooks import state

        state.unpatch_hooks(self, whitelist_keys_set)


def _no_convert(weight: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    return weight


def _to_device(value: Any, device: torch.device | None) -> Any:
    """A tensor moved to ``device`` (anything else, or no device, as it is)."""
    if device is None or not isinstance(value, torch.Tensor):
        return value
    return value.to(device)


__all__ = [
    "ModelPatcher",
    "create_model_options_clone",
    "get_attr",
    "module_size",
    "object_view",
    "set_attr",
    "set_model_options_patch_replace",
    "set_model_options_post_cfg_function",
    "set_model_options_pre_cfg_function",
    "wipe_lowvram_weight",
]
