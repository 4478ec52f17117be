"""SD3 / SD3.5: family detection from the weights (full-size layouts on meta tensors, tiny files)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models.checkpoint import CheckpointError, detect_family, load_diffusion_model
from plugins.core_nodes.models.mmdit import MMDiT
from tests.plugins.core_nodes.tiny_sd3 import (
    CLIP_G_WIDTH,
    CLIP_L_WIDTH,
    E2E,
    SD3_MEDIUM,
    SD35_LARGE,
    SD35_MEDIUM,
    TINY_SD35_MEDIUM,
    diffusers_transformer,
    hf_clip,
    hf_clip_tokenizer,
    hf_state_dict,
    hf_t5,
    hf_t5_tokenizer,
    meta_weights,
    mmdit_weights,
    sd3_checkpoint,
)


@pytest.mark.parametrize("config", [SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM], ids=["sd3_medium", "sd35_large", "sd35_medium"])
def test_full_size_layouts_are_sd3(config) -> None:
    family = detect_family(meta_weights(config), "big.safetensors")
    assert (family.name, family.prediction) == ("sd3", "flow")
    assert family.unet_config == config
    assert not family.unclip
    assert family.latent_scale == 1.5305


def test_sd35_variants_differ_where_the_reference_says() -> None:
    large = detect_family(meta_weights(SD35_LARGE), "large.safetensors").unet_config
    medium = detect_family(meta_weights(SD35_MEDIUM), "medium.safetensors").unet_config
    sd3 = detect_family(meta_weights(SD3_MEDIUM), "sd3.safetensors").unet_config
    assert (large.depth, large.num_heads, large.hidden_size) == (38, 38, 2432)
    assert (medium.depth, medium.num_heads, medium.hidden_size) == (24, 24, 1536)
    assert medium.x_block_self_attn_layers == tuple(range(13)) and not large.x_block_self_attn_layers
    assert (medium.pos_embed_max_size, large.pos_embed_max_size) == (384, 192)
    assert (sd3.qk_norm, large.qk_norm, medium.qk_norm) == (None, "rms", "rms")
    for config in (large, medium, sd3):
        assert (config.adm_in_channels, config.context_in_dim) == (2048, 4096)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_diffusion_model_file_loads_as_mmdit(tmp_path: Path, prefix: str) -> None:
    weights = mmdit_weights(TINY_SD35_MEDIUM)
    path = tmp_path / "sd35m.safetensors"
    save_file({prefix + k: v for k, v in weights.items()}, str(path))
    family, network = load_diffusion_model(path)
    assert family.name == "sd3" and family.unet_config == TINY_SD35_MEDIUM
    assert isinstance(network, MMDiT)
    loaded = network.state_dict()
    assert set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_half_precision_file_keeps_its_dtype_unless_asked(tmp_path: Path) -> None:
    weights = {k: v.to(torch.bfloat16) for k, v in mmdit_weights(TINY_SD35_MEDIUM).items()}
    path = tmp_path / "bf16.safetensors"
    save_file(weights, str(path))
    assert load_diffusion_model(path)[1].dtype == torch.bfloat16
    assert load_diffusion_model(path, dtype=torch.float32)[1].dtype == torch.float32


def test_mmdit_of_another_latent_width_is_refused() -> None:
    sd = meta_weights(replace(SD3_MEDIUM, in_channels=4, out_channels=4))
    with pytest.raises(CheckpointError, match="odd.safetensors is not an SD3 model"):
        detect_family(sd, "odd.safetensors")


def test_truncated_mmdit_file_is_a_clear_error(tmp_path: Path) -> None:
    weights = mmdit_weights(TINY_SD35_MEDIUM)
    del weights["final_layer.linear.weight"]
    path = tmp_path / "cut.safetensors"
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_diffusion_model(path)


# --- the whole family: text encoders, checkpoints, nodes, sampling against diffusers -------------


PROMPT = "the house in the water"  # T5 ids 8, 629, 16, 387: inside the tiny T5's vocabulary


class Parts:
    """One tiny SD3.5-medium-shaped model set (transformers' text encoders, our MMDiT weights)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clip_l = hf_clip(CLIP_L_WIDTH, 1, large=True)
        self.clip_g = hf_clip(CLIP_G_WIDTH, 2, large=False)
        self.t5 = hf_t5(3)
        self.mmdit = mmdit_weights(E2E, 4)
        models = root / "models"
        for folder in ("checkpoints", "text_encoders", "diffusion_models"):
            (models / folder).mkdir(parents=True, exist_ok=True)
        save_file(sd3_checkpoint(self.mmdit, self.clip_l, self.clip_g, self.t5), str(models / "checkpoints" / "sd35.safetensors"))
        save_file(sd3_checkpoint(self.mmdit, self.clip_l, self.clip_g, None), str(models / "checkpoints" / "sd35_no_t5.safetensors"))
        save_file(self.mmdit, str(models / "diffusion_models" / "sd35_mmdit.safetensors"))
        for name, model in (("clip_l", self.clip_l), ("clip_g", self.clip_g), ("t5xxl", self.t5)):
            save_file(hf_state_dict(model), str(models / "text_encoders" / f"{name}.safetensors"))

    def pipeline(self, with_t5: bool = True) -> Any:
        """diffusers' StableDiffusion3Pipeline on the same weights (euler flow scheduler, no shift:
        the sigmas are handed to it)."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        vae = AutoencoderKL(latent_channels=16, block_out_channels=(32,) * 4, norm_num_groups=32,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip
        return StableDiffusion3Pipeline(
            transformer=diffusers_transformer(E2E, self.mmdit),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
            vae=vae,
            text_encoder=self.clip_l,
            tokenizer=hf_clip_tokenizer(self.root / "tok_l", "<|endoftext|>"),
            text_encoder_2=self.clip_g,
            tokenizer_2=hf_clip_tokenizer(self.root / "tok_g", "!"),
            text_encoder_3=self.t5 if with_t5 else None,
            tokenizer_3=hf_t5_tokenizer(self.root / "tok_t5") if with_t5 else None,
        )


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Parts:
    return Parts(tmp_path_factory.mktemp("sd3"))


def _checkpoint(parts: Parts, name: str = "sd35.safetensors") -> tuple[Any, Any, Any]:
    from plugins.core_nodes.models import adapters

    return adapters.load_checkpoint(parts.root / "models" / "checkpoints" / name)


def test_checkpoint_loads_the_whole_family(parts: Parts) -> None:
    from plugins.core_nodes.models.clip_objects import SD3ClipModel
    from plugins.core_nodes.models.latent_formats import SD3 as SD3_FORMAT
    from plugins.core_nodes.models.model_base import SD3, ModelType

    model, clip, vae = _checkpoint(parts)
    base = model.model
    assert isinstance(base, SD3) and base.model_type == ModelType.FLOW
    assert type(base.model_config).__name__ == "SD3"
    assert base.model_config.unet_config["x_block_self_attn_layers"] == [0]
    assert base.latent_format is SD3_FORMAT and model.latent_format is SD3_FORMAT
    sampling = model.get_model_object("model_sampling")
    assert (sampling.shift, sampling.multiplier) == (3.0, 1000)
    torch.testing.assert_close(sampling.sigma(torch.tensor(500.0)), torch.tensor(0.75))
    assert isinstance(clip.cond_stage_model, SD3ClipModel)
    assert {"clip_l", "clip_g", "t5xxl"} <= set(vars(clip.cond_stage_model)["_modules"])
    assert set(clip.tokenize("x")) == {"l", "g", "t5xxl"}
    assert vae is not None and vae.latent_channels == 16


def test_text_encoding_matches_diffusers_encode_prompt(parts: Parts) -> None:
    _, clip, _ = _checkpoint(parts)
    pipe = parts.pipeline()
    with torch.no_grad():
        cond_ref, uncond_ref, pooled_ref, unpooled_ref = pipe.encode_prompt(
            PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=True, negative_prompt="", max_sequence_length=77
        )
    for text, cond_expected, pooled_expected in ((PROMPT, cond_ref, pooled_ref), ("", uncond_ref, unpooled_ref)):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        assert cond.shape == (1, 77 + 77, 4096) and pooled.shape == (1, CLIP_L_WIDTH + CLIP_G_WIDTH)
        torch.testing.assert_close(cond, cond_expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(pooled, pooled_expected, rtol=0, atol=1e-4)
    # CLIP-L's pooled half is its unprojected pooled state (its projection here is the identity,
    # so a different test: the halves are the two encoders' and neither is zero).
    assert pooled_ref[:, :CLIP_L_WIDTH].abs().mean() > 0 and pooled_ref[:, CLIP_L_WIDTH:].abs().mean() > 0


def test_without_t5_the_clip_tokens_stand_alone(parts: Parts) -> None:
    _, with_t5, _ = _checkpoint(parts)
    _, clip, _ = _checkpoint(parts, "sd35_no_t5.safetensors")
    assert set(clip.models) == {"l", "g"}
    cond, pooled = clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True)
    full, full_pooled = with_t5.encode_from_tokens(with_t5.tokenize(PROMPT), return_pooled=True)
    assert cond.shape == (1, 77, 4096)
    torch.testing.assert_close(cond, full[:, :77], rtol=0, atol=0)
    torch.testing.assert_close(pooled, full_pooled, rtol=0, atol=0)
    assert not cond[..., CLIP_L_WIDTH + CLIP_G_WIDTH :].any()


def test_empty_prompts_left_out_as_the_reference(parts: Parts) -> None:
    from plugins.core_nodes.nodes.sd3 import CLIPTextEncodeSD3

    _, clip, _ = _checkpoint(parts)
    node = CLIPTextEncodeSD3()
    # Only T5 given, empty CLIP prompts left out: the conditioning is T5's alone, pooled zeros
    # of the reference's 768 + 1280 width.
    ((cond, options),) = node.encode(clip, "", "", PROMPT, "none")[0]
    t5_only = clip.encode_from_tokens({"l": [], "g": [], "t5xxl": clip.tokenize(PROMPT)["t5xxl"]}, return_pooled=True)
    assert cond.shape == (1, 77, 4096)
    torch.testing.assert_close(cond, t5_only[0], rtol=0, atol=0)
    assert options["pooled_output"].shape == (1, 768 + 1280) and not options["pooled_output"].any()
    # Everything empty and left out: T5 encodes its bare end token (the reference's empty row of
    # length 0); without T5 the conditioning is 77 zero tokens.
    ((cond, _),) = node.encode(clip, "", "", "", "none")[0]
    end_only = clip.encode_from_tokens({"l": [], "g": [], "t5xxl": [[(1, 1.0)]]})
    assert cond.shape == (1, 1, 4096)
    torch.testing.assert_close(cond, end_only, rtol=0, atol=0)
    _, no_t5, _ = _checkpoint(parts, "sd35_no_t5.safetensors")
    ((cond, _),) = node.encode(no_t5, "", "", "", "none")[0]
    assert cond.shape == (1, 77, 4096) and not cond.any()
    # empty_padding "empty_prompt" encodes the empty prompt for each encoder instead.
    ((cond, options),) = node.encode(clip, "", "", "", "empty_prompt")[0]
    empty, empty_pooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    torch.testing.assert_close(cond, empty, rtol=0, atol=0)
    torch.testing.assert_close(options["pooled_output"], empty_pooled, rtol=0, atol=0)
    # Different prompts per encoder: CLIP-L reads its own.
    ((mixed, _),) = node.encode(clip, "a", PROMPT, PROMPT, "none")[0]
    ((same, _),) = node.encode(clip, PROMPT, PROMPT, PROMPT, "none")[0]
    assert not torch.allclose(mixed[..., :CLIP_L_WIDTH], same[..., :CLIP_L_WIDTH])
    torch.testing.assert_close(mixed[..., CLIP_L_WIDTH:], same[..., CLIP_L_WIDTH:], rtol=0, atol=0)


def test_non_sd3_clip_is_refused_by_the_sd3_encode_node(parts: Parts) -> None:
    from plugins.core_nodes.nodes.sd3 import CLIPTextEncodeSD3

    class OneEncoder:
        def tokenize(self, text: str) -> dict[str, Any]:
            return {"l": [[(49406, 1.0), (49407, 1.0)]]}

    with pytest.raises(ValueError, match="needs an SD3 CLIP"):
        CLIPTextEncodeSD3().encode(OneEncoder(), "a", "b", "c", "none")


def test_standalone_text_encoder_files_in_any_slot(parts: Parts) -> None:
    from plugins.core_nodes.models import adapters
    from plugins.core_nodes.models.checkpoint import CheckpointError

    folder = parts.root / "models" / "text_encoders"
    _, reference, _ = _checkpoint(parts)
    expected = reference.encode_from_tokens(reference.tokenize(PROMPT), return_pooled=True)
    files = [folder / "t5xxl.safetensors", folder / "clip_g.safetensors", folder / "clip_l.safetensors"]
    triple = adapters.load_clip(files, "sd3")
    got = triple.encode_from_tokens(triple.tokenize(PROMPT), return_pooled=True)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
    # DualCLIPLoader "sd3" with the two CLIPs: the checkpoint-without-T5 conditioning.
    dual = adapters.load_clip([folder / "clip_g.safetensors", folder / "clip_l.safetensors"], "sd3")
    assert set(dual.models) == {"l", "g"}
    torch.testing.assert_close(dual.encode(PROMPT)[0], expected[0][:, :77], rtol=0, atol=0)
    # CLIPLoader "sd3" with T5 alone.
    single = adapters.load_clip([folder / "t5xxl.safetensors"], "sd3")
    assert set(single.models) == {"t5xxl"}
    torch.testing.assert_close(single.encode(PROMPT)[0], expected[0][:, 77:], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="two CLIP encoders of the same width"):
        adapters.load_clip([folder / "clip_l.safetensors", folder / "clip_l.safetensors"], "sd3")


def _sd3_prompt(loaders: dict[str, Any], model: list[Any], clip: list[Any], seed: int, steps: int, cfg: float) -> dict[str, Any]:
    return {
        **loaders,
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": PROMPT}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
        "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
                                                   "scheduler": "simple", "denoise": 1.0, "model": model,
                                                   "positive": ["pos", 0], "negative": ["neg", 0],
                                                   "latent_image": ["empty", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": "sd3"}},
    }  # fmt: skip


async def _saved_latent(server: Any, prompt: dict[str, Any]) -> torch.Tensor:
    from safetensors.torch import load_file

    from .node_helpers import messages, run_prompt

    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    saved = next(d["output"]["latents"][0] for d in messages(frames, "executed") if d["node"] == "save")
    root = Path(server.kernel.settings.output_path)
    return load_file(str(root / saved["subfolder"] / saved["filename"]))["latent_tensor"]


async def test_txt2img_through_the_server_matches_sd3_pipeline(comfy_server: Any, parts: Parts) -> None:
    """CheckpointLoaderSimple -> CLIPTextEncode (prompt / empty) -> EmptySD3LatentImage -> KSampler
    (euler, simple, 4 steps, cfg 4.5) against StableDiffusion3Pipeline with the prompt strings, the
    same weights, noise and sigmas; the UNETLoader + TripleCLIPLoader graph gives the same latent."""
    from plugins.core_nodes.sampling.model_sampling import (
        CONST,
        ModelSamplingDiscreteFlow,
        model_sampling_class,
    )
    from plugins.core_nodes.sampling.schedules import calculate_sigmas

    server = await comfy_server(plugins=["core_nodes", "models"], base_directory=parts.root)
    seed, steps, cfg = 11, 4, 4.5
    checkpoint = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd35.safetensors"}}}
    ours = await _saved_latent(server, _sd3_prompt(checkpoint, ["ckpt", 0], ["ckpt", 1], seed, steps, cfg))

    holder = type("Settings", (), {"sampling_settings": {"shift": 3.0}})()
    sigmas = calculate_sigmas(model_sampling_class(ModelSamplingDiscreteFlow, CONST)(holder), "simple", steps)
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        theirs = parts.pipeline()(
            prompt=PROMPT, negative_prompt="", height=64, width=64, num_inference_steps=steps,
            sigmas=sigmas[:-1].tolist(), guidance_scale=cfg, latents=noise, output_type="latent",
            max_sequence_length=77,
        ).images  # fmt: skip
    expected = theirs / 1.5305 + 0.0609  # the LATENT the reference's sampler hands out
    assert (expected - noise / 1.5305).abs().mean() > 0.05
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)

    separate = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "sd35_mmdit.safetensors", "weight_dtype": "default"}},
        "clip": {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "clip_g.safetensors",
                                                              "clip_name2": "t5xxl.safetensors",
                                                              "clip_name3": "clip_l.safetensors"}},
    }  # fmt: skip
    again = await _saved_latent(server, _sd3_prompt(separate, ["unet", 0], ["clip", 0], seed, steps, cfg))
    torch.testing.assert_close(again, ours, rtol=0, atol=1e-5)
