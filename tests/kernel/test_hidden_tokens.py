"""Which hidden entries are special tokens the engine fills, and which are ordinary inputs."""

from __future__ import annotations

from typing import Any

import pytest

from kernel.nodes import NodeSpec
from kernel.nodes.spec import hidden_token


class EqualsAll(str):
    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


class RaisingEq:
    def __eq__(self, other: object) -> bool:
        raise ValueError("no comparison")

    __hash__ = object.__hash__


@pytest.mark.parametrize(
    ("declared", "token"),
    [
        ("UNIQUE_ID", "UNIQUE_ID"),
        ("PROMPT", "PROMPT"),
        ("DYNPROMPT", "DYNPROMPT"),
        ("EXTRA_PNGINFO", "EXTRA_PNGINFO"),
        ("API_KEY_COMFY_ORG", "API_KEY_COMFY_ORG"),
        # A tuple is a type declaration, never a token, whatever it holds.
        (("UNIQUE_ID",), None),
        ((EqualsAll("*"),), None),
        (("INT",), None),
        ("1.0.3", None),
        (RaisingEq(), None),
    ],
)
def test_hidden_token(declared: Any, token: str | None) -> None:
    assert hidden_token(declared) == token


def test_a_bare_equals_everything_type_is_the_last_token_like_the_reference() -> None:
    assert hidden_token(EqualsAll("*")) == "COMFY_USAGE_SOURCE"


class Looping:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"start": ("INT",)},
            "hidden": {"remaining": (EqualsAll("*"),), "uid": "UNIQUE_ID", "version": "2.1"},
        }

    def run(self, start: int, remaining: int = 0, uid: str = "", version: str = "") -> tuple[int]:
        return (start,)


def test_spec_lists_only_special_tokens() -> None:
    spec = NodeSpec("Looping", Looping, "test")
    assert spec.hidden_inputs() == {"uid": "UNIQUE_ID"}
    assert spec.has_unique_id_hidden is True
    assert spec.input_info("remaining") is not None and spec.input_info("remaining").category == "hidden"
