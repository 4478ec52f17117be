"""EasyCache / LazyCache (comfy_extras.nodes_easycache): a MODEL that skips evaluations whose
output would barely change (rules in :mod:`plugins.core_nodes.step_cache`)."""

from __future__ import annotations

from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import CoreNode


def _option(default: float, high: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"advanced": True, "default": default, "min": 0.0, "max": high, "step": 0.01})


class _Cache(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_easycache"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "execute"
    CATEGORY = "advanced/debug"
    EXPERIMENTAL = True
    KEY: ClassVar[str] = ""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "reuse_threshold": _option(0.2, 3.0),
                "start_percent": _option(0.15, 1.0),
                "end_percent": _option(0.95, 1.0),
                "verbose": ("BOOLEAN", {"advanced": True, "default": False}),
            }
        }

    def execute(
        self, model: Any, reuse_threshold: float, start_percent: float, end_percent: float, verbose: bool
    ) -> tuple[Any]:
        m = model.clone()
        m.model_options.setdefault("transformer_options", {})["easycache"] = self.holder(
            reuse_threshold, start_percent, end_percent, subsample_factor=8, offload_cache_diff=False, verbose=verbose
        )
        self.install(m)
        return (m,)

    @staticmethod
    def holder(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def install(self, model: Any) -> None:
        raise NotImplementedError


class EasyCache(_Cache):
    @staticmethod
    def holder(*args: Any, **kwargs: Any) -> Any:
        from plugins.core_nodes.step_cache import EasyCacheHolder

        return EasyCacheHolder(*args, **kwargs)

    def install(self, model: Any) -> None:
        from plugins.core_nodes.models.extension import WrappersMP
        from plugins.core_nodes.step_cache import (
            cache_sample_wrapper,
            easycache_calc_cond_batch_wrapper,
            easycache_forward_wrapper,
        )

        model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "easycache", cache_sample_wrapper)
        model.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "easycache", easycache_calc_cond_batch_wrapper)
        model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "easycache", easycache_forward_wrapper)


class LazyCache(_Cache):
    @staticmethod
    def holder(*args: Any, **kwargs: Any) -> Any:
        from plugins.core_nodes.step_cache import LazyCacheHolder

        return LazyCacheHolder(*args, **kwargs)

    def install(self, model: Any) -> None:
        from plugins.core_nodes.models.extension import WrappersMP
        from plugins.core_nodes.step_cache import cache_sample_wrapper, lazycache_predict_noise_wrapper

        model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "lazycache", cache_sample_wrapper)
        model.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, "lazycache", lazycache_predict_noise_wrapper)


NODES: dict[str, tuple[type, str | None]] = {
    "EasyCache": (EasyCache, "EasyCache"),
    "LazyCache": (LazyCache, "LazyCache"),
}
