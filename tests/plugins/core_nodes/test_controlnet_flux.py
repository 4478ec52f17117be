"""Flux InstantX / Union ControlNets (diffusers ``FluxControlNetModel`` files, as the reference
loads them): residuals against diffusers' on the same tiny random weights, the residuals spread over
the main model's blocks as the reference does, ControlNetLoader detection, and ControlNetApplyAdvanced
(with a VAE) through the server against the Euler loop written out with diffusers' networks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models.control import (
    ControlNet,
    ControlNetLoadError,
    controlnet_from_state_dict,
    load_controlnet,
)
from plugins.core_nodes.models.controlnet_flux import (
    FluxControlNet,
    build_flux_controlnet,
    is_flux_controlnet,
)
from plugins.core_nodes.models.latent_formats import FLUX

from .flux_reference import TINY, diffusers_flux
from .test_flux import E2E, _write_files
from .tiny_sd3 import vae16_weights

TOL = 1e-4


def diffusers_controlnet(config: Any, double: int, single: int, seed: int, modes: int | None = None, extra: int = 0) -> Any:
    """diffusers' FluxControlNetModel sized like ``config``, every weight random (std 0.1)."""
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    model = FluxControlNetModel(
        patch_size=1, in_channels=config.in_channels, num_layers=double, num_single_layers=single,
        attention_head_dim=config.head_dim, num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_in_dim, pooled_projection_dim=config.vec_in_dim,
        guidance_embeds=config.guidance_embed, axes_dims_rope=list(config.axes_dim), num_mode=modes,
    ).eval()  # fmt: skip
    if extra:
        # An inpainting file: the hint embedder reads 4 more channels per patch (latent + mask).
        model.controlnet_x_embedder = torch.nn.Linear(config.in_channels + 4 * extra, model.inner_dim)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _pack(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b = x.shape[0]
    return x.reshape(b, h // 2, w // 2, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, h, w)


def _ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def _theirs(model: Any, x, hint, ctx, y, t, guidance, mode: int | None = None) -> tuple[list, list]:
    h, w = x.shape[-2:]
    with torch.no_grad():
        double, single = model(
            hidden_states=_pack(x), controlnet_cond=_pack(hint), encoder_hidden_states=ctx, pooled_projections=y,
            timestep=t, guidance=guidance, img_ids=_ids(h, w), txt_ids=torch.zeros(ctx.shape[1], 3),
            controlnet_mode=None if mode is None else torch.full((x.shape[0], 1), mode), return_dict=False,
        )  # fmt: skip
    return list(double), list(single)


def _inputs(config: Any, seed: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 8, 12, generator=g)
    hint = torch.randn(2, 16, 8, 12, generator=g)
    ctx = torch.randn(2, 5, config.context_in_dim, generator=g)
    y = torch.randn(2, config.vec_in_dim, generator=g)
    return x, hint, ctx, y, torch.tensor([0.9, 0.3]), torch.tensor([3.5, 2.0])


@pytest.mark.parametrize("modes", [None, 4], ids=["instantx", "union"])
def test_residuals_match_diffusers_flux_controlnet(modes: int | None) -> None:
    theirs = diffusers_controlnet(TINY, double=2, single=3, seed=1, modes=modes)
    weights = _weights(theirs)
    assert is_flux_controlnet(weights)
    ours = build_flux_controlnet(weights, dtype=torch.float32)
    assert isinstance(ours, FluxControlNet)
    x, hint, ctx, y, t, guidance = _inputs(TINY)
    mode = 2 if modes else None
    with torch.no_grad():
        out = ours(x=x, hint=hint, timesteps=t, context=ctx, y=y, guidance=guidance, control_type=[mode] if modes else [])
    double, single = _theirs(theirs, x, hint, ctx, y, t, guidance, mode)
    # Spread over Flux.1's 19 double / 38 single blocks: ceil(19 / 2) = 10 and ceil(38 / 3) = 13 each.
    assert len(out["input"]) == 19 and len(out["output"]) == 38
    assert all(r is out["input"][0] for r in out["input"][:10]) and out["input"][10] is out["input"][18]
    assert out["output"][12] is out["output"][0] and out["output"][13] is out["output"][25] and out["output"][26] is out["output"][37]
    for got, want in ((out["input"][0], double[0]), (out["input"][10], double[1]),
                      *((out["output"][13 * i], single[i]) for i in range(3))):  # fmt: skip
        assert want.abs().mean() > 1e-2
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_union_mode_changes_the_residuals() -> None:
    ours = build_flux_controlnet(_weights(diffusers_controlnet(TINY, 1, 1, seed=3, modes=4)), dtype=torch.float32)
    x, hint, ctx, y, t, guidance = _inputs(TINY)
    with torch.no_grad():
        a = ours(x=x, hint=hint, timesteps=t, context=ctx, y=y, guidance=guidance, control_type=[0])["input"][0]
        b = ours(x=x, hint=hint, timesteps=t, context=ctx, y=y, guidance=guidance, control_type=[3])["input"][0]
    assert (a - b).abs().mean() > 1e-3


def test_controlnet_loader_reads_the_file(tmp_path: Path) -> None:
    theirs = diffusers_controlnet(TINY, 1, 1, seed=4, extra=1)
    path = tmp_path / "flux_inpaint_cn.safetensors"
    save_file(_weights(theirs), str(path))
    control = load_controlnet(path)
    assert isinstance(control, ControlNet) and isinstance(control.control_model, FluxControlNet)
    assert control.compression_ratio == 1 and control.concat_mask and control.latent_format is FLUX
    assert {"y", "guidance"} <= set(control.copy().extra_conds)
    broken = _weights(theirs)
    del broken["single_transformer_blocks.0.proj_mlp.weight"]
    with pytest.raises(ControlNetLoadError, match="do not fit"):
        controlnet_from_state_dict(broken)


async def test_controlnet_through_the_server_matches_the_direct_loop(comfy_server: Any, tmp_path: Path) -> None:
    """UNETLoader + DualCLIPLoader + VAELoader + ControlNetLoader -> ControlNetApplyAdvanced ->
    KSampler (euler, simple, 3 steps, cfg 1) equals the Euler loop over diffusers' transformer and
    ControlNet on the same weights; without the control the latent differs."""
    from safetensors.torch import load_file

    from plugins.core_nodes.models import adapters
    from plugins.core_nodes.sampling.model_sampling import CONST, ModelSamplingFlux, model_sampling_class
    from plugins.core_nodes.sampling.schedules import calculate_sigmas

    from .node_helpers import messages, run_prompt

    models = tmp_path / "models"
    flux_sd, _, _ = _write_files(models)
    for folder in ("vae", "controlnet"):
        (models / folder).mkdir()
    save_file(vae16_weights(), str(models / "vae" / "ae.safetensors"))
    cn = diffusers_controlnet(E2E, 1, 1, seed=6)
    save_file(_weights(cn), str(models / "controlnet" / "flux_canny.safetensors"))
    server = await comfy_server(plugins=["core_nodes", "models"], base_directory=tmp_path)
    seed, steps, text, guidance, strength, color = 7, 3, "a red boat", 3.5, 0.7, 0x40A020

    def prompt(controlled: bool) -> dict[str, Any]:
        positive = ["apply", 0] if controlled else ["pos", 0]
        graph = {
            "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux_tiny.safetensors", "weight_dtype": "default"}},
            "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_tiny.safetensors",
                                                                "clip_name2": "clip_l.safetensors", "type": "flux"}},
            "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
            "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "flux_canny.safetensors"}},
            "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
            "pos": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["clip", 0], "clip_l": text, "t5xxl": text,
                                                                  "guidance": guidance}},
            "neg": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["clip", 0], "clip_l": "", "t5xxl": "",
                                                                  "guidance": guidance}},
            "apply": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "vae": ["vae", 0],
                "image": ["img", 0], "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
            "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "k": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
                                                       "scheduler": "simple", "denoise": 1.0, "model": ["unet", 0],
                                                       "positive": positive, "negative": ["neg", 0],
                                                       "latent_image": ["empty", 0]}},
            "save": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": "fluxcn"}},
        }  # fmt: skip
        return graph

    async def latent(controlled: bool) -> torch.Tensor:
        frames = await run_prompt(server, prompt(controlled))
        assert not messages(frames, "execution_error"), messages(frames, "execution_error")
        saved = next(d["output"]["latents"][0] for d in messages(frames, "executed") if d["node"] == "save")
        root = Path(server.kernel.settings.output_path)
        return load_file(str(root / saved["subfolder"] / saved["filename"]))["latent_tensor"]

    ours, plain = await latent(True), await latent(False)

    # The direct loop: text from our (separately tested) encoders, the hint from the same VAE in
    # the Flux latent format, diffusers' networks for the rest.
    clip = adapters.load_clip([models / "text_encoders" / "t5xxl_tiny.safetensors", models / "text_encoders" / "clip_l.safetensors"], "flux")
    [[context, extra]] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    vae = adapters.load_vae(models / "vae" / "ae.safetensors")
    rgb = torch.tensor([((color >> s) & 0xFF) / 0xFF for s in (16, 8, 0)]).expand(1, 64, 64, 3).clone()
    hint = (vae.encode(rgb) - 0.1159) * 0.3611
    sigmas = calculate_sigmas(model_sampling_class(ModelSamplingFlux, CONST)(), "simple", steps)
    transformer = diffusers_flux(flux_sd, E2E)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))
    g = torch.tensor([guidance])
    with torch.no_grad():
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:], strict=True):
            t = sigma.reshape(1)
            double, single = _theirs(cn, x, hint, context, extra["pooled_output"], t, g)
            v = transformer(
                hidden_states=_pack(x), encoder_hidden_states=context, pooled_projections=extra["pooled_output"],
                timestep=t, img_ids=_ids(8, 8), txt_ids=torch.zeros(context.shape[1], 3), guidance=g,
                controlnet_block_samples=[r * strength for r in double],
                controlnet_single_block_samples=[r * strength for r in single], return_dict=False,
            )[0]  # fmt: skip
            x = x + (nxt - sigma) * _unpack(v, 8, 8)
    expected = x / 0.3611 + 0.1159
    assert (expected - plain).abs().mean() > 1e-2
    torch.testing.assert_close(ours, expected, rtol=TOL, atol=TOL)
