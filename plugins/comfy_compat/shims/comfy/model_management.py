"""``comfy.model_management``: devices, dtypes, memory and interruption, answered truthfully.

The device answers follow the server's own choice (``--cpu`` or no CUDA: everything is on the
CPU, fp16/bf16 are not used there, no xformers). Interruption goes through the kernel's executor,
and ``InterruptProcessingException`` is the executor's own interruption class, so a pack that
catches it or raises it is understood by the executor.

Model loading belongs to the core nodes' model manager, which moves weights on demand, so
``load_models_gpu`` only keeps the reference's bookkeeping (``loaded_models()``,
``current_loaded_models``) and, on a GPU, moves a pack's own ``nn.Module`` / ModelPatcher-like
objects to their load device. ``current_loaded_models``, ``vram_state`` and ``cpu_state`` are
module attributes because packs read them there; this module is imported afresh for each kernel
the compatibility plugin is enabled in, so they live exactly as long as that binding.
"""

from __future__ import annotations

import enum
import logging
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import psutil
import torch
from comfykernel_compat_runtime import kernel as _kernel

from kernel.progress import Interrupted, get_executing_context, throw_if_interrupted

log = logging.getLogger("comfykernel.compat")

# Packs catch this name; it must be the very class the executor treats as an interruption.
InterruptProcessingException = Interrupted


class VRAMState(enum.Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(enum.Enum):
    GPU = 0
    CPU = 1
    MPS = 2


def _uses_gpu() -> bool:
    return not _kernel().settings.cpu and torch.cuda.is_available()


cpu_state = CPUState.GPU if _uses_gpu() else CPUState.CPU
# The reference reports DISABLED when it runs on the CPU; NORMAL_VRAM is its GPU default.
vram_state = VRAMState.NORMAL_VRAM if cpu_state is CPUState.GPU else VRAMState.DISABLED
set_vram_to = vram_state

try:
    OOM_EXCEPTION: type[BaseException] = torch.cuda.OutOfMemoryError
except AttributeError:  # pragma: no cover - every supported torch has it
    OOM_EXCEPTION = Exception

# This server computes attention with torch's scaled_dot_product_attention and never xformers.
XFORMERS_IS_AVAILABLE = False
XFORMERS_ENABLED_VAE = False
XFORMERS_VERSION = ""
ENABLE_PYTORCH_ATTENTION = True
directml_enabled = False
xpu_available = False
lowvram_available = True
PRIORITIZE_FP16 = False
FORCE_FP32 = False
DISABLE_SMART_MEMORY = False
FLOAT8_TYPES = [t for t in (getattr(torch, n, None) for n in ("float8_e4m3fn", "float8_e5m2")) if t is not None]


# --- interruption --------------------------------------------------------------------------


def interrupt_current_processing(value: bool = True) -> None:
    """Interrupt the running prompt (``value=False`` does nothing: the executor clears it itself)."""
    executor = _kernel().executor
    if value and executor is not None:
        executor.interrupt()


def processing_interrupted() -> bool:
    context = get_executing_context()
    if context is not None:
        return bool(context.sink.is_interrupted())
    executor = _kernel().executor
    return bool(executor is not None and executor.is_interrupted())


def throw_exception_if_processing_interrupted() -> None:
    """Raise :data:`InterruptProcessingException` if the running prompt was interrupted."""
    throw_if_interrupted()


# --- devices -------------------------------------------------------------------------------


def cpu_mode() -> bool:
    return cpu_state is CPUState.CPU


def mps_mode() -> bool:
    return cpu_state is CPUState.MPS


def get_torch_device() -> torch.device:
    """The compute device: the current CUDA device, or the CPU under ``--cpu`` / without CUDA."""
    if cpu_state is CPUState.GPU:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def get_all_torch_devices(exclude_current: bool = False) -> list[torch.device]:
    if cpu_state is not CPUState.GPU:
        return [] if exclude_current else [torch.device("cpu")]
    current = get_torch_device()
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [d for d in devices if d != current] if exclude_current else devices


def get_torch_device_name(device: Any) -> str:
    if getattr(device, "type", None) == "cuda":
        try:
            backend = torch.cuda.get_allocator_backend()
        except Exception:  # noqa: BLE001 - only decorates the name
            backend = ""
        return f"{device} {torch.cuda.get_device_name(device)} : {backend}"
    if hasattr(device, "type"):
        return str(device.type)
    return f"CUDA {device}: {torch.cuda.get_device_name(device)}"


def _cpu() -> torch.device:
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where nodes keep images and latents between nodes: always host memory here."""
    return _cpu()


def intermediate_dtype() -> torch.dtype:
    return torch.float32


def unet_offload_device() -> torch.device:
    return _cpu()


def unet_inital_load_device(parameters: int, dtype: torch.dtype) -> torch.device:
    return _cpu()


def text_encoder_device() -> torch.device:
    # Like the reference: text encoders run on the GPU only where it does fp16.
    return get_torch_device() if should_use_fp16(prioritize_performance=False) else _cpu()


def text_encoder_offload_device() -> torch.device:
    return _cpu()


def text_encoder_initial_device(load_device: Any, offload_device: Any, model_size: int = 0) -> Any:
    return offload_device


def vae_device() -> torch.device:
    return get_torch_device()


def vae_offload_device() -> torch.device:
    return _cpu()


def get_autocast_device(dev: Any) -> str:
    return dev.type if hasattr(dev, "type") else "cuda"


def is_device_type(device: Any, type: str) -> bool:  # noqa: A002 - the reference's parameter name
    return getattr(device, "type", None) == type


def is_device_cpu(device: Any) -> bool:
    return is_device_type(device, "cpu")


def is_device_mps(device: Any) -> bool:
    return is_device_type(device, "mps")


def is_device_xpu(device: Any) -> bool:
    return is_device_type(device, "xpu")


def is_device_cuda(device: Any) -> bool:
    return is_device_type(device, "cuda")


def is_intel_xpu() -> bool:
    return False


def is_ascend_npu() -> bool:
    return False


def is_mlu() -> bool:
    return False


def is_ixuca() -> bool:
    return False


def is_nvidia() -> bool:
    return cpu_state is CPUState.GPU and torch.version.cuda is not None


def is_amd() -> bool:
    return cpu_state is CPUState.GPU and getattr(torch.version, "hip", None) is not None


def is_directml_enabled() -> bool:
    return False


def device_supports_non_blocking(device: Any) -> bool:
    return not is_device_mps(device)


def force_channels_last() -> bool:
    return False


def get_offload_stream(device: Any) -> None:
    """No side streams: weights are cast on the default stream."""
    return None


def current_stream(device: Any) -> Any:
    return torch.cuda.current_stream(device) if is_device_cuda(device) else None


def sync_stream(device: Any, stream: Any) -> None:
    if stream is not None and is_device_cuda(device):
        torch.cuda.current_stream(device).wait_stream(stream)


def synchronize() -> None:
    if cpu_state is CPUState.GPU:
        torch.cuda.synchronize()


def soft_empty_cache(force: bool = False) -> None:
    if cpu_state is CPUState.GPU:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


# --- attention backends --------------------------------------------------------------------


def xformers_enabled() -> bool:
    return False


def xformers_enabled_vae() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return ENABLE_PYTORCH_ATTENTION


def pytorch_attention_enabled_vae() -> bool:
    return ENABLE_PYTORCH_ATTENTION and not is_amd()


def pytorch_attention_flash_attention() -> bool:
    return ENABLE_PYTORCH_ATTENTION and (is_nvidia() or is_amd())


def sage_attention_enabled() -> bool:
    return False


def flash_attention_enabled() -> bool:
    return False


def force_upcast_attention_dtype() -> dict[torch.dtype, torch.dtype] | None:
    return None


# --- dtypes --------------------------------------------------------------------------------


def _capability(device: Any) -> tuple[int, int] | None:
    if cpu_state is not CPUState.GPU or (device is not None and not is_device_cuda(device)):
        return None
    return torch.cuda.get_device_capability(device if device is not None else get_torch_device())


def should_use_fp16(
    device: Any = None, model_params: int = 0, prioritize_performance: bool = True, manual_cast: bool = False
) -> bool:
    """fp16 is used on CUDA GPUs from Volta (compute 7.0) on; never on the CPU."""
    if device is not None and is_device_cpu(device):
        return False
    capability = _capability(device)
    return capability is not None and capability[0] >= 7


def should_use_bf16(
    device: Any = None, model_params: int = 0, prioritize_performance: bool = True, manual_cast: bool = False
) -> bool:
    """bf16 is used on CUDA GPUs from Ampere (compute 8.0) on; never on the CPU."""
    if device is not None and is_device_cpu(device):
        return False
    capability = _capability(device)
    return capability is not None and capability[0] >= 8


def supports_fp8_compute(device: Any = None) -> bool:
    capability = _capability(device)
    return capability is not None and capability >= (8, 9)


def supports_dtype(device: Any, dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    if is_device_cpu(device):
        return False
    return dtype in (torch.float16, torch.bfloat16)


def supports_cast(device: Any, dtype: torch.dtype) -> bool:
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return True
    return dtype in FLOAT8_TYPES and not is_device_mps(device)


def dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element (4 for anything without ``itemsize``)."""
    return int(getattr(dtype, "itemsize", 4))


def pick_weight_dtype(dtype: torch.dtype | None, fallback_dtype: torch.dtype, device: Any = None) -> torch.dtype:
    if dtype is None or dtype_size(dtype) > dtype_size(fallback_dtype) or not supports_cast(device, dtype):
        return fallback_dtype
    return dtype


_HALF_TYPES = (torch.float16, torch.bfloat16, torch.float32)


def unet_dtype(
    device: Any = None,
    model_params: int = 0,
    supported_dtypes: Sequence[torch.dtype] = _HALF_TYPES,
    weight_dtype: torch.dtype | None = None,
) -> torch.dtype:
    """The dtype a diffusion model is stored in on ``device``: fp16 or bf16 where the GPU runs
    them (in ``supported_dtypes`` order), fp8 weights stay fp8 where it computes in fp8, else fp32."""
    if weight_dtype in FLOAT8_TYPES and supports_fp8_compute(device):
        return weight_dtype
    for dtype in supported_dtypes:
        if dtype == torch.float16 and should_use_fp16(device, model_params):
            return dtype
        if dtype == torch.bfloat16 and should_use_bf16(device, model_params):
            return dtype
    return torch.float32


def unet_manual_cast(
    weight_dtype: torch.dtype | None, inference_device: Any, supported_dtypes: Sequence[torch.dtype] = _HALF_TYPES
) -> torch.dtype | None:
    """The dtype to compute in when weights stored as ``weight_dtype`` cannot be used directly
    on ``inference_device``; None when they can (fp32 / fp64 always can)."""
    if weight_dtype in (torch.float32, torch.float64):
        return None
    fp16 = should_use_fp16(inference_device, prioritize_performance=False)
    bf16 = should_use_bf16(inference_device)
    if (weight_dtype == torch.float16 and fp16) or (weight_dtype == torch.bfloat16 and bf16):
        return None
    for dtype in supported_dtypes:
        if dtype == torch.float16 and fp16:
            return dtype
        if dtype == torch.bfloat16 and bf16:
            return dtype
    return torch.float32


def text_encoder_dtype(device: Any = None) -> torch.dtype:
    """fp16, as the reference answers for every device (its CPU path casts while computing)."""
    return torch.float16


def vae_dtype(device: Any = None, allowed_dtypes: Sequence[torch.dtype] = ()) -> torch.dtype:
    for dtype in allowed_dtypes:
        if dtype == torch.float16 and should_use_fp16(device):
            return dtype
        if dtype == torch.bfloat16 and should_use_bf16(device):
            return dtype
    return torch.float32


def lora_compute_dtype(device: Any) -> torch.dtype:
    return torch.float16 if should_use_fp16(device) else torch.float32


# --- casting -------------------------------------------------------------------------------


def cast_to(
    weight: torch.Tensor,
    dtype: torch.dtype | None = None,
    device: Any = None,
    non_blocking: bool = False,
    copy: bool = False,
    stream: Any = None,
    r: torch.Tensor | None = None,
) -> torch.Tensor:
    """``weight`` on ``device`` in ``dtype``; the tensor itself when nothing changes and no
    ``copy`` is asked for. ``r`` is an optional preallocated destination."""
    if device is None or weight.device == torch.device(device):
        if not copy and (dtype is None or weight.dtype == dtype):
            return weight
        return weight.to(dtype=dtype, copy=copy)
    if r is None:
        r = torch.empty_like(weight, dtype=dtype, device=device)
    r.copy_(weight, non_blocking=non_blocking)
    return r


def cast_to_device(tensor: torch.Tensor, device: Any, dtype: torch.dtype | None, copy: bool = False) -> torch.Tensor:
    return cast_to(tensor, dtype=dtype, device=device, non_blocking=device_supports_non_blocking(device), copy=copy)


# --- memory --------------------------------------------------------------------------------


def get_total_memory(dev: Any = None, torch_total_too: bool = False) -> Any:
    dev = get_torch_device() if dev is None else dev
    if is_device_cuda(dev):
        total = torch.cuda.mem_get_info(dev)[1]
    else:
        total = psutil.virtual_memory().total
    return (total, total) if torch_total_too else total


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    """Free bytes on ``dev`` (host RAM for the CPU); with ``torch_free_too``, ``(free, free_in_torch_cache)``."""
    dev = get_torch_device() if dev is None else dev
    if is_device_cuda(dev):
        stats = torch.cuda.memory_stats(dev)
        cached = stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)
        free = torch.cuda.mem_get_info(dev)[0] + cached
    else:
        free = cached = psutil.virtual_memory().available
    return (free, cached) if torch_free_too else free


def extra_reserved_memory() -> int:
    return 400 * 1024 * 1024


def minimum_inference_memory() -> int:
    return 1024 * 1024 * 1024 + extra_reserved_memory()


def maximum_vram_for_weights(device: Any = None) -> float:
    return get_total_memory(device) * 0.88 - minimum_inference_memory()


def module_size(module: torch.nn.Module) -> int:
    """Bytes taken by ``module``'s state dict."""
    return sum(t.nbytes for t in module.state_dict().values())


# --- loaded-model bookkeeping --------------------------------------------------------------


def _as_module(model: Any) -> torch.nn.Module | None:
    if isinstance(model, torch.nn.Module):
        return model
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, torch.nn.Module) else None


class LoadedModel:
    """One entry of :data:`current_loaded_models`: a weak reference to what was loaded."""

    def __init__(self, model: Any) -> None:
        self._model = weakref.ref(model)
        self.device = getattr(model, "load_device", None) or get_torch_device()
        self.currently_used = True
        module = _as_module(model)
        self.real_model = weakref.ref(module) if module is not None else None

    @property
    def model(self) -> Any:
        return self._model()

    def model_memory(self) -> int:
        model = self.model
        if hasattr(model, "model_size"):
            return int(model.model_size())
        module = _as_module(model)
        return module_size(module) if module is not None else 0

    def model_loaded_memory(self) -> int:
        return self.model_memory()

    def model_offloaded_memory(self) -> int:
        return 0

    def model_memory_required(self, device: Any) -> int:
        return 0 if device == self.device else self.model_memory()

    def model_load(self, lowvram_model_memory: float = 0, force_patch_weights: bool = False) -> Any:
        model = self.model
        module = _as_module(model)
        if getattr(model, "manager", None) is not None:
            # The server's own MODEL / CLIP / VAE: its model manager moves the weights on use.
            return module
        if module is not None and not is_device_cpu(self.device):
            module.to(self.device)
            if hasattr(model, "current_device"):
                model.current_device = self.device
        return module

    def model_unload(self, memory_to_free: float | None = None, unpatch_weights: bool = True) -> bool:
        model = self.model
        module = _as_module(model)
        offload = getattr(model, "offload_device", None) or _cpu()
        if module is not None and not is_device_cpu(self.device) and getattr(model, "manager", None) is None:
            module.to(offload)
        return True

    def is_dead(self) -> bool:
        return self.model is None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoadedModel) and self.model is other.model

    __hash__ = None  # type: ignore[assignment] - compared by the model they hold, like the reference's


current_loaded_models: list[LoadedModel] = []


def _drop_dead() -> None:
    current_loaded_models[:] = [m for m in current_loaded_models if not m.is_dead()]


def load_models_gpu(
    models: Iterable[Any],
    memory_required: int = 0,
    force_patch_weights: bool = False,
    minimum_memory_required: int | None = None,
    force_full_load: bool = False,
) -> None:
    """Mark ``models`` as loaded (most recent first); on a GPU, move their modules to it.

    Accepts the server's MODEL / CLIP / VAE objects (their weights move on use, by the server's
    model manager), ModelPatcher-like objects with a ``.model`` module, and bare ``nn.Module`` s.
    """
    _drop_dead()
    for model in dict.fromkeys(models):
        entry = LoadedModel(model)
        if entry in current_loaded_models:
            current_loaded_models.remove(entry)
        entry.model_load()
        current_loaded_models.insert(0, entry)


def load_model_gpu(model: Any) -> None:
    load_models_gpu([model])


def loaded_models(only_currently_used: bool = False) -> list[Any]:
    """The models loaded through :func:`load_models_gpu`, most recently loaded first."""
    _drop_dead()
    return [m.model for m in current_loaded_models if m.currently_used or not only_currently_used]


def free_memory(
    memory_required: float,
    device: Any,
    keep_loaded: Sequence[LoadedModel] = (),
    for_dynamic: bool = False,
    pins_required: int = 0,
    ram_required: int = 0,
) -> list[LoadedModel]:
    """Unload bookkept models on ``device`` (all devices for None) until ``memory_required``
    bytes are free there; returns the unloaded entries."""
    _drop_dead()
    unloaded: list[LoadedModel] = []
    for entry in reversed(list(current_loaded_models)):
        if device is not None and entry.device != device or entry in keep_loaded:
            continue
        if device is not None and get_free_memory(device) >= memory_required:
            break
        entry.model_unload()
        current_loaded_models.remove(entry)
        unloaded.append(entry)
    if unloaded:
        soft_empty_cache()
    return unloaded


def unload_all_models() -> None:
    """Forget every bookkept model and ask the server to drop its cached models (``POST /free``)."""
    for entry in list(current_loaded_models):
        entry.model_unload()
    current_loaded_models.clear()
    k = _kernel()
    k.hooks.on_free(kernel=k, unload_models=True, free_memory=False)


def unload_model_clones(model: Any, unload_weights_only: bool = True, force_unload: bool = True) -> list[LoadedModel] | None:
    """The older API: forget the bookkept entries of ``model`` and its clones (``is_clone``)."""
    _drop_dead()
    same = getattr(model, "is_clone", None)
    clones = [m for m in current_loaded_models if m.model is model or (callable(same) and same(m.model))]
    for entry in clones:
        entry.model_unload()
        current_loaded_models.remove(entry)
    return clones


def cleanup_models() -> None:
    _drop_dead()


def cleanup_models_gc() -> None:
    _drop_dead()


def archive_model_dtypes(model: torch.nn.Module) -> None:
    """Record each parameter's and buffer's dtype as ``<name>_comfy_model_dtype`` on its module."""
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            setattr(module, f"{name}_comfy_model_dtype", param.dtype)
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, f"{name}_comfy_model_dtype", buffer.dtype)


def debug_memory_summary() -> str:
    return torch.cuda.memory_summary() if cpu_state is CPUState.GPU else ""
