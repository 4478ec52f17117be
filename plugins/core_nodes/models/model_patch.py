"""MODEL_PATCH values: the add-on networks of ``models/model_patches`` (ModelPatchLoader).

A model patch file is told apart by the keys it holds, as the reference does:

===========================  ==============================================  ====================
kind                         telling key                                     patches
===========================  ==============================================  ====================
``qwen_image_diffsynth``     ``controlnet_blocks.0.y_rms.weight``            Qwen-Image
``uso_style_projector``      ``feature_embedder.mid_layer_norm.bias``        Flux (USO)
``z_image_fun_controlnet``   ``control_all_x_embedder.2-1.weight``           Z-Image
``multitalk``                ``audio_proj.proj1.weight``                     Wan 2.1
``supir``                    ``[model.]control_model.input_hint_block.0...`` SDXL (SUPIR)
===========================  ==============================================  ====================

The two small networks (the Qwen-Image block-wise ControlNet and the USO SigLIP projector) are
built with their sizes read off the weights; the others are kept as their (renamed) weights with
the settings the reference derives from them, since this server runs none of the models they
patch. The value is a :class:`~plugins.core_nodes.models.patcher.ModelPatcher` whose ``model`` is
that network, as the reference hands it to the apply nodes.

The apply nodes attach their patch through the MODEL's patch points (``double_block``,
``noise_refiner``, ``post_input``) and register :func:`require_family` as an ``on_pre_run``
callback: sampling a MODEL of another family stops with a :class:`UnsupportedModelFamily` naming
both, instead of the patch being silently ignored by a network that has no such patch point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

QWEN_IMAGE = "qwen_image_diffsynth"
USO = "uso_style_projector"
Z_IMAGE = "z_image_fun_controlnet"
MULTITALK = "multitalk"
SUPIR = "supir"

# What each kind patches, as errors name it.
TARGET_FAMILY = {
    QWEN_IMAGE: "Qwen-Image",
    USO: "Flux (USO)",
    Z_IMAGE: "Z-Image",
    MULTITALK: "Wan 2.1 (MultiTalk)",
    SUPIR: "SDXL (SUPIR)",
}
# Our MODEL families, by ``ModelFamily.name``, as errors name them.
_FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
FAMILY_CHECK_KEY = "model_patch_family"


class ModelPatchError(ValueError):
    """The file is not a model patch this server knows (named in the message)."""


class UnsupportedModelFamily(RuntimeError):
    """A model patch was sampled on a MODEL of a family it cannot patch."""


# --- the Qwen-Image DiffSynth block-wise ControlNet -----------------------------------------------


class BlockWiseControlBlock(nn.Module):
    """One layer's control: RMS-normed image and control tokens, added, through linear-GELU-linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.x_rms = nn.RMSNorm(dim, eps=1e-6)
        self.y_rms = nn.RMSNorm(dim, eps=1e-6)
        self.input_proj = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.output_proj(self.act(self.input_proj(self.x_rms(x) + self.y_rms(y))))


class QwenImageBlockWiseControlNet(nn.Module):
    """``img_in`` (packed 2x2 latent patches, plus mask channels for the inpainting variant) and
    one :class:`BlockWiseControlBlock` per transformer block of the model."""

    def __init__(self, num_layers: int, in_dim: int, additional_in_dim: int, dim: int) -> None:
        super().__init__()
        self.additional_in_dim = additional_in_dim
        self.img_in = nn.Linear(in_dim + additional_in_dim, dim)
        self.controlnet_blocks = nn.ModuleList(BlockWiseControlBlock(dim) for _ in range(num_layers))

    def control_block(self, img: torch.Tensor, controlnet_conditioning: torch.Tensor, block_id: int) -> torch.Tensor:
        return self.controlnet_blocks[block_id](img, controlnet_conditioning)


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered sub-modules ``prefix<N>.`` the weights hold."""
    numbers = {k[len(prefix) :].split(".", 1)[0] for k in sd if k.startswith(prefix)}
    return 1 + max((int(n) for n in numbers if n.isdigit()), default=-1)


def _qwen_image(sd: dict[str, torch.Tensor]) -> nn.Module:
    dim, width = sd["img_in.weight"].shape
    # The base input is 16 latent channels packed 2x2 (64); anything beyond is the mask.
    return QwenImageBlockWiseControlNet(_count(sd, "controlnet_blocks."), 64, width - 64, dim)


# --- the USO style projector -----------------------------------------------------------------------


class SiglipStyleProjector(nn.Module):
    """USO's projection of three SigLIP layers' hidden states (layers -20, -11 and the
    penultimate) to style tokens: a linear map over the token axis with SiLU, a layer norm and a
    projection to the model width; the three token sets concatenated high, mid, low."""

    LEVELS = ("high", "mid", "low")

    def __init__(self, siglip_tokens: int, style_tokens: int, siglip_dim: int, hidden: int, layer_norm: bool) -> None:
        super().__init__()
        for level in self.LEVELS:
            self.add_module(f"{level}_embedding_linear", nn.Sequential(nn.Linear(siglip_tokens, style_tokens), nn.SiLU()))
            self.add_module(f"{level}_layer_norm", nn.LayerNorm(siglip_dim) if layer_norm else nn.Identity())
            self.add_module(f"{level}_projection", nn.Linear(siglip_dim, hidden))

    def _level(self, level: str, hidden_states: torch.Tensor) -> torch.Tensor:
        linear = getattr(self, f"{level}_embedding_linear")
        dtype = linear[0].weight.dtype
        tokens = linear(hidden_states.to(dtype).transpose(1, 2)).transpose(1, 2)
        return getattr(self, f"{level}_projection")(getattr(self, f"{level}_layer_norm")(tokens))

    def forward(self, siglip_outputs: torch.Tensor) -> torch.Tensor:
        """``siglip_outputs``: ``[3, B, tokens, dim]`` stacked as (layer -20, layer -11, penultimate)."""
        high = self._level("high", siglip_outputs[2])
        mid = self._level("mid", siglip_outputs[1])
        low = self._level("low", siglip_outputs[0])
        return torch.cat((high, mid, low), dim=1)


def _uso(sd: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    sd = {k[len("feature_embedder.") :]: v for k, v in sd.items() if k.startswith("feature_embedder.")}
    style_tokens, siglip_tokens = sd["high_embedding_linear.0.weight"].shape
    hidden, siglip_dim = sd["high_projection.weight"].shape
    module = SiglipStyleProjector(siglip_tokens, style_tokens, siglip_dim, hidden, "high_layer_norm.weight" in sd)
    return module, sd


# --- kinds kept as weights -----------------------------------------------------------------------


class StoredPatchWeights(nn.Module):
    """The weights of a patch network for a family this server does not run, with the settings
    the reference derives from them (``config``). It has no forward: nothing here samples the
    family it patches."""

    def __init__(self, kind: str, weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> None:
        super().__init__()
        self.kind = kind
        self.weights = dict(weights)
        self.config = dict(config)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, tensors={len(self.weights)}, config={self.config}"


def z_image_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Z-Image Fun ControlNet file in the reference's module layout: separate q/k/v weights
    fused into ``qkv`` (q, k, v order) and the diffusers attention names renamed."""
    renames = {
        ".attention.to_out.0.bias": ".attention.out.bias",
        ".attention.to_out.0.weight": ".attention.out.weight",
        ".attention.norm_q.weight": ".attention.q_norm.weight",
        ".attention.norm_k.weight": ".attention.k_norm.weight",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith((".attention.to_k.weight", ".attention.to_v.weight")):
            continue
        if key.endswith(".attention.to_q.weight"):
            stem = key[: -len("to_q.weight")]
            missing = [p for p in ("to_k.weight", "to_v.weight") if stem + p not in sd]
            if missing:
                raise ModelPatchError(f"the Z-Image ControlNet's {stem} attention lacks {missing}")
            out[stem + "qkv.weight"] = torch.cat([value, sd[stem + "to_k.weight"], sd[stem + "to_v.weight"]])
            continue
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def z_image_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The reference's settings for the three published Z-Image Fun ControlNet layouts: the
    original (6 control layers), the 3-layer and the 15-layer inpainting ones (17 extra input
    channels, refiner control); a 15-layer file whose refiner projection is all zeros is "broken"."""
    config: dict[str, Any] = {"n_control_layers": 6, "additional_in_dim": 0, "refiner_control": False, "broken": False}
    if "control_layers.4.adaLN_modulation.0.weight" not in sd:
        config.update(n_control_layers=3, additional_in_dim=17, refiner_control=True)
    if "control_layers.14.adaLN_modulation.0.weight" in sd:
        config.update(n_control_layers=15, additional_in_dim=17, refiner_control=True)
        refiner = sd.get("control_noise_refiner.0.after_proj.weight")
        if refiner is not None and int(torch.count_nonzero(refiner)) == 0:
            config["broken"] = True
    return config


def _multitalk_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    return {
        "audio_window": 5,
        "context_tokens": 32,
        "vae_scale": 4,
        "in_dim": sd["blocks.0.audio_cross_attn.proj.weight"].shape[0],
        "intermediate_dim": sd["audio_proj.proj1.weight"].shape[0],
        "out_dim": sd["audio_proj.norm.weight"].shape[0],
    }


def _supir(sd: Mapping[str, torch.Tensor]) -> StoredPatchWeights:
    """SUPIR's control encoder and adapters under ``control_model.`` / ``project_modules.``; the
    denoise encoder (VAE encoder weights SUPIR encodes its input with) kept apart."""
    denoise_prefix = "first_stage_model.denoise_encoder."
    denoise = {k[len(denoise_prefix) :]: v for k, v in sd.items() if k.startswith(denoise_prefix)}
    if "model.control_model.input_hint_block.0.weight" in sd:
        renames = {"model.control_model.": "control_model.", "model.diffusion_model.project_modules.": "project_modules."}
    else:
        renames = {"control_model.": "control_model.", "project_modules.": "project_modules."}
    weights: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for old, new in renames.items():
            if key.startswith(old):
                weights[new + key[len(old) :]] = value
                break
    weights.pop("control_model.mask_LQ", None)
    stored = StoredPatchWeights(SUPIR, weights, {"denoise_encoder": bool(denoise)})
    if denoise:
        stored.denoise_encoder_sd = denoise  # the reference's attribute name
    return stored


# --- detection and loading -----------------------------------------------------------------------


def patch_kind(sd: Mapping[str, torch.Tensor]) -> str:
    """Which model patch these weights are (see the module docstring), or :class:`ModelPatchError`."""
    if "controlnet_blocks.0.y_rms.weight" in sd:
        return QWEN_IMAGE
    if "feature_embedder.mid_layer_norm.bias" in sd:
        return USO
    if "control_all_x_embedder.2-1.weight" in sd:
        return Z_IMAGE
    if "audio_proj.proj1.weight" in sd:
        return MULTITALK
    if "model.control_model.input_hint_block.0.weight" in sd or "control_model.input_hint_block.0.weight" in sd:
        return SUPIR
    raise ModelPatchError(
        "not a model patch: expected a Qwen-Image DiffSynth ControlNet, a USO style projector, a "
        "Z-Image Fun ControlNet, a MultiTalk audio patch or a SUPIR model"
    )


def _load_into(module: nn.Module, sd: Mapping[str, torch.Tensor], kind: str) -> None:
    try:
        module.load_state_dict(dict(sd))
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0][:300]
        raise ModelPatchError(f"the {TARGET_FAMILY[kind]} patch's weights do not fit its network ({detail})") from None


def build_model_patch(sd: Mapping[str, torch.Tensor]) -> nn.Module:
    """The network (or kept weights) of a model patch file's state dict."""
    sd = dict(sd)
    kind = patch_kind(sd)
    if kind == QWEN_IMAGE:
        module = _qwen_image(sd)
        _load_into(module, sd, kind)
    elif kind == USO:
        module, sd = _uso(sd)
        _load_into(module, sd, kind)
    elif kind == Z_IMAGE:
        converted = z_image_keys(sd)
        module = StoredPatchWeights(kind, converted, z_image_config(converted))
    elif kind == MULTITALK:
        module = StoredPatchWeights(kind, sd, _multitalk_config(sd))
    else:
        module = _supir(sd)
    module.patch_kind = kind  # type: ignore[assignment]
    return module.eval().requires_grad_(False)


def kind_of(model_patch: Any) -> str | None:
    """The kind of a MODEL_PATCH value (None for something else)."""
    return getattr(getattr(model_patch, "model", None), "patch_kind", None)


def load_model_patch(path: Any) -> Any:
    """ModelPatchLoader: the file's patch network wrapped as a MODEL_PATCH (a model patcher)."""
    from plugins.core_nodes.models.checkpoint import load_state_dict
    from plugins.core_nodes.models.patcher import ModelPatcher

    sd, _ = load_state_dict(path)
    module = build_model_patch(sd)
    return ModelPatcher(module, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


# --- the family guard ----------------------------------------------------------------------------


def family_label(model: Any) -> str:
    """The sampled MODEL's family, as an error names it."""
    family = getattr(model, "family", None)
    name = getattr(family, "name", None)
    if isinstance(name, str):
        return _FAMILY_LABELS.get(name, name)
    return type(getattr(model, "model", model)).__name__


@dataclass
class FamilyCheck:
    """An ``on_pre_run`` callback: stop the run unless the sampled MODEL is one ``node`` can patch.

    ``accepts`` says, from the MODEL's reference class name, whether the patch applies; this
    server builds SD1/SD2/SDXL models only, so for the DiT families it never does.
    """

    node: str
    target: str
    accepts: Callable[[str], bool] = field(default=lambda _name: False)
    # Replaces the standard text; ``{family}`` is the sampled MODEL's family.
    message: str = ""

    def __call__(self, patcher: Any) -> None:
        class_name = type(getattr(patcher, "model", patcher)).__name__
        if self.accepts(class_name):
            return
        family = family_label(patcher)
        if self.message:
            raise UnsupportedModelFamily(f"{self.node}: " + self.message.format(family=family))
        raise UnsupportedModelFamily(
            f"{self.node}: this patch is for {self.target} models, but the MODEL being sampled is "
            f"{family}; this server cannot sample {self.target} models"
        )


def require_family(model: Any, check: FamilyCheck) -> None:
    """Register ``check`` on the (cloned) MODEL so sampling it verifies the family first."""
    from plugins.core_nodes.models.extension import CallbacksMP

    model.add_callback_with_key(CallbacksMP.ON_PRE_RUN, FAMILY_CHECK_KEY, check)


def require_kind(model_patch: Any, wanted: tuple[str, ...], node: str) -> str:
    """The MODEL_PATCH's kind, or a clear error when ``node`` cannot use it."""
    kind = kind_of(model_patch)
    if kind not in wanted:
        names = ", ".join(TARGET_FAMILY[k] for k in wanted)
        got = "not a model patch" if kind is None else f"a {TARGET_FAMILY[kind]} patch"
        raise ModelPatchError(f"{node} needs a {names} model patch; this MODEL_PATCH is {got}")
    return kind
