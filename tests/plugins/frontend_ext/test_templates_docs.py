"""/templates/... from comfyui-workflow-templates-json (+ media bundles), /docs/... embedded docs."""

from __future__ import annotations

import json

from plugins.frontend_ext.webroot import package_dir


async def test_core_template_index_and_workflow(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    status, index = await server.json("GET", "/templates/index.json")
    assert status == 200 and isinstance(index, list) and index
    root = package_dir("comfyui_workflow_templates_json", "templates")
    name = sorted(p.name for p in root.glob("*.json") if not p.name.startswith("index"))[0]
    status, body = await server.json("GET", f"/templates/{name}")
    assert status == 200
    assert body == json.loads((root / name).read_text(encoding="utf-8"))


async def test_core_template_missing_and_unsafe(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    status, body = await server.json("GET", "/templates/no_such_template.json")
    assert (status, body) == (404, {"error": "Template file not found"})
    status, body = await server.json("GET", "/templates/..%2F..%2F__init__.py")
    assert status == 400 and isinstance(body["error"], str)
    # dot segments are normalised away by the URL layer before routing: never a package file
    async with server.get("/templates/%2e%2e/%2e%2e/__init__.py") as resp:
        assert resp.status in (400, 404)
        assert "import" not in await resp.text()


async def test_media_without_bundle_is_404(comfy_server):
    # Thumbnails live in the optional media packages; without them the answer is a clean 404.
    server = await comfy_server(plugins=["frontend_ext"])
    if package_dir("comfyui_workflow_templates_media_image", "templates") is None:
        status, _ = await server.json("GET", "/templates/default-1.webp")
        assert status == 404


async def test_embedded_docs_served(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    docs = package_dir("comfyui_embedded_docs", "docs")
    doc = next(p for p in sorted(docs.rglob("*.md")))
    rel = doc.relative_to(docs).as_posix()
    async with server.get(f"/docs/{rel}") as resp:
        assert resp.status == 200
        assert await resp.read() == doc.read_bytes()
    async with server.get("/docs/NoSuchNode/en.md") as resp:
        assert resp.status == 404
