"""ComfyUI-Manager (the PyPI ``comfyui_manager`` package, from the test extras) run by ``--enable-manager``.

The servers are real processes started the reference's way (``python -m comfykernel --enable-manager``)
on a fresh base directory; the machine has no network, so the Manager works from its bundled lists.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path

import pytest

from kernel.version import COMFYUI_API_VERSION
from tests.compat.helpers import EP_SITE, ROOT, LauncherServer, free_port

try:
    import pytest_asyncio

    module_fixture = pytest_asyncio.fixture(scope="module", loop_scope="module")
    module_loop = pytest.mark.asyncio(loop_scope="module")
except (ImportError, TypeError):  # pragma: no cover
    raise

pytestmark = module_loop

# A pack whose prestartup script and import record what of the Manager had run by then.
DEMO_PRESTARTUP = """
import sys
from pathlib import Path
seen = "comfyui_manager.prestartup_script" in sys.modules
(Path(__file__).parent / "prestartup_saw_manager").write_text(str(seen))
"""
DEMO_INIT = """
import sys
from pathlib import Path
seen = "comfyui_manager.glob.manager_server" in sys.modules
(Path(__file__).parent / "import_saw_manager_routes").write_text(str(seen))


class ManagerDemoNode:
    CATEGORY = "compat"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (1,)


NODE_CLASS_MAPPINGS = {"ManagerDemoNode": ManagerDemoNode}
"""
# A stale git-clone copy of the Manager in custom_nodes: the package must keep it from loading.
STALE_PRESTARTUP = """
from pathlib import Path
(Path(__file__).parent / "stale_prestartup_ran").write_text("yes")
"""
STALE_INIT = "raise RuntimeError('the stale ComfyUI-Manager clone was imported')\n"


def make_base(root: Path) -> Path:
    base = root / "comfy"
    demo = base / "custom_nodes" / "demo_pack"
    demo.mkdir(parents=True)
    (demo / "prestartup_script.py").write_text(DEMO_PRESTARTUP)
    (demo / "__init__.py").write_text(DEMO_INIT)
    # What a registry (CNR) install leaves: the Manager lists such packs by these two files.
    (demo / "pyproject.toml").write_text('[project]\nname = "demo-pack"\nversion = "1.2"\n')
    (demo / ".tracking").write_text("")
    stale = base / "custom_nodes" / "ComfyUI-Manager"
    stale.mkdir()
    (stale / "prestartup_script.py").write_text(STALE_PRESTARTUP)
    (stale / "__init__.py").write_text(STALE_INIT)
    return base


class ShadowedServer(LauncherServer):
    """A launcher server whose ``sys.path`` starts with ``first`` (to shadow an installed package)."""

    def __init__(self, args: list[str], log_path: Path, first: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(first), str(EP_SITE), str(ROOT)]))
        env.pop("COMFYKERNEL_PLUGINS", None)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "comfykernel", "--listen", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.session = None


async def _started(server: LauncherServer) -> AsyncIterator[LauncherServer]:
    try:
        await server.wait_ready()
        yield server
    finally:
        await server.stop()


@module_fixture
async def manager(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LauncherServer]:
    root = tmp_path_factory.mktemp("manager")
    server = LauncherServer(["--enable-manager", "--base-directory", str(make_base(root))], root / "log")
    async for started in _started(server):
        yield started


@module_fixture
async def no_ui(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LauncherServer]:
    root = tmp_path_factory.mktemp("manager_no_ui")
    args = ["--enable-manager", "--disable-manager-ui", "--base-directory", str(make_base(root))]
    async for started in _started(LauncherServer(args, root / "log")):
        yield started


@module_fixture
async def legacy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LauncherServer]:
    root = tmp_path_factory.mktemp("manager_legacy")
    # The legacy UI flag alone: it implies --enable-manager, as on the reference.
    args = ["--enable-manager-legacy-ui", "--base-directory", str(make_base(root))]
    async for started in _started(LauncherServer(args, root / "log")):
        yield started


@module_fixture
async def missing(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LauncherServer]:
    root = tmp_path_factory.mktemp("manager_missing")
    # What `import comfyui_manager` raises when the package is not installed.
    shadow = root / "shadow" / "comfyui_manager"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'comfyui_manager'\", name='comfyui_manager')\n"
    )
    args = ["--enable-manager", "--base-directory", str(make_base(root))]
    async for started in _started(ShadowedServer(args, root / "log", root / "shadow")):
        yield started


async def _text(server: LauncherServer, path: str) -> tuple[int, str]:
    async with server.get(path) as resp:
        return resp.status, await resp.text()


# --- --enable-manager --------------------------------------------------------------------------


async def test_version_is_the_installed_package(manager: LauncherServer):
    status, text = await _text(manager, "/v2/manager/version")
    assert status == 200
    assert re.fullmatch(r"V\d+\.\d+(\.\d+)?\S*", text), text
    assert text == "V" + metadata.version("comfyui_manager")
    # Like every route a pack registers, it is also served under /api.
    assert await _text(manager, "/api/v2/manager/version") == (200, text)


async def test_installed_lists_the_packs_in_custom_nodes(manager: LauncherServer):
    status, body = await manager.json("GET", "/v2/customnode/installed")
    assert status == 200
    assert isinstance(body, dict)
    assert body["demo_pack"] == {"ver": "1.2.0", "cnr_id": "demo-pack", "aux_id": None, "enabled": True}
    # The packs found at startup (what was imported) answer in the same shape.
    status, imported = await manager.json("GET", "/v2/customnode/installed?mode=imported")
    assert status == 200
    assert imported["demo_pack"] == body["demo_pack"]


async def test_queue_snapshot_and_db_mode(manager: LauncherServer):
    status, queue = await manager.json("GET", "/v2/manager/queue/status")
    assert status == 200
    assert queue == {
        "total_count": 0,
        "done_count": 0,
        "in_progress_count": 0,
        "pending_count": 0,
        "is_processing": False,
    }
    status, snapshots = await manager.json("GET", "/v2/snapshot/getlist")
    assert status == 200
    assert snapshots == {"items": []}
    status, mode = await _text(manager, "/v2/manager/db_mode")
    assert status == 200
    assert mode in {"cache", "channel", "local", "remote"}


async def test_offline_the_manager_works_from_its_bundled_lists(manager: LauncherServer):
    # This machine has no network: the Manager says its startup fetch failed and carries on.
    assert "[ComfyUI-Manager] Failed to perform initial fetching" in manager.log
    status, mappings = await manager.json("GET", "/v2/customnode/getmappings?mode=cache")
    assert status == 200
    assert len(mappings) > 100
    nodes, meta = next(iter(mappings.values()))
    assert isinstance(nodes, list) and "title_aux" in meta


async def test_reference_order_prestartup_then_pack_prestartup_then_start_then_imports(
    manager: LauncherServer, tmp_path_factory: pytest.TempPathFactory
):
    log = manager.log
    assert "[PRE] ComfyUI-Manager" in log
    assert "[START] ComfyUI-Manager" in log
    assert log.index("[PRE] ComfyUI-Manager") < log.index("[START] ComfyUI-Manager")
    demo = _base_of(manager) / "custom_nodes" / "demo_pack"
    assert (demo / "prestartup_saw_manager").read_text() == "True"
    assert (demo / "import_saw_manager_routes").read_text() == "True"


async def test_stale_manager_clone_is_blocked(manager: LauncherServer):
    stale = _base_of(manager) / "custom_nodes" / "ComfyUI-Manager"
    assert f"Blocked by policy: {stale}" in manager.log
    assert not (stale / "stale_prestartup_ran").exists()
    assert "stale ComfyUI-Manager clone was imported" not in manager.log
    status, info = await manager.json("GET", "/object_info/ManagerDemoNode")
    assert status == 200 and "ManagerDemoNode" in info


async def test_web_ui_is_told_the_manager_runs(manager: LauncherServer):
    status, features = await manager.json("GET", "/features")
    assert status == 200
    # The frontend's getManagerUIState: --enable-manager in argv and both flags give the new UI.
    assert features["extension"]["manager"] == {"supports_v4": True, "supports_csrf_post": True}
    status, stats = await manager.json("GET", "/system_stats")
    assert "--enable-manager" in stats["system"]["argv"]
    client_id, ws = await manager.ws()
    await ws.send_json({"type": "feature_flags", "data": {"supports_manager_v4_ui": True}})
    reply = await ws.receive_json(timeout=10)
    await ws.close()
    assert reply["type"] == "feature_flags"
    assert reply["data"]["extension"]["manager"]["supports_v4"] is True


async def test_manager_config_lives_in_the_user_directory(manager: LauncherServer):
    config = _base_of(manager) / "user" / "__manager" / "config.ini"
    assert config.is_file()
    assert "db_mode" in config.read_text()


# --- --disable-manager-ui ----------------------------------------------------------------------


async def test_disable_manager_ui_serves_no_manager_routes(no_ui: LauncherServer):
    for path in ("/v2/manager/version", "/v2/customnode/installed", "/v2/manager/queue/status"):
        status, _ = await _text(no_ui, path)
        assert status == 404, path
    log = no_ui.log
    # As the reference: the package is imported and prestarted, start() is not called.
    assert "[PRE] ComfyUI-Manager" in log
    assert "[START] ComfyUI-Manager" not in log
    stale = _base_of(no_ui) / "custom_nodes" / "ComfyUI-Manager"
    assert f"Blocked by policy: {stale}" in log
    status, features = await no_ui.json("GET", "/features")
    assert features["extension"]["manager"]["supports_v4"] is True


# --- --enable-manager-legacy-ui --------------------------------------------------------------------


async def test_legacy_ui_serves_the_managers_own_web_extension(legacy: LauncherServer):
    status, body = await legacy.json("GET", "/v2/manager/is_legacy_manager_ui")
    assert (status, body) == (200, {"is_legacy_manager_ui": True})
    status, extensions = await legacy.json("GET", "/extensions")
    assert status == 200
    assert "/extensions/comfyui-manager-legacy/comfyui-manager.js" in extensions
    async with legacy.get("/extensions/comfyui-manager-legacy/comfyui-manager.js") as resp:
        assert resp.status == 200
        assert "javascript" in resp.content_type
    assert "[ComfyUI-Manager] Legacy UI is enabled." in legacy.log


async def test_new_ui_reports_it_is_not_the_legacy_one(manager: LauncherServer):
    status, body = await manager.json("GET", "/v2/manager/is_legacy_manager_ui")
    assert (status, body) == (200, {"is_legacy_manager_ui": False})
    status, extensions = await manager.json("GET", "/extensions")
    assert not [path for path in extensions if "comfyui-manager" in path]


# --- the package is not installed ---------------------------------------------------------------


async def test_without_the_package_the_server_runs_and_says_how_to_install(missing: LauncherServer):
    log = missing.log
    assert "-m pip install comfyui_manager" in log
    status, _ = await _text(missing, "/v2/manager/version")
    assert status == 404
    status, features = await missing.json("GET", "/features")
    assert status == 200
    assert "extension" not in features
    # No policy applies: the clone in custom_nodes is imported (and fails as it was written to).
    assert "Blocked by policy" not in log
    assert "stale ComfyUI-Manager clone was imported" in log
    status, info = await missing.json("GET", "/object_info/ManagerDemoNode")
    assert status == 200 and "ManagerDemoNode" in info


def _base_of(server: LauncherServer) -> Path:
    argv = server.proc.args
    assert isinstance(argv, list)
    return Path(argv[argv.index("--base-directory") + 1])


async def test_cli_args_shim_mirrors_the_kernel_settings(make_kernel):
    kernel = make_kernel(plugins=["comfy_compat", "models"], port=8321, preview_method="taesd", cache_lru=7)
    try:
        cli_args = importlib.import_module("comfy.cli_args")
        args = cli_args.args
        assert args.port == 8321
        assert args.listen == "127.0.0.1"
        assert args.base_directory == str(kernel.settings.base_path)
        assert args.preview_method is cli_args.LatentPreviewMethod.TAESD
        assert args.cache_lru == 7
        assert args.enable_manager is False and args.disable_manager_ui is False
        # Reference-only switches are there at their defaults, for packs that branch on them.
        assert args.highvram is False and args.front_end_version == cli_args.DEFAULT_VERSION_STRING
        flags = importlib.import_module("comfy_api.feature_flags")
        assert flags.get_server_features() == {
            "supports_preview_metadata": True,
            "max_upload_size": kernel.settings.max_upload_bytes,
        }
    finally:
        await kernel.hooks.shutdown(kernel)


async def test_app_shims_describe_the_running_server(comfy_server):
    await comfy_server(plugins=["comfy_compat", "models", "frontend_ext"])
    frontend = importlib.import_module("app.frontend_management").FrontendManager
    assert frontend.get_required_frontend_version() == metadata.version("comfyui-frontend-package")
    served = Path(frontend.init_frontend("comfyanonymous/ComfyUI@latest"))
    assert (served / "index.html").is_file()
    assert importlib.import_module("comfyui_version").__version__ == COMFYUI_API_VERSION
    logger = importlib.import_module("app.logger")
    logger.log_startup_warning("compat: a startup warning from a pack")
    logs = logger.get_logs()
    assert logs is not None
    assert any("compat: a startup warning from a pack" in entry["m"] for entry in logs)


async def test_manager_flags_parse_as_on_the_reference(capsys: pytest.CaptureFixture[str]):
    from kernel.cli import main
    from kernel.settings import settings_from_namespace
    from plugins.comfy_compat.launcher import translate

    run_args, warnings = translate(["--enable-manager", "--disable-manager-ui"])
    assert warnings == []
    assert run_args[-2:] == ["--enable-manager", "--disable-manager-ui"]
    # The two UI flags exclude each other, as in the reference's parser: a usage error, exit 2.
    with pytest.raises(SystemExit) as exited:
        main(["run", "--disable-manager-ui", "--enable-manager-legacy-ui"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    names = {"enable_manager", "disable_manager_ui", "enable_manager_legacy_ui"}
    namespace = argparse.Namespace(
        enable_manager=False, disable_manager_ui=False, enable_manager_legacy_ui=True
    )
    settings = settings_from_namespace(namespace, names)
    assert settings.enable_manager is True and settings.enable_manager_legacy_ui is True
