"""ComfyUI's ``comfy.cli_args``: ``args``, the reference's parsed command line, for node packs.

The reference parses ``sys.argv`` when this module is imported. Here nothing is parsed: ``args`` is
an ``argparse.Namespace`` holding every option name the reference defines, at the reference's
default, with the values the running kernel was started with laid over it where comfykernel has
the same setting (``--listen``, ``--port``, the directories, caching, ``--enable-manager``...).

``args`` is one object per process because packs and ComfyUI-Manager import it by name and some
assign to it (the reference itself turns ``enable_manager`` off when the package is missing); the
shims are reloaded per kernel, so it lives exactly as long as the kernel it describes.
"""

from __future__ import annotations

import argparse
import enum
from typing import Any

from comfykernel_compat_runtime import kernel as _kernel

# The reference's default for --front-end-version (the web UI comes from the installed package).
DEFAULT_VERSION_STRING = "comfyanonymous/ComfyUI@latest"


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"

    @classmethod
    def from_string(cls, value: str) -> LatentPreviewMethod | None:
        for member in cls:
            if member.value == value:
                return member
        return None


class PerformanceFeature(enum.Enum):
    Fp16Accumulation = "fp16_accumulation"
    Fp8MatrixMultiplication = "fp8_matrix_mult"
    CublasOps = "cublas_ops"
    AutoTune = "autotune"
    PinnedMem = "pinned_memory"


class EnumAction(argparse.Action):
    """An argparse action storing an Enum member from its value (the reference exports it)."""

    def __init__(self, **kwargs: Any) -> None:
        enum_type = kwargs.pop("type", None)
        if enum_type is None or not issubclass(enum_type, enum.Enum):
            raise TypeError("EnumAction needs an Enum subclass as type")
        choices = tuple(member.value for member in enum_type)
        kwargs.setdefault("choices", choices)
        kwargs.setdefault("metavar", f"[{','.join(choices)}]")
        super().__init__(**kwargs)
        self._enum = enum_type

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, self._enum(values))


# Every option of the reference's parser, at its default, including the GPU and precision
# switches that mean nothing on this server: packs read them (``args.highvram``...) to branch.
_REFERENCE_DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1",
    "port": 8188,
    "tls_keyfile": None,
    "tls_certfile": None,
    "enable_cors_header": None,
    "max_upload_size": 100.0,
    "base_directory": None,
    "extra_model_paths_config": None,
    "output_directory": None,
    "temp_directory": None,
    "input_directory": None,
    "models_directory": None,
    "auto_launch": False,
    "disable_auto_launch": False,
    "cuda_device": None,
    "default_device": None,
    "cuda_malloc": False,
    "disable_cuda_malloc": False,
    "force_fp32": False,
    "force_fp16": False,
    "fp32_unet": False,
    "fp64_unet": False,
    "bf16_unet": False,
    "fp16_unet": False,
    "fp8_e4m3fn_unet": False,
    "fp8_e5m2_unet": False,
    "fp8_e8m0fnu_unet": False,
    "fp16_vae": False,
    "fp32_vae": False,
    "bf16_vae": False,
    "cpu_vae": False,
    "fp8_e4m3fn_text_enc": False,
    "fp8_e5m2_text_enc": False,
    "fp16_text_enc": False,
    "fp32_text_enc": False,
    "bf16_text_enc": False,
    "force_channels_last": False,
    "directml": None,
    "oneapi_device_selector": None,
    "disable_ipex_optimize": False,
    "supports_fp8_compute": False,
    "preview_method": LatentPreviewMethod.NoPreviews,
    "preview_size": 512,
    "cache_classic": False,
    "cache_lru": 0,
    "cache_none": False,
    "cache_ram": [],
    "use_split_cross_attention": False,
    "use_quad_cross_attention": False,
    "use_pytorch_cross_attention": False,
    "use_sage_attention": False,
    "use_flash_attention": False,
    "disable_xformers": False,
    "force_upcast_attention": False,
    "dont_upcast_attention": False,
    "enable_manager": False,
    "disable_manager_ui": False,
    "enable_manager_legacy_ui": False,
    "gpu_only": False,
    "highvram": False,
    "normalvram": False,
    "lowvram": False,
    "novram": False,
    "cpu": False,
    "reserve_vram": None,
    "async_offload": None,
    "disable_async_offload": False,
    "disable_pinned_memory": False,
    "default_hashing_function": "sha256",
    "disable_smart_memory": False,
    "deterministic": False,
    "fast": set(),
    "mmap_torch_files": False,
    "disable_mmap": False,
    "enable_dynamic_vram": False,
    "disable_dynamic_vram": False,
    "dont_print_server": False,
    "quick_test_for_ci": False,
    "windows_standalone_build": False,
    "disable_metadata": False,
    "disable_all_custom_nodes": False,
    "whitelist_custom_nodes": [],
    "disable_api_nodes": False,
    "multi_user": False,
    "verbose": "INFO",
    "log_stdout": False,
    "front_end_version": DEFAULT_VERSION_STRING,
    "front_end_root": None,
    "user_directory": None,
    "enable_compress_response_body": False,
    "comfy_api_base": "https://api.comfy.org",
    "database_url": None,
    "disable_assets": False,
    "enable_assets": False,
    "feature_flag": [],
    "list_feature_flags": False,
    "debug_hang": False,
}

# Settings fields whose value means the same as the reference option of that name.
_SAME_MEANING = (
    "port",
    "max_upload_size",
    "enable_cors_header",
    "output_directory",
    "input_directory",
    "temp_directory",
    "user_directory",
    "models_directory",
    "multi_user",
    "cpu",
    "cache_classic",
    "cache_lru",
    "cache_none",
    "disable_all_custom_nodes",
    "disable_metadata",
    "preview_size",
    "default_hashing_function",
    "enable_manager",
    "disable_manager_ui",
    "enable_manager_legacy_ui",
)


def _from_settings(settings: Any) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(settings, name) for name in _SAME_MEANING}
    values["listen"] = ",".join(settings.listen)
    values["base_directory"] = str(settings.base_path)
    if settings.extra_model_paths_config:
        # The reference's option is nargs="+" with append: a list of lists.
        values["extra_model_paths_config"] = [[path] for path in settings.extra_model_paths_config]
    values["cache_ram"] = [settings.cache_ram] if settings.cache_ram is not None else []
    values["preview_method"] = (
        LatentPreviewMethod.from_string(settings.preview_method) or LatentPreviewMethod.NoPreviews
    )
    values["verbose"] = settings.verbose.upper()
    values["feature_flag"] = [f"{key}={value}" for key, value in settings.feature_flags.items()]
    values["database_url"] = f"sqlite:///{settings.user_path / 'comfyui.db'}"
    values["front_end_root"] = settings.extra.get("front_end_root")
    values["disable_assets"] = not _kernel().has_plugin("assets")
    values["enable_assets"] = not values["disable_assets"]
    if values["enable_manager_legacy_ui"]:
        values["enable_manager"] = True  # the reference's rule: the legacy UI implies the manager
    return values


def build_args() -> argparse.Namespace:
    """A fresh namespace for the bound kernel (``args`` is the one packs see)."""
    values = {
        name: (value.copy() if isinstance(value, list | set) else value)
        for name, value in _REFERENCE_DEFAULTS.items()
    }
    values.update(_from_settings(_kernel().settings))
    return argparse.Namespace(**values)


def enables_dynamic_vram() -> bool:
    """The reference's dynamic-VRAM switch; there is no VRAM to manage on this server."""
    return False


args: argparse.Namespace = build_args()
