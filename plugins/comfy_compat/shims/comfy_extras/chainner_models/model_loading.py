"""``comfy_extras.chainner_models.model_loading``: upscale models from state dicts, via spandrel."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("comfykernel.compat")


def load_state_dict(state_dict: Mapping[str, Any]) -> Any:
    """The spandrel model descriptor for ``state_dict``, in eval mode (spandrel raises
    ``UnsupportedModelError`` for an architecture it does not know)."""
    from spandrel import ModelLoader

    log.warning("comfy_extras.chainner_models is deprecated and has been replaced by the spandrel library.")
    return ModelLoader().load_from_state_dict(dict(state_dict)).eval()
