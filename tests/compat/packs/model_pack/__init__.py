"""A pack that drives the model stack the way ComfyUI packs do: through ``comfy.sd``,
``comfy.utils.load_torch_file`` and ``nodes.common_ksampler``, not through the graph.

``ModelPackTxt2Latent`` is a one-node text-to-latent (checkpoint + LoRA + prompts + sampling);
``ModelPackSaveLatent`` writes a LATENT's samples to the output folder, so a test can compare
the tensors bit for bit with what the core nodes' graph gives.

The CLIP object's API: ``ModelPackWeightedEncode`` tokenizes, multiplies every token weight by a
factor and encodes the tokens (``encode_from_tokens(return_pooled=True)``);
``ModelPackClipSkipEncode`` encodes with ``clip.clone().clip_layer(n)`` and
``encode_from_tokens_scheduled``; ``ModelPackSaveConditioning`` writes a CONDITIONING's first
tensor and pooled output for the comparison.
"""

import os

import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import nodes
from nodes import MAX_RESOLUTION, common_ksampler


class ModelPackTxt2Latent:
    CATEGORY = "compat/models"
    RETURN_TYPES = ("LATENT", "VAE")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        strength = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})
        return {
            "required": {
                "ckpt_name": (folder_paths.get_filename_list("checkpoints"),),
                "lora_name": (folder_paths.get_filename_list("loras"),),
                "strength_model": strength,
                "strength_clip": strength,
                "positive": ("STRING", {"multiline": True}),
                "negative": ("STRING", {"multiline": True}),
                "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
            }
        }

    def run(
        self, ckpt_name, lora_name, strength_model, strength_clip, positive, negative,
        width, height, seed, steps, cfg, sampler_name, scheduler,
    ):  # fmt: skip
        ckpt_path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        model, clip, vae, clipvision = comfy.sd.load_checkpoint_guess_config(
            ckpt_path,
            output_vae=True,
            output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
        )
        assert clipvision is None
        lora = comfy.utils.load_torch_file(
            folder_paths.get_full_path_or_raise("loras", lora_name), safe_load=True
        )
        model, clip = comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)
        encode = nodes.CLIPTextEncode()
        (cond_pos,) = encode.encode(clip, positive)
        (cond_neg,) = encode.encode(clip, negative)
        (latent,) = nodes.EmptyLatentImage().generate(width, height, 1)
        (samples,) = common_ksampler(
            model, seed, steps, cfg, sampler_name, scheduler, cond_pos, cond_neg, latent
        )
        return (samples, vae)


class ModelPackSaveLatent:
    CATEGORY = "compat/models"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "filename_prefix": ("STRING", {"default": "latent"})}}

    def save(self, samples, filename_prefix):
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        filename = f"{name}_{counter:05}_.safetensors"
        comfy.utils.save_torch_file(
            {"samples": samples["samples"].contiguous()}, os.path.join(folder, filename)
        )
        return {"ui": {"latents": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}}


class ModelPackWeightedEncode:
    CATEGORY = "compat/models"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP",),
                "text": ("STRING", {"multiline": True}),
                "factor": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            }
        }

    def encode(self, clip, text, factor):
        tokens = clip.tokenize(text)
        weighted = {
            name: [[(token, weight * factor) for token, weight in chunk] for chunk in chunks]
            for name, chunks in tokens.items()
        }
        cond, pooled = clip.encode_from_tokens(weighted, return_pooled=True)
        return ([[cond, {"pooled_output": pooled}]],)


class ModelPackClipSkipEncode:
    CATEGORY = "compat/models"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP",),
                "text": ("STRING", {"multiline": True}),
                "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1}),
            }
        }

    def encode(self, clip, text, stop_at_clip_layer):
        clip = clip.clone()
        clip.clip_layer(stop_at_clip_layer)
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


class ModelPackSaveConditioning:
    CATEGORY = "compat/models"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "filename_prefix": ("STRING", {"default": "conditioning"}),
            }
        }

    def save(self, conditioning, filename_prefix):
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        filename = f"{name}_{counter:05}_.safetensors"
        cond, options = conditioning[0]
        tensors = {"cond": cond.contiguous(), "pooled_output": options["pooled_output"].contiguous()}
        comfy.utils.save_torch_file(tensors, os.path.join(folder, filename))
        return {"ui": {"latents": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}}


NODE_CLASS_MAPPINGS = {
    "ModelPackTxt2Latent": ModelPackTxt2Latent,
    "ModelPackSaveLatent": ModelPackSaveLatent,
    "ModelPackWeightedEncode": ModelPackWeightedEncode,
    "ModelPackClipSkipEncode": ModelPackClipSkipEncode,
    "ModelPackSaveConditioning": ModelPackSaveConditioning,
}
