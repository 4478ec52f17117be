"""The one path resolver: (root, subfolder, filename) → a path that is certainly inside root.

Every file route and plugin goes through ``safe_join`` (or ``resolve_file`` for the three
input/output/temp roots). Names are checked as strings before the disk is touched, then
containment is checked on the *resolved real paths* of both root and target, so a symlink inside
a root that points outside is refused. Percent-decoding is the HTTP layer's job: aiohttp decodes
``request.query`` and ``match_info`` exactly once, and nothing here decodes again, so a name that
arrives as ``%2e%2e%2f`` stays a literal (harmless) name.

Stable public names (other plugins import them): ``UnsafePath``, ``split_relative``,
``is_within``, ``safe_join``; added later: ``FILE_TYPES``, ``FileType``, ``UnknownFileType``,
``type_root``, ``split_annotation``, ``resolve_file``, ``resolve_annotated``, ``check_segment``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast
from urllib.parse import unquote

if TYPE_CHECKING:
    from kernel.app import Kernel
    from kernel.settings import Settings

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Windows device names are reserved with any extension and trailing dots/spaces ("nul.png",
# "CON ."); refusing them everywhere keeps a data directory portable and safe to copy to Windows.
_RESERVED_DEVICE = re.compile(
    r"^(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|CLOCK\$|COM[0-9¹²³]|LPT[0-9¹²³])(\..*)?$",
    re.IGNORECASE,
)

FileType = Literal["input", "output", "temp"]
FILE_TYPES: tuple[FileType, ...] = ("input", "output", "temp")
# ``name [output]``: the suffix the reference uses to say which root a bare name lives in.
_ANNOTATION = re.compile(r"^(?P<name>.*) \[(?P<type>input|output|temp)\]$", re.DOTALL)


class UnsafePath(ValueError):
    """A name that could leave its root or is not a valid file name; ``reason`` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"unsafe path {name!r}: {reason}")
        self.name = name
        self.reason = reason


class UnknownFileType(ValueError):
    """A ``type`` that is not one of input, output, temp."""

    def __init__(self, value: object) -> None:
        super().__init__(f"Invalid type {value!r}: expected one of input, output, temp")
        self.value = value


def _utf8_len(text: str, name: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates cannot name a file portably (and crash os calls on some systems).
        raise UnsafePath(name, "invalid unicode in name") from None


def _hides_traversal(segment: str) -> bool:
    """True when percent-decoding ``segment`` (again, up to three times) reveals a separator, a
    ``..`` or a control character: ``%2e%2e%2f`` and its double-encoded forms.

    Names are decoded exactly once at the HTTP boundary and never again here, so such a name
    would be stored literally; it is refused anyway because it is an attack, never a real
    file name, and a later consumer that decodes it again must not find a path in it.
    """
    decoded = segment
    for _ in range(3):
        if "%" not in decoded:
            break
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
        if "/" in decoded or "\\" in decoded or _CONTROL.search(decoded) or ".." in decoded.split("/"):
            return True
        if decoded.strip(". ") == "" or decoded == "..":
            return True
    return False


def check_segment(segment: str, name: str | None = None) -> str:
    """Check one path segment (no separators); return it or raise ``UnsafePath``.

    ``name`` is the whole client string, used in the error message.
    """
    whole = segment if name is None else name
    if segment in ("", "."):
        raise UnsafePath(whole, "empty name")
    if segment == "..":
        raise UnsafePath(whole, "parent directory segment")
    if "/" in segment or "\\" in segment:
        raise UnsafePath(whole, "path separator in name")
    if _CONTROL.search(segment):
        raise UnsafePath(whole, "control character in name")
    if _hides_traversal(segment):
        raise UnsafePath(whole, "percent-encoded path characters in name")
    if _DRIVE.match(segment):
        raise UnsafePath(whole, "drive letter")
    if segment.strip(". ") == "":
        # "...", ". ." : Windows trims trailing dots and spaces, turning these into "." or "..".
        raise UnsafePath(whole, "name made only of dots and spaces")
    if _RESERVED_DEVICE.match(segment.rstrip(". ")):
        raise UnsafePath(whole, "reserved device name")
    if _utf8_len(segment, whole) > MAX_SEGMENT_BYTES:
        raise UnsafePath(whole, "path segment too long")
    return segment


def split_relative(name: str, *, allow_empty: bool = False) -> list[str]:
    """Split a client-supplied relative path on ``/`` and ``\\`` into checked segments.

    Refuses NUL and control characters, absolute paths, drive letters, UNC and ``\\\\?\\``
    prefixes, any ``..`` segment, reserved device names (``CON``, ``nul.png``) and over-long
    segments or paths. ``.`` and empty segments (``a//b``) are dropped; ``a..b.png`` is a
    legitimate name.
    """
    if not isinstance(name, str):
        raise UnsafePath(repr(name), "not a string")
    if name == "":
        if allow_empty:
            return []
        raise UnsafePath(name, "empty name")
    if _CONTROL.search(name):
        raise UnsafePath(name, "control character in name")
    if _utf8_len(name, name) > MAX_PATH_BYTES:
        raise UnsafePath(name, "path too long")
    if name.startswith(("/", "\\")):
        raise UnsafePath(name, "absolute path")
    if _DRIVE.match(name):
        raise UnsafePath(name, "drive letter")
    segments = [s for s in re.split(r"[/\\]", name) if s not in ("", ".")]
    for segment in segments:
        check_segment(segment, name)
    if not segments and not allow_empty:
        raise UnsafePath(name, "empty name")
    return segments


def is_within(root: str | os.PathLike[str], target: str | os.PathLike[str]) -> bool:
    """True when the real path of ``target`` is ``root``'s real path or lies under it."""
    real_root = os.path.realpath(root)
    real_target = os.path.realpath(target)
    return real_target == real_root or real_target.startswith(real_root.rstrip(os.sep) + os.sep)


def safe_join(root: str | os.PathLike[str], *parts: str, allow_root: bool = False) -> Path:
    """Join checked relative ``parts`` under ``root``; raise ``UnsafePath`` if it would escape.

    Empty parts (an absent subfolder) are allowed; the result must name something below
    ``root`` unless ``allow_root``. The returned path is ``root``-based (not symlink-resolved),
    but its real path has been verified to be inside ``root``'s real path.
    """
    segments: list[str] = []
    for part in parts:
        segments += split_relative(part, allow_empty=True)
    joined = "/".join(parts)
    if not segments and not allow_root:
        raise UnsafePath(joined, "empty name")
    target = Path(root, *segments)
    if len(os.fsencode(target)) > MAX_PATH_BYTES:
        raise UnsafePath(joined, "path too long")
    if not is_within(root, target):
        raise UnsafePath(joined, "outside its root")
    return target


def _settings(owner: Kernel | Settings) -> Settings:
    return cast("Settings", getattr(owner, "settings", owner))


def type_root(owner: Kernel | Settings, file_type: str) -> Path:
    """The directory of ``input`` / ``output`` / ``temp``; ``UnknownFileType`` otherwise.

    ``owner`` is the Kernel or its Settings.
    """
    settings = _settings(owner)
    if file_type == "input":
        return settings.input_path
    if file_type == "output":
        return settings.output_path
    if file_type == "temp":
        return settings.temp_path
    raise UnknownFileType(file_type)


def split_annotation(name: str) -> tuple[str, FileType | None]:
    """``"x.png [output]"`` → ``("x.png", "output")``; an unannotated name → ``(name, None)``."""
    match = _ANNOTATION.match(name)
    if match is None:
        return name, None
    return match["name"], cast(FileType, match["type"])


def resolve_file(owner: Kernel | Settings, file_type: str, subfolder: str, filename: str) -> Path:
    """``<root of file_type>/<subfolder>/<filename>``, checked; raises ``UnknownFileType``/``UnsafePath``.

    ``filename`` must be non-empty; ``subfolder`` may be empty. Existence is not checked.
    """
    root = type_root(owner, file_type)
    if split_relative(filename, allow_empty=True) == []:
        raise UnsafePath(filename, "empty name")
    return safe_join(root, subfolder, filename)


def resolve_annotated(
    owner: Kernel | Settings, name: str, default_type: FileType = "input", subfolder: str = ""
) -> tuple[Path, FileType]:
    """Resolve a node-style name (``"x.png [output]"``); the annotation overrides ``default_type``."""
    bare, annotated = split_annotation(name)
    file_type = annotated or default_type
    return resolve_file(owner, file_type, subfolder, bare), file_type
