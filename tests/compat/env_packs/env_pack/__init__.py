"""A pack that, like many real ones, imports the reference's runtime requirements at module top
without declaring them, and uses each of them when its node runs."""

import einops
import kornia
import psutil
import scipy.ndimage
import spandrel
import torch
import torchsde
import torchvision
import torchvision.transforms.functional as TF
import tqdm
from torchvision.ops import nms


class EnvProbe:
    CATEGORY = "compat"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        # IMAGE is [B, H, W, C]; the libraries below want [B, C, H, W].
        chw = einops.rearrange(image, "b h w c -> b c h w")
        flipped = TF.hflip(chw)
        blurred = kornia.filters.gaussian_blur2d(flipped, (3, 3), (1.0, 1.0))
        smoothed = scipy.ndimage.uniform_filter(blurred.numpy(), size=1)
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 3.9], [8.0, 8.0, 9.0, 9.0]])
        kept = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
        brownian = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(1, 1), entropy=7)
        steps = sum(1 for _ in tqdm.tqdm(range(3), disable=True))
        facts = {
            "kept": kept,
            "brownian_shape": list(brownian(0.0, 0.5).shape),
            "steps": steps,
            "cpus": psutil.cpu_count() >= 1,
            "spandrel": hasattr(spandrel, "ModelLoader"),
            "torchvision": torchvision.__version__.split("+")[0],
        }
        out = einops.rearrange(torch.from_numpy(smoothed), "b c h w -> b h w c")
        return {"ui": {"facts": [facts]}, "result": (out,)}


NODE_CLASS_MAPPINGS = {"EnvProbe": EnvProbe}
NODE_DISPLAY_NAME_MAPPINGS = {"EnvProbe": "Environment probe"}
