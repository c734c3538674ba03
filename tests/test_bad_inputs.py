"""Every bad input gives exit code 2 and a located message, never a traceback.

Error messages are API: each test pins the exact lines a user reads on stderr
(the ``error: ...`` header and every ``  - file:line:col: where: message``
problem line). Inputs are built from the ``toy`` experiment by breaking one piece.
"""

from __future__ import annotations

import pytest
from conftest import EXPERIMENT, RECORDS, SCHEMA

COHORT_CSV = "participant,age,gender\np1,31,Female\np2,40,Male\np3,45,Male\n"
WITH_COHORT_CSV = EXPERIMENT.replace("  schema: schema.json\n", "  schema: schema.json\n  path: cohort.csv\n")


def assert_error(result, header: str, *problems: str) -> None:
    """Exit code 2, no traceback, and stderr is exactly the header followed by the problem lines."""
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"error: {header}", *problems]


def records_with(index: int, **changes) -> list[dict]:
    """The toy records with record ``index`` changed."""
    records = [dict(r) for r in RECORDS]
    records[index].update(changes)
    return records


# -- the experiment file (YAML) -------------------------------------------------


def test_the_unbroken_toy_experiment_is_valid(toy, run_cli):
    """The baseline every test below breaks one piece of: it validates (exit 0) with this summary."""
    r = run_cli("validate", "experiment.yaml")
    assert (r.exit_code, r.stderr) == (0, "")
    assert r.stdout.splitlines() == [
        "ok: experiment.yaml is valid",
        "  experiment   toy (toy)",
        "  data         data.jsonl (Psych-201 JSONL)",
        "  participants 3",
        "  responses    6 (per participant: median 2, min 2, max 2)",
        "  profiles     known fields: age 2, gender 3",
        "  study        toy: 3 participants, 6 responses",
        "    options    none (NLL only)",
        "               no options: only NLL is computed (option NLL, accuracy, Brier and pseudo-R² need options)",
        "    items      the trial's text since the previous response: 2 distinct, responses per item median 3 (min 3, max 3)",
        "    example    participant p1, trial 1: 'Pick A or B. You pick' → options none, response 'A'",
        "    example    participant p1, trial 2: '. Again? You pick' → options none, response 'B'",
        "  conditions   no_persona, persona (interview), shuffled_persona (interview)",
        "  models       tiny (raw, chat)",
        "  output       runs/toy",
        "  context      tiny: not checked (unknown model 'tiny': not a registry name, a local model folder or .gguf file)",
    ]


def test_yaml_syntax_error_gives_line_and_column(toy, run_cli):
    """A YAML syntax error names the file, line and column of the offending character."""
    toy.write_yaml("name: toy\n  seed: 7\n")
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "experiment file is not valid YAML: experiment.yaml",
        "  - experiment.yaml:2:7: invalid YAML: mapping values are not allowed here",
    )


def test_unknown_top_level_key_suggests_the_right_one(toy, run_cli):
    """An unknown top-level key is an error with a did-you-mean and the list of allowed keys."""
    toy.write_yaml(EXPERIMENT + "condtions: [persona]\n")
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid experiment file experiment.yaml (1 problem)",
        "  - experiment.yaml:13:1: condtions: unknown key 'condtions' (did you mean 'conditions'?); "
        "expected one of: cohort, conditions, data, description, evaluation, finetune, models, name, output, persona, scoring, "
        "seed, simulation",
    )


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        (
            "  path: data.jsonl\n",
            "  path: data.jsonl\n  fromat: psych201\n",
            "  - experiment.yaml:6:3: data.fromat: unknown key 'fromat' (did you mean 'format'?); "
            "expected one of: columns, experiment, format, item, items, layout, name, options, outside_options, "
            "path, separator, templates",
        ),
        (
            "    chat_template: chatml\n",
            "    chat_template: chatml\n    backnd: mock\n",
            "  - experiment.yaml:12:5: models[0].backnd: unknown key 'backnd' (did you mean 'backend'?); "
            "expected one of: adapter, backend, batch_tokens, chat_template, device, dtype, formats, name, source, "
            "trust_remote_code, vllm",
        ),
    ],
    ids=["data", "models"],
)
def test_unknown_nested_key_suggests_the_right_one(toy, run_cli, old, new, line):
    """An unknown nested key is located by its YAML path, with a did-you-mean and the allowed keys."""
    toy.write_yaml(EXPERIMENT.replace(old, new))
    r = run_cli("validate", "experiment.yaml")
    assert_error(r, "invalid experiment file experiment.yaml (1 problem)", line)


def test_wrong_type_says_expected_and_found(toy, run_cli):
    """A value of the wrong type says what was expected and what was found, at the value's position."""
    toy.write_yaml(EXPERIMENT.replace("seed: 7", "seed: seven"))
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid experiment file experiment.yaml (1 problem)",
        '  - experiment.yaml:2:7: seed: expected an integer, found a string "seven"',
    )


def test_duplicate_yaml_key_is_an_error(toy, run_cli):
    """A key given twice is an error naming both lines (YAML itself would silently keep the last)."""
    toy.write_yaml(EXPERIMENT.replace("  path: data.jsonl\n", "  path: data.jsonl\n  path: other.jsonl\n"))
    r = run_cli("validate", "experiment.yaml")
    # The second value is what YAML keeps, so its (missing) file is reported in the same run.
    assert_error(
        r,
        "invalid experiment file experiment.yaml (2 problems)",
        "  - experiment.yaml:6:3: data.path: duplicate key 'path' (first given on line 5); YAML would silently keep the last",
        "  - experiment.yaml:6:9: data.path: data file not found: 'other.jsonl' "
        "(resolved against the YAML file's folder: other.jsonl)",
    )


def test_missing_required_key(toy, run_cli):
    """A missing required key is named by its YAML path and located at its parent's key (top level: line 1)."""
    toy.write_yaml(EXPERIMENT.replace("seed: 7\n", "").replace("  format: psych201\n", ""))
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid experiment file experiment.yaml (2 problems)",
        "  - experiment.yaml:1:1: seed: missing required key",
        "  - experiment.yaml:2:1: data.format: missing required key",
    )


def test_empty_yaml_file(toy, run_cli):
    """An empty experiment file says so instead of listing every missing key."""
    toy.yaml.write_text("", encoding="utf-8")
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "experiment file is empty: experiment.yaml",
        "  - experiment.yaml: expected a mapping of keys, found an empty file (or only comments)",
    )


def test_all_problems_of_the_yaml_are_reported_at_once(toy, run_cli):
    """Three independent mistakes in one YAML give three problem lines in one run, in file order."""
    toy.write_yaml(
        EXPERIMENT.replace("seed: 7", "seed: -1")
        .replace("name: toy\n", "name: toy\nnmae: x\n")
        .replace("format: psych201", "format: psych101")
    )
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid experiment file experiment.yaml (3 problems)",
        "  - experiment.yaml:2:1: nmae: unknown key 'nmae' (did you mean 'name'?); "
        "expected one of: cohort, conditions, data, description, evaluation, finetune, models, name, output, persona, scoring, "
        "seed, simulation",
        "  - experiment.yaml:3:7: seed: expected a number ≥ 0, found an integer -1",
        '  - experiment.yaml:5:11: data.format: expected one of "psych201", "trials"; found a string "psych101" '
        "(did you mean 'psych201'?)",
    )


def test_schema_problem_and_missing_file_are_reported_together(toy, run_cli):
    """A schema problem and a missing data file in one YAML are both reported in one run."""
    toy.write_yaml(EXPERIMENT.replace("seed: 7", "seed: -1").replace("path: data.jsonl", "path: nope.jsonl"))
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid experiment file experiment.yaml (2 problems)",
        "  - experiment.yaml:2:7: seed: expected a number ≥ 0, found an integer -1",
        "  - experiment.yaml:5:9: data.path: data file not found: 'nope.jsonl' "
        "(resolved against the YAML file's folder: nope.jsonl)",
    )


def test_recursive_yaml_alias_is_an_error_not_a_crash(toy, run_cli):
    """A self-referencing YAML alias is reported as a located problem, not a RecursionError traceback."""
    toy.write_yaml(EXPERIMENT + "description: &a [*a]\n")
    r = run_cli("validate", "experiment.yaml")
    assert r.exit_code == 2
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        "error: experiment file is not valid: experiment.yaml",
        "  - experiment.yaml:13:14: description[0]: recursive YAML alias: the value refers to itself",
    ]


def test_validate_missing_yaml_file(toy, run_cli):
    """`psysim validate` on a file that does not exist says so (exit 2)."""
    r = run_cli("validate", "nope.yaml")
    assert_error(r, "experiment file not found: nope.yaml", "  - nope.yaml: no such file")


# -- files named by the YAML --------------------------------------------------


def test_missing_data_file_is_located_in_the_yaml(toy, run_cli):
    """A data path that does not exist is reported at its YAML line, relative to the YAML's folder."""
    toy.write_yaml(EXPERIMENT.replace("path: data.jsonl", "path: nope/data.jsonl"))
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid experiment file experiment.yaml (1 problem)",
        "  - experiment.yaml:5:9: data.path: data file not found: 'nope/data.jsonl' "
        "(resolved against the YAML file's folder: nope/data.jsonl)",
    )


def test_missing_schema_file_is_located_in_the_yaml(toy, run_cli):
    """A profile-schema path that does not exist is reported at its YAML line, relative to the YAML's folder."""
    toy.write_yaml(EXPERIMENT.replace("schema: schema.json", "schema: schemas/profile.json"))
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid experiment file experiment.yaml (1 problem)",
        "  - experiment.yaml:7:11: cohort.schema: profile schema not found: 'schemas/profile.json' "
        "(resolved against the YAML file's folder: schemas/profile.json)",
    )


def test_missing_data_file_from_parent_folder_shows_the_path_as_written(toy, run_cli):
    """From another folder, a missing data file is shown as written in the YAML, which the note says is YAML-relative."""
    (toy.folder / "exp").mkdir()
    (toy.folder / "exp" / "experiment.yaml").write_text(EXPERIMENT.replace("path: data.jsonl", "path: nope.jsonl"))
    (toy.folder / "exp" / "schema.json").write_text((toy.folder / "schema.json").read_text())
    r = run_cli("validate", "exp/experiment.yaml")
    assert r.exit_code == 2
    [line] = [x for x in r.stderr.splitlines() if x.startswith("  - ")]
    assert line.startswith("  - exp/experiment.yaml:5:9: data.path: data file not found: ")
    assert line.endswith("not found: 'nope.jsonl' (resolved against the YAML file's folder: exp/nope.jsonl)")


# -- profiles and cohorts -----------------------------------------------------


def test_profile_that_violates_its_schema(toy, run_cli):
    """Each invalid profile value names the participant, its JSONL line and the field."""
    records = records_with(1, gender="Other")
    records[2]["age"] = "3l"
    toy.write_records(records)
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid participant profiles in data.jsonl (2 problems)",
        '  - data.jsonl:2: participant p2, field gender: expected one of "Female", "Male"; found a string "Other"',
        '  - data.jsonl:3: participant p3, field age: expected a number, found a string "3l"',
    )


def test_cohort_participant_without_transcript(toy, run_cli):
    """A participant in the cohort CSV with no transcript in the data is an error naming both files."""
    (toy.folder / "cohort.csv").write_text(COHORT_CSV + "p4,50,Female\n")
    toy.write_yaml(WITH_COHORT_CSV)
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "participants and data do not match (1 problem)",
        "  - cohort.csv:5: participant p4: has a profile but no transcript in data.jsonl",
    )


def test_empty_jsonl_file(toy, run_cli):
    """An empty Psych-201 file is an error: the cohort would have no participants."""
    (toy.folder / "data.jsonl").write_text("")
    r = run_cli("validate", "experiment.yaml")
    assert_error(r, "invalid Psych-201 data in data.jsonl (1 problem)", "  - data.jsonl: the file has no participants")


def test_cohort_csv_with_only_a_header(toy, run_cli):
    """A cohort CSV with a header and no rows is an error: the cohort has no participants."""
    (toy.folder / "cohort.csv").write_text("participant,age,gender\n")
    toy.write_yaml(WITH_COHORT_CSV)
    r = run_cli("validate", "experiment.yaml")
    assert_error(r, "invalid participant profiles in cohort.csv (1 problem)", "  - cohort.csv: the cohort has no participants")


def test_duplicate_participant_id_in_jsonl(toy, run_cli):
    """A participant id used twice in the JSONL names both lines."""
    toy.write_records(records_with(2, participant="p1"))
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid Psych-201 data in data.jsonl (1 problem)",
        "  - data.jsonl:3: participant p1: duplicate participant id 'p1' (first on line 1)",
    )


def test_duplicate_participant_id_in_cohort_csv(toy, run_cli):
    """A participant id used twice in the cohort CSV names both lines."""
    (toy.folder / "cohort.csv").write_text(COHORT_CSV + "p2,50,Female\n")
    toy.write_yaml(WITH_COHORT_CSV)
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid cohort file cohort.csv (1 problem)",
        "  - cohort.csv:5: duplicate participant id 'p2' (first on line 3)",
    )


# -- Psych-201 markup -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # offsets are 0-based characters of the record's "text" value
        ("Pick <<A>>, then <<B.\n", "unclosed '<<' at character offset 17 (no '>>' after it)"),
        ("Pick <<A <<B>>.\n", "nested '<<' at character offset 9 (inside the response opened at offset 5)"),
        ("Pick A>>, then <<B>>.\n", "'>>' at character offset 6 closes no response (no '<<' before it)"),
        ("Pick <<>>, then <<B>>.\n", "empty response '<<>>' at character offset 5"),
        ("Café, naïve: <<A>>, then <<B.\n", "unclosed '<<' at character offset 25 (no '>>' after it)"),
    ],
    ids=["unclosed", "nested", "stray-close", "empty", "offset-in-characters"],
)
def test_malformed_markup(toy, run_cli, text, message):
    """Each markup error names the JSONL line, the participant and the character offset in the text."""
    toy.write_records(records_with(1, text=text))
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid Psych-201 data in data.jsonl (1 problem)",
        f"  - data.jsonl:2: participant p2: malformed markup: {message}",
    )


def test_per_response_list_of_wrong_length(toy, run_cli):
    """A per-response list (RTs) whose length differs from the number of responses names line and participant."""
    toy.write_records(records_with(2, RTs=[1, 2, 3]))
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid Psych-201 data in data.jsonl (1 problem)",
        "  - data.jsonl:3: participant p3: per-response list 'RTs' has 3 values but the transcript has 2 responses",
    )


# -- persona templates ----------------------------------------------------------


def test_persona_template_using_a_field_the_schema_lacks(toy, run_cli):
    """A custom persona template that uses profile.income (not in the schema) is an error at its template line."""
    (toy.folder / "persona.jinja").write_text("Age: {{ profile.age }}\nIncome: {{ profile.income }}\n")
    toy.write_yaml(
        EXPERIMENT.replace("[no_persona, persona, shuffled_persona]", "[no_persona, persona]")
        + "persona:\n  format: persona.jinja\n"
    )
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid persona templates (1 problem)",
        "  - persona.jinja:2: profile.income does not exist; profile has: age, gender",
    )


def test_persona_template_problem_is_listed_once_when_two_conditions_share_it(toy, run_cli):
    """A template shared by persona and shuffled_persona reports its problem once."""
    (toy.folder / "persona.jinja").write_text("Age: {{ profile.age }}\nIncome: {{ profile.income }}\n")
    toy.write_yaml(EXPERIMENT + "persona:\n  format: persona.jinja\n")
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid persona templates (1 problem)",
        "  - persona.jinja:2: profile.income does not exist; profile has: age, gender",
    )


def test_persona_template_using_an_unknown_variable(toy, run_cli):
    """A custom persona template that uses an unknown variable is an error listing the variables it can use."""
    (toy.folder / "persona.jinja").write_text("Hello\n{{ salary }}\n")
    toy.write_yaml(
        EXPERIMENT.replace(
            "conditions: [no_persona, persona, shuffled_persona]",
            "conditions:\n  - no_persona\n  - {name: custom, type: persona, format: persona.jinja}",
        )
    )
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "invalid persona templates (1 problem)",
        "  - persona.jinja:2: unknown variable 'salary'; a persona template can use: experiment, fields, participant, profile",
    )


@pytest.mark.parametrize("value", ["{{ 7*7 }}", "{{ ''.__class__ }}", "{% for x in range(3) %}x{% endfor %}"])
def test_template_code_in_a_profile_value_is_literal_text(toy, run_cli, value):
    """Template code in a profile value is data: validate passes and render prints it literally."""
    toy.write_schema({**SCHEMA, "properties": {**SCHEMA["properties"], "gender": {"type": "string"}}})
    toy.write_records(records_with(0, gender=value))
    assert run_cli("validate", "experiment.yaml").exit_code == 0
    r = run_cli("render", "experiment.yaml", "-p", "p1", "-c", "persona", "--text-only")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == (
        "Interviewer: What is your age?\nInterviewee: 31.0\n\n"
        f"Interviewer: What is your gender?\nInterviewee: {value}\n\n"
        "Pick A or B. You pick <<A>>. Again? You pick <<B>>.\n"
    )


# -- encodings --------------------------------------------------------------------


def test_yaml_that_is_not_utf8(toy, run_cli):
    """A non-UTF-8 experiment file names the bad byte, its byte offset, line and column."""
    toy.yaml.write_bytes(b"name: toy\nseed: 7\ndescription: caf\xe9\n")
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "experiment file is not UTF-8: experiment.yaml",
        "  - experiment.yaml:3:17: not UTF-8: byte 0xe9 at byte offset 34 cannot be decoded; save the file as UTF-8",
    )


def test_jsonl_that_is_not_utf8(toy, run_cli):
    """A non-UTF-8 Psych-201 file names the bad byte, its byte offset, line and column."""
    (toy.folder / "data.jsonl").write_bytes(b'{"participant": "p1"}\n{"text": "caf\xe9"}\n')
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "Psych-201 data file is not UTF-8: data.jsonl",
        "  - data.jsonl:2:14: not UTF-8: byte 0xe9 at byte offset 35 cannot be decoded; save the file as UTF-8",
    )


def test_schema_that_is_not_utf8(toy, run_cli):
    """A non-UTF-8 profile schema names the bad byte, its byte offset, line and column."""
    (toy.folder / "schema.json").write_bytes(b'{\n  "type": "object",\n  "title": "\xff"\n}\n')
    r = run_cli("validate", "experiment.yaml")
    assert_error(
        r,
        "profile schema is not UTF-8: schema.json",
        "  - schema.json:3:13: not UTF-8: byte 0xff at byte offset 34 cannot be decoded; save the file as UTF-8",
    )


# -- psysim render arguments ------------------------------------------------------


def test_render_unknown_participant(toy, run_cli):
    """`psysim render -p` with an id not in the cohort says so and shows some valid ids."""
    r = run_cli("render", "experiment.yaml", "-p", "p9")
    assert_error(r, "unknown participant 'p9'; participants are e.g. p1, p2, p3")


def test_render_unknown_condition(toy, run_cli):
    """`psysim render -c` with a condition not in the experiment says so and lists the conditions."""
    r = run_cli("render", "experiment.yaml", "-c", "persona_x")
    assert_error(r, "unknown condition 'persona_x'; this experiment has: no_persona, persona, shuffled_persona")
