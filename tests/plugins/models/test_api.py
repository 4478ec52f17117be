"""The public Python API (``kernel.models``) and the folder-kind registration seam."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernel import hookimpl
from plugins.models.api import ModelPaths, UnknownFolder
from tests.plugins.models.helpers import safetensors_bytes, touch


class ExtraKinds:
    """A throwaway plugin contributing a folder kind, as a node pack would."""

    __name__ = "extra_kinds"

    @staticmethod
    @hookimpl
    def register_model_folders(register):
        register("ipadapter", {".safetensors", "bin"}, aliases=("ip_adapter",))


def test_configure_installs_model_paths_on_the_kernel(make_kernel) -> None:
    kernel = make_kernel(plugins=["models"])
    assert isinstance(kernel.models, ModelPaths)
    assert kernel.model_folders.get("unet").name == "diffusion_models"
    assert kernel.model_folders.get("checkpoints").plugin == "models"


def test_get_full_path_resolves_names_across_folders_and_aliases(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    models = kernel.models
    touch(tmp_path / "models" / "diffusion_models" / "sub" / "flux.safetensors")
    touch(tmp_path / "models" / "unet" / "flux.safetensors")
    # unet is listed first for diffusion_models, so its copy wins.
    assert (
        models.get_full_path("unet", "flux.safetensors") == tmp_path / "models" / "unet" / "flux.safetensors"
    )
    assert (
        models.get_full_path("diffusion_models", "sub/flux.safetensors")
        == tmp_path / "models" / "diffusion_models" / "sub" / "flux.safetensors"
    )
    assert models.get_full_path("diffusion_models", "sub\\flux.safetensors") is not None
    assert models.get_full_path("diffusion_models", "missing.safetensors") is None
    assert models.get_full_path("nope", "flux.safetensors") is None
    with pytest.raises(FileNotFoundError, match="missing"):
        models.get_full_path_or_raise("unet", "missing.safetensors")


def test_get_full_path_refuses_traversal(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    touch(tmp_path / "models" / "secret.safetensors")
    touch(tmp_path / "top.safetensors")
    for name in (
        "../secret.safetensors",
        "../../top.safetensors",
        str(tmp_path / "top.safetensors"),
        "",
        "a\0b",
    ):
        assert kernel.models.get_full_path("checkpoints", name) is None, name
    # A directory is not a model file.
    (tmp_path / "models" / "checkpoints" / "dir.safetensors").mkdir(parents=True)
    assert kernel.models.get_full_path("checkpoints", "dir.safetensors") is None


def test_get_full_path_follows_symlinks_placed_in_the_folder(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    big = touch(tmp_path / "disk2" / "big.safetensors")
    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    os.symlink(big, loras / "big.safetensors")
    assert kernel.models.get_full_path("loras", "big.safetensors") == loras / "big.safetensors"
    assert kernel.models.list_names("loras") == ["big.safetensors"]


def test_list_names_accepts_aliases_and_refuses_unknown(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    touch(tmp_path / "models" / "clip" / "clip_l.safetensors")
    assert kernel.models.list_names("clip") == ["clip_l.safetensors"]
    assert kernel.models.list_names("text_encoders") == ["clip_l.safetensors"]
    with pytest.raises(UnknownFolder, match="nope"):
        kernel.models.list_names("nope")
    with pytest.raises(KeyError):
        kernel.models.folder_paths("nope")


def test_add_folder_at_run_time(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    models = kernel.models
    default = tmp_path / "models" / "loras"
    touch(tmp_path / "later" / "late.safetensors")
    touch(tmp_path / "first" / "first.safetensors")
    assert models.list_names("loras") == []
    models.add_folder("loras", tmp_path / "later")
    assert models.folder_paths("loras") == [default, tmp_path / "later"]
    assert models.list_names("loras") == ["late.safetensors"]
    models.add_folder("loras", tmp_path / "first", is_default=True)
    assert models.folder_paths("loras") == [tmp_path / "first", default, tmp_path / "later"]
    # Adding a known folder again as default moves it to the front, never duplicates it.
    models.add_folder("loras", tmp_path / "later", is_default=True)
    assert models.folder_paths("loras") == [tmp_path / "later", tmp_path / "first", default]
    models.add_folder("clip", tmp_path / "te")
    assert models.folder_paths("text_encoders")[-1] == tmp_path / "te"
    models.add_folder("brand_new", tmp_path / "first")
    assert models.kinds()[-1] == "brand_new"
    assert models.list_names("brand_new") == ["first.safetensors"]


def test_all_folder_paths_and_extensions(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    paths = kernel.models.all_folder_paths()
    assert paths["fonts"] == [tmp_path / "fonts"]
    assert kernel.models.extensions("fonts") == frozenset({".ttf", ".otf"})
    assert kernel.models.extensions("classifiers") == frozenset()
    assert ".sft" in kernel.models.extensions("unet")


async def test_a_plugin_registered_kind_is_served(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models", ExtraKinds])
    touch(tmp_path / "models" / "ipadapter" / "face.bin")
    touch(tmp_path / "models" / "ipadapter" / "face.txt")
    assert "ipadapter" in (await server.json("GET", "/models"))[1]
    assert await server.json("GET", "/models/ipadapter") == (200, ["face.bin"])
    assert server.kernel.models.list_names("ip_adapter") == ["face.bin"]
    _, paths = await server.json("GET", "/internal/folder_paths")
    assert paths["ipadapter"] == [str(tmp_path / "models" / "ipadapter")]


def test_hook_register_embeddings(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    emb = tmp_path / "models" / "embeddings"
    touch(emb / "easynegative.safetensors")
    touch(emb / "style" / "ink.pt")
    touch(emb / "notes.txt")
    assert kernel.hooks.register_embeddings(kernel) == ["easynegative", "style/ink"]
    touch(emb / "added.bin")
    assert "added" in kernel.hooks.register_embeddings(kernel)


def test_listing_cache_is_reused_until_a_directory_changes(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    touch(tmp_path / "models" / "vae" / "a.safetensors")
    listings = kernel.models._listings
    first = listings.get(tmp_path / "models" / "vae")
    assert listings.get(tmp_path / "models" / "vae") is first
    touch(tmp_path / "models" / "vae" / "b.safetensors")
    assert listings.get(tmp_path / "models" / "vae") is not first
    # A folder that does not exist yet is noticed once it appears.
    assert kernel.models.list_names("gligen") == []
    touch(tmp_path / "models" / "gligen" / "g.pth")
    assert kernel.models.list_names("gligen") == ["g.pth"]


async def test_view_metadata_reaches_model_files_through_kernel_models(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    touch(
        tmp_path / "models" / "loras" / "sub" / "ink.safetensors", safetensors_bytes({"ss_network_dim": "16"})
    )
    touch(tmp_path / "models" / "secret.safetensors", safetensors_bytes({"secret": "1"}))
    status, body = await server.json("GET", "/view_metadata/loras?filename=sub/ink.safetensors")
    assert (status, body) == (200, {"ss_network_dim": "16"})
    assert (await server.json("GET", "/view_metadata/loras?filename=../secret.safetensors"))[0] == 404
    assert (await server.json("GET", "/view_metadata/nope?filename=sub/ink.safetensors"))[0] == 404


async def test_embeddings_route_lists_stems(comfy_server, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    touch(tmp_path / "models" / "embeddings" / "neg.safetensors")
    touch(tmp_path / "models" / "embeddings" / "sub" / "pos.pt")
    assert await server.json("GET", "/embeddings") == (200, ["neg", "sub/pos"])
    assert await server.json("GET", "/api/embeddings") == (200, ["neg", "sub/pos"])


def test_set_folder_and_add_extensions_at_run_time(make_kernel, tmp_path: Path) -> None:
    kernel = make_kernel(plugins=["models"])
    models = kernel.models
    touch(tmp_path / "models" / "unet" / "flux.gguf")
    touch(tmp_path / "models" / "unet" / "flux.safetensors")
    assert models.list_names("diffusion_models") == ["flux.safetensors"]
    models.add_extensions("unet", ["GGUF"])
    assert models.list_names("diffusion_models") == ["flux.gguf", "flux.safetensors"]
    assert ".gguf" in models.extensions("diffusion_models")
    # Adding suffixes to an accept-everything kind keeps it accepting everything.
    models.add_extensions("classifiers", [".onnx"])
    assert models.extensions("classifiers") == frozenset()

    touch(tmp_path / "ipa" / "face.bin")
    touch(tmp_path / "ipa" / "face.txt")
    models.set_folder("ipadapter", [tmp_path / "ipa", tmp_path / "ipa"], {"bin"})
    assert models.folder_paths("ipadapter") == [tmp_path / "ipa"]
    assert models.list_names("ipadapter") == ["face.bin"]
    models.set_folder("ipadapter", [tmp_path / "ipa"], [])
    assert models.list_names("ipadapter") == ["face.bin", "face.txt"]
    # Replacing a built-in kind's folders keeps its extensions when none are given.
    models.set_folder("vae", [tmp_path / "ipa"])
    assert models.folder_paths("vae") == [tmp_path / "ipa"]
    assert models.list_names("vae") == ["face.bin"]
