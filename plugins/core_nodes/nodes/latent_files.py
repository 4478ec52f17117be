"""Latents on disk: SaveLatent and LoadLatent, in the reference's ``.latent`` file format.

A ``.latent`` file is a safetensors file with the samples under ``latent_tensor`` and an empty
``latent_format_version_0`` marker; files without the marker come from the reference's first
format, which stored latents scaled by SD1's 0.18215, so they are scaled back on load. The
prompt and workflow ride along as safetensors metadata (JSON strings), like PNG text chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from kernel.paths import UnsafePath, resolve_annotated, safe_join, type_root
from plugins.core_nodes.nodes.common import KernelNode
from plugins.core_nodes.nodes.io import save_path

LATENT_SUFFIX = ".latent"
# The first .latent format stored SD1 latents multiplied by the VAE's scale factor.
_LEGACY_SCALE = 1.0 / 0.18215


def _metadata(prompt: Any, extra_pnginfo: Any, disabled: bool) -> dict[str, str] | None:
    if disabled:
        return None
    metadata = {"prompt": json.dumps(prompt) if prompt is not None else ""}
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            metadata[str(key)] = json.dumps(value)
    return metadata


class SaveLatent(KernelNode):
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "model/latent"
    DESCRIPTION = "Writes the latent to the output folder as a .latent file LoadLatent reads back."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "filename_prefix": ("STRING", {"default": "latents/ComfyUI"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(
        self,
        samples: dict[str, Any],
        filename_prefix: str = "latents/ComfyUI",
        prompt: Any = None,
        extra_pnginfo: Any = None,
    ) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        kernel = self.kernel()
        root = type_root(kernel, "output")
        # The reference numbers latents like images, without the size tokens' values.
        folder, filename, counter, subfolder = save_path(root, filename_prefix, 0, 0)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{filename}_{counter:05}_{LATENT_SUFFIX}"
        tensors = {
            "latent_tensor": samples["samples"].contiguous(),
            "latent_format_version_0": torch.tensor([]),
        }
        save_file(
            tensors,
            str(safe_join(folder, name)),
            metadata=_metadata(prompt, extra_pnginfo, kernel.settings.disable_metadata),
        )
        result = {"filename": name, "subfolder": subfolder, "type": "output"}
        return {"ui": {"latents": [result]}, "result": (samples,)}


def _input_latents(root: Path) -> list[str]:
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if n.endswith(LATENT_SUFFIX) and (root / n).is_file())


class LoadLatent(KernelNode):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "load"
    CATEGORY = "model/latent"
    DESCRIPTION = "Reads a .latent file from the input folder (SaveLatent's format)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        root = type_root(cls.kernel(), "input") if cls.KERNEL is not None else None
        return {"required": {"latent": (_input_latents(root) if root is not None else [],)}}

    @classmethod
    def _path(cls, latent: str) -> Path | None:
        try:
            path, _ = resolve_annotated(cls.kernel(), latent, "input")
        except (UnsafePath, ValueError):
            return None
        return path if path.is_file() else None

    @classmethod
    def IS_CHANGED(cls, latent: str) -> str:  # noqa: N802 - the reference's hook name
        path = cls._path(latent)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else ""

    @classmethod
    def VALIDATE_INPUTS(cls, latent: str) -> bool | str:  # noqa: N802 - the reference's hook name
        if cls._path(latent) is None:
            return f"Invalid latent file: {latent}"
        return True

    def load(self, latent: str) -> tuple[dict[str, Any]]:
        from safetensors.torch import load_file

        path = self._path(latent)
        if path is None:
            raise FileNotFoundError(f"Invalid latent file: {latent}")
        tensors = load_file(str(path), device="cpu")
        if "latent_tensor" not in tensors:
            raise ValueError(f"{latent} is not a .latent file: it has no latent_tensor")
        scale = 1.0 if "latent_format_version_0" in tensors else _LEGACY_SCALE
        return ({"samples": tensors["latent_tensor"].float() * scale},)


NODES: dict[str, tuple[type, str | None]] = {
    "SaveLatent": (SaveLatent, "Save Latent"),
    "LoadLatent": (LoadLatent, "Load Latent"),
}
