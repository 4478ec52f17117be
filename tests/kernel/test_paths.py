"""Unit tests of the one path resolver (kernel/paths.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernel.paths import (
    MAX_SEGMENT_BYTES,
    UnknownFileType,
    UnsafePath,
    check_segment,
    is_within,
    resolve_annotated,
    resolve_file,
    safe_join,
    split_annotation,
    split_relative,
    type_root,
)
from kernel.settings import Settings
from tests.attack_payloads import STATIC_PAYLOADS, plant_escape_symlink, plant_sentinel


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    for name in ("input", "output", "temp"):
        (tmp_path / name).mkdir()
    return Settings(base_directory=str(tmp_path))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", ["a.png"]),
        ("sub/a.png", ["sub", "a.png"]),
        ("sub\\a.png", ["sub", "a.png"]),
        ("a//b/./c.png", ["a", "b", "c.png"]),
        ("a..b.png", ["a..b.png"]),
        ("..a.png", ["..a.png"]),
        ("ünï cödé 图像.png", ["ünï cödé 图像.png"]),
        ("with space (1).png", ["with space (1).png"]),
        ("100%25 done.png", ["100%25 done.png"]),  # decoding again reveals nothing unsafe
        ("50% off.png", ["50% off.png"]),
        ("console.png", ["console.png"]),
        ("nullable", ["nullable"]),
        ("COM10", ["COM10"]),
    ],
)
def test_split_relative_accepts_legitimate_names(name: str, expected: list[str]) -> None:
    assert split_relative(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty name"),
        ("./", "empty name"),
        ("..", "parent directory segment"),
        ("../x", "parent directory segment"),
        ("a/../../x", "parent directory segment"),
        ("a\\..\\x", "parent directory segment"),
        ("/etc/passwd", "absolute path"),
        ("\\x", "absolute path"),
        ("\\\\?\\C:\\x", "absolute path"),
        ("\\\\server\\share", "absolute path"),
        ("//server/share", "absolute path"),
        ("C:\\x", "drive letter"),
        ("c:x", "drive letter"),
        ("a/C:x", "drive letter"),
        ("a\x00.png", "control character in name"),
        ("a\nb", "control character in name"),
        ("a\x7fb", "control character in name"),
        ("CON", "reserved device name"),
        ("%2e%2e%2fx", "percent-encoded path characters in name"),
        ("%252e%252e%252fx", "percent-encoded path characters in name"),
        ("a%5cb", "percent-encoded path characters in name"),
        ("%2e%2e", "percent-encoded path characters in name"),
        ("con", "reserved device name"),
        ("nul.png", "reserved device name"),
        ("sub/COM1.txt", "reserved device name"),
        ("LPT9", "reserved device name"),
        ("AUX .", "reserved device name"),
        ("CONIN$", "reserved device name"),
        ("...", "name made only of dots and spaces"),
        (". .", "name made only of dots and spaces"),
        ("a" * (MAX_SEGMENT_BYTES + 1), "path segment too long"),
        ("é" * 128 + ".p", "path segment too long"),  # 258 bytes in UTF-8
        (("d" * 200 + "/") * 25, "path too long"),
        ("a\udc80b", "invalid unicode in name"),
    ],
)
def test_split_relative_refuses(name: str, reason: str) -> None:
    with pytest.raises(UnsafePath) as info:
        split_relative(name)
    assert info.value.reason == reason
    assert info.value.name == name


def test_split_relative_allow_empty() -> None:
    assert split_relative("", allow_empty=True) == []
    assert split_relative("./.", allow_empty=True) == []


def test_split_relative_refuses_non_strings() -> None:
    with pytest.raises(UnsafePath):
        split_relative(None)  # type: ignore[arg-type]


def test_check_segment_refuses_separators() -> None:
    assert check_segment("a..b.png") == "a..b.png"
    with pytest.raises(UnsafePath, match="separator"):
        check_segment("a/b")


def test_every_shared_payload_is_refused_or_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for payload in STATIC_PAYLOADS:
        try:
            target = safe_join(root, payload)
        except UnsafePath:
            continue
        assert is_within(root, target), payload
        assert str(target).startswith(str(root) + os.sep), payload


def test_safe_join_joins_inside(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "sub", "a.png") == tmp_path / "sub" / "a.png"
    assert safe_join(tmp_path, "", "a.png") == tmp_path / "a.png"
    assert safe_join(tmp_path, "", allow_root=True) == tmp_path
    with pytest.raises(UnsafePath, match="empty name"):
        safe_join(tmp_path, "", "")


def test_safe_join_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sentinel = plant_sentinel(tmp_path)
    plant_escape_symlink(root, sentinel)
    os.symlink(tmp_path / "outside", root / "dirlink")
    with pytest.raises(UnsafePath, match="outside its root"):
        safe_join(root, "escape.png")
    with pytest.raises(UnsafePath, match="outside its root"):
        safe_join(root, "dirlink", "secret.txt")
    with pytest.raises(UnsafePath, match="outside its root"):
        safe_join(root, "dirlink")


def test_safe_join_allows_symlink_within_root(tmp_path: Path) -> None:
    (tmp_path / "real.png").write_bytes(b"x")
    os.symlink(tmp_path / "real.png", tmp_path / "alias.png")
    assert safe_join(tmp_path, "alias.png") == tmp_path / "alias.png"


def test_safe_join_works_when_root_itself_is_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert safe_join(tmp_path / "link", "a.png") == tmp_path / "link" / "a.png"


def test_is_within_prefix_sibling(tmp_path: Path) -> None:
    assert not is_within(tmp_path / "in", tmp_path / "input" / "x")
    assert is_within(tmp_path / "in", tmp_path / "in" / "x")
    assert is_within(tmp_path / "in", tmp_path / "in")


def test_split_annotation() -> None:
    assert split_annotation("x.png [output]") == ("x.png", "output")
    assert split_annotation("x.png [input]") == ("x.png", "input")
    assert split_annotation("a b.png [temp]") == ("a b.png", "temp")
    assert split_annotation("x.png") == ("x.png", None)
    assert split_annotation("x.png[output]") == ("x.png[output]", None)
    assert split_annotation("x.png [models]") == ("x.png [models]", None)
    assert split_annotation(" [output]") == ("", "output")


def test_type_root_and_resolve_file(settings: Settings, tmp_path: Path) -> None:
    assert type_root(settings, "input") == tmp_path / "input"
    assert type_root(settings, "output") == tmp_path / "output"
    assert type_root(settings, "temp") == tmp_path / "temp"
    with pytest.raises(UnknownFileType):
        type_root(settings, "models")
    assert resolve_file(settings, "output", "sub", "a.png") == tmp_path / "output" / "sub" / "a.png"
    with pytest.raises(UnsafePath, match="empty name"):
        resolve_file(settings, "output", "sub", "")
    with pytest.raises(UnsafePath):
        resolve_file(settings, "output", "../input", "a.png")


def test_type_root_honours_directory_overrides(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    s = Settings(base_directory=str(tmp_path), output_directory=str(elsewhere))
    assert type_root(s, "output") == elsewhere
    assert resolve_file(s, "output", "", "a.png") == elsewhere / "a.png"


def test_resolve_annotated(settings: Settings, tmp_path: Path) -> None:
    assert resolve_annotated(settings, "x.png [temp]") == (tmp_path / "temp" / "x.png", "temp")
    assert resolve_annotated(settings, "x.png") == (tmp_path / "input" / "x.png", "input")
    assert resolve_annotated(settings, "x.png", "output") == (tmp_path / "output" / "x.png", "output")
    with pytest.raises(UnsafePath):
        resolve_annotated(settings, "../x.png [output]")
    with pytest.raises(UnsafePath):
        resolve_annotated(settings, " [output]")
