"""Builds the PluginManager of one Kernel: essentials, entry-point plugins, test plugins.

There is no module-level manager: ``build_plugin_manager`` makes a fresh one per call, so two
kernels in one process (tests do this constantly) never share plugins.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from kernel import hookspecs
from kernel.builtin import ESSENTIAL_PLUGINS
from kernel.errors import StartupError, UsageError

log = logging.getLogger("comfykernel.plugins")

ENTRY_POINT_GROUP = "comfykernel.plugins"
PROJECT = "comfykernel"
# "name=module.path,..." plugins treated like entry points, for processes that cannot install a
# distribution first (subprocess tests, quick experiments).
ENV_EXTRA_PLUGINS = "COMFYKERNEL_EXTRA_PLUGINS"


@dataclass
class PluginRecord:
    """What ``comfykernel plugins list`` shows about one plugin."""

    name: str
    source: str  # "essential", "entrypoint", "env", "inline"
    module: str
    version: str | None = None
    distribution: str | None = None
    status: str = "available"  # enabled | blocked | failed | available
    error: str | None = None
    import_seconds: float | None = None
    hooks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "module": self.module,
            "version": self.version,
            "distribution": self.distribution,
            "status": self.status,
            "error": self.error,
            "import_seconds": self.import_seconds,
            "hooks": self.hooks,
        }


@dataclass
class DiscoveredPlugin:
    """A plugin found while the kernel is built (``discover_plugins``), not through an entry point.

    ``plugin`` is the object to register (an instance with ``@hookimpl`` methods does), or None
    when it could not be loaded; ``error`` then says why. ``name`` should be namespaced
    (``legacy:<pack>``) so it never collides with an installed plugin.
    """

    name: str
    source: str
    module: str
    plugin: object | None = None
    error: str | None = None
    import_seconds: float | None = None
    version: str | None = None


def register_discovered(
    pm: pluggy.PluginManager,
    records: dict[str, PluginRecord],
    found: Iterable[DiscoveredPlugin],
    disabled: Iterable[str],
) -> list[str]:
    """Register discovered plugins and record them; returns the names actually registered.

    A disabled name is recorded as blocked, a failed one as failed (never fatal: the plugin
    that discovered it has already reported why), a name already taken is skipped.
    """
    off = set(disabled)
    added: list[str] = []
    for item in found:
        if item.name in records:
            log.warning("discovered plugin %r clashes with an existing plugin name; skipped", item.name)
            continue
        rec = PluginRecord(item.name, item.source, item.module, item.version)
        rec.import_seconds, records[item.name] = item.import_seconds, rec
        if item.name in off:
            pm.set_blocked(item.name)
            rec.status = "blocked"
        elif item.plugin is None or item.error:
            rec.status, rec.error = "failed", item.error or "not loaded"
        else:
            pm.register(item.plugin, name=item.name)
            rec.status = "enabled"
            rec.hooks = sorted(h.name for h in pm.get_hookcallers(item.plugin) or [])
            added.append(item.name)
    return added


@dataclass
class _Candidate:
    name: str
    source: str
    module: str
    loader: Any  # callable returning the plugin object
    version: str | None = None
    distribution: str | None = None


def discover_entry_points() -> dict[str, _Candidate]:
    """Every plugin advertised under the ``comfykernel.plugins`` entry-point group."""
    found: dict[str, _Candidate] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        if ep.name in found or ep.name in ESSENTIAL_PLUGINS:
            log.warning("plugin name %r advertised twice; keeping the first", ep.name)
            continue
        found[ep.name] = _Candidate(
            name=ep.name,
            source="entrypoint",
            module=ep.value,
            loader=ep.load,
            version=dist.version if dist else None,
            distribution=dist.metadata["Name"] if dist else None,
        )
    return found


def env_extra_plugins() -> dict[str, _Candidate]:
    """Plugins named in ``COMFYKERNEL_EXTRA_PLUGINS``; a malformed item is a ``UsageError``."""
    found: dict[str, _Candidate] = {}
    for part in os.environ.get(ENV_EXTRA_PLUGINS, "").split(","):
        if not part.strip():
            continue
        name, sep, module = (p.strip() for p in part.partition("="))
        if not sep or not name or not module:
            raise UsageError(f"{ENV_EXTRA_PLUGINS}: expected name=module.path, got {part.strip()!r}")
        if name in ESSENTIAL_PLUGINS:
            raise UsageError(f"{ENV_EXTRA_PLUGINS}: {name!r} is the name of an essential plugin")
        found[name] = _Candidate(name, "env", module, _module_loader(module))
    return found


def _module_loader(module: str) -> Any:
    return lambda: importlib.import_module(module)


def _trace(pm: pluggy.PluginManager) -> None:
    def before(hook_name: str, impls: Sequence[Any], kwargs: dict[str, Any]) -> None:
        log.info("hook %s -> %s", hook_name, [i.plugin_name for i in impls])

    def after(outcome: Any, hook_name: str, impls: Sequence[Any], kwargs: dict[str, Any]) -> None:
        log.info("hook %s done", hook_name)

    pm.add_hookcall_monitoring(before, after)


def build_plugin_manager(
    selected: list[str] | None,
    disabled: Iterable[str] = (),
    inline: Sequence[tuple[str, object]] = (),
) -> tuple[pluggy.PluginManager, dict[str, PluginRecord]]:
    """Make a PluginManager holding the essentials plus the selected plugins.

    ``selected`` None means every discovered plugin; a list means exactly those names.
    ``inline`` are ``(name, object)`` plugins registered as they are (tests, embedding hosts).
    Unknown names and disabling an essential plugin raise ``UsageError``. A plugin that fails
    to import is recorded as failed; that is fatal only when it was named explicitly.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if os.environ.get("COMFYKERNEL_TRACE_PLUGINS") == "1":
        _trace(pm)

    candidates: dict[str, _Candidate] = {}
    for name, module in ESSENTIAL_PLUGINS.items():
        candidates[name] = _Candidate(name, "essential", module, _module_loader(module))
    candidates.update(discover_entry_points())
    candidates.update(env_extra_plugins())
    for name, obj in inline:
        candidates[name] = _Candidate(name, "inline", getattr(obj, "__name__", repr(obj)), lambda o=obj: o)

    available = sorted(candidates)
    optional = [n for n in available if n not in ESSENTIAL_PLUGINS]
    disabled = list(dict.fromkeys(disabled))

    for name in disabled:
        if name in ESSENTIAL_PLUGINS:
            raise UsageError(f"plugin {name} is essential and cannot be disabled")
        # Namespaced names ("legacy:<pack>") are registered later by the plugin owning the
        # namespace, so only plain names can be checked here.
        if name not in candidates and ":" not in name:
            raise UsageError(
                f"cannot disable unknown plugin {name!r}; available plugins: {', '.join(optional)}"
            )
    if selected is not None:
        unknown = [n for n in selected if n not in candidates]
        if unknown:
            raise UsageError(
                f"unknown plugin(s): {', '.join(unknown)}; available plugins: {', '.join(optional) or '(none)'}"
            )
    explicit = set(selected or ())
    wanted = list(ESSENTIAL_PLUGINS) + [
        n for n in (optional if selected is None else selected) if n not in ESSENTIAL_PLUGINS
    ]
    # Inline plugins are always wanted: a test that passes one means it.
    wanted += [name for name, _ in inline if name not in wanted]
    explicit |= {name for name, _ in inline}

    records: dict[str, PluginRecord] = {}
    for name in available:
        c = candidates[name]
        records[name] = PluginRecord(name, c.source, c.module, c.version, c.distribution)

    for name in disabled:
        pm.set_blocked(name)
        if name in records:
            records[name].status = "blocked"

    for name in wanted:
        if name in disabled:
            continue
        c, rec = candidates[name], records[name]
        started = time.perf_counter()
        try:
            plugin = c.loader()
        except Exception as exc:  # the plugin's import failed: record it, don't print and carry on
            rec.status, rec.error = "failed", f"{type(exc).__name__}: {exc}"
            rec.import_seconds = time.perf_counter() - started
            log.error("plugin %s failed to load: %s", name, rec.error)
            if name in explicit or name in ESSENTIAL_PLUGINS:
                raise StartupError(f"plugin {name} failed to load: {rec.error}") from exc
            continue
        rec.import_seconds = time.perf_counter() - started
        if pm.is_registered(plugin):
            raise StartupError(f"plugin {name} is the same object as another registered plugin")
        pm.register(plugin, name=name)
        rec.status = "enabled"

    pm.check_pending()
    for name, rec in records.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            rec.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return pm, records
