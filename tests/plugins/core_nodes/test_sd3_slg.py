"""SkipLayerGuidanceSD3 on the tiny SD3.5 model, against the formula written out.

Within its sigma range (from ``start_percent`` / ``end_percent`` of the model's schedule) the
guided x0 prediction is ``cfg_result + scale * (cond - cond_skipped)``, where ``cond_skipped`` is
the conditional prediction with the chosen joint blocks skipped; outside it, plain CFG.
SkipLayerGuidanceDiT's ``rescaling_scale`` r then multiplies by ``r * std(cond) / std(result) +
1 - r`` (the SD3 node leaves it at 0). The predictions of the formula come from diffusers'
SD3Transformer2DModel on the same weights (its own ``skip_layers`` for the skipped pass, flow
x0 = x - sigma * v), the guided ones through our real guider; one server prompt (UNETLoader ->
SkipLayerGuidanceSD3 -> KSampler) matches an Euler loop written out over the same formula.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.models import adapters
from plugins.core_nodes.nodes.guidance_patches import SkipLayerGuidanceDiT
from plugins.core_nodes.nodes.sd3 import SkipLayerGuidanceSD3
from tests.plugins.core_nodes.tiny_sd3 import TINY_SD35_MEDIUM, diffusers_transformer, mmdit_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = TINY_SD35_MEDIUM
CFG = 4.0
TOL = 2e-4


def _prompt(seed: int, tokens: int) -> list[list[Any]]:
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, CONFIG.context_in_dim, generator=g)
    return [[context, {"pooled_output": torch.randn(1, CONFIG.adm_in_channels, generator=g)}]]


POS, NEG = _prompt(1, 7), _prompt(2, 5)


class Setup:
    def __init__(self, root: Path) -> None:
        self.weights = mmdit_weights(CONFIG, seed=4)
        save_file(self.weights, str(root / "sd35m.safetensors"))
        self.model = adapters.load_unet(root / "sd35m.safetensors")
        self.theirs = diffusers_transformer(CONFIG, self.weights)

    def x0(self, prompt: list[list[Any]], x: torch.Tensor, sigma: float, skip: list[int] | None = None) -> torch.Tensor:
        """diffusers' flow x0 prediction for ``prompt`` (layers ``skip`` skipped)."""
        ((context, extra),) = prompt
        with torch.no_grad():
            v = self.theirs(
                hidden_states=x, encoder_hidden_states=context, pooled_projections=extra["pooled_output"],
                timestep=torch.tensor([sigma * 1000.0]), skip_layers=skip, return_dict=False,
            )[0]  # fmt: skip
        return x - sigma * v


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("sd3_slg"))


def guided(model: Any, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The MODEL's guided x0 prediction, as the samplers ask the guider for it."""
    guider = CFGGuider(model)
    guider.set_conds(POS, NEG)
    guider.set_cfg(CFG)
    guider.prepare(x)
    with torch.no_grad():
        return guider(x, torch.tensor([sigma]))


def _latent(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_interface_is_the_references() -> None:
    spec = SkipLayerGuidanceSD3.INPUT_TYPES()["required"]
    assert list(spec) == ["model", "layers", "scale", "start_percent", "end_percent"]
    assert spec["layers"][1] == {"default": "7, 8, 9", "multiline": False, "advanced": True}
    assert spec["start_percent"][1]["default"] == 0.01 and spec["end_percent"][1]["default"] == 0.15
    assert SkipLayerGuidanceSD3.CATEGORY == "advanced/guidance" and SkipLayerGuidanceSD3.EXPERIMENTAL
    assert SkipLayerGuidanceSD3.RELATIVE_PYTHON_MODULE == "comfy_extras.nodes_sd3"


def test_guidance_within_the_range_is_the_formula(setup: Setup) -> None:
    model = setup.model
    # Shift 3: 1% .. 15% of the schedule is sigma 0.9966 .. 0.9444.
    sampling = model.get_model_object("model_sampling")
    sigma_start, sigma_end = sampling.percent_to_sigma(0.01), sampling.percent_to_sigma(0.15)
    assert 0.996 < sigma_start < 0.997 and 0.944 < sigma_end < 0.945
    (m,) = SkipLayerGuidanceSD3().skip_guidance_sd3(model, "1", 2.5, 0.01, 0.15)
    assert m is not model
    for sigma in (0.97, 0.95):
        x = _latent(3)
        cond, uncond = setup.x0(POS, x, sigma), setup.x0(NEG, x, sigma)
        skipped = setup.x0(POS, x, sigma, skip=[1])
        cfg = uncond + CFG * (cond - uncond)
        expected = cfg + 2.5 * (cond - skipped)
        assert (expected - cfg).abs().max() > 1e-2  # the skipped block really matters
        torch.testing.assert_close(guided(m, x, sigma), expected, rtol=0, atol=TOL)
        torch.testing.assert_close(guided(model, x, sigma), cfg, rtol=0, atol=TOL)
    # Outside the range (above the start, below the end) it is plain CFG.
    for sigma in (0.999, 0.5):
        x = _latent(4)
        cfg = guided(model, x, sigma)
        torch.testing.assert_close(guided(m, x, sigma), cfg, rtol=0, atol=0)
    # Two layers skipped at once, and no layers named: the MODEL as it was.
    (two,) = SkipLayerGuidanceSD3().skip_guidance_sd3(model, "0,2", 1.5, 0.0, 1.0)
    x = _latent(5)
    cond, uncond = setup.x0(POS, x, 0.6), setup.x0(NEG, x, 0.6)
    expected = uncond + CFG * (cond - uncond) + 1.5 * (cond - setup.x0(POS, x, 0.6, skip=[0, 2]))
    torch.testing.assert_close(guided(two, x, 0.6), expected, rtol=0, atol=TOL)
    assert SkipLayerGuidanceSD3().skip_guidance_sd3(model, "", 3.0, 0.0, 1.0)[0] is model


def test_rescaling_as_the_reference(setup: Setup) -> None:
    """SkipLayerGuidanceDiT's rescaling on the MMDiT: the result times r std(cond) / std(result) + 1 - r."""
    (m,) = SkipLayerGuidanceDiT().skip_guidance(setup.model, 2.0, 0.0, 1.0, "2", "", 0.7)
    x, sigma = _latent(6), 0.8
    cond, uncond = setup.x0(POS, x, sigma), setup.x0(NEG, x, sigma)
    result = uncond + CFG * (cond - uncond) + 2.0 * (cond - setup.x0(POS, x, sigma, skip=[2]))
    expected = result * (0.7 * float(cond.std() / result.std()) + 0.3)
    torch.testing.assert_close(guided(m, x, sigma), expected, rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from .test_sd3 import Parts

    return Parts(tmp_path_factory.mktemp("sd3_slg_server"))


async def test_through_the_server(comfy_server: Any, parts: Any) -> None:
    """UNETLoader + TripleCLIPLoader -> SkipLayerGuidanceSD3 (layer 1, 0% .. 50%) -> KSampler
    (euler, simple, 3 steps) equals the Euler loop written out over the formula, with diffusers'
    predictions on the same weights and the same text conditioning; the range covers the first
    two steps (sigma 1 and 0.857), not the last (0.6)."""
    from plugins.core_nodes.sampling.schedules import calculate_sigmas

    from .test_sd3 import PROMPT, _saved_latent
    from .tiny_sd3 import E2E

    server = await comfy_server(plugins=["core_nodes", "models"], base_directory=parts.root)
    seed, steps, cfg, scale = 7, 3, 3.5, 2.0
    text = parts.root / "models" / "text_encoders"
    prompt = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "sd35_mmdit.safetensors", "weight_dtype": "default"}},
        "clip": {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                 "clip_name2": "clip_g.safetensors", "clip_name3": "t5xxl.safetensors"}},
        "slg": {"class_type": "SkipLayerGuidanceSD3", "inputs": {"model": ["unet", 0], "layers": "1", "scale": scale,
                "start_percent": 0.0, "end_percent": 0.5}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": PROMPT}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
        "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
              "scheduler": "simple", "denoise": 1.0, "model": ["slg", 0], "positive": ["pos", 0],
              "negative": ["neg", 0], "latent_image": ["empty", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": "slg"}},
    }  # fmt: skip
    ours = await _saved_latent(server, prompt)

    clip = adapters.load_clip([text / "clip_l.safetensors", text / "clip_g.safetensors", text / "t5xxl.safetensors"], "sd3")
    pos = clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True)
    neg = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    theirs = diffusers_transformer(E2E, parts.mmdit)

    def x0(cond: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, sigma: float, skip: Any = None) -> torch.Tensor:
        with torch.no_grad():
            v = theirs(hidden_states=x, encoder_hidden_states=cond[0], pooled_projections=cond[1],
                       timestep=torch.tensor([sigma * 1000.0]), skip_layers=skip, return_dict=False)[0]  # fmt: skip
        return x - sigma * v

    sampling = adapters.load_unet(parts.root / "models" / "diffusion_models" / "sd35_mmdit.safetensors").model_sampling
    sigmas = calculate_sigmas(sampling, "simple", steps).tolist()
    sigma_end = float(sampling.percent_to_sigma(0.5))
    assert sigmas[1] > sigma_end > sigmas[2] > 0  # two steps inside the range, one after it
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))  # sigma 1: pure noise
    added = []
    for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
        cond, uncond = x0(pos, x, sigma), x0(neg, x, sigma)
        denoised = uncond + cfg * (cond - uncond)
        if sigma >= sigma_end:
            added.append(scale * (cond - x0(pos, x, sigma, skip=[1])))
            denoised = denoised + added[-1]
        x = x + (following - sigma) * (x - denoised) / sigma
    expected = x / 1.5305 + 0.0609  # the LATENT the sampler hands out
    assert len(added) == 2 and min(float(a.abs().max()) for a in added) > 1e-2  # the guidance matters
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
