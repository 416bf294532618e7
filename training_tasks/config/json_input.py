"""JSON text from outside (a config file, a request body) read into an object, or ConfigError.

Python's parser recurses once per nesting level, so a file of 100,000 nested lists would end in
a RecursionError. The text is scanned for its nesting first (without recursing), and a value
nested too deep is refused naming the field it sits in, before anything is parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from training_tasks import fields as f
from training_tasks.errors import ConfigError

# A JSON string (escapes included), or one of the characters that change the nesting or the path.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')


def load_object(text: str, what: str, max_depth: int = f.MAX_JSON_DEPTH) -> dict[str, Any]:
    """Parse `text` as a JSON object; `what` names it in errors ("the training config")."""
    start = text.lstrip()[:1]
    if start != "{":
        raise ConfigError("config", f"{what} must be a JSON object {{...}}, got {_opening(start)}")
    deep = too_deep_at(text, max_depth)
    if deep is not None:
        raise ConfigError(deep, f.nesting_problem(max_depth))
    try:
        doc = json.loads(text)
    except RecursionError:  # only if the scan missed something: still no traceback
        raise ConfigError("config", f"{what} {f.nesting_problem(max_depth)}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("config", f"{what} is not valid JSON ({exc}); fix the JSON") from None
    except ValueError:  # Python refuses to read an integer of more than 4,300 digits
        raise ConfigError("config", f"{what} holds a number of over 4,300 digits") from None
    return f.require_mapping(doc, "config")  # type: ignore[return-value]


def too_deep_at(text: str, max_depth: int) -> str | None:
    """The field where `text` nests lists or objects deeper than `max_depth`, or None.

    Invalid JSON is not judged here (the parser reports it); only the nesting is followed.
    """
    path: list[str | int | None] = []  # per open level: the current key or index
    last_string = ""
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            last_string = token
        elif token in "[{":
            if len(path) >= max_depth:
                return _path_text(path)
            path.append(0 if token == "[" else None)
        elif token in "]}":
            if path:
                path.pop()
        elif token == ":" and path and not isinstance(path[-1], int):
            path[-1] = _key(last_string)
        elif token == "," and path and isinstance(path[-1], int):
            path[-1] += 1
    return None


def _path_text(path: list[str | int | None]) -> str:
    name = ""
    for step in path:
        name = f.child(name, "?" if step is None else step)
        if len(name) > f.SHOWN_CHARS:
            return f"{name[: f.SHOWN_CHARS]}…"
    return name or "config"


def _key(token: str) -> str:
    try:
        key = json.loads(token)
    except ValueError:
        return token.strip('"')
    return key if isinstance(key, str) else token


def _opening(start: str) -> str:
    kinds = {"[": "a list", '"': "a string", "": "an empty file", "n": "null"}
    if start in kinds:
        return kinds[start]
    return "true or false" if start in "tf" else f"text starting with {start!r}"
