"""Hook implementations of the auth plugin; the work lives in the sibling modules.

Every hook is inert unless ``--auth`` was given: ``--plugins all`` alone never locks anyone out.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel import StartupError, hookimpl
from kernel.events import PromptFinished, PromptQueued, ServerMessage
from kernel.identity import Principal, owner_of, principal_of
from kernel.paths import type_root
from plugins.auth import commands, gate, options, routes
from plugins.auth.credentials import CredentialsError
from plugins.auth.outputs import FOLDERS, file_key
from plugins.auth.state import AUTH, AuthState

if TYPE_CHECKING:
    from aiohttp import web

    from kernel import Kernel


def _state(kernel: Kernel) -> AuthState | None:
    return kernel.stash.get(AUTH, None)


@hookimpl
def add_options(parser: argparse.ArgumentParser) -> None:
    options.add_options(parser)


@hookimpl
def register_commands(subparsers: Any) -> None:
    commands.register(subparsers)


# tryfirst: the userdata plugin reads multi_user in its own configure.
@hookimpl(tryfirst=True)
def configure(kernel: Kernel) -> None:
    opts = options.read_options(kernel)
    if not opts.enabled:
        return
    # Identities are per user: the userdata, history and upload code keyed on the Comfy-User
    # header works per user, with the header now set by this plugin's gate.
    kernel.settings.multi_user = True
    try:
        kernel.stash[AUTH] = AuthState(opts, kernel.settings.user_path)
    except CredentialsError as exc:
        raise StartupError(f"auth: {exc}") from exc


@hookimpl
def startup(kernel: Kernel) -> None:
    state = _state(kernel)
    if state is not None:
        state.owners.open()


@hookimpl
def shutdown(kernel: Kernel) -> None:
    state = _state(kernel)
    if state is not None:
        state.owners.close()


@hookimpl
def register_middlewares(kernel: Kernel) -> Iterable[Any]:
    state = _state(kernel)
    return [gate.make_gate(state, routes.PUBLIC_HANDLERS)] if state is not None else []


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return routes.routes if _state(kernel) is not None else []


@hookimpl
def register_web_extensions(register: Any, kernel: Kernel) -> None:
    state = _state(kernel)
    if state is not None and state.options.mode == "password":
        register("comfykernel_auth", Path(__file__).parent / "web")


@hookimpl
def identify(kernel: Kernel, request: web.Request) -> Principal | None:
    return gate.request_principal(request) if _state(kernel) is not None else None


@hookimpl
def may_read_file(kernel: Kernel, request: web.Request, folder_type: str, path: Path) -> bool | None:
    state = _state(kernel)
    if state is None or state.options.shared_outputs or folder_type not in FOLDERS:
        return None  # inputs are shared, as on the reference
    principal = principal_of(request)
    if principal is None or principal.admin:
        return None
    try:
        relative = path.relative_to(type_root(kernel, folder_type))
    except ValueError:
        return False
    owner = state.owners.owner(folder_type, file_key("", relative.as_posix()))
    return owner is not None and principal.may_access(owner)


@hookimpl
def on_event(kernel: Kernel, event: Any) -> None:
    state = _state(kernel)
    if state is None:
        return
    owners = state.owners
    if isinstance(event, PromptQueued):
        owners.prompt_queued(event.item.prompt_id, owner_of(event.item.extra_data))
    elif isinstance(event, ServerMessage) and event.type == "executed" and isinstance(event.data, dict):
        # Recorded as the message goes out, before the browser can ask /view for the file.
        owner = owners.prompts.get(str(event.data.get("prompt_id")))
        if owner is not None:
            owners.record(owner, {"output": event.data.get("output")})
    elif isinstance(event, PromptFinished):
        owners.record(owner_of(event.item.extra_data), event.outputs)
