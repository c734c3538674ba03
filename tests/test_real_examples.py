"""The two experiments on real data in ../shared/data: experiments/big5 and experiments/holt_laury.

Each validates, and what psysim reads is checked against the files themselves, read here
independently (csv, gzip, the codebook) rather than through psysim. Skipped cleanly where the
shared data is absent.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import re

import pandas as pd
import pytest
from conftest import REPO, needs_shared_data

import psysim

pytestmark = pytest.mark.shared_data

BIG5 = REPO / "experiments" / "big5" / "big5.yaml"
HOLT_LAURY = REPO / "experiments" / "holt_laury" / "holt_laury.yaml"


@pytest.fixture(scope="module")
def big5() -> psysim.Experiment:
    needs_shared_data("openpsychometrics", "BIG5", "data.csv")
    return psysim.load_experiment(BIG5)


@pytest.fixture(scope="module")
def holt_laury() -> psysim.Experiment:
    needs_shared_data("self_regulation_ontology", "Individual_Measures", "holt_laury_survey.csv.gz")
    return psysim.load_experiment(HOLT_LAURY)


def _big5_rows() -> list[dict[str, str]]:
    text = needs_shared_data("openpsychometrics", "BIG5", "data.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


# -- big5 -----------------------------------------------------------------------------


def test_big5_validates(run_cli):
    needs_shared_data("openpsychometrics", "BIG5", "data.csv")
    r = run_cli("validate", str(BIG5))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ok: ") and lines[0].endswith("big5.yaml is valid")
    assert lines[2].endswith("(wide trial table: one row per participant, 50 items of experiments/big5/items.csv)")
    assert lines[3] == "  participants 200 (a seeded sample of 19719)"
    profiles = next(line for line in lines if line.startswith("  profiles"))
    assert re.fullmatch(r"  profiles     known fields: race \d+, age \d+ \(\d+ invalid, treated as unknown\), .*", profiles)
    assert (
        lines[-1] == "  context      smollm2-135m-instruct (raw): all 600 transcripts fit its context"
        or "not pulled" in lines[-1]
    )


def test_big5_survey_journey_simulates_generated_respondents_and_exports_wide(run_cli, tmp_path):
    """experiments/big5/survey.yaml (BENCHMARKS.md times it with the model): here its dry run, validate to export."""
    needs_shared_data("openpsychometrics", "BIG5", "data.csv")
    survey = REPO / "experiments" / "big5" / "survey.yaml"
    r = run_cli("validate", str(survey))
    assert r.exit_code == 0, r.stderr
    assert "synthetic    psysim simulate draws 200 profiles: each a real participant's profile drawn with replacement" in r.stdout
    out = tmp_path / "sim"
    r = run_cli("simulate", str(survey), "--dry-run", "--n", "6", "-q", "--out", str(out))
    assert r.exit_code == 0, r.stderr
    assert run_cli("report", str(out)).exit_code == 0
    r = run_cli("export", str(out), "--format", "csv", "--layout", "wide")
    assert r.exit_code == 0, r.stderr
    wide = pd.read_csv(out / "export" / "wide.csv", dtype=str)
    assert len(wide) == 6 and wide["participant"].tolist() == [f"s{i:04d}" for i in range(1, 7)]
    items = [i["item"] for i in csv.DictReader((REPO / "experiments" / "big5" / "items.csv").open(encoding="utf-8"))]
    assert wide.columns[-50:].tolist() == items
    assert set(wide[items].stack()) <= {"1", "2", "3", "4", "5"}


def test_big5_items_are_the_codebooks_in_the_order_shown():
    codebook = needs_shared_data("openpsychometrics", "BIG5", "codebook.txt").read_text(encoding="utf-8")
    wording = dict(re.findall(r"^([ENACO]\d+)\t(.+?)\s*$", codebook, re.M))
    items = list(csv.DictReader((REPO / "experiments" / "big5" / "items.csv").open(encoding="utf-8")))
    assert [i["item"] for i in items] == [f"{t}{k}" for k in range(1, 11) for t in "ENACO"]
    assert {i["item"]: i["text"] for i in items} == wording


def test_big5_transcripts_are_the_rows_of_the_file(big5):
    rows = _big5_rows()
    assert len(rows) == 19719
    order = [i["item"] for i in csv.DictReader((REPO / "experiments" / "big5" / "items.csv").open(encoding="utf-8"))]
    for pid in big5.participants[:20]:
        row = rows[int(pid) - 1]  # participants are numbered by data row
        expected = [row[k] for k in order if row[k] != "0"]  # 0 = missed: left out
        transcript = big5.transcript(pid)
        assert [r.text for r in transcript.responses] == expected
        assert [r.data["item"] for r in transcript.responses] == [k for k in order if row[k] != "0"]
        age = int(row["age"])
        assert big5.profile(pid).values.get("age") == (age if 13 <= age <= 100 else None)


def test_big5_impossible_ages_are_unknown_not_errors(big5):
    invalid = {pid: p.invalid["age"] for pid, p in big5.cohort.profiles.items() if "age" in p.invalid}
    rows = _big5_rows()
    assert invalid == {str(i + 1): r["age"] for i, r in enumerate(rows) if not 13 <= int(r["age"]) <= 100}
    assert "999999999" in invalid.values()


def test_big5_participant_who_missed_everything_is_simulation_only(big5):
    rows = _big5_rows()
    items = [k for k in rows[0] if re.fullmatch(r"[ENACO]\d+", k)]
    missed = [str(i + 1) for i, r in enumerate(rows) if all(r[k] == "0" for k in items)]
    assert missed and all(big5.task.n_responses(pid) == 0 for pid in missed)


@pytest.mark.slow  # the profile baseline fits 50 items × 5 folds (about a minute on 2 CPU cores)
def test_big5_dry_run(run_cli, tmp_path):
    needs_shared_data("openpsychometrics", "BIG5", "data.csv")
    r = run_cli("run", str(BIG5), "--dry-run", "--limit", "5", "--quiet", "--out", str(tmp_path))
    assert r.exit_code == 0, r.stderr
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    exp = psysim.load_experiment(BIG5)
    first = exp.participants[:5]
    assert len(trials) == 3 * sum(exp.task.n_responses(p) for p in first)


# -- holt_laury -------------------------------------------------------------------------


def _holt_laury_rows() -> list[dict[str, str]]:
    path = needs_shared_data("self_regulation_ontology", "Individual_Measures", "holt_laury_survey.csv.gz")
    return list(csv.DictReader(io.StringIO(gzip.decompress(path.read_bytes()).decode("utf-8"))))


def test_holt_laury_validates(run_cli):
    needs_shared_data("self_regulation_ontology", "Individual_Measures", "holt_laury_survey.csv.gz")
    r = run_cli("validate", str(HOLT_LAURY))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[3:5] == ["  participants 522", "  responses    5206 (per participant: median 10, min 9, max 10)"]
    assert lines[5] == "  profiles     known fields: Sex 522, Age 522, HighestEducation 522, HouseholdIncome 522"


def test_holt_laury_gambles_are_the_tasks_options():
    rows = _holt_laury_rows()
    gambles = {g["question_num"]: g for g in csv.DictReader((REPO / "experiments" / "holt_laury" / "gambles.csv").open())}
    assert sorted(gambles, key=int) == [str(q) for q in range(2, 12)]
    for row in rows:
        texts = [o["text"].replace(" <br> ", ", ") for o in ast.literal_eval(row["options"])]
        assert texts == [gambles[row["question_num"]]["option_1"], gambles[row["question_num"]]["option_2"]]


def test_holt_laury_transcripts_are_the_rows_of_the_file(holt_laury):
    by_worker: dict[str, list[tuple[int, str]]] = {}
    for row in _holt_laury_rows():
        by_worker.setdefault(row["worker_id"], []).append((int(row["question_num"]), row["response"]))
    assert sorted(holt_laury.participants) == sorted(by_worker)
    for pid in ["s001", "s013", "s553"]:
        transcript = holt_laury.transcript(pid)
        assert [r.text for r in transcript.responses] == [resp for _, resp in sorted(by_worker[pid])]
        assert all(r.options == ("1", "2") for r in transcript.responses)
    # s013 did not see pair 7 (question 8): nine decisions, numbered as shown.
    assert "Decision 7:" not in holt_laury.transcript("s013").text
    assert holt_laury.profile("s001").values["Sex"] == "1"
    assert holt_laury.render("s001", "persona").persona.startswith("Interviewer: What is your sex?\nInterviewee: Female\n\n")


def test_holt_laury_dry_run(run_cli, tmp_path):
    needs_shared_data("self_regulation_ontology", "Individual_Measures", "holt_laury_survey.csv.gz")
    r = run_cli("run", str(HOLT_LAURY), "--dry-run", "--limit", "5", "--quiet", "--out", str(tmp_path))
    assert r.exit_code == 0, r.stderr
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    first = list(dict.fromkeys(row["worker_id"] for row in _holt_laury_rows()))[:5]
    counts = pd.Series([row["worker_id"] for row in _holt_laury_rows()]).value_counts()
    assert list(dict.fromkeys(trials["participant"].astype(str))) == first
    assert len(trials) == 3 * int(counts[first].sum())
