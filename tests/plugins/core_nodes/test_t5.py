"""T5-XXL encoder and tokenizer (Flux / SD3 text encoder) against transformers.

The encoder is built from a tiny random ``T5EncoderModel``'s state dict (the reference's
single-file layout is transformers' own) and must give the same hidden states (fp32, <= 1e-4);
the tokenizer must give transformers' ``T5Tokenizer`` ids for the vendored SentencePiece model.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import transformers

from plugins.core_nodes.models.t5 import (
    T5_XXL,
    T5TextEncoder,
    build_t5,
    config_from_state_dict,
    relative_position_bucket,
)
from plugins.core_nodes.models.t5_tokenizer import SPIECE_PATH, T5Tokenizer


def _hf_t5(gated: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.T5Config(
        vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
        feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False, use_cache=False,
    )  # fmt: skip
    model = transformers.T5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def _reference_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # t5xxl_fp16.safetensors: "shared.weight" and "encoder.block.N...", no tied copy of the embedding.
    return {k: v.clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


@pytest.mark.parametrize("gated", [True, False])
def test_encoder_matches_transformers(gated: bool) -> None:
    hf = _hf_t5(gated)
    ours = build_t5(_reference_layout(hf))
    assert ours.config.gated is gated and ours.config.layers == 3 and ours.config.heads == 4
    # Longer than the exact buckets and past max_distance, so the log buckets are exercised.
    ids = torch.randint(0, 300, (2, 160))
    with torch.no_grad():
        expected = hf(input_ids=ids).last_hidden_state
        got = ours(ids).last
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


def test_attention_mask_matches_transformers() -> None:
    hf = _hf_t5()
    ours = T5TextEncoder(build_t5(_reference_layout(hf)), attention_mask=True)
    rows = [[5, 6, 7, 1, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4, 1, 0]]
    ids = torch.tensor(rows)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    got, pooled = ours.forward_rows(rows)
    assert pooled is None
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_buckets_match_transformers() -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None, :]
    expected = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert torch.equal(relative_position_bucket(rel, 32, 128), expected)


def test_weighted_tokens_move_from_the_empty_prompt() -> None:
    encoder = T5TextEncoder(build_t5(_reference_layout(_hf_t5())))
    row = [(10, 1.0), (11, 1.5), (12, 0.5), (1, 1.0), (0, 1.0), (0, 1.0)]
    cond, pooled = encoder.encode([row])
    plain, _ = encoder.forward_rows([[t for t, _ in row]])
    empty, _ = encoder.forward_rows([[1, 0, 0, 0, 0, 0]])
    weights = torch.tensor([w for _, w in row]).reshape(1, -1, 1)
    expected = torch.where(weights != 1.0, empty + (plain - empty) * weights, plain)
    assert pooled is None and cond.shape == (1, 6, 32)
    assert torch.allclose(cond, expected, atol=1e-6)
    assert torch.allclose(cond[0, 0], plain[0, 0], atol=1e-6)  # weight 1: untouched
    assert not torch.allclose(cond[0, 1], plain[0, 1], atol=1e-3)


def test_full_size_config_from_meta_shapes() -> None:
    with torch.device("meta"):
        hf = transformers.T5EncoderModel(
            transformers.T5Config(
                vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False,
            )  # fmt: skip
        )
    sd = {k: v for k, v in hf.state_dict().items() if k != "encoder.embed_tokens.weight"}
    assert config_from_state_dict(sd) == T5_XXL


PROMPTS = ["a photo of a cat", "A Café   in Zürich, 1920s!", "hello\nworld  x", "astronaut riding a horse on mars"]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    folder = tmp_path_factory.mktemp("t5tok")
    shutil.copy(SPIECE_PATH, folder / "spiece.model")
    return transformers.T5Tokenizer.from_pretrained(str(folder), legacy=True)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenizer_ids_match_transformers(hf_tokenizer: object, prompt: str) -> None:
    (row,) = T5Tokenizer(min_length=256).tokenize_with_weights(prompt)
    expected = hf_tokenizer(prompt)["input_ids"]  # type: ignore[operator]
    assert [t for t, _ in row[: len(expected)]] == expected
    assert len(row) == 256 and all(t == 0 and w == 1.0 for t, w in row[len(expected) :])


def test_tokenizer_weights_min_length_and_word_ids(hf_tokenizer: object) -> None:
    tok = T5Tokenizer(min_length=77)
    (row,) = tok.tokenize_with_weights("a (red:1.5) apple", return_word_ids=True)
    red = hf_tokenizer("red", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert len(row) == 77
    weighted = [(t, w) for t, w, _ in row if w != 1.0]
    assert weighted == [(t, 1.5) for t in red]
    assert {i for _, w, i in row if w == 1.5} == {2}
    # Longer than min_length: one row, never cut, </s> last.
    long_row = tok.tokenize_with_weights("cat " * 100)[0]
    assert len(long_row) > 100 and long_row[-1] == (1, 1.0)
