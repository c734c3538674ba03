"""Participant profiles: JSON Schemas (draft 2020-12), cohorts, and missing values.

A profile schema is an ordinary JSON Schema whose ``properties`` are the
profile fields, in the order a persona lists them. Each field may carry an
``x-psysim`` annotation that says how it reads in a persona::

    "age": {"type": "number", "minimum": 0,
            "x-psysim": {"question": "What is your age?", "label": "age", "units": "years"}}

Values are typed *explicitly* against the schema (a CSV cell ``"31"`` for a
``number`` field becomes ``31.0``; ``"3l"`` stays a string and fails
validation with a located message). Missing values (``""``, ``"N/A"``, NaN,
null, ...) are removed before validation, so a participant who lacks a field
simply has no such field: it never reaches a persona as "N/A" or "nan". A
field annotated ``"invalid": "missing"`` treats a value its schema rejects
(an age of 999999 against ``"maximum": 100``) the same way, and the profile
records which values it left out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from . import validation
from .errors import DataError, Problem, raise_if
from .files import Location, display_path, read_table, read_text

__all__ = ["Cohort", "FieldSpec", "Profile", "ProfileSchema", "is_missing", "load_cohort"]

_ANNOTATION_KEYS = {
    "question": "Interview question, e.g. 'What is your age?' (default: 'What is your <label>?')",
    "label": "Noun phrase for descriptions, e.g. 'age' (default: the schema title, else the field name)",
    "units": "Units appended in descriptions, e.g. 'years'",
    "first_person": "Sentence for first-person personas; {value} is replaced by the value, e.g. 'I am {value} years old.'",
    "third_person": "Sentence for third-person personas, e.g. 'The participant is {value} years old.'",
    "value_labels": "Mapping from stored values to the words a persona uses, e.g. {'1': 'male', '2': 'female'}",
    "format": "Python format spec for numbers, e.g. '.0f' (default: the value exactly as in the data file)",
    "persona": "false to keep the field out of personas (it is still validated and exported)",
    "invalid": "'error' (default): a value the field's schema rejects is an error; 'missing': it is treated as unknown",
}
_ANNOTATION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "question": {"type": "string", "minLength": 1},
        "label": {"type": "string", "minLength": 1},
        "units": {"type": "string"},
        "first_person": {"type": "string", "minLength": 1},
        "third_person": {"type": "string", "minLength": 1},
        "value_labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "format": {"type": "string"},
        "persona": {"type": "boolean"},
        "invalid": {"enum": ["error", "missing"]},
    },
}
#: Validated records remembered per schema (then forgotten all at once, to bound memory).
_MEMO_SIZE = 100_000
_INT_RE = re.compile(r"^[+-]?\d+(\.0*)?$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def is_missing(value: Any, missing: tuple[str, ...] | frozenset[str]) -> bool:
    """True for None, NaN, and strings that (stripped) are one of ``missing``."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in missing


@dataclass(frozen=True)
class FieldSpec:
    """How one profile field reads in a persona (from the schema and its ``x-psysim`` annotation)."""

    name: str
    types: tuple[str, ...]
    label: str
    question: str
    units: str = ""
    first_person: str | None = None
    third_person: str | None = None
    value_labels: dict[str, str] = field(default_factory=dict)
    number_format: str | None = None
    in_persona: bool = True
    #: ``error`` or ``missing``: what a value that breaks this field's schema does (``x-psysim.invalid``).
    invalid: str = "error"


@dataclass(frozen=True)
class Profile:
    """One participant's known profile fields: typed values and their display text.

    ``values`` holds the typed values that passed the schema; ``text`` the words a
    persona shows for each (the value exactly as in the data file, a value label,
    or a formatted number). Fields the participant lacks are absent from both.
    ``invalid`` holds the values of ``"invalid": "missing"`` fields that the
    schema rejected and that were therefore treated as unknown, as in the file.
    """

    participant: str
    values: dict[str, Any]
    text: dict[str, str]
    invalid: dict[str, Any] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.values


class ProfileSchema:
    """A validated profile schema: the JSON Schema plus the persona spec of each field."""

    def __init__(self, schema: dict[str, Any], path: Path | None = None):
        shown = display_path(path) if path else "<profile schema>"
        problems: list[Problem] = []
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = validation.format_path(tuple(exc.absolute_path))
            problems.append(Problem(f"not a valid JSON Schema: {exc.message}", file=shown, where=where))
            raise_if(problems, DataError, f"invalid profile schema {shown}")
        if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
            problems.append(
                Problem('expected a schema with "type": "object" and "properties" (one per profile field)', file=shown)
            )
            raise_if(problems, DataError, f"invalid profile schema {shown}")
        annotation_validator = Draft202012Validator(_ANNOTATION_SCHEMA)
        self.fields: dict[str, FieldSpec] = {}
        for name, prop in schema["properties"].items():
            if not isinstance(prop, dict):
                continue
            ann = prop.get("x-psysim", {})
            for sub, message in validation.iter_described(annotation_validator, ann):
                problems.append(
                    Problem(message, file=shown, where=validation.format_path(("properties", name, "x-psysim") + sub))
                )
            if problems:
                continue
            types = prop.get("type", ["string", "number", "integer", "boolean"])
            types = tuple(types) if isinstance(types, list) else (types,)
            label = ann.get("label") or prop.get("title") or name.replace("_", " ")
            self.fields[name] = FieldSpec(
                name=name,
                types=types,
                label=label,
                question=ann.get("question") or f"What is your {label}?",
                units=ann.get("units", ""),
                first_person=ann.get("first_person"),
                third_person=ann.get("third_person"),
                value_labels=dict(ann.get("value_labels", {})),
                number_format=ann.get("format"),
                in_persona=ann.get("persona", True),
                invalid=ann.get("invalid", "error"),
            )
        raise_if(problems, DataError, f"invalid profile schema {shown}")
        self.schema = schema
        self.path = path
        self.shown = shown
        self._validator = Draft202012Validator(schema)
        self._memo: dict[tuple, tuple[dict, dict, dict, list]] = {}
        # A required field cannot be unknown, so its invalid value stays an error (the clearer message).
        required = set(schema.get("required", [])) if isinstance(schema.get("required"), list) else set()
        self._lenient = {name for name, spec in self.fields.items() if spec.invalid == "missing" and name not in required}

    @classmethod
    def load(cls, path: str | Path) -> ProfileSchema:
        """Read a profile schema from a JSON file."""
        p = Path(path)
        text = read_text(p, what="profile schema")
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"profile schema is not valid JSON: {display_path(p)}",
                [Problem(f"invalid JSON: {exc.msg}", file=display_path(p), line=exc.lineno, column=exc.colno)],
            ) from None
        if not isinstance(schema, dict):
            raise DataError(
                f"invalid profile schema {display_path(p)}", [Problem("expected a JSON object", file=display_path(p))]
            )
        return cls(schema, p)

    def _typed(self, name: str, value: Any) -> Any:
        """Parse a string cell to the field's declared type; leave it as is when it does not parse."""
        spec = self.fields.get(name)
        if spec is None or not isinstance(value, str) or "string" in spec.types:
            return value
        s = value.strip()
        if "integer" in spec.types and _INT_RE.match(s):
            return int(float(s))
        if "number" in spec.types and _FLOAT_RE.match(s):
            return float(s)
        if "boolean" in spec.types and s.lower() in ("true", "false"):
            return s.lower() == "true"
        return value  # validation will say what was expected and what was found

    def _display(self, name: str, raw: Any, typed: Any) -> str:
        spec = self.fields[name]
        if spec.value_labels:
            keys = [raw.strip()] if isinstance(raw, str) else [json.dumps(raw) if not isinstance(raw, float) else repr(raw)]
            if isinstance(typed, float) and typed.is_integer():
                keys.append(str(int(typed)))  # an integer code stored as 2.0 (e.g. Parquet with gaps) is code "2"
            elif isinstance(typed, int | float) and not isinstance(typed, bool):
                keys.append(str(typed))
            for key in keys:
                if key in spec.value_labels:
                    return spec.value_labels[key]
        if spec.number_format is not None and isinstance(typed, int | float) and not isinstance(typed, bool):
            return format(typed, spec.number_format)
        # The value as the data file wrote it (Psych-201 writes e.g. "31.0"), so that a
        # persona is byte-identical to Psych-201's own persona prompts.
        if isinstance(raw, str):
            return raw.strip()
        return json.dumps(raw) if isinstance(raw, bool) else str(raw)  # JSON true, not Python's True

    def profile(
        self, participant: str, record: dict[str, Any], missing: tuple[str, ...], *, location: Location | None = None
    ) -> tuple[Profile, list[Problem]]:
        """Type, clean and validate one participant's record; returns the profile and its problems."""
        try:
            # Types are part of the key: 1, 1.0 and True are equal (and hash alike) in Python.
            key = (tuple((k, type(v), v) for k, v in record.items()), missing)
            hash(key)
        except TypeError:  # a JSONL record with a list or object value
            key = None
        if key is not None and key in self._memo:
            # Large cohorts repeat the same record many times (a questionnaire's 20,000 rows hold
            # half as many distinct profiles); validation is the expensive part of loading them.
            typed, text, invalid, found = self._memo[key]
            typed, text, invalid = dict(typed), dict(text), dict(invalid)
        else:
            typed, text, invalid, found = self._check(record, missing)
            if key is not None:
                if len(self._memo) >= _MEMO_SIZE:
                    self._memo.clear()
                self._memo[key] = (dict(typed), dict(text), dict(invalid), found)
        problems = []
        location = location or Location(self.shown)
        for path, message in found:
            field_part = f", field {path[0]}" if path else ""
            problems.append(location.problem(message, f"participant {participant}{field_part}"))
        return Profile(participant, typed, text, invalid), problems

    def _check(self, record: dict[str, Any], missing: tuple[str, ...]):
        """Typed values, display texts, invalid values treated as unknown, and ``(path, message)`` problems of a record."""
        missing_set = frozenset(missing)
        raw = {k: v for k, v in record.items() if not is_missing(v, missing_set)}
        typed = {k: self._typed(k, v) for k, v in raw.items()}
        found = list(validation.iter_described(self._validator, typed))
        lenient = {path[0] for path, _ in found if path and path[0] in self._lenient}
        invalid = {}
        if lenient:
            # The field's own constraints failed: the value is unknown, as if missing; the rest of
            # the record is validated again without it (so that `required` still applies).
            invalid = {k: raw.pop(k) for k in self.fields if k in lenient}
            typed = {k: v for k, v in typed.items() if k not in lenient}
            found = list(validation.iter_described(self._validator, typed))
        text = {k: self._display(k, raw[k], typed[k]) for k in typed if k in self.fields}
        return typed, text, invalid, found


@dataclass
class Cohort:
    """Participants' profiles, in file order, keyed by participant id."""

    schema: ProfileSchema
    profiles: dict[str, Profile]
    source: str
    #: Where each participant's profile is, for messages.
    where: dict[str, Location] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.profiles)

    def __iter__(self):
        return iter(self.profiles.values())

    def __getitem__(self, participant: str) -> Profile:
        return self.profiles[participant]


def participant_id(value: Any) -> str | None:
    """Participant ids are labels: integers and strings become strings; anything else is invalid."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def cohort_from_records(
    schema: ProfileSchema,
    records: list[tuple[str, dict[str, Any], Location]],
    missing: tuple[str, ...],
    source: str,
) -> Cohort:
    """Build a cohort from ``(participant, profile record, location)`` triples, validating all of them."""
    problems: list[Problem] = []
    profiles: dict[str, Profile] = {}
    for pid, record, location in records:
        profile, found = schema.profile(pid, record, missing, location=location)
        problems += found
        profiles[pid] = profile
    if not records:
        problems.append(Problem("the cohort has no participants", file=source))
    raise_if(problems, DataError, f"invalid participant profiles in {source}")
    return Cohort(schema, profiles, source, {pid: where for pid, _, where in records})


def load_cohort(
    path: str | Path,
    schema: ProfileSchema,
    *,
    id_column: str | None = "participant",
    missing: tuple[str, ...] = ("", "N/A", "NA", "n/a", "nan", "NaN", "None", "null"),
    exclude: Collection[str] = (),
) -> Cohort:
    """Read profiles from CSV/TSV, JSONL or Parquet (one row per participant) and validate each.

    ``id_column=None`` numbers participants by data row instead: ``"1"`` for the
    first row after the header, and so on (blank lines are not rows). Columns
    in ``exclude`` (e.g. the response columns of a wide trial table that is
    also the cohort file) are not profile fields.
    """
    table = read_table(path, what="cohort file")
    skip = set(exclude)
    if id_column is None:
        records = [
            (str(i + 1), {k: v for k, v in row.items() if k not in skip}, table.location(i)) for i, row in enumerate(table.rows)
        ]
        return cohort_from_records(schema, records, missing, table.path)
    skip.add(id_column)
    if id_column not in table.columns:
        raise DataError(
            f"cohort file has no id column: {table.path}",
            [
                Problem(
                    f"expected a column {id_column!r} (cohort.id), found columns: {', '.join(table.columns) or 'none'}",
                    file=table.path,
                )
            ],
        )
    problems: list[Problem] = []
    records: list[tuple[str, dict[str, Any], Location]] = []
    first_seen: dict[str, Location] = {}
    for i, row in enumerate(table.rows):
        loc = table.location(i)
        pid = participant_id(row.get(id_column))
        if pid is None:
            problems.append(
                loc.problem(f"expected a participant id in column {id_column!r}, found {validation.found(row.get(id_column))}")
            )
            continue
        if pid in first_seen:
            problems.append(loc.problem(f"duplicate participant id {pid!r} (first on {first_seen[pid]})"))
            continue
        first_seen[pid] = loc
        records.append((pid, {k: v for k, v in row.items() if k not in skip}, loc))
    raise_if(problems, DataError, f"invalid cohort file {table.path}")
    return cohort_from_records(schema, records, missing, table.path)
