"""The hook catalogue: every extension point of comfykernel, one function each.

Implementations use ``kernel.hookimpl`` and may accept only the arguments they need
(pluggy matches by name).  Only ``kernel/hooks.py`` calls these hooks.

Threads: unless a hook says otherwise it runs on the server's event-loop thread.
Async: hooks documented as "may be async" may return a coroutine; the host awaits it.
Sync-only hooks must return plain values (``firstresult`` hooks in particular, since a
coroutine is never ``None`` and would always "win").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from kernel.app import Kernel
    from kernel.identity import Principal
    from kernel.plugins import DiscoveredPlugin
    from kernel.queue import QueueBackend

hookspec = pluggy.HookspecMarker("comfykernel")


# --- lifecycle and configuration -------------------------------------------------------------


@hookspec
def add_options(parser: argparse.ArgumentParser) -> None:
    """Add command-line options to ``comfykernel run``.

    Runs once while the CLI is being parsed, before any Kernel exists, on the main thread.
    Sync. The parsed values of options a plugin adds are available afterwards as
    ``kernel.settings.extra[<dest>]``.
    """


@hookspec
def register_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add subcommands to the ``comfykernel`` CLI (``comfykernel worker``, say).

    Runs once at CLI start on the main thread, sync. Set ``func=`` as the parser default to a
    callable ``func(args: argparse.Namespace) -> int`` that runs the command.
    """


@hookspec
def configure(kernel: Kernel) -> None:
    """The Kernel and its settings exist; plugins prepare their own state.

    Runs once, sync, on the thread that builds the kernel, before any ``register_*`` hook.
    Store per-plugin state with ``kernel.stash[KEY] = ...``. Raise ``StartupError`` to abort.
    """


@hookspec(firstresult=True)
def provide_queue_backend(kernel: Kernel) -> QueueBackend | None:
    """Supply the prompt queue (``kernel.queue``) instead of the in-process one.

    Called once, sync, on the thread that builds the kernel, right after every ``configure``.
    Return an object implementing ``kernel.queue.QueueBackend`` (the distributed plugin returns
    a RabbitMQ-backed queue), or ``None`` to keep the in-process ``PromptQueue``. The first
    non-``None`` answer wins. The backend should publish ``QueueChanged`` on ``kernel.bus``
    (thread-safely) whenever its pending or running set changes.
    """


@hookspec
def startup(kernel: Kernel, app: web.Application) -> None:
    """The aiohttp application is built and about to serve. May be async.

    Runs once on the event-loop thread before the listening socket opens: open databases,
    start background tasks, recover queues.  An exception aborts startup.
    """


@hookspec
def shutdown(kernel: Kernel) -> None:
    """The server is stopping (SIGINT/SIGTERM, or the test fixture finished). May be async.

    Runs once on the event-loop thread after the listening sockets closed and before the loop
    ends. Close files and databases, stop background tasks. Exceptions are logged and ignored
    so every plugin gets its turn.
    """


# --- registries (the kernel owns the data; plugins call ``register``) --------------------------


@hookspec
def register_nodes(register: Callable[..., None], kernel: Kernel) -> None:
    """Contribute node classes.

    Call ``register(name, cls, display_name=None)`` once per node. The kernel records which
    plugin registered each name; two plugins registering the same name is a ``StartupError``
    naming both. Sync, once, at kernel build time.
    """


@hookspec
def register_model_folders(register: Callable[..., None], kernel: Kernel) -> None:
    """Contribute model folder kinds.

    Call ``register(name, extensions, aliases=(), default_subdir=None)``: ``name`` is the folder
    kind (``checkpoints``), ``extensions`` the accepted file suffixes (``{".safetensors"}``; an
    empty set accepts every file), ``aliases`` other names of the same kind (``unet`` for
    ``diffusion_models``). Sync, once, at kernel build time.
    """


@hookspec
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef] | None:
    """Return aiohttp route definitions (a ``web.RouteTableDef`` works) to serve.

    Each route is served at its path and again at ``/api`` + path ("dual-path routing"), except
    paths that already start with ``/api/`` or ``/internal/``, which are served only as written.
    Handlers reach the kernel through ``request.app[kernel.KERNEL_KEY]``. Sync, once, while the
    app is built.
    """


@hookspec
def register_static_routes(kernel: Kernel) -> Iterable[tuple[str, str]] | None:
    """Return ``(url_prefix, directory)`` pairs served as static files after every API route.

    Use for web roots and asset folders; they are never ``/api``-prefixed. Sync, once.
    """


@hookspec
def register_middlewares(kernel: Kernel) -> Iterable[Any] | None:
    """Return aiohttp middlewares (``@web.middleware`` coroutines) to add.

    They run inside the kernel's own security middlewares (host check, cross-site check,
    error shaping), so they only see requests that passed those. Sync, once.
    """


@hookspec
def register_web_extensions(register: Callable[..., None], kernel: Kernel) -> None:
    """Contribute frontend extension directories.

    Call ``register(name, directory)``: every file under ``directory`` is served at
    ``/extensions/<name>/`` and its ``.js`` files are listed by ``GET /extensions``. Sync, once.
    """


@hookspec
def register_translations(register: Callable[..., None], kernel: Kernel) -> None:
    """Contribute UI translations.

    Call ``register(lang, mapping)``; mappings for one language are merged recursively, later
    plugins winning on conflicts. Sync, once.
    """


@hookspec
def register_feature_flags(kernel: Kernel) -> Mapping[str, Any] | None:
    """Return server feature flags to merge into ``GET /features`` and the WebSocket reply.

    A flag is a JSON value under a top-level key (``{"assets": True}``). Sync; called once
    at app build time, so the answer is fixed for the life of the server.
    """


# --- runtime ------------------------------------------------------------------------------------


@hookspec
def on_prompt(kernel: Kernel, body: dict[str, Any]) -> dict[str, Any] | None:
    """Inspect or rewrite a ``POST /prompt`` body before validation.

    Receives the parsed JSON body. Return a replacement body, or ``None`` to keep it (in-place
    edits also count). Runs on the event-loop thread, sync, in plugin order, each seeing the
    previous result. An exception is logged and that plugin is skipped (the reference's rule).
    """


@hookspec
def on_event(kernel: Kernel, event: Any) -> None:
    """React to an event published on the kernel's bus (an ``kernel.events`` Struct).

    Runs on the event-loop thread, sync, in publication order, for every event, including those
    published from the executor thread. Keep it quick: hand heavy work to a task or thread.
    """


@hookspec(firstresult=True)
def wrap_node_execution(kernel: Kernel, node_id: str, class_type: str, call: Callable[[], Any]) -> Any:
    """Surround the execution of one node.

    Runs on the executor thread, sync, once per node actually executed (cached nodes are not
    called). ``call()`` runs the node and returns its raw outputs. Implement as a pluggy
    wrapper to add behaviour around it::

        @hookimpl(wrapper=True)
        def wrap_node_execution(node_id, call):
            started = time.perf_counter()
            try:
                return (yield)
            finally:
                log.info("node %s took %.3fs", node_id, time.perf_counter() - started)

    A wrapper may also return a different result or raise. The kernel's own innermost
    implementation calls ``call()``; a plain (non-wrapper) implementation returning non-``None``
    replaces the node's execution entirely.
    """


@hookspec
def system_stats(kernel: Kernel) -> Mapping[str, Any] | None:
    """Contribute to ``GET /system_stats``.

    Return a partial stats object: ``{"system": {...}}`` keys are merged into ``system``;
    ``{"devices": [...]}`` replaces the device list (``core`` offers the CPU; a plugin registered
    later replaces it).
    Sync, on the event-loop thread, per request: keep it cheap.
    """


@hookspec
def on_free(kernel: Kernel, unload_models: bool, free_memory: bool) -> None:
    """``POST /free`` asked to unload models and/or free memory.

    Runs on the event-loop thread, sync, once per request (even when both flags are false).
    Model caches should only *mark* work to do here; the executor applies it between prompts so
    nothing is unloaded under a running node.
    """


@hookspec
def register_embeddings(kernel: Kernel) -> Iterable[str] | None:
    """Return the names of textual-inversion embeddings available to prompts.

    ``GET /embeddings`` answers the sorted union of every plugin's names (``[]`` when no plugin
    provides any). Sync, on the event-loop thread, per request: keep it cheap (cache listings).
    """


# --- who is asking -------------------------------------------------------------------------------


@hookspec(firstresult=True)
def identify(kernel: Kernel, request: web.Request) -> Principal | None:
    """Say who sent ``request``: a ``kernel.identity.Principal`` (user id, admin flag), or None.

    Asked at most once per request, on the event-loop thread, sync, by the kernel's prompt
    routes (``/queue``, ``/interrupt``), the ``/ws`` upgrade and plugins that scope what they
    list (history, jobs) through ``kernel.identity.principal_of``. The first non-None answer
    wins. With a principal, a non-admin reaches only the prompts queued as its user; with none
    (no authentication plugin answers) nothing is filtered. Refusing unauthenticated requests is
    the answering plugin's business (its middleware runs before any handler).
    """


@hookspec
def may_read_file(kernel: Kernel, request: web.Request, folder_type: str, path: Path) -> bool | None:
    """May ``request`` read ``path``, an existing file under the ``folder_type`` root?

    ``folder_type`` is ``input``, ``output`` or ``temp``. Asked after the path passed the
    kernel's containment checks by ``GET /view`` (403 when refused), ``GET /internal/files``
    (the file is left out) and ``POST /upload/mask`` for its original image (403), sync, on the
    event-loop thread. Return False to refuse, True or None to have no objection; any False wins.
    """


# --- the web UI's registries (asked by the ``frontend_ext`` plugin) --------------------------


@hookspec
def register_node_replacements(register: Callable[..., None], kernel: Kernel) -> None:
    """Declare that a node class replaces an old (removed or renamed) one.

    Call ``register(old_node_id, new_node_id, input_mapping=None, output_mapping=None)``:
    ``input_mapping`` is a list of ``{"new_id", "old_id"}`` or ``{"new_id", "set_value"}``
    dicts, ``output_mapping`` a list of ``{"old_idx", "new_idx"}`` dicts. Registering the same
    (old, new) pair twice keeps the first. ``GET /node_replacements`` lists them and
    ``POST /prompt`` applies the first usable one to nodes of an unknown class before
    validation. Sync, once, at server startup (after every ``configure`` and ``register_nodes``),
    called by the ``frontend_ext`` plugin; nobody asks when it is disabled.
    """


@hookspec
def register_node_pack_dirs(register: Callable[..., None], kernel: Kernel) -> None:
    """Contribute the directory of a node pack (a ComfyUI custom-node folder, say).

    Call ``register(name, directory)``. The ``frontend_ext`` plugin reads the conventional
    folders of each one: ``locales/<lang>/*.json`` (``GET /i18n``), ``example_workflows/``
    (and ``example``, ``examples``, ``workflow``, ``workflows``; ``GET /workflow_templates``)
    and ``subgraphs/*.json`` (``GET /global_subgraphs``). Its web directory is registered
    separately through ``register_web_extensions``. A name registered twice is a
    ``StartupError``. Sync, once, at server startup (after every ``configure``), called by the
    ``frontend_ext`` plugin; nobody asks when it is disabled.
    """


# --- plugins found at run time ---------------------------------------------------------------


@hookspec
def discover_plugins(kernel: Kernel) -> Iterable[DiscoveredPlugin] | None:
    """Contribute plugins that are found while the kernel is built, not installed ones.

    The ``comfy_compat`` plugin answers with one plugin per ComfyUI custom-node pack
    (``legacy:<pack>``). Return ``kernel.plugins.DiscoveredPlugin`` records: ``plugin`` is the
    object to register (e.g. an instance with ``@hookimpl`` methods), or None with ``error`` saying
    why it could not load. Sync, once, on the thread that builds the kernel, after every
    ``configure`` and after the installed plugins' ``register_nodes`` (so discovered code can see
    the base nodes, and base nodes win name clashes). The kernel registers each loaded plugin
    under its name, records it in ``kernel.plugin_records`` (``comfykernel plugins list``), asks
    the new plugins alone for ``register_nodes``, and includes them in every later hook.
    Discovered plugins never receive ``configure``. A name in ``--disable`` is recorded as
    blocked and not registered; implementations should not even import it (they can read
    ``kernel.settings.disabled``). A name already taken is skipped with a warning.
    """
