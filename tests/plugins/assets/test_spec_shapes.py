"""Every assets response body validates against its schema in the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.plugins.assets.helpers import PLUGINS, b3, png_bytes, upload

SPEC = Path(__file__).resolve().parents[2] / "spec" / "openapi.yaml"


@pytest.fixture(scope="module")
def components():
    return yaml.safe_load(SPEC.read_text())["components"]


def check(components, name, body):
    schema = {"$ref": f"#/components/schemas/{name}", "components": components}
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


async def test_responses_match_the_spec(comfy_server, components):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(1)
    status, created = await upload(server, data, "a.png", tags="x", user_metadata='{"k": "v"}')
    assert status == 201
    check(components, "AssetCreated", created)
    status, from_hash = await server.json(
        "POST", "/api/assets/from-hash", json={"hash": b3(data), "name": "b"}
    )
    assert status == 201
    check(components, "AssetCreated", from_hash)
    status, fetched = await server.json("GET", f"/api/assets/{created['id']}")
    check(components, "Asset", fetched)
    status, listing = await server.json("GET", "/api/assets")
    check(components, "ListAssetsResponse", listing)
    assert listing["total"] == 2
    status, updated = await server.json("PUT", f"/api/assets/{created['id']}", json={"name": "c"})
    check(components, "AssetUpdated", updated)
    status, added = await server.json("POST", f"/api/assets/{created['id']}/tags", json={"tags": ["y"]})
    check(components, "TagsModificationResponse", added)
    status, removed = await server.json("DELETE", f"/api/assets/{created['id']}/tags", json={"tags": ["y"]})
    check(components, "TagsModificationResponse", removed)
    status, tags = await server.json("GET", "/api/tags")
    check(components, "ListTagsResponse", tags)
    status, refine = await server.json("GET", "/api/assets/tags/refine")
    check(components, "AssetTagHistogramResponse", refine)
    # A wrong shape must fail the check (so the assertions above can fail).
    with pytest.raises(jsonschema.ValidationError):
        check(components, "Asset", {**fetched, "asset_hash": "md5:00"})
