"""Streaming blake3: right digest, flat memory, cancellable; hash/tag/mime parsing rules."""

from __future__ import annotations

import threading
import tracemalloc

import blake3
import pytest

from plugins.assets import hashing, mime, tags


def test_hash_file_matches_blake3_and_streams_with_flat_memory(tmp_path):
    path = tmp_path / "big.bin"
    size = 48 * 1024 * 1024 + 12345  # several chunks plus a ragged tail
    with open(path, "wb") as f:
        block = bytes(range(256)) * 4096
        written = 0
        while written < size:
            piece = block[: size - written]
            f.write(piece)
            written += len(piece)
    expected = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            expected.update(chunk)
    tracemalloc.start()
    try:
        digest, measured = hashing.hash_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == "blake3:" + expected.hexdigest()
    assert measured == size
    assert peak < 4 * 1024 * 1024, peak  # one 1 MiB chunk (+ the first read), never the file


def test_hash_small_file_and_head(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"hello world")
    digest, size, head = hashing.hash_file_head(path, head_bytes=5)
    assert digest == "blake3:" + blake3.blake3(b"hello world").hexdigest()
    assert size == 11 and head == b"hello"


def test_hash_cancel(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(b"x" * (3 * hashing.CHUNK))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(hashing.HashCancelled):
        hashing.hash_file(path, cancel)


def test_hash_identity_rules():
    hexdigest = "ab" * 32
    assert hashing.is_hash("blake3:" + hexdigest)
    assert hashing.normalize_hash(" BLAKE3:" + hexdigest.upper()) == "blake3:" + hexdigest
    for bad in (
        "",
        "blake3:",
        "blake3:" + "g" * 64,
        "sha256:" + hexdigest,
        hexdigest,
        "blake3:" + hexdigest + "0",
    ):
        assert hashing.normalize_hash(bad) is None, bad


def test_tag_rules():
    assert tags.parse_field(["A, b ,a", '["C", "b"]']) == ["a", "b", "c"]
    for bad in (["[1"], ['["a", 1]'], ['[{"a": 1}]'], ["x" * 200], ["a\x00b"]):
        with pytest.raises(tags.BadTag):
            tags.parse_field(bad)
    with pytest.raises(tags.BadTag):
        tags.normalize_all([None])


def test_mime_rules():
    assert mime.sniff(b"\xff\xd8\xff\xe0", "x.png") == "image/jpeg"
    assert mime.sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ", "x") == "image/webp"
    assert mime.sniff(b"RIFF\x00\x00\x00\x00WAVEfmt ", "x") == "audio/wav"
    assert mime.sniff(b"\x00\x00\x00\x18ftypmp42", "x.mp4") == "video/mp4"
    assert mime.sniff(b"{}", "w.json") == "application/json"
    assert mime.valid_mime("image/png") and mime.valid_mime("application/vnd.foo+json")
    assert not mime.valid_mime("image") and not mime.valid_mime("a/b c") and not mime.valid_mime("/x")
