"""Routes fed by node packs: /extensions, /i18n, /workflow_templates, /global_subgraphs."""

from __future__ import annotations

import json

import pytest

from kernel import StartupError, hookimpl
from tests.plugins.frontend_ext.fakepack import PACK, FakePackPlugin, make_pack, write_json


@pytest.fixture
def pack(tmp_path):
    return make_pack(tmp_path / "custom_nodes")


async def start(comfy_server, pack, **settings):
    return await comfy_server(plugins=["frontend_ext", ("fake", FakePackPlugin(pack))], **settings)


def test_hook_register_node_pack_dirs(make_kernel, tmp_path):
    from plugins.frontend_ext.packs import PACKS

    seen = []

    class Packs:
        @hookimpl
        def register_node_pack_dirs(self, register, kernel):
            seen.append(kernel)
            register("one", tmp_path / "one")

    kernel = make_kernel(plugins=["frontend_ext", ("packs", Packs())])
    kernel.hooks.register_node_pack_dirs(kernel, kernel.stash[PACKS].register_for)
    assert seen == [kernel]
    entry = kernel.stash[PACKS].entries["one"]
    assert (entry.directory, entry.plugin) == (tmp_path / "one", "packs")
    with pytest.raises(StartupError, match="duplicate node pack 'one'"):
        kernel.hooks.register_node_pack_dirs(kernel, kernel.stash[PACKS].register_for)


async def test_pack_dirs_collected_at_startup(comfy_server, pack):
    from plugins.frontend_ext.packs import PACKS

    server = await start(comfy_server, pack)
    assert [p.name for p in server.kernel.stash[PACKS].sorted()] == [PACK]


async def test_invalid_pack_name_fails_startup(comfy_server, pack):
    with pytest.raises(StartupError, match="invalid name"):
        await comfy_server(plugins=["frontend_ext", ("fake", FakePackPlugin(pack, name="a/b"))])


async def test_extensions_lists_core_and_pack_scripts(comfy_server, pack):
    server = await start(comfy_server, pack)
    status, urls = await server.json("GET", "/extensions")
    assert status == 200
    assert f"/extensions/{PACK}/main.js" in urls
    assert f"/extensions/{PACK}/lib/util.js" in urls
    assert not any(u.endswith(".css") for u in urls)
    assert any(u.startswith("/extensions/core/") for u in urls)
    status, again = await server.json("GET", "/api/extensions")
    assert (status, again) == (200, urls)


async def test_extension_files_served(comfy_server, pack):
    server = await start(comfy_server, pack)
    async with server.get(f"/extensions/{PACK}/lib/util.js") as resp:
        assert resp.status == 200
        assert await resp.text() == "export const x = 1;\n"
        assert resp.headers["Cache-Control"] == "no-cache"
    async with server.get(f"/extensions/{PACK}/style.css") as resp:
        assert resp.status == 200
    async with server.get(f"/extensions/{PACK}/missing.js") as resp:
        assert resp.status == 404
    async with server.get(f"/extensions/{PACK}/%2e%2e/locales/en/main.json") as resp:
        assert resp.status in (403, 404)


async def test_i18n_merges_plugins_and_pack_locales(comfy_server, pack):
    server = await start(comfy_server, pack)
    status, body = await server.json("GET", "/i18n")
    assert status == 200
    # the pack's main.json wins over the plugin's mapping for the same key; other keys survive
    assert body["en"]["fake"] == {"hello": "Hello", "bye": "Bye"}
    assert body["en"]["extra"] == 1
    assert body["en"]["nodeDefs"] == {"FakeNode": {"display_name": "Fake"}}
    assert body["fr"] == {"fake": {"hello": "Bonjour"}}
    assert "de" not in body  # broken JSON is skipped, not a 500
    status, again = await server.json("GET", "/api/i18n")
    assert (status, again) == (200, body)


async def test_i18n_without_packs_is_empty_object(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    assert await server.json("GET", "/i18n") == (200, {})


async def test_workflow_templates_list(comfy_server, pack):
    server = await start(comfy_server, pack)
    status, body = await server.json("GET", "/workflow_templates")
    assert status == 200
    assert body == {PACK: ["basic", "basic-examples", "extra"]}


async def test_workflow_templates_omit_packs_without_any(comfy_server, tmp_path):
    empty = tmp_path / "empty_pack"
    empty.mkdir()
    server = await comfy_server(plugins=["frontend_ext", ("fake", FakePackPlugin(empty, "empty_pack"))])
    assert await server.json("GET", "/workflow_templates") == (200, {})


async def test_workflow_template_files(comfy_server, pack):
    server = await start(comfy_server, pack)
    status, body = await server.json("GET", f"/workflow_templates/{PACK}/basic.json")
    assert (status, body["from"]) == (200, "example_workflows")
    status, body = await server.json("GET", f"/api/workflow_templates/{PACK}/basic-examples.json")
    assert (status, body["from"]) == (200, "examples")
    for path in (
        f"/workflow_templates/{PACK}/missing.json",
        f"/workflow_templates/{PACK}/notes.txt",
        "/workflow_templates/no-such-pack/basic.json",
        f"/workflow_templates/{PACK}/..%2F..%2Fetc%2Fpasswd",
        f"/workflow_templates/{PACK}/%2e%2e%2fsubgraphs%2fmy_blueprint.json",
    ):
        status, body = await server.json("GET", path)
        assert status == 404, path
        assert body == {"error": "Workflow template not found"}


async def test_global_subgraphs_from_packs_and_blueprints(comfy_server, pack):
    server = await start(comfy_server, pack)
    status, listing = await server.json("GET", "/global_subgraphs")
    assert status == 200
    ours = {sid: e for sid, e in listing.items() if e["source"] == "custom_node"}
    assert list(ours.values()) == [
        {"source": "custom_node", "name": "my_blueprint", "info": {"node_pack": PACK}}
    ]
    blueprints = [e for e in listing.values() if e["source"] == "templates"]
    assert blueprints, "comfyui-subgraph-blueprints should contribute entries"
    assert all("data" not in e and "path" not in e for e in listing.values())
    sid = next(iter(ours))
    assert len(sid) == 64 and int(sid, 16) >= 0
    status, full = await server.json("GET", f"/global_subgraphs/{sid}")
    assert status == 200
    assert full["name"] == "my_blueprint" and full["info"] == {"node_pack": PACK}
    assert isinstance(full["data"], str)
    assert json.loads(full["data"]) == {"definitions": {"subgraphs": []}}
    blueprint_id = next(s for s, e in listing.items() if e["source"] == "templates")
    status, full = await server.json("GET", f"/api/global_subgraphs/{blueprint_id}")
    assert status == 200 and "nodes" in json.loads(full["data"])


async def test_global_subgraph_ids_are_stable_across_servers(comfy_server, pack):
    first = await start(comfy_server, pack)
    second = await start(comfy_server, pack)
    _, a = await first.json("GET", "/global_subgraphs")
    _, b = await second.json("GET", "/global_subgraphs")
    assert a == b


async def test_unknown_global_subgraph_is_404(comfy_server, pack):
    server = await start(comfy_server, pack)
    for sid in ("0" * 64, "..%2F..%2Fetc%2Fpasswd", "x"):
        status, body = await server.json("GET", f"/global_subgraphs/{sid}")
        assert (status, body) == (404, {"error": "Subgraph not found"}), sid


async def test_global_subgraphs_cached_after_first_call(comfy_server, pack):
    server = await start(comfy_server, pack)
    _, before = await server.json("GET", "/global_subgraphs")
    write_json(pack / "subgraphs" / "later.json", {})
    _, after = await server.json("GET", "/global_subgraphs")
    assert after == before


async def test_extension_names_needing_quotes_are_served(comfy_server, tmp_path):
    pack = make_pack(tmp_path / "custom_nodes", name="My Pack+")
    server = await comfy_server(plugins=["frontend_ext", ("fake", FakePackPlugin(pack, name="My Pack+"))])
    _, urls = await server.json("GET", "/extensions")
    assert "/extensions/My%20Pack%2B/main.js" in urls
    async with server.get("/extensions/My%20Pack%2B/main.js") as resp:
        assert resp.status == 200
        assert await resp.text() == "console.log('fake pack');\n"


async def test_extension_file_escapes_refused(comfy_server, pack):
    server = await start(comfy_server, pack)
    for path in (
        f"/extensions/{PACK}/..%2Flocales%2Fen%2Fmain.json",
        f"/extensions/{PACK}/lib%2F..%2F..%2Flocales%2Fen%2Fmain.json",
        "/extensions/core/..%2F..%2Findex.html",
    ):
        async with server.get(path) as resp:
            assert resp.status in (400, 404), path
            assert "fake" not in await resp.text()
            assert "error" in await resp.json()


async def test_web_root_core_extensions_still_served(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    _, urls = await server.json("GET", "/extensions")
    core = next(u for u in urls if u.startswith("/extensions/core/"))
    async with server.get(core) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
    async with server.get("/extensions/not-a-pack/x.js") as resp:
        assert resp.status == 404
