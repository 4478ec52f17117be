"""Every spec operation has a route, and every route has an operation or a documented reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from kernel.app import build_app
from tests.conformance.spec import load_extras, operations, served_paths, shape


def _route_table(app: web.Application) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path shape) of every handler route, and the prefixes of static mounts."""
    routes: set[tuple[str, str]] = set()
    statics: set[str] = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        if isinstance(resource, web.StaticResource):
            statics.add(resource.get_info()["prefix"])
            continue
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        routes.add((route.method, shape(path)))
    # add_get answers HEAD too; those twins are not separate operations.
    routes -= {("HEAD", p) for m, p in routes if m == "GET"} & routes
    return routes, statics


@pytest.fixture
def route_table(make_kernel: Callable[..., Any]) -> tuple[set[tuple[str, str]], set[str]]:
    kernel = make_kernel(plugins=None)
    return _route_table(build_app(kernel))


def _expected() -> dict[tuple[str, str], str]:
    expected: dict[tuple[str, str], str] = {}
    for op in operations():
        for path in served_paths(op.path):
            expected[(op.method, shape(path))] = op.operation_id
    return expected


def test_spec_has_65_operations() -> None:
    assert len(operations()) == 65
    assert len({op.operation_id for op in operations()}) == 65


def test_every_operation_has_a_route(route_table: tuple[set[tuple[str, str]], set[str]]) -> None:
    routes, _ = route_table
    missing = sorted(f"{op_id}: {m} {p}" for (m, p), op_id in _expected().items() if (m, p) not in routes)
    assert not missing, "spec operations without a route:\n" + "\n".join(missing)


def test_every_route_has_an_operation(route_table: tuple[set[tuple[str, str]], set[str]]) -> None:
    routes, statics = route_table
    extras = {(e["method"], e["path"]) for e in load_extras()["routes"]}
    unexplained = sorted(f"{m} {p}" for m, p in routes - set(_expected()) - extras)
    assert not unexplained, (
        "routes with no spec operation (add to tests/conformance/route_extras.yaml and "
        "docs/spec-deviations.md if intended):\n" + "\n".join(unexplained)
    )
    allowed_statics = {e["prefix"] for e in load_extras()["static_prefixes"]}
    assert statics <= allowed_statics, f"undocumented static mounts: {sorted(statics - allowed_statics)}"


def test_documented_extras_are_still_served(route_table: tuple[set[tuple[str, str]], set[str]]) -> None:
    # A stale entry would silently allow a future route with that path.
    routes, _ = route_table
    stale = [e for e in load_extras()["routes"] if (e["method"], e["path"]) not in routes]
    assert not stale


def test_jobs_and_assets_have_no_bare_twin(route_table: tuple[set[tuple[str, str]], set[str]]) -> None:
    routes, _ = route_table
    bare = {p for _, p in routes if p.startswith(("/jobs", "/assets", "/tags", "/api/api/"))}
    assert not bare


def test_served_paths_rules() -> None:
    assert served_paths("/api/prompt") == ["/api/prompt", "/prompt"]
    assert served_paths("/api/jobs/{job_id}") == ["/api/jobs/{job_id}"]
    assert served_paths("/internal/logs") == ["/internal/logs"]
    assert served_paths("/ws") == ["/ws", "/api/ws"]
