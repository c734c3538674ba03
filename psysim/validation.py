"""Turn jsonschema validation errors into plain "expected ..., found ..." messages.

Shared by the experiment-file schema and participant profile schemas so that a
user reads the same kind of message everywhere.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

__all__ = ["describe", "expected_types", "format_path", "found", "iter_described", "type_name"]

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def type_name(value: Any) -> str:
    """A user-facing name for the type of a parsed YAML/JSON value."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return type(value).__name__


def found(value: Any) -> str:
    """``found ...`` text: the type and, for scalars, the value itself."""
    if isinstance(value, dict | list):
        return type_name(value)
    if value is None:
        return "nothing (null)"
    return f"{type_name(value)} {_short(value)}"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_path(path: Sequence[Any]) -> str:
    """``('models', 0, 'source')`` -> ``models[0].source``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def expected_types(spec: Any) -> str:
    types = spec if isinstance(spec, list) else [spec]
    names = [_TYPE_NAMES.get(t, t) for t in types]
    return " or ".join(names)


def describe(error: ValidationError) -> list[tuple[tuple[Any, ...], str]]:
    """One or more ``(path, message)`` pairs for a jsonschema error."""
    path = tuple(error.absolute_path)
    kw, spec, inst = error.validator, error.validator_value, error.instance
    if kw == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extras = [k for k in inst if k not in error.schema.get("properties", {})]
        out = []
        for key in extras:
            msg = f"unknown key {key!r}"
            close = difflib.get_close_matches(str(key), allowed, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            msg += f"; expected one of: {', '.join(allowed)}" if allowed else "; no keys are allowed here"
            out.append((path + (key,), msg))
        return out
    if kw == "required":
        missing = [k for k in spec if isinstance(inst, dict) and k not in inst]
        return [(path + (k,), "missing required key") for k in missing] or [(path, error.message)]
    if kw == "type":
        return [(path, f"expected {expected_types(spec)}, found {found(inst)}")]
    if kw == "enum":
        options = ", ".join(_short(v) for v in spec)
        msg = f"expected one of {options}; found {found(inst)}"
        if isinstance(inst, str):
            close = difflib.get_close_matches(inst, [v for v in spec if isinstance(v, str)], n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        return [(path, msg)]
    if kw == "const":
        return [(path, f"expected {_short(spec)}, found {found(inst)}")]
    if kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sym = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kw]
        return [(path, f"expected a number {sym} {spec}, found {found(inst)}")]
    if kw == "minItems":
        return [(path, f"expected at least {spec} item{'s' if spec != 1 else ''}, found {len(inst)}")]
    if kw == "maxItems":
        return [(path, f"expected at most {spec} items, found {len(inst)}")]
    if kw == "uniqueItems":
        return [(path, f"expected items without repeats, found {found(inst)}")]
    if kw == "minLength":
        return [(path, f"expected a string of at least {spec} character{'s' if spec != 1 else ''}, found {found(inst)}")]
    if kw == "maxLength":
        return [(path, f"expected a string of at most {spec} characters, found {found(inst)}")]
    if kw == "pattern":
        hint = error.schema.get("x-pattern-help")
        expected = hint or f"a string matching {spec}"
        return [(path, f"expected {expected}, found {found(inst)}")]
    if kw == "not":
        return [(path, error.schema.get("x-not-help", f"not allowed here, found {found(inst)}"))]
    if kw in ("oneOf", "anyOf"):
        shallow = [e for e in error.context or () if len(e.absolute_path) == len(path)]
        if shallow and len(shallow) == len(error.context or ()) and all(e.validator in ("type", "const") for e in shallow):
            # Every branch wants a different kind of value: say so in one line.
            wanted = [expected_types(e.validator_value) if e.validator == "type" else _short(e.validator_value) for e in shallow]
            return [(path, f"expected {' or '.join(dict.fromkeys(wanted))}, found {found(inst)}")]
        # Report the branch that got furthest, which is what the user most likely meant.
        best = _best_context(error.context, inst, len(path))
        if best is not None:
            return describe(best)
        return [(path, f"expected {_short(spec)}, found {found(inst)}")]
    return [(path, error.message)]


def _best_context(context: Iterable[ValidationError] | None, instance: Any, depth: int) -> ValidationError | None:
    errors = list(context or [])
    if isinstance(instance, dict | list):
        # A mapping or list cannot have been meant for a branch that only takes scalars.
        shaped = [e for e in errors if not (e.validator in ("type", "enum") and len(e.absolute_path) == depth)]
        errors = shaped or errors
    if not errors:
        return None
    # Prefer errors that are deeper (the value had the right shape but a wrong part),
    # then errors other than "wrong type".
    errors.sort(key=lambda e: (-len(e.absolute_path), e.validator == "type"))
    return errors[0]


def iter_described(validator: Draft202012Validator, instance: Any) -> list[tuple[tuple[Any, ...], str]]:
    """All ``(path, message)`` pairs for ``instance``, sorted by path for stable output."""
    out: dict[tuple[tuple[Any, ...], str], None] = {}
    for err in validator.iter_errors(instance):
        # jsonschema reports "required" once per missing key, each carrying the whole list.
        out.update(dict.fromkeys(describe(err)))
    return sorted(out, key=lambda pm: ([str(p) for p in pm[0]], pm[1]))
