"""``comfy.utils``: checkpoint files, state-dict surgery, resizing, tiling and progress bars.

The functions keep the reference's names, signatures, defaults and return shapes, because packs
call them positionally and rely on details such as ``state_dict_prefix_replace`` mutating its
argument unless ``filter_keys`` is set, or ``tiled_scale`` feathering tile borders linearly.

Two module attributes are process globals because ComfyUI's module API makes them so: packs
assign ``comfy.utils.PROGRESS_BAR_ENABLED`` (it only switches the samplers' console bar, as in the
reference) and read or replace ``PROGRESS_BAR_HOOK`` (``set_progress_bar_global_hook``), whose
default reports to the prompt's client as the reference server's hook does.
"""

from __future__ import annotations

import itertools
import logging
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kernel.progress import ProgressBar as _KernelProgressBar
from kernel.progress import set_progress
from plugins.core_nodes.conds import batch_pick_indices, repeat_to_batch_size
from plugins.core_nodes.conds import resize_to_batch_size as resize_to_batch_size  # the reference's name here
from plugins.core_nodes.nodes.resize import bislerp as bislerp  # the core resize, re-exported
from plugins.core_nodes.nodes.resize import center_crop

log = logging.getLogger("comfykernel.compat")

# Packs write this (UltimateSDUpscale turns it off per tile) and samplers read it at call time to
# decide whether to draw a console bar; the websocket progress does not depend on it.
PROGRESS_BAR_ENABLED = True


def _report_to_client(
    value: float, total: float, preview: Any, prompt_id: str | None = None, node_id: str | None = None
) -> None:
    """The server's hook: progress (and a preview) to the prompt's client; raises the
    interruption when the prompt was interrupted."""
    set_progress(value, total, node_id, preview)


# The receiver of every bar's updates, called as ``hook(value, total, preview, node_id=...)``.
# Like the reference's server hook, the default reports to the client; a pack may wrap or
# replace it with set_progress_bar_global_hook (bars made afterwards use the new one).
PROGRESS_BAR_HOOK: Callable[..., Any] | None = _report_to_client


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(function: Callable[..., Any] | None) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar(_KernelProgressBar):
    """``ProgressBar(total, node_id=None)`` with ``update(n)`` and ``update_absolute(value, total, preview)``.

    Each update goes to the hook that was installed when the bar was made (by default the
    server's: progress to the prompt's client, raising the interruption); None sends nothing.
    """

    def __init__(self, total: float, node_id: str | None = None) -> None:
        super().__init__(total, node_id)
        self.hook = PROGRESS_BAR_HOOK

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)


# --- checkpoint files ----------------------------------------------------------------------


def load_torch_file(
    ckpt: str, safe_load: bool = False, device: Any = None, return_metadata: bool = False
) -> Any:
    """The state dict in ``ckpt`` (``(sd, metadata)`` with ``return_metadata``).

    ``.safetensors`` / ``.sft`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` whatever ``safe_load`` says, as the reference does now: a
    pickle a pack downloaded must not run code. A lone ``state_dict`` entry (or a single
    dict-valued entry) is unwrapped the way the reference unwraps Lightning checkpoints.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    metadata = None
    if str(ckpt).lower().endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        try:
            with safe_open(str(ckpt), framework="pt", device=device.type) as f:
                sd = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - not a mapping
                if return_metadata:
                    metadata = f.metadata()
        except Exception as e:
            message = str(e.args[0]) if e.args else ""
            squashed = message.lower().replace(" ", "")
            if "headertoolarge" in squashed or "metadataincompletebuffer" in squashed:
                raise ValueError(
                    f"{message}\n\nFile path: {ckpt}\n\nThe safetensors file is corrupt, incomplete "
                    "or not a safetensors file at all."
                ) from e
            raise
    else:
        loaded = torch.load(str(ckpt), map_location=device, weights_only=True)
        sd = _unwrap_checkpoint(loaded)
    return (sd, metadata) if return_metadata else sd


def _unwrap_checkpoint(loaded: Any) -> Any:
    if not isinstance(loaded, dict):
        return loaded
    if "state_dict" in loaded:
        return loaded["state_dict"]
    if len(loaded) == 1:
        only = next(iter(loaded.values()))
        if isinstance(only, dict):
            return only
    return loaded


def save_torch_file(sd: Mapping[str, torch.Tensor], ckpt: str, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file(dict(sd), str(ckpt), metadata=metadata)


def safetensors_header(safetensors_path: str, max_size: int = 100 * 1024 * 1024) -> bytes | None:
    """The raw JSON header of a safetensors file, or None when it claims to be over ``max_size``."""
    with open(safetensors_path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > max_size:
            return None
        return f.read(length)


# --- state dicts ---------------------------------------------------------------------------


def calculate_parameters(sd: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    """Number of elements in the tensors whose key starts with ``prefix``."""
    return sum(tensor.nelement() for key, tensor in sd.items() if key.startswith(prefix))


def weight_dtype(sd: Mapping[str, torch.Tensor], prefix: str = "") -> torch.dtype | None:
    """The dtype holding the most elements under ``prefix`` (None when nothing matches)."""
    counts: dict[torch.dtype, int] = {}
    for key, tensor in sd.items():
        if key.startswith(prefix):
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.__getitem__) if counts else None


def state_dict_key_replace(
    state_dict: MutableMapping[str, Any], keys_to_replace: Mapping[str, str]
) -> MutableMapping[str, Any]:
    """Rename keys in place (``old -> new`` for the ones present); returns the same dict."""
    for old, new in keys_to_replace.items():
        if old in state_dict:
            state_dict[new] = state_dict.pop(old)
    return state_dict


def state_dict_prefix_replace(
    state_dict: MutableMapping[str, Any], replace_prefix: Mapping[str, str], filter_keys: bool = False
) -> MutableMapping[str, Any]:
    """Swap key prefixes (``old_prefix -> new_prefix``).

    Without ``filter_keys`` the renaming happens in ``state_dict`` itself and it is returned; with
    it, the renamed entries are moved out of ``state_dict`` into a new dict, which is returned.
    """
    out: MutableMapping[str, Any] = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old) :]] = state_dict.pop(key)
    return out


def convert_sd_to(state_dict: MutableMapping[str, torch.Tensor], dtype: torch.dtype) -> MutableMapping[str, torch.Tensor]:
    for key in list(state_dict):
        state_dict[key] = state_dict[key].to(dtype)
    return state_dict


def transformers_convert(sd: MutableMapping[str, Any], prefix_from: str, prefix_to: str, number: int) -> MutableMapping[str, Any]:
    """Rename an OpenCLIP text tower's keys (``transformer.resblocks.N``) to the transformers
    layout (``encoder.layers.N``), splitting the fused ``in_proj`` into q/k/v; in place."""
    renames = {
        "positional_embedding": "embeddings.position_embedding.weight",
        "token_embedding.weight": "embeddings.token_embedding.weight",
        "ln_final.weight": "final_layer_norm.weight",
        "ln_final.bias": "final_layer_norm.bias",
    }
    for old, new in renames.items():
        if prefix_from + old in sd:
            sd[prefix_to + new] = sd.pop(prefix_from + old)
    block_renames = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
        "attn.out_proj": "self_attn.out_proj",
    }
    for block in range(number):
        src = f"{prefix_from}transformer.resblocks.{block}."
        dst = f"{prefix_to}encoder.layers.{block}."
        for old, new in block_renames.items():
            for kind in ("weight", "bias"):
                if f"{src}{old}.{kind}" in sd:
                    sd[f"{dst}{new}.{kind}"] = sd.pop(f"{src}{old}.{kind}")
        for kind in ("weight", "bias"):
            fused = f"{src}attn.in_proj_{kind}"
            if fused in sd:
                q, k, v = sd.pop(fused).chunk(3, dim=0)
                for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                    sd[f"{dst}self_attn.{name}.{kind}"] = part
    return sd


def clip_text_transformers_convert(sd: MutableMapping[str, Any], prefix_from: str, prefix_to: str) -> MutableMapping[str, Any]:
    """:func:`transformers_convert` for a 32-block text tower under ``text_model.``, plus its projection."""
    sd = transformers_convert(sd, prefix_from, f"{prefix_to}text_model.", 32)
    if f"{prefix_from}text_projection.weight" in sd:
        sd[f"{prefix_to}text_projection.weight"] = sd.pop(f"{prefix_from}text_projection.weight")
    if f"{prefix_from}text_projection" in sd:
        # OpenCLIP stores the projection as x @ P; a Linear's weight is P transposed.
        sd[f"{prefix_to}text_projection.weight"] = sd.pop(f"{prefix_from}text_projection").transpose(0, 1).contiguous()
    return sd


# --- the UNet's diffusers <-> ldm key map --------------------------------------------------

UNET_MAP_ATTENTIONS = {
    "proj_in.weight",
    "proj_in.bias",
    "proj_out.weight",
    "proj_out.bias",
    "norm.weight",
    "norm.bias",
}

TRANSFORMER_BLOCKS = {
    f"{layer}.{kind}" for layer in ("norm1", "norm2", "norm3") for kind in ("weight", "bias")
} | {
    f"{attn}.{part}"
    for attn in ("attn1", "attn2")
    for part in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
} | {"ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight", "ff.net.2.bias"}

# ldm ResBlock key -> diffusers resnet key.
UNET_MAP_RESNET = {
    "in_layers.2.weight": "conv1.weight",
    "in_layers.2.bias": "conv1.bias",
    "emb_layers.1.weight": "time_emb_proj.weight",
    "emb_layers.1.bias": "time_emb_proj.bias",
    "out_layers.3.weight": "conv2.weight",
    "out_layers.3.bias": "conv2.bias",
    "skip_connection.weight": "conv_shortcut.weight",
    "skip_connection.bias": "conv_shortcut.bias",
    "in_layers.0.weight": "norm1.weight",
    "in_layers.0.bias": "norm1.bias",
    "out_layers.0.weight": "norm2.weight",
    "out_layers.0.bias": "norm2.bias",
}

# (ldm key, diffusers key) pairs outside the blocks; a set of tuples, as packs iterate it so.
UNET_MAP_BASIC = {
    ("label_emb.0.0.weight", "class_embedding.linear_1.weight"),
    ("label_emb.0.0.bias", "class_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "class_embedding.linear_2.weight"),
    ("label_emb.0.2.bias", "class_embedding.linear_2.bias"),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
    ("label_emb.0.0.bias", "add_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
    ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"),
    ("out.2.bias", "conv_out.bias"),
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
    ("time_embed.2.bias", "time_embedding.linear_2.bias"),
}


def _add_transformer(out: dict[str, str], diffusers: str, ldm: str, depth: int) -> None:
    for key in UNET_MAP_ATTENTIONS:
        out[f"{diffusers}.{key}"] = f"{ldm}.{key}"
    for t in range(depth):
        for key in TRANSFORMER_BLOCKS:
            out[f"{diffusers}.transformer_blocks.{t}.{key}"] = f"{ldm}.transformer_blocks.{t}.{key}"


def unet_to_diffusers(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers UNet key -> ldm (``input_blocks...``) key, for a UNet config as
    :mod:`comfy.model_detection` gives it; ``{}`` when the config has no ``num_res_blocks``."""
    if "num_res_blocks" not in unet_config:
        return {}
    res_blocks = list(unet_config["num_res_blocks"])
    levels = len(unet_config["channel_mult"])
    depth_in = list(unet_config["transformer_depth"])
    depth_out = list(unet_config["transformer_depth_output"])
    depth_mid = unet_config.get("transformer_depth_middle")
    out: dict[str, str] = {}

    for level in range(levels):
        block = 1 + (res_blocks[level] + 1) * level
        for i in range(res_blocks[level]):
            for ldm, diff in UNET_MAP_RESNET.items():
                out[f"down_blocks.{level}.resnets.{i}.{diff}"] = f"input_blocks.{block}.0.{ldm}"
            depth = depth_in.pop(0)
            if depth > 0:
                _add_transformer(out, f"down_blocks.{level}.attentions.{i}", f"input_blocks.{block}.1", depth)
            block += 1
        for kind in ("weight", "bias"):
            out[f"down_blocks.{level}.downsamplers.0.conv.{kind}"] = f"input_blocks.{block}.0.op.{kind}"

    # The mid attention's own layers are mapped even when it has no transformer blocks.
    _add_transformer(out, "mid_block.attentions.0", "middle_block.1", depth_mid or 0)
    for i, n in enumerate((0, 2)):
        for ldm, diff in UNET_MAP_RESNET.items():
            out[f"mid_block.resnets.{i}.{diff}"] = f"middle_block.{n}.{ldm}"

    reversed_blocks = list(reversed(res_blocks))
    for level in range(levels):
        per_level = reversed_blocks[level] + 1
        block = per_level * level
        for i in range(per_level):
            for ldm, diff in UNET_MAP_RESNET.items():
                out[f"up_blocks.{level}.resnets.{i}.{diff}"] = f"output_blocks.{block}.0.{ldm}"
            upsampler_index = 1
            depth = depth_out.pop()
            if depth > 0:
                upsampler_index = 2
                _add_transformer(out, f"up_blocks.{level}.attentions.{i}", f"output_blocks.{block}.1", depth)
            if i == per_level - 1:
                for kind in ("weight", "bias"):
                    out[f"up_blocks.{level}.upsamplers.0.conv.{kind}"] = (
                        f"output_blocks.{block}.{upsampler_index}.conv.{kind}"
                    )
            block += 1

    for ldm, diff in UNET_MAP_BASIC:
        out[diff] = ldm
    return out


# --- batches -------------------------------------------------------------------------------


def resize_list_to_batch_size(items: list[Any], batch_size: int) -> list[Any]:
    """:func:`resize_to_batch_size` for a list."""
    count = len(items)
    if count in (batch_size, 0):
        return items
    if batch_size <= 1:
        return items[:batch_size]
    return [items[i] for i in batch_pick_indices(count, batch_size)]


def pack_latents(latents: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Size]]:
    """Flatten several latents into one ``[B, 1, N]`` tensor, with their shapes to undo it."""
    shapes = [t.shape for t in latents]
    return torch.cat([t.reshape(t.shape[0], 1, -1) for t in latents], dim=-1), shapes


def unpack_latents(combined_latent: torch.Tensor, latent_shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Undo :func:`pack_latents` (one shape: the tensor is returned as it is)."""
    if len(latent_shapes) <= 1:
        return [combined_latent]
    out = []
    for shape in latent_shapes:
        size = math.prod(shape[1:])
        piece, combined_latent = combined_latent[:, :, :size], combined_latent[:, :, size:]
        out.append(piece.reshape([piece.shape[0], *list(shape)[1:]]))
    return out


# --- attributes ----------------------------------------------------------------------------

# Marks "no such attribute" for set_attr: setting it back deletes the attribute.
ATTR_UNSET: dict[str, Any] = {}


def resolve_attr(obj: Any, attr: str) -> tuple[Any, str]:
    *path, name = attr.split(".")
    for part in path:
        obj = getattr(obj, part)
    return obj, name


def get_attr(obj: Any, attr: str) -> Any:
    """``get_attr(model, "a.b.weight")`` is ``model.a.b.weight``."""
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def set_attr(obj: Any, attr: str, value: Any) -> Any:
    """Set a dotted attribute and return its previous value (``ATTR_UNSET`` if there was none)."""
    owner, name = resolve_attr(obj, attr)
    previous = getattr(owner, name, ATTR_UNSET)
    if value is ATTR_UNSET:
        delattr(owner, name)
    else:
        setattr(owner, name, value)
    return previous


def set_attr_param(obj: Any, attr: str, value: torch.Tensor) -> Any:
    """:func:`set_attr` with ``value`` wrapped in a frozen ``nn.Parameter``."""
    if not torch.is_inference_mode_enabled() and value.is_inference():
        # An inference-mode tensor cannot become a Parameter outside inference mode.
        value = value.clone()
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def set_attr_buffer(obj: Any, attr: str, value: torch.Tensor) -> Any:
    owner, name = resolve_attr(obj, attr)
    previous = getattr(owner, name, ATTR_UNSET)
    persistent = name not in getattr(owner, "_non_persistent_buffers_set", set())
    owner.register_buffer(name, value, persistent=persistent)
    return previous


def copy_to_param(obj: Any, attr: str, value: torch.Tensor) -> None:
    """Copy ``value`` into the existing tensor at ``attr`` (the tensor object stays the same)."""
    owner, name = resolve_attr(obj, attr)
    getattr(owner, name).data.copy_(value)


# --- resizing ------------------------------------------------------------------------------


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images in 0..1 with PIL's Lanczos filter, one 8-bit image at a time."""
    import numpy as np
    from PIL import Image

    # PIL wants H x W (grey) or H x W x C.
    images = samples.squeeze(1) if samples.shape[1] == 1 else samples.movedim(1, -1)
    out = []
    for image in images:
        pixels = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
        resized = Image.fromarray(pixels).resize((width, height), resample=Image.Resampling.LANCZOS)
        array = torch.from_numpy(np.array(resized).astype(np.float32) / 255.0)
        out.append(array.movedim(-1, 0) if array.ndim == 3 else array)
    return torch.stack(out).to(samples.device, samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """Resize ``[B, C, ..., H, W]`` to ``height x width``.

    ``upscale_method`` is a ``torch.nn.functional.interpolate`` mode, ``"bislerp"`` or
    ``"lanczos"``; ``crop="center"`` first trims the input to the target's aspect ratio. Extra
    dimensions between C and H (video frames) are resized frame by frame.
    """
    shape = tuple(samples.shape)
    if len(shape) > 4:
        frames = samples.reshape(shape[0], shape[1], -1, shape[-2], shape[-1]).movedim(2, 1)
        samples = frames.reshape(-1, shape[1], shape[-2], shape[-1])
    if crop == "center":
        samples = center_crop(samples, width, height)
    if upscale_method == "bislerp":
        out = bislerp(samples, width, height)
    elif upscale_method == "lanczos":
        out = lanczos(samples, width, height)
    else:
        out = F.interpolate(samples, size=(height, width), mode=upscale_method)
    if len(shape) == 4:
        return out
    out = out.reshape((shape[0], -1, shape[1], height, width)).movedim(2, 1)
    return out.reshape(shape[:-2] + (height, width))


def reshape_mask(input_mask: torch.Tensor, output_shape: Sequence[int]) -> torch.Tensor:
    """Scale a mask to ``output_shape`` (``[B, C, *spatial]``), repeating channels and batch."""
    dims = len(output_shape) - 2
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]
    if dims == 2:
        input_mask = input_mask.reshape(-1, 1, input_mask.shape[-2], input_mask.shape[-1])
    elif dims == 3 and input_mask.ndim < 5:
        input_mask = input_mask.reshape(1, 1, -1, input_mask.shape[-2], input_mask.shape[-1])
    mask = F.interpolate(input_mask, size=tuple(output_shape[2:]), mode=mode)
    if mask.shape[1] < output_shape[1]:
        mask = mask.repeat((1, output_shape[1]) + (1,) * dims)[:, : output_shape[1]]
    return repeat_to_batch_size(mask, output_shape[0])


# --- tiling --------------------------------------------------------------------------------


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    """How many tiles :func:`tiled_scale` runs for one image (for sizing a progress bar)."""
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


def _per_dim(value: Any, dims: int) -> list[Any]:
    return list(value) if isinstance(value, tuple | list) else [value] * dims


@torch.inference_mode()
def tiled_scale_multidim(
    samples: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    tile: Sequence[int] = (64, 64),
    overlap: int | Sequence[int] = 8,
    upscale_amount: Any = 4,
    out_channels: int = 3,
    output_device: Any = "cpu",
    downscale: bool = False,
    index_formulas: Any = None,
    pbar: Any = None,
) -> torch.Tensor:
    """Run ``function`` over overlapping tiles of ``samples`` and blend the results.

    Each tile's output is weighted by a mask that ramps linearly over the (scaled) overlap at
    every edge, and the sum is divided by the summed weights. ``upscale_amount`` (number or
    callable per dimension) maps input sizes to output sizes; ``index_formulas`` does the same for
    tile positions (default: ``upscale_amount``); ``downscale`` divides instead of multiplying.
    ``pbar.update(1)`` is called per tile.
    """
    dims = len(tile)
    amounts = _per_dim(upscale_amount, dims)
    overlaps = _per_dim(overlap, dims)
    formulas = _per_dim(amounts if index_formulas is None else index_formulas, dims)

    def scaled(table: list[Any], d: int, value: float) -> float:
        factor = table[d]
        if callable(factor):
            return factor(value)
        return value / factor if downscale else value * factor

    def out_size(sizes: Sequence[int]) -> list[int]:
        return [round(scaled(amounts, d, size)) for d, size in enumerate(sizes)]

    spatial = list(samples.shape[2:])
    output = torch.empty([samples.shape[0], out_channels, *out_size(spatial)], device=output_device)
    for b in range(samples.shape[0]):
        item = samples[b : b + 1]
        if all(spatial[d] <= tile[d] for d in range(dims)):
            output[b : b + 1] = function(item).to(output_device)
            if pbar is not None:
                pbar.update(1)
            continue
        acc = output[b : b + 1].zero_()
        weight = torch.zeros([1, 1, *out_size(spatial)], device=output_device)
        starts = [
            range(0, spatial[d] - overlaps[d], tile[d] - overlaps[d]) if spatial[d] > tile[d] else [0]
            for d in range(dims)
        ]
        for corner in itertools.product(*starts):
            piece = item
            origin = []
            for d in range(dims):
                start = max(0, min(spatial[d] - overlaps[d], corner[d]))
                piece = piece.narrow(d + 2, start, min(tile[d], spatial[d] - start))
                origin.append(round(scaled(formulas, d, start)))
            result = function(piece).to(output_device)
            mask = _feather_mask(result.shape[2:], [round(scaled(amounts, d, overlaps[d])) for d in range(dims)], output_device)
            target, target_weight = acc, weight
            for d in range(dims):
                length = min(result.shape[d + 2], target.shape[d + 2] - origin[d])
                target = target.narrow(d + 2, origin[d], length)
                target_weight = target_weight.narrow(d + 2, origin[d], length)
                result = result.narrow(d + 2, 0, length)
                mask = mask.narrow(d + 2, 0, length)
            target.add_(result * mask)
            target_weight.add_(mask)
            if pbar is not None:
                pbar.update(1)
        acc.div_(weight)
    return output


def _feather_mask(shape: Sequence[int], feathers: Sequence[int], device: Any) -> torch.Tensor:
    """Ones, ramping to ``1/feather`` over ``feather`` cells at both ends of each dimension."""
    mask = torch.ones([1, 1, *shape], device=device)
    for d, feather in enumerate(feathers, start=2):
        if feather >= mask.shape[d]:
            continue
        for t in range(feather):
            ramp = (t + 1) / feather
            mask.narrow(d, t, 1).mul_(ramp)
            mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(ramp)
    return mask


def tiled_scale(
    samples: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    tile_x: int = 64,
    tile_y: int = 64,
    overlap: int = 8,
    upscale_amount: Any = 4,
    out_channels: int = 3,
    output_device: Any = "cpu",
    pbar: Any = None,
) -> torch.Tensor:
    """:func:`tiled_scale_multidim` over ``[B, C, H, W]`` with ``tile_y x tile_x`` tiles."""
    return tiled_scale_multidim(
        samples,
        function,
        (tile_y, tile_x),
        overlap=overlap,
        upscale_amount=upscale_amount,
        out_channels=out_channels,
        output_device=output_device,
        pbar=pbar,
    )


# --- misc ----------------------------------------------------------------------------------


def string_to_seed(data: str | bytes | Iterable[int]) -> int:
    """CRC-32 of ``data`` (characters count by code point), the reference's seed from a string."""
    codes = [ord(x) if isinstance(x, str) else int(x) for x in data]
    if all(code < 256 for code in codes):
        return zlib.crc32(bytes(codes))
    crc = 0xFFFFFFFF
    for code in codes:
        crc ^= code
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def deepcopy_list_dict(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """Copy nested lists and dicts (shared sub-objects stay shared); anything else is kept as is."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        result: Any = {deepcopy_list_dict(k, memo): deepcopy_list_dict(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        result = [deepcopy_list_dict(item, memo) for item in obj]
    else:
        result = obj
    memo[id(obj)] = result
    return result


def bit_reverse_range(index: int, bits: int) -> int:
    result = 0
    for _ in range(bits):
        result = (result << 1) | (index & 1)
        index >>= 1
    return result
