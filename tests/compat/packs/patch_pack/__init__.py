"""A pack that patches the MODEL the way ComfyUI packs do, each node on ``model.clone()``.

``PatchPackAttn2ScaleV`` multiplies cross-attention values (``set_model_attn2_patch``);
``PatchPackAttn1Zero`` replaces one block's self-attention by zeros (``set_model_attn1_replace``);
``PatchPackScaleConvIn`` replaces ``diffusion_model.input_blocks.0`` by a copy whose conv weights
are scaled (``add_object_patch``); ``PatchPackAddDiff`` adds a seeded difference to one weight
(``add_patches``); ``PatchPackInputBlockScale`` scales one input block's output
(``set_model_input_block_patch``); ``PatchPackContextWrapper`` scales the text context in a
``DIFFUSION_MODEL`` wrapper; ``PatchPackInjectScale`` inserts a scaling layer into one input block
by injection (``set_injections``). ``PatchPackAfter`` passes its MODEL on unchanged once a LATENT
exists, so a graph can sample the original model after a patched clone was sampled.
"""

import copy

import comfy.model_patcher
import comfy.patcher_extension
import torch

SCALE = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})


def seeded_diff(shape, seed):
    """The difference PatchPackAddDiff adds (the test builds the same one)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05


class _ModelNode:
    CATEGORY = "compat/patches"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"


class PatchPackAttn2ScaleV(_ModelNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "scale": SCALE, "what": (["value", "context"],)}}

    def patch(self, model, scale, what="value"):
        assert isinstance(model, comfy.model_patcher.ModelPatcher)
        m = model.clone()

        def attn2(n, context, value, extra_options):
            assert extra_options["n_heads"] > 0 and extra_options["block"][0] in ("input", "middle", "output")
            if what == "context":
                return n, context * scale, value * scale
            return n, context, value * scale

        m.set_model_attn2_patch(attn2)
        return (m,)


class PatchPackAttn1Zero(_ModelNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "block_name": (["input", "middle", "output"],),
                "number": ("INT", {"default": 1, "min": 0, "max": 20}),
            }
        }

    def patch(self, model, block_name, number):
        m = model.clone()
        m.set_model_attn1_replace(lambda q, k, v, extra: torch.zeros_like(q), block_name, number, 0)
        return (m,)


class PatchPackScaleConvIn(_ModelNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "scale": SCALE}}

    def patch(self, model, scale):
        m = model.clone()
        block = copy.deepcopy(m.get_model_object("diffusion_model.input_blocks.0"))
        with torch.no_grad():
            block[0].weight.mul_(scale)
        m.add_object_patch("diffusion_model.input_blocks.0", block)
        return (m,)


class PatchPackAddDiff(_ModelNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "key": ("STRING", {"default": "diffusion_model.input_blocks.0.0.weight"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                "strength": SCALE,
            }
        }

    def patch(self, model, key, seed, strength):
        m = model.clone()
        weight = m.get_model_object(key)
        added = m.add_patches({key: (seeded_diff(weight.shape, seed),)}, strength)
        if added != [key]:
            raise ValueError(f"{key} is not a weight of this model")
        return (m,)


class PatchPackInputBlockScale(_ModelNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "number": ("INT", {"default": 1, "min": 0, "max": 20}),
                "scale": SCALE,
            }
        }

    def patch(self, model, number, scale):
        m = model.clone()

        def input_block(h, transformer_options):
            return h * scale if transformer_options["block"] == ("input", number) else h

        m.set_model_input_block_patch(input_block)
        return (m,)


class PatchPackContextWrapper(_ModelNode):
    """Scales the text context inside a ``WrappersMP.DIFFUSION_MODEL`` wrapper."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "scale": SCALE}}

    def patch(self, model, scale):
        m = model.clone()

        def wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
            return executor(x, timesteps, context * scale, y, control, transformer_options, **kwargs)

        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "patch_pack", wrapper)
        return (m,)


class _Scale(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class PatchPackInjectScale(_ModelNode):
    """Inserts a scaling layer at the end of one input block while the MODEL runs (an injection)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "number": ("INT", {"default": 1, "min": 0, "max": 20}),
                "scale": SCALE,
            }
        }

    def patch(self, model, number, scale):
        m = model.clone()
        layer = _Scale(scale)

        def inject(patcher):
            patcher.model.diffusion_model.input_blocks[number].append(layer)

        def eject(patcher):
            block = patcher.model.diffusion_model.input_blocks[number]
            if block[len(block) - 1] is layer:
                del block[len(block) - 1]

        m.set_injections("patch_pack", [comfy.patcher_extension.PatcherInjection(inject, eject)])
        return (m,)


class PatchPackAfter(_ModelNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "after": ("LATENT",)}}

    def patch(self, model, after):
        return (model,)


NODE_CLASS_MAPPINGS = {
    cls.__name__: cls
    for cls in (
        PatchPackAttn2ScaleV,
        PatchPackAttn1Zero,
        PatchPackScaleConvIn,
        PatchPackAddDiff,
        PatchPackInputBlockScale,
        PatchPackContextWrapper,
        PatchPackInjectScale,
        PatchPackAfter,
    )
}
