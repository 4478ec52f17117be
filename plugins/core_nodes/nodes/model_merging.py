"""Model merging and saving (group B): ``comfy_extras.nodes_model_merging`` and the model-specific
block mergers of ``comfy_extras.nodes_model_merging_model_specific``.

The mergers clone their first input and patch the second one's weights in
(:mod:`plugins.core_nodes.models.merging`); nothing is computed until the MODEL runs or is saved.
The savers write the merged weights in the reference's single-file layouts with its metadata
(:mod:`plugins.core_nodes.models.saving`) into the output folder, numbered as SaveImage numbers
its files (``<prefix>_<counter:05>_.safetensors``, a subfolder in the prefix allowed).

The sixteen model-specific mergers are one class each, made from :data:`MODEL_SPECIFIC_BLOCKS`:
a ratio per block name, merged by :class:`ModelMergeBlocks`' longest-prefix rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kernel.paths import safe_join, type_root
from plugins.core_nodes.nodes.common import CoreNode, KernelNode
from plugins.core_nodes.nodes.io import save_path

_MODULE = "comfy_extras.nodes_model_merging"
_SPECIFIC_MODULE = "comfy_extras.nodes_model_merging_model_specific"


def _ratio() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})


def _multiplier() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})


class _Merge(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    CATEGORY = "model/merging"
    FUNCTION = "merge"


# --- MODEL ---------------------------------------------------------------------------------------


class ModelMergeSimple(_Merge):
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = "A weighted average of two models' UNets: ratio 1 is model1, 0 is model2."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "ratio": _ratio()}}

    def merge(self, model1: Any, model2: Any, ratio: float) -> tuple[Any]:
        from plugins.core_nodes.models.merging import merge_simple

        return (merge_simple(model1, model2, ratio),)


class ModelMergeSubtract(_Merge):
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = "(model1 - model2) * multiplier: the difference one model adds to another."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "multiplier": _multiplier()}}

    def merge(self, model1: Any, model2: Any, multiplier: float) -> tuple[Any]:
        from plugins.core_nodes.models.merging import merge_subtract

        return (merge_subtract(model1, model2, multiplier),)


class ModelMergeAdd(_Merge):
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = "model1 + model2 (add a difference made by ModelMergeSubtract)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",)}}

    def merge(self, model1: Any, model2: Any) -> tuple[Any]:
        from plugins.core_nodes.models.merging import merge_add

        return (merge_add(model1, model2),)


class ModelMergeBlocks(_Merge):
    """A weighted average per block: each UNet key takes the ratio of the longest ratio input
    its name starts with, the first ratio input when none does."""

    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = "A weighted average of two UNets with a ratio per part (1: model1, 0: model2)."
    BLOCKS: ClassVar[tuple[str, ...]] = ("input", "middle", "out")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        required: dict[str, Any] = {"model1": ("MODEL",), "model2": ("MODEL",)}
        required.update({name: _ratio() for name in cls.BLOCKS})
        return {"required": required}

    def merge(self, model1: Any, model2: Any, **ratios: float) -> tuple[Any]:
        from plugins.core_nodes.models.merging import merge_blocks

        # In the declared order, so the first block's ratio is the default whatever the prompt's order.
        ordered = {name: float(ratios[name]) for name in self.BLOCKS if name in ratios}
        ordered.update({k: float(v) for k, v in ratios.items() if k not in ordered})
        return (merge_blocks(model1, model2, ordered),)


# --- CLIP ----------------------------------------------------------------------------------------


class CLIPMergeSimple(_Merge):
    RETURN_TYPES = ("CLIP",)
    DESCRIPTION = "A weighted average of two text encoders: ratio 1 is clip1, 0 is clip2."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "ratio": _ratio()}}

    def merge(self, clip1: Any, clip2: Any, ratio: float) -> tuple[Any]:
        from plugins.core_nodes.models.merging import merge_clips

        return (merge_clips(clip1, clip2, 1.0 - ratio, ratio),)


class CLIPMergeSubtract(_Merge):
    RETURN_TYPES = ("CLIP",)
    DESCRIPTION = "(clip1 - clip2) * multiplier."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "multiplier": _multiplier()}}

    def merge(self, clip1: Any, clip2: Any, multiplier: float) -> tuple[Any]:
        from plugins.core_nodes.models.merging import merge_clips

        return (merge_clips(clip1, clip2, -multiplier, multiplier),)


class CLIPMergeAdd(_Merge):
    RETURN_TYPES = ("CLIP",)
    DESCRIPTION = "clip1 + clip2."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",)}}

    def merge(self, clip1: Any, clip2: Any) -> tuple[Any]:
        from plugins.core_nodes.models.merging import merge_clips

        return (merge_clips(clip1, clip2, 1.0, 1.0),)


# --- saving ----------------------------------------------------------------------------------------


_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


class _Save(KernelNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    CATEGORY = "model/merging"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    def _target(self, filename_prefix: str) -> tuple[Path, str, int]:
        """(folder, file stem, counter) for the next file of ``filename_prefix`` in the output folder."""
        root = type_root(self.kernel(), "output")
        folder, filename, counter, _ = save_path(root, filename_prefix, 0, 0)
        folder.mkdir(parents=True, exist_ok=True)
        return folder, filename, counter

    def _disabled(self) -> bool:
        return bool(getattr(self.kernel().settings, "disable_metadata", False))

    def _checkpoint(
        self, model: Any, clip: Any, vae: Any, filename_prefix: str, prompt: Any, extra_pnginfo: Any
    ) -> dict[str, Any]:
        from plugins.core_nodes.models import saving

        folder, filename, counter = self._target(filename_prefix)
        sd = saving.checkpoint_state_dict(model, clip, vae)
        meta = saving.checkpoint_metadata(model, f"{filename} {counter}", prompt, extra_pnginfo, self._disabled())
        saving.write(safe_join(folder, f"{filename}_{counter:05}_.safetensors"), sd, meta)
        return {}


class CheckpointSave(_Save):
    DESCRIPTION = "Saves MODEL, CLIP and VAE (merges and LoRAs included) as one checkpoint file."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "filename_prefix": ("STRING", {"default": "checkpoints/ComfyUI"}),
            },
            "hidden": dict(_HIDDEN),
        }

    def save(
        self, model: Any, clip: Any, vae: Any, filename_prefix: str, prompt: Any = None, extra_pnginfo: Any = None
    ) -> dict[str, Any]:
        return self._checkpoint(model, clip, vae, filename_prefix, prompt, extra_pnginfo)


class ModelSave(_Save):
    DESCRIPTION = "Saves the MODEL's diffusion model (merges and LoRAs included) as a checkpoint-layout file."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"model": ("MODEL",), "filename_prefix": ("STRING", {"default": "diffusion_models/ComfyUI"})},
            "hidden": dict(_HIDDEN),
        }

    def save(self, model: Any, filename_prefix: str, prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
        return self._checkpoint(model, None, None, filename_prefix, prompt, extra_pnginfo)


class CLIPSave(_Save):
    DESCRIPTION = "Saves each text encoder of the CLIP as its own file (<prefix>_clip_l, _clip_g ...)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"clip": ("CLIP",), "filename_prefix": ("STRING", {"default": "clip/ComfyUI"})},
            "hidden": dict(_HIDDEN),
        }

    def save(self, clip: Any, filename_prefix: str, prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
        from plugins.core_nodes.models import saving

        meta = saving.file_metadata(prompt, extra_pnginfo, self._disabled())
        if meta:
            meta = {"format": "pt", **meta}
        for member, sd in saving.clip_files(clip).items():
            folder, filename, counter = self._target(f"{filename_prefix}_{member}")
            saving.write(safe_join(folder, f"{filename}_{counter:05}_.safetensors"), sd, meta)
        return {}


class VAESave(_Save):
    DESCRIPTION = "Saves the VAE's weights as a file VAELoader reads."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"vae": ("VAE",), "filename_prefix": ("STRING", {"default": "vae/ComfyUI_vae"})},
            "hidden": dict(_HIDDEN),
        }

    def save(self, vae: Any, filename_prefix: str, prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
        from plugins.core_nodes.models import saving

        get_sd = getattr(vae, "get_sd", None)
        if not callable(get_sd):
            raise saving.SaveError(f"cannot read the weights of a VAE of type {type(vae).__name__}")
        folder, filename, counter = self._target(filename_prefix)
        sd = {k: v.detach().cpu() for k, v in get_sd().items()}
        meta = saving.file_metadata(prompt, extra_pnginfo, self._disabled())
        saving.write(safe_join(folder, f"{filename}_{counter:05}_.safetensors"), sd, meta)
        return {}


# --- the model-specific block mergers ------------------------------------------------------------


def _numbered(prefix: str, count: int, dot: str = ".") -> list[str]:
    return [f"{prefix}{i}{dot}" for i in range(count)]


def _unet(levels: int, dot: str) -> list[str]:
    """The SD UNet's parts: embeddings, each input / middle / output block, the output head."""
    return [
        "time_embed.",
        "label_emb.",
        *_numbered("input_blocks.", levels, dot),
        *_numbered("middle_block.", 3, dot),
        *_numbered("output_blocks.", levels, dot),
        "out.",
    ]


def _mmdit(blocks: int) -> list[str]:
    return ["pos_embed.", "x_embedder.", "context_embedder.", "y_embedder.", "t_embedder.",
            *_numbered("joint_blocks.", blocks), "final_layer."]  # fmt: skip


def _cosmos(blocks: int) -> list[str]:
    return ["pos_embedder.", "extra_pos_embedder.", "x_embedder.", "t_embedder.", "affline_norm.",
            *_numbered("blocks.block", blocks), "final_layer."]  # fmt: skip


def _cosmos_predict2(blocks: int) -> list[str]:
    return ["pos_embedder.", "x_embedder.", "t_embedder.", "t_embedding_norm.", *_numbered("blocks.", blocks),
            "final_layer."]  # fmt: skip


# Class name -> its ratio inputs, in the reference's order: the names are key prefixes of the
# family's diffusion model (SDXL's lack the trailing dot there, so "input_blocks.1" also covers
# "input_blocks.1x" — harmless with nine blocks).
MODEL_SPECIFIC_BLOCKS: dict[str, list[str]] = {
    "ModelMergeSD1": _unet(12, "."),
    "ModelMergeSD2": _unet(12, "."),
    "ModelMergeSDXL": _unet(9, ""),
    "ModelMergeSD3_2B": _mmdit(24),
    "ModelMergeSD35_Large": _mmdit(38),
    "ModelMergeAuraflow": [
        "init_x_linear.", "positional_encoding", "cond_seq_linear.", "register_tokens", "t_embedder.",
        *_numbered("double_layers.", 4), *_numbered("single_layers.", 32), "modF.", "final_linear.",
    ],
    "ModelMergeFlux1": [
        "img_in.", "time_in.", "guidance_in", "vector_in.", "txt_in.",
        *_numbered("double_blocks.", 19), *_numbered("single_blocks.", 38), "final_layer.",
    ],
    "ModelMergeMochiPreview": [
        "pos_frequencies.", "t_embedder.", "t5_y_embedder.", "t5_yproj.", *_numbered("blocks.", 48), "final_layer.",
    ],
    "ModelMergeLTXV": [
        "patchify_proj.", "adaln_single.", "caption_projection.", *_numbered("transformer_blocks.", 28),
        "scale_shift_table", "proj_out.",
    ],
    "ModelMergeCosmos7B": _cosmos(28),
    "ModelMergeCosmos14B": _cosmos(36),
    "ModelMergeWAN2_1": [
        "patch_embedding.", "time_embedding.", "time_projection.", "text_embedding.", "img_emb.",
        *_numbered("blocks.", 40), "head.",
    ],
    "ModelMergeCosmosPredict2_2B": _cosmos_predict2(28),
    "ModelMergeCosmosPredict2_14B": _cosmos_predict2(36),
    "ModelMergeQwenImage": [
        "pos_embeds.", "img_in.", "txt_norm.", "txt_in.", "time_text_embed.",
        *_numbered("transformer_blocks.", 60), "proj_out.",
    ],
    "ModelMergeKrea2": [
        "first.", "tmlp.", "txtmlp.", "tproj.", *_numbered("txtfusion.layerwise_blocks.", 2),
        "txtfusion.projector.", *_numbered("txtfusion.refiner_blocks.", 2), *_numbered("blocks.", 28), "last.",
    ],
}  # fmt: skip


def _model_specific(name: str, blocks: list[str]) -> type[ModelMergeBlocks]:
    return type(
        name,
        (ModelMergeBlocks,),
        {
            "BLOCKS": tuple(blocks),
            "CATEGORY": "model/merging/model specific",
            "RELATIVE_PYTHON_MODULE": _SPECIFIC_MODULE,
            "DESCRIPTION": f"A block-wise merge with one ratio per part of a {name[len('ModelMerge'):]} model.",
            "__module__": __name__,
            "__qualname__": name,
        },
    )


MODEL_SPECIFIC: dict[str, type[ModelMergeBlocks]] = {
    name: _model_specific(name, blocks) for name, blocks in MODEL_SPECIFIC_BLOCKS.items()
}


NODES: dict[str, tuple[type, str | None]] = {
    "ModelMergeSimple": (ModelMergeSimple, None),
    "ModelMergeBlocks": (ModelMergeBlocks, None),
    "ModelMergeSubtract": (ModelMergeSubtract, None),
    "ModelMergeAdd": (ModelMergeAdd, None),
    "CheckpointSave": (CheckpointSave, "Save Checkpoint"),
    "CLIPMergeSimple": (CLIPMergeSimple, None),
    "CLIPMergeSubtract": (CLIPMergeSubtract, None),
    "CLIPMergeAdd": (CLIPMergeAdd, None),
    "CLIPSave": (CLIPSave, None),
    "VAESave": (VAESave, None),
    "ModelSave": (ModelSave, None),
    **{name: (cls, None) for name, cls in MODEL_SPECIFIC.items()},
}
