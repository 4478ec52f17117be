"""String nodes: concatenate, substring, length, case, trim, replace, compare, regex, JSON and format (group A).

The reference's ``comfy_extras.nodes_string``. Its regex nodes differ in how they treat a pattern
that does not compile, and we keep that: Match Text answers False and Extract Text an empty
string (a workflow may feed them patterns built from text), while Replace Text (Regex) fails the
node with the pattern and the compiler's complaint in the message.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import CoreNode

_JOIN = "\n"  # what the extract modes put between several results


def _text(**options: Any) -> tuple[str, dict[str, Any]]:
    return ("STRING", {"multiline": True, **options})


def _combo(options: list[str], **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("COMBO", {**extra, "multiselect": False, "options": list(options)})


def _flag(default: bool) -> tuple[str, dict[str, Any]]:
    return ("BOOLEAN", {"advanced": True, "default": default})


def _regex_flags() -> dict[str, Any]:
    return {"case_insensitive": _flag(True), "multiline": _flag(False), "dotall": _flag(False)}


def regex_flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    flags = re.IGNORECASE if case_insensitive else 0
    if multiline:
        flags |= re.MULTILINE
    if dotall:
        flags |= re.DOTALL
    return flags


class _StringNode(CoreNode):
    CATEGORY = "text"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_string"
    RETURN_TYPES: tuple[str, ...] = ("STRING",)
    FUNCTION = "run"


class _SafeFormatter(string.Formatter):
    """``str.format`` minus private attributes: ``{a.__init__.__globals__}`` would let a prompt
    read any module's globals through a connected object, so fields may not name ``_`` attributes."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if "._" in field_name:  # an attribute step is "." + name; a private one starts with "_"
            raise ValueError(f"Format Text: the field {{{field_name}}} reads a private attribute")
        return super().get_field(field_name, args, kwargs)


class StringFormat(_StringNode):
    DESCRIPTION = "Fills a Python format string ({a}, {b:.2f} ...) with the connected values a to z."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        template = {
            "input": {"required": {"value": ("*", {})}},
            "names": list(string.ascii_lowercase),
            "min": 0,
        }
        return {
            "required": {
                "values": ("COMFY_AUTOGROW_V3", {"template": template}),
                "f_string": ("STRING", {"default": "{a}", "multiline": True}),
            }
        }

    def run(self, values: dict[str, Any], f_string: str) -> tuple[str]:
        try:
            return (_SafeFormatter().vformat(f_string, (), values),)
        except KeyError as exc:
            given = ", ".join(values) or "none"
            raise ValueError(
                f"Format Text: the template names {{{exc.args[0]}}} but no such value is connected "
                f"(connected: {given})"
            ) from None
        except IndexError:
            raise ValueError(
                "Format Text: positional fields such as {} or {0} have no value; name them {a}"
            ) from None


class StringConcatenate(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "string_a": _text(),
                "string_b": _text(),
                "delimiter": ("STRING", {"default": "", "multiline": False}),
            }
        }

    def run(self, string_a: str, string_b: str, delimiter: str) -> tuple[str]:
        return (f"{string_a}{delimiter}{string_b}",)


class StringSubstring(_StringNode):
    DESCRIPTION = (
        "The characters from start up to (not including) end; negative positions count from the end."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "start": ("INT", {}), "end": ("INT", {})}}

    def run(self, string: str, start: int, end: int) -> tuple[str]:
        return (string[start:end],)


class StringLength(_StringNode):
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("length",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text()}}

    def run(self, string: str) -> tuple[int]:
        return (len(string),)  # characters (code points), not bytes


class _ModeTable(_StringNode):
    """The string through the function its ``mode`` names (an unknown mode leaves it as is)."""

    MODES: ClassVar[Mapping[str, Callable[[str], str]]]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "mode": _combo(list(cls.MODES))}}

    def run(self, string: str, mode: str) -> tuple[str]:
        convert = self.MODES.get(mode)
        return (convert(string) if convert is not None else string,)


class CaseConverter(_ModeTable):
    MODES: ClassVar[Mapping[str, Callable[[str], str]]] = {
        "UPPERCASE": str.upper,
        "lowercase": str.lower,
        "Capitalize": str.capitalize,
        "Title Case": str.title,
    }


class StringTrim(_ModeTable):
    MODES: ClassVar[Mapping[str, Callable[[str], str]]] = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}


class StringReplace(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "find": _text(), "replace": _text()}}

    def run(self, string: str, find: str, replace: str) -> tuple[str]:
        # An empty ``find`` inserts ``replace`` between every character, as str.replace does.
        return (string.replace(find, replace),)


class StringContains(_StringNode):
    RETURN_TYPES = ("BOOLEAN",)
    RETURN_NAMES = ("contains",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "substring": _text(), "case_sensitive": _flag(True)}}

    def run(self, string: str, substring: str, case_sensitive: bool) -> tuple[bool]:
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


class StringCompare(_StringNode):
    RETURN_TYPES = ("BOOLEAN",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "string_a": _text(),
                "string_b": _text(),
                "mode": _combo(["Starts With", "Ends With", "Equal"]),
                "case_sensitive": _flag(True),
            }
        }

    def run(self, string_a: str, string_b: str, mode: str, case_sensitive: bool) -> tuple[bool]:
        if not case_sensitive:
            string_a, string_b = string_a.lower(), string_b.lower()
        if mode == "Starts With":
            return (string_a.startswith(string_b),)
        if mode == "Ends With":
            return (string_a.endswith(string_b),)
        return (string_a == string_b,)


class RegexMatch(_StringNode):
    RETURN_TYPES = ("BOOLEAN",)
    RETURN_NAMES = ("matches",)
    DESCRIPTION = (
        "True when the pattern is found anywhere in the text (False for a pattern that does not compile)."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "regex_pattern": _text(), **_regex_flags()}}

    def run(
        self, string: str, regex_pattern: str, case_insensitive: bool, multiline: bool, dotall: bool
    ) -> tuple[bool]:
        try:
            found = re.search(regex_pattern, string, regex_flags(case_insensitive, multiline, dotall))
        except re.error:
            return (False,)
        return (found is not None,)


def _group(match: re.Match[str], index: int) -> str | None:
    """Group ``index`` of ``match`` when the pattern has it and it took part in the match."""
    if index > len(match.groups()):
        return None
    return match.group(index)


def extract(text: str, pattern: str, mode: str, flags: int, group_index: int) -> str:
    """Extract Text's result; raises ``re.error`` for a pattern that does not compile."""
    compiled = re.compile(pattern, flags)
    if mode == "First Match":
        match = compiled.search(text)
        return match.group(0) if match else ""
    if mode == "All Matches":
        # Whole matches, except that a pattern with groups gives its first group per match.
        found = compiled.findall(text)
        return _JOIN.join(item[0] if isinstance(item, tuple) else item for item in found)
    if mode == "First Group":
        match = compiled.search(text)
        value = _group(match, group_index) if match else None
        return value if value is not None else ""
    if mode == "All Groups":
        values = (_group(match, group_index) for match in compiled.finditer(text) if match.groups())
        return _JOIN.join(value for value in values if value is not None)
    return ""


class RegexExtract(_StringNode):
    DESCRIPTION = (
        "The first or every match of the pattern, or one capture group of it; several results are "
        "joined by newlines (an empty string for a pattern that does not compile)."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "string": _text(),
                "regex_pattern": _text(),
                "mode": _combo(["First Match", "All Matches", "First Group", "All Groups"]),
                **_regex_flags(),
                "group_index": ("INT", {"advanced": True, "default": 1, "min": 0, "max": 100}),
            }
        }

    def run(
        self,
        string: str,
        regex_pattern: str,
        mode: str,
        case_insensitive: bool,
        multiline: bool,
        dotall: bool,
        group_index: int,
    ) -> tuple[str]:
        try:
            return (
                extract(
                    string, regex_pattern, mode, regex_flags(case_insensitive, multiline, dotall), group_index
                ),
            )
        except re.error:
            return ("",)


class RegexReplace(_StringNode):
    DESCRIPTION = "Replaces matches of a regular expression; the replacement may use \\1 or \\g<name>."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"string": _text(), "regex_pattern": _text(), "replace": _text()},
            "optional": {
                **_regex_flags(),
                "count": ("INT", {"advanced": True, "default": 0, "min": 0, "max": 100}),
            },
        }

    def run(
        self,
        string: str,
        regex_pattern: str,
        replace: str,
        case_insensitive: bool = True,
        multiline: bool = False,
        dotall: bool = False,
        count: int = 0,
    ) -> tuple[str]:
        flags = regex_flags(case_insensitive, multiline, dotall)
        try:
            return (re.sub(regex_pattern, replace, string, count=count, flags=flags),)
        except re.error as exc:
            raise ValueError(
                f"Replace Text (Regex): invalid pattern {regex_pattern!r} or replacement {replace!r}: {exc}"
            ) from None


class JsonExtractString(_StringNode):
    DESCRIPTION = "The value of a key of the first JSON object found in the text (Markdown code fences and prose around it are skipped)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"json_string": _text(), "key": ("STRING", {"multiline": False})}}

    def run(self, json_string: str, key: str) -> tuple[str]:
        decoder = json.JSONDecoder()
        # Try each "{" in turn: the first place a whole object decodes is the answer.
        for start in (m.start() for m in re.finditer(r"\{", json_string)):
            try:
                data, _ = decoder.raw_decode(json_string, start)
            except json.JSONDecodeError:
                continue
            value = data.get(key)
            return ("" if value is None else str(value),)
        return ("",)


def dump_json(value: Any, indent: int) -> str:
    """JSON text of ``value``: unicode kept as is; indent 0 writes one compact line."""
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent or None)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot write a {type(value).__name__} as JSON: {exc}") from None


def _indent() -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": 2, "min": 0, "max": 8})


class ConvertDictionaryToString(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"dictionary": ("DICT", {}), "indent": _indent()}}

    def run(self, dictionary: Any, indent: int = 2) -> tuple[str]:
        return (dump_json(dictionary, indent),)


class ConvertArrayToString(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"array": ("ARRAY", {}), "indent": _indent()}}

    def run(self, array: Any, indent: int = 2) -> tuple[str]:
        return (dump_json(array, indent),)


NODES: dict[str, tuple[type, str | None]] = {
    "StringFormat": (StringFormat, "Format Text"),
    "StringConcatenate": (StringConcatenate, "Concatenate Text"),
    "StringSubstring": (StringSubstring, "Substring"),
    "StringLength": (StringLength, "Text Length"),
    "CaseConverter": (CaseConverter, "Convert Text Case"),
    "StringTrim": (StringTrim, "Trim Text"),
    "StringReplace": (StringReplace, "Replace Text"),
    "StringContains": (StringContains, "Contains Text"),
    "StringCompare": (StringCompare, "Compare Text"),
    "RegexMatch": (RegexMatch, "Match Text"),
    "RegexExtract": (RegexExtract, "Extract Text"),
    "RegexReplace": (RegexReplace, "Replace Text (Regex)"),
    "JsonExtractString": (JsonExtractString, "Extract Text from JSON"),
    "ConvertDictionaryToString": (ConvertDictionaryToString, "Convert Dictionary to String"),
    "ConvertArrayToString": (ConvertArrayToString, "Convert Array to String"),
}
