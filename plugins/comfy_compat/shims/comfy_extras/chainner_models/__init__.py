"""`comfy_extras.chainner_models`: the reference's deprecated upscale-model package."""
