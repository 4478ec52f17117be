"""``comfy.controlnet``, ``comfy.cldm``, ``comfy.diffusers_convert``, ``comfy.ldm.flux`` and the
smaller ``comfy.*`` helpers, used the way packs use them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
async def shims(comfy_server: Any) -> Any:
    return await comfy_server(plugins=["comfy_compat", "models", "core_nodes"], cpu=True)


def _mod(name: str) -> Any:
    return importlib.import_module(name)


async def test_control_classes_subclass_and_merge(shims: Any) -> None:
    cn = _mod("comfy.controlnet")

    class PackControl(cn.ControlBase):  # how Advanced-ControlNet builds its own controls
        def __init__(self, residual: torch.Tensor) -> None:
            super().__init__()
            self.residual = residual

        def get_control(self, x: Any, t: Any, cond: Any, batched_number: int, transformer_options: Any = None) -> Any:
            prev = None if self.previous_controlnet is None else self.previous_controlnet.get_control(x, t, cond, batched_number)
            shared = self.residual.clone()
            return self.control_merge({"input": [shared, shared], "middle": [None], "output": []}, prev, torch.float32)

    first = PackControl(torch.ones(1, 2)).set_cond_hint("hint", strength=0.5, timestep_percent_range=(0.0, 0.5))
    second = PackControl(torch.full((1, 2), 2.0)).set_cond_hint("hint2", strength=2.0)
    second.set_previous_controlnet(first)
    out = second.get_control(None, None, {}, 1)
    # The shared tensor is scaled once: 2 * 2 = 4, plus the previous control's 0.5.
    assert torch.equal(out["input"][0], torch.full((1, 2), 4.5)) and out["middle"] == [None]
    second.pre_run(None, lambda p: 1000 * (1 - p))
    assert second.timestep_range == (1000, 0) and first.timestep_range == (1000, 500)
    copy = cn.ControlNet()
    second.copy_to(copy)
    assert copy.strength == 2.0 and copy.cond_hint_original == "hint2" and copy.extra_conds == []
    assert cn.ControlNet().extra_conds == ["y"]
    second.cleanup()
    assert first.timestep_range is None
    linear = PackControl(torch.ones(1, 1))
    linear.strength, linear.strength_type = 0.5, cn.StrengthType.LINEAR_UP
    merged = linear.control_merge({"output": [torch.ones(1), torch.ones(1)]}, None, None)
    assert [t.item() for t in merged["output"]] == [0.25, 0.5]

    batch = torch.arange(2.0).reshape(2, 1)
    assert cn.broadcast_image_to(batch, 4, 2).flatten().tolist() == [0, 1, 0, 1]
    assert cn.broadcast_image_to(batch[:1], 4, 2).shape[0] == 1
    assert issubclass(cn.ControlLora, cn.ControlNet) and issubclass(cn.T2IAdapter, cn.ControlBase)


async def test_controlnet_loading_and_the_apply_node_as_packs_call_them(shims: Any, tmp_path: Path) -> None:
    cn = _mod("comfy.controlnet")
    cldm = _mod("comfy.cldm.cldm")
    nodes = _mod("nodes")
    from plugins.core_nodes.models import control
    from tests.plugins.core_nodes import tiny_pipeline

    assert cn.ControlNet is control.ControlNet and cn.ControlBase is control.ControlBase
    with pytest.raises(FileNotFoundError, match="canny"):
        cn.load_controlnet(str(tmp_path / "canny.safetensors"))

    class Sparse(cldm.ControlNet):  # how SparseCtrl / ControlNet++ subclass the network
        pass

    # The reference's constructor arguments (model_detection's SD1.5 style, per-block depths).
    net = Sparse(image_size=32, in_channels=4, model_channels=32, hint_channels=3, num_res_blocks=2, channel_mult=(1, 2),
                 num_heads=8, context_dim=tiny_pipeline.CLIP_WIDTH, use_spatial_transformer=True,
                 transformer_depth=[1, 1, 0, 0], transformer_depth_middle=1)  # fmt: skip
    assert net.model_channels == 32 and net.num_res_blocks == [2, 2] and net.dims == 2
    assert len(net.zero_convs) == len(net.input_blocks) == 6
    out = net(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 64, 64), torch.tensor([10.0]), torch.zeros(1, 3, tiny_pipeline.CLIP_WIDTH))
    assert len(out["output"]) == 6 and out["middle"][0].shape == (1, 64, 4, 4)

    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))
    loaded = cn.load_controlnet(str(path))
    assert isinstance(loaded, cn.ControlNet) and not loaded.global_average_pooling
    assert isinstance(cn.load_controlnet_state_dict(net.state_dict()), cn.ControlNet)
    image = torch.zeros(1, 16, 16, 3)
    positive, negative = [[torch.zeros(1, 2, 8), {}]], [[torch.zeros(1, 2, 8), {}]]
    # Impact / tinyterra call the core node class through ``nodes``, positionally.
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, loaded, image, 0.7, 0.0, 0.5)
    c = pos[0][1]["control"]
    assert c is neg[0][1]["control"] and c.strength == 0.7 and c.timestep_percent_range == (0.0, 0.5)
    assert c.control_model is loaded.control_model and c is not loaded
    # Impact's detailer applies the deprecated node to its positive conditioning alone.
    (impact,) = nodes.ControlNetApply().apply_controlnet(pos, loaded, image, 0.5)
    assert impact[0][1]["control"].previous_controlnet is c and impact[0][1]["control"].strength == 0.5
    with pytest.raises(ValueError, match="no T2I-Adapter weights"):
        cn.load_t2i_adapter({"adapter": {}})


async def test_diffusers_convert_vae_and_text(shims: Any) -> None:
    dc = _mod("comfy.diffusers_convert")
    vae = {
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": torch.zeros(1),
        "decoder.up_blocks.0.resnets.2.norm1.weight": torch.zeros(1),
        "encoder.down_blocks.2.downsamplers.0.conv.weight": torch.zeros(1),
        "decoder.up_blocks.1.upsamplers.0.conv.weight": torch.zeros(1),
        "encoder.mid_block.resnets.1.conv2.weight": torch.zeros(1),
        "decoder.mid_block.attentions.0.to_q.weight": torch.ones(8, 8),
        "decoder.mid_block.attentions.0.group_norm.weight": torch.zeros(8),
        "decoder.conv_norm_out.bias": torch.zeros(1),
    }
    out = dc.convert_vae_state_dict(vae)
    assert set(out) == {
        "encoder.down.1.block.0.nin_shortcut.weight",
        "decoder.up.3.block.2.norm1.weight",
        "encoder.down.2.downsample.conv.weight",
        "decoder.up.2.upsample.conv.weight",
        "encoder.mid.block_2.conv2.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.mid.attn_1.norm.weight",
        "decoder.norm_out.bias",
    }
    assert out["decoder.mid.attn_1.q.weight"].shape == (8, 8, 1, 1)

    q, k, v = torch.full((4, 4), 1.0), torch.full((4, 4), 2.0), torch.full((4, 4), 3.0)
    text = {
        "transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": q,
        "transformer.text_model.encoder.layers.0.self_attn.k_proj.weight": k,
        "transformer.text_model.encoder.layers.0.self_attn.v_proj.weight": v,
        "transformer.text_model.encoder.layers.0.mlp.fc1.bias": torch.zeros(2),
        "transformer.text_model.final_layer_norm.weight": torch.zeros(2),
        "transformer.text_projection.weight": torch.arange(6.0).reshape(2, 3),
    }
    converted = dc.convert_text_enc_state_dict_v20(text)
    assert torch.equal(converted["transformer.resblocks.0.attn.in_proj_weight"], torch.cat([q, k, v]))
    assert "transformer.resblocks.0.mlp.c_fc.bias" in converted and "ln_final.weight" in converted
    assert converted["text_projection"].shape == (3, 2)
    del text["transformer.text_model.encoder.layers.0.self_attn.v_proj.weight"]
    with pytest.raises(ValueError, match="CORRUPTED"):
        dc.convert_text_enc_state_dict_v20(text)


async def test_flux_layers_shapes_and_rope(shims: Any) -> None:
    layers = _mod("comfy.ldm.flux.layers")
    fmath = _mod("comfy.ldm.flux.math")
    torch.manual_seed(7)
    emb = layers.timestep_embedding(torch.tensor([0.0, 0.5]), 8)
    assert emb.shape == (2, 8) and torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # A rotation keeps each pair's length.
    pe = layers.EmbedND(dim=8, theta=10000, axes_dim=[4, 4])(torch.rand(1, 5, 2) * 10)
    x = torch.randn(1, 2, 5, 8)
    rotated = fmath.apply_rope1(x, pe)
    assert torch.allclose(rotated.reshape(1, 2, 5, 4, 2).norm(dim=-1), x.reshape(1, 2, 5, 4, 2).norm(dim=-1), atol=1e-5)

    def init(module: torch.nn.Module) -> torch.nn.Module:
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.02)
        return module

    double = init(layers.DoubleStreamBlock(32, 4, mlp_ratio=2.0, qkv_bias=True))
    single = init(layers.SingleStreamBlock(32, 4, mlp_ratio=2.0))
    img, txt, vec = torch.randn(1, 6, 32), torch.randn(1, 3, 32), torch.randn(1, 32)
    pe = layers.EmbedND(dim=8, theta=10000, axes_dim=[2, 2, 4])(torch.rand(1, 9, 3))
    seen: list[Any] = []
    options = {"patches": {"attn1_output_patch": [lambda attn, extra: seen.append(extra["img_slice"]) or attn]}}
    out_img, out_txt = double(img, txt, vec, pe, transformer_options=options)
    assert out_img.shape == img.shape and out_txt.shape == txt.shape and seen == [[3, 9]]
    assert single(torch.cat((txt, img), 1), vec, pe).shape == (1, 9, 32)
    assert layers.LastLayer(32, 2, 4)(img, vec).shape == (1, 6, 16)


async def test_small_helpers(shims: Any, tmp_path: Path) -> None:
    common = _mod("comfy.ldm.common_dit")
    x = torch.randn(1, 3, 5, 6)
    assert common.pad_to_patch_size(x, (2, 4)).shape == (1, 3, 6, 8)
    assert torch.allclose(common.rms_norm(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt(), atol=1e-5)
    util = _mod("comfy.ldm.util")
    assert util.exists(0) and not util.exists(None) and util.default(None, lambda: 3) == 3
    kd = _mod("comfy.k_diffusion.utils")
    assert kd.append_dims(torch.zeros(2), 4).shape == (2, 1, 1, 1)
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "b.png")
    Image.new("L", (2, 2)).save(tmp_path / "a.jpg")
    folder = kd.FolderOfImages(tmp_path)
    assert len(folder) == 2 and folder[0][0].mode == "RGB"
    ae = _mod("comfy.ldm.models.autoencoder")
    from plugins.core_nodes.models.vae import AutoencoderKL

    assert ae.AutoencoderKL is AutoencoderKL
    sd = _mod("comfy.sd")
    with pytest.raises(NotImplementedError, match="ClipTarget"):
        sd.CLIP(_mod("comfy.supported_models_base").ClipTarget(None, None))
    assert isinstance(sd.CLIP(no_init=True), sd.CLIP) and not isinstance(object(), sd.CLIP)
    with pytest.raises(FileNotFoundError):
        sd.load_checkpoint(None, str(tmp_path / "missing.safetensors"))

    class PackVAE(sd.VAE):  # ExtraModels subclasses VAE with its own __init__
        def __init__(self, scale: float) -> None:
            self.latent_scale = scale

    assert PackVAE(0.5).latent_scale == 0.5 and isinstance(PackVAE(0.5), sd.VAE)
    from tests.plugins.core_nodes import tiny_pipeline

    weights = {k: v for k, v in tiny_pipeline.checkpoint_dict("sd1").items() if k.startswith("first_stage_model.")}
    vae = sd.VAE(sd=weights)
    assert isinstance(vae, sd.VAE) and not isinstance(vae, PackVAE)
    assert not isinstance(object(), sd.VAE)

    out = _mod("comfy.clip_vision").Output()
    out["last_hidden_state"] = torch.ones(1, 2)
    assert torch.equal(sd.StyleModel(lambda h: h * 3).get_cond(out), torch.full((1, 2), 3.0))
    with pytest.raises(FileNotFoundError, match="load_style_model"):
        sd.load_style_model(str(tmp_path / "redux.safetensors"))


async def test_chainner_model_loading_uses_spandrel(shims: Any) -> None:
    loading = _mod("comfy_extras.chainner_models.model_loading")
    from spandrel import UnsupportedModelError

    with pytest.raises(UnsupportedModelError):
        loading.load_state_dict({"nothing.weight": torch.zeros(1)})


async def test_load_diffusion_model_state_dict(shims: Any) -> None:
    from plugins.core_nodes.models.checkpoint import CheckpointError
    from tests.plugins.core_nodes import tiny_pipeline

    sd = _mod("comfy.sd")
    full = tiny_pipeline.checkpoint_dict("sd1")
    unet_sd = {k: v for k, v in full.items() if k.startswith("model.diffusion_model.")}
    model = sd.load_diffusion_model_state_dict(unet_sd)
    assert model.family.name == "sd1"
    weights = model.unet.state_dict()
    assert all(torch.equal(weights[k[len("model.diffusion_model."):]], v) for k, v in unet_sd.items())
    assert sd.load_unet_state_dict({k[len("model.diffusion_model."):]: v for k, v in unet_sd.items()}).family.name == "sd1"
    with pytest.raises(CheckpointError, match="diffusers UNet layout"):
        sd.load_diffusion_model_state_dict({"conv_in.weight": torch.zeros(8, 4, 3, 3)})
    with pytest.raises(TypeError):
        sd.load_diffusion_model_state_dict(None)
    # Layer classes a pack hands over are used (tests/compat/test_custom_operations.py); an
    # object without them is refused by name.
    with pytest.raises(TypeError, match=r"custom_operations.*has no Linear"):
        sd.load_diffusion_model_state_dict(unet_sd, model_options={"custom_operations": object()})


async def test_server_models_answer_family_checks_and_load_bookkeeping(shims: Any) -> None:
    from tests.plugins.core_nodes import tiny_pipeline

    sd, sm, mm = _mod("comfy.sd"), _mod("comfy.supported_models"), _mod("comfy.model_management")
    full = tiny_pipeline.checkpoint_dict("sdxl")
    model = sd.load_diffusion_model_state_dict({k: v for k, v in full.items() if k.startswith("model.diffusion_model.")})
    config = model.model.model_config
    assert isinstance(config, sm.SDXL) and not isinstance(config, (sm.SD15, sm.SDXLRefiner))
    mm.load_models_gpu([model])
    assert mm.loaded_models() == [model] and mm.loaded_models(only_currently_used=True) == [model]
    clone = model.clone()
    mm.load_model_gpu(clone)
    assert mm.loaded_models()[0] is clone
    mm.unload_all_models()
    assert mm.loaded_models() == []


async def test_load_text_encoder_state_dicts_matches_the_checkpoint_clip(shims: Any, tmp_path: Path) -> None:
    from plugins.core_nodes.models import adapters
    from plugins.core_nodes.models.checkpoint import CheckpointError
    from tests.plugins.core_nodes import tiny_pipeline

    sd = _mod("comfy.sd")
    path = tiny_pipeline.write_checkpoint(tmp_path / "tiny.safetensors", "sd1")
    _, ckpt_clip, _ = adapters.load_checkpoint(path)
    prefix = "cond_stage_model.transformer."
    weights = {k[len(prefix):]: v for k, v in tiny_pipeline.checkpoint_dict("sd1").items() if k.startswith(prefix)}
    clip = sd.load_text_encoder_state_dicts([weights])
    assert isinstance(clip, sd.CLIP)
    tokens = clip.tokenize("a (cat:1.2) on a mat")
    assert tokens == ckpt_clip.tokenize("a (cat:1.2) on a mat")
    ours, ours_pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    theirs, theirs_pooled = ckpt_clip.encode_from_tokens(tokens, return_pooled=True)
    assert torch.allclose(ours, theirs, atol=1e-5) and torch.allclose(ours_pooled, theirs_pooled, atol=1e-5)
    with pytest.raises(CheckpointError):
        sd.load_text_encoder_state_dicts([{"nothing.weight": torch.zeros(1)}])
    with pytest.raises(ValueError, match="not supported"):
        sd.load_text_encoder_state_dicts([weights], clip_type=sd.CLIPType.FLUX)
