"""LoRA tools and hypernetworks (group B): ``LoraSave`` (extract a LoRA from a model difference),
the bypass LoRA loaders (debugging) and ``HypernetworkLoader``.

* ``LoraSave`` writes the LoRA of a ``ModelMergeSubtract`` / ``CLIPMergeSubtract`` result
  (:mod:`plugins.core_nodes.models.lora_extract`) to the output folder, numbered like SaveImage.
* ``LoraLoaderBypass`` runs the LoRA beside each UNet layer instead of merging it
  (:mod:`plugins.core_nodes.models.lora_bypass`).
* ``HypernetworkLoader`` installs a hypernetwork as the MODEL's ``attn1_patch`` and
  ``attn2_patch`` (:mod:`plugins.core_nodes.models.hypernetwork`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from kernel.paths import safe_join, type_root
from plugins.core_nodes.nodes.common import KernelNode
from plugins.core_nodes.nodes.io import save_path
from plugins.core_nodes.nodes.loaders import _Loader, _ModelOnlyLora

# lora_extract.LORA_TYPES, spelled out: listing the nodes must not import torch.
_LORA_TYPES = ("standard", "full_diff")


class LoraSave(KernelNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_lora_extract"
    PUBLISH_SCHEMA_HIDDEN: ClassVar[bool] = True
    CATEGORY = "experimental"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    EXPERIMENTAL = True
    RETURN_TYPES = ()
    DESCRIPTION = (
        "Extracts a LoRA from a model / text encoder difference (ModelMergeSubtract, CLIPMergeSubtract) "
        "by SVD at the given rank and saves it to the output folder."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "filename_prefix": ("STRING", {"default": "loras/ComfyUI_extracted_lora", "multiline": False}),
                "rank": ("INT", {"advanced": True, "default": 8, "min": 1, "max": 4096, "step": 1}),
                "lora_type": (list(_LORA_TYPES), {"advanced": True}),
                "bias_diff": ("BOOLEAN", {"advanced": True, "default": True}),
            },
            "optional": {
                "model_diff": ("MODEL", {"tooltip": "A ModelMergeSubtract result to turn into a LoRA."}),
                "text_encoder_diff": ("CLIP", {"tooltip": "A CLIPMergeSubtract result to turn into a LoRA."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def execute(
        self,
        filename_prefix: str,
        rank: int,
        lora_type: str,
        bias_diff: bool,
        model_diff: Any = None,
        text_encoder_diff: Any = None,
        prompt: Any = None,
        extra_pnginfo: Any = None,
    ) -> dict[str, Any]:
        from plugins.core_nodes.models.lora_extract import extract
        from plugins.core_nodes.models.saving import write

        if model_diff is None and text_encoder_diff is None:
            return {}
        root = type_root(self.kernel(), "output")
        folder, filename, counter, _ = save_path(root, filename_prefix, 0, 0)
        sd = extract(model_diff, text_encoder_diff, int(rank), lora_type, bool(bias_diff))
        folder.mkdir(parents=True, exist_ok=True)
        # Like the reference's extractor: no metadata in the file.
        write(safe_join(folder, f"{filename}_{counter:05}_.safetensors"), sd, None)
        return {}


class LoraLoaderBypass(_Loader):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_lora_debug"
    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"
    EXPERIMENTAL = True
    DESCRIPTION = (
        "Applies a LoRA beside each layer (output = layer(x) + LoRA path(x)) instead of merging it into "
        "the weights; for checking a LoRA against the merged one."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
        return {
            "required": {
                "model": ("MODEL", {}),
                "clip": ("CLIP", {}),
                "lora_name": (cls.names("loras"), {}),
                "strength_model": ("FLOAT", dict(strength)),
                "strength_clip": ("FLOAT", dict(strength)),
            }
        }

    def load_lora(
        self, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float
    ) -> tuple[Any, Any]:
        from plugins.core_nodes.models.lora import LoraError
        from plugins.core_nodes.models.lora_bypass import bypass_lora
        from plugins.core_nodes.models.text_encoder import load_state_dict_file

        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        path = self.path("loras", lora_name)
        try:
            sd = load_state_dict_file(path)
        except ValueError as e:
            raise LoraError(str(e)) from None
        return bypass_lora(model, clip, sd, strength_model, strength_clip, name=path.name)


class LoraLoaderBypassModelOnly(_ModelOnlyLora, LoraLoaderBypass):
    pass


class HypernetworkLoader(_Loader):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_hypernetwork"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_hypernetwork"
    DESCRIPTION = "Adds a hypernetwork's key / value networks to every attention layer of the model."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "hypernetwork_name": (cls.names("hypernetworks"), {}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
            }
        }

    def load_hypernetwork(self, model: Any, hypernetwork_name: str, strength: float) -> tuple[Any]:
        from plugins.core_nodes.models.hypernetwork import load_hypernetwork

        patch = load_hypernetwork(self.path("hypernetworks", hypernetwork_name), strength)
        patched = model.clone()
        patched.set_model_attn1_patch(patch)
        patched.set_model_attn2_patch(patch)
        return (patched,)


NODES: dict[str, tuple[type, str | None]] = {
    "LoraSave": (LoraSave, "Extract and Save Lora"),
    "LoraLoaderBypass": (LoraLoaderBypass, "Load LoRA (Bypass) (For debugging)"),
    "LoraLoaderBypassModelOnly": (LoraLoaderBypassModelOnly, "Load LoRA (Bypass, Model Only) (for debugging)"),
    "HypernetworkLoader": (HypernetworkLoader, "Load Hypernetwork"),
}
