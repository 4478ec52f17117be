"""ControlNet: the network against diffusers' ``ControlNetModel``, the control objects, and
txt2img with ControlNetLoader + ControlNetApplyAdvanced through the real server.

The reference network is diffusers' ``ControlNetModel`` with tiny random weights (every
parameter, including the zero-initialised output convolutions, randomised so each one shows in
the residuals). Its state dict is the diffusers-layout file; the single-file layout is the same
weights renamed (``control_model.`` + the original names), so both loaders are checked against
it. The end-to-end run is compared with a direct computation: our UNet through our KSampler
plumbing, with the residuals of diffusers' ControlNet (fed the same scaled input, timestep and
hint) handed to each model call; the server's latent must match it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.control import (
    ControlBase,
    ControlNet,
    ControlNetLoadError,
    controlnet_from_state_dict,
)
from plugins.core_nodes.models.controlnet import ControlNetError, build_controlnet, from_diffusers
from plugins.core_nodes.nodes.controlnet import ControlNetApply, ControlNetApplyAdvanced

from . import tiny_pipeline, tiny_sd
from .node_helpers import messages, run_prompt

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-5
HINT_SIZE = (80, 96)  # (height, width): not the image size, so the hint is cropped and resized
STEPS, CFG, SEED, STRENGTH = 4, 4.0, 11, 0.8  # 4 divides 1000: "simple" = diffusers' "trailing"


def _diffusers_config() -> dict[str, Any]:
    full = tiny_sd.diffusers_config(tiny_pipeline.UNETS["sd1"])
    keep = (
        "in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
        "attention_head_dim", "use_linear_projection", "transformer_layers_per_block",
    )  # fmt: skip
    return {k: full[k] for k in keep}


@pytest.fixture(scope="module")
def reference() -> Any:
    from diffusers import ControlNetModel

    torch.manual_seed(3)
    model = ControlNetModel(**_diffusers_config())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def diffusers_sd(reference: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in reference.state_dict().items()}


@pytest.fixture(scope="module")
def single_file_sd(diffusers_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"control_model.{k}": v for k, v in from_diffusers(diffusers_sd).items()}


def _hint_image() -> torch.Tensor:
    g = torch.Generator().manual_seed(9)
    return (torch.rand(1, *HINT_SIZE, 3, generator=g) * 255).round() / 255


def _diffusers_residuals(reference: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, hint: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    with torch.no_grad():
        down, mid = reference(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
    return list(down), mid


def test_single_file_layout_has_the_original_names(single_file_sd: dict[str, torch.Tensor]) -> None:
    # Names as in the original ControlNet release files (e.g. control_sd15_canny.pth).
    for key in (
        "control_model.input_hint_block.0.weight",
        "control_model.input_hint_block.14.weight",
        "control_model.zero_convs.0.0.weight",
        "control_model.zero_convs.5.0.bias",
        "control_model.middle_block_out.0.weight",
        "control_model.input_blocks.1.1.proj_in.weight",
        "control_model.input_blocks.3.0.op.weight",
        "control_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "control_model.time_embed.2.weight",
    ):
        assert key in single_file_sd, key
    assert not any(k.startswith("control_model.output_blocks") for k in single_file_sd)


@pytest.mark.parametrize("layout", ["single_file", "diffusers"])
def test_residuals_match_diffusers(layout: str, reference: Any, request: pytest.FixtureRequest) -> None:
    network = build_controlnet(request.getfixturevalue(f"{layout}_sd"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 421.5])
    context = torch.randn(2, 5, tiny_pipeline.CLIP_WIDTH, generator=g)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        ours = network(x, hint, t, context)
    down, mid = _diffusers_residuals(reference, x, t, context, hint)
    assert len(ours["output"]) == len(down) == 6
    for i, (a, b) in enumerate(zip(ours["output"], down, strict=True)):
        assert b.abs().max() > 1e-2
        assert torch.allclose(a, b, atol=ATOL), f"output {i}: {(a - b).abs().max():.2e}"
    assert torch.allclose(ours["middle"][0], mid, atol=ATOL)


def test_bad_weights_are_refused_clearly(single_file_sd: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ControlNetLoadError, match="no ControlNet weights"):
        controlnet_from_state_dict({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, name="x.safetensors")
    broken = dict(single_file_sd)
    del broken["control_model.middle_block_out.0.bias"]
    with pytest.raises(ControlNetLoadError, match="do not fit"):
        controlnet_from_state_dict(broken)
    # A diffusers-layout dict with a readable config but most weights missing.
    partial = {
        "controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 3, 3, 3),
        "conv_in.weight": torch.zeros(32, 4, 3, 3),
        "down_blocks.0.resnets.0.conv1.weight": torch.zeros(32, 32, 3, 3),
    }
    with pytest.raises(ControlNetError, match="lack"):
        from_diffusers(partial)


class _FixedControl(ControlBase):
    """Returns given residuals (scaled by its strength), for checking chaining and merging."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def copy(self) -> _FixedControl:
        c = _FixedControl(self.value)
        self.copy_to(c)
        return c

    def get_control(self, x: torch.Tensor, t: torch.Tensor, cond: Any, batched_number: int, transformer_options: Any = None) -> Any:
        prev = None if self.previous_controlnet is None else self.previous_controlnet.get_control(x, t, cond, batched_number)
        if not self.active(t):
            return prev
        return self.control_merge({"output": [torch.full((1, 1), self.value)], "middle": [torch.ones(1, 1)]}, prev, None)


def test_apply_nodes_chain_scale_and_keep_inputs() -> None:
    image = torch.zeros(1, 8, 8, 3)
    positive = [[torch.zeros(1, 2, 4), {"strength": 0.5}]]
    negative = [[torch.ones(1, 2, 4), {}]]
    node = ControlNetApplyAdvanced()
    pos1, neg1 = node.apply_controlnet(positive, negative, _FixedControl(2.0), image, 0.5, 0.0, 1.0)
    pos2, neg2 = node.apply_controlnet(pos1, neg1, _FixedControl(3.0), image, 2.0, 0.2, 0.7)
    assert positive == [[positive[0][0], {"strength": 0.5}]] and "control" not in negative[0][1]
    first, second = pos1[0][1]["control"], pos2[0][1]["control"]
    assert neg1[0][1]["control"] is first and neg2[0][1]["control"] is second  # one shared chain
    assert second.previous_controlnet is first and pos2[0][1]["control_apply_to_uncond"] is False
    assert first.cond_hint_original.shape == (1, 3, 8, 8) and second.timestep_percent_range == (0.2, 0.7)
    second.pre_run(None, lambda p: 1000.0 * (1 - p))
    out = second.get_control(torch.zeros(1), torch.tensor([500.0]), {}, 1)
    assert out["output"][0].item() == 2.0 * 0.5 + 3.0 * 2.0 and out["middle"][0].item() == 0.5 + 2.0
    # Outside the second's range (sigma 900 > 800) only the first one's residuals remain.
    assert second.get_control(torch.zeros(1), torch.tensor([900.0]), {}, 1)["output"][0].item() == 1.0
    # Strength 0 leaves the conditioning as it is (the same objects).
    assert node.apply_controlnet(positive, negative, _FixedControl(1.0), image, 0.0, 0.0, 1.0) == (positive, negative)
    (old,) = ControlNetApply().apply_controlnet(pos1, _FixedControl(5.0), image, 1.0)
    assert old[0][1]["control"].previous_controlnet is first and old[0][1]["control_apply_to_uncond"] is True


# -- end to end ------------------------------------------------------------------------------


class _DiffusersControl(ControlBase):
    """The direct computation's control: diffusers' ControlNet residuals for each model call."""

    def __init__(self, reference: Any, hint: torch.Tensor, strength: float) -> None:
        super().__init__()
        self.reference, self.hint, self.strength = reference, hint, strength
        self.model_sampling: Any = None

    def pre_run(self, model: Any, percent_to_timestep_function: Any) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling = model.model_sampling

    def get_control(self, x: torch.Tensor, t: torch.Tensor, cond: Any, batched_number: int, transformer_options: Any = None) -> Any:
        ms = self.model_sampling
        down, mid = _diffusers_residuals(
            self.reference, ms.calculate_input(t, x), ms.timestep(t), cond["c_crossattn"], self.hint
        )
        return {"output": [r * self.strength for r in down], "middle": [mid * self.strength], "input": []}


def _center_nearest(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reference's hint preparation: crop to the target aspect ratio, nearest-exact resize."""
    h, w = image.shape[-2:]
    if w / h > width / height:
        new_w = round(h * width / height)
        image = image[..., :, (w - new_w) // 2 : (w - new_w) // 2 + new_w]
    elif w / h < width / height:
        new_h = round(w * height / width)
        image = image[..., (h - new_h) // 2 : (h - new_h) // 2 + new_h, :]
    return torch.nn.functional.interpolate(image, size=(height, width), mode="nearest-exact")


@pytest.fixture
async def server_files(comfy_server: Any, tmp_path: Path, single_file_sd: dict[str, torch.Tensor]) -> Any:
    models = tmp_path / "models"
    tiny_pipeline.write_checkpoint(models / "checkpoints" / "tiny.safetensors", "sd1")
    (models / "controlnet").mkdir(parents=True)
    save_file(single_file_sd, str(models / "controlnet" / "tiny_canny.safetensors"))
    (tmp_path / "input").mkdir()
    pixels = (_hint_image()[0].numpy() * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "input" / "hint.png")
    server = await comfy_server(plugins=["core_nodes", "models"])
    return server, tmp_path


def _prompt(strength: float | None, end_percent: float = 1.0, prefix: str = "cn") -> dict[str, Any]:
    prompt: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a house by a lake"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": prefix}},
    }
    pos, neg = ["2", 0], ["3", 0]
    if strength is not None:
        prompt["5"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny_canny.safetensors"}}
        prompt["6"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
        prompt["9"] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": pos, "negative": neg, "control_net": ["5", 0], "image": ["6", 0],
                "strength": strength, "start_percent": 0.0, "end_percent": end_percent,
            },
        }  # fmt: skip
        pos, neg = ["9", 0], ["9", 1]
    prompt["8"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0], "positive": pos, "negative": neg, "latent_image": ["4", 0], "seed": SEED,
            "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
        },
    }  # fmt: skip
    return prompt


async def _latent(server: Any, root: Path, prompt: dict[str, Any]) -> torch.Tensor:
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    (saved,) = messages(frames, "executed")[-1]["output"]["latents"]
    return load_file(str(root / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


async def test_txt2img_with_controlnet_matches_the_direct_computation(server_files: Any, reference: Any) -> None:
    server, root = server_files
    served = await _latent(server, root, _prompt(STRENGTH))

    model, clip, _ = adapters.load_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")
    hint = _center_nearest(_hint_image().movedim(-1, 1), 64, 64)
    control = _DiffusersControl(reference, hint, STRENGTH)
    positive = [[t, {**o, "control": control}] for t, o in clip_encode(clip, "a house by a lake")]
    negative = [[t, {**o, "control": control}] for t, o in clip_encode(clip, "blurry")]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    direct = run_ksampler(model, SEED, STEPS, CFG, "euler", "simple", positive, negative, latent)["samples"]
    assert served.shape == direct.shape == (1, 4, 8, 8)
    plain = await _latent(server, root, _prompt(None, prefix="plain"))
    assert (served - plain).abs().max() > 1e-2  # the ControlNet changed the result...
    assert torch.allclose(served, direct, atol=1e-4), f"{(served - direct).abs().max():.2e}"  # ...as diffusers' would


async def test_txt2img_with_controlnet_matches_diffusers(server_files: Any, reference: Any) -> None:
    """All-diffusers: ``UNet2DConditionModel`` with the checkpoint's UNet, the ControlNet's
    residuals as its additional residuals, ``EulerDiscreteScheduler`` (trailing spacing) and CFG
    on the noise prediction, from the same seeded noise; tolerance as the trajectory tests'."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from plugins.core_nodes.sampling.noise import prepare_noise
    from plugins.core_nodes.sampling.schedules import ksampler_sigmas

    server, root = server_files
    served = await _latent(server, root, _prompt(STRENGTH, prefix="vs_diffusers"))
    model, clip, _ = adapters.load_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")
    config = {**tiny_sd.diffusers_unet_config("sd1"), "cross_attention_dim": tiny_pipeline.CLIP_WIDTH}
    unet = UNet2DConditionModel(**config)
    ldm = {f"model.diffusion_model.{k}": v for k, v in model.unet.state_dict().items()}
    unet.load_state_dict(convert_ldm_unet_checkpoint(ldm, config), strict=True)
    unet.eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        timestep_spacing="trailing",
    )  # fmt: skip
    scheduler.set_timesteps(STEPS)
    context = torch.cat([clip_encode(clip, "blurry")[0][0], clip_encode(clip, "a house by a lake")[0][0]])
    hint = _center_nearest(_hint_image().movedim(-1, 1), 64, 64).repeat(2, 1, 1, 1)
    sigmas = ksampler_sigmas(model.model_sampling, "simple", "euler", STEPS, 1.0)
    torch.testing.assert_close(sigmas, scheduler.sigmas.float(), rtol=1e-5, atol=0)
    # The same start as the server's: a full denoise scales the noise by sqrt(1 + sigma_max^2)
    # (the reference's max-denoise noise scaling; diffusers' trailing Euler would use sigma_max).
    latents = prepare_noise(torch.zeros(1, 4, 8, 8), SEED) * (1 + sigmas[0] ** 2) ** 0.5
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            down, mid = reference(
                model_in, t, encoder_hidden_states=context, controlnet_cond=hint,
                conditioning_scale=STRENGTH, return_dict=False,
            )  # fmt: skip
            eps_uncond, eps_cond = unet(
                model_in, t, encoder_hidden_states=context,
                down_block_additional_residuals=down, mid_block_additional_residual=mid,
            ).sample.chunk(2)  # fmt: skip
            latents = scheduler.step(eps_uncond + CFG * (eps_cond - eps_uncond), t, latents).prev_sample
    theirs = model.latent_format.process_out(latents)
    scale = theirs.abs().max().item()
    assert scale > 1e-2
    assert (served - theirs).abs().max().item() / scale <= 2e-5


def clip_encode(clip: Any, text: str) -> list[list[Any]]:
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


async def test_strength_zero_and_end_percent_zero_change_nothing(server_files: Any) -> None:
    server, root = server_files
    plain = await _latent(server, root, _prompt(None, prefix="plain"))
    assert torch.equal(await _latent(server, root, _prompt(0.0, prefix="zero")), plain)
    assert torch.equal(await _latent(server, root, _prompt(1.0, end_percent=0.0, prefix="never")), plain)


def test_loader_wraps_a_fresh_control_each_time(tmp_path: Path, single_file_sd: dict[str, torch.Tensor]) -> None:
    from plugins.core_nodes.models.control import load_controlnet

    path = tmp_path / "control_v11e_sd15_shuffle.safetensors"
    save_file(single_file_sd, str(path))
    a, b = load_controlnet(path), load_controlnet(path)
    assert isinstance(a, ControlNet) and a is not b and a.global_average_pooling
    assert a.get_models()[0].model is a.control_model
    with pytest.raises(FileNotFoundError):
        load_controlnet(tmp_path / "missing.safetensors")


# -- SDXL: the ADM vector y reaches the ControlNet ------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_reference() -> Any:
    from diffusers import ControlNetModel

    full = tiny_sd.diffusers_config(tiny_pipeline.UNETS["sdxl"])
    drop = ("out_channels", "up_block_types", "class_embed_type")
    torch.manual_seed(4)
    model = ControlNetModel(**{k: v for k, v in full.items() if k not in drop})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def test_sdxl_residuals_match_diffusers(sdxl_reference: Any) -> None:
    from plugins.core_nodes.models.unet import sdxl_adm

    sd = {k: v.detach().clone() for k, v in sdxl_reference.state_dict().items()}
    network = build_controlnet({f"control_model.{k}": v for k, v in from_diffusers(sd).items()})
    assert network.config.adm_in_channels is not None and network.config.use_linear_in_transformer
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([700.0])
    context = torch.randn(1, 5, 2 * tiny_pipeline.CLIP_WIDTH, generator=g)
    pooled = torch.randn(1, tiny_pipeline.CLIP_G.projection_dim, generator=g)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    sizes = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]
    with torch.no_grad():
        ours = network(x, hint, t, context, y=sdxl_adm(pooled, *sizes))
        down, mid = sdxl_reference(
            x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.tensor([sizes])},
        )  # fmt: skip
    for a, b in zip(ours["output"], down, strict=True):
        assert torch.allclose(a, b, atol=ATOL), f"{(a - b).abs().max():.2e}"
    assert torch.allclose(ours["middle"][0], mid, atol=ATOL)
    with pytest.raises(ValueError, match="ADM"):
        network(x, hint, t, context)


def test_sdxl_sampling_hands_the_controlnet_the_models_adm(tmp_path: Path, sdxl_reference: Any) -> None:
    sd = {k: v.detach().clone() for k, v in sdxl_reference.state_dict().items()}
    model, clip, _ = adapters.load_checkpoint(tiny_pipeline.write_checkpoint(tmp_path / "xl.safetensors", "sdxl"))
    control = controlnet_from_state_dict(sd)
    positive, negative = clip_encode(clip, "a red bicycle"), clip_encode(clip, "")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    plain = run_ksampler(model, SEED, 2, CFG, "euler", "normal", positive, negative, latent)["samples"]
    pos, neg = ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, _hint_image(), 1.0, 0.0, 1.0)
    controlled = run_ksampler(model, SEED, 2, CFG, "euler", "normal", pos, neg, latent)["samples"]
    assert torch.isfinite(controlled).all() and (controlled - plain).abs().max() > 1e-3
    # The run's cleanup dropped the cached hint and the schedule.
    assert pos[0][1]["control"].cond_hint is None and pos[0][1]["control"].model_sampling_current is None


async def test_a_file_that_is_no_controlnet_fails_the_prompt_clearly(server_files: Any) -> None:
    server, root = server_files
    (root / "models" / "controlnet" / "tiny_canny.safetensors").unlink()
    (root / "models" / "controlnet" / "tiny_canny.safetensors").symlink_to(root / "models" / "checkpoints" / "tiny.safetensors")
    frames = await run_prompt(server, _prompt(1.0, prefix="broken"))
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "ControlNetLoader"
    assert "tiny_canny.safetensors holds no ControlNet weights" in error["exception_message"]
    status, _ = await server.json("POST", "/prompt", json={"prompt": {**_prompt(1.0), "5": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "missing.safetensors"}}}})
    assert status == 400


def test_diff_controlnet_adds_the_models_unet_weights(tmp_path: Path) -> None:
    from plugins.core_nodes.models.control import load_controlnet
    from plugins.core_nodes.models.controlnet import ControlNetModel

    model, _, _ = adapters.load_checkpoint(tiny_pipeline.write_checkpoint(tmp_path / "sd1.safetensors", "sd1"))
    torch.manual_seed(8)
    full = ControlNetModel(tiny_pipeline.UNETS["sd1"]).state_dict()
    base = model.model.diffusion_model.state_dict()
    shared = [k for k in full if k in base and base[k].shape == full[k].shape]
    assert "input_blocks.1.1.proj_in.weight" in shared and "zero_convs.0.0.weight" not in shared
    diff = {f"control_model.{k}": (v - base[k] if k in shared else v).contiguous() for k, v in full.items()}
    save_file({**diff, "difference": torch.tensor([])}, str(tmp_path / "diff.safetensors"))
    loaded = load_controlnet(tmp_path / "diff.safetensors", model).control_model.state_dict()
    assert all(torch.allclose(loaded[k], full[k], atol=1e-6) for k in full)


def test_set_union_type_sets_the_control_type_on_a_copy() -> None:
    from plugins.core_nodes.nodes.controlnet import SetUnionControlNetType

    base = _FixedControl(1.0)
    (depth,) = SetUnionControlNetType().set_controlnet_type(base, "depth")
    (auto,) = SetUnionControlNetType().set_controlnet_type(depth, "auto")
    assert depth.extra_args == {"control_type": [1]} and auto.extra_args == {"control_type": []}
    assert base.extra_args == {} and depth is not base


def test_control_lora_is_the_unet_plus_its_low_rank_deltas(tmp_path: Path) -> None:
    """A Control-LoRA file built from a known full ControlNet: its UNet-shared layers stored as
    ``up @ down`` differences from the MODEL's UNet (a conv and a linear layer) or left out (the
    rest equal the UNet's); the loaded control's residuals equal the full network's."""
    from plugins.core_nodes.models.control import load_controlnet
    from plugins.core_nodes.models.control_lora import ControlLora
    from plugins.core_nodes.models.controlnet import ControlNetModel

    model, clip, _ = adapters.load_checkpoint(tiny_pipeline.write_checkpoint(tmp_path / "sd1.safetensors", "sd1"))
    base = model.model.diffusion_model.state_dict()
    torch.manual_seed(6)
    full = ControlNetModel(tiny_pipeline.UNETS["sd1"]).state_dict()
    g = torch.Generator().manual_seed(6)
    file: dict[str, torch.Tensor] = {"lora_controlnet": torch.tensor([])}
    low_rank = {"input_blocks.1.0.in_layers.2": 4, "input_blocks.1.1.transformer_blocks.0.attn1.to_q": 4}
    for key, value in full.items():
        module = key.rsplit(".", 1)[0]
        if module in low_rank and key.endswith(".weight"):
            up = torch.randn(value.shape[0], low_rank[module], generator=g) * 0.1
            down = torch.randn(low_rank[module], value[0].numel(), generator=g) * 0.1
            file[f"{module}.up"], file[f"{module}.down"] = up, down
            full[key] = base[key] + (up @ down).reshape(value.shape)
        elif key in base and base[key].shape == value.shape:
            full[key] = base[key]  # taken from the UNet, not stored
        else:
            file[key] = value
    save_file({k: v.contiguous() for k, v in file.items()}, str(tmp_path / "control-lora-canny.safetensors"))
    control = load_controlnet(tmp_path / "control-lora-canny.safetensors")
    assert isinstance(control, ControlLora) and control.control_model is None

    reference = ControlNetModel(tiny_pipeline.UNETS["sd1"])
    reference.load_state_dict(full)
    (cond, _), = clip_encode(clip, "a tree")
    hint = torch.rand(1, 64, 64, 3, generator=g)
    (pos,), _ = ControlNetApplyAdvanced().apply_controlnet([[cond, {}]], [], control, hint, 1.0, 0.0, 1.0)
    applied = pos[1]["control"]
    applied.pre_run(model.model, model.model_sampling.percent_to_sigma)
    x, sigma = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([3.0])
    ours = applied.get_control(x, sigma, {"c_crossattn": cond}, 1)
    ms = model.model_sampling
    with torch.no_grad():
        expected = reference(ms.calculate_input(sigma, x), hint.movedim(-1, 1), ms.timestep(sigma), cond)
    for a, b in zip(ours["output"], expected["output"], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(ours["middle"][0], expected["middle"][0], atol=1e-5)
    applied.cleanup()
    assert applied.control_model is None


# -- T2I-Adapters -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t2i_reference() -> Any:
    """diffusers' full T2I-Adapter sized for the tiny SD1 UNet (two levels, 32 and 64 channels)."""
    from diffusers import T2IAdapter as DiffusersT2IAdapter

    torch.manual_seed(12)
    adapter = DiffusersT2IAdapter(in_channels=3, channels=[32, 64], num_res_blocks=2, downscale_factor=8, adapter_type="full_adapter")
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return adapter.eval()


def test_t2i_adapter_features_match_diffusers(t2i_reference: Any) -> None:
    from plugins.core_nodes.models.t2i_adapter import build_adapter, from_diffusers

    sd = {k: v.detach().clone() for k, v in t2i_reference.state_dict().items()}
    assert "body.2.in_conv.weight" in from_diffusers(sd) and "body.1.block2.weight" in from_diffusers(sd)
    ours = build_adapter(sd)
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = t2i_reference(hint)
        features = ours(hint)["input"][::-1]
    assert [f is None for f in features] == [True, True, False, True, True, False]
    for a, b in zip([f for f in features if f is not None], theirs, strict=True):
        assert torch.allclose(a, b, atol=ATOL)
    with pytest.raises(ControlNetLoadError, match="style and light"):
        build_adapter({"body.0.in_conv.weight": torch.zeros(1)})


def test_t2i_adapter_file_steers_sampling_through_the_input_blocks(
    tmp_path: Path, t2i_reference: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from plugins.core_nodes.models.control import load_controlnet
    from plugins.core_nodes.models.t2i_adapter import T2IAdapter

    save_file({k: v.contiguous() for k, v in t2i_reference.state_dict().items()}, str(tmp_path / "t2iadapter_canny.safetensors"))
    adapter = load_controlnet(tmp_path / "t2iadapter_canny.safetensors")
    assert isinstance(adapter, T2IAdapter)
    model, clip, _ = adapters.load_checkpoint(tiny_pipeline.write_checkpoint(tmp_path / "sd1.safetensors", "sd1"))
    positive, negative = clip_encode(clip, "a castle"), clip_encode(clip, "")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    plain = run_ksampler(model, SEED, 2, CFG, "euler", "normal", positive, negative, latent)["samples"]
    pos, neg = ControlNetApplyAdvanced().apply_controlnet(positive, negative, adapter, _hint_image(), 1.0, 0.0, 1.0)
    with caplog.at_level("WARNING"):
        steered = run_ksampler(model, SEED, 2, CFG, "euler", "normal", pos, neg, latent)["samples"]
    assert "does not fit" not in caplog.text  # every feature matched its input block's shape
    assert (steered - plain).abs().max() > 1e-3
    assert pos[0][1]["control"].control_input is None  # dropped by the run's cleanup
