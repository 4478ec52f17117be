"""A safe evaluator for the Math Expression node.

The expression is Python syntax, parsed with :mod:`ast` and walked here; nothing is ever handed
to ``eval``. What it may use is a whitelist, the reference's: numbers, strings and the given
names; arithmetic, bitwise, comparison and boolean operators; ``x if c else y``; indexing
(``values[0]``) and a fixed set of functions (:data:`FUNCTIONS`). No attribute access, no other
calls, no comprehensions, no lambdas. Results that could exhaust the server are refused: huge
powers and shifts, long strings.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

MAX_POWER = 4_000_000  # largest |base| or |exponent| of ``**`` (the reference's evaluator's limit)
MAX_EXPONENT = 4000  # largest |exponent| of ``pow()``
MAX_SHIFT = 10_000  # largest shift of ``<<``
MAX_STRING = 100_000  # longest string or list an operator may build
MAX_INT_BITS = 1_000_000  # largest integer power computed exactly (floats overflow far earlier)


class ExpressionError(ValueError):
    """The expression is not valid, uses something not allowed, or cannot be computed."""


def _sum(*args: Any) -> Any:
    """``sum(values)`` and ``sum(a, b, c)`` alike."""
    if len(args) == 1 and hasattr(args[0], "__iter__"):
        return sum(args[0])
    return sum(args)


def _pow(base: Any, exponent: Any) -> Any:
    if abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"pow(): exponent {exponent} is larger than {MAX_EXPONENT}")
    return pow(base, exponent)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sum": _sum,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "pow": _pow,
    "sqrt": math.sqrt,
    "ceil": math.ceil,
    "floor": math.floor,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "int": int,
    "float": float,
}


def _sized(value: Any) -> Any:
    if isinstance(value, str | list | tuple) and len(value) > MAX_STRING:
        raise ExpressionError(f"a result longer than {MAX_STRING} items is not allowed")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if abs(base) > MAX_POWER or abs(exponent) > MAX_POWER:
        raise ExpressionError(f"{base} ** {exponent} is too large to compute")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        # An exact integer power can still take minutes (3999999 ** 3999999): bound its size.
        if (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise ExpressionError(f"{base} ** {exponent} is too large to compute")
    return base**exponent


def _times(a: Any, b: Any) -> Any:
    # Repeating a string or list: check the length before building it.
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_STRING:
            raise ExpressionError(f"a result longer than {MAX_STRING} items is not allowed")
    return a * b


def _lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > MAX_SHIFT:
        raise ExpressionError(f"a shift by {b} is larger than {MAX_SHIFT}")
    return a << b


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: _sized(a + b),
    ast.Sub: operator.sub,
    ast.Mult: _times,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
    ast.LShift: _lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
    ast.Invert: operator.invert,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_CONSTANTS = (int, float, bool, str, type(None))


def _shown(source: str, limit: int = 60) -> str:
    return repr(source if len(source) <= limit else source[:limit] + "...")


def parse(expression: str) -> ast.expr:
    """The expression's tree; only its first statement counts, and it must be an expression."""
    source = expression.strip()
    if not source:
        raise ExpressionError("the expression is empty")
    try:
        module = ast.parse(source, mode="exec")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid expression {_shown(source)}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError("the expression is nested too deeply") from None
    first = module.body[0]
    if not isinstance(first, ast.Expr):
        raise ExpressionError(f"{_shown(source)} is a statement, not an expression")
    return first.value


class _Evaluator:
    def __init__(self, names: Mapping[str, Any]) -> None:
        self.names = names

    def eval(self, node: ast.AST) -> Any:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise ExpressionError(f"{_describe(node)} is not allowed in an expression")
        return method(node)

    def _Constant(self, node: ast.Constant) -> Any:
        if not isinstance(node.value, _CONSTANTS):
            raise ExpressionError(f"the constant {node.value!r} is not allowed")
        return _sized(node.value)

    def _Name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            return self.names[node.id]
        if node.id in FUNCTIONS:
            raise ExpressionError(f"{node.id} is a function: call it, as in {node.id}(...)")
        known = ", ".join(self.names) or "none"
        raise ExpressionError(f"{node.id!r} is not defined (known names: {known})")

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        return self._operator(_UNARY, node.op)(self.eval(node.operand))

    def _BinOp(self, node: ast.BinOp) -> Any:
        fn = self._operator(_BINARY, node.op)
        return fn(self.eval(node.left), self.eval(node.right))

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        # Short-circuit like Python: the first value that decides the outcome is the result.
        stop_on = False if isinstance(node.op, ast.And) else True
        value: Any = None
        for operand in node.values:
            value = self.eval(operand)
            if bool(value) is stop_on:
                return value
        return value

    def _Compare(self, node: ast.Compare) -> bool:
        left = self.eval(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.eval(comparator)
            if not self._operator(_COMPARE, op)(left, right):
                return False
            left = right
        return True

    def _IfExp(self, node: ast.IfExp) -> Any:
        return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)

    def _Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            allowed = ", ".join(FUNCTIONS)
            raise ExpressionError(f"only these functions may be called: {allowed}")
        if any(isinstance(arg, ast.Starred) for arg in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            raise ExpressionError("* and ** arguments are not allowed")
        args = [self.eval(arg) for arg in node.args]
        kwargs = {k.arg: self.eval(k.value) for k in node.keywords if k.arg is not None}
        return FUNCTIONS[node.func.id](*args, **kwargs)

    def _Subscript(self, node: ast.Subscript) -> Any:
        return self.eval(node.value)[self.eval(node.slice)]

    def _Slice(self, node: ast.Slice) -> slice:
        def part(sub: ast.expr | None) -> Any:
            return None if sub is None else self.eval(sub)

        return slice(part(node.lower), part(node.upper), part(node.step))

    @staticmethod
    def _operator(table: Mapping[type, Callable[..., Any]], op: ast.AST) -> Callable[..., Any]:
        fn = table.get(type(op))
        if fn is None:
            raise ExpressionError(f"the operator {type(op).__name__} is not allowed")
        return fn


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{node.attr})"
    return f"{type(node).__name__} syntax"


def evaluate(expression: str, names: Mapping[str, Any]) -> Any:
    """The value of ``expression`` with ``names`` as its variables.

    Raises :class:`ExpressionError` for anything not allowed or not computable (a syntax error,
    an unknown name, a division by zero, a math domain error, a too-large power ...).
    """
    tree = parse(expression)
    try:
        return _Evaluator(names).eval(tree)
    except ExpressionError:
        raise
    except (RecursionError, MemoryError):
        raise ExpressionError("the expression is nested too deeply") from None
    except (ArithmeticError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ExpressionError(f"{type(exc).__name__}: {exc}") from None
