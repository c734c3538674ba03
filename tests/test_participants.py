"""Participant profiles: explicit typing of CSV strings, missing values, schema checks, and cohort files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from psysim.config import DEFAULT_MISSING
from psysim.errors import DataError, Problem
from psysim.files import Location
from psysim.participants import ProfileSchema, is_missing, load_cohort, participant_id

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "age": {"type": "number", "minimum": 0, "x-psysim": {"question": "What is your age?", "units": "years"}},
        "gender": {"type": "string", "enum": ["Female", "Male"]},
        "kids": {"type": "integer"},
        "smoker": {"type": "boolean"},
        "code": {"type": "string"},
    },
}


@pytest.fixture
def schema() -> ProfileSchema:
    return ProfileSchema(SCHEMA)


def profile(schema: ProfileSchema, record: dict, missing=DEFAULT_MISSING):
    return schema.profile("17", record, missing, location=Location("cohort.csv", line=2))


# -- typing ---------------------------------------------------------------------


def test_number_from_csv_string(schema):
    p, problems = profile(schema, {"age": "31"})
    assert problems == []
    assert p.values == {"age": 31.0}
    assert type(p.values["age"]) is float
    assert p.text == {"age": "31"}


@pytest.mark.parametrize(("cell", "value"), [("31.0", 31.0), ("-2.5e1", -25.0), (".5", 0.5), (" 7 ", 7.0), ("+3", 3.0)])
def test_number_forms(schema, cell, value):
    p, problems = profile(schema, {"age": cell})
    assert p.values == {"age": value}
    if value < 0:
        assert [pr.message for pr in problems] == ["expected a number ≥ 0, found a number -25.0"]
    else:
        assert problems == []


def test_integer_from_csv_string(schema):
    p, problems = profile(schema, {"kids": "31.0"})
    assert problems == []
    assert p.values == {"kids": 31}
    assert type(p.values["kids"]) is int
    assert p.text == {"kids": "31.0"}


def test_integer_with_fraction_stays_a_string(schema):
    p, problems = profile(schema, {"kids": "31.5"})
    assert p.values == {"kids": "31.5"}
    assert problems == [
        Problem('expected an integer, found a string "31.5"', file="cohort.csv", line=2, where="participant 17, field kids")
    ]


def test_typo_stays_a_string_and_fails(schema):
    p, problems = profile(schema, {"age": "3l"})
    assert p.values == {"age": "3l"}
    assert problems == [
        Problem('expected a number, found a string "3l"', file="cohort.csv", line=2, where="participant 17, field age")
    ]
    assert str(problems[0]) == 'cohort.csv:2: participant 17, field age: expected a number, found a string "3l"'


@pytest.mark.parametrize("cell", ["inf", "1,5", "0x10", "31 years"])
def test_not_numbers(schema, cell):
    p, problems = profile(schema, {"age": cell})
    assert p.values == {"age": cell}
    assert [pr.message for pr in problems] == [f"expected a number, found a string {json.dumps(cell)}"]


def test_string_field_is_never_typed(schema):
    p, problems = profile(schema, {"code": "007", "gender": "Female"})
    assert problems == []
    assert p.values == {"code": "007", "gender": "Female"}


@pytest.mark.parametrize(("cell", "value"), [("true", True), ("false", False), ("TRUE", True), (" False ", False)])
def test_booleans(schema, cell, value):
    p, problems = profile(schema, {"smoker": cell})
    assert problems == []
    assert p.values == {"smoker": value}
    assert p.text == {"smoker": cell.strip()}


@pytest.mark.parametrize("cell", ["yes", "1", "t"])
def test_not_booleans(schema, cell):
    p, problems = profile(schema, {"smoker": cell})
    assert p.values == {"smoker": cell}
    assert [pr.message for pr in problems] == [f'expected true or false, found a string "{cell}"']


def test_boolean_is_not_an_integer(schema):
    _, problems = profile(schema, {"kids": True})
    assert [pr.message for pr in problems] == ["expected an integer, found a boolean true"]


def test_field_without_type_keeps_the_string():
    s = ProfileSchema({"type": "object", "properties": {"x": {}}})
    p, problems = s.profile("1", {"x": "31"}, DEFAULT_MISSING)
    assert (p.values, problems) == ({"x": "31"}, [])


# -- missing values ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "  ", "N/A", "NA", "n/a", "nan", "NaN", "None", "null", None, float("nan")])
def test_missing_values_removed_before_validation(value):
    s = ProfileSchema({**SCHEMA, "required": ["age"]})
    p, problems = s.profile("17", {"age": value, "gender": "Male"}, DEFAULT_MISSING, location=Location("c.csv"))
    assert p.values == {"gender": "Male"}
    assert p.text == {"gender": "Male"}
    assert "age" not in p
    assert problems == [Problem("missing required key", file="c.csv", where="participant 17, field age")]


def test_missing_is_what_the_cohort_says():
    s = ProfileSchema(SCHEMA)
    p, problems = s.profile("1", {"age": "-99", "gender": "N/A"}, ("-99",))
    assert p.values == {"gender": "N/A"}
    assert [pr.message for pr in problems] == ['expected one of "Female", "Male"; found a string "N/A"']


def test_is_missing():
    assert is_missing(" NA ", ("NA",)) is True
    assert is_missing("0", ("NA",)) is False
    assert is_missing(0, ("0",)) is False  # only strings are compared with the missing list


def test_all_problems_of_a_profile_together(schema):
    _, problems = profile(schema, {"age": "-1", "gender": "female", "extra": "x"})
    assert [(pr.file, pr.line, pr.where, pr.message) for pr in problems] == [
        ("cohort.csv", 2, "participant 17, field age", "expected a number ≥ 0, found a number -1.0"),
        ("cohort.csv", 2, "participant 17, field extra", "unknown key 'extra'; expected one of: age, code, gender, kids, smoker"),
        (
            "cohort.csv",
            2,
            "participant 17, field gender",
            'expected one of "Female", "Male"; found a string "female" (did you mean \'Female\'?)',
        ),
    ]


# -- invalid schemas -------------------------------------------------------------


def schema_error(schema: dict) -> DataError:
    with pytest.raises(DataError) as info:
        ProfileSchema(schema)
    return info.value


def test_not_a_json_schema():
    err = schema_error({"type": "object", "properties": {"age": {"type": "numbr"}}})
    assert err.message == "invalid profile schema <profile schema> (1 problem)"
    assert len(err.problems) == 1
    p = err.problems[0]
    assert (p.file, p.where) == ("<profile schema>", "properties.age.type")
    assert p.message.startswith("not a valid JSON Schema: 'numbr' is not valid under any of the given schemas")


def test_not_a_json_schema_top_level_type():
    err = schema_error({"type": 5})
    assert err.problems == (
        Problem("not a valid JSON Schema: 5 is not valid under any of the given schemas", file="<profile schema>", where="type"),
    )


@pytest.mark.parametrize("bad", [{"type": "array"}, {"type": "object"}, {"properties": {"age": {}}}])
def test_not_an_object_schema(bad):
    err = schema_error(bad)
    assert err.problems == (
        Problem('expected a schema with "type": "object" and "properties" (one per profile field)', file="<profile schema>"),
    )


def test_bad_annotation_key_with_its_path():
    err = schema_error({"type": "object", "properties": {"age": {"type": "number", "x-psysim": {"questoin": "Age?"}}}})
    assert err.problems == (
        Problem(
            "unknown key 'questoin' (did you mean 'question'?); expected one of: first_person, format, invalid, label, persona, "
            "question, third_person, units, value_labels",
            file="<profile schema>",
            where="properties.age.x-psysim.questoin",
        ),
    )


def test_bad_annotation_values_all_reported():
    err = schema_error(
        {
            "type": "object",
            "properties": {
                "age": {"x-psysim": {"question": ""}},
                "sex": {"x-psysim": {"value_labels": {"1": 2}, "persona": "no"}},
                "hand": {"x-psysim": "left"},
            },
        }
    )
    assert [(p.where, p.message) for p in err.problems] == [
        ("properties.age.x-psysim.question", 'expected a string of at least 1 character, found a string ""'),
        ("properties.sex.x-psysim.persona", 'expected true or false, found a string "no"'),
        ("properties.sex.x-psysim.value_labels.1", "expected a string, found an integer 2"),
        ("properties.hand.x-psysim", 'expected a mapping, found a string "left"'),
    ]


def test_schema_file_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("s.json").write_text('{"type": "object",\n "properties": {,}}', encoding="utf-8")
    with pytest.raises(DataError) as info:
        ProfileSchema.load("s.json")
    assert info.value.message == "profile schema is not valid JSON: s.json"
    assert info.value.problems == (
        Problem("invalid JSON: Expecting property name enclosed in double quotes", file="s.json", line=2, column=17),
    )
    Path("s.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(DataError) as info:
        ProfileSchema.load("s.json")
    assert info.value.problems == (Problem("expected a JSON object", file="s.json"),)
    Path("s.json").write_text(json.dumps({"type": "object", "properties": {"a": {"x-psysim": {"unit": "y"}}}}), encoding="utf-8")
    with pytest.raises(DataError) as info:
        ProfileSchema.load("s.json")
    assert info.value.message == "invalid profile schema s.json (1 problem)"
    assert [(p.file, p.where) for p in info.value.problems] == [("s.json", "properties.a.x-psysim.unit")]


def test_field_specs(schema):
    age = schema.fields["age"]
    assert (age.types, age.label, age.question, age.units) == (("number",), "age", "What is your age?", "years")
    assert list(schema.fields) == ["age", "gender", "kids", "smoker", "code"]
    assert schema.fields["kids"].question == "What is your kids?"


# -- cohorts -------------------------------------------------------------------

COHORT_CSV = "participant,age,gender,kids,smoker\n1,31.0,Female,2,true\n2,N/A,Male,,false\n007,45,,0,\n"
COHORT_JSONL = (
    '{"participant": 1, "age": 31.0, "gender": "Female", "kids": 2, "smoker": true}\n'
    '{"participant": 2, "age": null, "gender": "Male", "smoker": false}\n'
    '{"participant": "007", "age": 45.0, "gender": "", "kids": 0}\n'
)
VALUES = {
    "1": {"age": 31.0, "gender": "Female", "kids": 2, "smoker": True},
    "2": {"gender": "Male", "smoker": False},
    "007": {"age": 45.0, "kids": 0},
}


@pytest.fixture
def cohort_files(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("c.csv").write_text(COHORT_CSV, encoding="utf-8")
    Path("c.jsonl").write_text(COHORT_JSONL, encoding="utf-8")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "participant": ["1", "2", "007"],
            "age": [31.0, None, 45.0],
            "gender": ["Female", "Male", None],
            "kids": [2, None, 0],
            "smoker": [True, False, None],
        }
    )
    pq.write_table(table, "c.parquet")
    return tmp_path


@pytest.mark.parametrize("name", ["c.csv", "c.jsonl", "c.parquet"])
def test_cohort_formats_give_the_same_profiles(cohort_files, schema, name):
    cohort = load_cohort(name, schema)
    assert cohort.source == name
    assert len(cohort) == 3
    assert list(cohort.profiles) == ["1", "2", "007"]
    assert {p.participant: p.values for p in cohort} == VALUES
    assert [type(cohort["1"].values[k]) for k in ("age", "kids", "smoker")] == [float, int, bool]
    assert cohort["1"].text["age"] == "31.0"


def test_cohort_display_text_exactly_as_in_the_file(cohort_files, schema):
    csv = load_cohort("c.csv", schema)
    assert csv["1"].text == {"age": "31.0", "gender": "Female", "kids": "2", "smoker": "true"}
    assert csv["007"].text == {"age": "45", "kids": "0"}
    jsonl = load_cohort("c.jsonl", schema)
    assert jsonl["1"].text["age"] == "31.0"
    assert jsonl["007"].text == {"age": "45.0", "kids": "0"}


def test_jsonl_boolean_display_text_as_in_the_file(cohort_files, schema):
    jsonl = load_cohort("c.jsonl", schema)
    assert jsonl["1"].text["smoker"] == "true"
    assert jsonl["2"].text["smoker"] == "false"


def test_cohort_ids_normalised(tmp_path, monkeypatch, schema):
    monkeypatch.chdir(tmp_path)
    Path("d.jsonl").write_text(
        '{"participant": 1, "age": 31}\n{"participant": "1", "age": 32}\n{"participant": 1.0}\n'
        '{"participant": true}\n{"participant": " "}\n{"age": 3}\n{"participant": " 5 "}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        load_cohort("d.jsonl", schema)
    assert info.value.message == "invalid cohort file d.jsonl (5 problems)"
    assert info.value.problems == (
        Problem("duplicate participant id '1' (first on line 1)", file="d.jsonl", line=2),
        Problem("duplicate participant id '1' (first on line 1)", file="d.jsonl", line=3),
        Problem("expected a participant id in column 'participant', found a boolean true", file="d.jsonl", line=4),
        Problem("expected a participant id in column 'participant', found a string \" \"", file="d.jsonl", line=5),
        Problem("expected a participant id in column 'participant', found nothing (null)", file="d.jsonl", line=6),
    )


def test_participant_id():
    assert [participant_id(v) for v in (1, "1", 1.0, " 1 ", "007", 1.5, True, None, "", [1])] == [
        "1",
        "1",
        "1",
        "1",
        "007",
        None,
        None,
        None,
        None,
        None,
    ]


def test_cohort_id_column_missing(tmp_path, monkeypatch, schema):
    monkeypatch.chdir(tmp_path)
    Path("e.csv").write_text("id,age\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_cohort("e.csv", schema)
    assert info.value.message == "cohort file has no id column: e.csv"
    assert info.value.problems == (Problem("expected a column 'participant' (cohort.id), found columns: id, age", file="e.csv"),)
    assert list(load_cohort("e.csv", schema, id_column="id").profiles) == ["1"]


def test_cohort_profile_problems_located(tmp_path, monkeypatch, schema):
    monkeypatch.chdir(tmp_path)
    Path("c.csv").write_text("participant,age,gender\n1,3l,Female\n2,40,male\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_cohort("c.csv", schema)
    assert info.value.message == "invalid participant profiles in c.csv (2 problems)"
    assert [str(p) for p in info.value.problems] == [
        'c.csv:2: participant 1, field age: expected a number, found a string "3l"',
        'c.csv:3: participant 2, field gender: expected one of "Female", "Male"; found a string "male" '
        "(did you mean 'Female'?)",
    ]


def test_empty_cohort(tmp_path, monkeypatch, schema):
    monkeypatch.chdir(tmp_path)
    Path("f.csv").write_text("participant,age\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_cohort("f.csv", schema)
    assert info.value.problems == (Problem("the cohort has no participants", file="f.csv"),)
