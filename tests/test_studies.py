"""Per-study rules: each response's options are what its own trial offered, items are shared stimuli, several
studies load side by side; bad declarations stop located, before any model loads."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import EXPERIMENT, RECORDS

import psysim
from psysim.baselines import response_table
from psysim.errors import PsysimError


def with_data(data_block: str) -> str:
    """The toy experiment with its data section replaced."""
    head, rest = EXPERIMENT.split("data:\n", 1)
    tail = rest.split("cohort:", 1)[1]
    return head + "data:\n" + data_block + "cohort:" + tail


def trial_records(texts: dict[str, str]) -> list[dict]:
    return [{"text": t, "experiment": "lex", "participant": p, "age": "30", "gender": "Male"} for p, t in texts.items()]


# Counterbalanced keys: each person's instructions say which key means "the word exists".
COUNTERBALANCED = {
    "p1": "Press C if the word exists and R if it does not.\nWord: cat. You press <<C>>.\nWord: blorp. You press <<R>>.\n",
    "p2": "Press R if the word exists and C if it does not.\nWord: cat. You press <<R>>.\nWord: blorp. You press <<C>>.\n",
    "p3": "Press J if the word exists and F if it does not.\nWord: cat. You press <<J>>.\nWord: blorp. You press <<J>>.\n",
}


def test_options_from_a_pattern_on_each_trial(toy):
    """A pattern read on each trial's own text gives that trial's options; roles name what each stands for."""
    toy.write_records(
        trial_records(
            {
                "p1": "Seven cards are marked 'O' and three cards are marked 'Q'. You predict <<O>>.\n"
                "Three cards are marked 'Z' and seven cards are marked 'V'. You predict <<Z>>.\n",
                "p2": "Seven cards are marked 'A' and three cards are marked 'B'. You predict <<B>>.\n"
                "Three cards are marked 'X' and seven cards are marked 'E'. You predict <<E>>.\n",
            }
        )
    )
    toy.write_schema({"type": "object", "properties": {"age": {"type": "number"}, "gender": {"type": "string"}}})
    toy.write_yaml(
        with_data(
            "  format: psych201\n  path: data.jsonl\n  options:\n"
            "    pattern: \"(?i)(?P<role>seven|three) \\\\w+ are marked '(?P<option>\\\\w)'\"\n  item: position\n"
        )
    )
    exp = psysim.load_experiment(toy.yaml)
    p1, p2 = (exp.transcript(p).responses for p in ("p1", "p2"))
    assert [r.options for r in p1] == [("O", "Q"), ("Z", "V")]
    assert [r.roles for r in p1] == [("seven", "three"), ("three", "seven")]
    assert [r.role for r in p1] == ["seven", "three"] and [r.role for r in p2] == ["three", "seven"]
    assert [r.item for r in p1] == ["trial 1", "trial 2"]
    table = response_table(exp)
    assert table["keys"].map(sorted).map(tuple).unique().tolist() == [("seven", "three")]


def test_options_from_the_instructions_for_counterbalanced_keys(toy):
    """Keys assigned per participant are read from their instructions; the population pools by role, not letter."""
    toy.write_records(trial_records(COUNTERBALANCED))
    toy.write_yaml(
        with_data(
            "  format: psych201\n  path: data.jsonl\n  options:\n"
            '    pattern: "Press (\\\\w) if the word exists and (\\\\w) if it does not"\n'
            "    from: instructions\n    roles: [exists, absent]\n"
            '  item: {pattern: "Word: (\\\\w+)"}\n'
        )
    )
    exp = psysim.load_experiment(toy.yaml)
    assert [r.options for r in exp.transcript("p2").responses] == [("R", "C"), ("R", "C")]
    table = response_table(exp)
    assert table["choice"].tolist() == ["exists", "absent", "exists", "absent", "exists", "exists"]
    assert table["item"].tolist() == ["cat", "blorp"] * 3
    summary = str(exp.summary())
    assert "per trial: 2 options: 6 responses; roles: exists, absent" in summary
    assert "items      pattern «Word: (\\w+)» on each trial's text: 2 distinct" in summary


def test_a_fixed_list_and_a_response_outside_it(toy):
    """A response not among its trial's options stops, naming study, participant and trial; drop counts it instead."""
    toy.write_yaml(with_data("  format: psych201\n  path: data.jsonl\n  options: [A, C]\n"))
    with pytest.raises(PsysimError) as info:
        psysim.load_experiment(toy.yaml)
    messages = [str(p) for p in info.value.problems]
    assert messages == [
        "data.jsonl:1: study toy, participant p1, trial 2: response 'B' is not among its trial's options ['A', 'C'] "
        "(options: the list ['A', 'C'] on every trial); set data.outside_options: drop to leave such responses out",
        "data.jsonl:2: study toy, participant p2, trial 1: response 'B' is not among its trial's options ['A', 'C'] "
        "(options: the list ['A', 'C'] on every trial); set data.outside_options: drop to leave such responses out "
        "(the same kind of problem on 1 more trials of this participant: 2)",
    ]
    toy.write_yaml(with_data("  format: psych201\n  path: data.jsonl\n  options: [A, C]\n  outside_options: drop\n"))
    exp = psysim.load_experiment(toy.yaml)
    assert len(response_table(exp)) == 3  # the three B responses are left out of scoring and baselines
    assert "3 responses are not among their trial's options and are left out" in str(exp.summary())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{pattern: "You pick \\\\w"}', "expected a regular expression with a capture group (...) around the option"),
        (
            '{pattern: "You pick (\\\\w"}',
            "not a valid regular expression: missing ), unterminated subpattern at character offset 9",
        ),
        ("infer", "options: infer is refused"),
        ('{pattern: "(\\\\w)", roles: [a, b]}', "roles name 2 groups but the pattern has 1 capture groups"),
    ],
)
def test_bad_option_declarations_stop_at_their_yaml_line(toy, run_cli, options, message):
    toy.write_yaml(with_data(f"  format: psych201\n  path: data.jsonl\n  options: {options}\n"))
    r = run_cli("validate", "experiment.yaml")
    assert r.exit_code == 2 and "experiment.yaml:6:" in r.stderr and message in r.stderr, r.stderr


def test_a_pattern_that_reads_no_options_shows_the_trial(toy, run_cli):
    toy.write_yaml(with_data('  format: psych201\n  path: data.jsonl\n  options: {pattern: "marked (\\\\w)"}\n'))
    r = run_cli("validate", "experiment.yaml")
    assert r.exit_code == 2
    assert (
        "data.jsonl:1: study toy, participant p1, trial 1: options pattern «marked (\\w)» reads no option on this trial, "
        "expected at least two options; the trial's text: 'Pick A or B. You pick' "
        "(the same kind of problem on 1 more trials of this participant: 2)"
    ) in r.stderr


def test_a_rule_failing_for_every_participant_prints_the_first_problems_and_a_count(toy, run_cli):
    """Seventy participants, one located problem each: the first 50 are printed, then how many more."""
    toy.write_records(trial_records({f"p{i:02}": "Pick A or B. You pick <<A>>.\n" for i in range(70)}))
    toy.write_schema({"type": "object", "properties": {"age": {"type": "number"}, "gender": {"type": "string"}}})
    toy.write_yaml(with_data('  format: psych201\n  path: data.jsonl\n  options: {pattern: "marked (\\\\w)"}\n'))
    r = run_cli("validate", "experiment.yaml")
    assert r.exit_code == 2
    shown = [line for line in r.stderr.splitlines() if line.startswith("  - ")]
    assert len(shown) == 50 and "participant p49, trial 1" in shown[-1]
    assert "  … and 20 more (the first 50 of 70 are shown; the exception's .problems lists every one)" in r.stderr
    with pytest.raises(PsysimError) as info:
        psysim.load_experiment(toy.yaml)
    assert len(info.value.problems) == 70


def test_one_item_for_a_whole_study_is_a_warning(toy):
    toy.write_yaml(with_data('  format: psych201\n  path: data.jsonl\n  item: {pattern: "(You pick)"}\n'))
    summary = str(psysim.load_experiment(toy.yaml).summary())
    assert "warning: one item for the whole study (6 responses)" in summary


def test_several_studies_zip_glob_and_their_names(toy, run_cli):
    """Two folders of Psych-201 files (one zipped) read by a glob; ids are <study>/<participant>; same names refused."""
    for study in ("alpha", "beta"):
        (toy.folder / "studies" / study).mkdir(parents=True)
    toy.write_records(RECORDS, name="studies/alpha/prompts.jsonl")
    with zipfile.ZipFile(toy.folder / "studies" / "beta" / "prompts.jsonl.zip", "w") as archive:
        archive.writestr("prompts.jsonl", "".join(json.dumps(r) + "\n" for r in RECORDS))
    toy.write_yaml(with_data("  - format: psych201\n    path: studies/*/prompts.jsonl*\n    options: [A, B]\n"))
    exp = psysim.load_experiment(toy.yaml)
    assert exp.participants == ["alpha/p1", "alpha/p2", "alpha/p3", "beta/p1", "beta/p2", "beta/p3"]
    assert {exp.study(p) for p in exp.participants} == {"alpha", "beta"}
    toy.write_yaml(
        with_data(
            "  - {format: psych201, path: studies/alpha/prompts.jsonl, name: same}\n"
            "  - {format: psych201, path: studies/beta/prompts.jsonl.zip, name: same}\n"
        )
    )
    r = run_cli("validate", "experiment.yaml")
    assert r.exit_code == 2 and "two studies are named 'same' (also data[0])" in r.stderr, r.stderr
    toy.write_yaml(with_data("  - {format: psych201, path: nowhere/*.jsonl}\n"))
    r = run_cli("validate", "experiment.yaml")
    assert r.exit_code == 2 and "the glob 'nowhere/*.jsonl' matches no file" in r.stderr, r.stderr


# A trial table like an unseen choice study: four choice sets of two or three options, shown in an order that
# varies per person, each trial saying "Question k of 4". Everyone prefers the same option of each set.
CHOICE_SETS = {1: ("safe", "risky"), 2: ("north", "south", "east"), 3: ("tea", "coffee"), 4: ("red", "green", "blue")}
PREFERRED = {1: "safe", 2: "east", 3: "coffee", 4: "blue"}


def choice_table(people: int = 8) -> str:
    rng = np.random.default_rng(7)
    lines = ["participant,trial,domain,set,options,response"]
    for p in range(1, people + 1):
        for k, s in enumerate(rng.permutation(list(CHOICE_SETS)), start=1):
            shown = "|".join(rng.permutation(CHOICE_SETS[s]))
            # Seven in eight people take the preferred option; the eighth the first one shown.
            response = PREFERRED[s] if p % 8 else shown.split("|")[0]
            lines.append(f"p{p},{k},{'gains' if s < 3 else 'losses'},{s},{shown},{response}")
    return "\n".join(lines) + "\n"


CHOICE_YAML = """\
name: choices
seed: 3
data:
  format: trials
  path: trials.csv
  options: {column: options}
  item: {columns: [domain, set]}
  templates:
    trial: trial.jinja
cohort:
  schema: schema.json
  path: cohort.csv
models:
  - name: tiny
conditions: [no_persona]
evaluation:
  cross_validation: 4
"""


@pytest.fixture
def choices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trials.csv").write_text(choice_table(), encoding="utf-8")
    (tmp_path / "cohort.csv").write_text("participant,age\n" + "".join(f"p{p},{20 + p}\n" for p in range(1, 9)), encoding="utf-8")
    (tmp_path / "schema.json").write_text(json.dumps({"type": "object", "properties": {"age": {"type": "number"}}}))
    (tmp_path / "trial.jinja").write_text(
        "Question {{ trial + 1 }} of {{ n_trials }}: choose {{ options | join(' or ') }}. You choose {{ response }}.",
        encoding="utf-8",
    )
    (tmp_path / "experiment.yaml").write_text(CHOICE_YAML, encoding="utf-8")
    return tmp_path


def test_trial_table_items_from_columns_serve_run_baselines_and_simulation(choices, run_cli):
    """Items from the columns that identify the stimulus: independent of position and option order, and the same
    keys in the scored responses, the baselines' pooling, humans.parquet and every simulated row."""
    import pandas as pd

    exp = psysim.load_experiment("experiment.yaml")
    expected = {f"domain={'gains' if s < 3 else 'losses'} | set={s}" for s in CHOICE_SETS}
    items = [r.item for pid in exp.participants for r in exp.transcript(pid).responses]
    assert set(items) == expected and len(items) == 32
    (study,) = exp.study_profiles()
    assert (study.items, study.per_item, study.unshared) == (4, (8, 8, 8), 0)
    assert {len(r.options) for pid in exp.participants for r in exp.transcript(pid).responses} == {2, 3}

    # The rendered text as the item ("Question k of 4", options in shown order) would share almost nothing.
    Path("text.yaml").write_text(CHOICE_YAML.replace("  item: {columns: [domain, set]}\n", ""), encoding="utf-8")
    (as_text,) = psysim.load_experiment("text.yaml").study_profiles()
    assert as_text.unshared > 16

    r = run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "run")
    assert r.exit_code == 0, r.stderr
    base = pd.read_parquet("run/baselines.parquet")
    rows = zip(base.options, base.option_probs, base.response, strict=True)
    nll = base.assign(lp=[-np.log(dict(zip(o, p, strict=True))[y]) for o, p, y in rows])
    per = nll.groupby("baseline")["lp"].mean()
    assert per["population"] < per["uniform"] - 0.3  # pooled by item, the shared preference shows

    r = run_cli("simulate", "experiment.yaml", "--dry-run", "-q", "--out", "sim")
    assert r.exit_code == 0, r.stderr
    sim, humans = pd.read_parquet("sim/simulated.parquet"), pd.read_parquet("sim/humans.parquet")
    assert set(sim["item"]) == set(humans["item"]) == expected
    trials = pd.read_csv("trials.csv", dtype=str)
    for row in sim.itertuples(index=False):
        t = trials[(trials.participant == row.design_of) & (trials.trial == str(row.trial_number))].iloc[0]
        assert row.item == f"domain={t.domain} | set={t.set}"
