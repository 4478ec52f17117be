"""``comfy.sd1_clip``, ``comfy.sdxl_clip`` and ``comfy.(text_encoders.)sd3_clip`` as packs use them.

The tokenizers must give the same chunks as the core nodes' CLIPTextEncode path, and the encoder
wrappers around a loaded model's text encoders the same conditioning.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from plugins.core_nodes.models import text_encoder as core_te
from plugins.core_nodes.models import tokenizer as core_tok
from tests.plugins.core_nodes import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
async def shims(comfy_server: Any) -> Any:
    return await comfy_server(plugins=["comfy_compat", "models", "core_nodes"], cpu=True)


def _mod(name: str) -> Any:
    return importlib.import_module(name)


async def test_prompt_syntax_helpers(shims: Any) -> None:
    sd1 = _mod("comfy.sd1_clip")
    assert sd1.parse_parentheses("a (b (c)) d") == ["a ", "(b (c))", " d"]
    text = sd1.escape_important("x \\(y\\) (z:1.5) ((w))")
    pairs = [(sd1.unescape_important(t), w) for t, w in sd1.token_weights(text, 1.0)]
    assert pairs == [("x (y) ", 1.0), ("z", 1.5), (" ", 1.0), ("w", pytest.approx(1.21))]
    assert sd1.token_weights("(a:oops)", 1.0) == [("a:oops", pytest.approx(1.1))]
    assert core_tok.parse_weights("x \\(y\\) (z:1.5)") == [(sd1.unescape_important(t), w) for t, w in sd1.token_weights(sd1.escape_important("x \\(y\\) (z:1.5)"), 1.0)]


async def test_tokenizers_match_the_core_clip_path(shims: Any) -> None:
    sd1 = _mod("comfy.sd1_clip")
    sdxl = _mod("comfy.sdxl_clip")
    prompt = "a photo of a (red:1.3) cat, " + "word " * 90
    core = core_tok.make_tokenizers("sdxl")
    ours = sdxl.SDXLTokenizer().tokenize_with_weights(prompt)
    assert ours == core_tok.tokenize(core, prompt)
    assert len(ours["l"]) == 2 and all(len(chunk) == 77 for chunk in ours["g"])
    assert ours["g"][-1][-1] == (0, 1.0) and ours["l"][-1][-1][0] == 49407  # bigG pads with 0
    sd1_tokens = sd1.SD1Tokenizer().tokenize_with_weights("a cat", return_word_ids=True)
    assert list(sd1_tokens) == ["l"] and sd1_tokens["l"][0][1][2] == 1
    tok = sd1.SDTokenizer()
    assert (tok.max_length, tok.start_token, tok.end_token, tok.tokens_start) == (77, 49406, 49407, 1)
    assert tok.untokenize([(320, 1.0)]) == [((320, 1.0), "a</w>")]


async def test_load_embed_from_folders(shims: Any, tmp_path: Path) -> None:
    sd1 = _mod("comfy.sd1_clip")
    nested = tmp_path / "emb" / "styles"
    nested.mkdir(parents=True)
    vectors = torch.randn(2, 768)
    torch.save({"string_to_param": {"*": vectors}}, nested / "mystyle.pt")
    assert set(sd1.expand_directory_list([str(tmp_path / "emb")])) == {str(tmp_path / "emb"), str(nested)}
    found = sd1.load_embed("mystyle", str(tmp_path / "emb"), 768)
    assert torch.equal(found, vectors)
    assert sd1.load_embed("missing", [str(tmp_path / "emb")], 768) is None
    assert sd1.load_embed("../emb/styles/mystyle", str(nested), 768) is None
    tokens = sd1.SDTokenizer(embedding_directory=str(tmp_path / "emb")).tokenize_with_weights("embedding:mystyle cat")
    assert torch.equal(tokens[0][1][0], vectors[0]) and torch.equal(tokens[0][2][0], vectors[1])


def _stack(family: str) -> core_te.TextEncoderStack:
    sd = tiny_pipeline.checkpoint_dict(family)
    return core_te.stack_from_state_dict(sd)


async def test_encoders_wrap_a_loaded_model(shims: Any) -> None:
    sd1 = _mod("comfy.sd1_clip")
    sdxl = _mod("comfy.sdxl_clip")
    stack = _stack("sdxl")
    assert isinstance(stack, sdxl.SDXLClipModel) and not isinstance(stack, sd1.SD1ClipModel)
    model = sd1.wrap_text_encoders(stack)
    assert isinstance(model, sdxl.SDXLClipModel) and isinstance(model.clip_g, sdxl.SDXLClipG) is False
    tokens = sdxl.SDXLTokenizer().tokenize_with_weights("a (red:1.2) fox")
    cond, pooled = model.encode_token_weights(tokens)
    ref_cond, ref_pooled = stack.encode_tokens(tokens)
    assert torch.equal(cond, ref_cond) and torch.equal(pooled, ref_pooled)

    tokenizer = sd1.wrap_tokenizers(stack)
    assert isinstance(tokenizer, sdxl.SDXLTokenizer)
    assert tokenizer.tokenize_with_weights("a (red:1.2) fox") == stack.tokenize("a (red:1.2) fox")
    assert tokenizer.clip_g.pad_token == 0 and tokenizer.clip_l.pad_token == 49407

    sd1_stack = _stack("sd1")
    sd1_tokenizer = sd1.wrap_tokenizers(sd1_stack)
    assert isinstance(sd1_tokenizer, sd1.SD1Tokenizer) and sd1_tokenizer.clip_l.embedding_size == sd1_stack.encoders["l"].model.config.width
    assert isinstance(sd1_stack, sd1.SD1ClipModel) and not isinstance(sd1_stack, sdxl.SDXLClipModel)
    wrapped = sd1.wrap_text_encoders(sd1_stack)
    tokens = sd1.SD1Tokenizer().tokenize_with_weights("a house")
    assert torch.equal(wrapped.encode_token_weights(tokens)[0], sd1_stack.encode_tokens(tokens)[0])
    wrapped.set_clip_options({"layer": -2})
    penultimate = wrapped.encode_token_weights(tokens)[0]
    sd1_stack.set_clip_layer(-2)
    assert torch.equal(penultimate, sd1_stack.encode_tokens(tokens)[0])


async def test_empty_sd_clip_model_loads_weights(shims: Any) -> None:
    sd1 = _mod("comfy.sd1_clip")
    from plugins.core_nodes.models.clip import ClipTextConfig

    config = ClipTextConfig(width=32, layers=2, heads=2, mlp_width=64)
    weights = tiny_pipeline.clip_weights(config, 5)
    model = sd1.SDClipModel(textmodel_json_config=config)
    model.load_sd({f"text_model.{k}": v for k, v in weights.items()})
    reference = core_te.ClipEncoder(tiny_pipeline.ClipTextModel(config), None, True, 49407)
    reference.model.load_state_dict(weights)
    tokens = [[(49406, 1.0), (320, 1.0), (49407, 1.0)] + [(49407, 1.0)] * 74]
    assert torch.allclose(model.encode_token_weights(tokens)[0], reference.encode(tokens)[0])
    assert not any(p.requires_grad for p in model.parameters())


async def test_sd3_clip_names(shims: Any) -> None:
    old = _mod("comfy.sd3_clip")
    new = _mod("comfy.text_encoders.sd3_clip")
    assert old is new and old.SD3ClipModel is new.SD3ClipModel
    tok = old.SD3Tokenizer()
    tok.t5xxl.min_length = 256
    assert tok.t5xxl.min_length == 256 and tok.clip_g.pad_token == 0
    with pytest.raises(NotImplementedError, match="T5-XXL"):
        old.T5XXLModel()
    with pytest.raises(NotImplementedError, match="T5-XXL"):
        tok.tokenize_with_weights("x")
    empty = old.SD3ClipModel(clip_l=False, clip_g=False, t5=False)
    assert empty.clip_l is None and empty.t5xxl is None
    flux = _mod("comfy.text_encoders.flux")
    with pytest.raises(NotImplementedError):
        flux.FluxClipModel()
