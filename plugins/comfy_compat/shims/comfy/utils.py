"""``comfy.utils``: progress bars, tensor resizing and checkpoint loading for node packs."""

from __future__ import annotations

from typing import Any

from kernel.progress import ProgressBar as _KernelProgressBar

PROGRESS_BAR_ENABLED = True


class ProgressBar(_KernelProgressBar):
    """``ProgressBar(total, node_id=None)``: ``update(n)``, ``update_absolute(value, total, preview)``."""


def load_torch_file(
    ckpt: str, safe_load: bool = False, device: Any = None, return_metadata: bool = False
) -> Any:
    import torch

    device = device or torch.device("cpu")
    metadata = None
    if str(ckpt).lower().endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        sd = {}
        with safe_open(ckpt, framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                sd[key] = f.get_tensor(key)
            metadata = f.metadata()
    else:
        # Only plain tensors: a pickle from a node pack's download must not run code.
        loaded = torch.load(ckpt, map_location=device, weights_only=True)
        sd = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    return (sd, metadata) if return_metadata else sd


def save_torch_file(sd: dict[str, Any], ckpt: str, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file(sd, ckpt, metadata=metadata)


def common_upscale(samples: Any, width: int, height: int, upscale_method: str, crop: str) -> Any:
    """Resize an ``[B, C, H, W]`` tensor; ``crop="center"`` first crops to the target's aspect."""
    import torch.nn.functional as F

    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    mode = {"lanczos": "bicubic", "bislerp": "bilinear"}.get(upscale_method, upscale_method)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(samples, size=(height, width), mode=mode, **kwargs)


def repeat_to_batch_size(tensor: Any, batch_size: int, dim: int = 0) -> Any:
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = -(-batch_size // tensor.shape[dim])
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor
