"""Context windows (comfy_extras.nodes_context_windows): a MODEL that evaluates long latents in
overlapping windows (:mod:`plugins.core_nodes.context_windows`). The Wan and LTXV variants take
lengths in real frames and convert them to latent frames (4 and 8 frames per latent frame)."""

from __future__ import annotations

from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode

_SCHEDULES = ["standard_static", "standard_uniform", "looped_uniform", "batched"]
_FUSE = ["pyramid", "relative", "flat", "overlap-linear"]


def _combo(options: list[str], default: str) -> tuple[str, dict[str, Any]]:
    return ("COMBO", {"default": default, "multiselect": False, "options": list(options)})


def _flag(default: bool, advanced: bool = True) -> tuple[str, dict[str, Any]]:
    return ("BOOLEAN", {"advanced": True, "default": default} if advanced else {"default": default})


def windowed_model(
    model: Any, context_length: int, context_overlap: int, context_schedule: str, context_stride: int,
    closed_loop: bool, fuse_method: str, dim: int, freenoise: bool, cond_retain_index_list: str = "",
    split_conds_to_windows: bool = False, latent_retain_index_list: str = "", causal_window_fix: bool = True,
) -> Any:  # fmt: skip
    """A clone of ``model`` sampling in context windows."""
    from plugins.core_nodes import context_windows as cw

    handler = cw.IndexListContextHandler(
        context_schedule=cw.get_matching_context_schedule(context_schedule),
        fuse_method=cw.get_matching_fuse_method(fuse_method),
        context_length=context_length, context_overlap=context_overlap, context_stride=context_stride,
        closed_loop=closed_loop, dim=dim, freenoise=freenoise, cond_retain_index_list=cond_retain_index_list,
        split_conds_to_windows=split_conds_to_windows, latent_retain_index_list=latent_retain_index_list,
        causal_window_fix=causal_window_fix,
    )  # fmt: skip
    if context_overlap >= context_length and context_schedule != "batched":
        raise ValueError(
            f"context_overlap ({context_overlap}) must be smaller than context_length ({context_length}) in latent frames"
        )
    m = model.clone()
    m.model_options["context_handler"] = handler
    if freenoise:
        cw.create_sampler_sample_wrapper(m)
    return m


class ContextWindowsManual(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_context_windows"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "execute"
    CATEGORY = "model/patch"
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "context_length": ("INT", {"default": 16, "min": 1}),
                "context_overlap": ("INT", {"default": 4, "min": 0}),
                "context_schedule": _combo(_SCHEDULES, "standard_static"),
                "context_stride": ("INT", {"default": 1, "min": 1}),
                "closed_loop": _flag(False, advanced=False),
                "fuse_method": _combo(_FUSE, "pyramid"),
                "dim": ("INT", {"default": 0, "min": 0, "max": 5}),
                "freenoise": _flag(False, advanced=False),
                "cond_retain_index_list": ("STRING", {"default": "", "multiline": False}),
                "split_conds_to_windows": _flag(False, advanced=False),
                "latent_retain_index_list": ("STRING", {"default": "", "multiline": False}),
                "causal_window_fix": _flag(True, advanced=False),
            }
        }

    def execute(
        self, model: Any, context_length: int, context_overlap: int, context_schedule: str, context_stride: int,
        closed_loop: bool, fuse_method: str, dim: int, freenoise: bool, cond_retain_index_list: str = "",
        split_conds_to_windows: bool = False, latent_retain_index_list: str = "", causal_window_fix: bool = True,
    ) -> tuple[Any]:  # fmt: skip
        return (
            windowed_model(
                model, context_length, context_overlap, context_schedule, context_stride, closed_loop, fuse_method,
                dim, freenoise, cond_retain_index_list, split_conds_to_windows, latent_retain_index_list,
                causal_window_fix,
            ),
        )  # fmt: skip


class _VideoWindows(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_context_windows"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "execute"
    EXPERIMENTAL = True
    FRAMES_PER_LATENT: ClassVar[int] = 4
    LENGTH: ClassVar[dict[str, Any]] = {}
    OVERLAP: ClassVar[dict[str, Any]] = {}
    # Whether retain_first_frame keeps frame 0 in the noise latent too (inplace I2V), not only the conds.
    RETAIN_IN_LATENT: ClassVar[bool] = False

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "context_length": ("INT", dict(cls.LENGTH)),
                "context_overlap": ("INT", dict(cls.OVERLAP)),
                "context_schedule": _combo(_SCHEDULES, "standard_uniform"),
                "context_stride": ("INT", {"advanced": True, "default": 1, "min": 1}),
                "closed_loop": _flag(False),
                "fuse_method": _combo(_FUSE, "pyramid"),
                "freenoise": _flag(True),
                "retain_first_frame": ("BOOLEAN", {"default": False}),
                "split_conds_to_windows": _flag(False),
            }
        }

    def execute(
        self, model: Any, context_length: int, context_overlap: int, context_schedule: str, context_stride: int,
        closed_loop: bool, fuse_method: str, freenoise: bool, retain_first_frame: bool = False,
        split_conds_to_windows: bool = False,
    ) -> tuple[Any]:  # fmt: skip
        per = self.FRAMES_PER_LATENT
        length = max((context_length - 1) // per + 1, 1)
        overlap = max(context_overlap // per, 0)
        retain = "0" if retain_first_frame else ""
        latent_retain = retain if self.RETAIN_IN_LATENT else ""
        return (
            windowed_model(
                model, length, overlap, context_schedule, context_stride, closed_loop, fuse_method, 2, freenoise,
                cond_retain_index_list=retain, split_conds_to_windows=split_conds_to_windows,
                latent_retain_index_list=latent_retain,
            ),
        )  # fmt: skip


class WanContextWindowsManual(_VideoWindows):
    CATEGORY = "model/patch/wan"
    FRAMES_PER_LATENT = 4
    LENGTH = {"default": 81, "min": 1, "max": MAX_RESOLUTION, "step": 4}
    OVERLAP = {"default": 30, "min": 0}


class LTXVContextWindows(_VideoWindows):
    CATEGORY = "model/patch"
    FRAMES_PER_LATENT = 8
    LENGTH = {"default": 145, "min": 1, "max": MAX_RESOLUTION, "step": 8}
    OVERLAP = {"default": 40, "min": 0, "step": 8}
    RETAIN_IN_LATENT = True


NODES: dict[str, tuple[type, str | None]] = {
    "ContextWindowsManual": (ContextWindowsManual, "Context Windows (Manual)"),
    "WanContextWindowsManual": (WanContextWindowsManual, "Wan Context Windows"),
    "LTXVContextWindows": (LTXVContextWindows, "LTXV Context Windows"),
}
