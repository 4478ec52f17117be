"""The text nodes (``comfy_extras.nodes_string``) on ordinary and edge-case text.

Expected values are written out by hand (not computed with the node's own code path), for empty
text, non-ASCII text (German sharp s, Turkish dotted I, combining accents, emoji) and bad regular
expressions. The server tests run the nodes through HTTP + WS and read their outputs back with
PreviewAny.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from plugins.core_nodes.nodes import strings as s

from .node_helpers import messages, run_prompt, start


def _one(node: type, **inputs: Any) -> Any:
    (value,) = getattr(node(), node.FUNCTION)(**inputs)
    return value


# --- pure behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "delimiter", "expected"),
    [
        ("ab", "cd", "", "abcd"),
        ("", "", "-", "-"),
        ("straße", "😀", " / ", "straße / 😀"),
        ("", "x", "", "x"),
    ],
)
def test_concatenate(a: str, b: str, delimiter: str, expected: str) -> None:
    assert _one(s.StringConcatenate, string_a=a, string_b=b, delimiter=delimiter) == expected


@pytest.mark.parametrize(
    ("text", "start", "end", "expected"),
    [
        ("hello world", 0, 5, "hello"),
        ("hello world", -5, 11, "world"),
        ("hello", 3, 1, ""),  # end before start: nothing
        ("hello", 2, 100, "llo"),  # past the end: clipped
        ("", 0, 3, ""),
        ("añb😀c", 1, 4, "ñb😀"),  # code points, not bytes
    ],
)
def test_substring(text: str, start: int, end: int, expected: str) -> None:
    assert _one(s.StringSubstring, string=text, start=start, end=end) == expected


@pytest.mark.parametrize(("text", "length"), [("", 0), ("abc", 3), ("😀", 1), ("e\u0301", 2), ("日本語", 3)])
def test_length_counts_code_points(text: str, length: int) -> None:
    assert _one(s.StringLength, string=text) == length


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        ("UPPERCASE", "straße", "STRASSE"),  # ß has a two-letter capital
        ("lowercase", "İstanbul", "i̇stanbul"),  # dotted capital I keeps its dot (combining)
        ("Capitalize", "hELLO wORLD", "Hello world"),
        ("Title Case", "they're bill's friends", "They'Re Bill'S Friends"),
        ("UPPERCASE", "", ""),
    ],
)
def test_case_converter(mode: str, text: str, expected: str) -> None:
    assert _one(s.CaseConverter, string=text, mode=mode) == expected


@pytest.mark.parametrize(
    ("mode", "expected"), [("Both", "a b"), ("Left", "a b\u3000\n"), ("Right", " \t a b")]
)
def test_trim_strips_unicode_whitespace(mode: str, expected: str) -> None:
    # U+3000 (ideographic space) counts as whitespace like tabs and newlines.
    assert _one(s.StringTrim, string=" \t a b\u3000\n", mode=mode) == expected


def test_replace() -> None:
    assert _one(s.StringReplace, string="a.b.c", find=".", replace="::") == "a::b::c"
    assert _one(s.StringReplace, string="ab", find="", replace="-") == "-a-b-"  # empty find: everywhere
    assert _one(s.StringReplace, string="", find="x", replace="y") == ""
    assert _one(s.StringReplace, string="café café", find="é", replace="e") == "cafe cafe"


def test_contains_and_compare() -> None:
    assert _one(s.StringContains, string="Hello", substring="ell", case_sensitive=True) is True
    assert _one(s.StringContains, string="Hello", substring="ELL", case_sensitive=True) is False
    assert _one(s.StringContains, string="Hello", substring="ELL", case_sensitive=False) is True
    assert _one(s.StringContains, string="abc", substring="", case_sensitive=True) is True
    assert _one(s.StringContains, string="", substring="a", case_sensitive=True) is False
    cmp = s.StringCompare
    assert _one(cmp, string_a="Prefix-x", string_b="prefix", mode="Starts With", case_sensitive=False) is True
    assert _one(cmp, string_a="Prefix-x", string_b="prefix", mode="Starts With", case_sensitive=True) is False
    assert _one(cmp, string_a="file.PNG", string_b=".png", mode="Ends With", case_sensitive=False) is True
    assert _one(cmp, string_a="ÄÖ", string_b="äö", mode="Equal", case_sensitive=False) is True
    assert _one(cmp, string_a="", string_b="", mode="Equal", case_sensitive=True) is True


def _match(text: str, pattern: str, ci: bool = True, ml: bool = False, dotall: bool = False) -> bool:
    return _one(
        s.RegexMatch, string=text, regex_pattern=pattern, case_insensitive=ci, multiline=ml, dotall=dotall
    )


def test_regex_match_flags() -> None:
    assert _match("Hello", "hello") is True  # case-insensitive by default
    assert _match("Hello", "hello", ci=False) is False
    assert _match("a\nb", "^b$") is False
    assert _match("a\nb", "^b$", ml=True) is True
    assert _match("a\nb", "a.b") is False
    assert _match("a\nb", "a.b", dotall=True) is True
    assert _match("", "") is True
    assert _match("naïve", r"\w+ï") is True  # unicode word characters


def test_regex_match_on_a_bad_pattern_is_false() -> None:
    # The reference answers False for a pattern that does not compile, rather than failing.
    assert _match("anything", "(unclosed") is False
    assert _match("anything", "*") is False


def _extract(text: str, pattern: str, mode: str, group: int = 1, ci: bool = True) -> str:
    return _one(
        s.RegexExtract,
        string=text,
        regex_pattern=pattern,
        mode=mode,
        case_insensitive=ci,
        multiline=False,
        dotall=False,
        group_index=group,
    )


@pytest.mark.parametrize(
    ("mode", "pattern", "group", "expected"),
    [
        ("First Match", r"\d+", 1, "12"),
        ("All Matches", r"\d+", 1, "12\n345\n6"),
        ("All Matches", r"(\d)(\d)", 1, "1\n3"),  # with groups: the first group of each match
        ("All Matches", r"x(\d)", 1, ""),
        ("First Group", r"(\d)(\d+)", 2, "2"),
        ("First Group", r"(\d)(\d+)", 3, ""),  # no third group
        ("First Group", r"(\d)", 0, "1"),  # group 0: the whole match
        ("All Groups", r"(\d)(\d+)", 2, "2\n45"),
        ("All Groups", r"\d+", 1, ""),  # a pattern without groups has none to give
        ("All Groups", r"(x)?(\d)", 1, ""),  # a group that took no part is skipped
    ],
)
def test_regex_extract_modes(mode: str, pattern: str, group: int, expected: str) -> None:
    assert _extract("a12 b345 c6", pattern, mode, group) == expected


def test_regex_extract_edge_cases() -> None:
    assert _extract("", r"\d", "First Match") == ""
    assert _extract("ÜBER über", "über", "All Matches") == "ÜBER\nüber"
    assert _extract("ÜBER über", "über", "All Matches", ci=False) == "über"
    assert _extract("😀 and 😃", "[😀-😏]", "All Matches") == "😀\n😃"
    assert _extract("text", "[unclosed", "First Match") == ""  # the reference's answer for a bad pattern


def test_regex_replace() -> None:
    rr = s.RegexReplace()
    assert rr.run("a1b22c333", r"\d+", "#") == ("a#b#c#",)
    assert rr.run("a1b22c333", r"\d+", "#", count=2) == ("a#b#c333",)
    assert rr.run("John Smith", r"(\w+) (\w+)", r"\2, \1") == ("Smith, John",)
    assert rr.run("ABC abc", "abc", "x", case_insensitive=False) == ("ABC x",)
    assert rr.run("ABC abc", "abc", "x") == ("x x",)
    assert rr.run("", "^", "start") == ("start",)
    assert rr.run("x\ny", "^", "> ", multiline=True) == ("> x\n> y",)
    assert rr.run("Grüße", "ü", "ue") == ("Grueße",)


def test_regex_replace_bad_pattern_or_template_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"invalid pattern '\(unclosed'.*missing \)"):
        s.RegexReplace().run("text", "(unclosed", "x")
    with pytest.raises(ValueError, match=r"invalid group reference"):
        s.RegexReplace().run("text", "t", r"\9")


def test_json_extract() -> None:
    def ex(text: str, key: str) -> str:
        return _one(s.JsonExtractString, json_string=text, key=key)

    assert ex('{"name": "Zoë", "n": 3}', "name") == "Zoë"
    assert ex('{"n": 3}', "n") == "3"
    assert ex('{"flag": true}', "flag") == "True"  # Python's str of the value
    assert ex('{"nested": {"a": [1, 2]}}', "nested") == "{'a': [1, 2]}"
    assert ex('{"v": null}', "v") == ""
    assert ex('{"n": 3}', "missing") == ""
    assert ex("", "n") == ""
    assert ex("not json at all", "n") == ""
    fenced = 'Here you go:\n```json\n{"answer": "42"}\n```\nand {"answer": "later"}'
    assert ex(fenced, "answer") == "42"  # the first object that decodes wins
    assert ex('{broken {"k": "v"}', "k") == "v"  # a brace that starts no object is skipped


def test_convert_to_json_text() -> None:
    d = {"b": "ü", "a": [1, None]}
    assert _one(s.ConvertDictionaryToString, dictionary=d, indent=0) == '{"b": "ü", "a": [1, null]}'
    assert _one(s.ConvertDictionaryToString, dictionary=d, indent=2) == (
        '{\n  "b": "ü",\n  "a": [\n    1,\n    null\n  ]\n}'
    )
    assert _one(s.ConvertArrayToString, array=[], indent=2) == "[]"
    assert _one(s.ConvertArrayToString, array=["😀", 1.5], indent=0) == '["😀", 1.5]'
    with pytest.raises(ValueError, match="cannot write a set as JSON"):
        _one(s.ConvertArrayToString, array={1, 2}, indent=0)


def test_format() -> None:
    fmt = s.StringFormat()
    assert fmt.run({"a": "x", "b": 2.5}, "{a}={b:.2f}") == ("x=2.50",)
    assert fmt.run({}, "no fields") == ("no fields",)
    assert fmt.run({"a": [1, 2]}, "{a[1]} {{literal}}") == ("2 {literal}",)
    assert fmt.run({"a": "ü"}, "{a!r}") == ("'ü'",)
    with pytest.raises(ValueError, match=r"names \{b\} but no such value is connected \(connected: a\)"):
        fmt.run({"a": 1}, "{a}{b}")
    with pytest.raises(ValueError, match="positional fields"):
        fmt.run({"a": 1}, "{}")


def test_format_refuses_private_attributes() -> None:
    # A connected object's private attributes lead to module globals: never readable.
    with pytest.raises(ValueError, match="private attribute"):
        s.StringFormat().run({"a": s.StringFormat()}, "{a.__init__.__globals__}")
    assert s.StringFormat().run({"a": 3 + 4j}, "{a.imag}") == ("4.0",)  # public ones are fine


# --- through the server -------------------------------------------------------------------------


def _previewed(frames: list[Any]) -> dict[str, str]:
    """PreviewAny node id -> the text it showed."""
    return {m["node"]: m["output"]["text"][0] for m in messages(frames, "executed")}


async def test_string_nodes_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    cases: dict[str, tuple[str, dict[str, Any], str]] = {
        "concat": ("StringConcatenate", {"string_a": "ä", "string_b": "😀", "delimiter": "+"}, "ä+😀"),
        "sub": ("StringSubstring", {"string": "héllo", "start": 1, "end": -1}, "éll"),
        "len": ("StringLength", {"string": ""}, "0"),
        "case": ("CaseConverter", {"string": "straße", "mode": "UPPERCASE"}, "STRASSE"),
        "trim": ("StringTrim", {"string": "  x  ", "mode": "Left"}, "x  "),
        "repl": ("StringReplace", {"string": "a-b", "find": "-", "replace": "→"}, "a→b"),
        "has": ("StringContains", {"string": "Ünïcode", "substring": "ünï", "case_sensitive": False}, "True"),
        "cmp": (
            "StringCompare",
            {"string_a": "", "string_b": "", "mode": "Equal", "case_sensitive": True},
            "True",
        ),
        "match": (
            "RegexMatch",
            {
                "string": "x",
                "regex_pattern": "(",
                "case_insensitive": True,
                "multiline": False,
                "dotall": False,
            },
            "False",
        ),
        "extract": (
            "RegexExtract",
            {
                "string": "id=42;id=7",
                "regex_pattern": r"id=(\d+)",
                "mode": "All Groups",
                "case_insensitive": True,
                "multiline": False,
                "dotall": False,
                "group_index": 1,
            },
            "42\n7",
        ),
        # Optional inputs left out: the reference's defaults apply (case-insensitive, all matches).
        "rx": ("RegexReplace", {"string": "A a", "regex_pattern": "a", "replace": "b"}, "b b"),
        "json": ("JsonExtractString", {"json_string": 'say {"k": "ok"}', "key": "k"}, "ok"),
        "dict": ("ConvertDictionaryToString", {"dictionary": {"k": "ü"}, "indent": 0}, '{"k": "ü"}'),
        "array": ("ConvertArrayToString", {"array": {"__value__": [1, "二"]}, "indent": 0}, '[1, "二"]'),
        "fmt": (
            "StringFormat",
            {"values.a": ["concat", 0], "values.c": ["len", 0], "f_string": "{a}/{c}"},
            "ä+😀/0",
        ),
    }
    prompt: dict[str, Any] = {}
    for node_id, (cls, inputs, _) in cases.items():
        prompt[node_id] = {"class_type": cls, "inputs": inputs}
        prompt[f"show_{node_id}"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 0]}}
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    shown = _previewed(frames)
    assert {k: shown[f"show_{k}"] for k in cases} == {k: expected for k, (_, _, expected) in cases.items()}


async def test_bad_regex_fails_the_node_with_a_clear_error(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "rx": {
            "class_type": "RegexReplace",
            "inputs": {"string": "t", "regex_pattern": "[z-a]", "replace": ""},
        },
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["rx", 0]}},
    }
    frames = await run_prompt(server, prompt)
    (error,) = messages(frames, "execution_error")
    assert error["node_id"] == "rx" and error["node_type"] == "RegexReplace"
    assert "invalid pattern '[z-a]'" in error["exception_message"]
    assert "bad character range" in error["exception_message"]
    # The server lives on: the next prompt runs.
    prompt["rx"]["inputs"]["regex_pattern"] = "t"
    frames = await run_prompt(server, prompt)
    assert _previewed(frames) == {"show": ""}


async def test_format_text_errors_and_missing_values(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "fmt": {"class_type": "StringFormat", "inputs": {"f_string": "{a} {z}", "values.a": "x"}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["fmt", 0]}},
    }
    frames = await run_prompt(server, prompt)
    (error,) = messages(frames, "execution_error")
    assert "{z}" in error["exception_message"] and "connected: a" in error["exception_message"]
    # min is 0: a template with no fields needs no value at all.
    prompt["fmt"]["inputs"] = {"f_string": "plain"}
    assert _previewed(await run_prompt(server, prompt)) == {"show": "plain"}


async def test_validation_rejects_a_mode_not_in_the_list(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "case": {"class_type": "CaseConverter", "inputs": {"string": "x", "mode": "sPoNgEbOb"}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["case", 0]}},
    }
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400
    errors = body["node_errors"]["case"]["errors"]
    assert [e["type"] for e in errors] == ["value_not_in_list"]
    assert json.dumps(errors)  # plain JSON
