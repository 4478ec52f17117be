"""The CLIP tokenizer: golden prompts from the reference server, and transformers on a wider corpus."""

from __future__ import annotations

import gzip
import json
import os
import random
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import torch

from plugins.core_nodes.models.tokenizer import (
    _MERGE_COUNT,
    END_TOKEN,
    START_TOKEN,
    VOCAB_PATH,
    ClipBpe,
    PromptTokenizer,
    default_bpe,
    make_tokenizers,
    parse_weights,
    tokenize,
)

from .golden import GOLDEN_DIR

GOLDEN = json.loads((GOLDEN_DIR / "tokenizer.json").read_text(encoding="utf-8"))


def _as_lists(chunks: list[list[tuple[Any, ...]]]) -> list[list[list[Any]]]:
    return [[list(pair) for pair in chunk] for chunk in chunks]


def _ids(chunks: list[list[tuple[Any, ...]]]) -> list[Any]:
    return [t for chunk in chunks for t, *_ in chunk if t not in (START_TOKEN, END_TOKEN, 0)]


# --- golden data from the reference server ---------------------------------------------------


@pytest.mark.parametrize("case", GOLDEN["sd1"], ids=lambda c: repr(c["prompt"])[:40])
def test_sd1_matches_reference(case: dict[str, Any]) -> None:
    tokenizers = make_tokenizers("sd1")
    got = tokenize(tokenizers, case["prompt"])
    assert list(got) == ["l"]
    # Exact ids and weights (floats compared exactly: 1.1 * 1.1 must be 1.2100000000000002).
    assert _as_lists(got["l"]) == case["chunks"]


@pytest.mark.parametrize("case", GOLDEN["sdxl"], ids=lambda c: repr(c["prompt"])[:40])
def test_sdxl_matches_reference(case: dict[str, Any]) -> None:
    got = tokenize(make_tokenizers("sdxl"), case["prompt"])
    assert sorted(got) == ["g", "l"]
    assert _as_lists(got["l"]) == case["l"]
    assert _as_lists(got["g"]) == case["g"]


def test_golden_covers_every_shape_of_output() -> None:
    # Guard against the golden file silently shrinking: multi-chunk prompts and both paddings.
    assert len(GOLDEN["sd1"]) == len(GOLDEN["sdxl"]) == 22
    assert max(len(c["chunks"]) for c in GOLDEN["sd1"]) == 5
    assert any(c["g"][0][-1][0] == 0 and c["l"][0][-1][0] == END_TOKEN for c in GOLDEN["sdxl"])


# --- transformers' CLIPTokenizer on a wider corpus --------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """transformers' CLIPTokenizer built offline from vocab.json/merges.txt derived from our vocab file."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import CLIPTokenizer

    folder: Path = tmp_path_factory.mktemp("clip_tokenizer")
    with gzip.open(VOCAB_PATH, "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 1 + _MERGE_COUNT]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(default_bpe().vocab), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder))


HAND_CORPUS = [
    "a photo of an astronaut riding a horse on mars",
    "Hello World!!",
    "ÉCOLE Straße İstanbul ΣΟΦΟΣ ΑΣ.",
    "it's 'sun' 'S don'T x'll'd've",
    "a\u00a0b\u3000c\u2028d\u2029e",
    "ａｂｃ１２３ ﬁ ligature",
    "e\u0301te caf\u00e9",
    "<|endoftext|> hi <|startoftext|> a<|endoftext|>b",
    "tab\t\tx\r\nnew",
    "1234567 3.14159 1e-9",
    "٣٤ ½ ² ⅷ",
    "🤖🦾👩‍👩‍👧 🐱🔥",
    "...!!!??? a_b-c~d /\\|",
    "\u200bzero\u200dwidth",
    "日本語テキスト 東京の夜景",
    "مرحبا بالعالم",
    "Привет мир",
    "ǅemal ǈ",
    "masterpiece, best quality, ultra-detailed, 8k, (((cinematic lighting)))",
    "   leading and trailing   ",
    "",
]


def _random_corpus(count: int) -> list[str]:
    rng = random.Random(1234)
    ranges = [(32, 126), (160, 0x2FFF), (0x3000, 0x9FFF), (0x1F300, 0x1FAFF)]
    texts: list[str] = []
    while len(texts) < count:
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            ch = chr(rng.randint(lo, hi))
            # Characters this Python's Unicode database (14.0) does not know are left out: the
            # Rust tokenizer's newer tables classify some of them as letters.
            if unicodedata.category(ch) not in ("Cn", "Cs"):
                chars.append(ch)
        texts.append("".join(chars))
    return texts


@pytest.mark.parametrize("text", HAND_CORPUS, ids=repr)
def test_bpe_matches_transformers_by_hand(hf_tokenizer: Any, text: str) -> None:
    assert default_bpe().encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_bpe_matches_transformers_random_corpus(hf_tokenizer: Any) -> None:
    corpus = _random_corpus(400)
    mismatched = [
        t for t in corpus if default_bpe().encode(t) != hf_tokenizer(t, add_special_tokens=False)["input_ids"]
    ]
    assert mismatched == []


def test_bpe_matches_transformers_with_specials(hf_tokenizer: Any) -> None:
    text = "a red (fox:1.2) in the snow"
    assert [START_TOKEN, *default_bpe().encode(text), END_TOKEN] == hf_tokenizer(text)["input_ids"]


def test_vocabulary_shape() -> None:
    bpe = default_bpe()
    assert len(bpe.vocab) == 49408
    assert bpe.vocab["<|startoftext|>"] == START_TOKEN and bpe.vocab["<|endoftext|>"] == END_TOKEN
    assert bpe.vocab["a</w>"] == 320
    assert default_bpe() is bpe  # parsed once


def test_custom_merges_are_used() -> None:
    # A tiny merge list: only "a"+"b" merges; everything else stays byte-level.
    bpe = ClipBpe([("a", "b</w>")])
    assert bpe.encode("ab") == [bpe.vocab["ab</w>"]]
    assert bpe.encode("ba") == [bpe.vocab["b"], bpe.vocab["a</w>"]]


# --- prompt syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("plain", [("plain", 1.0)]),
        ("(a)", [("a", 1.1)]),
        ("((a))", [("a", 1.1 * 1.1)]),
        ("(a:1.5) b", [("a", 1.5), (" b", 1.0)]),
        ("((a:0.5))", [("a", 0.5)]),
        ("(a (b:0.25) c:2)", [("a ", 2.0), ("b", 0.25), (" c", 2.0)]),
        ("(a:x)", [("a:x", 1.1)]),
        ("(:2)", [(":2", 1.1)]),
        ("\\(a\\)", [("(a)", 1.0)]),
        ("(a \\(b\\))", [("a (b)", 1.1)]),
        ("[a] {b} <c>", [("[a] {b} <c>", 1.0)]),
        ("(open", [("(open", 1.0)]),
        # An unmatched ")" unbalances the rest: the later group stays plain text.
        ("a) (b)", [("a) (b)", 1.0)]),
        ("(x)()", [("x", 1.1)]),
    ],
)
def test_parse_weights(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_weights(prompt) == expected


def test_weights_reach_tokens() -> None:
    chunks = make_tokenizers("sd1")["l"].tokenize_with_weights("(cat:1.3) dog")
    bpe = default_bpe()
    assert chunks[0][:4] == [
        (START_TOKEN, 1.0),
        (bpe.encode("cat")[0], 1.3),
        (bpe.encode("dog")[0], 1.0),
        (END_TOKEN, 1.0),
    ]


def test_short_group_moves_whole_to_next_chunk() -> None:
    # 74 single-token words fill a chunk up to one free slot; a 3-token segment cannot fit.
    tok = PromptTokenizer(default_bpe())
    word = default_bpe().encode("cat")
    assert len(word) == 1
    chunks = tok.tokenize_with_weights("cat " * 74 + "(a b c:1.2)")
    assert len(chunks) == 2
    assert chunks[0][75] == (END_TOKEN, 1.0) and chunks[0][76] == (END_TOKEN, 1.0)
    assert [t for t, _ in chunks[0][1:75]] == word * 74
    assert [w for _, w in chunks[1][1:4]] == [1.2, 1.2, 1.2]
    assert all(len(c) == 77 for c in chunks)


def test_word_ids() -> None:
    chunks = make_tokenizers("sd1")["l"].tokenize_with_weights("a (b) c", return_word_ids=True)
    assert [x[2] for x in chunks[0][:5]] == [0, 1, 2, 3, 0]


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown text-encoder family"):
        make_tokenizers("sd9")


def test_sd2_pads_with_zero() -> None:
    chunks = make_tokenizers("sd2")["h"].tokenize_with_weights("a cat")
    assert [t for t, _ in chunks[0][:5]] == [START_TOKEN, 320, 2368, END_TOKEN, 0]


# --- embeddings ------------------------------------------------------------------------------


class FakeEmbeddings:
    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table
        self.calls: list[tuple[str, str, int]] = []

    def __call__(self, name: str, key: str, size: int) -> torch.Tensor | None:
        self.calls.append((name, key, size))
        return self.table.get(name)


def test_embedding_vectors_replace_the_name() -> None:
    vectors = torch.arange(3 * 768, dtype=torch.float32).reshape(3, 768)
    lookup = FakeEmbeddings({"style": vectors})
    tok = make_tokenizers("sd1", embeddings=lookup)["l"]
    chunks = tok.tokenize_with_weights("a embedding:style cat, (embedding:style:1.2)")
    row = chunks[0]
    assert row[1] == (320, 1.0)
    for k in range(3):
        assert torch.equal(row[2 + k][0], vectors[k]) and row[2 + k][1] == 1.0
    assert row[5][0] == default_bpe().encode("cat")[0]
    assert all(torch.is_tensor(t) and w == 1.2 for t, w in row[7:10])
    assert ("style", "clip_l", 768) in lookup.calls


def test_embedding_trailing_comma_and_missing() -> None:
    lookup = FakeEmbeddings({"style": torch.ones(768)})
    missing: list[str] = []
    tok = PromptTokenizer(default_bpe(), embeddings=lookup, on_missing_embedding=missing.append)
    chunks = tok.tokenize_with_weights("embedding:style, dog embedding:nothere cat")
    ids = [t if not torch.is_tensor(t) else "E" for t, _ in chunks[0][:6]]
    # The comma after the name is prompt text; a missing embedding's name is dropped.
    assert ids == [
        START_TOKEN,
        "E",
        267,
        default_bpe().encode("dog")[0],
        default_bpe().encode("cat")[0],
        END_TOKEN,
    ]
    assert missing == ["nothere"]


def test_sdxl_embeddings_by_key() -> None:
    lookup = FakeEmbeddings({"x": torch.zeros(2, 1280)})
    got = tokenize(make_tokenizers("sdxl", embeddings=lookup), "embedding:x")
    assert ("x", "clip_g", 1280) in lookup.calls and ("x", "clip_l", 768) in lookup.calls
    assert torch.is_tensor(got["g"][0][1][0])


def test_long_embedding_splits_across_chunks() -> None:
    lookup = FakeEmbeddings({"big": torch.zeros(80, 768)})
    chunks = PromptTokenizer(default_bpe(), embeddings=lookup).tokenize_with_weights("embedding:big")
    assert len(chunks) == 2
    assert sum(torch.is_tensor(t) for c in chunks for t, _ in c) == 80
    assert chunks[0][76] == (END_TOKEN, 1.0)
