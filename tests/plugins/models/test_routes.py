"""GET /models, /models/{folder}, /experiment/models*, /internal/folder_paths over real HTTP."""

from __future__ import annotations

import os
from pathlib import Path

from tests.plugins.models.helpers import raw_get, touch


async def test_models_lists_kinds_in_registration_order(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    status, body = await server.json("GET", "/models")
    assert status == 200
    assert body[:5] == ["checkpoints", "configs", "loras", "vae", "text_encoders"]
    for kind in ("embeddings", "custom_nodes", "fonts", "diffusers", "classifiers", "model_patches"):
        assert kind in body
    # Legacy aliases are accepted by lookups but never listed.
    assert "unet" not in body and "clip" not in body
    assert (await server.json("GET", "/api/models")) == (200, body)


async def test_models_folder_lists_sorted_filtered_recursive_names(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    ckpt = tmp_path / "models" / "checkpoints"
    touch(ckpt / "b.safetensors")
    touch(ckpt / "a.ckpt")
    touch(ckpt / "sub" / "deep" / "c.pt")
    touch(ckpt / "notes.txt")
    touch(ckpt / ".hidden.safetensors")
    touch(ckpt / ".git" / "x.safetensors")
    status, body = await server.json("GET", "/models/checkpoints")
    assert status == 200
    assert body == ["a.ckpt", "b.safetensors", "sub/deep/c.pt"]


async def test_models_folder_merges_every_default_folder_of_a_kind(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    touch(tmp_path / "models" / "text_encoders" / "t5.safetensors")
    touch(tmp_path / "models" / "clip" / "clip_l.safetensors")
    touch(tmp_path / "models" / "unet" / "flux.sft")
    assert await server.json("GET", "/models/text_encoders") == (
        200,
        ["clip_l.safetensors", "t5.safetensors"],
    )
    assert await server.json("GET", "/models/diffusion_models") == (200, ["flux.sft"])


async def test_models_folder_unknown_or_alias_is_404_with_empty_body(comfy_server) -> None:
    server = await comfy_server(plugins=["models"])
    for path in ("/models/nope", "/models/unet", "/api/models/clip"):
        status, body, _ = await raw_get(server, path)
        assert (status, body) == (404, b""), path


async def test_models_folder_listing_follows_directory_changes(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    loras = tmp_path / "models" / "loras"
    touch(loras / "one.safetensors")
    assert await server.json("GET", "/models/loras") == (200, ["one.safetensors"])
    touch(loras / "two.safetensors")
    assert await server.json("GET", "/models/loras") == (200, ["one.safetensors", "two.safetensors"])
    touch(loras / "nested" / "three.safetensors")
    assert (await server.json("GET", "/models/loras"))[1] == [
        "nested/three.safetensors",
        "one.safetensors",
        "two.safetensors",
    ]
    # A change deep in the tree only touches that directory's mtime.
    touch(loras / "nested" / "four.safetensors")
    assert "nested/four.safetensors" in (await server.json("GET", "/models/loras"))[1]
    (loras / "one.safetensors").unlink()
    assert "one.safetensors" not in (await server.json("GET", "/models/loras"))[1]


async def test_models_folder_follows_symlinked_folders_without_looping(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    elsewhere = tmp_path / "elsewhere"
    touch(elsewhere / "linked.safetensors")
    vae = tmp_path / "models" / "vae"
    vae.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, vae / "shared")
    os.symlink(vae, vae / "loop")
    assert await server.json("GET", "/models/vae") == (200, ["shared/linked.safetensors"])


async def test_experiment_models_lists_folders_with_paths_and_extensions(
    comfy_server, tmp_path: Path
) -> None:
    server = await comfy_server(plugins=["models"])
    status, body = await server.json("GET", "/experiment/models")
    assert status == 200
    by_name = {entry["name"]: entry for entry in body}
    assert "configs" not in by_name and "custom_nodes" not in by_name
    assert by_name["checkpoints"]["folders"] == [str(tmp_path / "models" / "checkpoints")]
    assert by_name["controlnet"]["folders"] == [
        str(tmp_path / "models" / "controlnet"),
        str(tmp_path / "models" / "t2i_adapter"),
    ]
    assert ".safetensors" in by_name["loras"]["extensions"]
    assert by_name["loras"]["extensions"] == sorted(by_name["loras"]["extensions"])
    assert by_name["fonts"]["folders"] == [str(tmp_path / "fonts")]
    assert [e["name"] for e in body][:3] == ["checkpoints", "loras", "vae"]


async def test_experiment_models_folder_gives_index_times_and_size(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    touch(tmp_path / "models" / "controlnet" / "canny.safetensors", b"12345")
    touch(tmp_path / "models" / "t2i_adapter" / "sub" / "depth.pth", b"123")
    touch(tmp_path / "models" / "t2i_adapter" / "readme.md")
    status, body = await server.json("GET", "/experiment/models/controlnet")
    assert status == 200
    assert [(f["name"], f["pathIndex"], f["size"]) for f in body] == [
        ("canny.safetensors", 0, 5),
        ("sub/depth.pth", 1, 3),
    ]
    stat = (tmp_path / "models" / "controlnet" / "canny.safetensors").stat()
    assert body[0]["modified"] == stat.st_mtime and body[0]["created"] == stat.st_ctime
    assert set(body[0]) == {"name", "pathIndex", "modified", "created", "size"}


async def test_experiment_models_folder_filters_by_torch_extensions(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    touch(tmp_path / "models" / "configs" / "v1.yaml")
    touch(tmp_path / "models" / "classifiers" / "anything.onnx")
    assert await server.json("GET", "/models/configs") == (200, ["v1.yaml"])
    assert await server.json("GET", "/models/classifiers") == (200, ["anything.onnx"])
    assert await server.json("GET", "/experiment/models/configs") == (200, [])
    assert await server.json("GET", "/experiment/models/classifiers") == (200, [])


async def test_experiment_models_folder_unknown_is_404(comfy_server) -> None:
    server = await comfy_server(plugins=["models"])
    status, body, _ = await raw_get(server, "/experiment/models/not_a_kind")
    assert (status, body) == (404, b"")


async def test_internal_folder_paths_maps_every_kind_to_its_paths(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    status, body = await server.json("GET", "/internal/folder_paths")
    assert status == 200
    assert body["checkpoints"] == [str(tmp_path / "models" / "checkpoints")]
    assert body["diffusion_models"] == [
        str(tmp_path / "models" / "unet"),
        str(tmp_path / "models" / "diffusion_models"),
    ]
    assert body["custom_nodes"] == [str(tmp_path / "custom_nodes")]
    assert all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in body.values())
    assert list(body) == (await server.json("GET", "/models"))[1]
    # /internal routes have no /api twin.
    assert (await server.json("GET", "/api/internal/folder_paths"))[0] == 404


async def test_startup_creates_the_default_model_folders(comfy_server, tmp_path: Path) -> None:
    await comfy_server(plugins=["models"])
    assert (tmp_path / "models" / "checkpoints").is_dir()
    assert (tmp_path / "models" / "loras").is_dir()
    # Folders outside the models root are the user's to create.
    assert not (tmp_path / "custom_nodes").exists()
