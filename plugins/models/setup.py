"""Wiring the ModelPaths object into a kernel: configuration, default folders, embeddings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kernel import StashKey
from plugins.models.api import ModelPaths
from plugins.models.paths_config import load_configs

if TYPE_CHECKING:
    from kernel import Kernel

log = logging.getLogger("comfykernel.models")

MODEL_PATHS = StashKey[ModelPaths]()


def install(kernel: Kernel) -> ModelPaths:
    """Build the kernel's ModelPaths and queue the extra_model_paths.yaml folders on it.

    Runs in ``configure``, before folder kinds are registered: the yaml entries are replayed
    over the registered kinds when the table is first read.
    """
    settings = kernel.settings
    models = ModelPaths(kernel.model_folders, settings.models_path, settings.base_path)
    for extra in load_configs(settings.extra_model_paths_config, settings.base_path):
        log.info("extra model folder %s: %s (from %s)", extra.kind, extra.path, extra.source)
        models.add_folder(extra.kind, extra.path, extra.is_default)
    kernel.stash[MODEL_PATHS] = models
    kernel.models = models
    return models


def create_default_folders(kernel: Kernel) -> None:
    """Create the empty default folders under the models root, so users see where files go."""
    models = kernel.stash[MODEL_PATHS]
    root = kernel.settings.models_path
    for paths in models.all_folder_paths().values():
        for path in paths:
            if path.parent == root and not path.exists():
                try:
                    path.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    log.warning("cannot create model folder %s: %s", path, exc)


def embedding_names(kernel: Kernel) -> list[str]:
    return kernel.stash[MODEL_PATHS].embedding_names()
