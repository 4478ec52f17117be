"""extra_model_paths.yaml: parsing, and its folders served over HTTP (two bases and a default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel import StartupError
from plugins.models.paths_config import ExtraFolder, load_configs, parse_config
from tests.plugins.models.helpers import image_bytes, raw_get, touch

TWO_BASES = """
comfyui:
    base_path: {shared}
    is_default: true
    checkpoints: models/checkpoints
    loras: |
        models/loras
        models/loras_extra
    custom_nodes: custom_nodes
a1111:
    base_path: webui
    checkpoints: models/Stable-diffusion
    unet: models/unet
    my_new_kind: models/new
"""


def _write_config(tmp_path: Path) -> tuple[Path, Path, Path]:
    shared = tmp_path / "shared"
    webui = tmp_path / "conf" / "webui"
    config = tmp_path / "conf" / "extra_model_paths.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(TWO_BASES.format(shared=shared))
    return config, shared, webui


def test_parse_config_resolves_bases_lists_and_defaults(tmp_path: Path) -> None:
    config, shared, webui = _write_config(tmp_path)
    found = parse_config(config, config.read_text())
    assert found == [
        ExtraFolder("checkpoints", shared / "models/checkpoints", True, config),
        ExtraFolder("loras", shared / "models/loras", True, config),
        ExtraFolder("loras", shared / "models/loras_extra", True, config),
        ExtraFolder("custom_nodes", shared / "custom_nodes", True, config),
        # A relative base_path is relative to the yaml file's directory.
        ExtraFolder("checkpoints", webui / "models/Stable-diffusion", False, config),
        ExtraFolder("unet", webui / "models/unet", False, config),
        ExtraFolder("my_new_kind", webui / "models/new", False, config),
    ]


def test_parse_config_without_base_path_is_relative_to_the_file(tmp_path: Path) -> None:
    source = tmp_path / "cfg.yaml"
    found = parse_config(source, "x:\n  vae: local/vae\n  loras: /abs/loras\n  is_default: 'false'\nempty:\n")
    assert found == [
        ExtraFolder("vae", tmp_path / "local/vae", False, source),
        ExtraFolder("loras", Path("/abs/loras"), False, source),
    ]


@pytest.mark.parametrize(
    "text",
    ["x: [unclosed", "- just\n- a list\n", "x: 5\n", "x:\n  base_path: 3\n", "x:\n  loras: {a: b}\n"],
)
def test_parse_config_malformed_is_a_startup_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(StartupError, match="cfg.yaml"):
        parse_config(tmp_path / "cfg.yaml", text)


def test_missing_config_file_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="nope.yaml"):
        load_configs([str(tmp_path / "nope.yaml")], tmp_path)


def test_missing_config_stops_the_kernel_build(make_kernel, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="nope.yaml"):
        make_kernel(plugins=["models"], extra_model_paths_config=[str(tmp_path / "nope.yaml")])


def test_config_in_the_base_directory_is_read_without_a_flag(make_kernel, tmp_path: Path) -> None:
    (tmp_path / "extra_model_paths.yaml").write_text("here:\n  vae: /srv/vae\n")
    kernel = make_kernel(plugins=["models"])
    assert kernel.models.folder_paths("vae") == [tmp_path / "models" / "vae", Path("/srv/vae")]


async def test_two_bases_and_a_default_over_http(comfy_server, tmp_path: Path) -> None:
    config, shared, webui = _write_config(tmp_path)
    touch(tmp_path / "models" / "checkpoints" / "local.safetensors")
    touch(shared / "models" / "checkpoints" / "shared.safetensors")
    touch(webui / "models" / "Stable-diffusion" / "webui.ckpt")
    touch(webui / "models" / "Stable-diffusion" / "webui.png", image_bytes("PNG", (4, 4)))
    touch(shared / "models" / "loras_extra" / "extra.safetensors")
    touch(webui / "models" / "unet" / "flux.safetensors")
    touch(webui / "models" / "new" / "anything.bin")
    touch(webui / "models" / "new" / "readme.txt")
    server = await comfy_server(plugins=["models"], extra_model_paths_config=[str(config)])

    status, paths = await server.json("GET", "/internal/folder_paths")
    assert status == 200
    # is_default folders come first, then the built-in default, then the other base.
    assert paths["checkpoints"] == [
        str(shared / "models/checkpoints"),
        str(tmp_path / "models" / "checkpoints"),
        str(webui / "models/Stable-diffusion"),
    ]
    assert paths["loras"] == [
        str(shared / "models/loras_extra"),
        str(shared / "models/loras"),
        str(tmp_path / "models" / "loras"),
    ]
    # The legacy name in the yaml lands on the kind it stands for.
    assert paths["diffusion_models"][-1] == str(webui / "models/unet")
    assert paths["custom_nodes"] == [str(shared / "custom_nodes"), str(tmp_path / "custom_nodes")]
    assert paths["my_new_kind"] == [str(webui / "models/new")]

    assert await server.json("GET", "/models/checkpoints") == (
        200,
        ["local.safetensors", "shared.safetensors", "webui.ckpt"],
    )
    assert await server.json("GET", "/models/loras") == (200, ["extra.safetensors"])
    assert await server.json("GET", "/models/diffusion_models") == (200, ["flux.safetensors"])
    # A kind only the yaml knows is listed last and accepts every file.
    kinds = (await server.json("GET", "/models"))[1]
    assert kinds[-1] == "my_new_kind"
    assert await server.json("GET", "/models/my_new_kind") == (200, ["anything.bin", "readme.txt"])

    _, files = await server.json("GET", "/experiment/models/checkpoints")
    assert [(f["name"], f["pathIndex"]) for f in files] == [
        ("shared.safetensors", 0),
        ("local.safetensors", 1),
        ("webui.ckpt", 2),
    ]
    status, _, ctype = await raw_get(server, "/experiment/models/preview/checkpoints/2/webui.ckpt")
    assert (status, ctype) == (200, "image/webp")
    # The same name under another folder index has no preview.
    assert (await raw_get(server, "/experiment/models/preview/checkpoints/1/webui.ckpt"))[0] == 404
    assert (await raw_get(server, "/experiment/models/preview/checkpoints/3/webui.ckpt"))[0] == 404
