"""``comfy.model_management``: interruption and device queries over the kernel's executor."""

from __future__ import annotations

from typing import Any

from comfykernel_compat_runtime import kernel as _kernel

from kernel.progress import Interrupted, get_executing_context, throw_if_interrupted

# Packs catch this name; it must be the very class the executor treats as an interruption.
InterruptProcessingException = Interrupted


def interrupt_current_processing(value: bool = True) -> None:
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
    throw_if_interrupted()


def cpu_mode() -> bool:
    return bool(_kernel().settings.cpu)


def get_torch_device() -> Any:
    import torch

    if not cpu_mode() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def intermediate_device() -> Any:
    import torch

    return torch.device("cpu")


def unet_offload_device() -> Any:
    return intermediate_device()


def text_encoder_device() -> Any:
    return get_torch_device()


def vae_device() -> Any:
    return get_torch_device()


def soft_empty_cache(force: bool = False) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    import psutil
    import torch

    dev = dev or get_torch_device()
    if getattr(dev, "type", "cpu") == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        free = psutil.virtual_memory().available
    return (free, free) if torch_free_too else free


def unload_all_models() -> None:
    _kernel().hooks.on_free(_kernel(), True, False)
