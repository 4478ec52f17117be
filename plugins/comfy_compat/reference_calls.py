"""The reference's V3 ``execute`` calling convention on the kernel's classic core node classes.

In the reference most ``comfy_extras`` nodes are schema (V3) classes, and packs call them as such:
``Blur.execute(image, 3, 1.0)[0]``, ``SamplerCustomAdvanced().execute(noise=..., guider=...)``,
``(latent, denoised) = out`` or ``out.result``. Our core classes are classic ones (``FUNCTION`` /
``INPUT_TYPES``), so the compat plugin gives each registered class whose reference counterpart is
V3 (per :mod:`plugins.comfy_compat.reference_table`) an ``execute`` descriptor:

* on the class, and on an instance when the class's ``FUNCTION`` is another method, it is the
  reference's classmethod: arguments by keyword (input ids) or positionally in the order of the
  reference's ``execute`` signature; it runs the node's ``FUNCTION`` and answers a
  :class:`TupleOutput` (a :class:`NodeOutput` that is also the tuple the function returned);
* on an instance of a class whose ``FUNCTION`` is ``execute`` it is that very method (this is what
  the server calls, so it must not change): same arguments, with a tuple result answered as a
  :class:`TupleOutput`, which the server and the compat ``execution`` module read as that tuple.

The older method names the reference keeps bound to ``execute`` (``expand_mask = execute``) are
added the same way where the class has no attribute of that name. The class itself is not
replaced: ``comfy_extras`` modules alias the registered class, so packs' subclasses and
``isinstance`` checks keep working.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kernel.nodes import v3 as _v3
from kernel.nodes.spec import is_v3_class
from plugins.comfy_compat.reference_table import ReferenceClass, v3_by_node_id

if TYPE_CHECKING:
    from kernel import Kernel

log = logging.getLogger("comfykernel.compat")

# The input type of a V3 dynamic combo in a classic INPUT_TYPES: the server passes its choice under
# the input's name and the chosen option's widgets as "<name>.<widget>"; the reference's execute
# takes one dict ``{<name>: choice, <widget>: value...}`` instead.
_DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"


class NodeOutput(_v3.NodeOutput):
    """``comfy_api.latest.io.NodeOutput``: the kernel's, plus the reference's ``args`` and indexing
    (``out[0]``, and through it iteration and unpacking: ``(a, b) = out``)."""

    @property
    def args(self) -> tuple[Any, ...]:
        return self.values

    @args.setter
    def args(self, values: tuple[Any, ...]) -> None:
        self.values = tuple(values)

    def __getitem__(self, index: Any) -> Any:
        return self.values[index]


class TupleOutput(tuple, NodeOutput):  # type: ignore[misc]
    """What a reference-style call of a classic node answers: a NodeOutput (``.result``, ``.ui``,
    ``.expand``, ``.block_execution``, ``.args``) that is also the tuple of its outputs, so code
    written for the classic method (``(x,) = ...``, ``out == (x,)``, ``out + ...``) still works."""

    def __new__(
        cls,
        values: Any = (),
        ui: Any = None,
        expand: dict[str, Any] | None = None,
        block_execution: str | None = None,
    ) -> TupleOutput:
        return super().__new__(cls, tuple(values))

    def __init__(
        self,
        values: Any = (),
        ui: Any = None,
        expand: dict[str, Any] | None = None,
        block_execution: str | None = None,
    ) -> None:
        NodeOutput.__init__(self, *self, ui=ui, expand=expand, block_execution=block_execution)


def as_output(raw: Any) -> Any:
    """A classic function's result as the reference's V3 ``execute`` would answer it."""
    if isinstance(raw, TupleOutput):
        return raw
    if isinstance(raw, _v3.NodeOutput):
        return TupleOutput(raw.values, raw.ui, raw.expand, raw.block_execution)
    if isinstance(raw, tuple | list):
        return TupleOutput(raw)
    if isinstance(raw, Mapping):
        result = raw.get("result")
        values = result if isinstance(result, tuple | list) else () if result is None else (result,)
        return TupleOutput(values, raw.get("ui"), raw.get("expand"))
    if raw is None:
        return TupleOutput()
    return raw


def _as_output_for_server(raw: Any) -> Any:
    """Only what every reader of a classic result sees unchanged: a tuple stays a tuple."""
    return TupleOutput(raw) if isinstance(raw, tuple | list) and not isinstance(raw, TupleOutput) else raw


def _declared_inputs(owner: type) -> dict[str, Any]:
    try:
        types_ = owner.INPUT_TYPES()  # type: ignore[attr-defined]
    except Exception:  # a pack's INPUT_TYPES failing is not this call's business
        return {}
    return types_ if isinstance(types_, dict) else {}


def _flatten_dynamic_combo(name: str, value: Mapping[str, Any], out: dict[str, Any]) -> None:
    """``{name: choice, widget: v}`` -> ``out[name] = choice, out["name.widget"] = v`` (nested
    dynamic combos, dicts that hold their own key, go one level deeper)."""
    key = name.rpartition(".")[2]
    out[name] = value.get(key)
    for widget, item in value.items():
        if widget == key:
            continue
        if isinstance(item, Mapping) and widget in item:
            _flatten_dynamic_combo(f"{name}.{widget}", item, out)
        else:
            out[f"{name}.{widget}"] = item


def _fit(fn: Callable[..., Any], named: dict[str, Any], owner: type, row: ReferenceClass) -> dict[str, Any]:
    """The keyword arguments of a reference-style call, as the classic ``fn`` takes them."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return named
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    declared: dict[str, Any] | None = None
    if any(isinstance(v, Mapping) for v in named.values()):
        declared = _declared_inputs(owner)
        combos = {
            n
            for group in ("required", "optional")
            for n, spec in (declared.get(group) or {}).items()
            if isinstance(spec, tuple | list) and spec and spec[0] == _DYNAMIC_COMBO
        }
        for name in [n for n in named if n in combos and isinstance(named[n], Mapping)]:
            flat: dict[str, Any] = {}
            _flatten_dynamic_combo(name, named.pop(name), flat)
            named.update(flat)
    if not takes_any:
        # A parameter only the reference's execute has (MaskPreview's filename_prefix): ours
        # does without it. Names neither knows still go through, to fail as they would there.
        named = {k: v for k, v in named.items() if k in params or k not in row.execute}
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in named
    ]
    if missing:
        # Hidden values (unique_id, prompt...) the server would fill: a direct call has none,
        # as the reference's ``cls.hidden`` outside a prompt.
        hidden = (declared if declared is not None else _declared_inputs(owner)).get("hidden") or {}
        named.update({name: None for name in missing if name in hidden})
    return named


class ReferenceExecute:
    """The ``execute`` (or legacy alias) descriptor described in the module docstring."""

    def __init__(self, row: ReferenceClass, name: str, original: Any) -> None:
        self.row = row
        self.name = name
        # What the class had under ``name`` before (the function the server runs when FUNCTION
        # is ``name``); None when it had nothing.
        self.original = original
        params = [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in row.execute]
        if row.execute_varkw:
            params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        self.signature = inspect.Signature(params)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        owner = owner if owner is not None else type(instance)
        if instance is not None and getattr(owner, "FUNCTION", None) == self.name:
            return self._as_the_server_calls_it(instance, owner)
        return self._reference_call(owner, instance)

    def _classic_function(self, target: Any, owner: type) -> Callable[..., Any]:
        function = getattr(owner, "FUNCTION", None)
        if not isinstance(function, str):
            raise TypeError(f"{owner.__name__} has no FUNCTION to run")
        if function == self.name:
            if self.original is None:
                raise TypeError(f"{owner.__name__}.{function} is not defined")
            return self.original.__get__(target, owner)
        return getattr(target, function)

    def _as_the_server_calls_it(self, instance: Any, owner: type) -> Callable[..., Any]:
        if self.original is None:
            raise AttributeError(f"{owner.__name__}.{self.name}")
        bound = self.original.__get__(instance, owner)
        if inspect.iscoroutinefunction(bound):

            @functools.wraps(bound)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                return _as_output_for_server(await bound(*args, **kwargs))

            return run_async

        @functools.wraps(bound)
        def run(*args: Any, **kwargs: Any) -> Any:
            return _as_output_for_server(bound(*args, **kwargs))

        return run

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self.row.execute
        if len(args) > len(names):
            raise TypeError(
                f"{self.row.class_name}.execute() takes {len(names)} positional arguments "
                f"but {len(args)} were given"
            )
        named = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key in named:
                raise TypeError(f"{self.row.class_name}.execute() got multiple values for argument {key!r}")
            named[key] = value
        return named

    def _reference_call(self, owner: type, instance: Any) -> Callable[..., Any]:
        descriptor = self

        def prepare(
            args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[Callable[..., Any], dict[str, Any]]:
            named = descriptor._bind(args, kwargs)
            target = instance if instance is not None else owner()
            fn = descriptor._classic_function(target, owner)
            return fn, _fit(fn, named, owner, descriptor.row)

        # Async exactly when the classic function is (the server asks the class whether its
        # FUNCTION is a coroutine function, and that may be this very attribute).
        probe = getattr(owner, "FUNCTION", None)
        if probe == self.name:
            target_fn = self.original.__get__(None, owner) if self.original is not None else None
        else:
            target_fn = getattr(owner, probe, None) if isinstance(probe, str) else None
        if target_fn is not None and inspect.iscoroutinefunction(target_fn):

            async def execute_async(cls: type, *args: Any, **kwargs: Any) -> Any:
                fn, named = prepare(args, kwargs)
                return as_output(await fn(**named))

            function: Callable[..., Any] = execute_async
        else:

            def execute(cls: type, *args: Any, **kwargs: Any) -> Any:
                fn, named = prepare(args, kwargs)
                raw = fn(**named)
                if inspect.isawaitable(raw):
                    return _awaited(raw)
                return as_output(raw)

            function = execute
        function.__name__ = self.name
        function.__qualname__ = f"{owner.__qualname__}.{self.name}"
        function.__signature__ = self.signature  # type: ignore[attr-defined]
        return types.MethodType(function, owner)


async def _awaited(raw: Any) -> Any:
    return as_output(await raw)


def equip(cls: type, row: ReferenceClass) -> bool:
    """Give ``cls`` the reference's ``execute`` (and its legacy aliases); False when it has its own
    V3 schema, which already answers the reference's way, or was equipped for this row before."""
    if is_v3_class(cls):
        return False
    current = cls.__dict__.get("execute")
    if isinstance(current, ReferenceExecute) and current.row == row:
        return False
    inherited = inspect.getattr_static(cls, "execute", None)
    original = inherited.original if isinstance(inherited, ReferenceExecute) else inherited
    cls.execute = ReferenceExecute(row, "execute", original)
    for alias in row.execute_aliases:
        if inspect.getattr_static(cls, alias, None) is None:
            setattr(cls, alias, ReferenceExecute(row, alias, None))
    return True


def equip_registry(kernel: Kernel) -> int:
    """Equip every registered class whose node is a V3 class in the reference; how many were."""
    rows = v3_by_node_id()
    count = 0
    for entry in kernel.nodes:
        row = rows.get(entry.name)
        if row is not None and equip(entry.cls, row):
            count += 1
    log.debug("reference execute() given to %d core node classes", count)
    return count
