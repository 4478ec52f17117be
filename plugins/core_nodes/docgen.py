"""The node reference (``docs/nodes.md``), generated from the node registry.

    python -m plugins.core_nodes.docgen > docs/nodes.md

Builds a kernel with the core node set (in a throwaway base directory, so no installed model
file shows up in a choice list) and writes every registered node as ``GET /object_info``
describes it: display name, class name, category, inputs in order with their types, defaults
and limits, and outputs. A test keeps the committed file equal to this output.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

PLUGINS = ["core_nodes", "models"]
COMMAND = "python -m plugins.core_nodes.docgen > docs/nodes.md"
# Longer choice lists are cut to their first few entries and a count.
MAX_CHOICES = 12
# Input options the reference table shows in its "details" column, in this order.
_DETAIL_OPTIONS = (
    "min",
    "max",
    "step",
    "round",
    "multiline",
    "advanced",
    "lazy",
    "forceInput",
    "display_name",
)


def registry_object_info() -> dict[str, dict[str, Any]]:
    """``/object_info`` of every node a core server registers, by class name."""
    from kernel.app import Kernel
    from kernel.nodes import node_specs
    from kernel.settings import Settings

    with tempfile.TemporaryDirectory(prefix="comfykernel-docgen-") as base:
        kernel = Kernel(Settings(base_directory=base, plugins=list(PLUGINS)))
        specs = node_specs(kernel)
        found: dict[str, dict[str, Any]] = {}
        for name in specs.names():
            spec = specs.get(name)
            if spec is not None:
                found[name] = spec.object_info()
        return found


def _cell(text: str) -> str:
    """``text`` made safe for one Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    shown = value if isinstance(value, str) and "\n" not in value else json.dumps(value, ensure_ascii=False)
    shown = shown.replace("`", "'")
    return f"`{shown}`" if shown else '`""`'


def _choices(choices: list[Any]) -> str:
    if not choices:
        return "choices: none fixed (installed files, or set on the canvas)"
    listed = ", ".join(_code(c) for c in choices[:MAX_CHOICES])
    more = len(choices) - MAX_CHOICES
    return f"choices: {listed}" + (f", … ({len(choices)} in all)" if more > 0 else "")


def _autogrow(options: Mapping[str, Any]) -> str:
    template = options.get("template") or {}
    inner = next(iter((template.get("input") or {}).get("required", {}).values()), None) or next(
        iter((template.get("input") or {}).get("optional", {}).values()), ["*"]
    )
    if "names" in template:
        names = list(template["names"])
        slots = ", ".join(names[:3]) + (f" … {names[-1]}" if len(names) > 3 else "")
    else:
        prefix = template.get("prefix", "")
        slots = f"{prefix}0 … {prefix}{int(template.get('max', 1)) - 1}"
    return f"a growing row of {_code(inner[0])} inputs ({slots}), at least {template.get('min', 0)}"


def _input_row(name: str, spec: Any, required: bool) -> str:
    kind = spec[0] if isinstance(spec, list | tuple) and spec else spec
    options: dict[str, Any] = dict(spec[1]) if isinstance(spec, list | tuple) and len(spec) > 1 else {}
    details: list[str] = []
    if isinstance(kind, list):  # the classic combo form: the choices are the type
        details.append(_choices(kind))
        kind = "COMBO"
    elif kind == "COMBO":
        details.append(_choices(list(options.get("options") or [])))
    elif kind == "COMFY_AUTOGROW_V3":
        details.append(_autogrow(options))
    elif kind == "COMFY_MATCHTYPE_V3":
        template = options.get("template") or {}
        details.append(f"any type, the same for every input of template {_code(template.get('template_id'))}")
    for key in _DETAIL_OPTIONS:
        if key in options and options[key] is not False:
            details.append(key if options[key] is True else f"{key} {_code(options[key])}")
    default = _code(options["default"]) if "default" in options else ""
    return (
        f"| `{_cell(name)}` | {_cell(_code(str(kind)))} | {'yes' if required else 'no'} | {_cell(default)} "
        f"| {_cell('; '.join(details))} |"
    )


def _inputs(info: Mapping[str, Any]) -> list[str]:
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    rows: list[str] = []
    for group in ("required", "optional"):
        entries = inputs.get(group) or {}
        for name in order.get(group) or list(entries):
            if name in entries:
                rows.append(_input_row(name, entries[name], group == "required"))
    if not rows:
        return ["No inputs."]
    return ["| Input | Type | Required | Default | Details |", "|---|---|---|---|---|", *rows]


def _outputs(info: Mapping[str, Any]) -> str:
    types = info.get("output") or []
    if not types:
        return "Outputs: none."
    names = info.get("output_name") or types
    is_list = info.get("output_is_list") or [False] * len(types)
    shown = []
    for kind, name, listed in zip(types, names, is_list, strict=False):
        label = f"`{name}` ({kind})" if name != kind else f"`{kind}`"
        shown.append(label + (", a list" if listed else ""))
    return "Outputs: " + ", ".join(shown) + "."


def _flags(info: Mapping[str, Any]) -> list[str]:
    flags = [
        label
        for key, label in (
            ("output_node", "output node"),
            ("deprecated", "deprecated"),
            ("experimental", "experimental"),
        )
        if info.get(key)
    ]
    if info.get("is_input_list"):
        flags.append("takes whole lists")
    return flags


def _node(name: str, info: Mapping[str, Any]) -> list[str]:
    title = info.get("display_name") or name
    lines = [f"### {title}" if title == name else f"### {title} (`{name}`)", ""]
    description = " ".join(str(info.get("description") or "").split())
    if description:
        lines += [description, ""]
    about = f"Class `{name}`, module `{info.get('python_module')}`"
    flags = _flags(info)
    lines += [about + (f"; {', '.join(flags)}" if flags else "") + ".", ""]
    lines += [*_inputs(info), "", _outputs(info), ""]
    return lines


def _category_key(category: str) -> tuple[bool, str]:
    return (category == "", category.lower())


def render(object_info: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown reference for ``object_info`` (class name -> its ``/object_info`` entry)."""
    by_category: dict[str, list[str]] = {}
    for name, info in object_info.items():
        by_category.setdefault(str(info.get("category") or ""), []).append(name)
    lines = [
        "# Node reference",
        "",
        f"Every node a server with the core node set offers: {len(object_info)} nodes in "
        f"{len(by_category)} categories, grouped by category as the frontend's node library shows them.",
        "Inputs are listed in the order a saved workflow stores their values.",
        "",
        f"Generated from the node registry by `{COMMAND}`; do not edit by hand.",
        "",
        "## Categories",
        "",
    ]
    categories = sorted(by_category, key=_category_key)
    lines += [f"- {_label(c)} ({len(by_category[c])})" for c in categories]
    lines.append("")
    for category in categories:
        lines += [f"## {_label(category)}", ""]
        names = sorted(
            by_category[category], key=lambda n: (str(object_info[n].get("display_name") or n).lower(), n)
        )
        for name in names:
            lines += _node(name, object_info[name])
    return "\n".join(lines).rstrip("\n") + "\n"


def _label(category: str) -> str:
    return category or "(no category)"


def main() -> int:
    sys.stdout.write(render(registry_object_info()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
