"""The reference server's model folder kinds: names, default directories, aliases, extensions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The extensions torch checkpoints come in ("pt set" in the reference).
PT_EXTENSIONS: frozenset[str] = frozenset(
    {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
)


@dataclass(frozen=True)
class FolderKind:
    name: str
    extensions: frozenset[str]
    # Directory names, relative to the models root (or to the base directory when ``under_base``).
    subdirs: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    under_base: bool = False


def _pt(name: str, *subdirs: str, aliases: tuple[str, ...] = ()) -> FolderKind:
    return FolderKind(name, PT_EXTENSIONS, subdirs or (name,), aliases)


# Order matters: GET /models lists the kinds in registration order, as the reference does.
FOLDER_KINDS: tuple[FolderKind, ...] = (
    _pt("checkpoints"),
    FolderKind("configs", frozenset({".yaml"}), ("configs",)),
    _pt("loras"),
    _pt("vae"),
    _pt("text_encoders", "text_encoders", "clip", aliases=("clip",)),
    _pt("diffusion_models", "unet", "diffusion_models", aliases=("unet",)),
    _pt("clip_vision"),
    _pt("style_models"),
    _pt("embeddings"),
    # "folder" is the reference's marker for directory-shaped models: no file ever matches it.
    FolderKind("diffusers", frozenset({"folder"}), ("diffusers",)),
    _pt("vae_approx"),
    _pt("controlnet", "controlnet", "t2i_adapter"),
    _pt("gligen"),
    _pt("upscale_models"),
    _pt("latent_upscale_models"),
    FolderKind("custom_nodes", frozenset(), ("custom_nodes",), under_base=True),
    FolderKind("datasets", frozenset(), ("datasets",), under_base=True),
    _pt("hypernetworks"),
    _pt("photomaker"),
    FolderKind("classifiers", frozenset(), ("classifiers",)),
    _pt("model_patches"),
    _pt("audio_encoders"),
    _pt("background_removal"),
    _pt("frame_interpolation"),
    _pt("geometry_estimation"),
    _pt("optical_flow"),
    _pt("detection"),
    FolderKind("fonts", frozenset({".ttf", ".otf"}), ("fonts",), under_base=True),
)

KINDS_BY_NAME: dict[str, FolderKind] = {kind.name: kind for kind in FOLDER_KINDS}


def register_all(register: Callable[..., None]) -> None:
    for kind in FOLDER_KINDS:
        register(kind.name, kind.extensions, aliases=kind.aliases, default_subdir=kind.subdirs[0])


def default_dirs(name: str, default_subdir: str | None, models_root: Path, base: Path) -> list[Path]:
    """Where a kind lives before any extra_model_paths.yaml: ours from the table, others' from the registry."""
    kind = KINDS_BY_NAME.get(name)
    if kind is None:
        return [models_root / (default_subdir or name)]
    root = base if kind.under_base else models_root
    return [root / subdir for subdir in kind.subdirs]
