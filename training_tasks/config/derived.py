"""Derived features: small arithmetic expressions over raw sensor columns, compiled into the model.

`derivedFeatures` in `mlModelConfig` (or a request) maps a new column's name to an expression:

    {"power_w": "torque * rpm * 2 * pi / 60", "temp_diff": "process_temp - air_temp"}

The language is numbers, raw feature names, `+ - * /`, unary minus, parentheses, `pi`, and the
functions `abs sqrt log1p exp` (one argument) and `min max` (two). It is parsed here by a
recursive-descent parser over an allow-list of tokens, never `eval`; a bad expression is refused
naming the feature and the character position. The parsed form (the AST below, plain JSON) is
what the training script gets in its config and what validation evaluates, so neither needs the
parser:

    {"num": 2.0} | {"col": "torque"} | {"op": "+"|"-"|"*"|"/", "args": [A, B]}
    | {"op": "neg", "args": [A]} | {"fn": "abs"|"sqrt"|"log1p"|"exp", "args": [A]}
    | {"fn": "min"|"max", "args": [A, B]}

`evaluate` computes the columns in float32, one operation at a time and in the same order as the
ONNX graph the script builds (log1p as log(a + 1): ONNX has no Log1p), so training data, the
native model's parity check and the deployed graph agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from training_tasks import fields as f
from training_tasks.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

MAX_FEATURES = 64
MAX_EXPRESSION_CHARS = 500
MAX_NODES = 200
MAX_DEPTH = 32  # parentheses, calls and signs nested inside one another
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
UNARY_FUNCTIONS = ("abs", "sqrt", "log1p", "exp")
BINARY_FUNCTIONS = ("min", "max")
CONSTANTS = {"pi": math.pi}
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<sym>[-+*/(),]))"
)

Ast = dict[str, Any]


class _Refused(Exception):
    def __init__(self, position: int, reason: str) -> None:
        super().__init__(reason)
        self.position, self.reason = position, reason


def check_derived_features(
    value: object, field_name: str, features: Sequence[str] | None = None
) -> dict[str, str]:
    """Check a `derivedFeatures` object ({name: expression}); returns it as given.

    With `features` (the raw feature columns of the run), every name an expression uses must be
    one of them and no derived name may repeat one.
    """
    spec = f.require_mapping(value, field_name)
    if len(spec) > MAX_FEATURES:
        raise ConfigError(field_name, f"has {len(spec)} features; at most {MAX_FEATURES}")
    for name, text in spec.items():
        parse_feature(name, text, field_name, features)
    return {str(k): str(v) for k, v in spec.items()}


def compile_features(
    spec: Mapping[str, str], features: Sequence[str], field_name: str = "derivedFeatures"
) -> list[dict[str, Any]]:
    """The parsed form the script and validation use: [{name, expression, ast}], in order."""
    return [
        {"name": name, "expression": text, "ast": parse_feature(name, text, field_name, features)}
        for name, text in spec.items()
    ]


def parse_feature(
    name: object, text: object, field_name: str, features: Sequence[str] | None = None
) -> Ast:
    """Parse one derived feature's expression; ConfigError names the feature and the position."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            field_name,
            f"feature name {f.shown(name)} must be letters, digits and _ (not starting with a "
            "digit), at most 128 characters",
        )
    where = f"{field_name}.{name}"
    if name in CONSTANTS or name in UNARY_FUNCTIONS or name in BINARY_FUNCTIONS:
        raise ConfigError(where, f"{name!r} is a reserved word; choose another feature name")
    if features is not None and name in features:
        raise ConfigError(
            where, f"{name!r} is also a raw feature column; give the derived feature another name"
        )
    expression = f.string(text, where, max_len=MAX_EXPRESSION_CHARS)
    try:
        return _Parser(expression, features).parse()
    except _Refused as refused:
        raise ConfigError(
            where,
            f"{refused.reason} at position {refused.position + 1} of {f.shown(expression)}; "
            "use numbers, raw feature names, + - * /, parentheses, pi and "
            f"{', '.join((*UNARY_FUNCTIONS, *BINARY_FUNCTIONS))}",
        ) from None


class _Parser:
    """expression := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
    unary := '-' unary | atom; atom := number | name | function '(' args ')' | '(' expression ')'.
    """

    def __init__(self, text: str, features: Sequence[str] | None) -> None:
        self.text, self.features = text, features
        self.tokens = self._tokenize(text)
        self.at = 0
        self.nodes = 0
        self.depth = 0

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str, int]]:
        tokens, position = [], 0
        while position < len(text):
            if text[position:].strip() == "":
                break
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                start = len(text) - len(text[position:].lstrip())
                raise _Refused(start, f"{text[start]!r} is not allowed")
            kind = match.lastgroup or ""
            start = match.start(kind)
            tokens.append((kind, match.group(kind), start))
            position = match.end()
        return tokens

    def parse(self) -> Ast:
        if not self.tokens:
            raise _Refused(0, "the expression is empty")
        tree = self._expression()
        if self.at < len(self.tokens):
            _, text, position = self.tokens[self.at]
            raise _Refused(position, f"{text!r} is not expected here")
        return tree

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _take(self, symbol: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "sym" and token[1] == symbol:
            self.at += 1
            return True
        return False

    def _node(self, node: Ast, position: int) -> Ast:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Refused(position, f"the expression has more than {MAX_NODES} parts")
        return node

    def _expression(self) -> Ast:
        left = self._term()
        while (token := self._peek()) is not None and token[1] in ("+", "-"):
            self.at += 1
            left = self._combine(token[1], left, self._term(), token[2])
        return left

    def _term(self) -> Ast:
        left = self._unary()
        while (token := self._peek()) is not None and token[1] in ("*", "/"):
            self.at += 1
            left = self._combine(token[1], left, self._unary(), token[2])
        return left

    def _combine(self, op: str, left: Ast, right: Ast, position: int) -> Ast:
        """`left op right`, with constants folded: `2 * pi / 60` is one number, and so is the
        constant part of `torque * rpm * 2 * pi / 60` (one Mul in the model instead of three:
        each operator costs single-row inference time). Training and the graph both compute
        the folded form."""
        if op == "/" and right.get("num") == 0:
            raise _Refused(position, "this divides by zero")
        if "num" in left and "num" in right:
            a, b = left["num"], right["num"]
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0.0}[op]
            if not math.isfinite(value):
                raise _Refused(position, "this constant is too large")
            return {"num": value}
        if op == "/" and "num" in right:  # x / c is x * (1 / c): one form for the fold below
            op, right = "*", {"num": 1.0 / right["num"]}
        if op == "*" and "num" in right and left.get("op") == "*" and "num" in left["args"][1]:
            factor = left["args"][1]["num"] * right["num"]
            if not math.isfinite(factor) or factor == 0:
                raise _Refused(position, "this constant is too large or too small")
            return {"op": "*", "args": [left["args"][0], {"num": factor}]}
        return self._node({"op": op, "args": [left, right]}, position)

    def _unary(self) -> Ast:
        token = self._peek()
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                where = token[2] if token is not None else len(self.text)
                raise _Refused(where, f"the expression nests deeper than {MAX_DEPTH} levels")
            return self._signed(token)
        finally:
            self.depth -= 1

    def _signed(self, token: tuple[str, str, int] | None) -> Ast:
        if token is not None and token[1] == "-":
            self.at += 1
            return self._node({"op": "neg", "args": [self._unary()]}, token[2])
        if token is not None and token[1] == "+":
            self.at += 1
            return self._unary()
        return self._atom()

    def _atom(self) -> Ast:
        token = self._peek()
        if token is None:
            raise _Refused(len(self.text), "the expression ends too early")
        kind, text, position = token
        self.at += 1
        if kind == "num":
            value = float(text)
            if not math.isfinite(value):
                raise _Refused(position, f"{text} is not a finite number")
            return self._node({"num": value}, position)
        if kind == "name":
            return self._name(text, position)
        if text == "(":
            inner = self._expression()
            if not self._take(")"):
                raise _Refused(self._position(), "a ')' is missing")
            return inner
        raise _Refused(position, f"{text!r} is not expected here")

    def _name(self, name: str, position: int) -> Ast:
        if name in CONSTANTS:
            return self._node({"num": CONSTANTS[name]}, position)
        if name in UNARY_FUNCTIONS or name in BINARY_FUNCTIONS:
            arity = 1 if name in UNARY_FUNCTIONS else 2
            if not self._take("("):
                raise _Refused(self._position(), f"{name} must be followed by '('")
            args = [self._expression()]
            while self._take(","):
                args.append(self._expression())
            if not self._take(")"):
                raise _Refused(self._position(), f"a ')' is missing after the arguments of {name}")
            if len(args) != arity:
                raise _Refused(
                    position,
                    f"{name} takes {arity} argument{'s' if arity > 1 else ''}, not {len(args)}",
                )
            return self._node({"fn": name, "args": args}, position)
        if self.features is not None and name not in self.features:
            raise _Refused(
                position,
                f"{name!r} is not a raw feature column (featureColumns: "
                f"{', '.join(self.features)})",
            )
        return self._node({"col": name}, position)

    def _position(self) -> int:
        token = self._peek()
        return token[2] if token is not None else len(self.text)


def check_ast(ast: object, features: Sequence[str], where: str) -> str:
    """Why a parsed form read from outside (a model file's metadata) is not one this parser could
    have made, or "" if it could: known operations with their arities, finite numbers, columns
    among `features`, at most MAX_NODES nodes. Walked without recursion, so a form nested
    thousands deep is refused, not a RecursionError."""
    arity = {"+": 2, "-": 2, "*": 2, "/": 2, "neg": 1}
    arity.update({name: 1 for name in UNARY_FUNCTIONS})
    arity.update({name: 2 for name in BINARY_FUNCTIONS})
    pending, nodes = [ast], 0
    while pending:
        node = pending.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"{where} has more than {MAX_NODES} parts"
        if not isinstance(node, dict):
            return f"{where} holds {f.shown(node)} where an expression belongs"
        if set(node) == {"num"}:
            number = node["num"]
            if isinstance(number, bool) or not isinstance(number, int | float):
                return f"{where} holds the number {f.shown(number)}"
            if not math.isfinite(number):
                return f"{where} holds the number {number!r}, which is not finite"
        elif set(node) == {"col"}:
            if node["col"] not in features:
                return f"{where} reads {f.shown(node['col'])}, which is not a feature column"
        elif set(node) in ({"op", "args"}, {"fn", "args"}):
            name, args = node.get("op", node.get("fn")), node["args"]
            if name not in arity or ("fn" in node) != (
                name in (*UNARY_FUNCTIONS, *BINARY_FUNCTIONS)
            ):
                return f"{where} uses the operation {f.shown(name)}, which is not allowed"
            if not isinstance(args, list) or len(args) != arity[name]:
                return f"{where} gives {name} other than {arity[name]} argument(s)"
            pending.extend(args)
        else:
            return f"{where} holds a node with keys {f.shown(sorted(map(str, node)))}"
    return ""


def columns_used(ast: Ast) -> set[str]:
    """The raw feature names an expression reads."""
    if "col" in ast:
        return {ast["col"]}
    return set().union(*(columns_used(arg) for arg in ast.get("args", [])))


def evaluate(
    derived: Sequence[Mapping[str, Any]], columns: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """The derived columns (float32, in order) of the raw `columns` by name."""
    import numpy as np  # numpy only where features are computed: config stays light to import

    f32 = np.float32

    def log1p(a: Any) -> Any:
        return np.log(np.add(a, f32(1.0), dtype=f32), dtype=f32)  # as the graph: Log(Add(a, 1))

    operations: dict[str, Any] = {
        "+": np.add,
        "-": np.subtract,
        "*": np.multiply,
        "/": np.divide,
        "neg": np.negative,
        "abs": np.abs,
        "sqrt": np.sqrt,
        "log1p": log1p,
        "exp": np.exp,
        "min": np.minimum,
        "max": np.maximum,
    }

    def value(ast: Mapping[str, Any]) -> np.ndarray:
        if "num" in ast:
            return np.asarray(ast["num"], dtype=f32)
        if "col" in ast:
            return np.asarray(columns[ast["col"]], dtype=f32)
        name = ast.get("op") or ast.get("fn")
        if name not in operations:
            raise ValueError(f"unknown operation {name!r} in a derived feature")
        args = [value(arg) for arg in ast["args"]]
        with np.errstate(all="ignore"):  # nan and inf flow on, as they do in the ONNX graph
            if name == "log1p":
                return np.asarray(log1p(args[0]), dtype=f32)
            return np.asarray(operations[name](*args, dtype=f32), dtype=f32)

    rows = len(next(iter(columns.values()))) if columns else 0
    out = []
    for feature in derived:
        column = value(feature["ast"])
        out.append(np.broadcast_to(np.asarray(column, dtype=np.float32), (rows,)).copy())
    return out
