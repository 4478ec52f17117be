"""A fake node pack on disk plus the inline plugin that registers it (shared by these tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kernel import hookimpl

PACK = "fake-pack"


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def make_pack(root: Path, name: str = PACK) -> Path:
    """A custom-node folder with web/, locales/, example_workflows/ + examples/ and subgraphs/."""
    pack = root / name
    (pack / "web" / "lib").mkdir(parents=True)
    (pack / "web" / "main.js").write_text("console.log('fake pack');\n")
    (pack / "web" / "lib" / "util.js").write_text("export const x = 1;\n")
    (pack / "web" / "style.css").write_text("body {}\n")
    write_json(pack / "locales" / "en" / "main.json", {"fake": {"hello": "Hello"}})
    write_json(pack / "locales" / "en" / "nodeDefs.json", {"FakeNode": {"display_name": "Fake"}})
    write_json(pack / "locales" / "fr" / "main.json", {"fake": {"hello": "Bonjour"}})
    (pack / "locales" / "de").mkdir(parents=True)
    (pack / "locales" / "de" / "main.json").write_text("{not json")
    write_json(pack / "example_workflows" / "basic.json", {"nodes": [], "from": "example_workflows"})
    write_json(pack / "examples" / "basic.json", {"nodes": [], "from": "examples"})
    write_json(pack / "examples" / "extra.json", {"nodes": []})
    (pack / "examples" / "notes.txt").write_text("not a template")
    write_json(pack / "subgraphs" / "my_blueprint.json", {"definitions": {"subgraphs": []}})
    return pack


class FakePackPlugin:
    """Registers one pack directory the way the comfy_compat loader will."""

    def __init__(self, pack: Path, name: str = PACK) -> None:
        self.pack = pack
        self.name = name

    @hookimpl
    def register_node_pack_dirs(self, register):
        register(self.name, self.pack)

    @hookimpl
    def register_web_extensions(self, register):
        register(self.name, self.pack / "web")

    @hookimpl
    def register_translations(self, register):
        register("en", {"fake": {"hello": "Hi from plugin", "bye": "Bye"}, "extra": 1})
