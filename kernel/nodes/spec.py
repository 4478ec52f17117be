"""NodeSpec: one uniform view over a V1 node class or a V3 schema class.

The executor, validation and ``/object_info`` read node classes only through this view, so the
two contracts (class attributes vs ``define_schema()``) are reconciled in one place.
``input_types()`` is called afresh each time, because node packs compute their combos (model
file lists, say) when asked; everything else is read once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from kernel.nodes.dynamic import AutogrowSlots, autogrow_slots, expand_autogrow, folding
from kernel.nodes.graph import ExecutionBlocker
from kernel.nodes.v3 import HiddenHolder, NodeOutput, Schema

if TYPE_CHECKING:
    from kernel.registry import NodeEntry

log = logging.getLogger("comfykernel.nodes")

INPUT_GROUPS = ("required", "optional", "hidden")

# Hidden entries the engine fills in itself; any other hidden entry is an ordinary input.
SPECIAL_HIDDEN = (
    "PROMPT",
    "DYNPROMPT",
    "EXTRA_PNGINFO",
    "UNIQUE_ID",
    "AUTH_TOKEN_COMFY_ORG",
    "API_KEY_COMFY_ORG",
    "COMFY_USAGE_SOURCE",
)


def hidden_token(declared: Any) -> str | None:
    """The special token a hidden entry names, or None when it declares an ordinary input.

    Compared with ``==`` on the declaration itself, as the reference does: ``"UNIQUE_ID"`` is a
    token, a tuple such as ``(any_type,)`` never is, even when ``any_type`` is a ``str``
    subclass whose ``__eq__`` always answers True (Easy-Use's loop counter is declared so).
    """
    found = None
    for token in SPECIAL_HIDDEN:
        try:
            if declared == token:
                found = token  # the reference assigns per matching token: the last one wins
        except Exception:  # a declaration whose == raises or is not a bool names no token
            continue
    return found


class NodeResult(NamedTuple):
    """One call's return value, normalized. ``outputs`` is None when the call gave no result."""

    outputs: tuple[Any, ...] | None
    ui: dict[str, Any] | None
    expand: dict[str, Any] | None


class InputInfo(NamedTuple):
    """A declared input: its type (a name or a list of combo choices), group and options."""

    type: Any
    category: str
    options: dict[str, Any]


def is_v3_class(cls: type) -> bool:
    """V3 classes are recognised by shape, so compat shims' own base classes qualify too."""
    return callable(getattr(cls, "define_schema", None)) and callable(getattr(cls, "execute", None))


def _real_override(cls: type, name: str) -> Callable[..., Any] | None:
    """``cls.name`` unless it is the V3 base class's default."""
    from kernel.nodes.v3 import ComfyNode

    attr = getattr(cls, name, None)
    if attr is None:
        return None
    base = getattr(ComfyNode, name, None)
    if base is not None and getattr(attr, "__func__", attr) is getattr(base, "__func__", base):
        return None
    return attr


class NodeSpec:
    """How the kernel sees one registered node class."""

    def __init__(self, name: str, cls: type, plugin: str, display_name: str | None = None) -> None:
        self.name = name
        self.cls = cls
        self.plugin = plugin
        self.is_v3 = is_v3_class(cls)
        self._display_name = display_name

    def __repr__(self) -> str:
        return f"NodeSpec({self.name!r}, plugin={self.plugin!r})"

    # --- schema ----------------------------------------------------------------------------

    @cached_property
    def schema(self) -> Schema | None:
        return self.cls.define_schema() if self.is_v3 else None  # type: ignore[attr-defined]

    def input_types(self) -> dict[str, Any]:
        """The V1-shaped input declaration ``{"required": {...}, "optional": {...}, "hidden": {...}}``."""
        if not self.is_v3:
            return self.cls.INPUT_TYPES()  # type: ignore[attr-defined]
        schema = self.cls.define_schema()  # type: ignore[attr-defined]
        groups: dict[str, Any] = {"required": {}}
        for spec in schema.inputs:
            groups.setdefault("optional" if spec.optional else "required", {})[spec.id] = spec.as_v1()
        if schema.hidden:
            groups["hidden"] = {h.name: h.value for h in schema.hidden}
        return groups

    def execution_input_types(self) -> dict[str, Any]:
        """``input_types()`` as validation and the executor check a prompt against it: each V3
        autogrow input is replaced by its slots (``values.a``...), see :mod:`kernel.nodes.dynamic`."""
        return expand_autogrow(self.input_types())

    @cached_property
    def autogrow_slots(self) -> AutogrowSlots:
        """Autogrow input -> slot names; the node gets each input's slots folded into one dict."""
        return autogrow_slots(self.input_types())

    def input_info(self, name: str, types: dict[str, Any] | None = None) -> InputInfo | None:
        types = self.input_types() if types is None else types
        for category in ("required", "optional"):
            entry = (types.get(category) or {}).get(name)
            if entry is not None:
                input_type = entry[0]
                options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                return InputInfo(input_type, category, options)
        hidden = (types.get("hidden") or {}).get(name)
        if hidden is not None:
            token = hidden[0] if isinstance(hidden, list | tuple) else hidden
            return InputInfo(token, "hidden", {})
        return None

    def hidden_inputs(self) -> dict[str, str]:
        """Hidden parameter name → special token (``UNIQUE_ID``, ``PROMPT``, ...).

        Ordinary hidden inputs (see :func:`hidden_token`) are not listed: they take their value
        from the prompt like declared inputs.
        """
        hidden = self.input_types().get("hidden") or {}
        tokens = {name: hidden_token(declared) for name, declared in hidden.items()}
        return {name: token for name, token in tokens.items() if token is not None}

    @property
    def display_name(self) -> str:
        if self._display_name:
            return self._display_name
        if self.schema is not None and self.schema.display_name:
            return self.schema.display_name
        return self.name

    @property
    def published_display_name(self) -> str | None:
        """``display_name`` as ``GET /object_info`` reports it.

        The reference publishes null for its schema-defined nodes that name none (the frontend
        then shows the class name); a class standing in for one of them sets
        ``PUBLISH_NULL_DISPLAY_NAME = True`` so saved interfaces compare equal.
        """
        if not self._display_name and getattr(self.cls, "PUBLISH_NULL_DISPLAY_NAME", False):
            return None
        return self.display_name

    @cached_property
    def return_types(self) -> tuple[str, ...]:
        if self.schema is not None:
            return tuple(o.io_type for o in self.schema.outputs)
        return tuple(getattr(self.cls, "RETURN_TYPES", ()))

    def return_type_at(self, index: Any) -> Any:
        """The type of output ``index`` as validation sees it.

        V1 classes are indexed through their own ``RETURN_TYPES`` object, like the reference:
        packs' tuple subclasses (``ByPassTypeTuple``) answer any index with a type that matches
        everything, which their dynamic outputs rely on. Raises for an index out of range.
        """
        if self.schema is not None:
            return self.return_types[index]
        return getattr(self.cls, "RETURN_TYPES", ())[index]

    @cached_property
    def return_names(self) -> tuple[str, ...]:
        if self.schema is not None:
            return tuple(o.display_name or o.id or o.io_type for o in self.schema.outputs)
        return tuple(getattr(self.cls, "RETURN_NAMES", self.return_types))

    @cached_property
    def output_is_list(self) -> tuple[bool, ...]:
        if self.schema is not None:
            return tuple(bool(o.is_output_list) for o in self.schema.outputs)
        declared = getattr(self.cls, "OUTPUT_IS_LIST", None)
        if declared is None:
            return (False,) * len(self.return_types)
        return tuple(bool(x) for x in declared)

    @cached_property
    def output_tooltips(self) -> tuple[str, ...] | None:
        if self.schema is not None:
            tips = [o.tooltip for o in self.schema.outputs]
            return tuple(t or "" for t in tips) if any(tips) else None
        tips = getattr(self.cls, "OUTPUT_TOOLTIPS", None)
        return tuple(tips) if tips is not None else None

    def _flag(self, v1_attr: str, v3_attr: str) -> bool:
        if self.schema is not None:
            return bool(getattr(self.schema, v3_attr))
        return bool(getattr(self.cls, v1_attr, False))

    @cached_property
    def input_is_list(self) -> bool:
        return self._flag("INPUT_IS_LIST", "is_input_list")

    @cached_property
    def is_output_node(self) -> bool:
        # The reference insists on ``OUTPUT_NODE is True``: truthy non-bools do not count.
        if self.schema is not None:
            return self.schema.is_output_node is True
        return getattr(self.cls, "OUTPUT_NODE", False) is True

    @cached_property
    def not_idempotent(self) -> bool:
        return self._flag("NOT_IDEMPOTENT", "not_idempotent")

    @cached_property
    def has_intermediate_output(self) -> bool:
        return self._flag("HAS_INTERMEDIATE_OUTPUT", "has_intermediate_output")

    @cached_property
    def accept_all_inputs(self) -> bool:
        return self._flag("ACCEPT_ALL_INPUTS", "accept_all_inputs")

    @cached_property
    def enable_expand(self) -> bool:
        # V1 nodes may always expand; V3 ones must opt in.
        return self.schema.enable_expand if self.schema is not None else True

    @property
    def has_unique_id_hidden(self) -> bool:
        return "UNIQUE_ID" in self.hidden_inputs().values()

    @property
    def lazy_inputs(self) -> set[str]:
        types = self.input_types()
        return {
            name
            for group in ("required", "optional")
            for name, entry in (types.get(group) or {}).items()
            if len(entry) > 1 and isinstance(entry[1], dict) and entry[1].get("lazy") is True
        }

    @property
    def raw_link_inputs(self) -> set[str]:
        types = self.input_types()
        return {
            name
            for group in ("required", "optional")
            for name, entry in (types.get(group) or {}).items()
            if len(entry) > 1 and isinstance(entry[1], dict) and entry[1].get("rawLink") is True
        }

    # --- calling ---------------------------------------------------------------------------

    def make_instance(self) -> Any:
        return self.cls()

    def function(self, instance: Any) -> Callable[..., Any]:
        """The callable that runs the node; keyword arguments include hidden values by name.

        For V3 the hidden values are moved onto ``cls.hidden`` of a per-call subclass, as the
        reference does. Calling it returns a coroutine when the node's function is async.
        Autogrow slots (``values.a``...) reach the node folded into one dict per input.
        """
        if not self.is_v3:
            fn = getattr(instance, self.cls.FUNCTION)  # type: ignore[attr-defined]
        else:
            fn = self._v3_callable("execute")
        return folding(fn, self.autogrow_slots)

    @cached_property
    def is_async(self) -> bool:
        if self.is_v3:
            return inspect.iscoroutinefunction(self.cls.execute)  # type: ignore[attr-defined]
        return inspect.iscoroutinefunction(getattr(self.cls, self.cls.FUNCTION))  # type: ignore[attr-defined]

    def _v3_callable(self, method: str) -> Callable[..., Any]:
        hidden_names = {h.name for h in self.schema.hidden} if self.schema is not None else set()
        base = self.cls

        def split(kwargs: dict[str, Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
            values = {k: kwargs.pop(k) for k in list(kwargs) if k in hidden_names}
            clone = type(base.__name__, (base,), {"hidden": HiddenHolder(values)}) if hidden_names else base
            return getattr(clone, method), kwargs

        target = getattr(base, method)
        if inspect.iscoroutinefunction(target):

            async def call_async(**kwargs: Any) -> Any:
                fn, rest = split(kwargs)
                return await fn(**rest)

            return call_async

        def call(**kwargs: Any) -> Any:
            fn, rest = split(kwargs)
            return fn(**rest)

        return call

    @property
    def is_changed(self) -> Callable[..., Any] | None:
        """``IS_CHANGED`` (V3: ``fingerprint_inputs``) as a class-level callable, or None."""
        if self.is_v3:
            return (
                self._v3_callable("fingerprint_inputs")
                if _real_override(self.cls, "fingerprint_inputs")
                else None
            )
        return getattr(self.cls, "IS_CHANGED", None)

    @property
    def validate_inputs(self) -> Callable[..., Any] | None:
        """``VALIDATE_INPUTS`` (V3: ``validate_inputs``) as a class-level callable, or None."""
        if self.is_v3:
            return (
                self._v3_callable("validate_inputs") if _real_override(self.cls, "validate_inputs") else None
            )
        return getattr(self.cls, "VALIDATE_INPUTS", None)

    @cached_property
    def validate_signature(self) -> tuple[list[str], bool]:
        """(parameter names, takes ``**kwargs``) of the custom validator; ``([], False)`` without one.

        Names come from ``inspect.getfullargspec`` like the reference, so a classmethod's
        ``cls`` counts: any V1 ``VALIDATE_INPUTS(cls)`` runs.
        """
        name = "validate_inputs" if self.is_v3 else "VALIDATE_INPUTS"
        fn = _real_override(self.cls, name) if self.is_v3 else getattr(self.cls, name, None)
        if fn is None:
            return [], False
        spec = inspect.getfullargspec(fn)
        return list(spec.args), spec.varkw is not None

    def check_lazy_status(self, instance: Any) -> Callable[..., Any] | None:
        """The lazy-input check for ``instance`` (V1: a method; V3: the classmethod), or None."""
        check = (
            self._v3_callable("check_lazy_status")
            if self.is_v3
            else getattr(instance, "check_lazy_status", None)
        )
        return folding(check, self.autogrow_slots) if check is not None else None

    # --- results ---------------------------------------------------------------------------

    def _widen(self, value: Any) -> tuple[Any, ...]:
        return (value,) * len(self.return_types)

    def normalize_result(self, raw: Any) -> NodeResult:
        """Turn whatever one call returned into a NodeResult (see execution-semantics §3, §14)."""
        if isinstance(raw, ExecutionBlocker):
            return NodeResult(self._widen(raw), None, None)
        if isinstance(raw, NodeOutput):
            if raw.block_execution is not None:
                return NodeResult(self._widen(ExecutionBlocker(raw.block_execution)), _ui_dict(raw.ui), None)
            self._check_expand(raw.expand)
            return NodeResult(tuple(raw.values), _ui_dict(raw.ui), raw.expand)
        if isinstance(raw, dict):
            result = raw.get("result")
            if isinstance(result, ExecutionBlocker):
                outputs: tuple[Any, ...] | None = self._widen(result)
            elif result is None:
                outputs = () if self.is_v3 else None
            else:
                outputs = tuple(result)
            expand = raw.get("expand")
            self._check_expand(expand)
            return NodeResult(outputs, _ui_dict(raw.get("ui")), expand)
        if raw is None:
            return NodeResult(() if self.is_v3 else None, None, None)
        if isinstance(raw, tuple | list):
            return NodeResult(tuple(raw), None, None)
        raise TypeError(f"node {self.name} returned {type(raw).__name__}; expected a tuple or a dict")

    def _check_expand(self, expand: Any) -> None:
        if expand is not None and not self.enable_expand:
            raise ValueError(
                f"node {self.name} returned an expansion but its schema does not set enable_expand"
            )

    # --- /object_info ----------------------------------------------------------------------

    def object_info(self) -> dict[str, Any]:
        """This node's ``NodeInfo`` as ``GET /object_info`` reports it."""
        types = self.input_types()
        info: dict[str, Any] = {
            "input": self._published_inputs(types),
            "input_order": {
                group: list(entries) for group, entries in types.items() if isinstance(entries, dict)
            },
            "is_input_list": self.input_is_list,
            "output": list(self.return_types),
            "output_is_list": list(self.output_is_list),
            "output_name": list(self.return_names),
            "name": self.name,
            "display_name": self.published_display_name,
            "description": self._description(),
            "python_module": getattr(self.cls, "RELATIVE_PYTHON_MODULE", None) or self.plugin,
            "category": self._category(),
            "output_node": self.is_output_node,
            "has_intermediate_output": self.has_intermediate_output,
            "search_aliases": list(self._search_aliases()),
        }
        if self.output_tooltips is not None:
            info["output_tooltips"] = list(self.output_tooltips)
        matchtypes = getattr(self.cls, "OUTPUT_MATCHTYPES", None)
        if matchtypes is not None:
            # Per output, the V3 match-type template it follows (None: a fixed type); the
            # frontend gives a COMFY_MATCHTYPE_V3 output the type linked to that template's inputs.
            info["output_matchtypes"] = list(matchtypes)
        schema = self.schema
        if schema is not None:
            info["deprecated"] = bool(schema.is_deprecated)
            info["experimental"] = bool(schema.is_experimental)
            info["dev_only"] = bool(schema.is_dev_only)
            info["api_node"] = bool(schema.is_api_node)
            if schema.essentials_category is not None:
                info["essentials_category"] = schema.essentials_category
            return info
        # V1: flags appear only when set, api_node whenever the class defines it (the reference's rule).
        for attr, key in (
            ("DEPRECATED", "deprecated"),
            ("EXPERIMENTAL", "experimental"),
            ("DEV_ONLY", "dev_only"),
        ):
            if getattr(self.cls, attr, False):
                info[key] = True
        if hasattr(self.cls, "API_NODE"):
            info["api_node"] = bool(self.cls.API_NODE)  # type: ignore[attr-defined]
        if hasattr(self.cls, "ESSENTIALS_CATEGORY"):
            info["essentials_category"] = self.cls.ESSENTIALS_CATEGORY  # type: ignore[attr-defined]
        return info

    def _published_inputs(self, types: dict[str, Any]) -> dict[str, Any]:
        """``types`` as ``/object_info`` shows them.

        The reference publishes a schema node's hidden inputs as one-item lists (``["PROMPT"]``).
        A classic class standing in for one declares plain tokens, which the engine fills, and
        sets ``PUBLISH_SCHEMA_HIDDEN = True`` so its published interface is the reference's.
        """
        hidden = types.get("hidden")
        if not getattr(self.cls, "PUBLISH_SCHEMA_HIDDEN", False) or not isinstance(hidden, dict):
            return types
        return {**types, "hidden": {name: [token] for name, token in hidden.items()}}

    def _description(self) -> str:
        if self.schema is not None:
            return self.schema.description or ""
        return getattr(self.cls, "DESCRIPTION", "") or ""

    def _category(self) -> str:
        if self.schema is not None:
            return self.schema.category or "sd"
        return getattr(self.cls, "CATEGORY", "sd")

    def _search_aliases(self) -> list[str]:
        if self.schema is not None:
            return list(self.schema.search_aliases or ())
        return list(getattr(self.cls, "SEARCH_ALIASES", []) or [])


def _ui_dict(ui: Any) -> dict[str, Any] | None:
    if ui is None:
        return None
    if hasattr(ui, "as_dict"):
        return ui.as_dict()
    return dict(ui)


def node_spec(entry: NodeEntry) -> NodeSpec:
    """A fresh NodeSpec for a registry entry (prefer :func:`node_specs` for the cached one)."""
    return NodeSpec(entry.name, entry.cls, entry.plugin, entry.display_name)
