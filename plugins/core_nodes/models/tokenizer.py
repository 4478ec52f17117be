"""The CLIP BPE tokenizer and the reference's prompt-weighting syntax, chunked for CLIP.

Prompt syntax (what users type and what the reference server understands):

- ``(text)`` multiplies the weight of ``text`` by 1.1 per level; ``(text:1.3)`` sets it to 1.3
  (an absolute weight, not a product); nesting works, ``((a) b:0.5)``.
- ``\\(`` and ``\\)`` are literal parentheses. Square and curly brackets are plain text.
- ``embedding:name`` (at the start, or after a space or newline) inserts a textual-inversion
  embedding when the tokenizer has an embedding lookup and the lookup finds one.

A prompt becomes chunks of ``max_length`` ``(token, weight)`` pairs, each chunk framed by the start
and end tokens and padded. Text needs no torch; embedding vectors are passed through opaquely.
"""

from __future__ import annotations

import functools
import gzip
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHUNK_LENGTH",
    "END_TOKEN",
    "START_TOKEN",
    "ClipBpe",
    "EmbeddingLookup",
    "PromptTokenizer",
    "default_bpe",
    "make_tokenizers",
    "parse_weights",
    "tokenize",
]

START_TOKEN = 49406
END_TOKEN = 49407
CHUNK_LENGTH = 77
VOCAB_PATH = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary is 49,408 entries: 256 bytes, 256 bytes ending a word, the merges, 2 specials.
_MERGE_COUNT = 49408 - 2 * 256 - 2
_END_OF_WORD = "</w>"
_SPECIALS = {"<|startoftext|>": START_TOKEN, "<|endoftext|>": END_TOKEN}
_SPECIALS_RE = re.compile("(<\\|startoftext\\|>|<\\|endoftext\\|>)")
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# The weight one pair of parentheses gives, multiplied per nesting level.
PAREN_WEIGHT = 1.1
# Groups at least this long may be split across chunks; shorter ones move whole to the next chunk.
_SPLITTABLE_GROUP = 8
_EMBEDDING_PREFIX = "embedding:"
_EMBEDDING_SPLIT = re.compile(f"[ \\n]{re.escape(_EMBEDDING_PREFIX)}")

# (name, embedding key, embedding width) -> vectors shaped [n, width] or [width], or None.
EmbeddingLookup = Callable[[str, str, int], Any]
# A token is a vocabulary id or an embedding vector standing in for one.
Token = Any
WeightedToken = tuple[Token, float]


def _byte_alphabet() -> tuple[list[str], list[str]]:
    """One printable character per byte value, so BPE works on any UTF-8 text.

    Bytes that are printable Latin-1 map to themselves; the rest are shifted above U+00FF in
    byte order. Returns the characters indexed by byte value, and in vocabulary order (the
    printable bytes first), which is the order of the first 256 vocabulary entries.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    rest = [b for b in range(256) if b not in printable]
    table: dict[int, str] = {b: chr(b) for b in printable}
    table.update({b: chr(256 + k) for k, b in enumerate(rest)})
    return [table[b] for b in range(256)], [table[b] for b in printable + rest]


def _is_space(ch: str) -> bool:
    return ch in "\t\n\v\f\r\x85" or unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "L"


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "N"


def _normalize(text: str) -> str:
    """NFC, whitespace runs to one space, lower case: the text CLIP's pre-tokenizer sees."""
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    in_space = False
    for ch in text:
        if _is_space(ch):
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(ch)
            in_space = False
    # Lower-case one character at a time: no final-sigma rule, as CLIP's reference tokenizer.
    return "".join(ch.lower() for ch in out)


def _pieces(text: str) -> Iterator[str]:
    """Split normalized text the way CLIP's pattern does.

    In order of preference at each position: an English contraction suffix, a run of letters, a
    single digit, or a run of anything that is neither space, letter nor digit. Spaces separate.
    """
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if _is_space(ch):
            i += 1
            continue
        if ch == "'":
            suffix = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
            if suffix is not None:
                yield suffix
                i += len(suffix)
                continue
        j = i + 1
        if _is_letter(ch):
            while j < n and _is_letter(text[j]):
                j += 1
        elif not _is_number(ch):
            while j < n and not (_is_space(text[j]) or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        yield text[i:j]
        i = j


class ClipBpe:
    """Byte-level BPE over CLIP's vocabulary: text to token ids, without start or end tokens."""

    def __init__(self, merges: Sequence[tuple[str, str]]) -> None:
        self._bytes, base = _byte_alphabet()
        entries = base + [c + _END_OF_WORD for c in base] + ["".join(m) for m in merges]
        entries += list(_SPECIALS)
        self.vocab: dict[str, int] = {tok: i for i, tok in enumerate(entries)}
        self._ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        # Prompts repeat words a lot; the per-instance memo keeps re-tokenizing cheap.
        self._memo: dict[str, tuple[int, ...]] = {}

    def inverse_vocab(self) -> dict[int, str]:
        """Token id -> vocabulary entry (built on first use: most callers never ask)."""
        table: dict[int, str] | None = self.__dict__.get("_inverse")
        if table is None:
            table = {i: tok for tok, i in self.vocab.items()}
            self._inverse = table
        return table

    def decode_entries(self, entries: Sequence[str]) -> str:
        """Vocabulary entries as text: each character back to its byte, the UTF-8 decoded
        (a broken sequence becomes U+FFFD), every word end a space, outer spaces stripped."""
        to_byte = self.__dict__.get("_to_byte")
        if to_byte is None:
            to_byte = {ch: b for b, ch in enumerate(self._bytes)}
            self._to_byte = to_byte
        text = "".join(entries)
        raw = bytearray()
        for piece in text.split(_END_OF_WORD):
            raw += bytes(to_byte[ch] for ch in piece if ch in to_byte)
            raw += b" "
        return raw[:-1].decode("utf-8", errors="replace").strip()

    @classmethod
    def from_file(cls, path: Path = VOCAB_PATH) -> ClipBpe:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 1 + _MERGE_COUNT]]
        return cls([(a, b) for a, b in merges])

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in _SPECIALS_RE.split(text):
            if part in _SPECIALS:
                ids.append(_SPECIALS[part])
                continue
            for piece in _pieces(_normalize(part)):
                ids.extend(self._encode_piece(piece))
        return ids

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        cached = self._memo.get(piece)
        if cached is not None:
            return cached
        chars = [self._bytes[b] for b in piece.encode("utf-8")]
        word = [*chars[:-1], chars[-1] + _END_OF_WORD]
        ranks = self._ranks
        while len(word) > 1:
            best_rank, best_at = None, -1
            for k in range(len(word) - 1):
                rank = ranks.get((word[k], word[k + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_at = rank, k
            if best_rank is None:
                break
            pair = (word[best_at], word[best_at + 1])
            merged: list[str] = []
            k = 0
            # Merge every occurrence of the best pair, left to right, in one pass.
            while k < len(word):
                if k < len(word) - 1 and (word[k], word[k + 1]) == pair:
                    merged.append(pair[0] + pair[1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        ids = tuple(self.vocab[w] for w in word)
        if len(self._memo) < 100_000:
            self._memo[piece] = ids
        return ids


@functools.cache
def default_bpe() -> ClipBpe:
    """The vendored vocabulary, parsed once per process (it is immutable data, ~0.3 s to parse)."""
    return ClipBpe.from_file(VOCAB_PATH)


# --- prompt weights --------------------------------------------------------------------------

# Escaped parentheses hide behind control characters while the parser runs.
_ESC_CLOSE, _ESC_OPEN = "\x00\x01", "\x00\x02"


def split_parentheses(text: str) -> list[str]:
    """Top-level pieces: plain text, and ``(...)`` groups with their parentheses kept.

    An unmatched ``(`` leaves the rest of the text as one plain piece. An unmatched ``)`` drives
    the depth negative, so later parentheses stay plain text until it is balanced (the
    reference's behaviour, kept so prompts weigh the same on both servers).
    """
    pieces: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = "("
            else:
                current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def weigh(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in split_parentheses(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            inner_weight = weight * PAREN_WEIGHT
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out.extend(weigh(inner, inner_weight))
        else:
            out.append((piece, weight))
    return out


def parse_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """A prompt as ``(segment, weight)`` pairs in order, escapes resolved."""
    return [(unescape_important(segment), w) for segment, w in weigh(escape_important(text), weight)]


def escape_important(text: str) -> str:
    """Hide ``\\(`` / ``\\)`` from the parenthesis parser."""
    return text.replace("\\)", _ESC_CLOSE).replace("\\(", _ESC_OPEN)


def unescape_important(text: str) -> str:
    """Undo :func:`escape_important`, leaving literal parentheses."""
    return text.replace(_ESC_CLOSE, ")").replace(_ESC_OPEN, "(")


# --- chunking --------------------------------------------------------------------------------


def _rows(vectors: Any) -> list[Any]:
    if len(vectors.shape) == 1:
        return [vectors]
    return [vectors[i] for i in range(vectors.shape[0])]


class IdsTokenizer:
    """A tokenizer's ``tokenizer`` attribute, called as packs call the reference's (a transformers
    ``CLIPTokenizer`` there): ``tok(text)["input_ids"]`` is the start token, the text's BPE ids and
    the end token, without padding or truncation (``add_special_tokens=False``: the BPE ids alone);
    a list of texts gives a list of such rows. Attributes a pack sets on it stay set: each
    :class:`PromptTokenizer` keeps one."""

    def __init__(self, bpe: ClipBpe, start_token: int, end_token: int, pad_token: int) -> None:
        self.bpe = bpe
        self.bos_token_id = start_token
        self.eos_token_id = end_token
        self.pad_token_id = pad_token

    def _ids(self, text: str, special: bool) -> list[int]:
        ids = self.bpe.encode(text)
        return [self.bos_token_id, *ids, self.eos_token_id] if special else ids

    def __call__(
        self, text: str | Sequence[str], add_special_tokens: bool = True, **kwargs: Any
    ) -> dict[str, Any]:
        # Other transformers options (truncation, padding=False...) ask for nothing this does not do.
        if isinstance(text, str):
            ids: Any = self._ids(text, add_special_tokens)
            mask: Any = [1] * len(ids)
        else:
            ids = [self._ids(t, add_special_tokens) for t in text]
            mask = [[1] * len(row) for row in ids]
        return {"input_ids": ids, "attention_mask": mask}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.bpe.vocab)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Vocabulary entries of ``ids`` (``"cat</w>"``); unknown ids give ``""``."""
        inv = self.bpe.inverse_vocab()
        return [inv.get(int(i), "") for i in ids]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Vocabulary entries back to text: bytes decoded, each word end a space, ends stripped."""
        return self.bpe.decode_entries(tokens)


class PromptTokenizer:
    """One CLIP's tokenizer: prompt text to chunks of ``(token, weight)`` pairs.

    ``pad_token`` is what fills a chunk after its end token (CLIP-L pads with the end token,
    OpenCLIP models with 0). ``embedding_key``/``embedding_size`` tell the lookup which vectors
    this text encoder takes; ``embedding_directory`` names the folders it reads them from (the
    reference's attribute: packs that look embeddings up themselves read it).

    The reference tokenizer's state is plain instance attributes here too (``tokenizer``,
    ``start_token``, ``embedding_directory``...): packs copy ``vars(tokenizer)`` into their own
    prompt engines (smZNodes) and replace ``tokenize_with_weights`` on the instance.
    """

    def __init__(
        self,
        bpe: ClipBpe | None = None,
        *,
        max_length: int = CHUNK_LENGTH,
        start_token: int = START_TOKEN,
        end_token: int = END_TOKEN,
        pad_token: int = END_TOKEN,
        embedding_key: str = "clip_l",
        embedding_size: int = 768,
        embeddings: EmbeddingLookup | None = None,
        on_missing_embedding: Callable[[str], None] | None = None,
        embedding_directory: str | Sequence[str] | None = None,
    ) -> None:
        self.bpe = bpe if bpe is not None else default_bpe()
        self.max_length = max_length
        self.start_token = start_token
        self.end_token = end_token
        self.pad_token = pad_token
        self.embedding_key = embedding_key
        self.embedding_size = embedding_size
        self.embeddings = embeddings
        self.on_missing_embedding = on_missing_embedding
        folders = [embedding_directory] if isinstance(embedding_directory, str) else embedding_directory
        self.embedding_directory = [str(f) for f in folders] if folders is not None else None
        # The BPE tokenizer alone, callable like the reference's (see :class:`IdsTokenizer`).
        self.tokenizer = IdsTokenizer(self.bpe, start_token, end_token, pad_token)

    def _groups(self, text: str) -> list[list[WeightedToken]]:
        """Token groups in prompt order: one per text segment, one per embedding."""
        groups: list[list[WeightedToken]] = []
        for segment, weight in parse_weights(text):
            parts = _EMBEDDING_SPLIT.split(segment)
            words = [parts[0], *(_EMBEDDING_PREFIX + p for p in parts[1:])]
            for word in words:
                if not word:
                    continue
                if self.embeddings is not None and word.startswith(_EMBEDDING_PREFIX):
                    vectors, word = self._embedding(word[len(_EMBEDDING_PREFIX) :].strip("\n"))
                    if vectors is not None:
                        groups.append([(row, weight) for row in _rows(vectors)])
                    if not word:
                        continue
                groups.append([(t, weight) for t in self.bpe.encode(word)])
        return groups

    def _embedding(self, spec: str) -> tuple[Any, str]:
        """Look up the embedding named by the first word of ``spec``; return it and the rest."""
        words = spec.split()
        if not words:
            return None, ""
        name, rest = words[0], " ".join(words[1:])
        vectors, leftover = self._try_get_embedding(name)
        if leftover:
            rest = f"{leftover} {rest}"
        if vectors is None and self.on_missing_embedding is not None:
            self.on_missing_embedding(name)
        return vectors, rest

    def _try_get_embedding(self, embedding_name: str) -> tuple[Any, str]:
        """``(vectors or None, leftover)`` for ``embedding_name``, as the reference's tokenizer
        answers it: a name not found is tried again without trailing commas ("embedding:name,"
        ends a phrase), and those commas come back as the leftover text."""
        if self.embeddings is None:
            return None, ""
        vectors = self.embeddings(embedding_name, self.embedding_key, self.embedding_size)
        if vectors is None:
            bare = embedding_name.strip(",")
            if len(bare) < len(embedding_name):
                vectors = self.embeddings(bare, self.embedding_key, self.embedding_size)
                return vectors, embedding_name[len(bare) :]
        return vectors, ""

    # The reference tokenizer's fixed settings, read by packs that rebuild chunks themselves.
    has_start_token = True
    has_end_token = True
    tokenizer_adds_end_token = True
    pad_to_max_length = True
    pad_left = False
    disable_weights = False
    min_length: int | None = None
    min_padding: int | None = None
    tokens_start = 1
    max_word_length = _SPLITTABLE_GROUP
    embedding_identifier = _EMBEDDING_PREFIX

    @property
    def pad_with_end(self) -> bool:
        """Whether chunks are padded with the end token (CLIP-L) rather than 0 (OpenCLIP)."""
        return self.pad_token == self.end_token

    @property
    def inv_vocab(self) -> dict[int, str]:
        """Token id -> vocabulary entry."""
        return self.bpe.inverse_vocab()

    def untokenize(self, token_weight_pair: Sequence[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], str]]:
        """Each pair with its vocabulary entry (``""`` for embedding vectors), as the reference's."""
        inv = self.inv_vocab
        return [
            (pair, inv.get(pair[0], "") if isinstance(pair[0], int) else "") for pair in token_weight_pair
        ]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def tokenize_with_weights(
        self, text: str, return_word_ids: bool = False, **kwargs: Any
    ) -> list[list[tuple[Any, ...]]]:
        """Chunks of exactly ``max_length`` pairs (or ``(token, weight, word_id)`` triples).

        Newer references' options (``min_length``, ``tokenizer_options``...) arrive in ``kwargs``
        and are not used: chunks are always ``max_length`` long.

        A group that does not fit in the current chunk moves whole to the next one, unless it is
        long (8 tokens or more), in which case it is split at the chunk boundary.
        """
        room = self.max_length - 1  # the end token always gets the last slot
        chunks: list[list[tuple[Any, float, int]]] = []
        chunk: list[tuple[Any, float, int]] = [(self.start_token, 1.0, 0)]
        chunks.append(chunk)
        for word_id, group in enumerate(self._groups(text), start=1):
            splittable = len(group) >= _SPLITTABLE_GROUP
            while group:
                if len(chunk) + len(group) <= room:
                    chunk.extend((t, w, word_id) for t, w in group)
                    break
                free = room - len(chunk)
                if splittable:
                    chunk.extend((t, w, word_id) for t, w in group[:free])
                    group = group[free:]
                    chunk.append((self.end_token, 1.0, 0))
                else:
                    chunk.append((self.end_token, 1.0, 0))
                    chunk.extend([(self.pad_token, 1.0, 0)] * free)
                chunk = [(self.start_token, 1.0, 0)]
                chunks.append(chunk)
        chunk.append((self.end_token, 1.0, 0))
        chunk.extend([(self.pad_token, 1.0, 0)] * (self.max_length - len(chunk)))
        if return_word_ids:
            return [list(c) for c in chunks]
        return [[(t, w) for t, w, _ in c] for c in chunks]


def make_tokenizers(
    family: str,
    embeddings: EmbeddingLookup | None = None,
    bpe: ClipBpe | None = None,
    embedding_directory: str | Sequence[str] | None = None,
) -> dict[str, PromptTokenizer]:
    """The tokenizers a model family's text encoders need, by encoder name.

    ``sd1``: ``l`` (CLIP-L). ``sd2``: ``h`` (OpenCLIP-H, zero padding). ``sdxl``: ``l`` and ``g``
    (OpenCLIP-G, zero padding). ``sdxl_refiner``: ``g`` only. ``embedding_directory``: the
    folders ``embeddings`` reads (what the tokenizers tell packs).
    """
    bpe = bpe if bpe is not None else default_bpe()
    clip_l = {"embedding_key": "clip_l", "embedding_size": 768}
    clip_g = {"embedding_key": "clip_g", "embedding_size": 1280, "pad_token": 0}
    clip_h = {"embedding_key": "clip_h", "embedding_size": 1024, "pad_token": 0}
    layouts: dict[str, dict[str, dict[str, Any]]] = {
        "sd1": {"l": clip_l},
        "sd2": {"h": clip_h},
        "sdxl": {"g": clip_g, "l": clip_l},
        "sdxl_refiner": {"g": clip_g},
    }
    if family not in layouts:
        raise ValueError(f"unknown text-encoder family {family!r}; expected one of {sorted(layouts)}")
    return {
        name: PromptTokenizer(bpe, embeddings=embeddings, embedding_directory=embedding_directory, **opts)
        for name, opts in layouts[family].items()
    }


def tokenize(tokenizers: dict[str, PromptTokenizer], text: str) -> dict[str, list[list[tuple[Any, ...]]]]:
    """Every encoder's chunks for one prompt, keyed like ``tokenizers``."""
    return {name: tok.tokenize_with_weights(text) for name, tok in tokenizers.items()}
