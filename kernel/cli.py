"""``comfykernel run | plugins list | plugins hooks`` plus commands plugins add.

Parsing happens in two passes: ``--plugins``/``--disable`` are read first to build the plugin
manager, whose ``add_options`` hooks then complete the parser (tox's approach).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from kernel.errors import StartupError
from kernel.event_loop import CHOICES
from kernel.plugins import PluginRecord, build_plugin_manager
from kernel.settings import apply_env_defaults, plugin_selection, settings_from_namespace

log = logging.getLogger("comfykernel")


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugins",
        default=None,
        metavar="all|a,b,c",
        help="plugins to enable: 'all' (default) or a comma list; env COMFYKERNEL_PLUGINS",
    )
    parser.add_argument(
        "--disable",
        action="append",
        default=None,
        metavar="NAME",
        help="disable a plugin (repeatable); env COMFYKERNEL_DISABLED_PLUGINS",
    )


def _port(value: str) -> int:
    # Out of range used to reach socket.bind and end in an OverflowError traceback.
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {port}")
    return port


def _positive_mb(value: str) -> float:
    # Zero or less would refuse every request body with 413.
    size = float(value)
    if not size > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of MB, not {value}")
    return size


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The flags ComfyUI users already script with; each maps onto a Settings field."""
    add = parser.add_argument
    add(
        "--listen",
        nargs="?",
        const="0.0.0.0,::",
        default=None,
        metavar="IP[,IP...]",
        help="addresses to listen on (default 127.0.0.1; bare flag: all interfaces)",
    )
    add("--port", type=_port, default=8188, help="port to listen on (default 8188)")
    add("--base-directory", default=None, help="base for models/, input/, output/, temp/, user/")
    add("--output-directory", default=None)
    add("--input-directory", default=None)
    add("--temp-directory", default=None)
    add("--user-directory", default=None)
    add("--models-directory", default=None)
    add(
        "--extra-model-paths-config",
        action="append",
        default=None,
        metavar="PATH",
        help="extra_model_paths.yaml files (repeatable)",
    )
    add(
        "--custom-nodes-dir",
        action="append",
        default=None,
        metavar="DIR",
        help="extra ComfyUI custom_nodes folders (repeatable; read by the comfy_compat plugin)",
    )
    add(
        "--enable-cors-header",
        nargs="?",
        const="*",
        default=None,
        metavar="ORIGIN",
        help="answer CORS for ORIGIN (bare flag: '*') instead of refusing cross-site writes",
    )
    add(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        default=None,
        metavar="NAME",
        help="extra Host names accepted while listening on loopback (repeatable)",
    )
    add(
        "--max-upload-size",
        type=_positive_mb,
        default=100.0,
        metavar="MB",
        help="request body limit in MB (default 100)",
    )
    add(
        "--max-queue-size",
        type=int,
        default=10000,
        metavar="N",
        help="queued prompts beyond which POST /prompt answers 503 (default 10000)",
    )
    add(
        "--max-prompt-nodes",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="stop a prompt whose graph grows past N nodes with its expansions (default 100000)",
    )
    add(
        "--max-expansion-depth",
        type=_positive_int,
        default=1_000,
        metavar="N",
        help="stop a prompt whose expansions nest deeper than N levels (default 1000)",
    )
    add(
        "--max-memory",
        type=float,
        default=None,
        metavar="GB",
        help="stop the running prompt when the server's memory passes GB (default 80%% of RAM; 0: no limit)",
    )
    add(
        "--event-loop",
        choices=CHOICES,
        default="auto",
        help="the server's event loop: uvloop when installed (auto, the default), uvloop, or asyncio",
    )
    add("--multi-user", action="store_true", help="per-user storage selected by the Comfy-User header")
    add("--cpu", action="store_true", help="run models on the CPU")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-classic", action="store_true", help="keep the results of the latest prompt")
    cache.add_argument("--cache-lru", type=int, default=0, metavar="N", help="keep at most N node results")
    cache.add_argument("--cache-none", action="store_true", help="re-run every node on every prompt")
    cache.add_argument(
        "--cache-ram",
        nargs="?",
        type=float,
        const=4.0,
        default=None,
        metavar="GB",
        help="evict cached results when free RAM drops below GB",
    )
    add("--disable-all-custom-nodes", action="store_true", help="load no ComfyUI custom_nodes packs")
    add("--disable-metadata", action="store_true", help="do not embed the workflow in saved files")
    add("--preview-method", default="none", choices=["none", "auto", "latent2rgb", "taesd"])
    add("--preview-size", type=int, default=512)
    add("--default-hashing-function", default="sha256", choices=["md5", "sha1", "sha256", "sha512"])
    add(
        "--feature-flag",
        action="append",
        default=None,
        metavar="KEY[=VALUE]",
        help="add or override a server feature flag (repeatable)",
    )
    add("--enable-manager", action="store_true", help="run ComfyUI-Manager (pip install comfyui_manager)")
    manager_ui = parser.add_mutually_exclusive_group()
    manager_ui.add_argument(
        "--disable-manager-ui",
        action="store_true",
        help="keep ComfyUI-Manager's background work but serve none of its routes",
    )
    manager_ui.add_argument(
        "--enable-manager-legacy-ui",
        action="store_true",
        help="ComfyUI-Manager's legacy web UI (implies --enable-manager)",
    )
    add(
        "--verbose",
        nargs="?",
        const="DEBUG",
        default="INFO",
        metavar="LEVEL",
        help="log level (bare flag: DEBUG)",
    )


def build_parser(pm: Any) -> argparse.ArgumentParser:
    from kernel.hooks import Hooks

    parser = argparse.ArgumentParser(
        prog="comfykernel", description="A plugin microkernel for ComfyUI's API."
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="serve the HTTP + WebSocket API")
    add_selection_options(run)
    add_server_options(run)
    Hooks(pm).add_options(run)
    run.set_defaults(func=cmd_run)
    plugins = sub.add_parser("plugins", help="inspect plugins")
    add_selection_options(plugins)
    psub = plugins.add_subparsers(dest="plugins_command")
    lst = psub.add_parser("list", help="every plugin: name, source, version, status, hooks")
    lst.add_argument("--json", action="store_true")
    # The server's options too: plugins discovered at build time (legacy packs) depend on them.
    add_server_options(lst)
    Hooks(pm).add_options(lst)
    lst.set_defaults(func=cmd_plugins_list)
    hooks = psub.add_parser("hooks", help="every hook and the plugins implementing it")
    hooks.set_defaults(func=cmd_plugins_hooks)
    Hooks(pm).register_commands(sub)
    return parser


def _preparse(argv: Sequence[str]) -> tuple[list[str] | None, list[str]]:
    pre = argparse.ArgumentParser(add_help=False)
    add_selection_options(pre)
    known, _ = pre.parse_known_args(argv)
    return plugin_selection(known.plugins, known.disable)


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from kernel.app import Kernel
    from kernel.server import run_until_signalled

    run_parser = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    apply_env_defaults(run_parser, args)
    known = {a.dest for a in run_parser._actions if a.dest in _SETTINGS_DESTS}
    settings = settings_from_namespace(args, known)
    logging.basicConfig(
        level=settings.verbose.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    kernel = Kernel(settings)
    return run_until_signalled(kernel)


def _records(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, PluginRecord]:
    """Records of a Kernel built (not served) from the arguments, discovered plugins included."""
    from kernel.app import Kernel

    plugins_parser = parser._subparsers._group_actions[0].choices["plugins"]  # type: ignore[union-attr]
    list_parser = plugins_parser._subparsers._group_actions[0].choices["list"]  # type: ignore[union-attr]
    apply_env_defaults(list_parser, args)
    known = {a.dest for a in list_parser._actions if a.dest in _SETTINGS_DESTS}
    return Kernel(settings_from_namespace(args, known)).plugin_records


def cmd_plugins_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    records = _records(args, parser)
    if args.json:
        print(json.dumps([r.to_json() for r in records.values()], indent=2))
        return 0
    for r in records.values():
        version = r.version or "-"
        line = f"{r.name:<16} {r.status:<9} {r.source:<11} {version:<10} {', '.join(r.hooks)}"
        if r.error:
            line += f"\n{'':<16} error: {r.error}"
        print(line)
    return 0


def cmd_plugins_hooks(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    selected, disabled = plugin_selection(args.plugins, args.disable)
    from kernel.hooks import Hooks

    pm, _ = build_plugin_manager(selected, disabled)
    for name, impls in Hooks(pm).implementations().items():
        print(f"{name:<26} {', '.join(impls) if impls else '-'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        selected, disabled = _preparse(argv)
        pm, _ = build_plugin_manager(selected, disabled)
        parser = build_parser(pm)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        func = args.func
        if func in (cmd_run, cmd_plugins_list, cmd_plugins_hooks):
            return int(func(args, parser) or 0)
        return int(func(args) or 0)
    except StartupError as exc:
        print(f"comfykernel: error: {exc}", file=sys.stderr)
        return 2


_SETTINGS_DESTS = frozenset(
    {
        "listen",
        "port",
        "plugins",
        "disable",
        "base_directory",
        "output_directory",
        "input_directory",
        "temp_directory",
        "user_directory",
        "models_directory",
        "extra_model_paths_config",
        "custom_nodes_dir",
        "enable_cors_header",
        "allowed_hosts",
        "max_upload_size",
        "max_queue_size",
        "max_prompt_nodes",
        "max_expansion_depth",
        "max_memory",
        "event_loop",
        "multi_user",
        "cpu",
        "cache_classic",
        "cache_lru",
        "cache_none",
        "cache_ram",
        "disable_all_custom_nodes",
        "disable_metadata",
        "preview_method",
        "preview_size",
        "default_hashing_function",
        "feature_flag",
        "verbose",
        "enable_manager",
        "disable_manager_ui",
        "enable_manager_legacy_ui",
    }
)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
