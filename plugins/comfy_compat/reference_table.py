"""The reference's node classes per module, as ``reference_classes.json`` records them.

The JSON is generated from the reference's source by ``bench/reference_classes.py`` (see there for
what each field means) and committed; it is the one table the compat layer reads to know which
Python class names a ``comfy_extras.nodes_*`` / ``nodes`` module has, which node each names, and
how the reference's V3 ``execute`` of each is called.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

TABLE_PATH = Path(__file__).resolve().parent / "reference_classes.json"


@dataclass(frozen=True)
class ReferenceClass:
    """One node class of a reference module."""

    module: str  # "nodes" or "comfy_extras.nodes_..."
    class_name: str
    node_id: str
    v3: bool
    # V3 only: ``execute``'s parameter names in order, whether it also takes ``**kwargs``, and the
    # older method names the class keeps bound to it (``expand_mask = execute``).
    execute: tuple[str, ...] = ()
    execute_varkw: bool = False
    execute_aliases: tuple[str, ...] = ()
    in_golden: bool = False


@functools.cache
def reference_classes() -> tuple[ReferenceClass, ...]:
    data = json.loads(TABLE_PATH.read_text())
    return tuple(
        ReferenceClass(
            module=row["module"],
            class_name=row["class"],
            node_id=row["node_id"],
            v3=row["v3"],
            execute=tuple(row.get("execute", ())),
            execute_varkw=row.get("execute_varkw", False),
            execute_aliases=tuple(row.get("execute_aliases", ())),
            in_golden=row["golden"],
        )
        for row in data["classes"]
    )


@functools.cache
def reference_modules() -> tuple[str, ...]:
    """Every module the table covers, classes or not (packs import some we have none of)."""
    return tuple(json.loads(TABLE_PATH.read_text())["modules"])


@functools.cache
def module_classes(module: str) -> tuple[ReferenceClass, ...]:
    """The rows of ``module`` (a full name: ``comfy_extras.nodes_mask``)."""
    return tuple(row for row in reference_classes() if row.module == module)


@functools.cache
def v3_by_node_id() -> dict[str, ReferenceClass]:
    """Node id -> its V3 row (the reference defines every node id once)."""
    return {row.node_id: row for row in reference_classes() if row.v3}
