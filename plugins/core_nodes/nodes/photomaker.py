"""PhotoMaker nodes (``comfy_extras.nodes_photomaker``): PhotoMakerLoader and PhotoMakerEncode.

PhotoMakerEncode follows the reference's prompt handling exactly: the trigger word "photomaker" is
located among the prompt's space-separated words (position p, from 1); tokens whose tokenizer word
id is p are taken out (each chunk padded back with its last token), and the token at position p - 1
of the encoded prompt (counting the start token as 0: the class word, when every word before the
trigger is one token) has its embedding fused with the identity of the first image. The
tokenizer's word ids count weighted segments and embeddings, not words (as the reference's do),
so a trigger inside a plain segment ("a man photomaker") stays in the prompt, as it does there;
one in a segment of its own ("(man) photomaker") is taken out.
"""

from __future__ import annotations

from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import ClassExecute, CoreNode
from plugins.core_nodes.nodes.loaders import _Loader

MODULE = "comfy_extras.nodes_photomaker"
TRIGGER_WORD = "photomaker"


class PhotoMakerLoader(ClassExecute, _Loader):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = MODULE
    CATEGORY = "model/loaders"
    EXPERIMENTAL = True
    RETURN_TYPES = ("PHOTOMAKER",)
    FUNCTION = "load_photomaker_model"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = cls.names("photomaker")
        return {"required": {"photomaker_model_name": ("COMBO", {"multiselect": False, "options": names})}}

    def load_photomaker_model(self, photomaker_model_name: str) -> tuple[Any]:
        from plugins.core_nodes.models.photomaker import load_photomaker

        return (load_photomaker(self.path("photomaker", photomaker_model_name)),)


def trigger_word_id(text: str) -> int:
    """The tokenizer's word id of the trigger word (words split on single spaces, counted from
    1), or -1 when the prompt has none."""
    try:
        return text.split(" ").index(TRIGGER_WORD) + 1
    except ValueError:
        return -1


def drop_word(tokens: dict[str, list[list[tuple[Any, ...]]]], word_id: int) -> dict[str, list[list[tuple[Any, ...]]]]:
    """Each chunk without the tokens of ``word_id``, padded back to its length with its last token."""
    out: dict[str, list[list[tuple[Any, ...]]]] = {}
    for name, chunks in tokens.items():
        out[name] = []
        for chunk in chunks:
            kept = [t for t in chunk if t[2] != word_id]
            kept += [chunk[-1]] * (len(chunk) - len(kept))
            out[name].append(kept)
    return out


class PhotoMakerEncode(ClassExecute, CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = MODULE
    CATEGORY = "model/conditioning/photomaker"
    EXPERIMENTAL = True
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_photomaker"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "photomaker": ("PHOTOMAKER", {}),
                "image": ("IMAGE", {}),
                "clip": ("CLIP", {}),
                "text": ("STRING", {"default": "photograph of photomaker", "multiline": True, "dynamicPrompts": True}),
            }
        }

    def apply_photomaker(self, photomaker: Any, image: Any, clip: Any, text: str) -> tuple[list[list[Any]]]:
        import torch

        from plugins.core_nodes.models.clip_vision import clip_preprocess
        from plugins.core_nodes.models.photomaker import PhotoMakerError

        word = trigger_word_id(text)
        tokens = drop_word(clip.tokenize(text, return_word_ids=True), word)
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        if word <= 0:
            return ([[cond, {"pooled_output": pooled}]],)
        if cond.shape[-1] != photomaker.embed_dim:
            raise PhotoMakerError(
                f"PhotoMaker fuses {photomaker.embed_dim}-wide text embeddings (SDXL's); this CLIP "
                f"gives {cond.shape[-1]}-wide ones"
            )
        position = word - 1
        if position >= cond.shape[1]:
            raise PhotoMakerError(f"the word before {TRIGGER_WORD!r} is beyond the prompt's tokens")
        pixels = clip_preprocess(image, photomaker.config.image_size).float()
        mask = torch.zeros(1, cond.shape[1], dtype=torch.bool)
        mask[0, position] = True
        with torch.no_grad():
            out = photomaker(id_pixel_values=pixels.unsqueeze(0), prompt_embeds=cond, class_tokens_mask=mask)
        return ([[out, {"pooled_output": pooled}]],)


NODES: dict[str, tuple[type, str | None]] = {
    "PhotoMakerLoader": (PhotoMakerLoader, "Load PhotoMaker Model"),
    "PhotoMakerEncode": (PhotoMakerEncode, "PhotoMaker Encode"),
}
