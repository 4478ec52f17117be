"""ComfyUI's ``main.py`` command line, mapped onto ``comfykernel run --plugins all``.

Scripts and harnesses written for the reference start comfykernel unchanged::

    python -m comfykernel --listen 0.0.0.0 --port 8188 --output-directory out \\
        --extra-model-paths-config extra.yaml --cpu --cache-lru 100

Flags with a comfykernel equivalent are passed on; the reference's GPU, precision and UI tuning
flags have no meaning here and are accepted with a warning, as is anything unknown.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("comfykernel.launcher")

# Reference flags that take no value and change nothing here.
_IGNORED_SWITCHES = (
    "--auto-launch",
    "--disable-auto-launch",
    "--cuda-malloc",
    "--disable-cuda-malloc",
    "--force-fp32",
    "--force-fp16",
    "--fp32-unet",
    "--fp64-unet",
    "--bf16-unet",
    "--fp16-unet",
    "--fp8_e4m3fn-unet",
    "--fp8_e5m2-unet",
    "--fp16-vae",
    "--fp32-vae",
    "--bf16-vae",
    "--cpu-vae",
    "--fp8_e4m3fn-text-enc",
    "--fp8_e5m2-text-enc",
    "--fp16-text-enc",
    "--fp32-text-enc",
    "--bf16-text-enc",
    "--force-channels-last",
    "--force-upcast-attention",
    "--dont-upcast-attention",
    "--use-split-cross-attention",
    "--use-quad-cross-attention",
    "--use-pytorch-cross-attention",
    "--use-sage-attention",
    "--use-flash-attention",
    "--disable-xformers",
    "--gpu-only",
    "--highvram",
    "--normalvram",
    "--lowvram",
    "--novram",
    "--disable-smart-memory",
    "--deterministic",
    "--dont-print-server",
    "--quick-test-for-ci",
    "--windows-standalone-build",
    "--disable-api-nodes",
    "--log-stdout",
    "--enable-compress-response-body",
    "--disable-ipex-optimize",
    "--supports-fp8-compute",
    "--disable-mmap",
    "--mmap-torch-files",
)
# Reference flags that take one value and change nothing here.
_IGNORED_WITH_VALUE = (
    "--tls-keyfile",
    "--tls-certfile",
    "--cuda-device",
    "--default-device",
    "--directml",
    "--oneapi-device-selector",
    "--reserve-vram",
    "--front-end-version",
    "--comfy-api-base",
    "--database-url",
    "--async-offload",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfykernel", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--listen", nargs="?", const="0.0.0.0,::", default=None)
    add("--port", type=int, default=None)
    add("--enable-cors-header", nargs="?", const="*", default=None)
    add("--max-upload-size", type=float, default=None)
    add("--base-directory", default=None)
    add("--extra-model-paths-config", nargs="+", action="append", default=None)
    add("--output-directory", default=None)
    add("--temp-directory", default=None)
    add("--input-directory", default=None)
    add("--user-directory", default=None)
    add("--front-end-root", default=None)
    add("--custom-nodes-dir", action="append", default=None)
    add("--preview-method", default=None)
    add("--preview-size", type=int, default=None)
    add("--cache-classic", action="store_true")
    add("--cache-lru", type=int, default=None)
    add("--cache-none", action="store_true")
    add("--cache-ram", nargs="?", type=float, const=4.0, default=None)
    add("--cpu", action="store_true")
    add("--default-hashing-function", default=None)
    add("--disable-metadata", action="store_true")
    add("--disable-all-custom-nodes", action="store_true")
    add("--whitelist-custom-nodes", nargs="+", default=None)
    add("--multi-user", action="store_true")
    add("--enable-manager", action="store_true")
    manager_ui = parser.add_mutually_exclusive_group()
    manager_ui.add_argument("--disable-manager-ui", action="store_true")
    manager_ui.add_argument("--enable-manager-legacy-ui", action="store_true")
    add("--verbose", nargs="?", const="DEBUG", default=None)
    add("--fast", nargs="*", default=None)
    for flag in _IGNORED_SWITCHES:
        add(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in _IGNORED_WITH_VALUE:
        add(flag, nargs="?", default=None, help=argparse.SUPPRESS)
    return parser


def translate(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(``comfykernel run`` arguments, warnings) for a reference command line."""
    args, unknown = build_parser().parse_known_args(list(argv))
    values = vars(args)
    out = ["run", "--plugins", "all"]
    warnings = [f"unknown option {item!r} ignored" for item in unknown]
    for flag in _IGNORED_SWITCHES + _IGNORED_WITH_VALUE:
        dest = flag.lstrip("-").replace("-", "_")
        if values.get(dest) not in (None, False):
            warnings.append(f"{flag} has no effect in comfykernel; ignored")
    if args.fast is not None:
        warnings.append("--fast has no effect in comfykernel; ignored")
    if args.whitelist_custom_nodes:
        warnings.append("--whitelist-custom-nodes is not supported; use --disable legacy:<pack> instead")
    for flag in ("listen", "enable_cors_header", "cache_ram", "verbose"):
        value = values[flag]
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    for flag in (
        "port",
        "max_upload_size",
        "base_directory",
        "output_directory",
        "temp_directory",
        "input_directory",
        "user_directory",
        "front_end_root",
        "preview_method",
        "preview_size",
        "cache_lru",
        "default_hashing_function",
    ):
        if values[flag] is not None:
            out += [f"--{flag.replace('_', '-')}", str(values[flag])]
    for flag in (
        "cache_classic",
        "cache_none",
        "cpu",
        "disable_metadata",
        "disable_all_custom_nodes",
        "multi_user",
        "enable_manager",
        "disable_manager_ui",
        "enable_manager_legacy_ui",
    ):
        if values[flag]:
            out.append(f"--{flag.replace('_', '-')}")
    for group in args.extra_model_paths_config or []:
        for path in group:
            out += ["--extra-model-paths-config", path]
    for path in args.custom_nodes_dir or []:
        out += ["--custom-nodes-dir", path]
    return out, warnings


def main(argv: Sequence[str] | None = None) -> int:
    from kernel.cli import main as kernel_main

    run_args, warnings = translate(sys.argv[1:] if argv is None else argv)
    for warning in warnings:
        print(f"comfykernel: warning: {warning}", file=sys.stderr)
    return kernel_main(run_args)
