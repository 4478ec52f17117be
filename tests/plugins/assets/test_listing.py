"""GET /api/assets filters, sorting and paging; GET /api/tags; GET /api/assets/tags/refine."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from tests.plugins.assets.helpers import PLUGINS, upload


async def _populate(server):
    """Five assets with distinct names, sizes, tags and metadata; returns name → id."""
    specs = [
        ("Alpha.png", b"a" * 10, "red,big", {"rating": 5, "kind": "photo"}),
        ("beta.txt", b"b" * 30, "red", {"rating": 3, "kind": "note", "flag": True}),
        ("gamma_1.bin", b"c" * 20, "blue,big", {"rating": 5, "kind": "photo", "flag": False}),
        ("delta%.bin", b"d" * 50, "blue", {"kind": None}),
        ("ALPHABET.md", b"e" * 40, "", {"rating": 4.5}),
    ]
    ids = {}
    for name, data, tags, meta in specs:
        # The name travels as a field: aiohttp's client percent-encodes multipart filenames.
        fields = {"user_metadata": json.dumps(meta), "name": name}
        if tags:
            fields["tags"] = tags
        status, body = await upload(server, data, name, **fields)
        assert status == 201
        ids[name] = body["id"]
    return ids


async def _names(server, query):
    status, body = await server.json("GET", "/api/assets?" + urlencode(query, doseq=True))
    assert status == 200, body
    return [a["name"] for a in body["assets"]], body


async def test_list_defaults_newest_first(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    await _populate(server)
    names, body = await _names(server, {})
    assert names == ["ALPHABET.md", "delta%.bin", "gamma_1.bin", "beta.txt", "Alpha.png"]
    assert body["total"] == 5 and body["has_more"] is False
    first = body["assets"][0]
    assert {"id", "name", "asset_hash", "size", "mime_type", "tags", "created_at", "updated_at"} <= set(first)


async def test_tag_filters(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    await _populate(server)
    names, body = await _names(server, {"include_tags": ["red", "big"], "sort": "name", "order": "asc"})
    assert names == ["Alpha.png"] and body["total"] == 1
    names, _ = await _names(server, {"include_tags": "red,big"})
    assert names == ["Alpha.png"]
    names, _ = await _names(server, {"include_tags": "BIG", "sort": "name", "order": "asc"})
    assert names == ["Alpha.png", "gamma_1.bin"]
    names, _ = await _names(server, {"exclude_tags": ["red", "blue"]})
    assert names == ["ALPHABET.md"]
    names, _ = await _names(
        server, {"include_tags": "input", "exclude_tags": "big", "sort": "size", "order": "asc"}
    )
    assert names == ["beta.txt", "ALPHABET.md", "delta%.bin"]


async def test_name_contains_is_case_insensitive_and_literal(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    await _populate(server)
    names, _ = await _names(server, {"name_contains": "alpha", "sort": "name", "order": "asc"})
    assert names == ["ALPHABET.md", "Alpha.png"]
    names, _ = await _names(server, {"name_contains": "%"})
    assert names == ["delta%.bin"]
    names, _ = await _names(server, {"name_contains": "a_1"})
    assert names == ["gamma_1.bin"]


async def test_metadata_filter(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    await _populate(server)

    async def match(flt):
        names, _ = await _names(server, {"metadata_filter": json.dumps(flt), "sort": "name", "order": "asc"})
        return names

    assert await match({"rating": 5}) == ["Alpha.png", "gamma_1.bin"]
    assert await match({"rating": 5, "kind": "photo"}) == ["Alpha.png", "gamma_1.bin"]
    assert await match({"rating": 4.5}) == ["ALPHABET.md"]
    assert await match({"kind": "note"}) == ["beta.txt"]
    assert await match({"flag": True}) == ["beta.txt"]
    assert await match({"flag": False}) == ["gamma_1.bin"]
    assert await match({"rating": [3, 4.5]}) == ["ALPHABET.md", "beta.txt"]
    assert await match({"kind": None}) == ["ALPHABET.md", "delta%.bin"]
    assert await match({"rating": "5"}) == []
    assert await match({}) == ["ALPHABET.md", "Alpha.png", "beta.txt", "delta%.bin", "gamma_1.bin"]


async def test_sort_order_and_paging(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    await _populate(server)
    names, _ = await _names(server, {"sort": "size", "order": "desc"})
    assert names == ["delta%.bin", "ALPHABET.md", "beta.txt", "gamma_1.bin", "Alpha.png"]
    names, _ = await _names(server, {"sort": "name"})  # desc by default
    assert names == ["gamma_1.bin", "delta%.bin", "beta.txt", "Alpha.png", "ALPHABET.md"]
    names, _ = await _names(server, {"sort": "created_at", "order": "asc"})
    assert names[0] == "Alpha.png"
    for field in ("updated_at", "last_access_time"):
        names, _ = await _names(server, {"sort": field, "order": "ASC"})
        assert len(names) == 5
    names, body = await _names(server, {"sort": "size", "order": "asc", "limit": 2})
    assert names == ["Alpha.png", "gamma_1.bin"] and body["total"] == 5 and body["has_more"] is True
    names, body = await _names(server, {"sort": "size", "order": "asc", "limit": 2, "offset": 2})
    assert names == ["beta.txt", "ALPHABET.md"] and body["has_more"] is True
    names, body = await _names(server, {"sort": "size", "order": "asc", "limit": 2, "offset": 4})
    assert names == ["delta%.bin"] and body["has_more"] is False
    names, body = await _names(server, {"offset": 10})
    assert names == [] and body["total"] == 5 and body["has_more"] is False


async def test_list_bad_queries(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    for query in [
        {"sort": "hash"},
        {"sort": "name; DROP TABLE assets"},
        {"order": "sideways"},
        {"limit": "ten"},
        {"limit": 0},
        {"limit": 501},
        {"offset": -1},
        {"metadata_filter": "{bad"},
        {"metadata_filter": "[1]"},
        {"metadata_filter": json.dumps({"k": {"nested": 1}})},
        {"metadata_filter": json.dumps({'we"ird': 1})},
        {"metadata_filter": json.dumps({"k": []})},
        {"include_tags": "[oops"},
    ]:
        for path in ("/api/assets", "/api/assets/tags/refine"):
            status, body = await server.json("GET", path + "?" + urlencode(query))
            assert status == 400, (path, query)
            assert body["error"]["code"] == "INVALID_QUERY", (path, query, body)
            assert isinstance(body["error"]["message"], str)


async def test_list_tags_counts_search_and_paging(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    await _populate(server)
    status, body = await server.json("GET", "/api/tags")
    assert status == 200
    assert body["tags"] == [
        {"name": "input", "count": 5},
        {"name": "big", "count": 2},
        {"name": "blue", "count": 2},
        {"name": "red", "count": 2},
    ]
    assert body["total"] == 4 and body["has_more"] is False
    status, body = await server.json("GET", "/api/tags?search=B")
    assert [t["name"] for t in body["tags"]] == ["big", "blue"] and body["total"] == 2
    status, body = await server.json("GET", "/api/tags?limit=2&offset=1")
    assert [t["name"] for t in body["tags"]] == ["big", "blue"]
    assert body["total"] == 4 and body["has_more"] is True
    for bad in ("limit=x", "limit=0", "offset=-3", "limit=100000"):
        status, body = await server.json("GET", f"/api/tags?{bad}")
        assert status == 400 and body["error"]["code"] == "INVALID_QUERY", bad


async def test_refine_histogram_over_matching_assets(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    await _populate(server)
    status, body = await server.json("GET", "/api/assets/tags/refine?include_tags=big")
    assert status == 200
    assert body == {"tag_counts": {"big": 2, "input": 2, "red": 1, "blue": 1}}
    status, body = await server.json(
        "GET", "/api/assets/tags/refine?" + urlencode({"exclude_tags": "big", "name_contains": "a"})
    )
    assert body == {"tag_counts": {"input": 3, "red": 1, "blue": 1}}
    status, body = await server.json(
        "GET", "/api/assets/tags/refine?" + urlencode({"metadata_filter": '{"rating": 5}'})
    )
    assert body["tag_counts"]["big"] == 2
    status, body = await server.json("GET", "/api/assets/tags/refine?include_tags=nothing")
    assert status == 200 and body == {"tag_counts": {}}
