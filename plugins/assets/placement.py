"""Where uploaded content is stored: under the root its tags name, as ``<hex><ext>``.

``input`` (the default), ``output``, or ``models`` followed by a model folder kind
(``["models", "loras"]`` → the first folder of ``loras``). Naming files by their hash means two
uploads never collide and identical content in one root is stored once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from kernel.paths import UnsafePath, safe_join
from plugins.assets.errors import bad_request
from plugins.assets.tags import ROOT_TAGS

if TYPE_CHECKING:
    from kernel import Kernel

_EXTENSION = re.compile(r"^\.[A-Za-z0-9_+-]{1,16}$")


def with_root_tag(tags: list[str]) -> list[str]:
    """Tags with a root tag: ``input`` is put first when the client named none."""
    if any(t in ROOT_TAGS for t in tags):
        return tags
    return ["input", *tags]


def directory_for(kernel: Kernel, tags: list[str]) -> Path:
    root = next(t for t in tags if t in ROOT_TAGS)
    if root == "input":
        return kernel.settings.input_path
    if root == "output":
        return kernel.settings.output_path
    index = tags.index("models")
    category = tags[index + 1] if index + 1 < len(tags) else None
    if kernel.models is None:
        raise bad_request(
            "INVALID_TAGS", "Model folders are not available on this server (models plugin disabled)"
        )
    if category is None or not kernel.models.is_kind(category):
        raise bad_request(
            "INVALID_TAGS",
            "The tag after 'models' must name a model folder (checkpoints, loras, ...)",
            folder=category,
        )
    paths = kernel.models.folder_paths(category)
    if not paths:
        raise bad_request("INVALID_TAGS", f"Model folder {category!r} has no directory", folder=category)
    return Path(paths[0])


def extension_of(name: str) -> str:
    dot = name.rfind(".")
    ext = name[dot:] if dot > 0 else ""
    return ext.lower() if _EXTENSION.match(ext) else ""


def target_path(directory: Path, content_hash: str, name: str) -> Path:
    filename = content_hash.split(":", 1)[1] + extension_of(name)
    try:
        return safe_join(directory, filename)
    except UnsafePath as exc:  # only a symlinked root could get here
        raise bad_request("INVALID_TARGET", f"Cannot store the file: {exc.reason}") from None
