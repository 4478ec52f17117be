"""A V1 pack calling the ComfyUI symbols real packs use most (compat-surface table (a), top 40).

Every node reports what it saw in its UI output (``{"facts": [json]}``), so the test can check
the observable result of each call through the real server. At import time it does what packs
do while loading: registers routes, adds model folder kinds (both the function and the dict
way), a web directory, a node written straight into ``nodes.NODE_CLASS_MAPPINGS`` and an
``on_prompt`` handler.
"""

import json
import os
from enum import Enum

import comfy.cli_args
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import nodes
import torch
from aiohttp import web
from comfy_api.latest import io
from nodes import MAX_RESOLUTION
from server import PromptServer

HERE = os.path.dirname(os.path.realpath(__file__))
SURFACE_MODELS = os.path.join(folder_paths.base_path, "surface_models")
SURFACE_EXTRA = os.path.join(folder_paths.base_path, "surface_extra")

# The two ways packs add model folders: the function, and writing the dict.
folder_paths.add_model_folder_path("surface_kind_fn", SURFACE_EXTRA)
folder_paths.folder_names_and_paths["surface_kind"] = ([SURFACE_MODELS], {".bin"})
if "surface_kind" in folder_paths.folder_names_and_paths:
    folder_paths.folder_names_and_paths["surface_kind"][1].add(".pt")
# A web directory written into the reference's dict rather than declared with WEB_DIRECTORY.
nodes.EXTENSION_WEB_DIRS["surface_extra_web"] = os.path.join(HERE, "web")


@PromptServer.instance.routes.get("/surface_pack/ping")
async def ping(request):
    return web.json_response({"pong": True, "max_resolution": MAX_RESOLUTION})


async def _via_router(request):
    return web.json_response({"added_by": "app.router.add_route"})


# Packs reach for the aiohttp application while they import (comfyui-tooling-nodes, Easy-Use).
PromptServer.instance.app.router.add_route("PUT", "/api/surface_pack/put", _via_router)
PromptServer.instance.app.add_routes([web.static("/surface_pack/static", os.path.join(HERE, "web"))])


def _rewrite(json_data):
    """``add_on_prompt_handler``: a SurfaceEcho text of ``__handler__`` is replaced before validation."""
    for node in json_data.get("prompt", {}).values():
        if node.get("class_type") == "SurfaceEcho" and node["inputs"].get("text") == "__handler__":
            node["inputs"]["text"] = "rewritten by the on_prompt handler"
    return json_data


PromptServer.instance.add_on_prompt_handler(_rewrite)


def _facts(**values):
    return {"ui": {"facts": [json.dumps(values, default=str)]}}


class _Node:
    CATEGORY = "surface"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "run"


class SurfaceEcho(_Node):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""})}}

    def run(self, text):
        return _facts(text=text)


class SurfaceFolderPaths(_Node):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def run(self, ckpt_name):
        output = folder_paths.get_output_directory()
        saved = folder_paths.get_save_image_path("surface/shot", output, 8, 8)
        return _facts(
            models_dir=folder_paths.models_dir,
            output=output,
            temp=folder_paths.get_temp_directory(),
            input=folder_paths.get_input_directory(),
            checkpoint_folders=folder_paths.get_folder_paths("checkpoints"),
            checkpoints=folder_paths.get_filename_list("checkpoints"),
            full_path=folder_paths.get_full_path("checkpoints", ckpt_name),
            missing=folder_paths.get_full_path("checkpoints", "nope.safetensors"),
            annotated=folder_paths.get_annotated_filepath("x.png [output]"),
            pt=sorted(folder_paths.supported_pt_extensions),
            kinds=sorted(folder_paths.folder_names_and_paths),
            surface_kind=folder_paths.get_filename_list("surface_kind"),
            surface_kind_fn=folder_paths.get_filename_list("surface_kind_fn"),
            save=list(saved[1:4]),
            tensors=len(
                comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("checkpoints", ckpt_name))
            ),
        )


class SurfaceProgress(_Node):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 4, "min": 1, "max": MAX_RESOLUTION})}}

    def run(self, steps):
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            bar.update(1)
        instance = PromptServer.instance
        instance.send_sync("surface.event", {"client_id": instance.client_id, "node": instance.last_node_id})
        running = list(instance.prompt_queue.currently_running.values())
        return _facts(running=[item[1] for item in running])


class SurfaceUpscale(_Node):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        samples = image.movedim(-1, 1)
        out = comfy.utils.common_upscale(samples, 24, 12, "bilinear", "center").movedim(1, -1)
        return _facts(shape=list(out.shape))


class SurfaceDevices(_Node):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        mm = comfy.model_management
        device = mm.get_torch_device()
        tensor = mm.cast_to_device(torch.ones(2, dtype=torch.float64), device, torch.float32)
        mm.soft_empty_cache()
        mm.free_memory(1024, device)
        mm.unload_all_models()
        mm.load_models_gpu([])
        return _facts(
            device=str(device),
            offload=str(mm.unet_offload_device()),
            intermediate=str(mm.intermediate_device()),
            unet_dtype=str(mm.unet_dtype()),
            fp16=mm.should_use_fp16(),
            cast=str(tensor.dtype),
            listen=getattr(comfy.cli_args.args, "listen", None) is not None,
        )


class SurfaceModel(_Node):
    """MODEL / CLIP / VAE from CheckpointLoaderSimple, seen through the comfy.* classes."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",), "image": ("IMAGE",)}}

    def run(self, model, clip, vae, image):
        import comfy.ldm.modules.attention as attention
        import comfy.model_base

        comfy.model_management.load_model_gpu(model)
        lora_model, lora_clip = comfy.sd.load_lora_for_models(model, clip, {}, 1.0, 1.0)
        (latent,) = nodes.VAEEncode().encode(vae, image)
        (direct,) = nodes.NODE_CLASS_MAPPINGS["VAEEncode"]().encode(vae, image)
        (cond,) = nodes.CLIPTextEncode().encode(clip, "a glass bottle")
        mask = torch.zeros(image.shape[1], image.shape[2])
        positive, negative, inpaint = nodes.InpaintModelConditioning().encode(cond, cond, image, vae, mask)
        q = torch.rand(1, 4, 16)
        linear = comfy.ops.manual_cast.Linear(16, 16)
        return _facts(
            patcher=isinstance(model, comfy.model_patcher.ModelPatcher),
            base_model=isinstance(model.model, comfy.model_base.BaseModel),
            eps=model.model.model_type == comfy.model_base.ModelType.EPS,
            clip=isinstance(clip, comfy.sd.CLIP),
            vae=isinstance(vae, comfy.sd.VAE),
            lora_new=lora_model is not model and lora_clip is not clip,
            samplers="euler" in comfy.samplers.KSampler.SAMPLERS,
            guider=type(comfy.samplers.CFGGuider(model)).__name__,
            ksampler=isinstance(comfy.samplers.ksampler("euler"), comfy.samplers.KSAMPLER),
            attention=list(attention.optimized_attention(q, q, q, heads=2).shape),
            linear=list(linear(torch.rand(2, 16)).shape),
            latent=list(latent["samples"].shape),
            latent_equal=bool(torch.equal(latent["samples"], direct["samples"])),
            cond=[len(cond), cond[0][0].ndim, "pooled_output" in cond[0][1]],
            inpaint=[list(inpaint["samples"].shape), "concat_latent_image" in positive[0][1]],
        )


class SurfaceLate:
    """Registered by writing ``nodes.NODE_CLASS_MAPPINGS`` at import, not through the pack's dict."""

    CATEGORY = "surface"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 3})}}

    def run(self, value):
        return (value * 10,)


nodes.NODE_DISPLAY_NAME_MAPPINGS["SurfaceLate"] = "Late (named first)"
nodes.NODE_CLASS_MAPPINGS["SurfaceLate"] = SurfaceLate


class BlurKernel(Enum):
    gaussian = "gaussian"
    box = "box"


class SurfaceV3(io.ComfyNode):
    """The reference's positional io call forms (comfyui-inpaint-nodes writes them so)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SurfaceV3",
            category="surface",
            inputs=[
                io.Combo.Input("blur_type", BlurKernel, default=BlurKernel.gaussian),
                io.Int.Input("size", "Kernel size", False, "odd sizes only", default=3),
                io.Custom("SURFACE_DATA").Input("data", "surface data", True),
            ],
            outputs=[io.String.Output("summary", "Summary")],
        )

    @classmethod
    def execute(cls, blur_type, size, data=None):
        return io.NodeOutput(f"{blur_type}:{size}")


NODE_CLASS_MAPPINGS = {
    "SurfaceEcho": SurfaceEcho,
    "SurfaceFolderPaths": SurfaceFolderPaths,
    "SurfaceProgress": SurfaceProgress,
    "SurfaceUpscale": SurfaceUpscale,
    "SurfaceDevices": SurfaceDevices,
    "SurfaceModel": SurfaceModel,
    "SurfaceV3": SurfaceV3,
}
