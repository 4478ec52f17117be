"""The main.py command line maps onto ``comfykernel run`` flags."""

from __future__ import annotations

from plugins.comfy_compat.launcher import translate


def test_translate_maps_reference_flags():
    args, warnings = translate(
        [
            "--listen",
            "--port",
            "9000",
            "--extra-model-paths-config",
            "a.yaml",
            "b.yaml",
            "--cpu",
            "--highvram",
            "--x",
        ]
    )
    assert args[:3] == ["run", "--plugins", "all"]
    assert args[args.index("--listen") + 1] == "0.0.0.0,::"
    assert args[args.index("--port") + 1] == "9000"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--extra-model-paths-config"] == [
        "a.yaml",
        "b.yaml",
    ]
    assert "--cpu" in args and "--highvram" not in args
    assert any("--highvram" in w for w in warnings) and any("'--x'" in w for w in warnings)
