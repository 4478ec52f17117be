"""Guidance variants as model patches: APG, CFGNorm, CFGZeroStar, Mahiro, TCFG, PerpNeg, SAG, PAG,
FreSca, NAG, skip-layer guidance, epsilon scaling and temporal score rescaling (group B).

Every node clones the MODEL and installs functions from :mod:`plugins.core_nodes.patches`
through the MODEL's patch API (pre-/post-CFG functions, a CFG function, attention replacements
and output patches, a ``calc_cond_batch`` function); the sampler applies them. The
method names and return tuples are the reference's (``patch`` and the newer ``execute``), so packs
calling them directly get what they expect.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from plugins.core_nodes.nodes.common import ClassExecute, CoreNode

# Where in the sampler's CFG step a patch runs: the MODEL's ``set_model_sampler_<stage>_function``.
Stage = Literal["pre_cfg", "cfg", "post_cfg", "calc_cond_batch"]


def _float(
    default: float, low: float, high: float, step: float, advanced: bool = False, **extra: Any
) -> tuple[str, dict[str, Any]]:
    options: dict[str, Any] = {"default": default, "min": low, "max": high, "step": step, **extra}
    if advanced:
        options["advanced"] = True
    return ("FLOAT", options)


def _model_only() -> dict[str, Any]:
    return {"required": {"model": ("MODEL", {})}}


def _install(model: Any, stage: Stage, function: Any, **options: Any) -> tuple[Any]:
    """A clone of ``model`` with ``function`` installed at ``stage`` of the sampler's CFG step."""
    m = model.clone()
    getattr(m, f"set_model_sampler_{stage}_function")(function, **options)
    return (m,)


class _ModelPatch(ClassExecute, CoreNode):
    """A node that returns a patched clone of its MODEL."""

    RETURN_TYPES: ClassVar[tuple[str, ...]] = ("MODEL",)
    FUNCTION: ClassVar[str] = "patch"

    def patch(self, model: Any, **inputs: Any) -> tuple[Any]:  # pragma: no cover - overridden
        raise NotImplementedError


class _Unnamed(_ModelPatch):
    # The reference's schemas for these nodes name no display name: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True


class _FixedRule(_ModelPatch):
    """A node whose only input is the MODEL: it installs one fixed rule of ``patches.cfg_rules``."""

    RETURN_NAMES = ("patched_model",)
    STAGE: ClassVar[Stage]
    RULE: ClassVar[str]  # the rule's name in plugins.core_nodes.patches.cfg_rules

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _model_only()

    def patch(self, model: Any) -> tuple[Any]:  # type: ignore[override]
        # Imported on use, like every rule here, so loading the node table stays cheap.
        rules = importlib.import_module("plugins.core_nodes.patches.cfg_rules")
        return _install(model, self.STAGE, getattr(rules, self.RULE))


# --- CFG arithmetic ------------------------------------------------------------------------------


class APG(_ModelPatch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_apg"
    CATEGORY = "model/sampling/custom"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "eta": _float(1.0, -10.0, 10.0, 0.01, advanced=True),
                "norm_threshold": _float(5.0, 0.0, 50.0, 0.1, advanced=True),
                "momentum": _float(0.0, -5.0, 1.0, 0.01, advanced=True),
            }
        }

    def patch(self, model: Any, eta: float, norm_threshold: float, momentum: float) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.cfg_rules import AdaptiveProjectedGuidance

        return _install(model, "pre_cfg", AdaptiveProjectedGuidance(eta, norm_threshold, momentum))


class CFGZeroStar(_FixedRule):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_cfg"
    CATEGORY = "advanced/guidance"
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True  # see _Unnamed
    STAGE = "post_cfg"
    RULE = "cfg_zero_star"


class CFGNorm(_Unnamed):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_cfg"
    CATEGORY = "advanced/guidance"
    EXPERIMENTAL = True
    RETURN_NAMES = ("patched_model",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"model": ("MODEL", {}), "strength": _float(1.0, 0.0, 100.0, 0.01)},
            "optional": {"pre_cfg": ("BOOLEAN", {"default": False})},
        }

    def patch(self, model: Any, strength: float, pre_cfg: bool = False) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.cfg_rules import cfg_norm_post, cfg_norm_pre

        if pre_cfg:
            return _install(model, "cfg", cfg_norm_pre(strength))
        return _install(model, "post_cfg", cfg_norm_post(strength))


class Mahiro(_FixedRule):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_mahiro"
    CATEGORY = "experimental"
    EXPERIMENTAL = True
    STAGE = "post_cfg"
    RULE = "mahiro"


class TCFG(_FixedRule):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_tcfg"
    CATEGORY = "advanced/guidance"
    STAGE = "pre_cfg"
    RULE = "tangential_damping_cfg"


class FreSca(_ModelPatch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_fresca"
    CATEGORY = "experimental"
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "scale_low": _float(1.0, 0, 10, 0.01, advanced=True),
                "scale_high": _float(1.25, 0, 10, 0.01, advanced=True),
                "freq_cutoff": ("INT", {"advanced": True, "default": 20, "min": 1, "max": 10000, "step": 1}),
            }
        }

    def patch(self, model: Any, scale_low: float, scale_high: float, freq_cutoff: int) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.cfg_rules import fresca

        return _install(model, "pre_cfg", fresca(scale_low, scale_high, int(freq_cutoff)))


class EpsilonScaling(_Unnamed):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_eps"
    CATEGORY = "model/patch/unet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "scaling_factor": _float(1.005, 0.5, 1.5, 0.001, advanced=True, display="number"),
            }
        }

    def patch(self, model: Any, scaling_factor: float) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.cfg_rules import epsilon_scaling

        return _install(model, "post_cfg", epsilon_scaling(scaling_factor))


class TemporalScoreRescaling(_ModelPatch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_eps"
    CATEGORY = "model/patch/unet"
    RETURN_NAMES = ("patched_model",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "tsr_k": _float(0.95, 0.01, 100.0, 0.001, advanced=True, display="number"),
                "tsr_sigma": _float(1.0, 0.01, 100.0, 0.001, advanced=True, display="number"),
            }
        }

    def patch(self, model: Any, tsr_k: float, tsr_sigma: float) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.cfg_rules import temporal_score_rescaling

        return _install(model, "post_cfg", temporal_score_rescaling(tsr_k, tsr_sigma))


# --- Perp-Neg --------------------------------------------------------------------------------------


class PerpNeg(_ModelPatch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_perpneg"
    CATEGORY = "experimental"
    EXPERIMENTAL = True
    DEPRECATED = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "empty_conditioning": ("CONDITIONING", {}),
                "neg_scale": _float(1.0, 0.0, 100.0, 0.01, advanced=True),
            }
        }

    def patch(self, model: Any, empty_conditioning: list[Any], neg_scale: float) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.perp_neg import perp_neg_cfg_function

        return _install(model, "cfg", perp_neg_cfg_function(empty_conditioning, neg_scale))


class PerpNegGuider(ClassExecute, CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_perpneg"
    CATEGORY = "experimental"
    EXPERIMENTAL = True
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "positive": ("CONDITIONING", {}),
                "negative": ("CONDITIONING", {}),
                "empty_conditioning": ("CONDITIONING", {}),
                "cfg": _float(8.0, 0.0, 100.0, 0.1, round=0.01),
                "neg_scale": _float(1.0, 0.0, 100.0, 0.01, advanced=True),
            }
        }

    def get_guider(
        self,
        model: Any,
        positive: list[Any],
        negative: list[Any],
        empty_conditioning: list[Any],
        cfg: float,
        neg_scale: float,
    ) -> tuple[Any]:
        from plugins.core_nodes.patches.perp_neg import PerpNegGuider as Guider

        guider = Guider(model)
        guider.set_conds(positive, negative, empty_conditioning)
        guider.set_cfg(cfg, neg_scale)
        return (guider,)


# --- guidance from a second, perturbed pass ---------------------------------------------------------


class SelfAttentionGuidance(_ModelPatch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_sag"
    CATEGORY = "experimental"
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "scale": _float(0.5, -2.0, 5.0, 0.01),
                "blur_sigma": _float(2.0, 0.0, 10.0, 0.1, advanced=True),
            }
        }

    def patch(self, model: Any, scale: float, blur_sigma: float) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.attention_guidance import SelfAttentionGuidance as SAG

        sag = SAG(scale, blur_sigma)
        m = model.clone()
        m.set_model_sampler_post_cfg_function(sag.post_cfg, disable_cfg1_optimization=True)
        # The middle block's first self-attention, where the reference (after diffusers) reads the map.
        m.set_model_attn1_replace(sag.attention, "middle", 0, 0)
        return (m,)


class PerturbedAttentionGuidance(_Unnamed):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_pag"
    CATEGORY = "model/patch/unet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL", {}), "scale": _float(3.0, 0.0, 100.0, 0.01, round=0.01)}}

    def patch(self, model: Any, scale: float) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.attention_guidance import perturbed_attention_guidance

        return _install(model, "post_cfg", perturbed_attention_guidance(scale, "middle", 0))


class NAGuidance(_ModelPatch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_nag"
    CATEGORY = "advanced/guidance"
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "nag_scale": _float(5.0, 0.0, 50.0, 0.1),
                "nag_alpha": _float(0.5, 0.0, 1.0, 0.01),
                "nag_tau": _float(1.5, 1.0, 10.0, 0.01),
            }
        }

    def patch(self, model: Any, nag_scale: float, nag_alpha: float, nag_tau: float) -> tuple[Any]:  # type: ignore[override]
        from plugins.core_nodes.patches.nag import nag_output_patch

        m = model.clone()
        m.set_model_attn1_output_patch(nag_output_patch(nag_scale, nag_alpha, nag_tau))
        m.disable_model_cfg1_optimization()
        return (m,)


def _layers() -> dict[str, Any]:
    text = ("STRING", {"advanced": True, "default": "7, 8, 9", "multiline": False})
    return {"double_layers": text, "single_layers": (text[0], dict(text[1]))}


class _SkipLayers(_Unnamed):
    """Guidance that skips chosen DiT blocks between two sampling percents."""

    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_slg"
    CATEGORY = "advanced/guidance"
    EXPERIMENTAL = True
    FUNCTION = "skip_guidance"

    @staticmethod
    def _install_skip(
        model: Any,
        double_layers: str,
        single_layers: str,
        start_percent: float,
        end_percent: float,
        stage: Stage,
        make: Callable[[list[int], list[int], float, float], Any],
    ) -> tuple[Any]:
        """``make(double, single, sigma_start, sigma_end)`` installed at ``stage``; the MODEL as is
        when no layer is named."""
        from plugins.core_nodes.patches.attention_guidance import layer_numbers

        double, single = layer_numbers(double_layers), layer_numbers(single_layers)
        sampling = model.get_model_object("model_sampling")
        sigma_start, sigma_end = sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent)
        if not double and not single:
            return (model,)
        return _install(model, stage, make(double, single, sigma_start, sigma_end))


class SkipLayerGuidanceDiT(_SkipLayers):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                **_layers(),
                "scale": _float(3.0, 0.0, 10.0, 0.1),
                "start_percent": _float(0.01, 0.0, 1.0, 0.001, advanced=True),
                "end_percent": _float(0.15, 0.0, 1.0, 0.001, advanced=True),
                "rescaling_scale": _float(0.0, 0.0, 10.0, 0.01),
            }
        }

    def skip_guidance(
        self,
        model: Any,
        scale: float,
        start_percent: float,
        end_percent: float,
        double_layers: str = "",
        single_layers: str = "",
        rescaling_scale: float = 0.0,
    ) -> tuple[Any]:
        from plugins.core_nodes.patches.attention_guidance import skip_layer_guidance

        def make(double: list[int], single: list[int], sigma_start: float, sigma_end: float) -> Any:
            return skip_layer_guidance(double, single, scale, sigma_start, sigma_end, rescaling_scale)

        return self._install_skip(model, double_layers, single_layers, start_percent, end_percent, "post_cfg", make)


class SkipLayerGuidanceDiTSimple(_SkipLayers):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                **_layers(),
                "start_percent": _float(0.0, 0.0, 1.0, 0.001, advanced=True),
                "end_percent": _float(1.0, 0.0, 1.0, 0.001, advanced=True),
            }
        }

    def skip_guidance(
        self, model: Any, start_percent: float, end_percent: float, double_layers: str = "", single_layers: str = ""
    ) -> tuple[Any]:
        from plugins.core_nodes.patches.attention_guidance import skip_layer_uncond

        return self._install_skip(
            model, double_layers, single_layers, start_percent, end_percent, "calc_cond_batch", skip_layer_uncond
        )


NODES: dict[str, tuple[type, str | None]] = {
    "APG": (APG, "Adaptive Projected Guidance"),
    "CFGZeroStar": (CFGZeroStar, None),
    "CFGNorm": (CFGNorm, None),
    "Mahiro": (Mahiro, "Positive-Biased Guidance"),
    "TCFG": (TCFG, "Tangential Damping CFG"),
    "FreSca": (FreSca, "FreSca"),
    "Epsilon Scaling": (EpsilonScaling, None),
    "TemporalScoreRescaling": (TemporalScoreRescaling, "TSR - Temporal Score Rescaling"),
    "PerpNeg": (PerpNeg, "Perp-Neg (DEPRECATED by Perp-Neg Guider)"),
    "PerpNegGuider": (PerpNegGuider, "Perp-Neg Guider"),
    "SelfAttentionGuidance": (SelfAttentionGuidance, "Self-Attention Guidance"),
    "PerturbedAttentionGuidance": (PerturbedAttentionGuidance, None),
    "NAGuidance": (NAGuidance, "Normalized Attention Guidance"),
    "SkipLayerGuidanceDiT": (SkipLayerGuidanceDiT, None),
    "SkipLayerGuidanceDiTSimple": (SkipLayerGuidanceDiTSimple, None),
}
