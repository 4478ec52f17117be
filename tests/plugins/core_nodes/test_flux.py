"""Flux.1: the transformer against diffusers' ``FluxTransformer2DModel`` on the same tiny random
weights, detection of dev / schnell from full-size key layouts (meta tensors, shapes only), and
the family through the loaders and the real server (see the later tests in this file).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from plugins.core_nodes.models.flux import (
    FLUX_DEV,
    FLUX_SCHNELL,
    FluxTransformer,
    build_flux,
    config_from_state_dict,
)

from .flux_reference import TINY, diffusers_flux, tiny_flux_weights


def _diffusers_call(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
                    y: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """diffusers' packing (FluxPipeline._pack_latents / _prepare_latent_image_ids) around its model."""
    b, c, h, w = x.shape
    packed = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    out = model(
        hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=y, timestep=t,
        img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(ctx.shape[1], 3), guidance=guidance,
    ).sample  # fmt: skip
    return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize("guidance_embed", [True, False], ids=["dev", "schnell"])
def test_transformer_matches_diffusers(guidance_embed: bool) -> None:
    config = replace(TINY, guidance_embed=guidance_embed)
    sd = tiny_flux_weights(config, prefix="model.diffusion_model.")
    ours = build_flux(sd)
    assert ours.config == config
    theirs = diffusers_flux({k[len("model.diffusion_model.") :]: v for k, v in sd.items()}, config)
    torch.manual_seed(3)
    x, ctx, y = torch.randn(2, 16, 8, 6), torch.randn(2, 7, 32), torch.randn(2, 24)
    t = torch.tensor([0.7, 0.3])
    g = torch.tensor([3.5, 2.0]) if guidance_embed else None
    with torch.no_grad():
        got = ours(x, t, ctx, y, g)
        expected = _diffusers_call(theirs, x, t, ctx, y, g)
    assert got.shape == x.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    if guidance_embed:  # the distilled guidance really enters
        with torch.no_grad():
            other = ours(x, t, ctx, y, torch.tensor([1.0, 1.0]))
        assert not torch.allclose(other, got, atol=1e-3)


def test_odd_latent_sizes_are_padded_and_cut_back() -> None:
    ours = build_flux(tiny_flux_weights())
    x = torch.randn(1, 16, 7, 5)
    with torch.no_grad():
        out = ours(x, torch.tensor([0.5]), torch.randn(1, 3, 32), torch.randn(1, 24), torch.tensor([3.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def _meta_layout(config: object, prefix: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = FluxTransformer(config)  # type: ignore[arg-type]
    return {prefix + k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("config", "variant"), [(FLUX_DEV, "dev"), (FLUX_SCHNELL, "schnell")])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_full_size_layouts_are_recognised(config: object, variant: str, prefix: str) -> None:
    sd = _meta_layout(config, prefix)
    inner = {k[len(prefix) :]: v for k, v in sd.items()}
    found = config_from_state_dict(inner)
    assert found == config and found.variant == variant
    assert (found.hidden_size, found.num_heads, found.depth, found.depth_single_blocks) == (3072, 24, 19, 38)
    assert found.axes_dim == (16, 56, 56) and found.latent_channels == 16


# --- the family through the loaders and the server ------------------------------------------------

E2E = replace(TINY, vec_in_dim=64)  # CLIP-L's pooled width: a 64-wide tiny CLIP (one 64-wide head)


def _tiny_clip_l() -> torch.nn.Module:
    import transformers

    torch.manual_seed(11)
    cfg = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip
    return transformers.CLIPTextModel(cfg).eval()


def _tiny_t5() -> torch.nn.Module:
    import transformers

    torch.manual_seed(12)
    cfg = transformers.T5Config(
        vocab_size=32128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    )  # fmt: skip
    model = transformers.T5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _write_files(root: Path) -> tuple[dict[str, torch.Tensor], torch.nn.Module, torch.nn.Module]:
    from safetensors.torch import save_file

    flux_sd = tiny_flux_weights(E2E, seed=5)
    clip, t5 = _tiny_clip_l(), _tiny_t5()
    (root / "diffusion_models").mkdir(parents=True)
    (root / "text_encoders").mkdir(parents=True)
    save_file(flux_sd, str(root / "diffusion_models" / "flux_tiny.safetensors"))
    clip_sd = {k if k.startswith("text_model.") else "text_model." + k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(clip_sd, str(root / "text_encoders" / "clip_l.safetensors"))
    t5_sd = {k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(t5_sd, str(root / "text_encoders" / "t5xxl_tiny.safetensors"))
    return flux_sd, clip, t5


def test_unet_loader_files_and_dtypes(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from plugins.core_nodes.models import adapters
    from plugins.core_nodes.models.flux_family import FluxModel
    from plugins.core_nodes.models.model_base import Flux, ModelType

    sd = tiny_flux_weights(E2E, seed=5)
    save_file(sd, str(tmp_path / "bf16.safetensors"))
    model = adapters.load_unet(tmp_path / "bf16.safetensors")
    assert isinstance(model.model, Flux) and type(model.model) is FluxModel
    assert model.model.model_type == ModelType.FLUX and type(model.model.model_config).__name__ == "Flux"
    assert model.latent_format.scale_factor == 0.3611 and model.model_sampling.shift == 1.15
    x, t, ctx, y = torch.randn(1, 16, 4, 4), torch.tensor([0.6]), torch.randn(1, 3, 32), torch.randn(1, 64)
    with torch.no_grad():
        reference = model.unet(x, t, ctx, y, torch.tensor([3.5]))
    for choice, storage in (("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        fp8 = adapters.load_unet(tmp_path / "bf16.safetensors", choice)
        assert fp8.unet.double_blocks[0].img_attn.qkv.weight.dtype == storage
        assert fp8.unet.dtype == torch.float32  # computed in fp32 on the CPU, cast per layer
        with torch.no_grad():
            out = fp8.unet(x, t, ctx, y, torch.tensor([3.5]))
            rounded = {k: v.to(storage).float() if v.ndim == 2 else v for k, v in sd.items()}
            expected = build_flux(rounded)(x, t, ctx, y, torch.tensor([3.5]))
        # The same as the network holding the fp8-rounded weights in float32.
        assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)
        assert not torch.allclose(out, reference, atol=1e-3)
    # A file stored in fp8 keeps its storage too; schnell (no guidance_in) gets shift 1.
    schnell = {k: v for k, v in tiny_flux_weights(replace(E2E, guidance_embed=False)).items()}
    save_file({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in schnell.items()}, str(tmp_path / "s.safetensors"))
    loaded = adapters.load_unet(tmp_path / "s.safetensors")
    assert type(loaded.model.model_config).__name__ == "FluxSchnell" and loaded.model_sampling.shift == 1.0
    assert loaded.unet.img_in.weight.dtype == torch.float8_e4m3fn


async def test_txt2img_through_the_server_matches_flux_pipeline(comfy_server: Any, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from safetensors.torch import load_file

    from plugins.core_nodes.models.t5_tokenizer import T5Tokenizer
    from plugins.core_nodes.models.tokenizer import PromptTokenizer
    from plugins.core_nodes.sampling.model_sampling import CONST, ModelSamplingFlux, model_sampling_class
    from plugins.core_nodes.sampling.schedules import calculate_sigmas

    from .node_helpers import messages, run_prompt

    flux_sd, clip, t5 = _write_files(tmp_path / "models")
    server = await comfy_server(plugins=["core_nodes", "models"])
    seed, steps, text, guidance = 7, 4, "a red boat on a lake", 3.5
    prompt = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux_tiny.safetensors", "weight_dtype": "default"}},
        "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_tiny.safetensors",
                                                            "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "pos": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["clip", 0], "clip_l": text, "t5xxl": text,
                                                              "guidance": guidance}},
        "neg": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["clip", 0], "clip_l": "", "t5xxl": "",
                                                              "guidance": guidance}},
        "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
                                                   "scheduler": "simple", "denoise": 1.0, "model": ["unet", 0],
                                                   "positive": ["pos", 0], "negative": ["neg", 0],
                                                   "latent_image": ["empty", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": "flux"}},
    }  # fmt: skip
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    saved = next(d["output"]["latents"][0] for d in messages(frames, "executed") if d["node"] == "save")
    root = Path(server.kernel.settings.output_path)
    ours = load_file(str(root / saved["subfolder"] / saved["filename"]))["latent_tensor"]

    # diffusers: the same weights, text encoded by transformers' models on the reference's token ids,
    # the same noise and sigmas (ModelSamplingFlux's simple schedule, shift 1.15), guidance 3.5.
    clip_ids = torch.tensor([[t for t, _ in PromptTokenizer().tokenize_with_weights(text)[0]]])
    t5_ids = torch.tensor([[t for t, _ in T5Tokenizer(min_length=256).tokenize_with_weights(text)[0]]])
    with torch.no_grad():
        pooled = clip(input_ids=clip_ids).pooler_output
        embeds = t5(input_ids=t5_ids).last_hidden_state
    sampling = model_sampling_class(ModelSamplingFlux, CONST)()
    sigmas = calculate_sigmas(sampling, "simple", steps)
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    vae = AutoencoderKL(latent_channels=16, block_out_channels=(32, 32, 32, 32), norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=diffusers_flux(flux_sd, E2E),
    )  # fmt: skip
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))
    packed = noise.reshape(1, 16, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 16, 64)
    out = pipe(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=64, width=64, num_inference_steps=steps,
        sigmas=sigmas[:-1].tolist(), guidance_scale=guidance, latents=packed, output_type="latent",
    ).images  # fmt: skip
    theirs = out.reshape(1, 4, 4, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 8, 8)
    expected = theirs / 0.3611 + 0.1159  # the LATENT the reference's sampler hands out
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
