"""Build a tiny installed distribution on disk: a real entry point that importlib.metadata finds."""

from __future__ import annotations

from pathlib import Path


def make_distribution(root: Path, dist: str, plugins: dict[str, str], modules: dict[str, str]) -> Path:
    """Write ``<dist>-1.0.dist-info`` with ``comfykernel.plugins`` entry points, plus modules.

    ``plugins`` maps entry-point name → module name; ``modules`` maps module name → source.
    Put ``root`` on ``sys.path`` (or PYTHONPATH) to "install" it.
    """
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[comfykernel.plugins]"] + [f"{name} = {module}" for name, module in plugins.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    return root
