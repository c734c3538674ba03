"""Synthetic cohorts: profiles drawn from ``cohort.generate`` for ``psysim simulate``.

``cohort.generate`` in the experiment file says, per profile field, how to draw
it (``categorical``, ``uniform``, ``normal`` or ``constant``), and whether every
synthetic profile starts from a resampled real participant (``resample: true``),
which keeps the joint structure of the fields nobody redraws::

    cohort:
      schema: schema.json
      generate:
        resample: true
        fields:
          age: {distribution: normal, mean: 35, sd: 10, min: 18, max: 90, decimals: 0}
          gender: {distribution: categorical, weights: {Female: 0.5, Male: 0.5}}

:func:`check_spec` checks the spec against the profile schema before anything
is drawn (and before any model loads): every way the spec could produce a
profile the schema rejects is a located problem, all reported at once.
:func:`generate_profiles` draws the profiles.

Draw order (fixed, so that the same seed gives the same cohort on every
machine). One ``numpy.random.default_rng(seed)`` (PCG64) draws, profile after
profile (so the first k profiles of n are the same for every n ≥ k):

1. With ``resample: true``: one ``rng.integers(len(cohort))``, the index of the
   source row in cohort order (with replacement).
2. Then each field of ``fields`` in the order of the profile schema's
   ``properties`` (not the YAML's order):

   a. if ``missing`` > 0: one ``u = rng.random()``; ``u < missing`` leaves the
      field unknown and nothing else is drawn for it;
   b. ``categorical``: one ``u = rng.random()``; the value is the first (in the
      YAML's order of ``weights``) whose running sum of weights exceeds
      ``u × total weight``;
      ``uniform``: one ``u = rng.random()``; ``min + (max − min) × u``;
      ``normal``: one ``z = rng.standard_normal()``; ``mean + sd × z``, clipped
      to ``[min, max]`` (either may be absent);
      ``constant``: no draw;
   c. numbers are rounded with Python's ``round`` (half to even): to
      ``decimals`` places when given (a rounded ``-0.0`` becomes ``0.0``); to a
      whole ``int`` when the schema types the field ``integer``. Other numbers
      stay floats.

NumPy keeps the PCG64 stream, ``random`` and ``integers`` identical across
platforms; ``standard_normal`` is NumPy's ziggurat, stable since NumPy 1.17 but
not promised forever, so a run should record NumPy's version.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, NamedTuple

import numpy as np

from .config import ExperimentConfig
from .errors import ConfigError, Problem, raise_if
from .files import display_path
from .participants import Cohort, Profile, ProfileSchema, is_missing
from .validation import expected_types, format_path, found

__all__ = ["DISTRIBUTIONS", "Generated", "check_spec", "generate_profiles"]

#: Per distribution: the keys it requires, and the keys it may also take.
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "categorical": (("weights",), ("missing",)),
    "uniform": (("min", "max"), ("decimals", "missing")),
    "normal": (("mean", "sd"), ("min", "max", "decimals", "missing")),
    "constant": (("value",), ("missing",)),
}
_GENERATE = ("cohort", "generate")
_FIELDS = _GENERATE + ("fields",)
#: Whole-number grids up to this size are checked value by value (e.g. against an enum).
_GRID_LIMIT = 1001
_UNCHECKED: Any = object()


class Generated(NamedTuple):
    """What :func:`generate_profiles` returns: ``profiles, sources = generate_profiles(...)``.

    ``sources`` maps a synthetic id to the real participant whose row it was
    resampled from (only with ``resample: true``; empty otherwise), so reports can
    say where each profile came from.
    """

    profiles: list[Profile]
    sources: dict[str, str]


def _at(config: ExperimentConfig, path: tuple[Any, ...], message: str) -> Problem:
    """A problem at ``path``; a key that is not in the file takes the line of its nearest written parent."""
    probe = path
    while probe and probe not in config.marks:
        probe = probe[:-1]
    return dataclasses.replace(config.problem(probe, message), where=format_path(path))


def _key(value: Any) -> Any:
    # The YAML positions are keyed by a key's text as written, so a key written 1 is "1" there.
    return value if isinstance(value, str) else str(value)


def _strict(schema: ProfileSchema) -> ProfileSchema:
    """The schema without ``x-psysim`` ``invalid`` annotations.

    ``"invalid": "missing"`` lets a *real* participant's bad value become unknown;
    a value psysim draws itself that the schema rejects is a fault of the spec,
    and must be an error rather than a silently unknown field.
    """
    props = schema.schema.get("properties", {})
    lenient = {n for n, p in props.items() if isinstance(p, dict) and "invalid" in p.get("x-psysim", {})}
    if not lenient:
        return schema
    strict = {
        n: {**p, "x-psysim": {k: v for k, v in p["x-psysim"].items() if k != "invalid"}} if n in lenient else p
        for n, p in props.items()
    }
    return ProfileSchema({**schema.schema, "properties": strict}, schema.path)


def _not_accepted(schema: ProfileSchema, name: str, value: Any) -> str | None:
    """Why the profile schema rejects ``value`` for field ``name`` (its own typing and validation), or None."""
    probe = "(candidate)"
    _, problems = schema.profile(probe, {name: value}, ())
    # Only this field's own problems: a required *other* field is no fault of this value.
    messages = [p.message for p in problems if p.where == f"participant {probe}, field {name}"]
    return "; ".join(messages) or None


def _is_integer_field(schema: ProfileSchema, name: str) -> bool:
    types = schema.fields[name].types
    return "integer" in types and "number" not in types


def _shape(value: float, *, integer: bool, decimals: int | None) -> int | float:
    """A drawn number as the profile holds it: rounded to ``decimals``, a whole int for integer fields."""
    if integer:
        return round(value)  # an int: Python rounds a float to a whole number half to even
    if decimals is not None:
        return round(float(value), decimals) + 0.0  # + 0.0: -0.04 rounds to -0.0, which a persona would show
    return float(value)


def _schema_bounds(prop: dict[str, Any]) -> tuple[str | None, str | None]:
    """The schema's own lower and upper bound of a numeric field as text (``≥ 0``), or None."""
    lower = upper = None
    if "exclusiveMinimum" in prop:
        lower = f"> {prop['exclusiveMinimum']}"
    elif "minimum" in prop:
        lower = f"≥ {prop['minimum']}"
    if "exclusiveMaximum" in prop:
        upper = f"< {prop['exclusiveMaximum']}"
    elif "maximum" in prop:
        upper = f"≤ {prop['maximum']}"
    return lower, upper


def _numeric_problems(
    config: ExperimentConfig, schema: ProfileSchema, name: str, spec: dict[str, Any], dist: str
) -> list[Problem]:
    """Checks of a uniform or normal field: the schema's type, decimals, and every value the range can yield."""
    here = _FIELDS + (name,)
    spec_types = schema.fields[name].types
    if not {"number", "integer"} & set(spec_types):
        return [
            _at(
                config,
                here + ("distribution",),
                f"profile field {name} is {expected_types(list(spec_types))} in the profile schema, but {dist} draws numbers; "
                "use categorical or constant",
            )
        ]
    problems: list[Problem] = []
    integer = _is_integer_field(schema, name)
    decimals = spec.get("decimals")
    if integer and decimals not in (None, 0):
        problems.append(
            _at(
                config,
                here + ("decimals",),
                f"profile field {name} is an integer in the profile schema: "
                f"expected decimals 0 (or none), found {found(decimals)}",
            )
        )
        decimals = 0
    lo, hi = spec.get("min"), spec.get("max")
    if dist == "uniform" and (lo is None or hi is None):
        return problems  # reported as missing keys
    if lo is not None and hi is not None and not lo < hi:
        hint = "; use constant for a single value" if lo == hi else ""
        problems.append(_at(config, here + ("max",), f"expected a number greater than min ({lo}), found {found(hi)}{hint}"))
        return problems
    prop = schema.schema["properties"][name]
    if dist == "normal":
        lower, upper = _schema_bounds(prop)
        for key, bound in (("min", lower), ("max", upper)):
            if bound is not None and spec.get(key) is None:
                problems.append(
                    _at(
                        config,
                        here + (key,),
                        f"missing required key: a normal distribution can draw any number, but profile field {name} "
                        f"must be {bound}; give {key} (draws are clipped to [min, max])",
                    )
                )
    shape = {"integer": integer, "decimals": decimals}
    ends_ok = True
    for key, which, value in (("min", "lowest", lo), ("max", "highest", hi)):
        if value is None:
            continue
        why = _not_accepted(schema, name, _shape(value, **shape))
        if why:
            ends_ok = False
            problems.append(_at(config, here + (key,), f"the {which} draw is not a valid value of profile field {name}: {why}"))
    # A field that takes only some numbers (an enum, or multiples of something) can be
    # checked only where the values drawn can be listed: a bounded grid.
    if "enum" in prop or "const" in prop:
        only = "the values its schema lists"
    elif "multipleOf" in prop:
        only = f"multiples of {prop['multipleOf']}"
    else:
        only = None
    if lo is None or hi is None:
        if only:
            problems.append(
                _at(
                    config,
                    here + ("distribution",),
                    f"profile field {name} takes only {only}; give min and max (so that every value drawn "
                    "can be checked) or use categorical",
                )
            )
        return problems
    if not ends_ok:
        return problems
    first, last = _shape(lo, **shape), _shape(hi, **shape)
    step = 1 if integer else (10.0**-decimals if decimals is not None else None)
    count = round((last - first) / step) + 1 if step is not None else None
    if count is not None and count <= _GRID_LIMIT:
        inside = [_shape(first + k * step, **shape) for k in range(1, count - 1)]
    elif only:
        why = (
            f"{dist} draws any number between min and max; give decimals or use categorical"
            if count is None
            else f"there are too many values between min and max to check ({count}); use categorical"
        )
        problems.append(_at(config, here + ("distribution",), f"profile field {name} takes only {only}, but {why}"))
        return problems
    else:
        # Nothing lists the values: a few probes inside the range (e.g. for a "not" in the schema).
        inside = [_shape(lo + (hi - lo) * q, **shape) for q in (0.25, 0.5, 0.75)]
    for value in inside:
        why = _not_accepted(schema, name, value)
        if why:
            problems.append(
                _at(
                    config,
                    here + ("distribution",),
                    f"draws between min and max can be {value!r}, which is not a valid value of profile field {name}: {why}",
                )
            )
            break
    return problems


def _value_problems(
    config: ExperimentConfig, schema: ProfileSchema, name: str, path: tuple[Any, ...], value: Any
) -> list[Problem]:
    """A categorical or constant value as the schema would take it: not a missing marker, and valid."""
    if is_missing(value, frozenset(config.cohort.missing)):
        shown = "null" if value is None else repr(value)
        return [
            _at(
                config,
                path,
                f"{shown} means unknown (cohort.missing), not a value; to leave {name} unknown in some profiles, "
                "use missing: <probability>",
            )
        ]
    why = _not_accepted(schema, name, value)
    return [_at(config, path, f"not a valid value of profile field {name}: {why}")] if why else []


def _field_problems(config: ExperimentConfig, schema: ProfileSchema, name: str, spec: dict[str, Any]) -> list[Problem]:
    """Every problem of one entry of ``cohort.generate.fields``."""
    here = _FIELDS + (_key(name),)
    if name not in schema.fields:
        close = difflib.get_close_matches(str(name), list(schema.fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(schema.fields) or "none"
        return [_at(config, here, f"unknown profile field {name!r}{hint}; the profile schema has: {known}")]
    dist = spec.get("distribution")
    if dist not in DISTRIBUTIONS:
        return []  # the experiment file's schema already says so
    required, optional = DISTRIBUTIONS[dist]
    problems = [
        _at(config, here + (key,), f"not allowed for distribution {dist}; expected one of: {', '.join(required + optional)}")
        for key in spec
        if key != "distribution" and key not in required + optional
    ]
    absent = [key for key in required if key not in spec]
    problems += [_at(config, here + (key,), f"missing required key for distribution {dist}") for key in absent]
    if dist == "categorical" and "weights" in spec:
        weights = spec["weights"]
        if not any(w > 0 for w in weights.values()):
            problems.append(_at(config, here + ("weights",), "expected at least one weight > 0, found all 0"))
        for value in weights:
            problems += _value_problems(config, schema, name, here + ("weights", _key(value)), value)
    elif dist == "constant" and "value" in spec:
        problems += _value_problems(config, schema, name, here + ("value",), spec["value"])
    elif dist in ("uniform", "normal"):
        problems += _numeric_problems(config, schema, name, spec, dist)
    return problems


def check_spec(config: ExperimentConfig, schema: ProfileSchema, cohort: Cohort | None = _UNCHECKED) -> list[Problem]:
    """Every problem of ``cohort.generate`` against the profile schema, each located in the experiment file.

    Catches every way the spec could draw a field the schema rejects, each value
    checked by the schema's own typing and validation: unknown fields, keys that do
    not belong to a distribution or are missing, weights that are all 0,
    categorical or constant values the schema does not accept (or that mean
    unknown), ranges whose draws it does not accept (both ends, and every value of
    a small grid of whole or rounded numbers), unbounded normals on bounded fields,
    required fields that are never drawn nor resampled or may be left unknown. A
    rule of the schema that ties fields together (``if``/``then``) is checked when
    drawing, each profile in full. Pass
    ``cohort`` (None when there is none) to also check that ``resample: true`` has
    rows to draw from; :func:`generate_profiles` always does. Returns ``[]`` when
    the file has no ``cohort.generate``.
    """
    generate = config.cohort.generate
    if not isinstance(generate, dict):
        return []
    schema = _strict(schema)
    fields = generate.get("fields") or {}
    resample = generate.get("resample", False) is True
    problems: list[Problem] = []
    if not fields and not resample:
        problems.append(
            _at(config, _GENERATE, "expected fields to draw or resample: true, found neither: every profile would be empty")
        )
    for name, spec in fields.items():
        if isinstance(spec, dict):
            problems += _field_problems(config, schema, name, spec)
    required = schema.schema.get("required", [])
    for name in required if isinstance(required, list) else ():
        spec = fields.get(name)
        if spec is None and not resample:
            problems.append(
                _at(
                    config,
                    _FIELDS + (name,),
                    f"profile field {name} is required by the profile schema, but it is neither drawn (fields) "
                    "nor resampled (resample: true); give it a distribution",
                )
            )
        elif isinstance(spec, dict) and isinstance(spec.get("missing"), int | float) and spec["missing"] > 0:
            problems.append(
                _at(
                    config,
                    _FIELDS + (name, "missing"),
                    f"profile field {name} is required by the profile schema, so it cannot be unknown: "
                    f"expected missing 0, found {found(spec['missing'])}",
                )
            )
    if resample and cohort is not _UNCHECKED and (cohort is None or len(cohort) == 0):
        problems.append(
            _at(config, _GENERATE + ("resample",), "resample: true needs the cohort's rows to draw from, but there are none")
        )
    problems.sort(key=lambda p: (p.line or 0, p.column or 0))
    return problems


def _draw(rng: np.random.Generator, spec: dict[str, Any], *, integer: bool) -> tuple[bool, Any]:
    """One field's draw, in the documented order: ``(known, value)``."""
    missing = spec.get("missing", 0)
    if missing > 0 and rng.random() < missing:
        return False, None
    dist = spec["distribution"]
    if dist == "constant":
        return True, spec["value"]
    if dist == "categorical":
        values, weights = list(spec["weights"]), [float(w) for w in spec["weights"].values()]
        running, cumulative = 0.0, []
        for w in weights:  # left to right, as documented (Python's sum() rounds differently since 3.12)
            running += w
            cumulative.append(running)
        x = rng.random() * cumulative[-1]
        for value, c in zip(values, cumulative, strict=True):
            if x < c:
                return True, value
        # u × total can round up to the total itself: that is the last value with a weight.
        return True, values[max(i for i, w in enumerate(weights) if w > 0)]
    if dist == "uniform":
        value = spec["min"] + (spec["max"] - spec["min"]) * rng.random()
    else:
        value = spec["mean"] + spec["sd"] * rng.standard_normal()
        if spec.get("min") is not None:
            value = max(value, spec["min"])
        if spec.get("max") is not None:
            value = min(value, spec["max"])
    return True, _shape(float(value), integer=integer, decimals=spec.get("decimals"))


def generate_profiles(config: ExperimentConfig, schema: ProfileSchema, cohort: Cohort | None, n: int, seed: int) -> Generated:
    """Draw ``n`` synthetic profiles (ids ``s0001``, ...) from ``cohort.generate``, in the module's draw order.

    The spec is checked first (:func:`check_spec`; :class:`ConfigError` with every
    problem). With ``resample: true`` each profile starts from a row of ``cohort``
    (all of its profiles, with replacement) and keeps that row's values and their
    display text; fields under ``fields`` are then drawn instead. Every profile is
    validated by the profile schema; a profile it rejects is a :class:`ConfigError`
    naming the synthetic id, field and value. Returns the profiles, in id order,
    and which real participant each resampled profile came from.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConfigError(f"simulation.n must be a whole number of participants, found {n!r}")
    if n <= 0:
        raise ConfigError(f"simulation.n must be at least 1, found {n}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a whole number ≥ 0, found {seed!r}")
    shown = display_path(config.path)
    generate = config.cohort.generate
    if not isinstance(generate, dict):
        raise ConfigError(
            f"no cohort.generate in {shown}",
            [_at(config, _GENERATE, "missing required key: synthetic profiles are drawn from cohort.generate")],
        )
    raise_if(check_spec(config, schema, cohort), ConfigError, f"invalid cohort.generate in {shown}")
    fields = generate.get("fields") or {}
    order = [name for name in schema.fields if name in fields]  # the schema's order, not the YAML's
    integer = {name: _is_integer_field(schema, name) for name in order}
    position = {name: i for i, name in enumerate(schema.fields)}  # profiles list fields in the schema's order
    rows = list(cohort.profiles.values()) if generate.get("resample") is True and cohort is not None else []
    strict = _strict(schema)
    rng = np.random.default_rng(seed)
    width = max(4, len(str(n)))
    profiles: list[Profile] = []
    sources: dict[str, str] = {}
    rejected: dict[tuple[Any, ...], list[str]] = {}
    for i in range(n):
        sid = f"s{i + 1:0{width}d}"
        row = rows[int(rng.integers(len(rows)))] if rows else None
        record = dict(row.values) if row is not None else {}
        for name in order:
            known, value = _draw(rng, fields[name], integer=integer[name])
            if known:
                record[name] = value
            else:
                record.pop(name, None)
        record = {k: record[k] for k in sorted(record, key=lambda k: position.get(k, len(position)))}
        # Nothing counts as missing here: check_spec has ruled out drawn values that would.
        profile, found_problems = strict.profile(sid, record, ())
        text = dict(profile.text)
        if row is not None:
            sources[sid] = row.participant
            # A resampled value reads exactly as the real participant's does (their raw cell).
            text.update({k: v for k, v in row.text.items() if k in record and k not in fields})
        profiles.append(Profile(sid, profile.values, text))
        origin = f" (resampled from participant {row.participant})" if row is not None else ""
        for p in found_problems:
            field = (p.where or "").partition(", field ")[2]
            about = f", field {field}" if field else ""
            where = _FIELDS + (field,) if field in fields else _GENERATE
            rejected.setdefault(where, []).append(f"synthetic participant {sid}{origin}{about}: {p.message}")
    # The first profile per place in the spec, and how many more: a bad spec fails most of n profiles.
    problems = []
    for where, messages in rejected.items():
        more = len(messages) - 1
        also = f" (and {more} more synthetic participant{'s' if more > 1 else ''})" if more else ""
        problems.append(_at(config, where, messages[0] + also))
    raise_if(problems, ConfigError, f"cohort.generate drew profiles the profile schema rejects in {shown}")
    return Generated(profiles, sources)
