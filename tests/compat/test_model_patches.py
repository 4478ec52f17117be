"""MODEL patches packs apply (``comfy.model_patcher`` API) take effect when the model runs.

End to end: ``packs/patch_pack`` patches a clone of the loader's MODEL (an attention patch, an
attention replacement, an object patch on one UNet block, an ``add_patches`` weight difference, an
input-block patch) and KSampler samples it through a real server. Each patch changes the latent;
where the patch is an identity the latent is bit-identical to the unpatched one; a weight
difference or a scaled block equals sampling a checkpoint whose weight was changed the same way;
the original MODEL sampled afterwards is unchanged. The other tests call the shims directly on
tiny random-weight checkpoints, as a pack's code would.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters
from tests.compat.helpers import PACKS
from tests.plugins.core_nodes import tiny_pipeline
from tests.plugins.core_nodes.node_helpers import messages, run_prompt

SIZE = 64  # pixels; 8 x 8 latents
STEPS = 3
PLUGINS = ["comfy_compat", "models", "core_nodes"]
UNET = "model.diffusion_model."
DIFF_KEY = "diffusion_model.input_blocks.1.0.in_layers.2.weight"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_sd1.safetensors", "sd1")


@pytest.fixture(scope="module")
def xl_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_sdxl.safetensors", "sdxl")


def seeded_diff(shape: torch.Size, seed: int) -> torch.Tensor:
    """The difference ``PatchPackAddDiff`` adds."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05


def _changed_checkpoint(source: Path, dest: Path, key: str, change: Any) -> Path:
    sd = load_file(str(source))
    sd[key] = change(sd[key])
    save_file(sd, str(dest))
    return dest


@pytest.fixture
async def shims(comfy_server: Any) -> Any:
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])


def _shim(name: str) -> Any:
    return importlib.import_module(name)


# --- end to end -------------------------------------------------------------------------------


class Graph:
    """A prompt: one checkpoint, two prompts, an empty latent, and KSampler + save per variant."""

    def __init__(self, ckpt: str) -> None:
        self.nodes: dict[str, Any] = {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a glass bottle", "clip": ["ckpt", 1]}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "watermark", "clip": ["ckpt", 1]}},
            "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        }

    def patch(self, name: str, class_type: str, model: list[Any] | None = None, **inputs: Any) -> list[Any]:
        self.nodes[name] = {"class_type": class_type, "inputs": {"model": model or ["ckpt", 0], **inputs}}
        return [name, 0]

    def sample(self, name: str, model: list[Any], seed: int = 11) -> list[Any]:
        self.nodes[f"ks_{name}"] = {
            "class_type": "KSampler",
            "inputs": {
                "model": model,
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["empty", 0],
                "seed": seed,
                "steps": STEPS,
                "cfg": 6.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        }
        self.nodes[f"save_{name}"] = {
            "class_type": "ModelPackSaveLatent",
            "inputs": {"samples": [f"ks_{name}", 0], "filename_prefix": f"patch_{name}"},
        }
        return [f"ks_{name}", 0]


async def _latents(server: Any, graph: Graph) -> dict[str, torch.Tensor]:
    """The latent each ``save_<name>`` node of the graph wrote, by ``<name>``."""
    frames = await run_prompt(server, graph.nodes)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    out = {}
    for data in messages(frames, "executed"):
        if data["node"].startswith("save_"):
            (saved,) = data["output"]["latents"]
            path = Path(server.kernel.settings.output_path) / saved["subfolder"] / saved["filename"]
            out[data["node"].removeprefix("save_")] = load_file(str(path))["samples"]
    return out


async def _server(comfy_server: Any, tmp_path: Path, checkpoints: list[Path]) -> Any:
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for path in checkpoints:
        (folder / path.name).symlink_to(path)
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])


async def test_pack_patches_change_sampling_and_leave_the_original_model(
    comfy_server: Any, tmp_path: Path, checkpoint: Path
) -> None:
    server = await _server(comfy_server, tmp_path, [checkpoint])
    plain_graph = Graph(checkpoint.name)
    plain_graph.sample("plain", ["ckpt", 0])
    plain = (await _latents(server, plain_graph))["plain"]
    assert plain.shape == (1, 4, SIZE // 8, SIZE // 8)

    g = Graph(checkpoint.name)
    variants = {
        "v_identity": g.patch("p1", "PatchPackAttn2ScaleV", scale=1.0, what="value"),
        "v_half": g.patch("p2", "PatchPackAttn2ScaleV", scale=0.5, what="value"),
        "ctx_half": g.patch("p11", "PatchPackAttn2ScaleV", scale=0.5, what="context"),
        "wrapped_ctx_half": g.patch("p12", "PatchPackContextWrapper", scale=0.5),
        "attn1_zero": g.patch("p3", "PatchPackAttn1Zero", block_name="input", number=1),
        "attn1_zero_elsewhere": g.patch("p4", "PatchPackAttn1Zero", block_name="input", number=0),
        "conv_in_x1": g.patch("p5", "PatchPackScaleConvIn", scale=1.0),
        "conv_in_x2": g.patch("p6", "PatchPackScaleConvIn", scale=2.0),
        "diff": g.patch("p7", "PatchPackAddDiff", key=DIFF_KEY, seed=3, strength=1.0),
        "diff_zero": g.patch("p8", "PatchPackAddDiff", key=DIFF_KEY, seed=3, strength=0.0),
        "block_x1": g.patch("p9", "PatchPackInputBlockScale", number=2, scale=1.0),
        "block_x1_5": g.patch("p10", "PatchPackInputBlockScale", number=2, scale=1.5),
        "injected_x1_5": g.patch("p13", "PatchPackInjectScale", number=2, scale=1.5),
    }
    last: list[Any] | None = None
    for name, model in variants.items():
        last = g.sample(name, model)
    # The loader's MODEL again, sampled once every patched clone above has been.
    g.sample("after", g.patch("again", "PatchPackAfter", after=last))
    got = await _latents(server, g)

    # Identity patches run the patched code paths and give the unpatched numbers, bit for bit;
    # so does a replacement for a block that has no attention (input 0 is the first conv).
    for same in ("v_identity", "attn1_zero_elsewhere", "conv_in_x1", "diff_zero", "block_x1", "after"):
        assert torch.equal(got[same], plain), same
    for changed in ("v_half", "ctx_half", "attn1_zero", "conv_in_x2", "diff", "block_x1_5"):
        assert not torch.equal(got[changed], plain), changed
        assert torch.isfinite(got[changed]).all()
    # The text context only feeds cross-attention's keys and values: scaling it in a
    # DIFFUSION_MODEL wrapper (run once per model call) is scaling both in an attn2 patch.
    assert torch.equal(got["wrapped_ctx_half"], got["ctx_half"])
    assert not torch.equal(got["ctx_half"], got["v_half"])
    # A layer injected at the end of input block 2 for the run is that block's output patched.
    assert torch.equal(got["injected_x1_5"], got["block_x1_5"])


async def test_weight_and_object_patches_equal_a_checkpoint_changed_the_same_way(
    comfy_server: Any, tmp_path: Path, checkpoint: Path
) -> None:
    """``add_patches`` of ``+d`` on W samples as a checkpoint holding ``W + d``; an object patch of
    ``input_blocks.0`` with doubled conv weights as a checkpoint with them doubled."""
    key = DIFF_KEY.removeprefix("diffusion_model.")
    with_diff = _changed_checkpoint(
        checkpoint, tmp_path / "with_diff.safetensors", UNET + key, lambda w: w + seeded_diff(w.shape, 3)
    )
    doubled = _changed_checkpoint(
        checkpoint, tmp_path / "doubled.safetensors", UNET + "input_blocks.0.0.weight", lambda w: w * 2.0
    )
    server = await _server(comfy_server, tmp_path, [checkpoint, with_diff, doubled])

    g = Graph(checkpoint.name)
    g.sample("diff", g.patch("p1", "PatchPackAddDiff", key=DIFF_KEY, seed=3, strength=1.0))
    g.sample("conv_x2", g.patch("p2", "PatchPackScaleConvIn", scale=2.0))
    patched = await _latents(server, g)
    for name, file in (("diff", with_diff), ("conv_x2", doubled)):
        reference = Graph(file.name)
        reference.sample(name, ["ckpt", 0])
        assert torch.equal(patched[name], (await _latents(server, reference))[name]), name


async def test_add_patches_with_a_key_the_model_lacks_is_an_execution_error(
    comfy_server: Any, tmp_path: Path, checkpoint: Path
) -> None:
    server = await _server(comfy_server, tmp_path, [checkpoint])
    g = Graph(checkpoint.name)
    g.sample("bad", g.patch("p1", "PatchPackAddDiff", key="diffusion_model.nowhere.weight", seed=0, strength=1.0))
    frames = await run_prompt(server, g.nodes)
    (error,) = messages(frames, "execution_error")
    assert error["node_id"] == "p1"


# --- the classes packs check ------------------------------------------------------------------


async def test_models_are_reference_class_instances(shims: Any, checkpoint: Path, xl_checkpoint: Path) -> None:
    mp, mb = _shim("comfy.model_patcher"), _shim("comfy.model_base")
    sd1, _, _ = adapters.load_checkpoint(checkpoint)
    xl, _, _ = adapters.load_checkpoint(xl_checkpoint)
    for model in (sd1, xl, sd1.clone()):
        assert isinstance(model, mp.ModelPatcher)
        assert isinstance(model.model, mb.BaseModel) and isinstance(model.model, torch.nn.Module)
    # SD1 is exactly BaseModel (AnimateDiff compares types), SDXL its subclass.
    assert type(sd1.model) is mb.BaseModel and not isinstance(sd1.model, mb.SDXL)
    assert type(xl.model) is mb.SDXL and not isinstance(xl.model, mb.SDXLRefiner)
    assert sd1.model.model_type is mb.ModelType.EPS and mb.ModelType.V_PREDICTION.value == 2
    assert mb.ModelType.FLOW.value == 6 and mb.ModelType.IMG_TO_IMG.value == 9
    config = xl.model.model_config.unet_config
    assert config["context_dim"] == xl.unet.config.context_dim
    assert config["adm_in_channels"] == xl.unet.config.adm_in_channels > 0
    assert config["model_channels"] == xl.unet.config.model_channels
    assert len(config["transformer_depth"]) == sum(config["num_res_blocks"])
    assert sd1.model.model_config.unet_config["adm_in_channels"] is None
    assert xl.model.model_config.latent_format is xl.model.latent_format
    # The state dict under the reference's prefix; the same tensors as the UNet's.
    sd = sd1.model.state_dict()
    assert sd["diffusion_model.out.2.weight"].data_ptr() == sd1.unet.out[2].weight.data_ptr()
    assert sd1.model.memory_required([1, 4, 8, 8]) > 0 and sd1.memory_required([2, 4, 8, 8]) > 0
    assert sd1.model_size() > 0 and sd1.load_device is not None and sd1.is_clone(sd1.clone())
    # Our layers under the reference's names, as packs find them walking the network.
    attention = _shim("comfy.ldm.modules.attention")
    openai = _shim("comfy.ldm.modules.diffusionmodules.openaimodel")
    modules = list(sd1.model.diffusion_model.modules())
    assert any(isinstance(m, attention.SpatialTransformer) for m in modules)
    assert any(isinstance(m, attention.BasicTransformerBlock) for m in modules)
    assert any(isinstance(m, openai.ResBlock) for m in modules)
    assert isinstance(sd1.model.diffusion_model, openai.UNetModel)
    assert isinstance(sd1.model.diffusion_model.input_blocks[1], openai.TimestepEmbedSequential)


def test_a_pack_can_construct_and_subclass_model_patcher_over_its_own_module(shims: Any) -> None:
    mp = _shim("comfy.model_patcher")

    class PackPatcher(mp.ModelPatcher):
        pass

    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    before = module[0].weight.detach().clone()
    patcher = PackPatcher(module, torch.device("cpu"), torch.device("cpu"), size=0, weight_inplace_update=False)
    twin = patcher.clone()
    assert type(twin) is PackPatcher and twin.model is module and twin.size > 0
    diff = torch.ones(3, 3)
    assert twin.add_patches({"0.weight": (diff,), "missing.weight": (diff,)}, 0.5) == ["0.weight"]
    replacement = torch.nn.Identity()
    twin.add_object_patch("1", replacement)
    assert twin.get_model_object("1") is replacement and patcher.get_model_object("1") is module[1]
    assert not patcher.patches and not patcher.object_patches
    # patch_model writes into the pack's module, unpatch_model restores it (the reference's way).
    relu = module[1]
    assert twin.patch_model() is module
    assert module[1] is replacement and torch.equal(module[0].weight, before + 0.5)
    twin.unpatch_model()
    assert module[1] is relu and torch.equal(module[0].weight, before)


async def test_a_pack_built_model_patcher_over_our_model_samples_like_the_loaders(
    shims: Any, checkpoint: Path
) -> None:
    mp = _shim("comfy.model_patcher")
    model, _, _ = adapters.load_checkpoint(checkpoint)
    own = mp.ModelPatcher(model.model, torch.device("cpu"), torch.device("cpu"))
    assert own.model_sampling is model.model.model_sampling and own.concat_channels == 0
    assert torch.equal(_denoise(own), _denoise(model))
    # Its weight patches are written into the network for the call and taken out after.
    weight = model.unet.input_blocks[1][0].in_layers[2].weight
    before = weight.detach().clone()
    diff = seeded_diff(weight.shape, 3)
    own.add_patches({DIFF_KEY: (diff,)})
    ours = model.clone()
    ours.add_patches({DIFF_KEY: (diff,)})
    assert torch.equal(_denoise(own), _denoise(ours))
    assert torch.equal(weight, before) and not torch.equal(_denoise(ours), _denoise(model))


# --- the patches, called directly --------------------------------------------------------------


def _denoise(model: Any, **options: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    cond = {"c_crossattn": torch.randn(2, 77, tiny_pipeline.CLIP_WIDTH, generator=g)}
    return model(x, torch.tensor([2.0, 2.0]), cond, transformer_options=options or None)


async def test_patch_arguments_are_the_references(shims: Any, checkpoint: Path) -> None:
    model, _, _ = adapters.load_checkpoint(checkpoint)
    plain = _denoise(model)
    seen: dict[str, list[Any]] = {"attn1": [], "attn2_out": [], "replace": [], "output": []}
    m = model.clone()

    def attn1(n: torch.Tensor, context: torch.Tensor, value: torch.Tensor, extra: dict[str, Any]) -> Any:
        # Self-attention: the normed hidden states are the context and the value too.
        assert context is n and value is n
        seen["attn1"].append({k: extra[k] for k in ("block", "block_index", "n_heads", "dim_head")})
        assert "patches" not in extra and extra["cond_or_uncond"] == [0, 1]
        assert extra["original_shape"] == [2, 4, 8, 8] and len(extra["activations_shape"]) == 4
        return n, context, value

    def attn2_output(out: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        seen["attn2_out"].append(extra["transformer_index"])
        return out

    def replace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        seen["replace"].append((extra["block"], q.shape[-1] == extra["n_heads"] * extra["dim_head"]))
        attention = _shim("comfy.ldm.modules.attention")
        return attention.optimized_attention(q, k, v, extra["n_heads"])

    def output_block(h: torch.Tensor, hsp: torch.Tensor, options: dict[str, Any]) -> Any:
        seen["output"].append(options["block"])
        return h, hsp

    m.set_model_attn1_patch(attn1)
    m.set_model_attn2_output_patch(attn2_output)
    m.set_model_attn2_replace(replace, "middle", 0)
    m.set_model_output_block_patch(output_block)
    # Identity patches of every kind: the numbers are the unpatched ones.
    assert torch.equal(_denoise(m, cond_or_uncond=[0, 1]), plain)
    blocks = [s["block"] for s in seen["attn1"]]
    assert blocks == [("input", 1), ("input", 2), ("middle", 0), ("output", 3), ("output", 4), ("output", 5)]
    assert seen["attn1"][0]["n_heads"] == 8 and seen["attn1"][0]["block_index"] == 0
    # transformer_index counts the transformers run so far in the whole network.
    assert seen["attn2_out"] == [0, 1, 2, 3, 4, 5]
    assert seen["replace"] == [(("middle", 0), True)]
    assert seen["output"] == [("output", i) for i in range(len(model.unet.output_blocks))]
    # The original never saw any of it.
    assert model.model_options == {"transformer_options": {}}
    assert torch.equal(_denoise(model), plain)


async def test_sdxl_models_take_the_same_patches(shims: Any, xl_checkpoint: Path) -> None:
    model, _, _ = adapters.load_checkpoint(xl_checkpoint)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond = {
        "c_crossattn": torch.randn(1, 77, 2 * tiny_pipeline.CLIP_WIDTH, generator=g),
        "pooled_output": torch.randn(1, tiny_pipeline.CLIP_WIDTH, generator=g),
    }
    sigma = torch.tensor([3.0])
    plain = model(x, sigma, cond)
    for scale, same in ((1.0, True), (0.5, False)):
        m = model.clone()
        m.set_model_attn2_patch(lambda n, c, v, extra, s=scale: (n, c, v * s))
        assert torch.equal(m(x, sigma, cond), plain) is same
    # The ADM vector can also come in ready-made, as the reference's ``y`` (the reference's
    # encode_adm keywords; the size a plain prompt gets is the latent's times 8).
    y = model.model.encode_adm(pooled_output=cond["pooled_output"], width=64, height=64, noise=x, device=x.device)
    assert y is not None and torch.equal(model(x, sigma, {**cond, "y": y}), plain)


async def test_optimized_attention_is_read_at_call_time(shims: Any, checkpoint: Path) -> None:
    attention = _shim("comfy.ldm.modules.attention")
    model, _, _ = adapters.load_checkpoint(checkpoint)
    plain = _denoise(model)
    calls: list[int] = []
    original = attention.optimized_attention

    def mine(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Any = None, **kw: Any) -> Any:
        calls.append(heads)
        return original(q, k, v, heads, mask=mask, **kw) * 0.5

    attention.optimized_attention = mine
    try:
        halved = _denoise(model)
    finally:
        attention.optimized_attention = original
    assert calls and set(calls) == {8}
    assert not torch.equal(halved, plain)
    assert torch.equal(_denoise(model), plain)
    # The basic (written-out) attention agrees with PyTorch's to rounding.
    q, k, v = (torch.randn(2, 5, 16) for _ in range(3))
    assert torch.allclose(attention.attention_basic(q, k, v, 4), attention.attention_pytorch(q, k, v, 4), atol=1e-5)


async def test_forward_timestep_embed_and_apply_model_as_packs_use_them(shims: Any, checkpoint: Path) -> None:
    openai = _shim("comfy.ldm.modules.diffusionmodules.openaimodel")
    model, _, _ = adapters.load_checkpoint(checkpoint)
    plain = _denoise(model)
    original = openai.forward_timestep_embed
    seen: list[int] = []

    def mine(ts: Any, x: torch.Tensor, emb: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(len(ts))
        return original(ts, x, emb, *args, **kwargs)

    openai.forward_timestep_embed = mine
    try:
        assert torch.equal(_denoise(model), plain)
    finally:
        openai.forward_timestep_embed = original
    unet = model.unet
    assert len(seen) == len(unet.input_blocks) + 1 + len(unet.output_blocks)
    # A transformer block runs through its _forward, which packs replace on the instance.
    attention = _shim("comfy.ldm.modules.attention")
    block = next(m for m in unet.modules() if isinstance(m, attention.BasicTransformerBlock))
    block._forward = lambda x, context=None, transformer_options=None: x
    try:
        assert not torch.equal(_denoise(model), plain)
    finally:
        del block._forward
    assert torch.equal(_denoise(model), plain)

    # BaseModel.apply_model (sigma in, denoised out) is the MODEL's call; after pre_run it runs
    # through that MODEL's patches, after cleanup through none.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, tiny_pipeline.CLIP_WIDTH, generator=g)
    sigma = torch.tensor([2.0, 2.0])
    assert torch.equal(model.model.apply_model(x, sigma, c_crossattn=context), plain)
    halved = model.clone()
    halved.set_model_attn2_output_patch(lambda out, extra: out * 0.5)
    halved.pre_run()
    try:
        assert model.model.current_patcher is halved
        assert torch.equal(model.model.apply_model(x, sigma, c_crossattn=context), _denoise(halved))
    finally:
        halved.cleanup()
    assert model.model.current_patcher is None
    assert torch.equal(model.model.apply_model(x, sigma, c_crossattn=context), plain)
    assert not torch.equal(_denoise(halved), plain)

    # An object-patched model_sampling (v prediction here) is what the MODEL samples with.
    mb = _shim("comfy.model_base")
    v_model = model.clone()
    v_model.add_object_patch("model_sampling", mb.model_sampling(None, mb.ModelType.V_PREDICTION))
    assert v_model.model_sampling is v_model.get_model_object("model_sampling") is not model.model_sampling
    assert not torch.equal(_denoise(v_model), plain) and torch.equal(_denoise(model), plain)


async def test_wrappers_and_object_patches_apply_per_call(shims: Any, checkpoint: Path) -> None:
    ext = _shim("comfy.patcher_extension")
    model, _, _ = adapters.load_checkpoint(checkpoint)
    plain = _denoise(model)
    calls: list[str] = []

    def diffusion_wrapper(executor: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(type(executor.class_obj).__name__)
        return executor(*args, **kwargs) * 0.0

    m = model.clone()
    m.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test", diffusion_wrapper)
    assert m.get_wrappers(ext.WrappersMP.DIFFUSION_MODEL, "test") == [diffusion_wrapper]
    assert not model.get_all_wrappers(ext.WrappersMP.DIFFUSION_MODEL)
    zeroed = _denoise(m)
    assert calls == ["UNetModel"] and not torch.equal(zeroed, plain)
    # A zero network output of an eps model is "no noise": the denoised latent is the input.
    g = torch.Generator().manual_seed(3)
    assert torch.allclose(zeroed, torch.randn(2, 4, 8, 8, generator=g))
    m.remove_wrappers_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test")
    assert torch.equal(_denoise(m), plain)

    # An object patch is seen by get_model_object and the call, never by the cached network.
    out = model.unet.out
    m.add_object_patch("diffusion_model.out", torch.nn.Sequential(*out[:2], torch.nn.Identity()))
    assert m.get_model_object("diffusion_model.out") is not out and model.unet.out is out
    with pytest.raises(RuntimeError):
        _denoise(m)  # the identity gives 32 channels where the latent has 4
    assert model.get_model_object("diffusion_model.out") is out and torch.equal(_denoise(model), plain)
    assert m.patch_model() is model.model and model.unet.out is out


async def test_comfy_lora_patches_equal_the_lora_loader(shims: Any, checkpoint: Path) -> None:
    lora_mod = _shim("comfy.lora")
    model, _, _ = adapters.load_checkpoint(checkpoint)
    g = torch.Generator().manual_seed(5)
    module = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    lora = {
        f"{module}.lora_down.weight": torch.randn(4, tiny_pipeline.CLIP_WIDTH, generator=g),
        f"{module}.lora_up.weight": torch.randn(32, 4, generator=g),
        f"{module}.alpha": torch.tensor(2.0),
        "lora_unet_nowhere.lora_down.weight": torch.zeros(1, 1),
    }
    key_map = lora_mod.model_lora_keys_unet(model.model, {})
    target = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert key_map[module] == target
    patches = lora_mod.load_lora(lora, key_map)
    kind, (up, down, alpha, mid, dora, reshape) = patches[target]
    assert kind == "lora" and alpha == pytest.approx(2.0) and mid is None and dora is None
    m = model.clone()
    assert m.add_patches(patches, 0.7) == [target]
    by_loader, _ = adapters.apply_lora_state_dict(model, None, lora, 0.7, 0.0)
    assert by_loader is not None
    assert torch.allclose(_denoise(m), _denoise(by_loader), atol=1e-6)
    assert not torch.equal(_denoise(m), _denoise(model))
    # calculate_weight: the reference's entry layout, strength_model and offset included.
    w = torch.zeros(4, 3)
    entries = [(2.0, (torch.ones(2, 3),), 1.0, (0, 1, 2), None), (1.0, ("set", (torch.full((4, 3), 5.0),)), 1.0, None, None)]
    assert torch.equal(lora_mod.calculate_weight(entries[:1], w.clone(), "k")[1:3], torch.full((2, 3), 2.0))
    assert torch.equal(lora_mod.calculate_weight(entries, w.clone(), "k"), torch.full((4, 3), 5.0))
    assert torch.equal(m.calculate_weight([(1.0, (torch.ones(4, 3),), 0.5, None, None)], torch.full((4, 3), 2.0), "k"),
                       torch.full((4, 3), 2.0))  # fmt: skip


async def test_key_patches_of_another_model_merge_as_the_reference_model_merge(
    shims: Any, checkpoint: Path, tmp_path: Path
) -> None:
    """ModelMergeSimple's recipe: ``m1.add_patches(m2.get_key_patches("diffusion_model."), 1 - r, r)``
    gives ``r * W1 + (1 - r) * W2`` for every weight."""
    other = tiny_pipeline.write_checkpoint(tmp_path / "other.safetensors", "sd1", seed=1)
    first, _, _ = adapters.load_checkpoint(checkpoint)
    second, _, _ = adapters.load_checkpoint(other)
    merged = first.clone()
    key_patches = second.get_key_patches("diffusion_model.")
    assert set(key_patches) == {k for k in first.model.state_dict() if k.startswith("diffusion_model.")}
    assert sorted(merged.add_patches(key_patches, 0.25, 0.75)) == sorted(key_patches)
    w1, w2 = load_file(str(checkpoint)), load_file(str(other))
    averaged = {k: w1[k] * 0.75 + 0.25 * w2[k] if k.startswith(UNET) else w1[k] for k in w1}
    save_file(averaged, str(tmp_path / "averaged.safetensors"))
    by_file, _, _ = adapters.load_checkpoint(tmp_path / "averaged.safetensors")
    assert torch.equal(_denoise(merged), _denoise(by_file))
    assert not torch.equal(_denoise(merged), _denoise(first))


def test_model_options_helpers_copy_what_a_clone_shares(shims: Any) -> None:
    mp = _shim("comfy.model_patcher")
    options: dict[str, Any] = {"transformer_options": {"patches_replace": {"attn2": {("input", 1): print}}}}
    clone = mp.create_model_options_clone(options)
    mp.set_model_options_patch_replace(clone, len, "attn2", "middle", 0, 1)
    assert clone["transformer_options"]["patches_replace"]["attn2"] == {("input", 1): print, ("middle", 0, 1): len}
    assert options["transformer_options"]["patches_replace"]["attn2"] == {("input", 1): print}
    mp.set_model_options_post_cfg_function(clone, print, disable_cfg1_optimization=True)
    mp.set_model_options_pre_cfg_function(clone, len)
    assert clone["sampler_post_cfg_function"] == [print] and clone["sampler_pre_cfg_function"] == [len]
    assert clone["disable_cfg1_optimization"] is True and "sampler_post_cfg_function" not in options
