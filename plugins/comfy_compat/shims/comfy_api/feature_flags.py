"""ComfyUI's ``comfy_api.feature_flags``: the server's capability flags as a mutable dict.

Packs (ComfyUI-Manager among them) add their own flags by writing into ``SERVER_FEATURE_FLAGS``
while they are imported; the comfy_compat plugin hands the dict to the kernel through
``register_feature_flags`` once the packs are loaded, so what they added is what ``/features``
and the WebSocket ``feature_flags`` reply announce. The dict is a module global because that is
the reference's API; the shims are reloaded per kernel, so it never outlives one server.
"""

from __future__ import annotations

from typing import Any

from comfy.cli_args import args
from comfykernel_compat_runtime import kernel as _kernel


def _initial_flags() -> dict[str, Any]:
    flags: dict[str, Any] = {
        "supports_preview_metadata": True,
        "max_upload_size": _kernel().settings.max_upload_bytes,
    }
    if args.enable_manager:
        # Only while the manager runs: the web UI shows its Manager dialog from this flag.
        flags["extension"] = {"manager": {"supports_v4": True}}
    return flags


SERVER_FEATURE_FLAGS: dict[str, Any] = _initial_flags()


def get_connection_feature(
    sockets_metadata: dict[str, dict[str, Any]], sid: str, feature_name: str, default: Any = False
) -> Any:
    """The value a client announced for ``feature_name`` in its first WebSocket message."""
    if sid not in sockets_metadata:
        return default
    return sockets_metadata[sid].get("feature_flags", {}).get(feature_name, default)


def supports_feature(
    sockets_metadata: dict[str, dict[str, Any]] | None, sid: str, feature_name: str, force: bool = True
) -> bool:
    """Whether client ``sid`` announced ``feature_name`` as true; ``force`` when nobody can tell."""
    if sockets_metadata is None or "__unimplemented" in sockets_metadata:
        return force
    return get_connection_feature(sockets_metadata, sid, feature_name, False) is True


def get_server_features() -> dict[str, Any]:
    """A copy of the flags the server announces."""
    return dict(SERVER_FEATURE_FLAGS)
