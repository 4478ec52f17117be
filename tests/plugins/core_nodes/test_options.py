"""The core_nodes command-line option: ``--preview-interval``, the latent preview rate."""

from __future__ import annotations

import pytest

from kernel.cli import build_parser
from kernel.plugins import build_plugin_manager
from kernel.settings import settings_from_namespace
from plugins.core_nodes.nodes.sampling import KSampler


def _settings(*argv: str):  # type: ignore[no-untyped-def]
    pm, _ = build_plugin_manager(["core_nodes"], [], [])
    return settings_from_namespace(build_parser(pm).parse_args(["run", *argv]), {"port"})


def test_preview_interval_is_a_server_option(make_kernel) -> None:  # type: ignore[no-untyped-def]
    settings = _settings("--preview-interval", "0.5")
    assert settings.extra["preview_interval"] == 0.5
    kernel = make_kernel(preview_method="auto", extra={"preview_interval": 0.5})
    bound = type("KSampler", (KSampler,), {"KERNEL": kernel})
    options = bound._preview()
    assert options.enabled and options.min_interval == 0.5
    assert _settings().extra["preview_interval"] == 0.0


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_preview_interval_refuses_nonsense(value: str) -> None:
    with pytest.raises(SystemExit):
        _settings("--preview-interval", value)


def test_an_odd_preview_interval_in_settings_means_every_step(make_kernel) -> None:  # type: ignore[no-untyped-def]
    kernel = make_kernel(preview_method="auto", extra={"preview_interval": "soon"})
    bound = type("KSampler", (KSampler,), {"KERNEL": kernel})
    assert bound._preview().min_interval == 0.0
