"""The model stack seen through ``plugins.core_nodes.contracts``: what the loader nodes hand out.

* :class:`DiffusionModel` (MODEL): a UNet as a denoiser, with the reference's ``ModelPatcher`` API
  (:mod:`~plugins.core_nodes.models.patcher`); its ``.model`` is the family's reference class
  (:mod:`~plugins.core_nodes.models.model_base`), which turns the network into a denoiser (eps or
  v prediction, SDXL's ADM vector).
* :class:`TextEncoder` (CLIP): tokenizer + encoders with clip skip, each adapter its own layer.
* :class:`Autoencoder` (VAE): pixels <-> latents, plain and tiled (tile sizes in pixels).

Files are loaded through the server's model manager (cached by path + mtime, moved to the compute
device when used, released on ``/free``); the manager is found through the kernel whose node is
executing (:mod:`plugins.core_nodes.serving`). Outside a node (tests, benchmarks) files load
uncached on the CPU. LoRA (:func:`apply_lora`) and every other MODEL patch apply per call over the
same cached modules, so the cached model is never changed.

Custom-node packs (``comfy_compat``) call the reference's object API on these values: the MODEL
is a ``ModelPatcher``; the CLIP offers ``tokenize``, ``encode_from_tokens(_scheduled)``, ``clone``,
``clip_layer``, ``add_patches`` and the reference's ``cond_stage_model`` / ``tokenizer`` /
``patcher`` objects (:mod:`~plugins.core_nodes.models.clip_objects`); the VAE its
``first_stage_model``, ratios, crop, memory estimates and the keyword form of the tiled calls.
Those give the same numbers as the core nodes' paths.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from kernel.progress import throw_if_interrupted
from plugins.core_nodes.contracts import SD15, SDXL, LatentFormat
from plugins.core_nodes.hooks.state import hooked_weights
from plugins.core_nodes.models import checkpoint as ckpt
from plugins.core_nodes.models.clip_objects import (
    ClipMember,
    ClipSet,
    TokenizerSet,
    clip_set,
    is_built_clip_set,
    member_attr,
    replaces_encoding,
    split_key,
)
from plugins.core_nodes.models.extension import (
    WrapperExecutor,
    WrappersMP,
    copy_registry,
    get_all_wrappers,
)
from plugins.core_nodes.models.lora import (
    LoraError,
    PatchedWeights,
    Patches,
    read_deltas,
    resolve,
)
from plugins.core_nodes.models.manager import ModelManager, get_manager
from plugins.core_nodes.models.model_base import build_base_model
from plugins.core_nodes.models.operations import FP8_DTYPES, cast_plain_weights, casting_view
from plugins.core_nodes.models.patcher import (
    ModelPatcher,
    create_model_options_clone,
    get_attr,
    object_view,
)
from plugins.core_nodes.models.pixel_space import PIXEL_SPACE, PixelSpaceVAE
from plugins.core_nodes.models.text_encoder import (
    Chunks,
    ClipEncoder,
    TextEncoderStack,
    load_state_dict_file,
    read_embedding,
    stack_from_encoder_files,
    stack_from_state_dict,
)
from plugins.core_nodes.models.tokenizer import EmbeddingLookup
from plugins.core_nodes.models.unet import UNetModel
from plugins.core_nodes.models.vae import VAE
from plugins.core_nodes.models.weight_patches import calculate_weight
from plugins.core_nodes.serving import current_kernel

T = TypeVar("T")
log = logging.getLogger("comfykernel.core_nodes")
_EMBEDDING_SUFFIXES = ("", ".safetensors", ".pt", ".bin", ".pth")


def latent_format_for(family: str) -> LatentFormat:
    from plugins.core_nodes.models.latent_formats import FAMILY_FORMATS

    if family in FAMILY_FORMATS:
        return FAMILY_FORMATS[family]
    return SDXL if family.startswith("sdxl") else SD15


# --- the manager, when a server is around ----------------------------------------------------


def _manager() -> ModelManager | None:
    kernel = current_kernel()
    return get_manager(kernel) if kernel is not None else None


def _load(
    kind: str, path: Path, loader: Callable[[Path, Callable[[], None]], T], also: Sequence[Path] = ()
) -> T:
    manager = _manager()
    if manager is None:
        return loader(Path(path), throw_if_interrupted)
    return manager.load(kind, Path(path), loader, also=also)


def _compute_dtype(manager: ModelManager | None) -> torch.dtype | None:
    """fp32 on the CPU (half-precision matmuls there are slow or missing); the file's dtype on GPUs."""
    device = manager.compute_device if manager is not None else torch.device("cpu")
    return torch.float32 if device.type == "cpu" else None


@contextlib.contextmanager
def _using(manager: ModelManager | None, modules: Sequence[nn.Module]) -> Iterator[torch.device]:
    if manager is None:
        first = next(iter(modules[0].parameters()), None) if modules else None
        yield first.device if first is not None else torch.device("cpu")
        return
    with manager.use(*modules) as device:
        yield device


# --- what the manager caches ------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """A checkpoint's built parts; ``text_models`` lists the encoders' modules for the manager."""

    family: ckpt.ModelFamily
    unet: UNetModel
    vae: VAE | None
    stack: TextEncoderStack | None
    text_models: tuple[nn.Module, ...]


@dataclass
class LoadedText:
    stack: TextEncoderStack
    text_models: tuple[nn.Module, ...]


def _cast_stack(stack: TextEncoderStack, dtype: torch.dtype | None) -> tuple[nn.Module, ...]:
    models = tuple(encoder.model for encoder in stack.encoders.values())
    if dtype is not None:
        for model in models:
            if any(p.dtype in FP8_DTYPES for p in model.parameters()):
                # fp8 storage behind casting layers (SD3's fp8 T5-XXL) stays; the rest follows dtype.
                cast_plain_weights(model, dtype, keep=FP8_DTYPES)
            else:
                model.to(dtype)
    return models


def _embedding_lookup() -> EmbeddingLookup | None:
    kernel = current_kernel()
    models = getattr(kernel, "models", None) if kernel is not None else None
    if models is None:
        return None

    def lookup(name: str, key: str, size: int) -> torch.Tensor | None:
        for suffix in _EMBEDDING_SUFFIXES:
            try:
                path = models.get_full_path("embeddings", name + suffix)
            except Exception:  # an unsafe or odd name is simply not an embedding
                return None
            if path is not None and Path(path).is_file():
                try:
                    return read_embedding(path, key, size)
                except ValueError:
                    return None
        return None

    # The folders it reads: the tokenizers' embedding_directory (packs look embeddings up there too).
    lookup.directories = [str(p) for p in models.folder_paths("embeddings")]  # type: ignore[attr-defined]
    return lookup


def _read_checkpoint(dtype: torch.dtype | None, embeddings: EmbeddingLookup | None) -> Any:
    def loader(path: Path, check: Callable[[], None]) -> LoadedCheckpoint:
        parts = ckpt.load_checkpoint(path, check, dtype)
        stack = None
        models: tuple[nn.Module, ...] = ()
        if parts.text_encoder_weights:
            from plugins.core_nodes.models.flux_family import flux_checkpoint_stack, is_flux_checkpoint_text

            # Flux's CLIP-L + T5-XXL are built as DualCLIPLoader's flux pair (each in its own dtype).
            flux = is_flux_checkpoint_text(parts.text_encoder_weights)
            try:
                if flux:
                    stack = flux_checkpoint_stack(parts.text_encoder_weights, embeddings, dtype)
                else:
                    stack = stack_from_state_dict(parts.text_encoder_weights, embeddings=embeddings)
            except (ValueError, KeyError, RuntimeError) as e:
                raise ckpt.CheckpointError(
                    f"{path.name} has text encoder weights that do not fit ({e})"
                ) from None
            models = tuple(e.model for e in stack.encoders.values()) if flux else _cast_stack(stack, dtype)
        return LoadedCheckpoint(parts.family, parts.unet, parts.vae, stack, models)

    return loader


# --- MODEL ------------------------------------------------------------------------------------


def _copy_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``model_options`` for a clone: nested dicts and lists copied, everything else shared.

    The reference's clone rule, so a pack that adds an entry to a clone's ``transformer_options``
    (the usual ``to["patches"][name].append(...)`` dance) leaves the original's untouched.
    """
    return create_model_options_clone(options)


_UNET_PREFIX = "diffusion_model."


class DiffusionModel(ModelPatcher):
    """A UNet as the denoiser KSampler drives (``contracts.DiffusionModel``), with the reference's
    ``ModelPatcher`` API (:class:`~plugins.core_nodes.models.patcher.ModelPatcher`).

    ``model`` is the family's reference class (``model_base.BaseModel`` / ``SDXL`` /
    ``SDXLRefiner``) around the cached UNet. Everything a pack asks for applies per call and never
    changes the cached network: ``model_options["transformer_options"]`` patches run inside the
    UNet, ``object_patches`` under ``diffusion_model.`` run on a copy of the module tree with
    those attributes replaced (``model_sampling`` and the other top-level names are read through
    :meth:`get_model_object`), and ``patches`` (``add_patches``, LoRA) are merged into fresh
    tensors swapped in for the call. ``patch_model`` / ``unpatch_model`` write nothing; hook
    weights (:mod:`plugins.core_nodes.hooks`) are merged per call too.
    """

    HOOKS_IN_PLACE = False

    def __init__(
        self,
        unet: UNetModel,
        family: ckpt.ModelFamily,
        manager: ModelManager | None = None,
        patches: Patches | None = None,
    ) -> None:
        self.unet = unet
        self.family = family
        self.manager = manager
        self.latent_format = latent_format_for(family.name)
        if family.name == "flux":
            from plugins.core_nodes.models.flux_family import build_flux_model

            base = build_flux_model(unet, self.latent_format)
        else:
            base = build_base_model(family.name, family.prediction, unet, self.latent_format)
        device = manager.compute_device if manager is not None else torch.device("cpu")
        super().__init__(base, device, torch.device("cpu"))
        self._weights: PatchedWeights | None = None
        self._weights_for: tuple[Any, ...] | None = None
        self._view: nn.Module | None = None
        self._view_for: tuple[Any, ...] | None = None
        for name, changes in (patches or {}).items():
            for strength, delta in changes:
                self.add_patches({_UNET_PREFIX + name: delta}, strength)

    # -- what the samplers read ------------------------------------------------------------------

    @property
    def model_sampling(self) -> Any:
        """The noise schedule, a pack's replacement (``add_object_patch("model_sampling", ...)``) first."""
        return self.get_model_object("model_sampling")

    @property
    def concat_channels(self) -> int:
        return self.model.concat_channels()

    def adm(self, cond: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor | None:
        """SDXL's ADM vector for ``cond`` on latents ``x`` (None for models without one)."""
        return self.model.adm_for(cond, x)

    @property
    def weights(self) -> PatchedWeights:
        """The UNet (or its object-patched copy) seen through this MODEL's weight patches (and,
        while a hook group is applied, that group's weights on top)."""
        unet = self._unet_view()
        if self.current_hooks is not None and self.hook_patches:
            own = {k[len(_UNET_PREFIX) :]: tuple(v) for k, v in self.patches.items() if k.startswith(_UNET_PREFIX)}
            return hooked_weights(self, unet, own, self.current_hooks, _UNET_PREFIX, self.manager, self.unet)
        key = (self.patches_uuid, id(unet), tuple((k, len(v)) for k, v in self.patches.items()))
        if self._weights is None or self._weights_for != key:
            by_param = {
                k[len(_UNET_PREFIX) :]: tuple(v) for k, v in self.patches.items() if k.startswith(_UNET_PREFIX)
            }
            weights = PatchedWeights(unet, by_param, merge=_merge_entries)
            if self.manager is not None and by_param:
                self.manager.track_derived(self.unet, weights)
            self._weights, self._weights_for = weights, key
        return self._weights

    def _unet_view(self) -> nn.Module:
        """The cached UNet, or a copy of its module tree with this MODEL's object patches in
        (and, with a compute dtype set, layers casting their weights to it at each call)."""
        mine = {k[len(_UNET_PREFIX) :]: v for k, v in self.object_patches.items() if k.startswith(_UNET_PREFIX)}
        whole = self.object_patches.get("diffusion_model")
        root = whole if isinstance(whole, nn.Module) else self.unet
        compute = self.object_patches.get("manual_cast_dtype")
        if not mine and compute is None:
            return root
        key = (id(root), tuple((k, id(v)) for k, v in mine.items()), compute)
        if self._view is None or self._view_for != key:
            view = object_view(root, mine) if mine else root
            if compute is not None:
                view = casting_view(view, compute)
            self._view, self._view_for = view, key
        return self._view

    def clone(self) -> DiffusionModel:
        """A new MODEL over the same model and patches; its options and patch lists are its own."""
        twin = super().clone()
        assert isinstance(twin, DiffusionModel)
        return twin

    def with_patches(self, patches: Patches) -> DiffusionModel:
        """A clone with these LoRA changes (our parameter names, ``(strength, Delta)`` pairs) added."""
        twin = self.clone()
        for name, changes in patches.items():
            for strength, delta in changes:
                twin.add_patches({_UNET_PREFIX + name: delta}, strength)
        return twin

    def _state_keys(self) -> set[str]:
        # Asked once per add_patches call (a LoRA may make hundreds): kept, the UNet's names never change.
        keys: set[str] | None = self.__dict__.get("_param_keys")
        if keys is None:
            keys = {_UNET_PREFIX + name for name, _ in self.unet.named_parameters()}
            self._param_keys = keys
        return keys

    def get_model_object(self, name: str) -> Any:
        """``model_sampling``, ``latent_format``, ``diffusion_model`` (dotted paths go inside it),
        this MODEL's object patches first."""
        if name in self.object_patches:
            return self.object_patches[name]
        if name.startswith(_UNET_PREFIX) or name == "diffusion_model":
            found: Any = self._unet_view() if name.startswith(_UNET_PREFIX) else self.unet
            rest = name[len(_UNET_PREFIX) :] if name.startswith(_UNET_PREFIX) else ""
            return get_attr(found, rest) if rest else found
        try:
            return get_attr(self.model, name)
        except AttributeError:
            raise AttributeError(
                f"MODEL has no object {name!r}; this server provides model_sampling, "
                "latent_format and diffusion_model"
            ) from None

    def model_state_dict(self, filter_prefix: str | None = None) -> dict[str, torch.Tensor]:
        """The model's weights without this MODEL's patches (they are only merged per call)."""
        return super().model_state_dict(filter_prefix)

    def patch_model(
        self, device_to: Any = None, lowvram_model_memory: int = 0, load_weights: bool = True,
        force_patch_weights: bool = False,
    ) -> Any:  # fmt: skip
        """The model, unchanged: patches apply per call (the cached network is shared)."""
        self.inject_model()
        return self.model

    def unpatch_model(self, device_to: Any = None, unpatch_weights: bool = True) -> None:
        self.eject_model()

    def pre_run(self) -> None:
        """Sampling starts: injections go in (packs' modules inserted into the shared network,
        the reference does it when loading the model), then the ``ON_PRE_RUN`` callbacks."""
        self.inject_model()
        super().pre_run()

    def cleanup(self) -> None:
        """Sampling ended: injections come out again, so the cached network is as loaded."""
        super().cleanup()
        self.eject_model()

    # -- running ---------------------------------------------------------------------------------

    def _options(self, transformer_options: Mapping[str, Any] | None) -> dict[str, Any]:
        """One call's ``transformer_options``: the MODEL's own under the caller's, and the MODEL's
        wrappers added to the caller's unless they are already there (the sampler copies them in
        for its run, as the reference does; each wrapper runs once either way)."""
        own = self.model_options.get("transformer_options", {})
        options = {**own, **(transformer_options or {})}
        if self.wrappers:
            options["wrappers"] = _with_wrappers(options.get("wrappers") or {}, self.wrappers)
        return options

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: dict[str, Any],
        transformer_options: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """The denoised latent for ``x`` at ``sigma`` (``cond``: ``c_crossattn``, optional
        ``c_concat``, ``pooled_output`` and SDXL's size conditioning, or ``y`` itself)."""
        options = self._options(transformer_options)
        wrappers = get_all_wrappers(WrappersMP.APPLY_MODEL, options)
        if not wrappers:
            return self.run_model(x, sigma, cond, options)

        def apply(x: torch.Tensor, t: torch.Tensor, c_concat: Any = None, c_crossattn: Any = None,
                  control: Any = None, transformer_options: Any = None, **kwargs: Any) -> torch.Tensor:  # fmt: skip
            inner = {"c_crossattn": c_crossattn, **kwargs}
            if c_concat is not None:
                inner["c_concat"] = c_concat
            if control is not None:
                inner["control"] = control
            return self.run_model(x, t, inner, transformer_options or {})

        rest = {k: v for k, v in cond.items() if k not in ("c_concat", "c_crossattn", "control")}
        executor = WrapperExecutor.new_class_executor(apply, self.model, wrappers)
        return executor.execute(
            x, sigma, cond.get("c_concat"), cond.get("c_crossattn"), cond.get("control"), options, **rest
        )

    def run_model(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Mapping[str, Any], transformer_options: dict[str, Any]
    ) -> torch.Tensor:
        """The network with every patch of this MODEL, on the compute device (``transformer_options``
        as a caller gives them: this MODEL's own are merged in, see :meth:`_options`)."""
        transformer_options = self._options(transformer_options)
        weights = self.weights
        # Modules a pack patched in run on the compute device with the UNet.
        extra = self.model_patches_models()
        extra += [m for m in self.object_patches.values() if isinstance(m, nn.Module)]
        extra += [p.model for p in self.get_nested_additional_models() if isinstance(p.model, nn.Module)]
        with _using(self.manager, [self.unet, *extra]) as device:
            return self.model.denoise(
                x, sigma, cond, transformer_options, weights.call, self.model_sampling, device
            )


def _with_wrappers(given: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (a wrappers registry) plus each of ``own``'s wrappers it does not hold yet."""
    out = copy_registry(dict(given))
    for kind, keyed in own.items():
        present = {id(fn) for fns in out.get(kind, {}).values() for fn in fns}
        for key, fns in keyed.items():
            missing = [fn for fn in fns if id(fn) not in present]
            if missing:
                out.setdefault(kind, {}).setdefault(key, []).extend(missing)
    return out


def _merge_entries(name: str, weight: torch.Tensor, entries: Any) -> torch.Tensor:
    return calculate_weight(entries, weight, _UNET_PREFIX + name)


# --- CLIP -------------------------------------------------------------------------------------


class _PatchedClip:
    """A text model called through its weight patches; everything else is the base model's."""

    def __init__(self, weights: PatchedWeights) -> None:
        self._weights = weights

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._weights.call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._weights.module, name)


def _text_key(encoder: str, param: str) -> str:
    """The reference's ``cond_stage_model`` key of our parameter ``param`` of encoder ``encoder``."""
    return f"{member_attr(encoder)}.transformer.text_model.{param}"


def _text_merge(encoder: str) -> Callable[[str, torch.Tensor, Any], torch.Tensor]:
    """How one of ``encoder``'s weights takes its patch entries (the reference's formats)."""

    def merge(param: str, weight: torch.Tensor, entries: Any) -> torch.Tensor:
        return calculate_weight(entries, weight, _text_key(encoder, param))

    return merge


class ClipPatcher(ModelPatcher):
    """A CLIP's ``patcher``: the reference's ``ModelPatcher`` over its ``cond_stage_model``.

    ``patches`` (``add_patches`` by the reference's keys, ``clip_l.transformer.text_model...``)
    are merged into fresh tensors for each encoding, as a MODEL's are: ``patch_model`` /
    ``unpatch_model`` write nothing into the cached encoders.
    """

    HOOKS_IN_PLACE = False

    def __init__(self, model: ClipSet, load_device: torch.device, offload_device: torch.device) -> None:
        super().__init__(model, load_device, offload_device)
        self.is_clip = True

    def _state_keys(self) -> set[str]:
        keys: set[str] | None = self.__dict__.get("_param_keys")
        if keys is None:
            keys = set(self.model.state_dict().keys())
            # The reference keeps text_projection beside text_model: its spelling is accepted too.
            keys |= {k.replace(".text_model.text_projection.", ".text_projection.") for k in keys}
            self._param_keys = keys
        return keys

    def patch_model(
        self, device_to: Any = None, lowvram_model_memory: int = 0, load_weights: bool = True,
        force_patch_weights: bool = False,
    ) -> Any:  # fmt: skip
        """The model, unchanged: patches apply per encoding (the cached encoders are shared)."""
        self.inject_model()
        return self.model

    def unpatch_model(self, device_to: Any = None, unpatch_weights: bool = True) -> None:
        self.eject_model()


class TextEncoder:
    """Tokenizer + encoders (``contracts.TextEncoder``) with the reference's ``CLIP`` API; never
    changes the cached stack.

    * :meth:`tokenize` gives the reference's tokens (by encoder name ``l`` / ``h`` / ``g``, lists of
      77-long chunks of ``(token, weight)`` or, with ``return_word_ids``, ``(token, weight, word_id)``);
      :meth:`encode_from_tokens` and :meth:`encode_from_tokens_scheduled` encode them (edited or
      not) at this CLIP's clip-skip layer and weight patches, exactly as :meth:`encode` does text.
    * ``cond_stage_model`` / ``tokenizer`` are the reference's objects
      (:mod:`~plugins.core_nodes.models.clip_objects`): ``cond_stage_model.clip_l
      .encode_token_weights(chunks)`` encodes through this CLIP's patches.
    * ``patcher`` (:class:`ClipPatcher`) holds the weight patches; :meth:`add_patches` /
      :meth:`get_key_patches` are its, by the reference's keys. LoRA (``LoraLoader``) lands there too.
    * :meth:`clone` gives a CLIP with its own layer, patches and ``cond_stage_model`` options over
      the same networks; :meth:`clip_layer` is the reference's in-place clip skip.
    """

    def __init__(
        self,
        stack: TextEncoderStack,
        manager: ModelManager | None = None,
        layer: int | None = None,
        patches: Mapping[str, Patches] | None = None,
    ) -> None:
        self.stack = stack
        self.manager = manager
        self.layer = layer
        device = manager.compute_device if manager is not None else torch.device("cpu")
        self.tokenizer = TokenizerSet(stack.tokenizers)
        self.cond_stage_model = self._new_cond_stage_model()
        self.patcher = ClipPatcher(self.cond_stage_model, device, torch.device("cpu"))
        # SetClipHooks: encode scheduled by the forced hooks' keyframes; hooks put on the conds.
        self.use_clip_schedule = False
        self.apply_hooks_to_conds: Any = None
        # Kept for packs that set and read them back; this server's tokenizers take no options.
        self.tokenizer_options: dict[str, Any] = {}
        self._weights: dict[str, PatchedWeights] = {}
        self._weights_for: tuple[Any, ...] | None = None
        for encoder, changes in (patches or {}).items():
            for param, pairs in changes.items():
                for strength, delta in pairs:
                    self.patcher.add_patches({_text_key(encoder, param): delta}, strength)

    def _new_cond_stage_model(self) -> ClipSet:
        members = {
            name: ClipMember(name, encoder, self._run_member) for name, encoder in self.stack.encoders.items()
        }
        return clip_set(self.stack.family, members)

    @property
    def models(self) -> dict[str, nn.Module]:
        return {name: encoder.model for name, encoder in self.stack.encoders.items()}

    @property
    def patches(self) -> dict[str, Patches]:
        """The weight patches by encoder and our parameter name, as ``(strength, value)`` pairs."""
        out: dict[str, Patches] = {}
        for key, entries in self.patcher.patches.items():
            found = split_key(key)
            if found is not None and entries:
                encoder, param = found
                pairs = tuple((entry[0], entry[1]) for entry in entries)
                out.setdefault(encoder, {})[param] = (*out.get(encoder, {}).get(param, ()), *pairs)
        return out

    def _patched(self) -> dict[str, PatchedWeights]:
        """Each encoder seen through this CLIP's patches (rebuilt when the patches change), and
        through the weights of the hooks forced on it (SetClipHooks) at their current strengths."""
        patches = self.patcher.patches
        hooks = self.patcher.forced_hooks
        if hooks is not None and self.patcher.hook_patches:
            own: dict[str, dict[str, list[Any]]] = {name: {} for name in self.stack.encoders}
            for k, entries in patches.items():
                found = split_key(k)
                if found is not None and found[0] in own and entries:
                    own[found[0]].setdefault(found[1], []).extend(entries)
            return {
                name: hooked_weights(
                    self, encoder.model, own[name], hooks, _text_key(name, ""), self.manager, encoder.model
                )
                for name, encoder in self.stack.encoders.items()
            }
        key = (self.patcher.patches_uuid, tuple((k, len(v)) for k, v in patches.items()))
        if self._weights_for != key:
            by_encoder: dict[str, dict[str, list[Any]]] = {name: {} for name in self.stack.encoders}
            for k, entries in patches.items():
                found = split_key(k)
                if found is not None and found[0] in by_encoder and entries:
                    by_encoder[found[0]].setdefault(found[1], []).extend(entries)
            weights = {
                name: PatchedWeights(encoder.model, by_encoder[name], merge=_text_merge(name))
                for name, encoder in self.stack.encoders.items()
            }
            if self.manager is not None:
                for w in weights.values():
                    if w.patches:
                        self.manager.track_derived(w.module, w)
            self._weights, self._weights_for = weights, key
        return self._weights

    def _encoder_view(self, name: str, layer: int | None, projected: bool = True) -> ClipEncoder:
        encoder = self.stack.encoders[name]
        weights = self._patched()[name]
        model: Any = _PatchedClip(weights) if weights.patches else encoder.model
        # An encoder read unprojected by its family (SD3's CLIP-L) stays so.
        view = dataclasses.replace(encoder, model=model, project_pooled=projected and encoder.project_pooled)
        view.set_layer(layer)
        return view

    def _view(self, projected: bool = True) -> TextEncoderStack:
        """A stack sharing this one's models and tokenizers, at this adapter's layer and patches."""
        encoders = {
            name: self._encoder_view(name, encoder.default_layer if self.layer is None else self.layer, projected)
            for name, encoder in self.stack.encoders.items()
        }
        return TextEncoderStack(self.stack.family, self.stack.tokenizers, encoders)

    def _run_member(
        self, name: str, layer: int | None, projected: bool, work: Callable[[ClipEncoder], T]
    ) -> T:
        """``work`` on one encoder at ``layer`` with this CLIP's patches, on the device it runs
        on (how ``cond_stage_model``'s members encode)."""
        view = self._encoder_view(name, layer, projected)
        with _using(self.manager, [self.stack.encoders[name].model]):
            return work(view)

    def _own_model(self) -> bool:
        """Whether ``cond_stage_model`` is still the one this CLIP built: a pack may put its own
        there or replace its (or a member's) ``encode_token_weights``, and then encoding goes
        through it."""
        model = self.cond_stage_model
        return is_built_clip_set(model) and not replaces_encoding(model)

    def _encode_through_model(
        self, tokens: Mapping[str, Chunks], unprojected: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The reference's encoding: options reset, this CLIP's layer set, the model's own
        ``encode_token_weights`` (for a ``cond_stage_model`` a pack replaced)."""
        model = self.cond_stage_model
        model.reset_clip_options()
        if self.layer is not None:
            model.set_clip_options({"layer": self.layer})
        if unprojected:
            model.set_clip_options({"projected_pooled": False})
        out = model.encode_token_weights(tokens)
        return out[0], out[1]

    def _encode_tokens(
        self, tokens: Mapping[str, Chunks], unprojected: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self._own_model():
            return self._encode_through_model(tokens, unprojected)
        # Like the reference, each encoder reads its own key and other keys are ignored. SD3's
        # set takes empty chunk lists (CLIPTextEncodeSD3 leaves empty prompts out).
        empty_ok = self.stack.family == "sd3"
        missing = [name for name in self.stack.encoders if name not in tokens or not (tokens[name] or empty_ok)]
        if missing:
            raise ValueError(
                f"tokens for this CLIP need chunks under {sorted(self.stack.encoders)}; "
                f"missing or empty: {missing}"
            )
        picked = {name: tokens[name] for name in self.stack.encoders}
        with _using(self.manager, list(self.models.values())):
            cond, pooled = self._view(projected=not unprojected).encode_tokens(picked)
        return cond.float().cpu(), None if pooled is None else pooled.float().cpu()

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._encode_tokens(self.tokenize(text))

    # The reference's CLIP object API.

    @property
    def layer_idx(self) -> int | None:
        """The reference's name for the clip-skip layer (None: the family's default)."""
        return self.layer

    @layer_idx.setter
    def layer_idx(self, layer_idx: int | None) -> None:
        self.layer = layer_idx

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, Chunks]:
        """The reference's tokens for ``text``. Newer references' extra options (``min_length``,
        ``tokenizer_options``...) are accepted and not used: chunks are always 77 tokens. A
        tokenizer a pack put in ``self.tokenizer`` is used instead, with everything it is given."""
        mine = self.tokenizer
        if not isinstance(mine, TokenizerSet) or "tokenize_with_weights" in vars(mine):
            tokens: dict[str, Chunks] = mine.tokenize_with_weights(text, return_word_ids, **kwargs)
            return tokens
        return {
            name: tokenizer.tokenize_with_weights(text, return_word_ids)
            for name, tokenizer in self.stack.tokenizers.items()
        }

    def encode_from_tokens(
        self, tokens: Mapping[str, Chunks], return_pooled: bool | str = False, return_dict: bool = False
    ) -> Any:
        """``cond``; ``(cond, pooled)`` with ``return_pooled``; ``{"cond", "pooled_output"}`` with
        ``return_dict``. ``return_pooled="unprojected"``: the pooled output before the text projection."""
        cond, pooled = self._encode_tokens(tokens, unprojected=return_pooled == "unprojected")
        if return_dict:
            return self.add_hooks_to_dict({"cond": cond, "pooled_output": pooled})
        if return_pooled:
            return cond, pooled
        return cond

    def encode_from_tokens_scheduled(
        self,
        tokens: Mapping[str, Chunks],
        unprojected: bool = False,
        add_dict: Mapping[str, Any] | None = None,
        show_pbar: bool = True,
    ) -> list[list[Any]]:
        """A CONDITIONING, as CLIPTextEncode gives: ``[[cond, {"pooled_output": pooled, **add_dict}]]``.

        With hooks set on this CLIP to be scheduled (SetClipHooks' ``schedule_clip``), one entry
        per percent range over which the hooks' keyframe strengths stay constant, encoded at those
        strengths and marked ``clip_start_percent`` / ``clip_end_percent`` (ranges outside
        ``add_dict``'s ``start_percent`` / ``end_percent`` are left out)."""
        extra = dict(add_dict or {})
        hooks = self.patcher.forced_hooks
        if hooks is None or not self.use_clip_schedule:
            cond, pooled = self._encode_tokens(tokens, unprojected=unprojected)
            options = self.add_hooks_to_dict({"pooled_output": pooled})
            options.update(extra)
            return [[cond, options]]
        out: list[list[Any]] = []
        hooks.reset()
        try:
            for (low, high), picks in hooks.get_hooks_for_clip_schedule():
                if "start_percent" in extra and high < extra["start_percent"]:
                    continue
                if "end_percent" in extra and low > extra["end_percent"]:
                    continue
                for hook, keyframe in picks:
                    hook.hook_keyframe._current_keyframe = keyframe
                cond, pooled = self._encode_tokens(tokens, unprojected=unprojected)
                options = {"pooled_output": pooled, "clip_start_percent": low, "clip_end_percent": high, **extra}
                out.append([cond, self.add_hooks_to_dict(options)])
                throw_if_interrupted()
        finally:
            hooks.reset()
        return out

    def add_hooks_to_dict(self, pooled_dict: dict[str, Any]) -> dict[str, Any]:
        """``pooled_dict`` with this CLIP's hooks for its conds (``apply_to_conds``), if any."""
        if self.apply_hooks_to_conds:
            pooled_dict["hooks"] = self.apply_hooks_to_conds
        return pooled_dict

    def clone(self) -> TextEncoder:
        """A new CLIP over the same models, layer and patches; its patches, layer and
        ``cond_stage_model`` options are its own (:meth:`clip_layer` on it leaves this one)."""
        twin = copy.copy(self)
        twin.tokenizer_options = dict(self.tokenizer_options)
        twin.patcher = self.patcher.clone()
        twin._weights, twin._weights_for = {}, None
        if not self._own_model():
            return twin  # a pack's own cond_stage_model is shared by clones, as in the reference
        twin.cond_stage_model = twin._new_cond_stage_model()
        for mine, theirs in zip(twin.cond_stage_model.members(), self.cond_stage_model.members(), strict=True):
            mine.layer, mine.layer_idx = theirs.layer, theirs.layer_idx
            mine.return_projected_pooled = theirs.return_projected_pooled
        twin.patcher.model = twin.cond_stage_model
        return twin

    def add_patches(
        self, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
    ) -> list[Any]:
        """Weight patches by the reference's keys (``clip_l.transformer.text_model...``), applied
        at each encoding; returns the keys that name a weight (the others are left out)."""
        return self.patcher.add_patches(patches, strength_patch, strength_model)

    def get_key_patches(self) -> dict[str, list[Any]]:
        """Per key: ``[(weight, convert), *patches]``, for another model's ``add_patches`` (merging)."""
        return self.patcher.get_key_patches()

    def get_sd(self) -> dict[str, torch.Tensor]:
        """The encoders' weights by the reference's keys (without this CLIP's patches)."""
        return self.cond_stage_model.state_dict()

    def load_sd(self, sd: Mapping[str, torch.Tensor], full_model: bool = False) -> Any:
        raise NotImplementedError(
            "CLIP.load_sd is not supported by comfykernel: a CLIP's weights are the cached model's; "
            "change them with add_patches"
        )

    def get_tokenizer_options(self) -> dict[str, Any]:
        return dict(self.tokenizer_options)

    def set_tokenizer_option(self, option_name: str, value: Any) -> None:
        self.tokenizer_options[option_name] = value

    def clip_layer(self, layer_idx: int | None) -> None:
        """Clip skip in place, as the reference's (packs call it on a clone): -1 last, -2 ..."""
        self.layer = layer_idx

    def load_model(self) -> ClipPatcher:
        """The ``patcher``, as the reference's; nothing is moved now: the model manager moves the
        encoders to the compute device when they run."""
        return self.patcher

    def with_last_layer(self, layer: int) -> TextEncoder:
        """CLIPSetLastLayer: a clone at clip skip ``layer`` (this CLIP is left as it is)."""
        twin = self.clone()
        twin.layer = layer
        return twin

    def with_patches(self, patches: Mapping[str, Patches]) -> TextEncoder:
        """A CLIP with exactly these LoRA changes (by encoder and our parameter name)."""
        return TextEncoder(self.stack, self.manager, self.layer, patches)


# --- VAE --------------------------------------------------------------------------------------


class _assignable:  # noqa: N801 - used as a decorator, like property
    """A computed attribute that an instance may also assign, as the reference's plain attributes.

    Packs subclass ``comfy.sd.VAE`` without calling its constructor and set ``device``,
    ``vae_dtype``, ``first_stage_model``... themselves; an assigned value wins over the computed one.
    """

    def __init__(self, compute: Callable[[Any], Any]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if self.name in obj.__dict__:
            return obj.__dict__[self.name]
        return self.compute(obj)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value

    def __delete__(self, obj: Any) -> None:
        obj.__dict__.pop(self.name, None)


class Autoencoder:
    """``contracts.ImageAutoencoder`` over :class:`~plugins.core_nodes.models.vae.VAE`.

    The reference ``VAE`` layouts: ``encode`` takes IMAGE pixels ``[B, H, W, C]`` in 0..1 (cropped,
    centred, to multiples of ``downscale_ratio``; channels past 3 are ignored) and gives latents
    ``[B, C, h, w]``; ``decode`` the reverse. The tiled calls have the reference's signatures:
    ``encode_tiled(pixels, tile_x=512, tile_y=512, overlap=64)`` in pixels,
    ``decode_tiled(latent, tile_x=64, tile_y=64, overlap=16)`` in latent pixels. Tiles are square
    here: unequal ``tile_x`` / ``tile_y`` use the smaller; ``tile_t`` / ``overlap_t`` (video VAEs)
    are accepted and not used.
    """

    def __init__(
        self, vae: VAE, latent_format: LatentFormat = SD15, manager: ModelManager | None = None
    ) -> None:
        self.vae = vae
        self.manager = manager
        self.latent_format = latent_format
        self.downscale_ratio = int(vae.downscale)
        self.upscale_ratio = self.downscale_ratio
        self.latent_channels = int(vae.latent_channels)
        self.output_channels = 3
        self.latent_dim = 2
        self.disable_offload = False
        # Video VAEs' index formulas (None: every frame is its own).
        self.upscale_index_formula: Any = None
        self.downscale_index_formula: Any = None
        self.output_device = torch.device("cpu")
        self._patcher: ModelPatcher | None = None

    # The reference's attributes: plain attributes there, so packs' subclasses assign them.

    @_assignable
    def first_stage_model(self) -> nn.Module:
        """The autoencoder network this VAE runs (the cached module: assigning replaces it for this
        object only, never in the cache)."""
        return self.vae.model

    @_assignable
    def device(self) -> torch.device:
        """Where encoding and decoding run."""
        return self.manager.compute_device if self.manager is not None else torch.device("cpu")

    @_assignable
    def vae_dtype(self) -> torch.dtype:
        model = self.first_stage_model
        dtype = getattr(model, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype

    @_assignable
    def working_dtypes(self) -> list[torch.dtype]:
        return [self.vae_dtype]

    @_assignable
    def size(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.first_stage_model.state_dict().values())

    @_assignable
    def patcher(self) -> ModelPatcher:
        """A ``ModelPatcher`` over ``first_stage_model`` (what packs hand to model management)."""
        if getattr(self, "_patcher", None) is None:  # a pack's subclass may skip our __init__
            self._patcher = ModelPatcher(self.first_stage_model, self.device, torch.device("cpu"), size=self.size)
        return self._patcher

    def memory_used_encode(self, shape: Sequence[int], dtype: torch.dtype) -> int:
        """The reference's estimate of an encode's working memory for pixels of ``shape`` (BCHW)."""
        return int(1767 * shape[2] * shape[3] * _dtype_size(dtype))

    def memory_used_decode(self, shape: Sequence[int], dtype: torch.dtype) -> int:
        """The reference's estimate of a decode's working memory for latents of ``shape`` (BCHW)."""
        return int(2178 * shape[2] * shape[3] * 64 * _dtype_size(dtype))

    @staticmethod
    def process_input(image: torch.Tensor) -> torch.Tensor:
        """Pixels in 0..1 -> the network's -1..1."""
        return image * 2.0 - 1.0

    @staticmethod
    def process_output(image: torch.Tensor) -> torch.Tensor:
        """The network's -1..1 -> pixels in 0..1 (clamped)."""
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def get_sd(self) -> dict[str, torch.Tensor]:
        """The network's weights in the single-file layout (``encoder.`` / ``decoder.`` ...)."""
        return self.vae.model.state_dict()

    def throw_exception_if_invalid(self) -> None:
        """Nothing to check: a VAE that could not be read never becomes one."""

    def _use(self) -> contextlib.AbstractContextManager[torch.device]:
        return _using(self.manager, [self.vae.model])

    def spacial_compression_decode(self) -> int:
        return self.upscale_ratio

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    def temporal_compression_decode(self) -> None:
        """None: an image VAE (the reference's tiled nodes ask before using the temporal inputs)."""
        return None

    def vae_encode_crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` cut, centred, to multiples of the downscale ratio (a view)."""
        d = self.downscale_ratio
        h, w = pixels.shape[1] // d * d, pixels.shape[2] // d * d
        y0, x0 = (pixels.shape[1] % d) // 2, (pixels.shape[2] % d) // 2
        return pixels[:, y0 : y0 + h, x0 : x0 + w, :]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._use():
            return self.vae.encode(self.vae_encode_crop_pixels(pixels))

    def decode(self, latent: torch.Tensor, vae_options: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` -> IMAGE ``[B, H, W, 3]`` in 0..1 (``vae_options`` are not used)."""
        with self._use():
            return self.vae.decode(latent)

    def _pixel_tiles(self, tile_size: int, overlap: int) -> tuple[int, int]:
        d = self.downscale_ratio
        tile = max(d, tile_size // d * d)
        return tile, min(overlap // d * d, tile - d)

    def encode_tiled(
        self,
        pixels: torch.Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> torch.Tensor:
        """The reference's signature: tiles and overlap in pixels (512, 512, 64 by default)."""
        size = _square_tile(tile_x, tile_y, 512)
        tile, over = self._pixel_tiles(size, 64 if overlap is None else int(overlap))
        with self._use():
            return self.vae.encode_tiled(self.vae_encode_crop_pixels(pixels), tile, over)

    def decode_tiled(
        self,
        latent: torch.Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> torch.Tensor:
        """The reference's signature: tiles and overlap in latent pixels (64, 64, 16 by default)."""
        d = self.downscale_ratio
        size = _square_tile(tile_x, tile_y, 64)
        tile, over = self._pixel_tiles(size * d, (16 if overlap is None else int(overlap)) * d)
        with self._use():
            return self.vae.decode_tiled(latent, tile // d, over // d)


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 4


def _square_tile(tile_x: int | None, tile_y: int | None, default: int) -> int:
    """Our tiles are square: the smaller of the reference's two sizes (``default`` when unset)."""
    return min(default if tile_x is None else int(tile_x), default if tile_y is None else int(tile_y))


# --- the functions the loader nodes call ------------------------------------------------------


def load_checkpoint(path: Path) -> tuple[DiffusionModel, TextEncoder | None, Autoencoder | None]:
    """CheckpointLoaderSimple: (MODEL, CLIP or None, VAE or None) from a single-file checkpoint."""
    manager = _manager()
    loaded: LoadedCheckpoint = _load(
        "checkpoint", Path(path), _read_checkpoint(_compute_dtype(manager), _embedding_lookup())
    )
    fmt = latent_format_for(loaded.family.name)
    model = DiffusionModel(loaded.unet, loaded.family, manager)
    clip = TextEncoder(loaded.stack, manager) if loaded.stack is not None else None
    vae = Autoencoder(loaded.vae, fmt, manager) if loaded.vae is not None else None
    return model, clip, vae


def load_vae(path: Path) -> Autoencoder:
    """VAELoader: a standalone autoencoder (its latent format is only used for previews)."""
    manager = _manager()
    dtype = _compute_dtype(manager)
    vae: VAE = _load("vae", Path(path), lambda p, check: ckpt.load_vae(p, check, dtype))
    from plugins.core_nodes.models.latent_formats import latent_format_for_channels

    return Autoencoder(vae, latent_format_for_channels(vae.latent_channels) or SD15, manager)


def load_pixel_space_vae() -> Autoencoder:
    """VAELoader's ``pixel_space``: the image is the latent (``2 * image - 1``, channels first)."""
    vae = Autoencoder(PixelSpaceVAE(), PIXEL_SPACE, _manager())
    vae.disable_offload = True  # one scalar: never worth moving off the compute device
    return vae


def load_taesd_vae(encoder_path: Path, decoder_path: Path, family: str) -> Autoencoder:
    """VAELoader's ``taesd`` / ``taesdxl`` / ``taesd3`` / ``taef1``: the tiny autoencoder from its
    two vae_approx files, speaking the family's VAE-space latents."""
    from plugins.core_nodes.models.taesd import FAMILY_FORMATS, TAESDVAE, load_taesd

    manager = _manager()
    model = load_taesd(Path(encoder_path), Path(decoder_path), family)
    return Autoencoder(TAESDVAE(model), FAMILY_FORMATS.get(family, SD15), manager)


def vae_from_state_dict(sd: Mapping[str, torch.Tensor], name: str = "the VAE weights") -> Autoencoder:
    """An autoencoder from weights already read (not cached: there is no file to key it by)."""
    manager = _manager()
    return Autoencoder(ckpt.vae_from_state_dict(sd, name, _compute_dtype(manager)), SD15, manager)


def load_unet(path: Path, weight_dtype: str = "default") -> DiffusionModel:
    """UNETLoader. Flux and SD3 files keep fp8 storage (the file's, or ``weight_dtype``'s) and
    cast per layer; other families load the fp8 choices at the compute dtype."""
    manager = _manager()
    dtype = _compute_dtype(manager)
    family, unet = _load(
        "diffusion_model:" + weight_dtype,
        Path(path),
        lambda p, check: ckpt.load_diffusion_model(p, check, dtype, weight_dtype),
    )
    return DiffusionModel(unet, family, manager)


# CLIPLoader / DualCLIPLoader types -> the encoder role of each file, in order.
_CLIP_ROLES: dict[tuple[str, int], tuple[str, ...]] = {
    ("stable_diffusion", 1): ("l",),
    ("sdxl", 2): ("l", "g"),
    ("flux", 2): ("l", "t5xxl"),
}


def _roles(paths: Sequence[Path], clip_type: str) -> tuple[str, ...]:
    roles = _CLIP_ROLES.get((clip_type, len(paths)))
    if roles is None:
        raise ckpt.CheckpointError(f"text encoder type {clip_type!r} is not supported by this server")
    return roles


def load_clip(
    paths: Sequence[Path], clip_type: str = "stable_diffusion", device: str = "default"
) -> TextEncoder:
    """CLIPLoader / DualCLIPLoader / TripleCLIPLoader: standalone ``text_encoders/`` files.

    One file of type ``stable_diffusion`` is CLIP-L (SD1) or OpenCLIP-H (SD2, told by its width);
    two files of type ``sdxl`` are CLIP-L and OpenCLIP-G, in either order; one to three files of
    type ``sd3`` are SD3's CLIP-L / OpenCLIP-G / T5-XXL, each told by its contents.
    """
    manager = _manager()
    dtype = _compute_dtype(manager)
    embeddings = _embedding_lookup()
    paths = [Path(p) for p in paths]
    # Multi-file types tell their files apart by their contents, so a set is cached under one
    # order of its files (one cache entry, one copy in memory); the files load in the slots'
    # order, which breaks a tie the contents leave.
    cache_order = sorted(paths, key=lambda p: str(p.resolve()))
    # SD3 sets (one to three files) are told apart by their contents, not by slot.
    roles = () if clip_type == "sd3" else _roles(paths, clip_type)

    def loader(_path: Path, check: Callable[[], None]) -> LoadedText:
        files = []
        for p in paths:
            check()
            files.append(load_state_dict_file_checked(p))
        names = [p.name for p in paths]
        if clip_type == "sd3":
            from plugins.core_nodes.models.sd3_text import sd3_stack_from_files

            try:
                stack = sd3_stack_from_files(files, embeddings)
            except (ValueError, KeyError, RuntimeError) as e:
                raise ckpt.CheckpointError(f"{', '.join(names)}: not SD3 text encoders ({e})") from None
            return LoadedText(stack, _cast_stack(stack, dtype))
        if clip_type == "flux":
            from plugins.core_nodes.models.flux_family import flux_text_stack

            try:
                stack = flux_text_stack(files, embeddings, dtype)
            except (ValueError, KeyError, RuntimeError) as e:
                raise ckpt.CheckpointError(f"{', '.join(names)}: not Flux text encoders ({e})") from None
            return LoadedText(stack, tuple(encoder.model for encoder in stack.encoders.values()))
        file_roles = roles
        if len(files) == 2 and _width(files[0]) > _width(files[1]):
            files.reverse()  # CLIP-L is the narrower of SDXL's pair, whichever slot it came in
        elif len(files) == 1 and _width(files[0]) == 1024:
            file_roles = ("h",)
        try:
            stack = stack_from_encoder_files(dict(zip(file_roles, files, strict=True)), embeddings=embeddings)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ckpt.CheckpointError(
                f"{', '.join(names)}: not text encoders this server knows ({e})"
            ) from None
        return LoadedText(stack, _cast_stack(stack, dtype))

    # The cache key is the set's first file; the kind names the whole set so another pair
    # reloads, and a change to any file of the set reloads it.
    kind = "clip:" + clip_type + ":" + "|".join(str(p.resolve()) for p in cache_order)
    loaded: LoadedText = _load(kind, cache_order[0], loader, also=cache_order[1:])
    return TextEncoder(loaded.stack, manager)


def load_state_dict_file_checked(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_state_dict_file(path)
    except ValueError as e:
        raise ckpt.CheckpointError(str(e)) from None


def _width(sd: Mapping[str, torch.Tensor]) -> int:
    for key, value in sd.items():
        if key.endswith("token_embedding.weight"):
            return int(value.shape[-1])
    return 0


def apply_lora(
    model: DiffusionModel | None,
    clip: TextEncoder | None,
    path: Path,
    strength_model: float,
    strength_clip: float,
) -> tuple[DiffusionModel | None, TextEncoder | None]:
    """LoraLoader: new MODEL / CLIP adapters with the LoRA's changes overlaid at the strengths."""
    path = Path(path)
    try:
        sd = load_state_dict_file(path)
    except ValueError as e:
        raise LoraError(str(e)) from None
    return apply_lora_state_dict(model, clip, sd, strength_model, strength_clip, name=path.name)


def _unet_of(model: Any) -> UNetModel | None:
    """The UNet a MODEL runs: ours, or the one under a pack's ``ModelPatcher`` class that took
    over our MODEL (ComfyUI-GGUF's ``GGUFModelPatcher.clone`` turns the loader's MODEL into one)."""
    if isinstance(model, DiffusionModel):
        return model.unet
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    return inner if isinstance(inner, UNetModel) else None


def apply_lora_state_dict(
    model: DiffusionModel | None,
    clip: TextEncoder | None,
    sd: Mapping[str, torch.Tensor],
    strength_model: float,
    strength_clip: float,
    name: str = "(state dict)",
) -> tuple[DiffusionModel | None, TextEncoder | None]:
    """:func:`apply_lora` on LoRA weights already read (``name`` is what errors call them)."""
    deltas = read_deltas(sd)
    if not deltas:
        raise LoraError(f"{name} holds no LoRA weights this server knows")
    unet = _unet_of(model)
    encoders = clip.models if isinstance(clip, TextEncoder) else {}
    found = resolve(deltas, unet, encoders)
    if found.unmatched:
        first = found.unmatched[0]
        reason = found.reasons.get(first)
        log.warning(
            "LoRA %s: %d keys fit no layer of this model, e.g. %s%s",
            name,
            len(found.unmatched),
            first,
            f" ({reason})" if reason else "",
        )
    if not found.unet and not any(found.text.values()):
        raise LoraError(f"{name} does not fit this model: none of its {len(deltas)} LoRA keys match")
    new_model, new_clip = model, clip
    if isinstance(model, DiffusionModel) and found.unet and strength_model != 0:
        new_model = model.with_patches({name: ((strength_model, delta),) for name, delta in found.unet.items()})
    elif unet is not None and found.unet and strength_model != 0:
        # A pack's patcher class over our model merges the patches itself (patch_weight_to_device),
        # as the reference's ModelPatcher subclasses do.
        new_model = model.clone()
        new_model.add_patches({_UNET_PREFIX + name: delta for name, delta in found.unet.items()}, strength_model)
    if isinstance(clip, TextEncoder) and any(found.text.values()) and strength_clip != 0:
        new_clip = clip.clone()
        for encoder, deltas in found.text.items():
            new_clip.add_patches({_text_key(encoder, param): delta for param, delta in deltas.items()}, strength_clip)
    return new_model, new_clip


__all__ = [
    "Autoencoder",
    "DiffusionModel",
    "LoadedCheckpoint",
    "TextEncoder",
    "apply_lora",
    "apply_lora_state_dict",
    "latent_format_for",
    "load_checkpoint",
    "load_clip",
    "load_unet",
    "load_vae",
    "vae_from_state_dict",
]
