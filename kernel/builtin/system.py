"""GET /system_stats and GET /features."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from aiohttp import web

from kernel.app import KERNEL_KEY
from kernel.registry import deep_merge
from kernel.version import COMFYUI_API_VERSION, package_version

if TYPE_CHECKING:
    from kernel.app import Kernel

routes = web.RouteTableDef()

# Flags whose values are filesystem paths: their values never leave the server.
_PATH_FLAGS = frozenset(
    {
        "--base-directory",
        "--output-directory",
        "--input-directory",
        "--temp-directory",
        "--user-directory",
        "--models-directory",
        "--extra-model-paths-config",
        "--front-end-root",
        "--custom-nodes-dir",
        "--database-url",
        "--tls-keyfile",
        "--tls-certfile",
        "--verbose",
    }
)
REDACTED = "<redacted>"


def redact_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    redact_next = False
    for arg in argv:
        if redact_next and not arg.startswith("--"):
            out.append(REDACTED)
            continue
        redact_next = False
        flag, eq, _ = arg.partition("=")
        if flag in _PATH_FLAGS:
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                redact_next = True
            continue
        out.append(arg)
    if out:
        out[0] = Path(out[0]).name  # the script path says where the install lives
    return out


def base_feature_flags(kernel: Kernel) -> dict[str, Any]:
    return {
        "supports_preview_metadata": True,
        "max_upload_size": kernel.settings.max_upload_bytes,
    }


def base_stats(kernel: Kernel) -> dict[str, Any]:
    mem = psutil.virtual_memory()
    frontend = package_version("comfyui-frontend-package")
    templates = package_version("comfyui-workflow-templates")
    return {
        "system": {
            "os": sys.platform,
            "ram_total": mem.total,
            "ram_free": mem.available,
            "comfyui_version": COMFYUI_API_VERSION,
            "required_frontend_version": frontend or "",
            "installed_templates_version": templates,
            "required_templates_version": templates,
            # A list of {name, installed, required} (the web UI iterates it); the frontend
            # plugin, which serves those packages, fills it in.
            "comfy_package_versions": [],
            "python_version": sys.version,
            "pytorch_version": package_version("torch") or "",
            "embedded_python": "python_embeded" in Path(sys.executable).parts,
            "deploy_environment": os.environ.get("COMFY_DEPLOY_ENVIRONMENT", "local"),
            "argv": redact_argv(list(sys.argv)),
        },
        # Without a torch-aware plugin the CPU is the device; its "VRAM" is the RAM, as upstream.
        "devices": [
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": mem.total,
                "vram_free": mem.available,
                "torch_vram_total": mem.total,
                "torch_vram_free": mem.available,
            }
        ],
    }


def collect_stats(kernel: Kernel) -> dict[str, Any]:
    stats: dict[str, Any] = {"system": {}, "devices": []}
    devices_set_by: list[Any] = []
    # core's answer comes first; later plugins merge over it, the last device list wins.
    for part in kernel.hooks.system_stats(kernel):
        deep_merge(stats["system"], part.get("system", {}))
        if "devices" in part:
            devices_set_by.append(part["devices"])
    if devices_set_by:
        stats["devices"] = devices_set_by[-1]
    return stats


@routes.get("/system_stats")
async def get_system_stats(request: web.Request) -> web.Response:
    return web.json_response(collect_stats(request.app[KERNEL_KEY]))


@routes.get("/features")
async def get_features(request: web.Request) -> web.Response:
    return web.json_response(request.app[KERNEL_KEY].feature_flags)
