"""GET /experiment/models/preview/{folder}/{path_index}/{filename}: sources, WebP, traversal refusals."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from tests.attack_payloads import (
    RAW_QUERY_PAYLOADS,
    SENTINEL_BYTES,
    attack_payloads,
    plant_escape_symlink,
    plant_sentinel,
)
from tests.plugins.models.helpers import image_bytes, raw_get, safetensors_bytes, touch

PREVIEW = "/experiment/models/preview"


def _decoded(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


async def test_preview_serves_sibling_image_as_webp(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    ckpt = tmp_path / "models" / "checkpoints"
    touch(ckpt / "sd15.safetensors", safetensors_bytes({}))
    touch(ckpt / "sd15.png", image_bytes("PNG", (9, 4)))
    status, body, ctype = await raw_get(server, f"{PREVIEW}/checkpoints/0/sd15.safetensors")
    assert (status, ctype) == (200, "image/webp")
    img = _decoded(body)
    assert img.format == "WEBP" and img.size == (9, 4)
    # The /api twin answers the same.
    assert (await raw_get(server, f"/api{PREVIEW}/checkpoints/0/sd15.safetensors"))[0] == 200


async def test_preview_finds_dot_preview_sibling_in_a_subfolder(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    loras = tmp_path / "models" / "loras" / "style"
    touch(loras / "ink.safetensors")
    touch(loras / "ink.preview.jpg", image_bytes("JPEG", (6, 6)))
    for path in (f"{PREVIEW}/loras/0/style/ink.safetensors", f"{PREVIEW}/loras/0/style%2Fink.safetensors"):
        status, body, ctype = await raw_get(server, path)
        assert (status, ctype) == (200, "image/webp"), path
        assert _decoded(body).size == (6, 6)


async def test_preview_reads_cover_image_from_safetensors_metadata(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    cover = base64.b64encode(image_bytes("PNG", (3, 2))).decode()
    touch(
        tmp_path / "models" / "loras" / "covered.safetensors",
        safetensors_bytes({"ssmd_cover_images": json.dumps([cover])}),
    )
    status, body, ctype = await raw_get(server, f"{PREVIEW}/loras/0/covered.safetensors")
    assert (status, ctype) == (200, "image/webp")
    assert _decoded(body).size == (3, 2)


async def test_preview_reads_modelspec_thumbnail_data_url(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    thumb = "data:image/jpeg;base64," + base64.b64encode(image_bytes("JPEG", (5, 8))).decode()
    touch(
        tmp_path / "models" / "checkpoints" / "spec.safetensors",
        safetensors_bytes({"modelspec.thumbnail": thumb}),
    )
    status, body, _ = await raw_get(server, f"{PREVIEW}/checkpoints/0/spec.safetensors")
    assert status == 200
    assert _decoded(body).size == (5, 8)


async def test_preview_sibling_wins_over_embedded_image(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    cover = base64.b64encode(image_bytes("PNG", (3, 2))).decode()
    ckpt = tmp_path / "models" / "checkpoints"
    touch(ckpt / "both.safetensors", safetensors_bytes({"ssmd_cover_images": json.dumps([cover])}))
    touch(ckpt / "both.webp", image_bytes("WEBP", (10, 10)))
    status, body, _ = await raw_get(server, f"{PREVIEW}/checkpoints/0/both.safetensors")
    assert status == 200 and _decoded(body).size == (10, 10)


async def test_preview_missing_or_unreadable_is_404(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    ckpt = tmp_path / "models" / "checkpoints"
    touch(ckpt / "plain.safetensors", safetensors_bytes({"other": "x"}))
    touch(ckpt / "broken.safetensors")
    touch(ckpt / "broken.png", b"not an image")
    for name in ("plain.safetensors", "broken.safetensors", "absent.safetensors", "nodir/absent.safetensors"):
        status, body, _ = await raw_get(server, f"{PREVIEW}/checkpoints/0/{name}")
        assert (status, body) == (404, b""), name


async def test_preview_bad_folder_index_or_filename_is_4xx(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    touch(tmp_path / "models" / "checkpoints" / "m.png", image_bytes())
    cases = {
        f"{PREVIEW}/not_a_kind/0/m.safetensors": 404,
        f"{PREVIEW}/unet/0/m.safetensors": 404,
        f"{PREVIEW}/checkpoints/zero/m.safetensors": 400,
        f"{PREVIEW}/checkpoints/-1/m.safetensors": 404,
        f"{PREVIEW}/checkpoints/1/m.safetensors": 404,
        f"{PREVIEW}/checkpoints/99999999999999999999/m.safetensors": 404,
        f"{PREVIEW}/checkpoints/0/": 400,
    }
    for path, expected in cases.items():
        status, body, _ = await raw_get(server, path)
        assert (status, body) == (expected, b""), path
    # The good request works, so the refusals above are about the inputs.
    assert (await raw_get(server, f"{PREVIEW}/checkpoints/0/m.safetensors"))[0] == 200


async def test_preview_traversal_in_filename_is_refused(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    # A real image just outside the folder: a successful escape would answer 200.
    touch(tmp_path / "models" / "secret.png", image_bytes())
    touch(tmp_path / "secret.png", image_bytes())
    attempts = [
        "..%2Fsecret.safetensors",
        "..%2F..%2Fsecret.safetensors",
        "sub%2F..%2F..%2Fsecret.safetensors",
        "%2E%2E%2Fsecret.safetensors",
        "..%5Csecret.safetensors",
        "%2F" + str(tmp_path / "secret.safetensors").lstrip("/").replace("/", "%2F"),
        "ok%00.safetensors",
    ]
    for name in attempts:
        status, body, _ = await raw_get(server, f"{PREVIEW}/checkpoints/0/{name}")
        assert 400 <= status < 500 and status != 404, (name, status)
        assert body == b""


async def test_preview_symlinked_model_out_of_the_folder_is_403(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    outside = tmp_path / "outside"
    touch(outside / "evil.safetensors")
    touch(outside / "evil.png", image_bytes())
    ckpt = tmp_path / "models" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    os.symlink(outside / "evil.safetensors", ckpt / "evil.safetensors")
    os.symlink(outside, ckpt / "linkdir")
    for name in ("evil.safetensors", "linkdir/evil.safetensors"):
        status, body, _ = await raw_get(server, f"{PREVIEW}/checkpoints/0/{name}")
        assert (status, body) == (403, b""), name


async def test_preview_symlinked_preview_out_of_the_folder_is_403(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    touch(tmp_path / "outside" / "stolen.png", image_bytes())
    ckpt = tmp_path / "models" / "checkpoints"
    touch(ckpt / "model.safetensors")
    os.symlink(tmp_path / "outside" / "stolen.png", ckpt / "model.png")
    status, body, _ = await raw_get(server, f"{PREVIEW}/checkpoints/0/model.safetensors")
    assert (status, body) == (403, b"")


async def test_preview_shared_attack_payloads_are_all_4xx(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    ckpt = tmp_path / "models" / "checkpoints"
    sentinel = plant_sentinel(tmp_path)
    plant_escape_symlink(ckpt, sentinel)
    # Images next to every place an escape could land: a leak would answer 200 image/webp.
    for where in (tmp_path, tmp_path / "outside", tmp_path / "models"):
        touch(where / "secret.png", image_bytes())
    for payload in attack_payloads(sentinel):
        status, body, ctype = await raw_get(server, f"{PREVIEW}/checkpoints/0/{quote(payload, safe='')}")
        assert 400 <= status < 500, (payload, status)
        assert ctype != "image/webp" and SENTINEL_BYTES not in body, payload
    for raw in RAW_QUERY_PAYLOADS:
        status, _, ctype = await raw_get(server, f"{PREVIEW}/checkpoints/0/{raw}")
        assert 400 <= status < 500 and ctype != "image/webp", (raw, status)
