"""COMFYKERNEL_EXTRA_PLUGINS registers ``name=module`` plugins as if they were entry points."""

from __future__ import annotations

import pytest

from kernel import UsageError
from kernel.plugins import ENV_EXTRA_PLUGINS
from kernel.testing import build_kernel


def test_env_plugin_is_selectable_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_EXTRA_PLUGINS, " sample = tests.kernel.envplugin_sample ,")
    kernel = build_kernel(tmp_path, ["sample"])
    assert kernel.has_plugin("sample")
    assert kernel.feature_flags["env_sample"] is True
    assert kernel.plugin_records["sample"].source == "env"


def test_env_plugin_not_selected_stays_off(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_EXTRA_PLUGINS, "sample=tests.kernel.envplugin_sample")
    kernel = build_kernel(tmp_path, [])
    assert not kernel.has_plugin("sample")
    assert kernel.plugin_records["sample"].status == "available"


@pytest.mark.parametrize("value", ["justaname", "=mod", "core=tests.kernel.envplugin_sample"])
def test_malformed_env_plugins_are_usage_errors(monkeypatch, tmp_path, value):
    monkeypatch.setenv(ENV_EXTRA_PLUGINS, value)
    with pytest.raises(UsageError, match=ENV_EXTRA_PLUGINS):
        build_kernel(tmp_path, [])
