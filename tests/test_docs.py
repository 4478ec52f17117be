"""Docs and tests stay complete: every hook is documented and has a test_hook_<name>."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import kernel.hookspecs as hookspecs

ROOT = Path(__file__).resolve().parents[1]


def hook_specs() -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(func).parameters)
        for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(func, "comfykernel_spec")
    }


@pytest.mark.parametrize(("name", "args"), sorted(hook_specs().items()))
def test_plugin_hooks_are_documented(name: str, args: list[str]):
    docs = (ROOT / "docs" / "plugin_hooks.md").read_text()
    heading = f"## {name}({', '.join(args)})"
    assert heading in docs.splitlines(), f"docs/plugin_hooks.md lacks the heading {heading!r}"


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_plugin_hooks_have_tests(name: str):
    pattern = re.compile(rf"def test_hook_{name}\(")
    found = [p for p in (ROOT / "tests").rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert found, f"no test named test_hook_{name} under tests/"


def test_every_hook_has_a_docstring():
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(func, "comfykernel_spec"):
            assert func.__doc__ and len(func.__doc__.strip()) > 40, name


def test_only_hooks_module_calls_pm_hook():
    offenders = []
    for path in list((ROOT / "kernel").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py")):
        if path.name == "hooks.py" and path.parent.name == "kernel":
            continue
        if re.search(r"\bpm\.hook\.", path.read_text(encoding="utf-8")):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_kernel_never_imports_plugins():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "kernel").rglob("*.py")
        if re.search(r"^\s*(from|import)\s+plugins\b", p.read_text(encoding="utf-8"), re.M)
    ]
    assert offenders == []


def test_every_run_flag_is_in_the_operations_guide():
    """`comfykernel run --plugins all --help` lists no flag that docs/operations.md leaves out."""
    import subprocess
    import sys

    help_text = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from kernel.cli import main; sys.exit(main())",
            "run",
            "--plugins",
            "all",
            "--help",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", help_text, re.MULTILINE)) - {"--help"}
    assert len(flags) > 20, help_text
    guide = (ROOT / "docs" / "operations.md").read_text()
    missing = sorted(flag for flag in flags if f"`{flag}" not in guide)
    assert not missing, f"docs/operations.md does not describe {missing}"
