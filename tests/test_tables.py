"""Real-world tables: gzipped and tab/semicolon/pipe-separated files, item tables, wide layouts,
unmatched participants and invalid profile values.

Every input is a small synthetic file in ``tmp_path``; every bad input pins the exact located
message a user reads.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import psysim
from psysim.errors import ConfigError, DataError, Problem, PsysimError, TemplateError
from psysim.files import read_table

# -- reading tables ---------------------------------------------------------------

CSV = "participant,trial,response\n1,1,A\n1,2,B\n"
ROWS = [{"participant": "1", "trial": "1", "response": "A"}, {"participant": "1", "trial": "2", "response": "B"}]


def _write(path: Path, text: str) -> Path:
    if path.name.lower().endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("t.csv", CSV),
        ("t.csv.gz", CSV),
        ("t.tsv", CSV.replace(",", "\t")),
        ("t.tsv.gz", CSV.replace(",", "\t")),
        ("t.csv", CSV.replace(",", "\t")),  # a .csv that is tab-separated, as many exports are
        ("t.csv", CSV.replace(",", ";")),  # European spreadsheets
        ("t.csv", CSV.replace(",", "|")),
        ("T.CSV.GZ", CSV.replace(",", ";")),
    ],
)
def test_tables_read_alike(here, name, text):
    table = read_table(_write(here / name, text))
    assert (table.path, table.columns, table.rows, table.lines) == (name, ["participant", "trial", "response"], ROWS, [2, 3])


def test_delimiter_comes_from_the_header_line_only(here):
    # Semicolons inside later cells do not make the file semicolon-separated.
    table = read_table(_write(here / "t.csv", 'a,b\n"x;y;z",2\n'))
    assert table.rows == [{"a": "x;y;z", "b": "2"}]


def test_one_column_csv_is_comma_separated(here):
    table = read_table(_write(here / "t.csv", "participant\n1\n2\n"))
    assert (table.columns, table.rows) == (["participant"], [{"participant": "1"}, {"participant": "2"}])


def test_tsv_is_always_tab_separated(here):
    table = read_table(_write(here / "t.tsv", "a;b\tc\n1;2\t3\n"))
    assert table.rows == [{"a;b": "1;2", "c": "3"}]


def test_empty_header_cells_are_named_as_pandas_does(here):
    table = read_table(_write(here / "t.csv", ",age,\ns1,30,x\n"))
    assert table.columns == ["Unnamed: 0", "age", "Unnamed: 2"]
    assert table.rows == [{"Unnamed: 0": "s1", "age": "30", "Unnamed: 2": "x"}]


def _table_error(path: Path) -> PsysimError:
    with pytest.raises(DataError) as info:
        read_table(path, what="trial table")
    return info.value


def test_gz_that_is_not_gzip(here):
    here.joinpath("t.csv.gz").write_text(CSV, encoding="utf-8")
    err = _table_error(here / "t.csv.gz")
    assert str(err) == (
        "trial table is not a readable gzip file: t.csv.gz\n"
        "  - t.csv.gz: expected gzip-compressed data (the name ends in .gz), found bytes b'pa' instead of gzip's 1f 8b"
    )


def test_truncated_gz(here):
    here.joinpath("t.csv.gz").write_bytes(gzip.compress(CSV.encode() * 50)[:40])
    err = _table_error(here / "t.csv.gz")
    assert err.problems == (Problem("the compressed data ends early: the file is truncated", file="t.csv.gz"),)


def test_gzip_named_csv(here):
    here.joinpath("t.csv").write_bytes(gzip.compress(CSV.encode()))
    err = _table_error(here / "t.csv")
    assert err.message == "trial table is not UTF-8: t.csv"
    assert err.problems == (
        Problem(
            "the file is gzip-compressed (it starts with bytes 1f 8b) but its name does not end in .gz",
            file="t.csv",
            line=1,
            column=2,
        ),
    )


def test_gz_content_not_utf8_is_located_in_the_uncompressed_text(here):
    here.joinpath("t.csv.gz").write_bytes(gzip.compress(b"a,b\n1,2\n3,caf\xe9\n"))
    err = _table_error(here / "t.csv.gz")
    assert [str(p) for p in err.problems] == [
        "t.csv.gz:3:6: not UTF-8: byte 0xe9 at byte offset 13 cannot be decoded; save the file as UTF-8"
    ]


def test_row_with_the_wrong_number_of_cells_names_the_delimiter(here):
    err = _table_error(_write(here / "t.csv", "a;b;c\n1;2;3\n4;5\n"))
    assert err.message == "trial table is not a valid CSV table: t.csv"
    assert err.problems == (Problem("expected 3 cells (as in the header, semicolon-separated), found 2", file="t.csv", line=3),)
    err = _table_error(_write(here / "t.tsv.gz", "a\tb\n1\t2\t3\n"))
    assert err.message == "trial table is not a valid TSV table: t.tsv.gz"
    assert err.problems == (Problem("expected 2 cells (as in the header, tab-separated), found 3", file="t.tsv.gz", line=2),)


def test_unsupported_suffix(here):
    err = _table_error(_write(here / "t.xlsx", CSV))
    assert str(err) == (
        "trial table has an unsupported format: t.xlsx\n"
        "  - t.xlsx: expected a file ending in .csv, .csv.gz, .tsv, .tsv.gz, .jsonl, .parquet, found '.xlsx'"
    )


# -- a long trial-table experiment -------------------------------------------------

YAML = """\
name: study
seed: 1
data:
  format: trials
  path: trials.csv
  options: [A, B]
  templates:
    trial: trial.jinja
cohort:
  schema: schema.json
  path: cohort.csv
models:
  - name: tiny
conditions: [no_persona, persona]
"""
TRIALS = "participant,trial,response\n1,1,A\n1,2,B\n2,1,B\n2,2,A\n"
ITEMS = "item,stimulus,payoff_A,payoff_B\n1,red,1,2\n2,blue,3,4\n"
TRIAL = "Trial {{ trial + 1 }}: the {{ stimulus }} card ({{ payoff_A }} or {{ payoff_B }}). You choose {{ response }}."
COHORT = "participant,age\n1,30\n2,40\n"
SCHEMA = {
    "type": "object",
    "properties": {"age": {"type": "integer", "minimum": 13, "maximum": 100, "x-psysim": {"units": "years"}}},
}
WITH_ITEMS = YAML.replace("  options: [A, B]\n", "  options: [A, B]\n  items: {path: items.csv}\n")
TEXT_1 = "Trial 1: the red card (1 or 2). You choose <<A>>.\nTrial 2: the blue card (3 or 4). You choose <<B>>."


@dataclass
class Study:
    folder: Path

    def write(self, name: str, text: str) -> Path:
        return _write(self.folder / name, text)

    def load(self) -> psysim.Experiment:
        return psysim.load_experiment(self.folder / "experiment.yaml")

    def error(self, kind: type[PsysimError] = DataError) -> PsysimError:
        with pytest.raises(kind) as info:
            self.load()
        assert type(info.value) is kind
        return info.value


@pytest.fixture
def study(here: Path) -> Study:
    """A long trial table joined with an item table (two participants, two trials each)."""
    s = Study(here)
    s.write("experiment.yaml", WITH_ITEMS)
    s.write("trials.csv", TRIALS)
    s.write("items.csv", ITEMS)
    s.write("trial.jinja", TRIAL)
    s.write("cohort.csv", COHORT)
    s.write("schema.json", json.dumps(SCHEMA))
    return s


@pytest.mark.parametrize("name", ["trials.csv.gz", "trials.tsv", "trials.tsv.gz"])
def test_compressed_and_tab_separated_trial_tables(study, name):
    study.write(name, TRIALS.replace(",", "\t") if ".tsv" in name else TRIALS)
    study.write("experiment.yaml", WITH_ITEMS.replace("path: trials.csv", f"path: {name}"))
    exp = study.load()
    assert exp.transcript("1").text == TEXT_1
    assert exp.transcript("1").source == name


def test_semicolon_cohort_and_gzipped_items(study):
    study.write("cohort.csv", COHORT.replace(",", ";"))
    study.write("items.csv.gz", ITEMS)
    study.write("experiment.yaml", WITH_ITEMS.replace("items.csv", "items.csv.gz"))
    exp = study.load()
    assert exp.profile("2").values == {"age": 40}
    assert exp.transcript("1").text == TEXT_1


def test_wrong_suffixes_are_located_in_the_yaml(study):
    study.write("trials.txt", TRIALS)
    study.write("items.xlsx", ITEMS)
    study.write("cohort.txt", COHORT)
    study.write(
        "experiment.yaml",
        WITH_ITEMS.replace("trials.csv", "trials.txt").replace("items.csv", "items.xlsx").replace("cohort.csv", "cohort.txt"),
    )
    err = study.error(ConfigError)
    assert [str(p) for p in err.problems] == [
        "experiment.yaml:5:9: data.path: expected a .csv, .csv.gz, .tsv, .tsv.gz or .parquet file for format trials, "
        "found 'trials.txt'",
        "experiment.yaml:7:17: data.items.path: expected a .csv, .csv.gz, .tsv, .tsv.gz or .parquet file, found 'items.xlsx'",
        "experiment.yaml:12:9: cohort.path: expected a .csv, .csv.gz, .tsv, .tsv.gz, .jsonl or .parquet file, found 'cohort.txt'",
    ]


# -- data.items (long layout) --------------------------------------------------------


def test_item_columns_are_template_variables_and_response_data(study):
    exp = study.load()
    assert exp.transcript("1").text == TEXT_1
    assert exp.transcript("2").text == TEXT_1.replace("<<A>>", "<<X>>").replace("<<B>>", "<<A>>").replace("<<X>>", "<<B>>")
    assert exp.transcript("1").responses[1].data == {
        "trial": "2",
        "response": "B",
        "item": "2",
        "stimulus": "blue",
        "payoff_A": "3",
        "payoff_B": "4",
    }
    assert exp.summary().data == "trials.csv (trial table, joined with the item table items.csv by item)"


def test_item_key_matched_as_trial_numbers(study):
    study.write("items.csv", ITEMS.replace("\n1,", "\n01,").replace("\n2,", "\n2.0,"))
    assert study.load().transcript("1").text == TEXT_1


def test_item_table_under_the_trial_columns_name(study):
    # The key column may have the trial column's name; it is the join, not a clash.
    study.write("items.csv", ITEMS.replace("item,", "trial,").replace("\n1,", "\n01,"))
    study.write("experiment.yaml", WITH_ITEMS.replace("{path: items.csv}", "{path: items.csv, key: trial}"))
    t = study.load().transcript("1")
    assert t.text == TEXT_1
    assert t.responses[0].data["trial"] == "1"


def test_item_column_in_both_tables_with_equal_values(study):
    study.write("trials.csv", "participant,trial,stimulus,response\n1,1,red,A\n1,2,blue,B\n2,1,red,B\n2,2,blue,A\n")
    assert study.load().transcript("1").text == TEXT_1


def test_item_column_in_both_tables_with_different_values(study):
    study.write("trials.csv", "participant,trial,stimulus,response\n1,1,red,A\n1,2,blue,B\n2,1,red,B\n2,2,green,A\n")
    err = study.error()
    assert err.message == "invalid trial table trials.csv (1 problem)"
    assert [str(p) for p in err.problems] == [
        "trials.csv:5: participant 2, trial 2: column 'stimulus' is in both the trial table trials.csv and the item table "
        "items.csv with different values: 'green' here, 'blue' in the item table (line 3); rename one of them"
    ]


def test_trial_not_in_the_item_table(study):
    study.write("trials.csv", TRIALS + "2,7,B\n")
    err = study.error()
    assert err.problems == (
        Problem(
            "trial 7 (column 'trial') is not in the item table items.csv (key column 'item'); its keys are 1, 2",
            file="trials.csv",
            line=6,
            where="participant 2",
        ),
    )


def test_many_item_keys_are_listed_shortly(study):
    study.write("items.csv", "item,stimulus,payoff_A,payoff_B\n" + "".join(f"{k},red,1,2\n" for k in range(1, 21)))
    study.write("trials.csv", TRIALS + "2,99,B\n")
    (problem,) = study.error().problems
    assert problem.message == (
        "trial 99 (column 'trial') is not in the item table items.csv (key column 'item'); "
        "its keys are 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ... (20 in all)"
    )


def test_item_table_without_its_key_column(study):
    study.write("experiment.yaml", WITH_ITEMS.replace("{path: items.csv}", "{path: items.csv, key: question}"))
    err = study.error()
    assert str(err) == (
        "invalid item table items.csv (1 problem)\n"
        "  - items.csv: expected a key column 'question' (data.items.key), found columns: item, stimulus, payoff_A, payoff_B"
    )


def test_item_table_bad_and_duplicate_keys(study):
    study.write("items.csv", ITEMS + "two,green,5,6\n1,pink,7,8\n")
    err = study.error()
    assert err.message == "invalid item table items.csv (2 problems)"
    assert [str(p) for p in err.problems] == [
        "items.csv:4: expected an integer trial number (matched with column 'trial' of the trial table) in key column "
        "'item', found 'two'",
        "items.csv:5: item 1 appears twice (also line 2)",
    ]


def test_item_table_without_rows(study):
    study.write("items.csv", "item,stimulus\n")
    assert study.error().problems == (Problem("the item table has no rows", file="items.csv"),)


def test_options_from_the_item_table(study):
    study.write("items.csv", "item,stimulus,payoff_A,payoff_B,choices\n1,red,1,2,A|B\n2,blue,3,4,A|B|C\n")
    study.write("experiment.yaml", WITH_ITEMS.replace("options: [A, B]", "options: {column: choices}"))
    t = study.load().transcript("1")
    assert [r.options for r in t.responses] == [("A", "B"), ("A", "B", "C")]


def test_options_column_in_neither_table(study):
    study.write("experiment.yaml", WITH_ITEMS.replace("options: [A, B]", "options: {column: choices}"))
    assert study.error().problems == (
        Problem(
            "expected an options column 'choices' in the trial table or the item table items.csv, "
            "found columns: participant, trial, response",
            file="trials.csv",
        ),
    )


def test_unknown_template_variable_lists_item_columns(study):
    study.write("trial.jinja", "{{ colour }} {{ response }}")
    err = study.error(TemplateError)
    assert err.problems == (
        Problem(
            "unknown variable 'colour'; a trial template can use: item, n_trials, options, participant, payoff_A, payoff_B, "
            "response, row, stimulus, trial",
            file="trial.jinja",
            line=1,
        ),
    )


# -- data.layout: wide ----------------------------------------------------------------

WIDE_YAML = """\
name: survey
seed: 1
data:
  format: trials
  path: data.csv
  layout: wide
  items: {path: items.csv}
  options: ["1", "2", "3"]
  templates:
    instructions: instructions.jinja
    trial: trial.jinja
cohort:
  schema: schema.json
  path: data.csv
  missing: ["", "0"]
models:
  - name: tiny
conditions: [no_persona, persona, shuffled_persona]
"""
# A tab-separated export named .csv, as questionnaire sites write them; no participant column.
WIDE = "age\tcountry\tQ1\tQ2\tQ3\n30\tGB\t1\t2\t3\n40\tUS\t3\t0\t2\n999\tNA\t2\t2\t1\n"
WIDE_ITEMS = "item,text\nQ2,I like coffee.\nQ1,I like tea.\nQ3,I like cake.\n"
WIDE_SCHEMA = {
    "type": "object",
    "properties": {
        "age": {"type": "integer", "minimum": 13, "maximum": 100, "x-psysim": {"invalid": "missing"}},
        "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
    },
}
WIDE_TEXT_1 = (
    "Rate 3 statements from 1 to 3.\n1. I like coffee. Rating: <<2>>\n2. I like tea. Rating: <<1>>\n3. I like cake. Rating: <<3>>"
)


@pytest.fixture
def survey(here: Path) -> Study:
    """A wide questionnaire table that is also its own cohort file; three people, three items."""
    s = Study(here)
    s.write("experiment.yaml", WIDE_YAML)
    s.write("data.csv", WIDE)
    s.write("items.csv", WIDE_ITEMS)
    s.write("instructions.jinja", "Rate {{ n_trials }} statements from 1 to 3.")
    s.write("trial.jinja", "{{ trial + 1 }}. {{ text }} Rating: {{ response }}")
    s.write("schema.json", json.dumps(WIDE_SCHEMA))
    return s


def test_wide_table_becomes_trials_in_item_order(survey):
    exp = survey.load()
    # No participant column: participants are the data rows, in the trial table and the cohort alike.
    assert exp.participants == ["1", "2", "3"]
    assert exp.transcript("1").text == WIDE_TEXT_1
    trials = exp.task.trials["1"]
    assert [(t.index, t.number, t.response, t.row["item"]) for t in trials] == [
        (0, 0, "2", "Q2"),
        (1, 1, "1", "Q1"),
        (2, 2, "3", "Q3"),
    ]
    # The row: the participant's non-item columns, the item's columns, and the response; never the other items' answers.
    assert exp.transcript("1").responses[0].data == {
        "age": "30",
        "country": "GB",
        "item": "Q2",
        "text": "I like coffee.",
        "response": "2",
    }
    assert [t.where for t in trials] == [trials[0].where] * 3
    assert str(trials[0].where) == "line 2"


def test_wide_table_cohort_leaves_out_response_columns(survey):
    exp = survey.load()
    assert exp.profile("1").values == {"age": 30, "country": "GB"}
    assert exp.render("1", "persona").persona == (
        "Interviewer: What is your age?\nInterviewee: 30\n\nInterviewer: What is your country?\nInterviewee: GB\n\n"
    )


def test_wide_summary_missing_responses_and_invalid_values(survey):
    summary = survey.load().summary()
    assert str(summary).splitlines()[1:6] == [
        "  data         data.csv (wide trial table: one row per participant, 3 items of items.csv)",
        "  participants 3",
        "  responses    8 (per participant: median 3, min 2, max 3)",
        "  missing      1 of 9 trials has no human response (1 participant); they are left out of the transcripts: "
        "not shown to the models, not scored",
        "  profiles     known fields: age 2 (1 invalid, treated as unknown), country 3",
    ]


def test_wide_missing_response_left_out(survey):
    exp = survey.load()
    assert exp.transcript("2").text == (
        "Rate 3 statements from 1 to 3.\n2. I like tea. Rating: <<3>>\n3. I like cake. Rating: <<2>>"
    )
    assert [r.data["item"] for r in exp.transcript("2").responses] == ["Q1", "Q3"]
    assert [t.response for t in exp.task.trials["2"]] == [None, "3", "2"]
    assert (exp.task.n_trials("2"), exp.task.n_responses("2"), exp.task.complete("2")) == (3, 2, False)


def test_wide_invalid_value_treated_as_unknown(survey):
    profile = survey.load().profile("3")
    assert (profile.values, profile.invalid) == ({"country": "NA"}, {"age": "999"})


def test_wide_table_with_a_participant_column(survey):
    survey.write("data.csv", "participant,age,country,Q1,Q2,Q3\na,30,GB,1,2,3\nb,40,US,3,0,2\nc,50,FR,2,2,1\n")
    exp = survey.load()
    assert exp.participants == ["a", "b", "c"]
    assert exp.profile("a").values == {"age": 30, "country": "GB"}
    assert exp.transcript("a").text == WIDE_TEXT_1


def test_wide_table_named_participant_column_must_exist(survey):
    survey.write("experiment.yaml", WIDE_YAML.replace("  layout: wide\n", "  layout: wide\n  columns: {participant: pid}\n"))
    err = survey.error()
    assert str(err) == (
        "invalid trial table data.csv (1 problem)\n"
        "  - data.csv: expected a participant column 'pid', found columns: age, country, Q1, Q2, Q3"
    )


def test_wide_table_separate_cohort_file(survey):
    survey.write("cohort.csv", "participant,age,country\n1,30,GB\n2,40,US\n3,50,FR\n")
    survey.write("experiment.yaml", WIDE_YAML.replace("  path: data.csv\n  missing", "  path: cohort.csv\n  missing"))
    exp = survey.load()
    assert exp.profile("3").values == {"age": 50, "country": "FR"}
    assert exp.transcript("3").responses[0].data["age"] == "999"  # the trial table's own column


def test_wide_response_not_among_the_options(survey):
    survey.write("data.csv", WIDE.replace("40\tUS\t3\t0\t2", "40\tUS\t3\t5\t2"))
    err = survey.error()
    assert str(err) == (
        "invalid trial table data.csv (1 problem)\n"
        "  - data.csv:3: participant 2, column Q2: response '5' is not one of the options ['1', '2', '3']"
    )


def test_wide_item_without_a_response_column(survey):
    survey.write("items.csv", WIDE_ITEMS + "Q4,I like pie.\n")
    err = survey.error()
    assert [str(p) for p in err.problems] == [
        "items.csv:5: item 'Q4': expected a response column 'Q4' in the trial table data.csv, found no such column"
    ]


def test_wide_item_key_missing_and_duplicate(survey):
    survey.write("items.csv", WIDE_ITEMS + ",I like pie.\nQ1,Tea again.\n")
    err = survey.error()
    assert err.message == "invalid item table items.csv (2 problems)"
    assert [str(p) for p in err.problems] == [
        "items.csv:5: expected the name of the item's response column in key column 'item', found ''",
        "items.csv:6: item 'Q1' appears twice (also line 3)",
    ]


def test_wide_participant_twice(survey):
    survey.write("data.csv", "participant,age,country,Q1,Q2,Q3\na,30,GB,1,2,3\na,40,US,3,0,2\n")
    err = survey.error()
    assert err.problems == (
        Problem(
            "participant a has a second row (also line 2); a wide table has one row per participant", file="data.csv", line=3
        ),
    )


def test_wide_column_clashes_with_an_item_column(survey):
    survey.write("items.csv", "item,text,country\nQ2,I like coffee.,GB\nQ1,I like tea.,GB\nQ3,I like cake.,GB\n")
    err = survey.error()
    assert err.message == "invalid trial table data.csv (6 problems)"
    assert str(err.problems[0]) == (
        "data.csv:3: participant 2, column Q2: column 'country' is in both the trial table data.csv and the item table "
        "items.csv with different values: 'US' here, 'GB' in the item table (line 2); rename one of them"
    )


def test_wide_item_table_may_not_hold_a_response_column(survey):
    survey.write("items.csv", "item,response\nQ2,x\nQ1,y\nQ3,z\n")
    assert survey.error().problems == (
        Problem(
            "column 'response' would hide each trial's response, which a wide table's trials hold under that name "
            "(data.columns.response); rename the column",
            file="items.csv",
        ),
    )


def test_wide_layout_needs_items(survey):
    survey.write("experiment.yaml", WIDE_YAML.replace("  items: {path: items.csv}\n", ""))
    err = survey.error(ConfigError)
    assert [str(p) for p in err.problems] == [
        "experiment.yaml:6:11: data.layout: a wide table needs data.items: the item table naming each item's column"
    ]


def test_wide_trials_are_built_when_asked_for(survey):
    task = survey.load().task
    assert "2" in task.trials and "9" not in task.trials
    assert list(task.trials) == ["1", "2", "3"] and len(task.trials) == 3
    with pytest.raises(KeyError):
        task.trials["9"]


def test_wide_participant_without_any_response(survey):
    survey.write("data.csv", WIDE + "20\tFR\t0\t0\t\n")
    exp = survey.load()
    assert "4" not in exp.transcripts
    assert str(exp.summary()).splitlines()[4] == (
        "  missing      4 of 12 trials have no human response (2 participants); they are left out of the transcripts: "
        "not shown to the models, not scored; 1 participant has no response at all (simulation only)"
    )


def test_wide_dry_run_scores_every_known_response(survey, tmp_path):
    from psysim.run import run_experiment

    result = run_experiment(survey.load(), out=tmp_path / "run", dry_run=True, progress=False)
    assert len(result.trials) == 3 * 8  # conditions × known responses


# -- cohort.unmatched ---------------------------------------------------------------


def test_unmatched_error_is_the_default(study):
    study.write("cohort.csv", "participant,age\n1,30\n3,50\n")
    err = study.error()
    assert err.message == "participants and data do not match (2 problems)"
    assert [str(p) for p in err.problems] == [
        "cohort.csv:3: participant 3: has a profile but no transcript in trials.csv",
        "trials.csv:4: participant 2: has data but no profile in cohort.csv",
    ]


def test_unmatched_drop_keeps_participants_with_both(study):
    study.write("cohort.csv", "participant,age\n1,30\n3,50\n4,60\n")
    study.write("experiment.yaml", WITH_ITEMS.replace("  path: cohort.csv\n", "  path: cohort.csv\n  unmatched: drop\n"))
    exp = study.load()
    assert exp.participants == ["1"]
    assert exp.dropped == (["3", "4"], ["2"])
    assert "2" not in exp.transcripts
    lines = str(exp.summary()).splitlines()
    assert lines[2:4] == [
        "  participants 1",
        "  dropped      2 with a profile but no data in trials.csv, 1 with data but no profile in cohort.csv "
        "(cohort.unmatched: drop)",
    ]


def test_unmatched_drop_says_so_when_nothing_was_dropped(study):
    study.write("experiment.yaml", WITH_ITEMS.replace("  path: cohort.csv\n", "  path: cohort.csv\n  unmatched: drop\n"))
    assert str(study.load().summary()).splitlines()[3] == (
        "  dropped      0 with a profile but no data in trials.csv, 0 with data but no profile in cohort.csv "
        "(cohort.unmatched: drop)"
    )


def test_unmatched_drop_with_nobody_left(study):
    study.write("cohort.csv", "participant,age\n7,30\n8,50\n")
    study.write("experiment.yaml", WITH_ITEMS.replace("  path: cohort.csv\n", "  path: cohort.csv\n  unmatched: drop\n"))
    err = study.error()
    assert str(err) == (
        "participants and data do not match (1 problem)\n"
        "  - no participant has both a profile in cohort.csv and data in trials.csv (cohort.unmatched: drop dropped "
        "2 profiles and 2 participants' data); profile ids are e.g. 7, 8, data ids e.g. 1, 2"
    )


def test_unmatched_drop_then_sample(study):
    study.write("trials.csv", TRIALS + "".join(f"{p},1,A\n{p},2,B\n" for p in range(3, 9)))
    study.write("cohort.csv", "participant,age\n" + "".join(f"{p},{20 + p}\n" for p in range(2, 12)))
    study.write(
        "experiment.yaml", WITH_ITEMS.replace("  path: cohort.csv\n", "  path: cohort.csv\n  unmatched: drop\n  sample: 3\n")
    )
    exp = study.load()
    summary = exp.summary()
    assert (summary.participants, summary.cohort_size, summary.dropped) == (3, 7, (3, 1))
    assert set(exp.participants) <= {str(p) for p in range(2, 9)}
    assert set(exp.transcripts) == set(exp.participants)  # only the sample is rendered


def test_unmatched_drop_psych201(toy):
    toy.folder.joinpath("cohort.csv").write_text("participant,age,gender\np1,31,Female\np3,45,Male\np9,50,Male\n")
    toy.write_yaml(
        toy.yaml.read_text().replace("  schema: schema.json\n", "  schema: schema.json\n  path: cohort.csv\n  unmatched: drop\n")
    )
    exp = psysim.load_experiment(toy.yaml)
    assert exp.participants == ["p1", "p3"]
    assert sorted(exp.transcripts) == ["p1", "p3"]
    assert exp.summary().dropped == (1, 1)


# -- invalid profile values ----------------------------------------------------------


def test_invalid_value_is_an_error_by_default(study):
    study.write("cohort.csv", "participant,age\n1,30\n2,999\n")
    err = study.error()
    assert [str(p) for p in err.problems] == [
        "cohort.csv:3: participant 2, field age: expected a number ≤ 100, found an integer 999"
    ]


def test_invalid_value_treated_as_unknown(study):
    schema = json.loads(json.dumps(SCHEMA))
    schema["properties"]["age"]["x-psysim"]["invalid"] = "missing"
    study.write("schema.json", json.dumps(schema))
    study.write("cohort.csv", "participant,age\n1,30\n2,1994\n")
    exp = study.load()
    assert (exp.profile("2").values, exp.profile("2").invalid, exp.profile("2").text) == ({}, {"age": "1994"}, {})
    assert exp.render("2", "persona").persona == ""
    assert "  profiles     known fields: age 1 (1 invalid, treated as unknown)" in str(exp.summary()).splitlines()


def test_invalid_value_of_a_required_field_stays_an_error(study):
    schema = json.loads(json.dumps(SCHEMA))
    schema["properties"]["age"]["x-psysim"]["invalid"] = "missing"
    schema["required"] = ["age"]
    study.write("schema.json", json.dumps(schema))
    study.write("cohort.csv", "participant,age\n1,30\n2,1994\n")
    assert [str(p) for p in study.error().problems] == [
        "cohort.csv:3: participant 2, field age: expected a number ≤ 100, found an integer 1994"
    ]


def test_invalid_annotation_value(study):
    schema = json.loads(json.dumps(SCHEMA))
    schema["properties"]["age"]["x-psysim"]["invalid"] = "drop"
    study.write("schema.json", json.dumps(schema))
    assert [str(p) for p in study.error().problems] == [
        'schema.json: properties.age.x-psysim.invalid: expected one of "error", "missing"; found a string "drop"'
    ]


def test_identical_records_validated_once_stay_separate_profiles(study):
    study.write("cohort.csv", "participant,age\n1,30\n2,30\n")
    exp = study.load()
    a, b = exp.profile("1"), exp.profile("2")
    assert (a.values, b.values) == ({"age": 30}, {"age": 30})
    a.values["age"] = 31  # profiles do not share their dicts
    assert b.values == {"age": 30}


def test_parquet_trial_table_joins_csv_items(study):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "participant": [1, 1, 2, 2],
            "trial": [1, 2, 1, 2],
            "stimulus": ["red", "blue", "red", "blue"],
            "response": ["A", "B", "B", "A"],
        }
    )
    pq.write_table(table, study.folder / "trials.parquet")
    study.write("experiment.yaml", WITH_ITEMS.replace("trials.csv", "trials.parquet"))
    t = study.load().transcript("1")
    assert t.text == TEXT_1
    # Integer trial numbers meet the CSV's "1" and "2"; the stimulus columns agree as text.
    assert (t.responses[0].data["trial"], t.responses[0].data["item"]) == (1, "1")
