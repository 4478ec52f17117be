"""The reference's MODEL patch nodes packs call directly: RescaleCFG, ModelSamplingDiscrete,
DifferentialDiffusion and PatchModelAddDownscale (Kohya deep shrink).

Each clones the MODEL and installs its change through the MODEL's patch API
(``set_model_sampler_cfg_function``, ``add_object_patch("model_sampling", ...)``,
``set_model_denoise_mask_function``, input/output block patches), so packs that read those
patches back see the same objects the reference installs. The method names and return tuples
are the reference's, since packs call ``RescaleCFG().patch(model, 0.7)[0]`` and the like.
"""

from __future__ import annotations

from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import ClassExecute, CoreNode

SAMPLING_CHOICES = ["eps", "v_prediction", "lcm", "x0", "img_to_img", "img_to_img_flow"]
SCALE_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]


def _sampling_settings(model: Any) -> dict[str, Any]:
    """The checkpoint's schedule settings (``model.model.model_config.sampling_settings``), or
    none: the SD1/SDXL defaults then apply."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return dict(getattr(config, "sampling_settings", None) or {})


def rescale_cfg_function(multiplier: float) -> Any:
    """A ``sampler_cfg_function`` doing CFG on v-predictions and pulling the result's standard
    deviation towards the conditional one's (Lin et al. 2023, "Common diffusion noise schedules
    and sample steps are flawed", section 3.4), blended by ``multiplier``."""
    import torch

    def rescale_cfg(args: dict[str, Any]) -> torch.Tensor:
        cond, uncond = args["cond"], args["uncond"]  # noise predictions: input - denoised
        cond_scale = args["cond_scale"]
        x_orig = args["input"]
        sigma = args["sigma"]
        sigma = sigma.view(sigma.shape[:1] + (1,) * (cond.ndim - 1))
        # The eps predictions as v predictions, where the rescale is defined.
        x = x_orig / (sigma * sigma + 1.0)
        v_cond = ((x - (x_orig - cond)) * (sigma**2 + 1.0) ** 0.5) / sigma
        v_uncond = ((x - (x_orig - uncond)) * (sigma**2 + 1.0) ** 0.5) / sigma
        v_cfg = v_uncond + cond_scale * (v_cond - v_uncond)
        dims = tuple(range(1, cond.ndim))
        std_cond = torch.std(v_cond, dim=dims, keepdim=True)
        std_cfg = torch.std(v_cfg, dim=dims, keepdim=True)
        v_final = multiplier * (v_cfg * (std_cond / std_cfg)) + (1.0 - multiplier) * v_cfg
        # Back to a noise prediction, as the sampler expects from a cfg function.
        return x_orig - (x - v_final * sigma / (sigma * sigma + 1.0) ** 0.5)

    return rescale_cfg


class RescaleCFG(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_model_advanced"
    CATEGORY = "model/patch"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "multiplier": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def patch(self, model: Any, multiplier: float) -> tuple[Any]:
        m = model.clone()
        m.set_model_sampler_cfg_function(rescale_cfg_function(float(multiplier)))
        return (m,)


class ModelSamplingDiscrete(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_model_advanced"
    CATEGORY = "model/patch"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "sampling": (list(SAMPLING_CHOICES),),
                "zsnr": ("BOOLEAN", {"default": False, "advanced": True}),
            }
        }

    def patch(self, model: Any, sampling: str, zsnr: bool) -> tuple[Any]:
        from plugins.core_nodes.sampling.prediction import make_sampling

        model_sampling = make_sampling(sampling, _sampling_settings(model), zsnr=bool(zsnr))
        m = model.clone()
        m.add_object_patch("model_sampling", model_sampling)
        return (m,)


def differential_mask(
    sigma: Any, denoise_mask: Any, extra_options: dict[str, Any], strength: float = 1.0
) -> Any:
    """Differential diffusion's per-step mask: a pixel is denoised once the schedule's progress
    threshold (1 at the first sigma, 0 at the last, measured in timesteps) falls to its mask
    value; ``strength`` < 1 blends that binary mask with the soft one."""
    model_sampling = extra_options["model"].inner_model.model_sampling
    step_sigmas = extra_options["sigmas"]
    sigma_to = model_sampling.sigma_min
    if step_sigmas[-1] > sigma_to:
        sigma_to = step_sigmas[-1]
    ts_from = model_sampling.timestep(step_sigmas[0])
    ts_to = model_sampling.timestep(sigma_to)
    current = model_sampling.timestep(sigma[0])
    threshold = (current - ts_to) / (ts_from - ts_to)
    binary = (denoise_mask >= threshold).to(denoise_mask.dtype)
    if strength and strength < 1:
        return strength * binary + (1 - strength) * denoise_mask
    return binary


class DifferentialDiffusion(ClassExecute, CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_differential_diffusion"
    CATEGORY = "experimental"
    EXPERIMENTAL = True
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"model": ("MODEL", {})},
            "optional": {"strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
        }

    def apply(self, model: Any, strength: float = 1.0) -> tuple[Any]:
        def mask_function(sigma: Any, denoise_mask: Any, extra_options: dict[str, Any]) -> Any:
            return differential_mask(sigma, denoise_mask, extra_options, strength)

        m = model.clone()
        m.set_model_denoise_mask_function(mask_function)
        return (m,)


def downscale_patches(
    model_sampling: Any,
    block_number: int,
    downscale_factor: float,
    start_percent: float,
    end_percent: float,
    downscale_method: str,
    upscale_method: str,
) -> tuple[Any, Any]:
    """(input block patch, output block patch) of Kohya's deep shrink: the features after input
    block ``block_number`` are shrunk by ``downscale_factor`` while the sigma lies between the
    two percents, and the output blocks scale them back to their skip connection's size."""
    from plugins.core_nodes.nodes.resize import upscale

    sigma_start = model_sampling.percent_to_sigma(start_percent)
    sigma_end = model_sampling.percent_to_sigma(end_percent)

    def input_block_patch(h: Any, transformer_options: dict[str, Any]) -> Any:
        if transformer_options["block"][1] == block_number:
            sigma = transformer_options["sigmas"][0].item()
            if sigma_end <= sigma <= sigma_start:
                width = round(h.shape[-1] * (1.0 / downscale_factor))
                height = round(h.shape[-2] * (1.0 / downscale_factor))
                h = upscale(h, width, height, downscale_method, "disabled")
        return h

    def output_block_patch(h: Any, hsp: Any, transformer_options: dict[str, Any]) -> tuple[Any, Any]:
        if h.shape[2] != hsp.shape[2]:
            h = upscale(h, hsp.shape[-1], hsp.shape[-2], upscale_method, "disabled")
        return h, hsp

    return input_block_patch, output_block_patch


class PatchModelAddDownscale(ClassExecute, CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_model_downscale"
    CATEGORY = "model/patch/unet"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def percent(default: float) -> tuple[str, dict[str, Any]]:
            return ("FLOAT", {"advanced": True, "default": default, "min": 0.0, "max": 1.0, "step": 0.001})

        return {
            "required": {
                "model": ("MODEL", {}),
                "block_number": ("INT", {"advanced": True, "default": 3, "min": 1, "max": 32, "step": 1}),
                "downscale_factor": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 9.0, "step": 0.001}),
                "start_percent": percent(0.0),
                "end_percent": percent(0.35),
                "downscale_after_skip": ("BOOLEAN", {"advanced": True, "default": True}),
                "downscale_method": ("COMBO", {"multiselect": False, "options": list(SCALE_METHODS)}),
                "upscale_method": ("COMBO", {"multiselect": False, "options": list(SCALE_METHODS)}),
            }
        }

    def patch(
        self,
        model: Any,
        block_number: int,
        downscale_factor: float,
        start_percent: float,
        end_percent: float,
        downscale_after_skip: bool,
        downscale_method: str,
        upscale_method: str,
    ) -> tuple[Any]:
        input_patch, output_patch = downscale_patches(
            model.get_model_object("model_sampling"),
            block_number,
            downscale_factor,
            start_percent,
            end_percent,
            downscale_method,
            upscale_method,
        )
        m = model.clone()
        if downscale_after_skip:
            m.set_model_input_block_patch_after_skip(input_patch)
        else:
            m.set_model_input_block_patch(input_patch)
        m.set_model_output_block_patch(output_patch)
        return (m,)


NODES: dict[str, tuple[type, str | None]] = {
    "RescaleCFG": (RescaleCFG, None),
    "ModelSamplingDiscrete": (ModelSamplingDiscrete, None),
    "DifferentialDiffusion": (DifferentialDiffusion, "Differential Diffusion"),
    "PatchModelAddDownscale": (PatchModelAddDownscale, "PatchModelAddDownscale (Kohya Deep Shrink)"),
}
