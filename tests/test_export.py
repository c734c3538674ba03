"""psysim export: tidy CSV and Parquet that read back exactly, Psych-201 JSONL that psysim reads back, a data dictionary."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_simulate import gambles, simulate  # noqa: F401 (gambles is a fixture)
from test_tables import here, survey  # noqa: F401 (fixtures)

from psysim.data.transcripts import read_psych201


def test_csv_and_parquet_of_a_simulation_read_back_equal(gambles, run_cli):  # noqa: F811
    t = simulate(run_cli, "--dry-run", "--out", "out")
    for fmt in ("csv", "parquet"):
        r = run_cli("export", "out", "--format", fmt)
        assert r.exit_code == 0, r.stderr
        assert r.stdout.splitlines() == [f"wrote out/export/simulated.{fmt}", "wrote out/export/data_dictionary.csv"]
    parquet = pd.read_parquet("out/export/simulated.parquet")
    csv = pd.read_csv("out/export/simulated.csv", dtype={"participant": str, "design_of": str, "persona_of": str, "source": str})
    sim = t["simulated"]
    assert len(parquet) == len(csv) == len(sim)
    assert parquet[sim.columns.tolist()].astype(str).equals(sim.astype(str))  # the simulation's rows, unchanged
    for column in ("options", "option_probs", "option_logprobs", "sampling_probs"):
        assert [json.loads(v) for v in csv[column]] == [list(v) for v in sim[column]]  # JSON lists: exact round trip
    assert csv["response"].tolist() == sim["response"].tolist()
    # profiles joined per participant; one probability column per option
    profile = t["participants"].set_index("participant")
    assert csv["profile.gender"].tolist() == [profile.at[p, "profile.gender"] for p in sim["participant"]]
    assert csv["prob.A"].tolist() == pytest.approx([p[0] for p in sim["option_probs"]], abs=1e-15)
    assert csv["prob.B"].tolist() == pytest.approx([p[1] for p in sim["option_probs"]], abs=1e-15)


def test_psych201_export_is_read_back_by_psysim(gambles, run_cli):  # noqa: F811
    """One JSONL per model × condition; text without the persona; profile fields as keys; read_psych201 parses it."""
    t = simulate(run_cli, "--dry-run", "--out", "out")
    r = run_cli("export", "out", "--format", "psych201")
    assert r.exit_code == 0, r.stderr
    tr = t["transcripts"]
    for cond in ("no_persona", "persona", "shuffled_persona"):
        records = read_psych201(f"out/export/tiny__{cond}.jsonl")
        expected = tr[tr["condition"] == cond]
        assert [rec.transcript.participant for rec in records] == expected["participant"].tolist()
        for rec, row in zip(records, expected.itertuples(index=False), strict=True):
            assert rec.transcript.text == row.text[len(row.persona) :]
            sim = t["simulated"]
            mine = sim[(sim["condition"] == cond) & (sim["participant"] == row.participant)]
            assert [x.text for x in rec.transcript.responses] == mine["response"].tolist()
    first = [json.loads(line) for line in open("out/export/tiny__persona.jsonl", encoding="utf-8")]
    assert first[0]["age"] == 31.0 and first[0]["gender"] == "Female"
    assert "age" not in first[1]  # p2's age is unknown: left out, never "nan"


def test_data_dictionary_covers_every_column_of_every_file(gambles, run_cli):  # noqa: F811
    simulate(run_cli, "--dry-run", "--out", "out")
    for fmt in ("csv", "psych201"):
        assert run_cli("export", "out", "--format", fmt).exit_code == 0
    dictionary = pd.read_csv("out/export/data_dictionary.csv")
    files = {"simulated.csv": list(pd.read_csv("out/export/simulated.csv").columns)}
    files |= {f"tiny__{c}.jsonl": ["text", "experiment", "participant", "age", "gender"] for c in ("no_persona", "persona")}
    for name, columns in files.items():
        described = dictionary[dictionary["file"] == name]
        assert set(columns) <= set(described["column"]), name
        assert described["meaning"].str.len().gt(10).all()
    row = dictionary[(dictionary["file"] == "simulated.csv") & (dictionary["column"] == "option_probs")].iloc[0]
    assert row["type"] == "list of numbers"
    assert row["meaning"].startswith("The model's probability of each option")


def test_scoring_runs_export_as_tables_but_not_as_transcripts(toy, run_cli):
    from test_run import DRY

    toy.write_yaml(DRY)
    assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out").exit_code == 0
    r = run_cli("export", "out", "--format", "csv")
    assert r.exit_code == 0, r.stderr
    table = pd.read_csv("out/export/trials.csv")
    assert len(table) == 36 and "profile.gender" in table and "prob.A" in table
    r = run_cli("export", "out", "--format", "psych201")
    assert r.exit_code == 2
    assert "error: out is a scoring run: it holds scores of human transcripts, not new transcripts" in r.stderr


def test_export_of_an_incomplete_or_missing_run(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("export", "nowhere", "--format", "csv")
    assert r.exit_code == 2 and "error: run folder not found: nowhere" in r.stderr


def test_wide_export_is_one_row_per_respondent_with_item_codes_and_value_labels(survey, run_cli):  # noqa: F811
    """As survey tools export a questionnaire: item codes as columns, profiles beside them, labels in the dictionary."""
    schema = json.loads(survey.folder.joinpath("schema.json").read_text("utf-8"))
    schema["properties"]["country"]["x-psysim"] = {"value_labels": {"GB": "United Kingdom", "US": "United States"}}
    survey.write("schema.json", json.dumps(schema))
    assert run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out").exit_code == 0
    r = run_cli("export", "out", "--format", "csv", "--layout", "wide")
    assert r.exit_code == 0, r.stderr
    wide = pd.read_csv("out/export/wide.csv", dtype=str, keep_default_na=False)
    sim = pd.read_parquet("out/simulated.parquet")
    assert list(wide.columns) == [
        "model", "condition", "participant", "design_of", "source", "profile.age", "profile.country", "Q2", "Q1", "Q3"
    ]  # fmt: skip
    assert len(wide) == 3 * 3  # conditions × respondents
    for row in wide.itertuples(index=False):
        mine = sim[(sim["condition"] == row.condition) & (sim["participant"] == row.participant)]
        assert dict(zip(mine["item_code"], mine["response"], strict=True)) == {"Q2": row.Q2, "Q1": row.Q1, "Q3": row.Q3}
    assert wide.loc[wide["participant"] == "1", "profile.country"].tolist() == ["GB"] * 3
    dictionary = pd.read_csv("out/export/data_dictionary.csv", keep_default_na=False).set_index("column")
    assert dictionary.at["profile.country", "values"] == "GB = United Kingdom; US = United States"
    assert dictionary.at["Q1", "meaning"] == "Response to item Q1: 2. I like tea. Rating:"
    assert dictionary.at["Q1", "values"] == "options: 1, 2, 3"
    # A scoring run's responses are the humans' own: refused, with what to do instead.
    assert run_cli("run", "experiment.yaml", "-q", "--dry-run", "--out", "scored").exit_code == 0
    r = run_cli("export", "scored", "--format", "csv", "--layout", "wide")
    assert r.exit_code == 2 and "export a simulation run with --layout wide" in r.stderr
    r = run_cli("export", "out", "--format", "psych201", "--layout", "wide")
    assert r.exit_code == 2 and "Psych-201 JSONL is one transcript per line: it has no wide layout" in r.stderr


@pytest.mark.parametrize("fmt", ["stata", "spss"])
def test_stata_and_spss_exports_carry_variable_and_value_labels(survey, run_cli, fmt):  # noqa: F811
    """Read back with pandas (Stata) or pyreadstat (SPSS): numbers stay numbers, labels attach, names are legal."""
    if fmt == "spss":
        pyreadstat = pytest.importorskip("pyreadstat")
    schema = json.loads(survey.folder.joinpath("schema.json").read_text("utf-8"))
    schema["properties"]["gender"] = {
        "type": "integer",
        "enum": [1, 2],
        "x-psysim": {"value_labels": {"1": "Male", "2": "Female"}},
    }
    survey.write("schema.json", json.dumps(schema))
    survey.write("data.csv", "age\tcountry\tgender\tQ1\tQ2\tQ3\n30\tGB\t2\t1\t2\t3\n40\tUS\t1\t3\t0\t2\n999\tNA\t1\t2\t2\t1\n")
    assert run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out").exit_code == 0
    r = run_cli("export", "out", "--format", fmt)
    assert r.exit_code == 0, r.stderr
    assert run_cli("export", "out", "--format", "csv", "--layout", "wide").exit_code == 0  # the same table, as text
    wide = pd.read_csv("out/export/wide.csv", dtype={"participant": str, "source": str, "design_of": str})
    if fmt == "stata":
        reader = pd.io.stata.StataReader("out/export/wide.dta")
        with reader:
            data = reader.read(convert_categoricals=False)
            var_labels, value_labels = reader.variable_labels(), reader.value_labels()
        gender_codes = value_labels[next(iter(value_labels))]
    else:
        data, meta = pyreadstat.read_sav("out/export/wide.sav")
        var_labels = dict(zip(meta.column_names, meta.column_labels, strict=True))
        gender_codes = meta.variable_value_labels["gender"]
    assert list(data.columns) == [
        "model",
        "condition",
        "participant",
        "design_of",
        "source",
        "age",
        "country",
        "gender",
        "Q2",
        "Q1",
        "Q3",
    ]
    assert data["Q1"].tolist() == wide["Q1"].astype(float).tolist()  # responses are numbers, as a rating scale is
    assert data["gender"].tolist() == wide["profile.gender"].astype(float).tolist()
    assert {float(k): v for k, v in gender_codes.items()} == {1.0: "Male", 2.0: "Female"}
    assert var_labels["Q1"] == "Q1: 2. I like tea. Rating:"
    assert var_labels["age"] == "What is your age?"  # the field's question
    assert var_labels["participant"].startswith("Participant id")  # the data dictionary's meaning, cut to 80 characters
