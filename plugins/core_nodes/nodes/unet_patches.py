"""UNet patches: FreeU / FreeU_V2, HyperTile, ToMe and the attention multipliers (group B).

Each node clones its MODEL (or CLIP) and installs functions from
:mod:`plugins.core_nodes.patches` through the patch API: an output block patch (FreeU), a
self-attention input/output patch pair (HyperTile, ToMe) or weight patches scaling attention
projections (the multipliers). The method names and tuples are the reference's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import ClassExecute, CoreNode


def _float(default: float) -> tuple[str, dict[str, Any]]:
    """The advanced 0..10 factor these nodes take."""
    return ("FLOAT", {"advanced": True, "default": default, "min": 0.0, "max": 10.0, "step": 0.01})


class _Patch(ClassExecute, CoreNode):
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ("MODEL",)
    FUNCTION: ClassVar[str] = "patch"
    # The reference's schemas for these nodes name no display name: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True



# --- FreeU ---------------------------------------------------------------------------------------


class FreeU(_Patch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_freelunch"
    CATEGORY = "model/patch/unet"
    V2: ClassVar[bool] = False
    DEFAULTS: ClassVar[tuple[float, float, float, float]] = (1.1, 1.2, 0.9, 0.2)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        b1, b2, s1, s2 = cls.DEFAULTS
        return {
            "required": {"model": ("MODEL", {}), "b1": _float(b1), "b2": _float(b2), "s1": _float(s1), "s2": _float(s2)}
        }

    def patch(self, model: Any, b1: float, b2: float, s1: float, s2: float) -> tuple[Any]:
        from plugins.core_nodes.patches.freeu import freeu_patch

        channels = int(model.model.model_config.unet_config["model_channels"])
        m = model.clone()
        m.set_model_output_block_patch(freeu_patch(channels, b1, b2, s1, s2, v2=self.V2))
        return (m,)


class FreeU_V2(FreeU):  # noqa: N801 - the reference's class name
    V2 = True
    DEFAULTS = (1.3, 1.4, 0.9, 0.2)


# --- HyperTile and ToMe ----------------------------------------------------------------------------


def _around_self_attention(model: Any, before: Any, after: Any) -> tuple[Any]:
    """A clone of ``model`` with ``before`` on every self-attention's input and ``after`` on its
    output (the pair that reshapes the tokens and puts them back)."""
    m = model.clone()
    m.set_model_attn1_patch(before)
    m.set_model_attn1_output_patch(after)
    return (m,)


class HyperTile(_Patch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_hypertile"
    CATEGORY = "model/patch/unet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "tile_size": ("INT", {"advanced": True, "default": 256, "min": 1, "max": 2048}),
                "swap_size": ("INT", {"advanced": True, "default": 2, "min": 1, "max": 128}),
                "max_depth": ("INT", {"advanced": True, "default": 0, "min": 0, "max": 10}),
                "scale_depth": ("BOOLEAN", {"advanced": True, "default": False}),
            }
        }

    def patch(self, model: Any, tile_size: int, swap_size: int, max_depth: int, scale_depth: bool) -> tuple[Any]:
        from plugins.core_nodes.patches.hypertile import HyperTile as Tiler

        tiler = Tiler(int(tile_size), int(swap_size), int(max_depth), bool(scale_depth))
        return _around_self_attention(model, tiler.split, tiler.join)


class TomePatchModel(_Patch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_tomesd"
    CATEGORY = "model/patch/unet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "ratio": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def patch(self, model: Any, ratio: float) -> tuple[Any]:
        from plugins.core_nodes.patches.tome import TokenMerging

        tome = TokenMerging(float(ratio))
        return _around_self_attention(model, tome.merge_queries, tome.unmerge_output)


# --- attention multipliers -----------------------------------------------------------------------

_MULTIPLY_MODULE = "comfy_extras.nodes_attention_multiply"
_MULTIPLY_CATEGORY = "experimental/attention_experiments"


def _qkv_out(first: tuple[str, str]) -> dict[str, Any]:
    return {"required": {first[0]: (first[1], {}), "q": _float(1.0), "k": _float(1.0), "v": _float(1.0), "out": _float(1.0)}}


class UNetSelfAttentionMultiply(_Patch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MULTIPLY_MODULE
    CATEGORY = _MULTIPLY_CATEGORY
    EXPERIMENTAL = True
    LAYER: ClassVar[str] = "attn1"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _qkv_out(("model", "MODEL"))

    def patch(self, model: Any, q: float, k: float, v: float, out: float) -> tuple[Any]:
        from plugins.core_nodes.patches.attention_scale import scale_unet_attention

        return (scale_unet_attention(model, self.LAYER, {"q": q, "k": k, "v": v, "out": out}),)


class UNetCrossAttentionMultiply(UNetSelfAttentionMultiply):
    LAYER = "attn2"


class CLIPAttentionMultiply(_Patch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MULTIPLY_MODULE
    CATEGORY = _MULTIPLY_CATEGORY
    EXPERIMENTAL = True
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _qkv_out(("clip", "CLIP"))

    def patch(self, clip: Any, q: float, k: float, v: float, out: float) -> tuple[Any]:
        from plugins.core_nodes.patches.attention_scale import scale_clip_attention

        return (scale_clip_attention(clip, {"q": q, "k": k, "v": v, "out": out}),)


class UNetTemporalAttentionMultiply(_Patch):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MULTIPLY_MODULE
    CATEGORY = _MULTIPLY_CATEGORY
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = ("self_structural", "self_temporal", "cross_structural", "cross_temporal")
        return {"required": {"model": ("MODEL", {}), **{name: _float(1.0) for name in names}}}

    def patch(
        self, model: Any, self_structural: float, self_temporal: float, cross_structural: float, cross_temporal: float
    ) -> tuple[Any]:
        from plugins.core_nodes.patches.attention_scale import scale_temporal_outputs

        factors = {
            "self_structural": self_structural,
            "self_temporal": self_temporal,
            "cross_structural": cross_structural,
            "cross_temporal": cross_temporal,
        }
        return (scale_temporal_outputs(model, factors),)


NODES: dict[str, tuple[type, str | None]] = {
    "FreeU": (FreeU, None),
    "FreeU_V2": (FreeU_V2, None),
    "HyperTile": (HyperTile, None),
    "TomePatchModel": (TomePatchModel, None),
    "UNetSelfAttentionMultiply": (UNetSelfAttentionMultiply, None),
    "UNetCrossAttentionMultiply": (UNetCrossAttentionMultiply, None),
    "CLIPAttentionMultiply": (CLIPAttentionMultiply, None),
    "UNetTemporalAttentionMultiply": (UNetTemporalAttentionMultiply, None),
}
