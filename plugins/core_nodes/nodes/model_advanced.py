"""The reference's model-sampling and compute patch nodes (``comfy_extras.nodes_model_advanced``)
and TorchCompileModel (``comfy_extras.nodes_torch_compile``).

Each clones the MODEL and changes it through the MODEL's patch API only, as the reference does:

* the ModelSampling* nodes build a schedule + prediction-type class
  (:func:`~plugins.core_nodes.sampling.model_sampling.model_sampling_class`) and install it with
  ``add_object_patch("model_sampling", ...)`` (edm_playground_v2.5 also ``"latent_format"``);
  the samplers, the schedulers and the UNet runner read both through the MODEL;
* ModelNoiseScale rebuilds the MODEL's flow sampling with another ``noise_scale``;
* ModelComputeDtype calls ``set_model_compute_dtype`` (the ``manual_cast_dtype`` object patch);
* TorchCompileModel registers a ``diffusion_model`` wrapper (key ``"torch.compile"``) that runs
  the network's forward through ``torch.compile``, compiled at the first call, and keeps the
  compile arguments in ``model_options["torch_compile_kwargs"]`` where packs look for them.

Method names and return tuples are the reference's, since packs call ``ModelSamplingSD3().patch(
model, 3.0)[0]`` and the like.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from plugins.core_nodes.contracts import LatentFormat
from plugins.core_nodes.nodes.common import MAX_RESOLUTION, ClassExecute, CoreNode

if TYPE_CHECKING:
    import torch

_MODULE = "comfy_extras.nodes_model_advanced"
COMPUTE_DTYPES = ["default", "fp32", "fp16", "bf16"]
EDM_SAMPLINGS = ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]
TORCH_COMPILE_BACKENDS = ["inductor", "cudagraphs"]
# Where the reference keeps a MODEL's torch.compile wrapper and arguments.
COMPILE_KEY = "torch.compile"
TORCH_COMPILE_KWARGS = "torch_compile_kwargs"
# Flux's shift grows linearly with the number of 2x2 latent patches between these two counts.
_FLUX_BASE_PATCHES = 256
_FLUX_MAX_PATCHES = 4096
_FLUX_PIXELS_PER_PATCH = 8 * 8 * 2 * 2


class StandardisedLatentFormat(LatentFormat):
    """A latent format normalising each channel by a mean and a standard deviation before the
    scale (Playground v2.5's SDXL latents)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], **fields: Any) -> None:
        super().__init__(**fields)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def _stats(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        shape = (1, len(self.mean)) + (1,) * (latent.ndim - 2)
        mean = torch.tensor(self.mean, dtype=latent.dtype, device=latent.device).view(shape)
        std = torch.tensor(self.std, dtype=latent.dtype, device=latent.device).view(shape)
        return mean, std

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latent)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latent)
        return latent * std / self.scale_factor + mean


# Playground v2.5's published latent statistics and RGB preview fit.
PLAYGROUND_2_5 = StandardisedLatentFormat(
    mean=(-1.6574, 1.886, -1.383, 2.5155),
    std=(8.4927, 5.9022, 6.5498, 5.2299),
    name="SDXL_Playground_2_5",
    channels=4,
    scale_factor=0.5,
    rgb_factors=(
        (0.3920, 0.4054, 0.4549),
        (-0.2634, -0.0196, 0.0653),
        (0.0568, 0.1687, -0.0755),
        (-0.3112, -0.2359, -0.2076),
    ),
)


def _model_config(model: Any) -> Any:
    """The checkpoint's config (its ``sampling_settings`` seed the new sampling), if any."""
    return getattr(getattr(model, "model", None), "model_config", None)


def _install(model: Any, sampling: Any, latent_format: Any = None) -> Any:
    m = model.clone()
    m.add_object_patch("model_sampling", sampling)
    if latent_format is not None:
        m.add_object_patch("latent_format", latent_format)
    return m


def flux_shift(max_shift: float, base_shift: float, width: int, height: int) -> float:
    """Flux's resolution-dependent shift: ``base_shift`` at 256 latent patches, ``max_shift`` at
    4096, linear in the patch count ``width * height / 256`` in between and beyond."""
    slope = (max_shift - base_shift) / (_FLUX_MAX_PATCHES - _FLUX_BASE_PATCHES)
    intercept = base_shift - slope * _FLUX_BASE_PATCHES
    return (width * height / _FLUX_PIXELS_PER_PATCH) * slope + intercept


class _ModelPatch(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    CATEGORY = "model/patch"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"


def _shift(default: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.01})


def _sigma(default: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1000.0, "step": 0.001, "round": False, "advanced": True})


class ModelSamplingStableCascade(_ModelPatch):
    CATEGORY = "model/patch/stable cascade"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "shift": _shift(2.0)}}

    def patch(self, model: Any, shift: float) -> tuple[Any]:
        from plugins.core_nodes.sampling import model_sampling as ms

        sampling = ms.model_sampling_class(ms.StableCascadeSampling, ms.EPS)(_model_config(model))
        sampling.set_parameters(float(shift))
        return (_install(model, sampling),)


class ModelSamplingSD3(_ModelPatch):
    CATEGORY = "model/patch/stable diffusion"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "shift": _shift(3.0)}}

    def patch(self, model: Any, shift: float, multiplier: float = 1000) -> tuple[Any]:
        from plugins.core_nodes.sampling import model_sampling as ms

        original = model.get_model_object("model_sampling")
        sampling = ms.model_sampling_class(ms.ModelSamplingDiscreteFlow, ms.CONST)(_model_config(model))
        sampling.set_parameters(shift=float(shift), multiplier=multiplier)
        # A noise scale set before (the model's own or ModelNoiseScale's) survives a new shift.
        if hasattr(original, "noise_scale"):
            sampling.set_noise_scale(original.noise_scale)
        return (_install(model, sampling),)


class ModelSamplingAuraFlow(ModelSamplingSD3):
    CATEGORY = "model/patch"
    FUNCTION = "patch_aura"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "shift": _shift(1.73)}}

    def patch_aura(self, model: Any, shift: float) -> tuple[Any]:
        # AuraFlow's network takes the flow time itself (0..1) as its timestep.
        return self.patch(model, shift, multiplier=1.0)


class ModelSamplingFlux(_ModelPatch):
    CATEGORY = "model/patch/flux"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def size() -> tuple[str, dict[str, Any]]:
            return ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 8})

        return {
            "required": {
                "model": ("MODEL",),
                "max_shift": ("FLOAT", {"default": 1.15, "min": 0.0, "max": 100.0, "step": 0.01, "advanced": True}),
                "base_shift": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0, "step": 0.01, "advanced": True}),
                "width": size(),
                "height": size(),
            }
        }

    def patch(self, model: Any, max_shift: float, base_shift: float, width: int, height: int) -> tuple[Any]:
        from plugins.core_nodes.sampling import model_sampling as ms

        sampling = ms.model_sampling_class(ms.ModelSamplingFlux, ms.CONST)(_model_config(model))
        sampling.set_parameters(shift=flux_shift(max_shift, base_shift, width, height))
        return (_install(model, sampling),)


class ModelSamplingContinuousEDM(_ModelPatch):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "sampling": (list(EDM_SAMPLINGS),),
                "sigma_max": _sigma(120.0),
                "sigma_min": _sigma(0.002),
            }
        }

    def patch(self, model: Any, sampling: str, sigma_max: float, sigma_min: float) -> tuple[Any]:
        from plugins.core_nodes.sampling import model_sampling as ms

        schedule: type = ms.ModelSamplingContinuousEDM
        latent_format = None
        sigma_data = 1.0
        if sampling == "eps":
            prediction: type = ms.EPS
        elif sampling == "v_prediction":
            prediction = ms.V_PREDICTION
        elif sampling in ("edm", "edm_playground_v2.5"):
            prediction, sigma_data = ms.EDM, 0.5
            if sampling == "edm_playground_v2.5":
                latent_format = PLAYGROUND_2_5
        elif sampling == "cosmos_rflow":
            schedule, prediction = ms.ModelSamplingCosmosRFlow, ms.COSMOS_RFLOW
        else:
            raise ValueError(f"unknown sampling {sampling!r}; expected one of {EDM_SAMPLINGS}")
        _check_sigmas(sigma_min, sigma_max)
        model_sampling = ms.model_sampling_class(schedule, prediction)(_model_config(model))
        model_sampling.set_parameters(float(sigma_min), float(sigma_max), sigma_data)
        return (_install(model, model_sampling, latent_format),)


class ModelSamplingContinuousV(_ModelPatch):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "sampling": (["v_prediction"],),
                "sigma_max": _sigma(500.0),
                "sigma_min": _sigma(0.03),
            }
        }

    def patch(self, model: Any, sampling: str, sigma_max: float, sigma_min: float) -> tuple[Any]:
        from plugins.core_nodes.sampling import model_sampling as ms

        if sampling != "v_prediction":
            raise ValueError(f"unknown sampling {sampling!r}; expected 'v_prediction'")
        _check_sigmas(sigma_min, sigma_max)
        model_sampling = ms.model_sampling_class(ms.ModelSamplingContinuousV, ms.V_PREDICTION)(_model_config(model))
        model_sampling.set_parameters(float(sigma_min), float(sigma_max), 1.0)
        return (_install(model, model_sampling),)


def _check_sigmas(sigma_min: float, sigma_max: float) -> None:
    # The table is log-linear: a zero end would make every sigma 0 or infinite.
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError(f"sigma_min and sigma_max must be above 0 (got {sigma_min}, {sigma_max})")


class ModelNoiseScale(_ModelPatch):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "noise_scale": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 64.0,
                        "step": 0.01,
                        "tooltip": "The scale of the noise the model was trained on, relative to unit noise.",
                    },
                ),
            }
        }

    def patch(self, model: Any, noise_scale: float) -> tuple[Any]:
        original = model.get_model_object("model_sampling")
        if not hasattr(original, "set_noise_scale") or not hasattr(original, "multiplier"):
            raise ValueError(
                "ModelNoiseScale needs a flow model sampling with a shift (SD3 / AuraFlow style, or "
                f"ModelSamplingSD3 / ModelSamplingAuraFlow before it); this MODEL's is {type(original).__name__}"
            )
        m = model.clone()
        sampling = type(original)(_model_config(m))
        sampling.set_parameters(shift=original.shift, multiplier=original.multiplier)
        sampling.set_noise_scale(float(noise_scale))
        m.add_object_patch("model_sampling", sampling)
        return (m,)


class ModelComputeDtype(_ModelPatch):
    CATEGORY = "advanced/debug"
    SEARCH_ALIASES: ClassVar[list[str]] = ["model precision", "change dtype"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "dtype": (list(COMPUTE_DTYPES), {"advanced": True})}}

    def patch(self, model: Any, dtype: str) -> tuple[Any]:
        m = model.clone()
        m.set_model_compute_dtype(compute_dtype(dtype))
        return (m,)


def compute_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a ModelComputeDtype choice (None: the model's own)."""
    import torch

    dtypes: dict[str, torch.dtype | None] = {
        "default": None,
        "fp32": torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
    }
    try:
        return dtypes[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {COMPUTE_DTYPES}") from None


# --- torch.compile -------------------------------------------------------------------------------


def torch_compile_wrapper(compile_kwargs: dict[str, Any]) -> Any:
    """A ``diffusion_model`` wrapper running the network's forward through ``torch.compile``.

    The forward is compiled once per function on its first call (compiling is slow and may fail
    where the backend is missing, so nothing happens at patch time); the module is an argument of
    the compiled function, so a weight-patched or object-patched copy of the network reuses it.
    The wrappers registered after this one still run, inside the compiled call.
    """
    import torch

    from plugins.core_nodes.models.extension import WrapperExecutor

    compiled: dict[Any, Any] = {}

    def wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
        original = executor.original
        module = executor.class_obj
        function = getattr(original, "__func__", None)
        if function is None or getattr(original, "__self__", None) is not module:
            function, bound = original, None
        else:
            bound = module
        fn = compiled.get(function)
        if fn is None:
            fn = compiled[function] = torch.compile(function, **compile_kwargs)

        def run(*a: Any, **k: Any) -> Any:
            return fn(bound, *a, **k) if bound is not None else fn(*a, **k)

        rest = WrapperExecutor.new_class_executor(run, module, executor.wrappers, executor.idx + 1)
        return rest.execute(*args, **kwargs)

    return wrapper


def set_torch_compile_wrapper(model: Any, backend: str, **options: Any) -> None:
    """Compile ``model``'s network with ``backend`` at its next run (the reference's helper of
    the same name, restricted to the whole network)."""
    from plugins.core_nodes.models.extension import WrappersMP

    model.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    model.remove_wrappers_with_key(WrappersMP.DIFFUSION_MODEL, COMPILE_KEY)
    compile_kwargs = {
        "backend": backend,
        "options": options.get("options"),
        "mode": options.get("mode"),
        "fullgraph": bool(options.get("fullgraph", False)),
        "dynamic": options.get("dynamic"),
    }
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, COMPILE_KEY, torch_compile_wrapper(compile_kwargs))
    model.model_options[TORCH_COMPILE_KWARGS] = compile_kwargs


class TorchCompileModel(ClassExecute, CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_torch_compile"
    CATEGORY = "experimental"
    EXPERIMENTAL = True
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    # The reference's schema names no display name: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "backend": (
                    "COMBO",
                    {"advanced": True, "multiselect": False, "options": list(TORCH_COMPILE_BACKENDS)},
                ),
            }
        }

    def patch(self, model: Any, backend: str) -> tuple[Any]:
        m = model.clone()
        set_torch_compile_wrapper(m, backend)
        return (m,)



NODES: dict[str, tuple[type, str | None]] = {
    "ModelSamplingContinuousEDM": (ModelSamplingContinuousEDM, None),
    "ModelSamplingContinuousV": (ModelSamplingContinuousV, None),
    "ModelSamplingStableCascade": (ModelSamplingStableCascade, None),
    "ModelSamplingSD3": (ModelSamplingSD3, None),
    "ModelSamplingAuraFlow": (ModelSamplingAuraFlow, None),
    "ModelSamplingFlux": (ModelSamplingFlux, None),
    "ModelNoiseScale": (ModelNoiseScale, None),
    "ModelComputeDtype": (ModelComputeDtype, None),
    "TorchCompileModel": (TorchCompileModel, None),
}
