"""ComfyUI's ``nodes`` module: the kernel's live node registry under the reference's names.

``from nodes import KSampler`` gives the registered class of that name (core nodes included);
``NODE_CLASS_MAPPINGS`` is a read-only view of every registered node, always current.
``common_ksampler`` is the reference's sampling helper over the core KSampler's own plumbing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from comfykernel_compat_runtime import kernel as _kernel

# The reference's limit on widths and heights (the core nodes use the same number).
MAX_RESOLUTION = 16384


class _LiveMapping(Mapping[str, Any]):
    def __init__(self, pick: str) -> None:
        self._pick = pick

    def _entries(self) -> dict[str, Any]:
        return {entry.name: entry for entry in _kernel().nodes}

    def __getitem__(self, name: str) -> Any:
        entry = _kernel().nodes.get(name)
        if entry is None:
            raise KeyError(name)
        return self._value(entry)

    def _value(self, entry: Any) -> Any:
        if self._pick == "cls":
            return entry.cls
        return entry.display_name or entry.name

    def __iter__(self) -> Iterator[str]:
        return iter(_kernel().nodes.names())

    def __len__(self) -> int:
        return len(_kernel().nodes)

    def __repr__(self) -> str:
        return f"<live {self._pick} view of {len(self)} nodes>"


NODE_CLASS_MAPPINGS: Mapping[str, type] = _LiveMapping("cls")
NODE_DISPLAY_NAME_MAPPINGS: Mapping[str, str] = _LiveMapping("display_name")


def __getattr__(name: str) -> Any:
    entry = _kernel().nodes.get(name)
    if entry is None:
        raise AttributeError(f"module 'nodes' has no attribute {name!r}")
    return entry.cls


def common_ksampler(
    model: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list[Any],
    negative: list[Any],
    latent: dict[str, Any],
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> tuple[dict[str, Any]]:
    """Sample the LATENT ``latent`` as the core KSampler / KSamplerAdvanced do: ``(new LATENT,)``,
    with the same noise, progress, interruption and latent previews."""
    from comfy.sample import fix_empty_latent_channels

    from plugins.core_nodes.ksampler import preview_options, run_ksampler

    latent = dict(latent)
    latent["samples"] = fix_empty_latent_channels(
        model, latent["samples"], latent.get("downscale_ratio_spacial")
    )
    out = run_ksampler(
        model,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        latent,
        denoise=denoise,
        disable_noise=disable_noise,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
        preview=preview_options(_kernel()),
    )
    return (out,)


def interrupt_processing(value: bool = True) -> None:
    if value and _kernel().executor is not None:
        _kernel().executor.interrupt()
