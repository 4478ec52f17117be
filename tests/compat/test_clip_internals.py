"""A CLIP's inner text transformer, driven the way prompt-engine packs drive it (smZNodes).

Such a pack reaches past ``encode_token_weights``: it copies the tokenizer's attributes into its
own engine, tokenizes with ``tokenizer.tokenizer(texts, add_special_tokens=False)``, wraps
``transformer.text_model.embeddings.token_embedding`` to splice textual inversions in, calls
the ``cond_stage_model`` member with token rows for unweighted ``(z, pooled)``, applies its own
emphasis, and replaces the member's ``encode_token_weights`` so ``CLIP.encode_from_tokens`` goes
through it. The tests do the same on tiny SD1 / SDXL checkpoints loaded through ``comfy.sd`` and
check the numbers against our own encoding and against transformers' CLIPTextModel holding the
same weights (tolerance as in ``tests/plugins/core_nodes/test_clip.py``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from plugins.core_nodes.models import adapters
from plugins.core_nodes.serving import serving
from tests.compat.helpers import PACKS
from tests.plugins.core_nodes import tiny_pipeline

os.environ["HF_HUB_OFFLINE"] = "1"
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGINS = ["comfy_compat", "models", "core_nodes"]
TOL = {"atol": 1e-5, "rtol": 1e-5}
TEXT = "a photo of a cat, on a red sofa"
# tiny_pipeline.checkpoint_dict(family, seed=0) draws CLIP-L with seed 2 and bigG with seed 3.
SEEDS = {"l": 2, "g": 3}


def _hf(name: str) -> Any:
    """transformers' model with the weights of the tiny checkpoints' encoder ``name``."""
    cfg = tiny_pipeline.CLIP_G if name == "g" else tiny_pipeline.CLIP_L
    config = CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        hidden_act=cfg.activation,
        projection_dim=cfg.projection_dim or cfg.width,
        layer_norm_eps=cfg.layer_norm_eps,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        attn_implementation="eager",
    )
    model = CLIPTextModelWithProjection(config) if name == "g" else CLIPTextModel(config)
    ours = tiny_pipeline.clip_weights(cfg, SEEDS[name])
    # transformers' CLIPTextModel keeps its layers at the top now; the projected model nests them.
    nested = any(k.startswith("text_model.") for k in model.state_dict())
    theirs = {k if k.startswith("text_projection") or not nested else "text_model." + k: v for k, v in ours.items()}
    missing, unexpected = model.load_state_dict(theirs, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    return model.eval()


def _hf_out(model: Any, rows: list[list[int]]) -> Any:
    with torch.no_grad():
        return model(input_ids=torch.tensor(rows), output_hidden_states=True)


def _final_norm(model: Any) -> nn.Module:
    return getattr(model, "text_model", model).final_layer_norm


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip_internals")
    return {family: tiny_pipeline.write_checkpoint(root / f"tiny_{family}.safetensors", family) for family in ("sd1", "sdxl")}


@pytest.fixture
async def shims(comfy_server: Any, tmp_path: Path) -> Any:
    # An embedding the tokenizers can find: CLIP-L's width, three vectors.
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    vectors = torch.randn(3, tiny_pipeline.CLIP_WIDTH, generator=torch.Generator().manual_seed(7))
    save_file({"clip_l": vectors, "clip_g": vectors.clone()}, str(folder / "tiny_style.safetensors"))
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])


def _clip(checkpoints: dict[str, Path], family: str) -> Any:
    sd = importlib.import_module("comfy.sd")
    return sd.load_checkpoint_guess_config(str(checkpoints[family]))[1]


def _rows(clip: Any, name: str, text: str = TEXT) -> list[list[int]]:
    return [[t for t, *_ in chunk] for chunk in clip.tokenize(text)[name]]


@pytest.fixture
def restore_embeddings() -> Iterator[list[tuple[nn.Module, nn.Module]]]:
    """Put back every token embedding a test wrapped (the loaded networks are cached)."""
    wrapped: list[tuple[nn.Module, nn.Module]] = []
    yield wrapped
    for embeddings, original in wrapped:
        embeddings.token_embedding = original


# --- the transformer and the member, against transformers ------------------------------------


async def test_transformer_is_the_reference_clip_text_model(shims: Any, checkpoints: dict[str, Path]) -> None:
    clip = _clip(checkpoints, "sd1")
    transformer = clip.cond_stage_model.clip_l.transformer
    rows = _rows(clip, "l")
    ids = torch.tensor(rows)
    hf = _hf_out(_hf("l"), rows)
    assert transformer.num_layers == tiny_pipeline.CLIP_L.layers == len(transformer.text_model.encoder.layers)
    assert transformer.get_input_embeddings() is transformer.text_model.embeddings.token_embedding

    # The reference's call with ids, then as SDClipModel.forward makes it: embeddings passed in.
    last, hidden, projected, pooled = transformer(ids)
    assert hidden is None
    torch.testing.assert_close(last, hf.last_hidden_state, **TOL)
    torch.testing.assert_close(pooled, hf.pooler_output, **TOL)
    # CLIP-L has no projection: the identity the reference loads for it.
    torch.testing.assert_close(projected, pooled)
    assert not any("_identity" in key or key.startswith("text_projection") for key in transformer.state_dict())

    embeds = transformer.get_input_embeddings()(ids, out_dtype=torch.float32)
    assert embeds.dtype == torch.float32
    num_tokens = [row.index(49407) + 1 for row in rows]
    last2, hidden2, _, pooled2 = transformer(
        None, None, embeds=embeds, num_tokens=num_tokens, intermediate_output=-2, final_layer_norm_intermediate=True
    )
    torch.testing.assert_close(last2, last)
    torch.testing.assert_close(pooled2, pooled)
    torch.testing.assert_close(hidden2, _final_norm(_hf("l"))(hf.hidden_states[-2]), **TOL)

    with pytest.raises(ValueError, match="attention masks are not supported"):
        transformer(ids, torch.zeros_like(ids))


async def test_member_forward_reads_its_clip_options(shims: Any, checkpoints: dict[str, Path]) -> None:
    clip = _clip(checkpoints, "sd1")
    member = clip.cond_stage_model.clip_l
    rows = _rows(clip, "l", TEXT) + _rows(clip, "l", "blurry")
    hf_model = _hf("l")
    hf = _hf_out(hf_model, rows)

    z, pooled = member(rows)
    assert z.shape == (2, 77, tiny_pipeline.CLIP_WIDTH) and z.dtype == pooled.dtype == torch.float32
    torch.testing.assert_close(z, hf.last_hidden_state, **TOL)
    torch.testing.assert_close(pooled, hf.pooler_output, **TOL)
    # An integer tensor of rows is the same rows; encode is the reference's name for the call.
    torch.testing.assert_close(member(torch.tensor(rows))[0], z, rtol=0, atol=0)
    torch.testing.assert_close(member.encode(rows)[0], z, rtol=0, atol=0)
    # Unweighted: the same numbers as the member's encode_token_weights of one chunk.
    chunk_cond, chunk_pooled = member.encode_token_weights(clip.tokenize(TEXT)["l"])
    torch.testing.assert_close(chunk_cond, z[0:1], rtol=0, atol=0)
    torch.testing.assert_close(chunk_pooled, pooled[0:1], rtol=0, atol=0)

    member.set_clip_options({"layer": -2})
    assert (member.layer, member.layer_idx) == ("hidden", -2)
    torch.testing.assert_close(member(rows)[0], _final_norm(hf_model)(hf.hidden_states[-2]), **TOL)
    member.reset_clip_options()
    torch.testing.assert_close(member(rows)[0], z, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no token rows"):
        member([])


async def test_sdxl_members_read_their_family_layers(shims: Any, checkpoints: dict[str, Path]) -> None:
    clip = _clip(checkpoints, "sdxl")
    model = clip.cond_stage_model
    assert type(model).__name__ == "SDXLClipModel"
    for name in ("l", "g"):
        member = getattr(model, f"clip_{name}")
        rows = _rows(clip, name)
        hf_model = _hf(name)
        hf = _hf_out(hf_model, rows)
        z, pooled = member(rows)
        # SDXL reads both encoders' penultimate layer without the final norm.
        assert (member.layer, member.layer_idx, member.layer_norm_hidden_state) == ("hidden", -2, False)
        torch.testing.assert_close(z, hf.hidden_states[-2], **TOL)
        if name == "g":
            torch.testing.assert_close(pooled, hf.text_embeds, **TOL)
            torch.testing.assert_close(member.transformer(torch.tensor(rows))[2], hf.text_embeds, **TOL)
            member.set_clip_options({"projected_pooled": False})
            unprojected = hf.last_hidden_state[0, rows[0].index(49407)]
            torch.testing.assert_close(member(rows)[1][0], unprojected, **TOL)
            member.reset_clip_options()
        else:
            torch.testing.assert_close(pooled, hf.pooler_output, **TOL)
    # bigG pads with 0 after its end token; the set joins the members as CLIPTextEncode does.
    assert _rows(clip, "g")[0][-1] == 0 and model.clip_g.special_tokens["pad"] == 0
    cond, pooled = model.encode_token_weights(clip.tokenize(TEXT))
    expected, expected_pooled = clip.encode_from_tokens(clip.tokenize(TEXT), return_pooled=True)
    torch.testing.assert_close(cond, expected, rtol=0, atol=0)
    torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=0)


# --- a prompt engine's hooks ------------------------------------------------------------------


class SpliceVectors(nn.Module):
    """A textual-inversion hook on the token embedding, as prompt engines write one: called as
    the reference calls the table (``ids [1, tokens], out_dtype``), it passes both on and puts
    ``vectors`` in at ``offset`` of each row it sees."""

    def __init__(self, wrapped: nn.Module, vectors: torch.Tensor, offset: int) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.weight = wrapped.weight
        self.vectors = vectors
        self.offset = offset
        self.calls: list[tuple[tuple[int, ...], torch.dtype]] = []

    def forward(self, input_ids: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        self.calls.append((tuple(input_ids.shape), out_dtype))
        out = self.wrapped(input_ids, out_dtype).clone()
        out[:, self.offset : self.offset + len(self.vectors)] = self.vectors.to(out)
        return out


async def test_a_wrapped_token_embedding_is_what_the_member_runs(
    shims: Any, checkpoints: dict[str, Path], restore_embeddings: list[tuple[nn.Module, nn.Module]]
) -> None:
    clip = _clip(checkpoints, "sd1")
    member = clip.cond_stage_model.clip_l
    embeddings = member.transformer.text_model.embeddings
    rows = _rows(clip, "l") * 2
    plain = member(rows)[0]
    vectors = torch.randn(2, tiny_pipeline.CLIP_WIDTH, generator=torch.Generator().manual_seed(3))
    hook = SpliceVectors(embeddings.token_embedding, vectors, offset=2)
    restore_embeddings.append((embeddings, hook.wrapped))
    embeddings.token_embedding = hook

    z = member(rows)[0]
    # One call per row, with the reference's out_dtype, on the module in place at call time.
    assert hook.calls == [((1, 77), torch.float32), ((1, 77), torch.float32)]
    # The same numbers as the vectors given among the tokens (our textual-inversion path).
    chunk = [(t, 1.0) for t in rows[0]]
    chunk[2:4] = [(vectors[0], 1.0), (vectors[1], 1.0)]
    embeddings.token_embedding = hook.wrapped
    torch.testing.assert_close(member.encode_token_weights([chunk])[0], z[0:1], **TOL)
    assert not torch.allclose(z, plain)
    # Unwrapped again, the member encodes as before.
    torch.testing.assert_close(member(rows)[0], plain, rtol=0, atol=0)


def _emphasis(member: Any, pairs: list[tuple[list[int], list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """An A1111-style engine's encode: unweighted z per chunk, times the multipliers, rescaled to
    the unweighted mean; chunks side by side, the first chunk's pooled output."""
    zs, pooled = [], None
    for tokens, multipliers in pairs:
        z, p = member(torch.tensor([tokens]))
        mean = z.mean()
        z = z * torch.tensor([multipliers]).unsqueeze(-1)
        zs.append(z * (mean / z.mean()))
        pooled = p if pooled is None else pooled
    assert pooled is not None
    return torch.cat(zs, dim=1), pooled


async def test_a_replaced_encode_token_weights_is_what_the_clip_encodes_with(
    shims: Any, checkpoints: dict[str, Path]
) -> None:
    clip = _clip(checkpoints, "sd1").clone()
    clip.clip_layer(-2)
    member, tokenizer = clip.cond_stage_model.clip_l, clip.tokenizer.clip_l
    before = clip.encode_from_tokens(clip.tokenize(TEXT), return_pooled=True)
    ids = tokenizer.tokenizer([TEXT], add_special_tokens=False)["input_ids"][0]
    tokens = [tokenizer.start_token, *ids, tokenizer.end_token] + [tokenizer.pad_token] * (75 - len(ids))
    multipliers = [1.0] * 77
    multipliers[3] = 1.3
    seen_layers: list[Any] = []

    def tokenize_with_weights(text: str, return_word_ids: bool = False, **kwargs: Any) -> Any:
        return [(tokens, multipliers)]

    def encode_token_weights(pairs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        seen_layers.append((member.layer, member.layer_idx))
        return _emphasis(member, pairs)

    tokenizer.tokenize_with_weights = tokenize_with_weights
    member.encode_token_weights = encode_token_weights
    try:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(TEXT), return_pooled=True)
        # The CLIP set the member to its clip skip before calling the engine.
        assert seen_layers == [("hidden", -2)]
        member.set_clip_options({"layer": -2})
        expected, expected_pooled = _emphasis(member, [(tokens, multipliers)])
        torch.testing.assert_close(cond, expected, rtol=0, atol=0)
        torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=0)
        member.reset_clip_options()
        assert not torch.allclose(cond, before[0])
    finally:
        del tokenizer.tokenize_with_weights
        del member.encode_token_weights
    after = clip.encode_from_tokens(clip.tokenize(TEXT), return_pooled=True)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)


async def test_patched_clip_members_run_through_the_patches(shims: Any, checkpoints: dict[str, Path]) -> None:
    clip = _clip(checkpoints, "sd1")
    patched = clip.clone()
    key = "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    weight = clip.get_sd()[key]
    assert patched.add_patches({key: (torch.full_like(weight, 0.05),)}) == [key]
    rows = _rows(clip, "l")
    z, _ = patched.cond_stage_model.clip_l(rows)
    assert not torch.allclose(z, clip.cond_stage_model.clip_l(rows)[0])
    torch.testing.assert_close(z[0:1], patched.encode_from_tokens(clip.tokenize(TEXT)), rtol=0, atol=0)


# --- the tokenizer's reference attributes -----------------------------------------------------


async def test_tokenizer_state_is_plain_reference_attributes(
    shims: Any, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    # A CLIP loaded as the loader nodes load one: the server's embeddings folders are its tokenizers'.
    with serving(shims.kernel):
        _, clip, _ = adapters.load_checkpoint(checkpoints["sd1"])
    tokenizer = clip.tokenizer.clip_l
    state = vars(tokenizer)
    for name in ("tokenizer", "start_token", "end_token", "pad_token", "max_length", "embedding_key", "embedding_directory"):
        assert name in state, name
    assert str(tmp_path / "models" / "embeddings") in state["embedding_directory"]
    # Loaded outside any node, as a script would: no folders, like the reference's default.
    assert _clip(checkpoints, "sd1").tokenizer.clip_l.embedding_directory is None
    assert (tokenizer.max_word_length, tokenizer.tokenizer_adds_end_token, tokenizer.tokens_start) == (8, True, 1)

    bpe = tokenizer.tokenizer
    assert bpe is tokenizer.tokenizer  # one object: what a pack sets on it stays
    bare = bpe(["a photo of a cat", "sofa"], truncation=False, add_special_tokens=False)["input_ids"]
    full = bpe("a photo of a cat")["input_ids"]
    assert full == [49406, *bare[0], 49407] and len(bare[1]) == 1
    assert bpe.convert_tokens_to_string(bpe.convert_ids_to_tokens(bare[0])) == "a photo of a cat"
    vocab = bpe.get_vocab()
    assert vocab[",</w>"] == bpe(",", add_special_tokens=False)["input_ids"][0]
    # Vocabulary entries spell bytes: a two-byte letter comes back whole.
    accented = bpe("café au lait", add_special_tokens=False)["input_ids"]
    assert bpe.convert_tokens_to_string(bpe.convert_ids_to_tokens(accented)) == "café au lait"

    vectors, leftover = tokenizer._try_get_embedding("tiny_style,,")
    assert leftover == ",," and vectors is not None and vectors.shape == (3, tiny_pipeline.CLIP_WIDTH)
    assert tokenizer._try_get_embedding("no_such_style") == (None, "")


async def test_clip_model_builds_the_reference_text_model(shims: Any) -> None:
    clip_model = importlib.import_module("comfy.clip_model")
    cfg = tiny_pipeline.CLIP_L
    config = {
        "hidden_size": cfg.width,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.mlp_width,
        "hidden_act": "quick_gelu",
        "max_position_embeddings": cfg.max_positions,
        "eos_token_id": 49407,
    }
    transformer = clip_model.CLIPTextModel(config, torch.float32, "cpu", None)
    assert transformer.num_layers == cfg.layers
    weights = tiny_pipeline.clip_weights(cfg, SEEDS["l"])
    transformer.load_sd({f"text_model.{k}": v for k, v in weights.items()})
    rows = [[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70]
    last, _, projected, pooled = transformer(torch.tensor(rows))
    hf = _hf_out(_hf("l"), rows)
    torch.testing.assert_close(last, hf.last_hidden_state, **TOL)
    torch.testing.assert_close(projected, hf.pooler_output, **TOL)
