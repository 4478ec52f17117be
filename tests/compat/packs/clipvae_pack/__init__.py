"""Test pack: nodes that use a CLIP's and a VAE's objects the way real packs do.

ComfyUI_ADV_CLIP_emb tokenizes through ``clip.tokenizer``, sets ``cond_stage_model`` clip options
from ``clip.layer_idx``, loads ``clip.patcher`` and encodes with ``cond_stage_model.clip_l
.encode_token_weights``; Easy-Use / Inspire clone a CLIP and ``add_patches`` to it; Impact decodes
with ``vae.decode_tiled`` and reaches into ``vae.first_stage_model``. Each node saves what it got
(safetensors in the output folder) and reports what it saw (``flags``) for the tests to compare.
"""

import os

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy.sd1_clip import SD1ClipModel
from comfy.sdxl_clip import SDXLClipModel


def _save(tensors, prefix):
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())
    filename = f"{name}_{counter:05}_.safetensors"
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, filename))
    return {"filename": filename, "subfolder": subfolder, "type": "output"}


def _encode_member(clip, member, chunks):
    # ADV_CLIP_emb's encode_token_weights: the CLIP's layer onto cond_stage_model, patcher loaded.
    if clip.layer_idx is not None:
        clip.cond_stage_model.set_clip_options({"layer": clip.layer_idx})
    comfy.model_management.load_model_gpu(clip.patcher)
    return getattr(clip.cond_stage_model, member).encode_token_weights(chunks)


class ClipVaePackTokenWeights:
    CATEGORY = "compat/clipvae"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": ("CLIP",), "text": ("STRING", {"default": "a cat"}),
                             "filename_prefix": ("STRING", {"default": "clipvae"})}}

    def run(self, clip, text, filename_prefix):
        with_ids = clip.tokenizer.tokenize_with_weights(text, return_word_ids=True)
        pairs = {name: [[(t, w) for t, w, _ in chunk] for chunk in chunks] for name, chunks in with_ids.items()}
        out = {}
        for name in sorted(with_ids):
            cond, pooled = _encode_member(clip, "clip_" + name, pairs[name])
            out[f"cond_{name}"], out[f"pooled_{name}"] = cond, pooled
        # The word-id triples go in as they are too (the reference reads token and weight).
        out["cond_triples"], _ = _encode_member(clip, "clip_l", with_ids["l"])
        clip.cond_stage_model.reset_clip_options()
        if clip.layer_idx is not None:
            clip.cond_stage_model.set_clip_options({"layer": clip.layer_idx})
        out["cond_set"], out["pooled_set"] = clip.cond_stage_model.encode_token_weights(pairs)
        out["cond_api"], out["pooled_api"] = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        model = clip.cond_stage_model
        flags = {
            "is_clip": isinstance(clip, comfy.sd.CLIP),
            "is_sd1": isinstance(model, SD1ClipModel),
            "is_sdxl": isinstance(model, SDXLClipModel),
            "patcher_over_model": clip.patcher.model is model,
            "patcher_is_model_patcher": isinstance(clip.patcher, comfy.model_patcher.ModelPatcher),
            "has_transformer": isinstance(model.clip_l.transformer, torch.nn.Module),
            "sub_tokenizers": sorted(k for k in ("clip_l", "clip_g") if hasattr(clip.tokenizer, k)),
            "layer_idx": clip.layer_idx,
        }
        return {"ui": {"latents": [_save(out, filename_prefix)], "flags": [flags]}}


class ClipVaePackAddDiff:
    """Easy-Use / Inspire style: a clone of the CLIP with one weight changed by ``add_patches``."""

    CATEGORY = "compat/clipvae"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": ("CLIP",), "key": ("STRING", {"default": ""}),
                             "value": ("FLOAT", {"default": 0.05, "min": -1.0, "max": 1.0, "step": 0.001})}}

    def run(self, clip, key, value):
        patched = clip.clone()
        weight = patched.get_key_patches()[key][0][0]
        added = patched.add_patches({key: (torch.full_like(weight, value),)}, 1.0)
        if list(added) != [key]:
            raise ValueError(f"add_patches did not take {key}: {added}")
        return (patched,)


class ClipVaePackVae:
    CATEGORY = "compat/clipvae"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "size": ("INT", {"default": 32, "min": 8, "max": 256}),
                             "filename_prefix": ("STRING", {"default": "clipvae_vae"})}}

    def run(self, vae, size, filename_prefix):
        g = torch.Generator().manual_seed(3)
        latent = torch.randn(1, vae.latent_channels, size, size, generator=g)
        calls = []
        hook = vae.first_stage_model.decoder.register_forward_hook(lambda *a: calls.append(1))
        try:
            decoded = vae.decode(latent)
        finally:
            hook.remove()
        tiled = vae.decode_tiled(latent, tile_x=size // 2, tile_y=size // 2, overlap=size // 8)
        one_tile = vae.decode_tiled(latent, tile_x=size, tile_y=size, overlap=size // 8)
        model = vae.first_stage_model
        with torch.no_grad():
            z = latent.to(vae.device, vae.vae_dtype)
            by_hand = vae.process_output(model.decode(z)).movedim(1, -1).float().cpu()
        pixels = decoded[:, :, :, :3]
        encoded = vae.encode(pixels)
        side = pixels.shape[1]
        encoded_tiled = vae.encode_tiled(pixels, tile_x=side // 2, tile_y=side // 2, overlap=side // 8)
        encoded_one = vae.encode_tiled(pixels, tile_x=side, tile_y=side, overlap=side // 8)
        flags = {
            "is_vae": isinstance(vae, comfy.sd.VAE),
            "decoder_calls": len(calls),
            "ratios": [vae.spacial_compression_decode(), vae.spacial_compression_encode(), vae.downscale_ratio],
            "channels": [vae.latent_channels, vae.output_channels],
            "temporal": vae.temporal_compression_decode(),
            "memory_positive": vae.memory_used_decode(latent.shape, vae.vae_dtype) > 0
            and vae.memory_used_encode(pixels.movedim(-1, 1).shape, vae.vae_dtype) > 0,
            "sd_keys_match": sorted(vae.get_sd()) == sorted(model.state_dict()),
            "patcher_over_model": vae.patcher.model is model,
        }
        out = {"latent": latent, "decoded": decoded, "tiled": tiled, "one_tile": one_tile, "by_hand": by_hand,
               "encoded": encoded, "encoded_tiled": encoded_tiled, "encoded_one": encoded_one}
        return {"ui": {"latents": [_save(out, filename_prefix)], "flags": [flags]}}


NODE_CLASS_MAPPINGS = {
    "ClipVaePackTokenWeights": ClipVaePackTokenWeights,
    "ClipVaePackAddDiff": ClipVaePackAddDiff,
    "ClipVaePackVae": ClipVaePackVae,
}
