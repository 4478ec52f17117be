"""docs/nodes.md: the generated node reference matches the registry and reads correctly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugins.core_nodes.docgen import COMMAND, registry_object_info, render

DOCS = Path(__file__).resolve().parents[3] / "docs" / "nodes.md"


def test_committed_reference_is_up_to_date() -> None:
    generated = render(registry_object_info())
    committed = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    assert committed == generated, (
        f"docs/nodes.md is out of date with the node registry (a node was added, removed or its "
        f"interface changed): run `{COMMAND}` and commit the result"
    )


def test_every_registered_node_has_a_section() -> None:
    info = registry_object_info()
    text = render(info)
    for name, entry in info.items():
        title = entry.get("display_name") or name
        heading = f"### {title}" if title == name else f"### {title} (`{name}`)"
        assert heading in text.splitlines(), name


def _entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "input": {"required": {}},
        "input_order": {"required": []},
        "output": [],
        "output_name": [],
        "output_is_list": [],
        "display_name": None,
        "category": "",
        "python_module": "nodes",
    }
    return {**base, **fields}


def test_rendering_of_inputs_outputs_and_categories() -> None:
    choices = [f"c{i}" for i in range(20)]
    info = {
        "Zed": _entry(
            display_name="A | B",
            category="text",
            description="Line one.\nLine two.",
            input={
                "required": {"b": ["INT", {"default": 3, "min": 0, "max": 9}], "a": [choices, {}]},
                "optional": {"c": ["STRING", {"default": "x|y", "multiline": True}]},
            },
            input_order={"required": ["b", "a"], "optional": ["c"]},
            output=["STRING", "INT"],
            output_name=["text", "INT"],
            output_is_list=[True, False],
            deprecated=True,
        ),
        "Alpha": _entry(category="text"),
        "Loose": _entry(),
    }
    text = render(info)
    lines = text.splitlines()
    # Categories in order, the empty one last; nodes sorted by display name within one.
    assert lines.index("## text") < lines.index("## (no category)")
    assert text.index("### A | B (`Zed`)") < text.index("### Alpha")
    assert "Line one. Line two." in lines
    assert "Class `Zed`, module `nodes`; deprecated." in lines
    # Inputs in the saved-workflow order, pipes escaped, long choice lists cut.
    b_row = lines.index("| `b` | `INT` | yes | `3` | min `0`; max `9` |")
    a_row = next(i for i, line in enumerate(lines) if line.startswith("| `a` | `COMBO` |"))
    assert (
        b_row < a_row
        and "… (20 in all)" in lines[a_row]
        and "`c11`" in lines[a_row]
        and "`c12`" not in lines[a_row]
    )
    assert "| `c` | `STRING` | no | `x\\|y` | multiline |" in lines
    assert "Outputs: `text` (STRING), a list, `INT`." in lines
    assert "No inputs." in lines and "Outputs: none." in lines
