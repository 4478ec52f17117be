"""T5's SentencePiece tokenizer with the reference's prompt weights, as its T5-XXL tokenizer chunks.

The reference's T5-XXL tokenizer (Flux, SD3) differs from CLIP's: no start token, one row as
long as the prompt (no 77-token chunks), the end token ``</s>`` (1) after the text, then padding
with ``<pad>`` (0) up to a minimum length (Flux: 256, SD3: 77). Prompt weights and
``(text:1.2)`` syntax are parsed as for CLIP; each weighted segment is tokenized as a whole, as
the reference does. The vocabulary is the vendored ``data/t5_spiece.model`` (see
``data/NOTICE.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .tokenizer import parse_weights

__all__ = ["T5_END", "T5_PAD", "T5Tokenizer", "t5_sentencepiece"]

SPIECE_PATH = Path(__file__).parent / "data" / "t5_spiece.model"
T5_END = 1
T5_PAD = 0
# Flux pads T5 prompts to 256 tokens, SD3 to 77 (the reference's min_length).
FLUX_MIN_LENGTH = 256
SD3_MIN_LENGTH = 77


@functools.lru_cache(maxsize=1)
def t5_sentencepiece() -> Any:
    """The T5 SentencePiece processor (loaded once)."""
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(SPIECE_PATH))


class T5IdsTokenizer:
    """The tokenizer's ``tokenizer`` attribute, callable like transformers' ``T5Tokenizer``:
    ``tok(text)["input_ids"]`` is the pieces' ids then ``</s>``."""

    eos_token_id = T5_END
    pad_token_id = T5_PAD

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **kwargs: Any) -> dict[str, Any]:
        def ids(t: str) -> list[int]:
            out: list[int] = list(t5_sentencepiece().encode(t))
            return [*out, T5_END] if add_special_tokens else out

        if isinstance(text, str):
            row = ids(text)
            return {"input_ids": row, "attention_mask": [1] * len(row)}
        rows = [ids(t) for t in text]
        return {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}

    def get_vocab(self) -> dict[str, int]:
        sp = t5_sentencepiece()
        return {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}


class T5Tokenizer:
    """Prompt text -> one row of ``(token, weight)`` pairs (or ``(token, weight, word_id)``)."""

    # The reference tokenizer's fixed settings, read by packs that rebuild rows themselves.
    has_start_token = False
    has_end_token = True
    pad_with_end = False
    pad_to_max_length = False
    tokens_start = 0
    start_token = None
    end_token = T5_END
    pad_token = T5_PAD
    embedding_directory: list[str] | None = None

    def __init__(self, min_length: int = FLUX_MIN_LENGTH, embedding_key: str = "t5xxl", embedding_size: int = 4096) -> None:
        self.min_length = min_length
        self.max_length = 99999999
        self.embedding_key = embedding_key
        self.embedding_size = embedding_size
        self.tokenizer = T5IdsTokenizer()

    def tokenize_with_weights(
        self, text: str, return_word_ids: bool = False, min_length: int | None = None, **kwargs: Any
    ) -> list[list[tuple[Any, ...]]]:
        """One row: each segment's pieces with its weight (word ids count segments from 1), ``</s>``,
        then ``<pad>`` up to ``min_length``. Other reference options are accepted and not used."""
        sp = t5_sentencepiece()
        row: list[tuple[int, float, int]] = []
        word_id = 0
        for segment, weight in parse_weights(text):
            if not segment:
                continue
            word_id += 1
            row.extend((int(t), weight, word_id) for t in sp.encode(segment))
        row.append((T5_END, 1.0, 0))
        length = self.min_length if min_length is None else int(min_length)
        if len(row) < length:
            row.extend([(T5_PAD, 1.0, 0)] * (length - len(row)))
        if return_word_ids:
            return [list(row)]
        return [[(t, w) for t, w, _ in row]]

    def untokenize(self, token_weight_pair: Sequence[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], str]]:
        sp = t5_sentencepiece()
        size = sp.get_piece_size()
        return [
            (pair, sp.id_to_piece(pair[0]) if isinstance(pair[0], int) and 0 <= pair[0] < size else "")
            for pair in token_weight_pair
        ]

    def state_dict(self) -> dict[str, Any]:
        return {}
