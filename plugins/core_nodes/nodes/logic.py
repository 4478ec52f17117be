"""Logic, maths and small value nodes: and/or/not/switch, combos, math expressions, number conversion, seed, resolution (group A).

The reference declares these with its V3 schema; we serve them as classic classes that publish
the same interface, including the V3-only input kinds:

* ``COMFY_AUTOGROW_V3`` (And, Or, Math Expression): a row of sockets that grows as the user links
  them; the kernel folds the slots back into one dict argument (:mod:`kernel.nodes.dynamic`).
* ``COMFY_MATCHTYPE_V3`` (If/Else Switch): inputs and output of whatever type is linked, resolved
  by the frontend through ``output_matchtypes``; both branches are lazy, so only the chosen one
  runs.
"""

from __future__ import annotations

import math
import string
import sys
from typing import Any, ClassVar

from plugins.core_nodes.expression import ExpressionError, evaluate
from plugins.core_nodes.nodes.common import CoreNode

_LOGIC = "comfy_extras.nodes_logic"


def _autogrow_prefix(value_type: str, prefix: str, minimum: int, maximum: int) -> tuple[str, dict[str, Any]]:
    template = {
        "input": {"required": {"value": (value_type, {})}},
        "prefix": prefix,
        "min": minimum,
        "max": maximum,
    }
    return ("COMFY_AUTOGROW_V3", {"template": template})


def _autogrow_names(value_type: str, minimum: int) -> tuple[str, dict[str, Any]]:
    template = {
        "input": {"required": {"value": (value_type, {})}},
        "names": list(string.ascii_lowercase),
        "min": minimum,
    }
    return ("COMFY_AUTOGROW_V3", {"template": template})


# --- logic ----------------------------------------------------------------------------------


class _Logic(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _LOGIC
    CATEGORY = "utilities/logic"
    RETURN_TYPES: tuple[str, ...] = ("BOOLEAN",)
    FUNCTION = "run"


class ComfyNotNode(_Logic):
    DESCRIPTION = "True when the value is falsy by Python's rules (False, 0, empty text, None ...)."
    SEARCH_ALIASES = ["invert", "toggle", "negate", "flip boolean"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("*", {})}}

    def run(self, value: Any) -> tuple[bool]:
        return (not value,)


class ComfyAndNode(_Logic):
    DESCRIPTION = "True when every connected value is truthy by Python's rules."
    SEARCH_ALIASES = ["all", "every"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"values": _autogrow_prefix("*", "value", 1, 10)}}

    def run(self, values: dict[str, Any]) -> tuple[bool]:
        return (all(values.values()),)


class ComfyOrNode(_Logic):
    DESCRIPTION = "True when any connected value is truthy by Python's rules."
    SEARCH_ALIASES = ["any", "some"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"values": _autogrow_prefix("*", "value", 1, 10)}}

    def run(self, values: dict[str, Any]) -> tuple[bool]:
        return (any(values.values()),)


def _branch() -> tuple[str, dict[str, Any]]:
    return ("COMFY_MATCHTYPE_V3", {"lazy": True, "template": {"template_id": "switch", "allowed_types": "*"}})


class ComfySwitchNode(_Logic):
    DESCRIPTION = "Passes on_true or on_false on; only the branch the switch selects is computed."
    SEARCH_ALIASES = ["if", "then", "switch", "conditional", "branch"]
    EXPERIMENTAL = True
    RETURN_TYPES = ("COMFY_MATCHTYPE_V3",)
    RETURN_NAMES = ("output",)
    # The output takes the type of whatever is linked to the "switch" template's inputs.
    OUTPUT_MATCHTYPES = ("switch",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"switch": ("BOOLEAN", {}), "on_false": _branch(), "on_true": _branch()}}

    def check_lazy_status(self, switch: bool, on_false: Any = None, on_true: Any = None) -> list[str]:
        # An unevaluated linked branch arrives as None: ask for the selected one only.
        if switch and on_true is None:
            return ["on_true"]
        if not switch and on_false is None:
            return ["on_false"]
        return []

    def run(self, switch: bool, on_false: Any = None, on_true: Any = None) -> tuple[Any]:
        return (on_true if switch else on_false,)


class CustomCombo(CoreNode):
    """A dropdown whose options the user types in on the canvas (``option0``, ``option1`` ...).

    The options exist only in the frontend, so the published choice list is empty, the chosen
    value is not checked against it, and the frontend's extra widgets (the options and the chosen
    ``index``) reach the node as undeclared inputs.
    """

    RELATIVE_PYTHON_MODULE: ClassVar[str] = _LOGIC
    CATEGORY = "utilities"
    EXPERIMENTAL = True
    ACCEPT_ALL_INPUTS = True
    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("STRING", "INDEX")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"choice": ("COMBO", {"multiselect": False, "options": []})}}

    @classmethod
    def VALIDATE_INPUTS(cls, choice: str, index: int = 0, **kwargs: Any) -> bool:
        return True  # the user's own options: any typed-in value is a valid choice

    def run(self, choice: str, index: int = 0, **options: Any) -> tuple[str, int]:
        return (choice, index)


# --- numbers --------------------------------------------------------------------------------


class ComfyMathExpression(CoreNode):
    """Evaluates a formula over the connected numbers ``a`` .. ``z`` (and ``values``, their list).

    Python syntax, evaluated by :mod:`plugins.core_nodes.expression`: operators, comparisons,
    ``x if c else y`` and the functions sum/min/max/abs/round/pow/sqrt/ceil/floor/log/log2/log10/
    sin/cos/tan/int/float; nothing else of Python is reachable.
    """

    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_math"
    CATEGORY = "utilities"
    SEARCH_ALIASES = ["math", "expression", "formula", "calculate", "calculator", "eval"]
    RETURN_TYPES = ("FLOAT", "INT", "BOOLEAN")
    RETURN_NAMES = ("FLOAT", "INT", "BOOL")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "expression": ("STRING", {"default": "a + b", "multiline": True}),
                "values": _autogrow_names("FLOAT,INT,BOOLEAN", 1),
            }
        }

    def run(self, expression: str, values: dict[str, Any]) -> tuple[float, int, bool]:
        names: dict[str, Any] = dict(values)
        names["values"] = list(values.values())
        try:
            result = evaluate(expression, names)
        except ExpressionError as exc:
            raise ValueError(f"Math Expression {expression.strip()!r}: {exc}") from None
        if not isinstance(result, int | float):  # bools are ints: True counts as 1
            raise ValueError(
                f"Math Expression {expression.strip()!r} must give a number, "
                f"got {type(result).__name__}: {result!r}"
            )
        try:
            as_float = float(result)
        except OverflowError:
            raise ValueError(
                f"Math Expression {expression.strip()!r}: the result is too large for a float"
            ) from None
        if not math.isfinite(as_float):
            raise ValueError(f"Math Expression {expression.strip()!r} gave a non-finite result: {result}")
        return (as_float, int(result), bool(result))


class ComfyNumberConvert(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_number_convert"
    CATEGORY = "utilities"
    DESCRIPTION = "A number, a boolean or number text as both FLOAT and INT (floats truncate toward zero)."
    SEARCH_ALIASES = [
        "int to float",
        "float to int",
        "cast",
        "parse number",
        "string to number",
        "bool to int",
    ]
    RETURN_TYPES = ("FLOAT", "INT")
    RETURN_NAMES = ("FLOAT", "INT")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT,FLOAT,STRING,BOOLEAN", {"display_name": "value"})}}

    def run(self, value: Any) -> tuple[float, int]:
        as_float, as_int = convert_number(value)
        return (as_float, as_int)


def convert_number(value: Any) -> tuple[float, int]:
    """(float, int) of a bool, int, float or number text; ValueError/TypeError otherwise."""
    if isinstance(value, bool):
        as_float, as_int = float(value), int(value)
    elif isinstance(value, int):
        as_float, as_int = float(value), value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Convert Number: {value} is not a finite number")
        as_float, as_int = value, int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("Convert Number: the text is empty")
        try:
            as_float = float(text)
        except ValueError:
            raise ValueError(f"Convert Number: {value!r} is not a number") from None
        if not math.isfinite(as_float):
            raise ValueError(f"Convert Number: {value!r} is not a finite number")
        try:
            as_int = int(text)  # exact for integer text longer than a float's precision
        except ValueError:
            as_int = int(as_float)
    else:
        raise TypeError(f"Convert Number: cannot convert a {type(value).__name__}")
    return as_float, as_int


class SeedNode(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_seed"
    CATEGORY = "utilities"
    SEARCH_ALIASES = ["seed", "random"]
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("seed",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"seed": ("INT", {"min": 0, "max": sys.maxsize, "control_after_generate": "fixed"})}
        }

    def run(self, seed: int) -> tuple[int]:
        return (seed,)


# Choice -> (width units, height units), in the reference's order.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1),
    "2:3 (Portrait Photo)": (2, 3),
    "3:2 (Photo)": (3, 2),
    "3:4 (Portrait Standard)": (3, 4),
    "4:3 (Standard)": (4, 3),
    "9:16 (Portrait Widescreen)": (9, 16),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
}


def resolution(aspect_ratio: str, megapixels: float, multiple: int) -> tuple[int, int]:
    """Width and height of about ``megapixels`` (of 1024*1024 pixels) in that ratio, each
    rounded to the nearest multiple of ``multiple`` (ties to even, Python's round)."""
    w, h = ASPECT_RATIOS[aspect_ratio]
    scale = math.sqrt(megapixels * 1024 * 1024 / (w * h))
    return round(w * scale / multiple) * multiple, round(h * scale / multiple) * multiple


class ResolutionSelector(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_resolution"
    CATEGORY = "utilities"
    DESCRIPTION = "Width and height for an aspect ratio and a total pixel count, e.g. for Empty Latent Image."
    SEARCH_ALIASES = ["aspect ratio", "dimensions", "resolution", "image size", "megapixels"]
    RETURN_TYPES = ("INT", "INT")
    RETURN_NAMES = ("width", "height")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "aspect_ratio": (
                    "COMBO",
                    {"default": "1:1 (Square)", "multiselect": False, "options": list(ASPECT_RATIOS)},
                ),
                "megapixels": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 16.0, "step": 0.1}),
                "multiple": ("INT", {"advanced": True, "default": 8, "min": 8, "max": 128, "step": 4}),
            }
        }

    def run(self, aspect_ratio: str, megapixels: float, multiple: int) -> tuple[int, int]:
        return resolution(aspect_ratio, megapixels, multiple)


class wanBlockSwap(CoreNode):  # noqa: N801 (the reference's class name)
    """A retired node kept so saved workflows still load: it passes the model on unchanged."""

    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_nop"
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True
    CATEGORY = ""
    DEPRECATED = True
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL", {})}}

    def run(self, model: Any) -> tuple[Any]:
        return (model,)


NODES: dict[str, tuple[type, str | None]] = {
    "ComfySwitchNode": (ComfySwitchNode, "If/Else Switch"),
    "CustomCombo": (CustomCombo, "Custom Combo"),
    "ComfyNotNode": (ComfyNotNode, "Not"),
    "ComfyAndNode": (ComfyAndNode, "And"),
    "ComfyOrNode": (ComfyOrNode, "Or"),
    "ComfyMathExpression": (ComfyMathExpression, "Math Expression"),
    "ComfyNumberConvert": (ComfyNumberConvert, "Convert Number"),
    "SeedNode": (SeedNode, "Seed"),
    "ResolutionSelector": (ResolutionSelector, "Resolution Selector"),
    "wanBlockSwap": (wanBlockSwap, None),
}
