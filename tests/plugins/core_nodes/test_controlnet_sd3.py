"""SD3 ControlNets (diffusers ``SD3ControlNetModel`` files, as the reference loads them): the
residuals against diffusers' on the same tiny random weights, the main MMDiT steered by them as
diffusers' SD3 transformer is, ControlNetLoader detection, and ControlNetApplySD3 /
ControlNetApplyAdvanced (with a VAE) through the server against the sampling loop written out
with diffusers' networks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models.control import ControlNet, ControlNetLoadError, load_controlnet
from plugins.core_nodes.models.controlnet_mmdit import (
    MMDiTControlNet,
    build_mmdit_controlnet,
    is_mmdit_controlnet,
)
from plugins.core_nodes.models.mmdit import build_mmdit
from tests.plugins.core_nodes.tiny_sd3 import (
    CLIP_G_WIDTH,
    CLIP_L_WIDTH,
    E2E,
    TINY_SD35_MEDIUM,
    diffusers_transformer,
    hf_clip,
    mmdit_weights,
    sd3_checkpoint,
)

TOL = 1e-4
# A main model whose depth is hidden / 64 (true of every SD3 model, and what the reference's
# residual count relies on): four blocks, 256 wide.
MAIN = replace(TINY_SD35_MEDIUM, hidden_size=256, num_heads=4, depth=4, mlp_hidden=1024, x_block_self_attn_layers=(0,))


def diffusers_controlnet(config: Any, layers: int, seed: int, extra_channels: int = 0) -> Any:
    """diffusers' SD3ControlNetModel sized like ``config``, every weight random (its zero-initialised
    output and hint layers included)."""
    from diffusers import SD3ControlNetModel

    torch.manual_seed(seed)
    model = SD3ControlNetModel(
        sample_size=config.pos_embed_max_size, patch_size=config.patch_size, in_channels=config.in_channels,
        num_layers=layers, attention_head_dim=config.head_dim, num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_in_dim, caption_projection_dim=config.hidden_size,
        pooled_projection_dim=config.adm_in_channels, out_channels=config.out_channels,
        pos_embed_max_size=config.pos_embed_max_size, extra_conditioning_channels=extra_channels,
        dual_attention_layers=tuple(i for i in config.x_block_self_attn_layers if i < layers),
        qk_norm="rms_norm" if config.qk_norm == "rms" else None,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm_q" in name or "norm_k" in name or "norm_added" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.startswith(("controlnet_blocks", "pos_embed_input")):
                p.copy_(0.05 * torch.randn_like(p))
            elif "norm1" in name and "linear" in name:
                p.mul_(4.0)
        model.pos_embed.pos_embed.copy_(0.5 * torch.randn_like(model.pos_embed.pos_embed))
    return model


def _file_weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _inputs(config: Any, seed: int = 3, batch: int = 2, hint_channels: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, 8, 12, generator=g)
    hint = torch.randn(batch, hint_channels, 8, 12, generator=g)
    context = torch.randn(batch, 7, config.context_in_dim, generator=g)
    pooled = torch.randn(batch, config.adm_in_channels, generator=g)
    timesteps = torch.tensor([937.5, 120.25])[:batch]
    return x, hint, context, pooled, timesteps


def _their_residuals(model: Any, x, hint, context, timesteps) -> list[torch.Tensor]:
    with torch.no_grad():
        return model(
            hidden_states=x, controlnet_cond=hint, encoder_hidden_states=context,
            pooled_projections=torch.zeros(x.shape[0], model.config.pooled_projection_dim),
            timestep=timesteps, return_dict=False,
        )[0]  # fmt: skip


@pytest.mark.parametrize("config", [MAIN, replace(MAIN, qk_norm=None, x_block_self_attn_layers=())], ids=["sd35", "sd3"])
def test_residuals_match_diffusers_sd3_controlnet(config) -> None:
    theirs_model = diffusers_controlnet(config, layers=2, seed=1)
    weights = _file_weights(theirs_model)
    assert is_mmdit_controlnet(weights)
    ours = build_mmdit_controlnet(weights, dtype=torch.float32)
    assert isinstance(ours, MMDiTControlNet) and len(ours.joint_blocks) == 2
    x, hint, context, pooled, timesteps = _inputs(config)
    with torch.no_grad():
        out = ours(x=x, hint=hint, timesteps=timesteps, context=context, y=pooled)["output"]
    expected = _their_residuals(theirs_model, x, hint, context, timesteps)
    # Main depth 4 (256 / 64) over 2 ControlNet blocks: each residual twice, the last once less.
    assert len(out) == 3 and out[0] is out[1]
    for got, want in zip((out[0], out[2]), expected, strict=True):
        assert want.abs().mean() > 1e-3
        torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_main_model_takes_the_residuals_as_diffusers_transformer() -> None:
    main = mmdit_weights(MAIN, seed=2)
    theirs_main = diffusers_transformer(MAIN, main)
    theirs_cn = diffusers_controlnet(MAIN, layers=2, seed=4)
    cn = build_mmdit_controlnet(_file_weights(theirs_cn), dtype=torch.float32)
    ours_main = build_mmdit(main, dtype=torch.float32)
    x, hint, context, pooled, timesteps = _inputs(MAIN, seed=8)
    with torch.no_grad():
        control = cn(x=x, hint=hint, timesteps=timesteps, context=context, y=pooled)
        got = ours_main(x, timesteps, context, pooled, control=control)
        plain = ours_main(x, timesteps, context, pooled)
        residuals = _their_residuals(theirs_cn, x, hint, context, timesteps)
        want = theirs_main(
            hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled, timestep=timesteps,
            block_controlnet_hidden_states=residuals, return_dict=False,
        )[0]  # fmt: skip
    assert (want - plain).abs().mean() > 1e-2
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_controlnet_loader_reads_the_file(tmp_path: Path) -> None:
    theirs = diffusers_controlnet(MAIN, layers=1, seed=5, extra_channels=1)
    path = tmp_path / "sd3_inpaint_controlnet.safetensors"
    save_file(_file_weights(theirs), str(path))
    control = load_controlnet(path)
    assert isinstance(control, ControlNet) and isinstance(control.control_model, MMDiTControlNet)
    # The hint is a latent: VAE-encoded, scaled, not shifted; 17 channels are latent + mask.
    assert control.compression_ratio == 1 and control.concat_mask
    assert control.latent_format.scale_factor == 1.5305 and control.latent_format.shift_factor == 0.0
    copy = control.copy()
    assert copy.latent_format is control.latent_format and copy.concat_mask
    broken = _file_weights(theirs)
    del broken["transformer_blocks.0.attn.to_k.weight"]
    with pytest.raises(ControlNetLoadError, match="do not fit"):
        from plugins.core_nodes.models.control import controlnet_from_state_dict

        controlnet_from_state_dict(broken)


def test_without_a_vae_the_sd3_controlnet_says_so(tmp_path: Path) -> None:
    path = tmp_path / "sd3_cn.safetensors"
    save_file(_file_weights(diffusers_controlnet(MAIN, layers=2, seed=6)), str(path))
    control = load_controlnet(path).copy().set_cond_hint(torch.rand(1, 3, 64, 96))

    class Sampling:
        def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
            return sigma * 1000

        def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return x

    control.model_sampling_current = Sampling()
    with pytest.raises(ValueError, match="needs a VAE"):
        control.get_control(torch.zeros(1, 16, 8, 12), torch.tensor([0.5]), {"c_crossattn": torch.zeros(1, 7, 96)}, 1)


# --- through the server ------------------------------------------------------------------------------

# E2E with depth hidden / 64 = 2, so a one-block ControlNet steers block 0 (the reference's count).
SERVER = replace(E2E, depth=2)


class Parts:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mmdit = mmdit_weights(SERVER, 4)
        models = root / "models"
        for folder in ("checkpoints", "controlnet"):
            (models / folder).mkdir(parents=True, exist_ok=True)
        clip_l, clip_g = hf_clip(CLIP_L_WIDTH, 1, large=True), hf_clip(CLIP_G_WIDTH, 2, large=False)
        save_file(sd3_checkpoint(self.mmdit, clip_l, clip_g, None), str(models / "checkpoints" / "sd3.safetensors"))
        self.controlnet = diffusers_controlnet(SERVER, layers=1, seed=7)
        save_file(_file_weights(self.controlnet), str(models / "controlnet" / "sd3_canny.safetensors"))


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Parts:
    return Parts(tmp_path_factory.mktemp("sd3cn"))


PROMPT = "a lighthouse"
COLOR = 0x3080C0


def _prompt(apply: dict[str, Any] | None, seed: int, steps: int, cfg: float) -> dict[str, Any]:
    positive, negative = (["apply", 0], ["apply", 1]) if apply else (["pos", 0], ["neg", 0])
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.safetensors"}},
        "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "sd3_canny.safetensors"}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": COLOR}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": PROMPT}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
                                                   "scheduler": "simple", "denoise": 1.0, "model": ["ckpt", 0],
                                                   "positive": positive, "negative": negative,
                                                   "latent_image": ["empty", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": "sd3cn"}},
    }  # fmt: skip
    if apply:
        prompt["apply"] = apply
    return prompt


def _apply(class_type: str, strength: float, end: float) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "vae": ["ckpt", 2],
        "image": ["img", 0], "strength": strength, "start_percent": 0.0, "end_percent": end}}  # fmt: skip


async def _saved_latent(server: Any, prompt: dict[str, Any]) -> torch.Tensor:
    from safetensors.torch import load_file

    from .node_helpers import messages, run_prompt

    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    saved = next(d["output"]["latents"][0] for d in messages(frames, "executed") if d["node"] == "save")
    root = Path(server.kernel.settings.output_path)
    return load_file(str(root / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def _direct(parts: Parts, seed: int, steps: int, cfg: float, strength: float) -> torch.Tensor:
    """Euler over the flow schedule with diffusers' transformer and ControlNet on the same weights;
    the text from our (separately tested) CLIP, the hint from the checkpoint's VAE scaled by 1.5305."""
    from plugins.core_nodes.models import adapters
    from plugins.core_nodes.sampling.model_sampling import (
        CONST,
        ModelSamplingDiscreteFlow,
        model_sampling_class,
    )
    from plugins.core_nodes.sampling.schedules import calculate_sigmas

    _, clip, vae = adapters.load_checkpoint(parts.root / "models" / "checkpoints" / "sd3.safetensors")
    rgb = torch.tensor([((COLOR >> s) & 0xFF) / 0xFF for s in (16, 8, 0)]).expand(1, 64, 64, 3).clone()
    hint = vae.encode(rgb) * 1.5305
    conds = []
    for text in (PROMPT, ""):
        [[tokens, extra]] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        conds.append((tokens, extra["pooled_output"]))
    holder = type("Settings", (), {"sampling_settings": {"shift": 3.0}})()
    sigmas = calculate_sigmas(model_sampling_class(ModelSamplingDiscreteFlow, CONST)(holder), "simple", steps)
    transformer = diffusers_transformer(SERVER, parts.mmdit)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:], strict=True):
            t = (sigma * 1000).reshape(1)
            v = []
            for context, pooled in conds:
                residuals = _their_residuals(parts.controlnet, x, hint, context, t)
                v.append(transformer(
                    hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled, timestep=t,
                    block_controlnet_hidden_states=[r * strength for r in residuals], return_dict=False,
                )[0])  # fmt: skip
            velocity = v[1] + cfg * (v[0] - v[1])
            x = x + (nxt - sigma) * velocity
    return x / 1.5305 + 0.0609


async def test_controlnet_through_the_server_matches_the_direct_loop(comfy_server: Any, parts: Parts) -> None:
    """ControlNetApplySD3 (and ControlNetApplyAdvanced with its vae input) -> KSampler (euler,
    simple, 3 steps, cfg 3) equals the loop over diffusers' networks; strength 0 and an empty
    percent range give the uncontrolled latent."""
    server = await comfy_server(plugins=["core_nodes", "models"], base_directory=parts.root)
    seed, steps, cfg, strength = 5, 3, 3.0, 0.8
    plain = await _saved_latent(server, _prompt(None, seed, steps, cfg))
    controlled = await _saved_latent(server, _prompt(_apply("ControlNetApplySD3", strength, 1.0), seed, steps, cfg))
    expected = _direct(parts, seed, steps, cfg, strength)
    assert (expected - plain).abs().mean() > 1e-2
    torch.testing.assert_close(controlled, expected, rtol=0, atol=TOL)
    advanced = await _saved_latent(server, _prompt(_apply("ControlNetApplyAdvanced", strength, 1.0), seed, steps, cfg))
    torch.testing.assert_close(advanced, controlled, rtol=0, atol=1e-6)
    off = await _saved_latent(server, _prompt(_apply("ControlNetApplySD3", 0.0, 1.0), seed, steps, cfg))
    torch.testing.assert_close(off, plain, rtol=0, atol=1e-6)
