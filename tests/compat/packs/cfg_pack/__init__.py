"""A pack that hooks the sampler the way ComfyUI packs do: through a cloned MODEL's
``model_options`` and by replacing ``comfy.samplers.sampling_function`` for one sampling run.

* ``CfgPackScaledCfg``: a ``sampler_cfg_function`` giving ``uncond + (cond - uncond) * scale``
  (the reference passes noise predictions, so this is plain CFG at ``scale``);
* ``CfgPackZeroPostCfg``: a ``sampler_post_cfg_function`` returning ``denoised * 0``;
* ``CfgPackCountCalls``: a ``model_function_wrapper`` that records every model call and passes
  it on; ``CfgPackReport`` (run after the sampler) shows what it recorded in its UI output;
* ``CfgPackPatchedKSampler``: ``nodes.common_ksampler`` with ``comfy.samplers.sampling_function``
  replaced by a counting wrapper around the original for the run (AnimateDiff's pattern).
"""

import comfy.samplers
import nodes


def _set(model, key, value):
    # The reference's setter when the MODEL has it, else the key it writes.
    setter = getattr(model, "set_model_" + key, None)
    if key == "sampler_post_cfg_function":
        if setter is not None:
            setter(value)
        else:
            model.model_options[key] = model.model_options.get(key, []) + [value]
    elif key == "unet_function_wrapper":
        if setter is not None:
            setter(value)
        else:
            model.model_options["model_function_wrapper"] = value
    elif setter is not None:
        setter(value)
    else:
        model.model_options[key] = value


class CfgPackScaledCfg:
    CATEGORY = "compat/cfg"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": ("MODEL",), "scale": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0})}
        }

    def patch(self, model, scale):
        def cfg_function(args):
            cond, uncond = args["cond"], args["uncond"]
            return uncond + (cond - uncond) * scale

        m = model.clone()
        _set(m, "sampler_cfg_function", cfg_function)
        return (m,)


class CfgPackZeroPostCfg:
    CATEGORY = "compat/cfg"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model):
        m = model.clone()
        _set(m, "sampler_post_cfg_function", lambda args: args["denoised"] * 0)
        return (m,)


class CfgPackCountCalls:
    CATEGORY = "compat/cfg"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model):
        calls = []

        def wrapper(apply_model, args):
            options = args["c"]["transformer_options"]
            calls.append(
                {
                    "cond_or_uncond": list(args["cond_or_uncond"]),
                    "options_cond_or_uncond": list(options["cond_or_uncond"]),
                    "sigma": float(args["timestep"].reshape(-1)[0]),
                    "options_sigma": float(options["sigmas"].reshape(-1)[0]),
                    "sample_sigmas": len(options["sample_sigmas"]),
                    "shape": list(args["input"].shape),
                }
            )
            return apply_model(args["input"], args["timestep"], **args["c"])

        wrapper.calls = calls
        m = model.clone()
        _set(m, "unet_function_wrapper", wrapper)
        return (m,)


class CfgPackReport:
    CATEGORY = "compat/cfg"
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "samples": ("LATENT",)}}

    def report(self, model, samples):
        calls = model.model_options["model_function_wrapper"].calls
        return {"ui": {"calls": calls}}


class CfgPackPatchedKSampler:
    CATEGORY = "compat/cfg"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "steps": ("INT", {"default": 3, "min": 1, "max": 100}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
            }
        }

    def sample(self, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler):
        original = comfy.samplers.sampling_function
        seen = []

        def counting(model_, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):  # noqa: B006
            seen.append(float(timestep.reshape(-1)[0]))
            return original(
                model_, x, timestep, uncond, cond, cond_scale, model_options=model_options, seed=seed
            )

        comfy.samplers.sampling_function = counting
        try:
            (out,) = nodes.common_ksampler(
                model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image
            )
        finally:
            comfy.samplers.sampling_function = original
        return {"ui": {"wrapped_calls": [len(seen)]}, "result": (out,)}


NODE_CLASS_MAPPINGS = {
    "CfgPackScaledCfg": CfgPackScaledCfg,
    "CfgPackZeroPostCfg": CfgPackZeroPostCfg,
    "CfgPackCountCalls": CfgPackCountCalls,
    "CfgPackReport": CfgPackReport,
    "CfgPackPatchedKSampler": CfgPackPatchedKSampler,
}
