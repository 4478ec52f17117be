"""ControlNetInpaintingAliMamaApply: for a control taking the mask as extra hint channels the
masked-out pixels are zeroed and the kept-area mask rides along (checked against the ControlNet
network called on a hint built by hand), any other control gets the plain advanced apply, and
through the server the node samples as ControlNetApplyAdvanced does for a plain ControlNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.control import ControlNet
from plugins.core_nodes.models.controlnet import ControlNetModel
from plugins.core_nodes.nodes.controlnet import ControlNetApplyAdvanced, ControlNetInpaintingAliMamaApply

from . import tiny_pipeline, tiny_sd
from .node_helpers import messages, run_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _network(hint_channels: int, seed: int) -> ControlNetModel:
    torch.manual_seed(seed)
    net = ControlNetModel(tiny_pipeline.UNETS["sd1"], hint_channels)
    tiny_sd._randomize(net, seed)
    return net.eval()


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "sd1")
    return adapters.load_checkpoint(path)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 16, 16, 3, generator=g)
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:6, 3:8] = 1.0  # the area to repaint
    return image, mask


def test_a_concat_mask_control_gets_the_masked_image_and_the_kept_area(sd1: Any) -> None:
    model, clip, vae = sd1
    net = _network(4, seed=2)
    control_net = ControlNet(net, concat_mask=True)
    image, mask = _inputs()
    text = clip.encode_from_tokens(clip.tokenize("a room"))
    positive, negative = ControlNetInpaintingAliMamaApply().apply_inpaint_controlnet(
        [[text, {}]], [[text, {}]], control_net, vae, image, mask, 0.6, 0.0, 1.0
    )
    control = positive[0][1]["control"]
    assert control is negative[0][1]["control"] and control is not control_net

    keep = 1.0 - mask.reshape(1, 1, 8, 8)
    keep_pixels = F.interpolate(keep, size=(16, 16), mode="bilinear", align_corners=False).round()
    masked = image * keep_pixels.movedim(1, -1)
    assert torch.equal(control.cond_hint_original, masked.movedim(-1, 1))
    assert len(control.extra_concat_orig) == 1 and torch.equal(control.extra_concat_orig[0], keep)

    # The residuals: the network on [masked image, kept-area mask] at 8x the latent size.
    sampling = model.model_sampling
    control.pre_run(model, sampling.percent_to_sigma)
    x, sigma = torch.randn(1, 4, 4, 4), torch.tensor([3.0])
    got = control.get_control(x, sigma, {"c_crossattn": text}, 1)
    hint = torch.cat([F.interpolate(masked.movedim(-1, 1), size=(32, 32), mode="nearest-exact"),
                      F.interpolate(keep, size=(32, 32), mode="nearest-exact")], dim=1)  # fmt: skip
    with torch.no_grad():
        direct = net(x=sampling.calculate_input(sigma, x), hint=hint, timesteps=sampling.timestep(sigma), context=text)
    for ours, theirs in zip(got["output"], direct["output"], strict=True):
        torch.testing.assert_close(ours, theirs * 0.6, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["middle"][0], direct["middle"][0] * 0.6, rtol=1e-5, atol=1e-5)
    control.cleanup()


def test_any_other_control_gets_the_plain_apply(sd1: Any) -> None:
    _, _, vae = sd1
    control_net = ControlNet(_network(3, seed=3))
    image, mask = _inputs()
    cond = [[torch.zeros(1, 77, 64), {}]]
    positive, negative = ControlNetInpaintingAliMamaApply().apply_inpaint_controlnet(
        cond, cond, control_net, vae, image, mask, 0.8, 0.1, 0.9
    )
    plain, _ = ControlNetApplyAdvanced().apply_controlnet(cond, cond, control_net, image, 0.8, 0.1, 0.9, vae=vae)
    ours, theirs = positive[0][1]["control"], plain[0][1]["control"]
    assert torch.equal(ours.cond_hint_original, theirs.cond_hint_original)  # the image, unmasked
    assert (ours.strength, ours.timestep_percent_range, ours.extra_concat_orig) == (0.8, (0.1, 0.9), [])
    assert positive[0][1]["control"] is negative[0][1]["control"]
    # Strength 0 leaves the conditioning as it was.
    assert ControlNetInpaintingAliMamaApply.execute(cond, cond, control_net, vae, image, mask, 0.0, 0.0, 1.0) == (cond, cond)


async def test_through_the_server_as_the_advanced_apply(comfy_server: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    tiny_pipeline.write_checkpoint(models / "checkpoints" / "tiny.safetensors", "sd1")
    (models / "controlnet").mkdir(parents=True)
    sd = {f"control_model.{k}": v.contiguous() for k, v in _network(3, seed=4).state_dict().items()}
    save_file(sd, str(models / "controlnet" / "cn.safetensors"))
    server = await comfy_server(plugins=["core_nodes", "models"])

    def prompt(apply: str) -> dict[str, Any]:
        inputs: dict[str, Any] = {"positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0],
                                  "image": ["img", 0], "strength": 0.9, "start_percent": 0.0, "end_percent": 1.0}  # fmt: skip
        if apply == "ControlNetInpaintingAliMamaApply":
            inputs.update(vae=["ckpt", 2], mask=["mask", 0])
        return {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a room"}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
            "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn.safetensors"}},
            "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0xC08040}},
            "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}},
            "apply": {"class_type": apply, "inputs": inputs},
            "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
            "ks": {"class_type": "KSampler",
                   "inputs": {"model": ["ckpt", 0], "positive": ["apply", 0], "negative": ["apply", 1],
                              "latent_image": ["lat", 0], "seed": 3, "steps": 2, "cfg": 3.0,
                              "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "out": {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": apply}},
        }  # fmt: skip

    latents = []
    for apply in ("ControlNetInpaintingAliMamaApply", "ControlNetApplyAdvanced"):
        frames = await run_prompt(server, prompt(apply))
        assert not messages(frames, "execution_error"), messages(frames, "execution_error")
        (saved,) = messages(frames, "executed")[-1]["output"]["latents"]
        latents.append(load_file(str(tmp_path / "output" / saved["filename"]))["latent_tensor"])
    assert torch.equal(latents[0], latents[1])
