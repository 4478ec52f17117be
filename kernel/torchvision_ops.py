"""torchvision's compiled operators, in plain torch, for when its ``_C`` library cannot load.

PyPI's torchvision wheels are linked against the CUDA build of torch. Beside the CPU build we pin,
their ``_C`` extension fails to load, and ``import torchvision`` then dies in
``torchvision/_meta_registrations.py`` ("operator torchvision::nms does not exist"); transformers,
which imports torchvision whenever it is installed, fails with it. Custom-node packs import both
at module top, so every process that may run a pack must survive that.

``ensure_torchvision_ops()`` checks, without importing torchvision, whether the ``_C`` library
loads; only when it does not, it defines the ``torchvision::*`` operator schemas (the same
schemas torchvision's C++ registers) and gives them CPU kernels: ``nms``, ``roi_align`` and
``roi_pool`` (with their backward ops) really compute; the others raise a NotImplementedError
naming the operator. ``install_torchvision_hook()`` runs it lazily, the moment torchvision starts
importing, and tells ``torchvision.extension`` that its ops exist, so that torchvision's Python
wrappers (which check ``_has_ops()`` first) reach our kernels.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import math
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only when torchvision is: most processes never need it
    import torch

__all__ = ["ensure_torchvision_ops", "install_torchvision_hook", "substitutes_active"]

# The operator schemas of torchvision's C++ registration (torchvision/csrc/ops/*.cpp).
_SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": (
        "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "_roi_align_backward": (
        "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
        "int sampling_ratio, bool aligned) -> Tensor"
    ),
    "qroi_align": (
        "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
        "float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "roi_pool": (
        "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_roi_pool_backward": (
        "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
        "SymInt height, SymInt width) -> Tensor"
    ),
    "ps_roi_align": (
        "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)"
    ),
    "_ps_roi_align_backward": (
        "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, "
        "SymInt channels, SymInt height, SymInt width) -> Tensor"
    ),
    "ps_roi_pool": (
        "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_ps_roi_pool_backward": (
        "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
        "SymInt height, SymInt width) -> Tensor"
    ),
    "deform_conv2d": (
        "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
        "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
        "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor"
    ),
    "_deform_conv2d_backward": (
        "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, "
        "Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
        "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "_cuda_version": "_cuda_version() -> int",
}

# Process-wide by nature: torch's operator registry is global, and a torch.library.Library drops
# its registrations when it is garbage-collected, so the one we define must live as long as the
# process. The lock makes concurrent first imports (threads of the server) define it once.
_LOCK = threading.Lock()
_state: dict[str, Any] = {"checked": False, "library": None}


def substitutes_active() -> bool:
    """True when this process runs torchvision's operators from this module (its ``_C`` failed)."""
    return _state["library"] is not None


def ensure_torchvision_ops() -> bool:
    """Make ``torch.ops.torchvision.*`` exist; True when our substitutes were (or are) installed.

    Idempotent and cheap after the first call. Does nothing (False) when torchvision is not
    installed, when its compiled library loads, or when its operators already exist.
    """
    with _LOCK:
        if _state["checked"]:
            return substitutes_active()
        _state["checked"] = True
        library_file = _compiled_library_file()
        if library_file is None:
            return False
        import torch

        if _op_exists(torch, "nms"):
            return False
        try:
            torch.ops.load_library(str(library_file))
            return False  # a matching build: torchvision's own kernels are now registered
        except (OSError, RuntimeError):
            pass
        _state["library"] = _define_substitutes(torch)
        return True


def install_torchvision_hook() -> None:
    """Run ``ensure_torchvision_ops`` when torchvision starts importing, not before.

    Importing torch costs seconds, and most of our processes never touch torchvision; the hook
    defers the work to the first ``import torchvision``, which is exactly when it is needed.
    """
    if any(isinstance(finder, _ExtensionFinder) for finder in sys.meta_path):
        return
    extension = sys.modules.get("torchvision.extension")
    if extension is not None:  # imported before us: patch in place
        if ensure_torchvision_ops():
            _mark_ops_present(extension)
        return
    sys.meta_path.insert(0, _ExtensionFinder())


def _compiled_library_file() -> Path | None:
    """torchvision's ``_C`` extension file, found without executing torchvision's ``__init__``."""
    package = sys.modules.get("torchvision")
    search: Sequence[str] | None = getattr(package, "__path__", None)
    if search is None:
        spec = importlib.machinery.PathFinder.find_spec("torchvision")
        if spec is None or spec.submodule_search_locations is None:
            return None
        search = list(spec.submodule_search_locations)
    for folder in search:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = Path(folder) / f"_C{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _op_exists(torch_module: ModuleType, name: str) -> bool:
    try:
        getattr(torch_module.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _mark_ops_present(extension: ModuleType) -> None:
    """Make torchvision's Python wrappers call the operators instead of refusing to."""

    def has_ops() -> bool:
        """Our substitutes stand in for torchvision's compiled operators."""
        return True

    extension._has_ops = has_ops  # type: ignore[attr-defined]


class _ExtensionLoader(importlib.abc.Loader):
    """Runs ``torchvision.extension`` as usual, then points its ``_has_ops`` at our operators."""

    def __init__(self, inner: importlib.abc.Loader, substitutes: bool) -> None:
        self._inner = inner
        self._substitutes = substitutes

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        if self._substitutes:
            _mark_ops_present(module)

    def __getattr__(self, name: str) -> Any:
        # The rest of the loader API (get_source, get_filename, ...) for inspect and tracebacks.
        return getattr(self._inner, name)


class _ExtensionFinder(importlib.abc.MetaPathFinder):
    """Intercepts the import of ``torchvision.extension``, the first thing torchvision imports."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torchvision.extension":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ExtensionLoader(spec.loader, ensure_torchvision_ops())
        return spec


# ---------------------------------------------------------------------------------------------
# The substitute kernels


def _define_substitutes(torch_module: ModuleType) -> Any:
    library = torch_module.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        library.define(schema)
    kernels: dict[str, Callable[..., Any]] = {
        "nms": _nms,
        "roi_align": _roi_align,
        "_roi_align_backward": _roi_align_backward,
        "roi_pool": _roi_pool,
        "_roi_pool_backward": _roi_pool_backward,
    }
    for name in _SCHEMAS:
        if name == "_cuda_version":
            continue
        library.impl(name, kernels.get(name, _unsupported(name)), "CPU")
    # No tensor argument to dispatch on: the composite key serves every backend.
    library.impl("_cuda_version", _cuda_version, "CompositeExplicitAutograd")
    return library


def _unsupported(name: str) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"torchvision::{name} is not available: torchvision's compiled library does not load "
            "beside this CPU build of torch, and comfykernel substitutes only nms, roi_align and roi_pool"
        )

    return kernel


def _cuda_version() -> int:
    return -1  # what a CPU-only torchvision build reports


def _nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression over (x1, y1, x2, y2) boxes, highest score first."""
    import torch

    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    keep: list[int] = []
    for index in order.tolist():
        if suppressed[index]:
            continue
        keep.append(index)
        # Intersection of the kept box with every box; an empty overlap counts as zero.
        width = (torch.minimum(x2, x2[index]) - torch.maximum(x1, x1[index])).clamp(min=0)
        height = (torch.minimum(y2, y2[index]) - torch.maximum(y1, y1[index])).clamp(min=0)
        inter = width * height
        iou = inter / (areas + areas[index] - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _eager_roi_align() -> Callable[..., torch.Tensor]:
    """torchvision's own pure-Python roi_align, unwrapped from its lazy torch.compile decorator
    (compiling needs a C++ toolchain and takes far longer than the eager call on CPU)."""
    # By module path: the package attribute ``torchvision.ops.roi_align`` is the public function.
    function = importlib.import_module("torchvision.ops.roi_align")._roi_align
    return getattr(function, "__wrapped__", function)


def _roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    if rois.shape[0] == 0:
        return input.new_zeros((0, input.shape[1], pooled_height, pooled_width))
    return _eager_roi_align()(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
    )


def _roi_align_backward(
    grad: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """roi_align is linear in its input, so autograd through the eager forward gives the exact
    input gradient whatever the input values: a zero input of the right shape suffices.

    A kernel runs below the autograd dispatch keys, which the dispatcher excludes thread-locally;
    the gradient is taken on a helper thread, whose dispatch state is the default one.
    """
    import torch

    def input_gradient() -> torch.Tensor:
        probe = grad.new_zeros((batch_size, channels, height, width), requires_grad=True)
        forward = _eager_roi_align()
        out = forward(probe, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
        (gradient,) = torch.autograd.grad(out, probe, grad, allow_unused=True)
        return gradient if gradient is not None else torch.zeros_like(probe)

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(input_gradient).result()


def _round_half_away(value: float) -> int:
    """C's round(): halves go away from zero (Python's round() goes to the even neighbour)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def _roi_pool(
    input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max pooling of each region into a pooled_height x pooled_width grid of bins.

    Returns the pooled values and, per output cell, the flat ``y * width + x`` index of the
    maximum within its image (-1 for an empty bin, whose value is 0), as torchvision does.
    """
    import torch

    channels, height, width = input.shape[1], input.shape[2], input.shape[3]
    count = rois.shape[0]
    output = input.new_zeros((count, channels, pooled_height, pooled_width))
    argmax = torch.full((count, channels, pooled_height, pooled_width), -1, dtype=torch.int32)
    for k, roi in enumerate(rois.tolist()):
        image = input[int(roi[0])].reshape(channels, height * width)
        start_w, start_h, end_w, end_h = (_round_half_away(v * spatial_scale) for v in roi[1:5])
        bin_h = max(end_h - start_h + 1, 1) / pooled_height
        bin_w = max(end_w - start_w + 1, 1) / pooled_width
        for ph in range(pooled_height):
            h0 = min(max(math.floor(ph * bin_h) + start_h, 0), height)
            h1 = min(max(math.ceil((ph + 1) * bin_h) + start_h, 0), height)
            for pw in range(pooled_width):
                w0 = min(max(math.floor(pw * bin_w) + start_w, 0), width)
                w1 = min(max(math.ceil((pw + 1) * bin_w) + start_w, 0), width)
                if h1 <= h0 or w1 <= w0:
                    continue
                flat = (torch.arange(h0, h1)[:, None] * width + torch.arange(w0, w1)[None, :]).reshape(-1)
                values, where = image[:, flat].max(dim=1)
                output[k, :, ph, pw] = values
                argmax[k, :, ph, pw] = flat[where].to(torch.int32)
    return output, argmax.to(input.device)


def _roi_pool_backward(
    grad: torch.Tensor,
    rois: torch.Tensor,
    argmax: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """Each output cell's gradient goes to the input pixel that was its maximum."""
    grad_input = grad.new_zeros((batch_size, channels, height * width))
    for k, roi in enumerate(rois.tolist()):
        index = argmax[k].reshape(channels, -1).long()
        valid = index >= 0
        contribution = grad[k].reshape(channels, -1) * valid
        grad_input[int(roi[0])].scatter_add_(1, index.clamp(min=0), contribution)
    return grad_input.reshape(batch_size, channels, height, width)
