"""Persona rendering: Psych-201 parity, missing values, built-in formats, the sandbox, and shuffled personas.

Every expected text is built here independently of psysim (from the raw JSONL
record and the persona wording), or pinned as a literal string.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import RECORDS, SCHEMA

import psysim
from psysim.config import DEFAULT_MISSING
from psysim.errors import DataError, Problem, TemplateError
from psysim.participants import ProfileSchema
from psysim.render.persona import render_persona
from psysim.templating import builtin_templates, load_template

REPO = Path(__file__).resolve().parents[1]

# The toy schema's interview questions, written out by hand (age has an x-psysim question,
# gender gets the default "What is your <label>?").
TOY_QUESTIONS = {"age": "What is your age?", "gender": "What is your gender?"}

P1_INTERVIEW = "Interviewer: What is your age?\nInterviewee: 31.0\n\nInterviewer: What is your gender?\nInterviewee: Female\n\n"
P1_FIRST = "My age is 31.0 years. My gender is Female.\n\n"
P1_THIRD = (
    "The following is a record of one participant in a study. "
    "The participant's age is 31.0 years. The participant's gender is Female.\n\n"
)


# -- helpers ---------------------------------------------------------------------------------------
def is_missing_value(value) -> bool:
    """Psych-201 / psysim notion of an unknown value, written independently."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in DEFAULT_MISSING


def psych201_persona(record: dict, questions: dict[str, str]) -> str:
    """Psych-201's own persona construction: one interview Q/A per known field, values as in the file."""
    out = ""
    for name, question in questions.items():
        value = record.get(name)
        if is_missing_value(value):
            continue
        out += f"Interviewer: {question}\nInterviewee: {value}\n\n"
    return out


def responses_in(text: str) -> list[str]:
    return re.findall(r"<<(.*?)>>", text, flags=re.S)


def write_yaml(
    toy,
    *,
    conditions: str = "[no_persona, persona, shuffled_persona]",
    persona_format: str | None = None,
    cohort_path: str | None = None,
    seed: int = 7,
    formats: str = "[raw, chat]",
    data: str = "data.jsonl",
    schema: str = "schema.json",
) -> Path:
    text = f"""\
name: toy
seed: {seed}
data:
  format: psych201
  path: {data}
cohort:
  schema: {schema}
"""
    if cohort_path:
        text += f"  path: {cohort_path}\n"
    text += f"""\
models:
  - name: tiny
    formats: {formats}
    chat_template: chatml
conditions: {conditions}
"""
    if persona_format:
        text += f"persona:\n  format: {persona_format}\n"
    return toy.write_yaml(text)


def builtin(name: str):
    return load_template(builtin_templates("persona")[name], "persona")


def render_direct(fmt: str, schema_dict: dict, record: dict, pid: str = "x") -> str:
    """Render a built-in persona format without an experiment (bypasses the experiment's static checks)."""
    schema = ProfileSchema(schema_dict)
    profile, problems = schema.profile(pid, record, DEFAULT_MISSING)
    assert problems == []
    return render_persona(builtin(fmt), profile, schema)


# A schema exercising every x-psysim annotation.
RICH_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "age": {
            "type": "number",
            "x-psysim": {
                "question": "How old are you?",
                "units": "years",
                "first_person": "I am {value} years old.",
                "third_person": "The participant is {value} years old.",
            },
        },
        "sex": {"type": "integer", "x-psysim": {"label": "sex", "value_labels": {"1": "male", "2": "female"}}},
        "income": {"type": "number", "x-psysim": {"label": "yearly income", "units": "euros", "format": ".0f"}},
        "notes": {"type": "string", "x-psysim": {"persona": False}},
        "field_of_study": {"type": "string"},
    },
}
RICH_RECORDS = [
    {
        "text": "Choose: <<left>> then <<right>>.\n",
        "experiment": "rich",
        "participant": "r1",
        "age": "31.0",
        "sex": 2,
        "income": "52345.6",
        "notes": "SECRET-NOTE",
        "field_of_study": "psychology",
    },
    {
        "text": "Choose: <<right>> then <<right>>.\n",
        "experiment": "rich",
        "participant": "r2",
        "age": "N/A",
        "sex": "1",
        "income": "",
        "notes": "SECRET-NOTE",
        "field_of_study": None,
    },
    {
        "text": "Choose: <<left>> then <<left>>.\n",
        "experiment": "rich",
        "participant": "r3",
        "age": float("nan"),  # json.dumps writes NaN, which JSON Lines readers in Python accept
        "sex": None,
        "income": "nan",
        "notes": "N/A",
        "field_of_study": "None",
    },
]
RICH_INTERVIEW = {
    "r1": (
        "Interviewer: How old are you?\nInterviewee: 31.0\n\n"
        "Interviewer: What is your sex?\nInterviewee: female\n\n"
        "Interviewer: What is your yearly income?\nInterviewee: 52346\n\n"
        "Interviewer: What is your field of study?\nInterviewee: psychology\n\n"
    ),
    "r2": "Interviewer: What is your sex?\nInterviewee: male\n\n",
    "r3": "",
}
RICH_FIRST = {
    "r1": "I am 31.0 years old. My sex is female. My yearly income is 52346 euros. My field of study is psychology.\n\n",
    "r2": "My sex is male.\n\n",
    "r3": "",
}
RICH_THIRD = {
    "r1": "The following is a record of one participant in a study. The participant is 31.0 years old. "
    "The participant's sex is female. The participant's yearly income is 52346 euros. "
    "The participant's field of study is psychology.\n\n",
    "r2": "The following is a record of one participant in a study. The participant's sex is male.\n\n",
    "r3": "",
}


def rich_experiment(toy, **kwargs):
    toy.write_records(RICH_RECORDS)
    toy.write_schema(RICH_SCHEMA)
    write_yaml(toy, **kwargs)
    return psysim.load_experiment(toy.yaml)


# -- Psych-201 parity ----------------------------------------------------------------------------------
def test_interview_persona_is_psych201_construction(toy):
    exp = psysim.load_experiment(toy.yaml)
    raw = [json.loads(line) for line in (toy.folder / "data.jsonl").read_text("utf-8").splitlines()]
    assert [r["participant"] for r in raw] == ["p1", "p2", "p3"]
    for record in raw:
        expected_persona = psych201_persona(record, TOY_QUESTIONS)
        prompt = exp.render(record["participant"], "persona")
        assert prompt.text == expected_persona + record["text"]
        assert prompt.text.encode("utf-8") == (expected_persona + record["text"]).encode("utf-8")
        assert prompt.persona == expected_persona
        assert prompt.persona_of == record["participant"]
    # Pinned: the value is exactly as in the file ("31.0", not "31"), N/A is left out.
    assert exp.render("p1", "persona").persona == P1_INTERVIEW
    assert exp.render("p2", "persona").persona == "Interviewer: What is your gender?\nInterviewee: Male\n\n"
    assert exp.render("p3", "persona").persona == (
        "Interviewer: What is your age?\nInterviewee: 45\n\nInterviewer: What is your gender?\nInterviewee: Male\n\n"
    )


def test_interview_persona_is_psych201_construction_on_real_data():
    from dataclasses import replace

    config = psysim.load_config(REPO / "experiments" / "quickstart.yaml")
    exp = psysim.Experiment(replace(config, cohort=replace(config.cohort, sample=None)))  # all 301, not the sample
    data = REPO / "participants" / "thoma2025riskychoice" / "prompts.jsonl"
    questions = {
        "age": "What is your age?",
        "gender": "What is your gender?",
        "condition": "Which condition of the study are you in?",
    }
    raw = [json.loads(line) for line in data.read_text("utf-8").splitlines() if line.strip()]
    assert len(raw) == len(exp.participants) == 301
    for record in raw:
        prompt = exp.render(str(record["participant"]), "persona")
        assert prompt.text == psych201_persona(record, questions) + record["text"]
        assert prompt.spans and all(prompt.text[s:e] == r for (s, e), r in zip(prompt.spans, prompt.responses, strict=True))


def test_interview_keeps_json_numbers_as_written(toy):
    records = [
        {**RECORDS[0], "age": 45},
        {**RECORDS[1], "age": 4.75},
        {**RECORDS[2], "age": 31.0},
    ]
    toy.write_records(records)
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "persona").persona.startswith("Interviewer: What is your age?\nInterviewee: 45\n\n")
    assert exp.render("p2", "persona").persona.startswith("Interviewer: What is your age?\nInterviewee: 4.75\n\n")
    assert exp.render("p3", "persona").persona.startswith("Interviewer: What is your age?\nInterviewee: 31.0\n\n")
    for record in records:
        assert exp.render(record["participant"], "persona").text == psych201_persona(record, TOY_QUESTIONS) + record["text"]


# -- no_persona and spans --------------------------------------------------------------------------------
def test_no_persona_is_the_jsonl_text_byte_for_byte(toy):
    exp = psysim.load_experiment(toy.yaml)
    lines = (toy.folder / "data.jsonl").read_bytes().splitlines()
    for line in lines:
        record = json.loads(line)
        prompt = exp.render(record["participant"], "no_persona")
        assert prompt.text.encode("utf-8") == record["text"].encode("utf-8")
        assert prompt.persona == "" and prompt.persona_of is None
        assert list(prompt.responses) == responses_in(record["text"])
        assert [prompt.text[s:e] for s, e in prompt.spans] == list(prompt.responses)
    p1 = exp.render("p1", "no_persona")
    assert p1.spans == ((24, 25), (47, 48))
    assert p1.responses == ("A", "B")


def test_every_span_slices_to_its_response_for_every_format_and_condition(toy):
    exp = psysim.load_experiment(toy.yaml)
    checked = 0
    for record in RECORDS:
        pid = record["participant"]
        expected = responses_in(record["text"])
        for cond in ("no_persona", "persona", "shuffled_persona"):
            for fmt in ("raw", "chat"):
                prompt = exp.render(pid, cond, format=fmt)
                assert list(prompt.responses) == expected
                assert len(prompt.spans) == len(expected)
                assert [prompt.text[s:e] for s, e in prompt.spans] == expected, (pid, cond, fmt)
                assert all(a[1] <= b[0] for a, b in zip(prompt.spans, prompt.spans[1:], strict=False))
                checked += 1
            raw = exp.render(pid, cond)
            base = exp.render(pid, "no_persona")
            shift = len(raw.persona)
            assert raw.spans == tuple((s + shift, e + shift) for s, e in base.spans)
    assert checked == 18


def test_marked_wraps_each_span(toy):
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "no_persona").marked() == "Pick A or B. You pick <<⟦A⟧>>. Again? You pick <<⟦B⟧>>.\n"


# -- missing values --------------------------------------------------------------------------------------
def assert_no_missing_words(text: str) -> None:
    for word in ("N/A", "nan", "NaN", "None", "null"):
        assert word not in text


def test_missing_values_in_jsonl_are_left_out(toy):
    exp = rich_experiment(toy, conditions="[no_persona, persona]")
    for record in RICH_RECORDS:
        pid = record["participant"]
        prompt = exp.render(pid, "persona")
        assert prompt.persona == RICH_INTERVIEW[pid]
        assert prompt.text == RICH_INTERVIEW[pid] + record["text"]
        assert_no_missing_words(prompt.text)
        assert_no_missing_words(exp.render(pid, "persona", format="chat").text)
    # r3 knows nothing: an empty persona, the prompt is the bare transcript with the same spans.
    r3 = exp.render("r3", "persona")
    assert r3.persona == "" and r3.text == RICH_RECORDS[2]["text"]
    assert r3.spans == exp.render("r3", "no_persona").spans
    assert exp.profile("r3").values == {}


def test_missing_values_in_csv_cohort_are_left_out(toy):
    toy.write_records([{k: v for k, v in r.items() if k in ("text", "experiment", "participant")} for r in RECORDS])
    (toy.folder / "cohort.csv").write_text(
        "participant,age,gender\np1,31.0,Female\np2,N/A,Male\np3,,\n",
        encoding="utf-8",
    )
    write_yaml(toy, cohort_path="cohort.csv", conditions="[no_persona, persona]")
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "persona").persona == P1_INTERVIEW
    assert exp.render("p2", "persona").persona == "Interviewer: What is your gender?\nInterviewee: Male\n\n"
    assert exp.render("p3", "persona").persona == ""
    assert exp.render("p3", "persona").text == RECORDS[2]["text"]
    for pid in ("p1", "p2", "p3"):
        assert_no_missing_words(exp.render(pid, "persona").text)


def test_missing_values_in_parquet_cohort_are_left_out(toy):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    toy.write_records([{k: v for k, v in r.items() if k in ("text", "experiment", "participant")} for r in RECORDS])
    table = pa.table(
        {
            "participant": ["p1", "p2", "p3"],
            "age": [31.0, float("nan"), None],
            "gender": ["Female", "Male", None],
        }
    )
    pq.write_table(table, toy.folder / "cohort.parquet")
    write_yaml(toy, cohort_path="cohort.parquet", conditions="[no_persona, persona, shuffled_persona]")
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "persona").persona == P1_INTERVIEW
    assert exp.render("p2", "persona").persona == "Interviewer: What is your gender?\nInterviewee: Male\n\n"
    assert exp.render("p3", "persona").persona == ""
    for pid in ("p1", "p2", "p3"):
        for cond in ("persona", "shuffled_persona"):
            for fmt in ("raw", "chat"):
                assert_no_missing_words(exp.render(pid, cond, format=fmt).text)


@pytest.mark.parametrize("fmt", ["interview", "first_person", "third_person"])
def test_participant_with_no_known_field_gets_empty_persona(fmt):
    assert render_direct(fmt, SCHEMA, {"age": "N/A", "gender": ""}) == ""
    assert render_direct(fmt, SCHEMA, {}) == ""
    assert render_direct(fmt, RICH_SCHEMA, {"notes": "only a hidden field"}) == ""


# -- built-in formats -----------------------------------------------------------------------------------
def test_first_and_third_person_text_for_the_toy_participant():
    record = {"age": "31.0", "gender": "Female"}
    assert render_direct("interview", SCHEMA, record) == P1_INTERVIEW
    assert render_direct("first_person", SCHEMA, record) == P1_FIRST
    assert render_direct("third_person", SCHEMA, record) == P1_THIRD
    # One field only: no trailing separator space.
    assert render_direct("first_person", SCHEMA, {"gender": "Male"}) == "My gender is Male.\n\n"
    assert (
        render_direct("third_person", SCHEMA, {"gender": "Male"})
        == "The following is a record of one participant in a study. The participant's gender is Male.\n\n"
    )


@pytest.mark.parametrize(
    ("fmt", "expected"), [("interview", RICH_INTERVIEW), ("first_person", RICH_FIRST), ("third_person", RICH_THIRD)]
)
def test_annotations_overrides_value_labels_format_and_hidden_fields(fmt, expected):
    for record in RICH_RECORDS:
        profile = {k: v for k, v in record.items() if k not in ("text", "experiment", "participant")}
        text = render_direct(fmt, RICH_SCHEMA, profile, pid=record["participant"])
        assert text == expected[record["participant"]]
        assert "SECRET-NOTE" not in text and "notes" not in text


def test_hidden_field_is_still_validated_and_kept_in_the_profile(toy):
    exp = rich_experiment(toy, conditions="[persona]")
    assert exp.profile("r1").values["notes"] == "SECRET-NOTE"
    assert "SECRET-NOTE" not in exp.render("r1", "persona").text
    bad = [dict(RICH_RECORDS[0], notes=5), *RICH_RECORDS[1:]]
    toy.write_records(bad)
    with pytest.raises(DataError) as info:
        psysim.load_experiment(toy.yaml)
    assert any((p.file, p.line, p.where) == ("data.jsonl", 1, "participant r1, field notes") for p in info.value.problems)


@pytest.mark.parametrize(("fmt", "expected"), [("first_person", P1_FIRST), ("third_person", P1_THIRD)], ids=["first", "third"])
def test_first_and_third_person_formats_in_an_experiment(toy, fmt, expected):
    write_yaml(toy, persona_format=fmt)
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "persona").text == expected + RECORDS[0]["text"]


@pytest.mark.parametrize(("fmt", "expected"), [("first_person", RICH_FIRST), ("third_person", RICH_THIRD)])
def test_rich_first_and_third_person_in_an_experiment(toy, fmt, expected):
    exp = rich_experiment(toy, conditions="[persona]", persona_format=fmt)
    for record in RICH_RECORDS:
        assert exp.render(record["participant"], "persona").text == expected[record["participant"]] + record["text"]


def test_value_labels_and_format_in_an_experiment(toy):
    exp = rich_experiment(toy, conditions="[persona]")
    assert exp.profile("r1").text == {
        "age": "31.0",
        "sex": "female",
        "income": "52346",
        "notes": "SECRET-NOTE",
        "field_of_study": "psychology",
    }
    assert exp.profile("r2").text == {"sex": "male", "notes": "SECRET-NOTE"}
    assert exp.profile("r1").values["sex"] == 2 and exp.profile("r2").values["sex"] == 1


def test_value_labels_apply_to_integer_codes_stored_as_floats(toy):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    toy.write_records([{k: v for k, v in r.items() if k in ("text", "experiment", "participant")} for r in RICH_RECORDS])
    toy.write_schema(RICH_SCHEMA)
    # pandas writes a nullable integer column as float64 with NaN: sex 2.0, 1.0, NaN.
    pq.write_table(pa.table({"participant": ["r1", "r2", "r3"], "sex": [2.0, 1.0, float("nan")]}), toy.folder / "cohort.parquet")
    write_yaml(toy, cohort_path="cohort.parquet", conditions="[persona]")
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("r1", "persona").persona == "Interviewer: What is your sex?\nInterviewee: female\n\n"
    assert exp.render("r2", "persona").persona == "Interviewer: What is your sex?\nInterviewee: male\n\n"


# -- the sandbox --------------------------------------------------------------------------------------
INJECTION_SCHEMA = {
    "type": "object",
    "properties": {
        "nickname": {
            "type": "string",
            "x-psysim": {"first_person": "They call me {value}.", "third_person": "They call the participant {value}."},
        },
        "motto": {"type": "string"},
    },
}
INJECTED = {"nickname": "{{ 7*7 }}", "motto": "{% for x in range(3) %}x{% endfor %}"}


def test_profile_values_are_data_not_template_code(toy):
    toy.write_schema(INJECTION_SCHEMA)
    toy.write_records([{**{k: r[k] for k in ("text", "experiment", "participant")}, **INJECTED} for r in RECORDS])
    exp = psysim.load_experiment(toy.yaml)
    expected = (
        "Interviewer: What is your nickname?\nInterviewee: {{ 7*7 }}\n\n"
        "Interviewer: What is your motto?\nInterviewee: {% for x in range(3) %}x{% endfor %}\n\n"
    )
    for fmt in ("raw", "chat"):
        prompt = exp.render("p1", "persona", format=fmt)
        assert expected in prompt.text
        assert "49" not in prompt.text and "xxx" not in prompt.text
    assert exp.render("p1", "persona").text == expected + RECORDS[0]["text"]
    assert render_direct("first_person", INJECTION_SCHEMA, INJECTED) == (
        "They call me {{ 7*7 }}. My motto is {% for x in range(3) %}x{% endfor %}.\n\n"
    )
    assert render_direct("third_person", INJECTION_SCHEMA, INJECTED) == (
        "The following is a record of one participant in a study. They call the participant {{ 7*7 }}. "
        "The participant's motto is {% for x in range(3) %}x{% endfor %}.\n\n"
    )


def use_template(toy, source: str, name: str = "persona.jinja", **kwargs) -> Path:
    path = toy.folder / name
    path.write_text(source, encoding="utf-8")
    write_yaml(toy, persona_format=name, **kwargs)
    return path


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe."),
        ("{% set _ = fields.append(1) %}x", "access to attribute 'append' of 'list' object is unsafe."),
        ("{{ fields.clear() }}", "access to attribute 'clear' of 'list' object is unsafe."),
        ("{{ (fields | first).__init__.__globals__ }}", "access to attribute '__init__' of 'PersonaField' object is unsafe."),
    ],
)
def test_sandbox_escapes_and_mutation_are_template_errors(toy, run_cli, source, message):
    use_template(toy, source, conditions="[no_persona, persona]", formats="[raw]")
    with pytest.raises(TemplateError) as info:
        psysim.load_experiment(toy.yaml)
    assert str(info.value).startswith("cannot render prompts (3 problems)")
    assert set(info.value.problems) == {
        Problem(message, file="persona.jinja", where=f"participant {pid}", line=1) for pid in ("p1", "p2", "p3")
    }
    r = run_cli("validate", str(toy.yaml))
    assert r.exit_code == 2
    assert "Traceback" not in r.stderr
    assert f"persona.jinja:1: participant p1: {message}" in r.stderr


def test_mutating_the_profile_is_refused_before_rendering(toy, run_cli):
    use_template(toy, "x\n{{ profile.pop('age') }}", conditions="[persona]", formats="[raw]")
    with pytest.raises(TemplateError) as info:
        psysim.load_experiment(toy.yaml)
    assert info.value.problems == (Problem("profile.pop does not exist; profile has: age, gender", file="persona.jinja", line=2),)
    r = run_cli("render", str(toy.yaml))
    assert r.exit_code == 2
    assert "persona.jinja:2: profile.pop does not exist; profile has: age, gender" in r.stderr


def test_sandbox_range_limit_is_a_template_error(toy):
    use_template(toy, "{% for i in range(1000000) %}{% endfor %}", conditions="[persona]", formats="[raw]")
    with pytest.raises(TemplateError) as info:
        psysim.load_experiment(toy.yaml)
    assert info.value.problems[0].file == "persona.jinja"


def test_strict_undefined_gives_a_located_error(toy, run_cli):
    use_template(toy, "Participant {{ participant }}.\nGender: {{ profile.gender }}.\nAge: {{ profile.age }}.\n")
    with pytest.raises(TemplateError) as info:
        psysim.load_experiment(toy.yaml)
    expected = Problem(
        "this participant's profile has no 'age'; guard it with {% if profile.age is defined %}",
        file="persona.jinja",
        where="participant p2",
        line=3,
    )
    assert info.value.message.startswith("cannot render prompts")
    assert set(info.value.problems) == {expected}
    r = run_cli("validate", str(toy.yaml))
    assert r.exit_code == 2
    assert "persona.jinja:3: participant p2: this participant's profile has no 'age'" in r.stderr
    assert "Traceback" not in r.stderr


def test_is_defined_guards_an_optional_field(toy):
    use_template(
        toy, "{% if profile.age is defined %}Age: {{ profile.age.with_units }}.\n{% endif %}Gender: {{ profile.gender }}.\n"
    )
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "persona").persona == "Age: 31.0 years.\nGender: Female.\n"
    assert exp.render("p2", "persona").persona == "Gender: Male.\n"
    assert exp.render("p3", "persona").persona == "Age: 45 years.\nGender: Male.\n"
    assert exp.render("p1", "persona").text == "Age: 31.0 years.\nGender: Female.\n" + RECORDS[0]["text"]


def test_custom_template_sees_participant_experiment_and_field_wording(toy):
    use_template(
        toy,
        "{{ experiment }}/{{ participant }}:{% for f in fields %} [{{ f.name }}|{{ f.label }}|{{ f.question }}|"
        "{{ f }}|{{ f.with_units }}|{{ f.first_person }}]{% endfor %}\n",
    )
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "persona").persona == (
        "toy/p1: [age|age|What is your age?|31.0|31.0 years|My age is 31.0 years.]"
        " [gender|gender|What is your gender?|Female|Female|My gender is Female.]\n"
    )
    # Under shuffled_persona the template sees the *other* participant's profile and id.
    source = exp.shuffle["p1"]
    assert exp.render("p1", "shuffled_persona").persona == exp.render(source, "persona").persona


def test_unknown_profile_field_is_found_statically(toy):
    use_template(toy, "Hello\n{{ profile.income }}\n", conditions="[persona]", formats="[raw]")
    with pytest.raises(TemplateError) as info:
        psysim.load_experiment(toy.yaml)
    assert info.value.problems == (
        Problem("profile.income does not exist; profile has: age, gender", file="persona.jinja", line=2),
    )


# -- shuffled_persona ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 4, 7, 12])
def test_derangement_properties(n):
    ids = [f"id{i}" for i in range(n)]
    seen = set()
    for seed in range(40):
        mapping = psysim.derangement(ids, seed)
        assert list(mapping) == ids
        assert sorted(mapping.values()) == sorted(ids)  # a bijection
        assert all(mapping[k] != k for k in ids)  # nobody gets their own profile
        assert mapping == psysim.derangement(list(ids), seed)  # deterministic
        seen.add(tuple(mapping.values()))
    if n == 2:
        assert seen == {("id1", "id0")}
    else:
        assert len(seen) > 1  # the seed matters


@pytest.mark.parametrize("ids", [[], ["only"]])
def test_derangement_needs_two_ids(ids):
    with pytest.raises(ValueError, match="a derangement needs at least two participants"):
        psysim.derangement(ids, 0)


GROUPS_RAW = GROUPS = {"e1": [f"a{i}" for i in range(6)], "e2": ["b0", "b1", "b2"]}


def grouped_records() -> list[dict]:
    records = []
    for n, (experiment, ids) in enumerate(GROUPS.items()):
        for i, pid in enumerate(ids):
            gender = "Female" if i % 2 else "Male"
            records.append(
                {
                    "text": f"Go <<{pid}>> now.\n",
                    "experiment": experiment,
                    "participant": pid,
                    "age": f"{20 + 10 * n + i}.0",
                    "gender": gender,
                }
            )
    return records


def test_shuffled_persona_mapping_is_a_seeded_derangement_within_each_experiment(toy):
    records = grouped_records()
    toy.write_records(records)
    write_yaml(toy, seed=7)
    first = psysim.load_experiment(toy.yaml)
    second = psysim.load_experiment(toy.yaml)
    assert first.shuffle == second.shuffle
    # The file holds two sub-experiments: each is a study, its ids written <experiment>/<participant>.
    GROUPS = {e: [f"{e}/{p}" for p in ids] for e, ids in GROUPS_RAW.items()}
    expected = {**psysim.derangement(GROUPS["e1"], 7), **psysim.derangement(GROUPS["e2"], 7)}
    assert first.shuffle == expected
    for experiment, ids in GROUPS.items():
        for pid in ids:
            assert first.shuffle[pid] in ids and first.shuffle[pid] != pid, experiment
        assert sorted(first.shuffle[p] for p in ids) == sorted(ids)

    write_yaml(toy, seed=8)
    other = psysim.load_experiment(toy.yaml)
    assert other.shuffle == {**psysim.derangement(GROUPS["e1"], 8), **psysim.derangement(GROUPS["e2"], 8)}
    assert other.shuffle != first.shuffle

    by_id = {f"{r['experiment']}/{r['participant']}": r for r in records}
    for pid, source in first.shuffle.items():
        for fmt in ("raw", "chat"):
            shuffled = first.render(pid, "shuffled_persona", format=fmt)
            assert shuffled.persona_of == source
            assert shuffled.persona == first.render(source, "persona").persona
            assert shuffled.persona == psych201_persona(by_id[source], TOY_QUESTIONS)
            assert [shuffled.text[s:e] for s, e in shuffled.spans] == [pid.split("/")[-1]]
        assert first.render(pid, "shuffled_persona").text == psych201_persona(by_id[source], TOY_QUESTIONS) + by_id[pid]["text"]


def test_toy_shuffled_persona_is_another_participants_persona(toy):
    exp = psysim.load_experiment(toy.yaml)
    assert sorted(exp.shuffle) == ["p1", "p2", "p3"]
    assert sorted(exp.shuffle.values()) == ["p1", "p2", "p3"]
    assert all(exp.shuffle[p] != p for p in exp.shuffle)
    assert exp.shuffle == psysim.derangement(["p1", "p2", "p3"], 7)
    for pid in exp.participants:
        prompt = exp.render(pid, "shuffled_persona")
        assert prompt.persona == exp.render(exp.shuffle[pid], "persona").persona
        assert prompt.text == prompt.persona + exp.render(pid, "no_persona").text


def test_shuffled_persona_needs_two_participants_per_experiment(toy):
    records = [dict(RECORDS[0]), dict(RECORDS[1]), dict(RECORDS[2], experiment="alone")]
    toy.write_records(records)
    with pytest.raises(DataError) as info:
        psysim.load_experiment(toy.yaml)
    assert info.value.problems == (Problem("shuffled_persona needs at least two participants per experiment; 'alone' has 1"),)
    write_yaml(toy, conditions="[no_persona, persona]")
    assert psysim.load_experiment(toy.yaml).shuffle == {}


# -- conditions with their own format ----------------------------------------------------------------
def test_conditions_with_their_own_format_render_differently(toy):
    (toy.folder / "short.jinja").write_text("{% for f in fields %}{{ f.label }}={{ f }};{% endfor %}\n", encoding="utf-8")
    write_yaml(
        toy,
        conditions="""
  - no_persona
  - {name: interview, type: persona}
  - {name: short, type: persona, format: short.jinja}
  - {name: short_shuffled, type: shuffled_persona, format: short.jinja}""",
    )
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "interview").persona == P1_INTERVIEW
    assert exp.render("p1", "short").persona == "age=31.0;gender=Female;\n"
    assert exp.render("p2", "short").persona == "gender=Male;\n"
    source = exp.shuffle["p1"]
    assert exp.render("p1", "short_shuffled").persona == exp.render(source, "short").persona
    assert exp.render("p1", "short_shuffled").persona_of == source


def test_interview_and_first_person_conditions_render_differently(toy):
    write_yaml(
        toy,
        conditions="""
  - {name: interview, type: persona, format: interview}
  - {name: first, type: persona, format: first_person}
  - {name: third, type: persona, format: third_person}""",
    )
    exp = psysim.load_experiment(toy.yaml)
    assert exp.render("p1", "interview").persona == P1_INTERVIEW
    assert exp.render("p1", "first").persona == P1_FIRST
    assert exp.render("p1", "third").persona == P1_THIRD
