"""CLIP text encoders against transformers' CLIPTextModel / CLIPTextModelWithProjection.

Tiny random-weight encoders (CLIP-L-shaped: quick GELU, no projection; OpenCLIP-shaped: GELU and a
text projection) are written by the tests in the real single-file key layouts, loaded through our
loaders, and compared with transformers models holding the same weights. Tolerance (fp32):
absolute and relative 1e-5, which leaves room for the different attention kernels (ours uses
scaled_dot_product_attention, the reference the eager softmax) and nothing more.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models.clip import config_from_state_dict, extract_text_encoders, openclip_to_hf
from plugins.core_nodes.models.text_encoder import (
    load_state_dict_file,
    read_embedding,
    stack_from_encoder_files,
    stack_from_state_dict,
)

os.environ["HF_HUB_OFFLINE"] = "1"
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

TOL = {"atol": 1e-5, "rtol": 1e-5}
PROMPT = "a (photo:1.3) of a ((cat)) on a [red] sofa"
PLAIN = "a photo of a cat"


def _hf_config(
    width: int, layers: int, heads: int, act: str, projection: int | None = None
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or width,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        attn_implementation="eager",
    )


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)


def clip_l(seed: int = 0) -> CLIPTextModel:
    model = CLIPTextModel(_hf_config(128, 3, 2, "quick_gelu"))
    _randomize(model, seed)
    return model.eval()


def clip_g(seed: int = 1, width: int = 192, heads: int = 3) -> CLIPTextModelWithProjection:
    model = CLIPTextModelWithProjection(_hf_config(width, 4, heads, "gelu", projection=96))
    _randomize(model, seed)
    return model.eval()


def to_openclip(hf: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """The OpenCLIP text-tower layout of a transformers model (what SDXL/SD2 checkpoints hold)."""
    sd = {k.removeprefix("text_model."): v for k, v in real_layout(hf).items()}
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
        "logit_scale": torch.tensor(4.6),
    }
    for i in range(hf.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0
            )
            for theirs, ours in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[dst + f"{ours}.{kind}"] = sd[src + f"{theirs}.{kind}"]
    return out


def real_layout(hf: Any) -> dict[str, torch.Tensor]:
    """The transformers checkpoint layout: ``text_model.*`` (+ ``text_projection.weight``).

    Newer transformers versions flatten CLIPTextModel's modules, so the prefix is normalised here.
    """
    out = {}
    for key, value in hf.state_dict().items():
        if "position_ids" in key:
            continue
        bare = key.removeprefix("text_model.")
        out[bare if bare.startswith("text_projection") else "text_model." + bare] = value.contiguous()
    return out


def _final_norm(hf: Any) -> torch.nn.Module:
    return getattr(hf, "text_model", hf).final_layer_norm


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.contiguous() for k, v in sd.items()}


def _write(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    # Checkpoints also hold UNet/VAE weights; a stand-in key shows they are ignored.
    save_file({**sd, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    return path


def _hf_hidden(model: Any, ids: torch.Tensor, layer: int, norm: bool) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states[layer]
    return _final_norm(model)(hidden) if norm else hidden


def _ids(chunks: list[list[tuple[Any, ...]]]) -> torch.Tensor:
    return torch.tensor([[t for t, *_ in c] for c in chunks])


def _weighted(z: torch.Tensor, empty: torch.Tensor, chunks: list[list[tuple[Any, ...]]]) -> torch.Tensor:
    w = torch.tensor([[w for _, w in c] for c in chunks]).unsqueeze(-1)
    return torch.where(w != 1.0, empty + (z - empty) * w, z).reshape(1, -1, z.shape[-1])


# --- SD1 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    hf = clip_l()
    path = _write(
        tmp_path_factory.mktemp("sd1") / "tiny_sd1.safetensors",
        _prefixed(real_layout(hf), "cond_stage_model.transformer."),
    )
    return hf, stack_from_state_dict(load_state_dict_file(path))


def test_sd1_layout_detected(sd1: tuple[Any, Any]) -> None:
    _, stack = sd1
    assert stack.family == "sd1" and list(stack.encoders) == ["l"]
    cfg = stack.encoders["l"].model.config
    assert (cfg.width, cfg.layers, cfg.heads, cfg.activation, cfg.projection_dim) == (
        128,
        3,
        2,
        "quick_gelu",
        None,
    )


def test_sd1_last_layer_matches(sd1: tuple[Any, Any]) -> None:
    hf, stack = sd1
    tokens = stack.tokenize(PLAIN)
    cond, pooled = stack.encode_tokens(tokens)
    with torch.no_grad():
        ref = hf(input_ids=_ids(tokens["l"]))
    assert cond.shape == (1, 77, 128) and cond.dtype == torch.float32
    torch.testing.assert_close(cond, ref.last_hidden_state, **TOL)
    torch.testing.assert_close(pooled, ref.pooler_output, **TOL)


def test_sd1_clip_skip(sd1: tuple[Any, Any]) -> None:
    hf, stack = sd1
    tokens = stack.tokenize(PLAIN)
    try:
        stack.set_clip_layer(-2)
        cond, _ = stack.encode_tokens(tokens)
        torch.testing.assert_close(cond, _hf_hidden(hf, _ids(tokens["l"]), -2, norm=True), **TOL)
        stack.set_clip_layer(-1)
        last, _ = stack.encode_tokens(tokens)
        torch.testing.assert_close(last, _hf_hidden(hf, _ids(tokens["l"]), -1, norm=True), **TOL)
        # Deeper than the model: the reference falls back to the last layer.
        stack.set_clip_layer(-24)
        torch.testing.assert_close(stack.encode_tokens(tokens)[0], last, **TOL)
        assert not torch.allclose(cond, last)
    finally:
        stack.set_clip_layer(None)


def test_sd1_prompt_weights(sd1: tuple[Any, Any]) -> None:
    hf, stack = sd1
    tokens = stack.tokenize(PROMPT)
    cond, pooled = stack.encode_tokens(tokens)
    empty = stack.tokenize("")["l"]
    with torch.no_grad():
        z = hf(input_ids=_ids(tokens["l"])).last_hidden_state
        e = hf(input_ids=_ids(empty)).last_hidden_state[0]
        ref_pooled = hf(input_ids=_ids(tokens["l"])).pooler_output
    expected = _weighted(z, e, tokens["l"])
    torch.testing.assert_close(cond, expected, **TOL)
    torch.testing.assert_close(pooled, ref_pooled, **TOL)
    # Unweighted tokens are untouched by the interpolation; weighted ones are moved.
    assert torch.equal(cond[0, 1], stack.encode(PLAIN)[0][0, 1])
    weights = [w for _, w in tokens["l"][0]]
    moved = [j for j, w in enumerate(weights) if w != 1.0]
    assert moved and not torch.allclose(cond[0, moved], z[0, moved])


def test_sd1_long_prompt_chunks(sd1: tuple[Any, Any]) -> None:
    hf, stack = sd1
    tokens = stack.tokenize("word " * 100)
    assert len(tokens["l"]) == 2
    cond, pooled = stack.encode_tokens(tokens)
    with torch.no_grad():
        ref = hf(input_ids=_ids(tokens["l"]))
    assert cond.shape == (1, 154, 128)
    torch.testing.assert_close(cond, ref.last_hidden_state.reshape(1, 154, 128), **TOL)
    torch.testing.assert_close(pooled, ref.pooler_output[0:1], **TOL)


def test_sd1_embedding_vectors(sd1: tuple[Any, Any], tmp_path: Path) -> None:
    hf, stack = sd1
    table = real_layout(hf)["text_model.embeddings.token_embedding.weight"]
    cat = stack.tokenizers["l"].bpe.encode("cat")[0]
    # An A1111-style embedding file whose one vector is the embedding of "cat".
    torch.save({"string_to_param": {"*": table[cat : cat + 1].clone()}}, tmp_path / "kitty.pt")
    vectors = read_embedding(tmp_path / "kitty.pt", "clip_l", 128)
    assert vectors is not None and vectors.shape == (1, 128)

    def lookup(name: str, key: str, size: int) -> torch.Tensor | None:
        return (
            read_embedding(tmp_path / f"{name}.pt", key, size) if (tmp_path / f"{name}.pt").exists() else None
        )

    stack.tokenizers["l"].embeddings = lookup
    try:
        with_embedding = stack.encode("a photo of a embedding:kitty")
    finally:
        stack.tokenizers["l"].embeddings = None
    torch.testing.assert_close(with_embedding[0], stack.encode(PLAIN)[0], **TOL)
    torch.testing.assert_close(with_embedding[1], stack.encode(PLAIN)[1], **TOL)


# --- SDXL ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    hf_l, hf_g = clip_l(seed=2), clip_g(seed=3)
    sd = {
        **_prefixed(real_layout(hf_l), "conditioner.embedders.0.transformer."),
        **_prefixed(to_openclip(hf_g), "conditioner.embedders.1.model."),
    }
    path = _write(tmp_path_factory.mktemp("sdxl") / "tiny_sdxl.safetensors", sd)
    return hf_l, hf_g, stack_from_state_dict(load_state_dict_file(path))


def test_sdxl_layout_detected(sdxl: tuple[Any, Any, Any]) -> None:
    _, _, stack = sdxl
    assert stack.family == "sdxl" and sorted(stack.encoders) == ["g", "l"]
    g = stack.encoders["g"].model.config
    assert (g.width, g.layers, g.heads, g.activation, g.projection_dim) == (192, 4, 3, "gelu", 96)
    assert stack.encoders["l"].model.config.activation == "quick_gelu"


def test_sdxl_conditioning_and_pooled(sdxl: tuple[Any, Any, Any]) -> None:
    hf_l, hf_g, stack = sdxl
    tokens = stack.tokenize(PLAIN)
    assert tokens["g"][0][-1][0] == 0 and tokens["l"][0][-1][0] == 49407
    cond, pooled = stack.encode_tokens(tokens)
    l_ref = _hf_hidden(hf_l, _ids(tokens["l"]), -2, norm=False)
    g_ref = _hf_hidden(hf_g, _ids(tokens["g"]), -2, norm=False)
    assert cond.shape == (1, 77, 128 + 192) and pooled.shape == (1, 96)
    torch.testing.assert_close(cond, torch.cat([l_ref, g_ref], dim=-1), **TOL)
    with torch.no_grad():
        ref_pooled = hf_g(input_ids=_ids(tokens["g"])).text_embeds
    torch.testing.assert_close(pooled, ref_pooled, **TOL)


def test_sdxl_clip_skip_and_weights(sdxl: tuple[Any, Any, Any]) -> None:
    hf_l, hf_g, stack = sdxl
    tokens = stack.tokenize(PROMPT)
    try:
        stack.set_clip_layer(-3)
        cond, pooled = stack.encode_tokens(tokens)
    finally:
        stack.set_clip_layer(None)
    parts = []
    for name, hf in (("l", hf_l), ("g", hf_g)):
        z = _hf_hidden(hf, _ids(tokens[name]), -3, norm=False)
        e = _hf_hidden(hf, _ids(stack.tokenize("")[name]), -3, norm=False)[0]
        parts.append(_weighted(z, e, tokens[name]))
    torch.testing.assert_close(cond, torch.cat(parts, dim=-1), **TOL)
    with torch.no_grad():
        # The pooled output always comes from the full depth, whatever the clip skip.
        torch.testing.assert_close(pooled, hf_g(input_ids=_ids(tokens["g"])).text_embeds, **TOL)


def test_standalone_encoder_files(sdxl: tuple[Any, Any, Any], tmp_path: Path) -> None:
    hf_l, hf_g, stack = sdxl
    # text_encoders/ files in the transformers layout (with the projection) and OpenCLIP layout.
    l_path = tmp_path / "clip_l.safetensors"
    g_path = tmp_path / "clip_g.safetensors"
    save_file(real_layout(hf_l), str(l_path))
    save_file(real_layout(hf_g), str(g_path))
    split = stack_from_encoder_files({"l": load_state_dict_file(l_path), "g": load_state_dict_file(g_path)})
    assert split.family == "sdxl" and split.encoders["l"].model.config.activation == "quick_gelu"
    a, b = split.encode(PROMPT), stack.encode(PROMPT)
    torch.testing.assert_close(a[0], b[0], **TOL)
    torch.testing.assert_close(a[1], b[1], **TOL)
    g_only = stack_from_encoder_files({"g": to_openclip(hf_g)})
    assert g_only.family == "sdxl_refiner"
    torch.testing.assert_close(g_only.encode(PLAIN)[1], stack.encode(PLAIN)[1], **TOL)


# --- SD2 (OpenCLIP-H layout) and layout helpers ----------------------------------------------


def test_sd2_penultimate_normed(tmp_path: Path) -> None:
    hf = clip_g(seed=4, width=128, heads=2)
    path = _write(tmp_path / "tiny_sd2.safetensors", _prefixed(to_openclip(hf), "cond_stage_model.model."))
    stack = stack_from_state_dict(load_state_dict_file(path))
    assert stack.family == "sd2" and list(stack.encoders) == ["h"]
    tokens = stack.tokenize(PLAIN)
    assert tokens["h"][0][-1][0] == 0
    cond, _ = stack.encode_tokens(tokens)
    torch.testing.assert_close(cond, _hf_hidden(hf, _ids(tokens["h"]), -2, norm=True), **TOL)


def test_openclip_conversion_roundtrip() -> None:
    hf = clip_g(seed=5)
    ours = openclip_to_hf(to_openclip(hf))
    theirs = {k.removeprefix("text_model."): v for k, v in real_layout(hf).items()}
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_heads_override_and_config_errors() -> None:
    sd = {k.removeprefix("text_model."): v for k, v in real_layout(clip_l()).items()}
    assert config_from_state_dict(sd).heads == 2
    assert config_from_state_dict(sd, heads=4).heads == 4
    with pytest.raises(ValueError, match="not a CLIP text encoder"):
        config_from_state_dict({"foo": torch.zeros(1)})


def test_no_text_encoder_and_unreadable_files(tmp_path: Path) -> None:
    assert extract_text_encoders({"model.diffusion_model.x": torch.zeros(1)}) == {}
    with pytest.raises(ValueError, match="no CLIP text encoder"):
        stack_from_state_dict({"model.diffusion_model.x": torch.zeros(1)})
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_state_dict_file(broken)
    pickle = tmp_path / "evil.ckpt"
    pickle.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="evil.ckpt"):
        load_state_dict_file(pickle)


def test_half_precision_weights(sd1: tuple[Any, Any]) -> None:
    # bf16 weights run as bf16 and come back as float32 close to the fp32 result.
    hf, stack = sd1
    sd = {"cond_stage_model.transformer." + k: v.to(torch.bfloat16) for k, v in real_layout(hf).items()}
    half = stack_from_state_dict(sd)
    assert half.encoders["l"].model.final_layer_norm.weight.dtype == torch.bfloat16
    cond, pooled = half.encode(PROMPT)
    assert cond.dtype == torch.float32 and pooled.dtype == torch.float32
    torch.testing.assert_close(cond, stack.encode(PROMPT)[0], atol=0.1, rtol=0.05)


def test_tokenizer_needs_no_torch() -> None:
    # The tokenizer is pure Python: the server can tokenize without loading torch.
    import subprocess
    import sys

    code = (
        "import sys, plugins.core_nodes.models.tokenizer as t; t.default_bpe(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
