"""Conditioning nodes of the reference's smaller modules: InstructPixToPixConditioning
(``comfy_extras.nodes_ip2p``), SD_4XUpscale_Conditioning (``comfy_extras.nodes_sdupscale``),
CLIPTextEncodeControlnet and T5TokenizerOptions (``comfy_extras.nodes_cond``).

They only add entries to each conditioning's options (or the CLIP's tokenizer options); the model
reads them when the conds are prepared: ``concat_latent_image`` (InstructPix2Pix's image latent),
``concat_image`` + ``noise_augmentation`` (the x4 upscaler's low-resolution image),
``cross_attn_controlnet`` + ``pooled_output_controlnet`` (the text a ControlNet sees instead of
the prompt's).
"""

from __future__ import annotations

from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import ClassExecute, CoreNode

# The x4 upscaler works on latents a quarter of the output size.
_X4_LATENT_RATIO = 4
_IP2P_MULTIPLE = 8
# Tokenizer families the reference's T5TokenizerOptions sets its two options for.
T5_TOKENIZERS = ("t5xxl", "pile_t5xl", "t5base", "mt5xl", "umt5xxl")


def with_options(conditioning: list[list[Any]], **options: Any) -> list[list[Any]]:
    """``conditioning`` with ``options`` added to every entry (new entry dicts, same tensors)."""
    return [[cond, {**extra, **options}] for cond, extra in conditioning]


class _Node(ClassExecute, CoreNode):
    # The reference's schemas name no display name: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True


class _PairWithLatent(_Node):
    """A node that adds an image's entries to a positive / negative pair and hands back the
    latent to sample."""

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"


class InstructPixToPixConditioning(_PairWithLatent):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_ip2p"
    CATEGORY = "model/conditioning/instructpix2pix"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "positive": ("CONDITIONING", {}),
                "negative": ("CONDITIONING", {}),
                "vae": ("VAE", {}),
                "pixels": ("IMAGE", {}),
            }
        }

    def encode(self, positive: Any, negative: Any, pixels: Any, vae: Any) -> tuple[Any, Any, dict[str, Any]]:
        import torch

        # Cut, centred, to multiples of 8 pixels, as the reference does before encoding.
        height = pixels.shape[1] // _IP2P_MULTIPLE * _IP2P_MULTIPLE
        width = pixels.shape[2] // _IP2P_MULTIPLE * _IP2P_MULTIPLE
        if height == 0 or width == 0:
            raise ValueError(f"the image ({pixels.shape[2]}x{pixels.shape[1]}) is smaller than 8 pixels")
        top = (pixels.shape[1] % _IP2P_MULTIPLE) // 2
        left = (pixels.shape[2] % _IP2P_MULTIPLE) // 2
        pixels = pixels[:, top : top + height, left : left + width, :]
        concat_latent = vae.encode(pixels[..., :3])
        latent = {"samples": torch.zeros_like(concat_latent)}
        return (
            with_options(positive, concat_latent_image=concat_latent),
            with_options(negative, concat_latent_image=concat_latent),
            latent,
        )



class SD_4XUpscale_Conditioning(_PairWithLatent):  # noqa: N801 - the reference's name
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_sdupscale"
    CATEGORY = "model/conditioning/stable diffusion upscaler"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {}),
                "positive": ("CONDITIONING", {}),
                "negative": ("CONDITIONING", {}),
                "scale_ratio": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                "noise_augmentation": (
                    "FLOAT",
                    {"advanced": True, "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001},
                ),
            }
        }

    def encode(
        self, images: Any, positive: Any, negative: Any, scale_ratio: float, noise_augmentation: float
    ) -> tuple[Any, Any, dict[str, Any]]:
        import torch

        from plugins.core_nodes.nodes.resize import upscale

        width = max(1, round(images.shape[-2] * scale_ratio))
        height = max(1, round(images.shape[-3] * scale_ratio))
        latent_w, latent_h = width // _X4_LATENT_RATIO, height // _X4_LATENT_RATIO
        if latent_w < 1 or latent_h < 1:
            raise ValueError(
                f"scale_ratio {scale_ratio} makes a {width}x{height} image, under the 4 pixels of one latent pixel"
            )
        # The upscaler sees the low-resolution image in -1..1 at the latent's size.
        pixels = upscale(images.movedim(-1, 1) * 2.0 - 1.0, latent_w, latent_h, "bilinear", "center")
        options = {"concat_image": pixels, "noise_augmentation": noise_augmentation}
        latent = torch.zeros([images.shape[0], 4, latent_h, latent_w])
        return with_options(positive, **options), with_options(negative, **options), {"samples": latent}



class CLIPTextEncodeControlnet(_Node):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_cond"
    CATEGORY = "model/conditioning"
    EXPERIMENTAL = True
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = False
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP", {}),
                "conditioning": ("CONDITIONING", {}),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            }
        }

    def encode(self, clip: Any, conditioning: Any, text: str) -> tuple[Any]:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return (with_options(conditioning, cross_attn_controlnet=cond, pooled_output_controlnet=pooled),)



class T5TokenizerOptions(_Node):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_cond"
    CATEGORY = "model/conditioning"
    EXPERIMENTAL = True
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = False
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_options"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def count() -> tuple[str, dict[str, Any]]:
            return ("INT", {"default": 0, "min": 0, "max": 10000, "step": 1})

        return {"required": {"clip": ("CLIP", {}), "min_padding": count(), "min_length": count()}}

    def set_options(self, clip: Any, min_padding: int, min_length: int) -> tuple[Any]:
        # Read by T5-family tokenizers only; CLIP tokenizers (SD1 / SDXL) ignore them.
        clip = clip.clone()
        for family in T5_TOKENIZERS:
            clip.set_tokenizer_option(f"{family}_min_padding", min_padding)
            clip.set_tokenizer_option(f"{family}_min_length", min_length)
        return (clip,)



NODES: dict[str, tuple[type, str | None]] = {
    "InstructPixToPixConditioning": (InstructPixToPixConditioning, None),
    "SD_4XUpscale_Conditioning": (SD_4XUpscale_Conditioning, None),
    "CLIPTextEncodeControlnet": (CLIPTextEncodeControlnet, "CLIP Text Encode (Controlnet)"),
    "T5TokenizerOptions": (T5TokenizerOptions, "T5 Tokenizer Options"),
}
