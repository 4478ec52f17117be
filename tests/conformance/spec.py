"""The repo copy of the OpenAPI spec, read once per test session, and its operations."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

SPEC_PATH = Path(__file__).resolve().parents[1] / "spec" / "openapi.yaml"
EXTRAS_PATH = Path(__file__).with_name("route_extras.yaml")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# Served only under /api (no bare twin): the reference declares them with the prefix already.
NO_BARE_TWIN = ("/api/jobs", "/api/assets", "/api/tags")


class Operation(NamedTuple):
    method: str
    path: str
    operation_id: str
    spec: dict[str, Any]


@functools.cache
def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


@functools.cache
def load_extras() -> dict[str, Any]:
    return yaml.safe_load(EXTRAS_PATH.read_text(encoding="utf-8"))


def operations() -> list[Operation]:
    ops = []
    for path, item in load_spec()["paths"].items():
        for method in METHODS:
            if method in item:
                op = item[method]
                ops.append(Operation(method.upper(), path, op.get("operationId", f"{method} {path}"), op))
    return ops


def shape(path: str) -> str:
    """A path with every ``{param}`` reduced to ``{}``: parameter names may differ from the spec's."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def served_paths(spec_path: str) -> list[str]:
    """Where the reference serves a spec path: the /api form and, for most, the bare twin."""
    if spec_path.startswith("/internal/"):
        return [spec_path]
    if spec_path.startswith("/api/"):
        if spec_path.startswith(NO_BARE_TWIN):
            return [spec_path]
        return [spec_path, spec_path[len("/api") :]]
    return [spec_path, "/api" + spec_path]
