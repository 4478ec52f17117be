"""A plugin module loaded through COMFYKERNEL_EXTRA_PLUGINS by test_extra_plugins_env."""

from __future__ import annotations

from kernel import hookimpl


@hookimpl
def register_feature_flags():
    return {"env_sample": True}
