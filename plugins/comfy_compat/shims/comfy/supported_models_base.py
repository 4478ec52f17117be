"""``comfy.supported_models_base``: the base of the reference's per-family model configs.

A config class says which UNet configs it matches (``unet_config`` as a subset, plus
``required_keys`` in the state dict), which latent format, sampling settings and state-dict
prefixes the family uses, and which text encoder it pairs with (``clip_target``). Packs subclass
:class:`BASE` for their own families (Kolors, PixArt) and check ``isinstance(model.model
.model_config, comfy.supported_models.SDXL)``; the latter also answers True for the server's own
model configs of that family (see :class:`_FamilyCheck`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

import comfy.latent_formats
import comfy.utils
import torch

log = logging.getLogger("comfykernel.compat")


class ClipTarget:
    """The tokenizer and text-encoder classes of a family, plus construction ``params``."""

    def __init__(self, tokenizer: Any, clip: Any) -> None:
        self.clip = clip
        self.tokenizer = tokenizer
        self.params: dict[str, Any] = {}


class _FamilyCheck(type):
    """``isinstance(cfg, SDXL)`` for configs that are not instances of these classes.

    The server's own MODELs carry a model config of its own class (``plugins.core_nodes``), so a
    pack's ``isinstance`` check goes by family instead: the config's ``name`` when it is one of
    the core families (``sd1``, ``sd2``, ``sdxl``, ``sdxl_refiner``) or names a class of
    :mod:`comfy.supported_models`, else the first class in ``supported_models.models``
    whose ``matches`` accepts the config's ``unet_config``. The check passes when that class is
    the one asked about or a subclass of it, as it would for the reference's own objects.
    """

    def __instancecheck__(cls, obj: Any) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        unet_config = getattr(obj, "unet_config", None)
        if not isinstance(unet_config, Mapping) or isinstance(type(obj), _FamilyCheck):
            return False
        family = _family_of(obj, unet_config)
        return family is not None and issubclass(family, cls)


# The core nodes' family names -> the reference's config classes.
_CORE_FAMILIES = {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL", "sdxl_refiner": "SDXLRefiner"}


def _family_of(obj: Any, unet_config: Mapping[str, Any]) -> type | None:
    import comfy.supported_models as families

    name = str(getattr(obj, "name", ""))
    named = getattr(families, _CORE_FAMILIES.get(name, name), None) if name else None
    if isinstance(named, type) and issubclass(named, BASE):
        return named
    return next((m for m in families.models if m.matches(unet_config)), None)


class BASE(metaclass=_FamilyCheck):
    """A model family's configuration (class attributes) and its UNet config (instance)."""

    unet_config: dict[str, Any] = {}  # noqa: RUF012 - class-level table, copied per instance
    unet_extra_config: dict[str, Any] = {"num_heads": -1, "num_head_channels": 64}  # noqa: RUF012
    required_keys: dict[str, Any] = {}  # noqa: RUF012
    clip_prefix: list[str] = []  # noqa: RUF012
    clip_vision_prefix: str | None = None
    noise_aug_config: dict[str, Any] | None = None
    sampling_settings: dict[str, Any] = {}  # noqa: RUF012
    latent_format: Any = comfy.latent_formats.LatentFormat
    vae_key_prefix = ["first_stage_model."]  # noqa: RUF012
    text_encoder_key_prefix = ["cond_stage_model."]  # noqa: RUF012
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]  # noqa: RUF012
    memory_usage_factor = 2.0
    manual_cast_dtype: torch.dtype | None = None
    custom_operations: Any = None
    quant_config: Any = None
    optimizations: dict[str, Any] = {"fp8": False}  # noqa: RUF012

    @classmethod
    def matches(cls, unet_config: Mapping[str, Any], state_dict: Mapping[str, Any] | None = None) -> bool:
        """True when every key of the class's ``unet_config`` has the same value in
        ``unet_config`` (and, given a state dict, every ``required_keys`` key is in it)."""
        for key, value in cls.unet_config.items():
            if key not in unet_config or unet_config[key] != value:
                return False
        return state_dict is None or all(key in state_dict for key in cls.required_keys)

    def __init__(self, unet_config: Mapping[str, Any]) -> None:
        self.unet_config = dict(unet_config)
        self.sampling_settings = dict(self.sampling_settings)
        self.latent_format = self.latent_format()
        self.optimizations = dict(self.optimizations)
        self.unet_config.update(self.unet_extra_config)

    def model_type(self, state_dict: Mapping[str, Any], prefix: str = "") -> Any:
        import comfy.model_base

        return comfy.model_base.ModelType.EPS

    def inpaint_model(self) -> bool:
        return self.unet_config["in_channels"] > 4

    def get_model(self, state_dict: Mapping[str, Any], prefix: str = "", device: Any = None) -> Any:
        """The reference builds its network here; this server loads models only through its
        loaders (``comfy.sd``), so this raises ``NotImplementedError``."""
        raise NotImplementedError(
            f"{type(self).__name__}.get_model: comfykernel builds models only through comfy.sd's loaders"
        )

    def clip_target(self, state_dict: Mapping[str, Any] | None = None) -> ClipTarget | None:
        return None

    def process_clip_state_dict(self, state_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return comfy.utils.state_dict_prefix_replace(
            state_dict, {k: "" for k in self.text_encoder_key_prefix}, filter_keys=True
        )

    def process_unet_state_dict(self, state_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return state_dict

    def process_vae_state_dict(self, state_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return state_dict

    def process_clip_state_dict_for_saving(self, state_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return comfy.utils.state_dict_prefix_replace(state_dict, {"": self.text_encoder_key_prefix[0]})

    def process_clip_vision_state_dict_for_saving(self, state_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        replace = {"": self.clip_vision_prefix} if self.clip_vision_prefix is not None else {}
        return comfy.utils.state_dict_prefix_replace(state_dict, replace)

    def process_unet_state_dict_for_saving(self, state_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return comfy.utils.state_dict_prefix_replace(state_dict, {"": "model.diffusion_model."})

    def process_vae_state_dict_for_saving(self, state_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return comfy.utils.state_dict_prefix_replace(state_dict, {"": self.vae_key_prefix[0]})

    def set_inference_dtype(self, dtype: torch.dtype, manual_cast_dtype: torch.dtype | None) -> None:
        self.unet_config["dtype"] = dtype
        self.manual_cast_dtype = manual_cast_dtype

    def __getattr__(self, name: str) -> Any:
        # The reference answers None (with a warning) for any attribute it lacks; packs rely on it.
        if name.startswith("__"):
            raise AttributeError(name)
        log.warning("you accessed %s from the model config object which doesn't exist", name)
        return None
