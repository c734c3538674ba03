"""Structured experiments: a trial table plus Jinja templates, rendered into transcripts via load_experiment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import psysim
from psysim.config import load_config
from psysim.data.transcripts import parse_markup
from psysim.data.trials import load_structured
from psysim.errors import DataError, Problem, PsysimError, TemplateError

YAML = """\
name: gambles
seed: 1
data:
  format: trials
  path: trials.csv
  options: {column: options}
  templates:
    instructions: instructions.jinja
    trial: trial.jinja
    feedback: feedback.jinja
cohort:
  schema: schema.json
  path: cohort.csv
models:
  - name: tiny
conditions: [no_persona, persona]
"""

# File order is not trial order: participant 1's trials are 10, 1, 2 (a string sort would give 1, 10, 2).
# Lines: header 1, then 2..6.
TRIALS = """\
participant,trial,stimulus,options,response,payoff_A,payoff_B
1,10,blue,A|B,B,3,4
1,1,red,A|B,A,1,2
2,1,green,A|B,B,5,6
1,2,gold,A|B,B,5,6
2,2,pink,A|B,A,7,8
"""

COHORT = "participant,age,gender\n1,31.0,Female\n2,N/A,Male\n"

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "age": {"type": "number", "minimum": 0, "x-psysim": {"question": "What is your age?"}},
        "gender": {"type": "string", "enum": ["Female", "Male"]},
    },
}

INSTRUCTIONS = "You will play {{ n_trials }} rounds. Options: {{ options | join(' or ') }}."
TRIAL = "Round {{ trial + 1 }}: the {{ stimulus }} card. You choose {{ response }}."
FEEDBACK = " You win {{ row['payoff_' ~ response] }} points."

TEXT_1 = (
    "You will play 3 rounds. Options: A or B.\n"
    "Round 1: the red card. You choose <<A>>. You win 1 points.\n"
    "Round 2: the gold card. You choose <<B>>. You win 6 points.\n"
    "Round 3: the blue card. You choose <<B>>. You win 4 points."
)
TEXT_2 = (
    "You will play 2 rounds. Options: A or B.\n"
    "Round 1: the green card. You choose <<B>>. You win 6 points.\n"
    "Round 2: the pink card. You choose <<A>>. You win 7 points."
)


@dataclass
class Gambles:
    folder: Path

    def write(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.write_text(text, encoding="utf-8")
        return path

    def load(self) -> psysim.Experiment:
        return psysim.load_experiment(self.folder / "experiment.yaml")

    def error(self, kind: type[PsysimError] = DataError) -> PsysimError:
        with pytest.raises(kind) as info:
            self.load()
        assert type(info.value) is kind
        return info.value


@pytest.fixture
def gambles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gambles:
    """A valid two-participant trial-table experiment in ``tmp_path`` (also the working folder)."""
    monkeypatch.chdir(tmp_path)
    g = Gambles(tmp_path)
    g.write("experiment.yaml", YAML)
    g.write("trials.csv", TRIALS)
    g.write("cohort.csv", COHORT)
    g.write("schema.json", json.dumps(SCHEMA))
    g.write("instructions.jinja", INSTRUCTIONS)
    g.write("trial.jinja", TRIAL)
    g.write("feedback.jinja", FEEDBACK)
    return g


# -- valid experiments ----------------------------------------------------------


def test_transcript_text_exact(gambles):
    exp = gambles.load()
    assert exp.participants == ["1", "2"]
    assert exp.transcript("1").text == TEXT_1
    assert exp.transcript("2").text == TEXT_2
    assert exp.transcript("1").experiment == "gambles"
    assert exp.render("1", "no_persona").text == TEXT_1


def test_trials_ordered_by_trial_number(gambles):
    t = gambles.load().transcript("1")
    assert [r.data["trial"] for r in t.responses] == ["1", "2", "10"]
    assert [r.data["stimulus"] for r in t.responses] == ["red", "gold", "blue"]
    # Per-response data is the row without the participant column; CSV cells stay strings.
    assert t.responses[0].data == {
        "trial": "1",
        "stimulus": "red",
        "options": "A|B",
        "response": "A",
        "payoff_A": "1",
        "payoff_B": "2",
    }


def test_response_spans(gambles):
    t = gambles.load().transcript("1")
    assert [(r.index, r.text, r.start, r.end) for r in t.responses] == [(0, "A", 77, 78), (1, "B", 137, 138), (2, "B", 197, 198)]
    assert [t.text[r.start : r.end] for r in t.responses] == ["A", "B", "B"]
    assert parse_markup(t.text) == ([(77, 78), (137, 138), (197, 198)], [])
    assert t.contexts()[0] == "You will play 3 rounds. Options: A or B.\nRound 1: the red card. You choose "


def test_persona_prompt_spans_shift(gambles):
    prompt = gambles.load().render("1", "persona")
    persona = "Interviewer: What is your age?\nInterviewee: 31.0\n\nInterviewer: What is your gender?\nInterviewee: Female\n\n"
    assert prompt.persona == persona
    assert prompt.text == persona + TEXT_1
    assert [prompt.text[s:e] for s, e in prompt.spans] == ["A", "B", "B"]
    assert prompt.spans[0] == (77 + len(persona), 78 + len(persona))


def test_options_parsed_from_column(gambles):
    gambles.write("trials.csv", TRIALS.replace("A|B", " A | B "))
    t = gambles.load().transcript("2")
    assert [r.options for r in t.responses] == [("A", "B"), ("A", "B")]
    assert t.text == TEXT_2


def test_options_with_custom_separator(gambles):
    gambles.write("experiment.yaml", YAML.replace("{column: options}", "{column: options, sep: ';'}"))
    gambles.write("trials.csv", TRIALS.replace("A|B", "A;B"))
    assert gambles.load().transcript("1").responses[0].options == ("A", "B")


def test_fixed_options_in_yaml(gambles):
    gambles.write("experiment.yaml", YAML.replace("{column: options}", "[A, B]"))
    gambles.write("trials.csv", "\n".join(line.replace(",A|B", "").replace(",options", "") for line in TRIALS.splitlines()))
    exp = gambles.load()
    t = exp.transcript("1")
    assert t.text == TEXT_1
    assert [r.options for r in t.responses] == [("A", "B")] * 3
    assert "options" not in t.responses[0].data


def test_fixed_options_response_not_among_them(gambles):
    gambles.write("experiment.yaml", YAML.replace("{column: options}", "[A, B]"))
    gambles.write("trials.csv", TRIALS.replace("2,2,pink,A|B,A", "2,2,pink,A|B,a"))
    err = gambles.error()
    assert err.problems == (
        Problem("response 'a' is not one of the options ['A', 'B']", file="trials.csv", line=6, where="participant 2, trial 2"),
    )


def _write_parquet_trials(gambles, trial_numbers):
    """The CSV fixture's table as Parquet, with the given trial-number column, and the YAML pointing at it."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "participant": [1, 1, 2, 1, 2],
            "trial": trial_numbers,
            "stimulus": ["blue", "red", "green", "gold", "pink"],
            "options": ["A|B"] * 5,
            "response": ["B", "A", "B", "B", "A"],
            "payoff_A": [3, 1, 5, 5, 7],
            "payoff_B": [4, 2, 6, 6, 8],
        }
    )
    pq.write_table(table, gambles.folder / "trials.parquet")
    gambles.write("experiment.yaml", YAML.replace("trials.csv", "trials.parquet"))


def test_parquet_works_like_csv(gambles):
    _write_parquet_trials(gambles, [10, 1, 1, 2, 2])
    exp = gambles.load()
    assert exp.participants == ["1", "2"]
    t = exp.transcript("1")
    assert t.text == TEXT_1
    assert exp.transcript("2").text == TEXT_2
    assert [(r.text, r.start, r.end, r.options) for r in t.responses] == [
        ("A", 77, 78, ("A", "B")),
        ("B", 137, 138, ("A", "B")),
        ("B", 197, 198, ("A", "B")),
    ]
    # Parquet keeps its column types.
    assert [r.data["trial"] for r in t.responses] == [1, 2, 10]
    assert t.source == "trials.parquet"


def test_parquet_errors_name_rows(gambles):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {"participant": ["1", "1", "2"], "trial": ["1", "1", "1"], "options": ["A|B"] * 3, "response": ["A", "B", "C"]}
    )
    pq.write_table(table, gambles.folder / "trials.parquet")
    gambles.write("experiment.yaml", YAML.replace("trials.csv", "trials.parquet"))
    gambles.write("feedback.jinja", "")
    err = gambles.error()
    assert err.message == "invalid trial table trials.parquet (2 problems)"
    assert err.problems == (
        Problem("trial 1 appears twice (also row 1)", file="trials.parquet", where="row 2, participant 1"),
        Problem(
            "response 'C' is not one of the options ['A', 'B']", file="trials.parquet", where="row 3, participant 2, trial 1"
        ),
    )
    assert [str(p) for p in err.problems] == [
        "trials.parquet: row 2, participant 1: trial 1 appears twice (also row 1)",
        "trials.parquet: row 3, participant 2, trial 1: response 'C' is not one of the options ['A', 'B']",
    ]


def test_without_instructions_or_feedback(gambles):
    gambles.write(
        "experiment.yaml",
        YAML.replace("    instructions: instructions.jinja\n", "").replace("    feedback: feedback.jinja\n", ""),
    )
    t = gambles.load().transcript("2")
    assert t.text == "Round 1: the green card. You choose <<B>>.\nRound 2: the pink card. You choose <<A>>."


def test_no_options_configured(gambles):
    gambles.write("experiment.yaml", YAML.replace("  options: {column: options}\n", ""))
    gambles.write("instructions.jinja", "Play {{ n_trials }} rounds.")
    t = gambles.load().transcript("2")
    assert [r.options for r in t.responses] == [None, None]
    assert t.text == "Play 2 rounds.\n" + TEXT_2.split("\n", 1)[1]


# -- bad inputs ---------------------------------------------------------------


def test_response_not_among_options(gambles):
    gambles.write("trials.csv", TRIALS.replace("1,1,red,A|B,A", "1,1,red,A|B,C"))
    err = gambles.error()
    assert err.message == "invalid trial table trials.csv (1 problem)"
    assert err.problems == (
        Problem("response 'C' is not one of the options ['A', 'B']", file="trials.csv", line=3, where="participant 1, trial 1"),
    )
    assert str(err.problems[0]) == "trials.csv:3: participant 1, trial 1: response 'C' is not one of the options ['A', 'B']"


def test_duplicate_trial_number(gambles):
    gambles.write("trials.csv", TRIALS.replace("1,10,blue", "1,1,blue"))
    err = gambles.error()
    assert err.problems == (Problem("trial 1 appears twice (also line 2)", file="trials.csv", line=3, where="participant 1"),)


def test_duplicate_trial_number_written_differently(gambles):
    # " 01" and "1" are the same trial number.
    gambles.write("trials.csv", TRIALS.replace("1,10,blue", '1," 01",blue'))
    err = gambles.error()
    assert err.problems == (Problem("trial 1 appears twice (also line 2)", file="trials.csv", line=3, where="participant 1"),)


@pytest.mark.parametrize("value", ["two", "2.5", ""])
def test_non_integer_trial(gambles, value):
    gambles.write("trials.csv", TRIALS.replace("1,2,gold", f"1,{value},gold"))
    err = gambles.error()
    assert err.problems == (
        Problem(
            f"expected an integer trial number in column 'trial', found {value!r}",
            file="trials.csv",
            line=5,
            where="participant 1",
        ),
    )


@pytest.mark.parametrize("value", ["2.0", " 2.0 "])
def test_whole_float_trial_number_accepted(gambles, value):
    # Parquet writes integer columns with gaps as floats; a whole float is that integer, and orders as one.
    gambles.write("trials.csv", TRIALS.replace("1,2,gold", f"1,{value},gold"))
    t = gambles.load().transcript("1")
    assert t.text == TEXT_1
    assert [r.data["trial"] for r in t.responses] == ["1", value, "10"]


def test_whole_float_trial_number_same_as_integer(gambles):
    gambles.write("trials.csv", TRIALS.replace("1,10,blue", "1,2.0,blue"))
    err = gambles.error()
    assert err.problems == (Problem("trial 2 appears twice (also line 2)", file="trials.csv", line=5, where="participant 1"),)


def test_parquet_float_trial_numbers(gambles):
    _write_parquet_trials(gambles, [10.0, 1.0, 1.0, 2.0, 2.0])
    exp = gambles.load()
    assert exp.transcript("1").text == TEXT_1
    assert exp.transcript("2").text == TEXT_2


def test_table_problems_reported_together(gambles):
    bad = TRIALS.replace("1,2,gold", "1,x,gold").replace("1,10,blue", "1,1,blue").replace("2,2,pink,A|B,A", "2,2,pink,A,A")
    gambles.write("trials.csv", bad)
    err = gambles.error()
    assert err.message == "invalid trial table trials.csv (3 problems)"
    assert [(p.file, p.line, p.where, p.message) for p in err.problems] == [
        ("trials.csv", 5, "participant 1", "expected an integer trial number in column 'trial', found 'x'"),
        ("trials.csv", 3, "participant 1", "trial 1 appears twice (also line 2)"),
        (
            "trials.csv",
            6,
            "participant 2, trial 2",
            "expected at least two distinct, non-empty options separated by '|' in column 'options', found 'A'",
        ),
    ]


def test_options_column_with_one_option(gambles):
    gambles.write("trials.csv", TRIALS.replace("1,1,red,A|B", "1,1,red,A"))
    err = gambles.error()
    assert err.problems == (
        Problem(
            "expected at least two distinct, non-empty options separated by '|' in column 'options', found 'A'",
            file="trials.csv",
            line=3,
            where="participant 1, trial 1",
        ),
    )


@pytest.mark.parametrize("cell", ["A|A", "A||B", "A|"])
def test_options_column_repeated_or_empty_option(gambles, cell):
    gambles.write("trials.csv", TRIALS.replace("1,1,red,A|B", f"1,1,red,{cell}"))
    err = gambles.error()
    assert [(p.file, p.line, p.where, p.message) for p in err.problems] == [
        (
            "trials.csv",
            3,
            "participant 1, trial 1",
            f"expected at least two distinct, non-empty options separated by '|' in column 'options', found {cell!r}",
        )
    ]


def test_options_cell_missing(gambles):
    gambles.write("trials.csv", TRIALS.replace("2,1,green,A|B", "2,1,green,"))
    err = gambles.error()
    assert err.problems == (Problem("no options in column 'options'", file="trials.csv", line=4, where="participant 2, trial 1"),)


def test_response_with_delimiter(gambles):
    gambles.write("experiment.yaml", YAML.replace("  options: {column: options}\n", ""))
    gambles.write("instructions.jinja", "Play.")
    gambles.write("trials.csv", TRIALS.replace("2,2,pink,A|B,A", "2,2,pink,A|B,A>>"))
    err = gambles.error()
    assert err.problems == (
        Problem("response 'A>>' contains a '<<' or '>>' delimiter", file="trials.csv", line=6, where="participant 2, trial 2"),
    )


def test_missing_columns(gambles):
    gambles.write("trials.csv", TRIALS.replace("participant,trial", "pid,trial_no"))
    err = gambles.error()
    columns = "pid, trial_no, stimulus, options, response, payoff_A, payoff_B"
    assert err.problems == (
        Problem(f"expected a participant column 'participant', found columns: {columns}", file="trials.csv"),
        Problem(f"expected a trial column 'trial', found columns: {columns}", file="trials.csv"),
    )


def test_trial_template_without_response(gambles):
    gambles.write("trial.jinja", "Round {{ trial + 1 }}: the {{ stimulus }} card.")
    err = gambles.error(TemplateError)
    assert err.message == "invalid templates (1 problem)"
    assert err.problems == (
        Problem("the trial template must place {{ response }} exactly once, found it 0 times", file="trial.jinja"),
    )


def test_trial_template_with_response_twice(gambles):
    gambles.write("trial.jinja", "You chose {{ response }}. Round {{ trial + 1 }}: {{ response }}")
    err = gambles.error(TemplateError)
    assert err.problems == (
        Problem("the trial template must place {{ response }} exactly once, found it 2 times", file="trial.jinja"),
    )


CONDITIONAL_RESPONSE = "Round {{ trial + 1 }}: {{ stimulus }}.{% if stimulus != 'gold' %} {{ response }}{% endif %}"


def test_trial_template_response_missing_on_a_later_trial_task_error(gambles):
    """StructuredTask.transcript raises a located TemplateError for the trial whose text lacks the response."""
    config = load_config("experiment.yaml")
    gambles.write("trial.jinja", CONDITIONAL_RESPONSE)
    task = load_structured(config.data, "gambles", config.cohort.missing)
    with pytest.raises(TemplateError) as info:
        task.transcript("1")
    assert info.value.message == "the trial template must place {{ response }} exactly once"
    assert info.value.problems == (
        Problem(
            "the trial template must place {{ response }} exactly once, found it 0 times",
            file="trial.jinja",
            where="participant 1, trial 2 (trials.csv line 5)",
        ),
    )


def test_trial_template_response_missing_on_a_later_trial(gambles):
    gambles.write("trial.jinja", CONDITIONAL_RESPONSE)
    err = gambles.error(TemplateError)
    assert err.message == "cannot render the trial table into transcripts (1 problem)"
    assert err.problems == (
        Problem(
            "the trial template must place {{ response }} exactly once, found it 0 times",
            file="trial.jinja",
            where="participant 1, trial 2 (trials.csv line 5)",
        ),
    )


def test_feedback_template_static_missing_column(gambles):
    gambles.write("feedback.jinja", " You win\n{{ row.missing_col }} points.")
    err = gambles.error(TemplateError)
    assert err.message == "invalid templates (1 problem)"
    assert err.problems == (
        Problem(
            "row.missing_col does not exist; row has: options, participant, payoff_A, payoff_B, response, stimulus, trial",
            file="feedback.jinja",
            line=2,
        ),
    )


def test_template_unknown_variable(gambles):
    gambles.write("trial.jinja", "Round {{ trial + 1 }}: {{ colour }}. {{ response }}")
    err = gambles.error(TemplateError)
    assert err.problems == (
        Problem(
            "unknown variable 'colour'; a trial template can use: n_trials, options, participant, payoff_A, payoff_B, "
            "response, row, stimulus, trial",
            file="trial.jinja",
            line=1,
        ),
    )


def test_feedback_template_dynamic_missing_column(gambles):
    # payoff_B is gone: the first 'B' response of each participant cannot be looked up.
    gambles.write("trials.csv", "\n".join(line.rsplit(",", 1)[0] for line in TRIALS.splitlines()) + "\n")
    err = gambles.error(TemplateError)
    assert err.message == "cannot render the trial table into transcripts (2 problems)"
    assert err.problems == (
        Problem(
            "the trial table has no column 'payoff_B'",
            file="feedback.jinja",
            line=1,
            where="participant 1, trial 2 (trials.csv line 5)",
        ),
        Problem(
            "the trial table has no column 'payoff_B'",
            file="feedback.jinja",
            line=1,
            where="participant 2, trial 1 (trials.csv line 4)",
        ),
    )


def test_trial_template_output_with_delimiter(gambles):
    gambles.write("trial.jinja", "Round {{ trial + 1 }} <<{{ stimulus }}>>: {{ response }}")
    err = gambles.error(TemplateError)
    assert err.message == "trial template output contains a response delimiter"
    assert err.problems == (
        Problem(
            "rendered text contains '<<' or '>>' at character offset 8; only psysim marks responses",
            file="trial.jinja",
            where="participant 1, trial 1 (trials.csv line 3)",
        ),
    )


def test_table_value_with_delimiter_reaches_template_output(gambles):
    # A value from the table is data, but it still must not forge a response in the transcript.
    gambles.write("trials.csv", TRIALS.replace("2,2,pink", "2,2,pink >> <<A"))
    err = gambles.error(TemplateError)
    assert err.message == "cannot render the trial table into transcripts (1 problem)"
    assert err.problems == (
        Problem(
            "rendered text contains '<<' or '>>' at character offset 18; only psysim marks responses",
            file="trial.jinja",
            where="participant 2, trial 2 (trials.csv line 6)",
        ),
    )


def test_feedback_output_with_delimiter(gambles):
    gambles.write("feedback.jinja", " You win {{ row['payoff_' ~ response] }} >> points.")
    err = gambles.error(TemplateError)
    assert [(p.file, p.where, p.message) for p in err.problems] == [
        (
            "feedback.jinja",
            "participant 1, trial 1 (trials.csv line 3)",
            "rendered text contains '<<' or '>>' at character offset 11; only psysim marks responses",
        ),
        (
            "feedback.jinja",
            "participant 2, trial 1 (trials.csv line 4)",
            "rendered text contains '<<' or '>>' at character offset 11; only psysim marks responses",
        ),
    ]


# -- missing responses ------------------------------------------------------------


def test_missing_response_trial_left_out_of_the_transcript(gambles):
    gambles.write("trials.csv", TRIALS.replace("2,2,pink,A|B,A", "2,2,pink,A|B,"))
    exp = gambles.load()
    summary = exp.summary()
    assert (summary.participants, summary.scorable, summary.responses, summary.trials) == (2, 2, 4, 5)
    assert summary.responses_per_participant == (1, 2, 3)
    lines = str(summary).splitlines()
    assert "  participants 2" in lines
    assert (
        "  missing      1 of 5 trials has no human response (1 participant); they are left out of the transcripts: "
        "not shown to the models, not scored"
    ) in lines
    assert exp.transcript("1").text == TEXT_1
    # The trial without a response is not shown; the instructions still count the trials the participant had.
    assert (
        exp.transcript("2").text
        == "You will play 2 rounds. Options: A or B.\nRound 1: the green card. You choose <<B>>. You win 6 points."
    )
    assert [t.response for t in exp.task.trials["2"]] == ["B", None]
    assert exp.task.complete("2") is False
    assert (exp.task.n_trials("2"), exp.task.n_responses("2")) == (2, 1)
    assert [p.participant for p in exp.prompts("no_persona")] == ["1", "2"]


def test_trial_left_out_keeps_the_numbering_of_later_trials(gambles):
    gambles.write("trials.csv", TRIALS.replace("1,1,red,A|B,A", "1,1,red,A|B,"))
    t = gambles.load().transcript("1")
    assert t.text == TEXT_1.replace("Round 1: the red card. You choose <<A>>. You win 1 points.\n", "")
    assert [(r.index, r.text, r.data["trial"]) for r in t.responses] == [(0, "B", "2"), (1, "B", "10")]


def test_participant_without_any_response(gambles):
    gambles.write("trials.csv", TRIALS.replace("2,1,green,A|B,B", "2,1,green,A|B,").replace("2,2,pink,A|B,A", "2,2,pink,A|B,"))
    exp = gambles.load()
    summary = exp.summary()
    assert (summary.participants, summary.scorable, summary.responses, summary.trials) == (2, 1, 3, 5)
    assert (
        "  missing      2 of 5 trials have no human response (1 participant); they are left out of the transcripts: "
        "not shown to the models, not scored; 1 participant has no response at all (simulation only)"
    ) in str(summary).splitlines()
    with pytest.raises(DataError) as info:
        exp.render("2", "no_persona")
    assert str(info.value) == "participant 2 has no human response on any trial, so there is no transcript to score"
    assert [p.participant for p in exp.prompts("no_persona")] == ["1"]
    with pytest.raises(DataError) as info:
        exp.task.transcript("2")
    assert info.value.message == "participant 2 has no trial with a human response: it can be simulated but not scored"
    assert info.value.problems == (Problem("no human response on any trial", file="trials.csv", line=4, where="participant 2"),)
    assert str(info.value.problems[0]) == "trials.csv:4: participant 2: no human response on any trial"


def test_no_response_column_is_simulation_only(gambles):
    gambles.write("trials.csv", "\n".join(",".join(line.split(",")[:4] + line.split(",")[5:]) for line in TRIALS.splitlines()))
    summary = gambles.load().summary()
    assert (summary.scorable, summary.responses, summary.trials) == (0, 0, 5)
    assert (
        "  missing      no human response on any of the 5 trials: nothing to score (simulation only)" in str(summary).splitlines()
    )


def test_missing_response_values_follow_cohort_missing(gambles):
    gambles.write("trials.csv", TRIALS.replace("2,2,pink,A|B,A", "2,2,pink,A|B,N/A"))
    summary = gambles.load().summary()
    assert (summary.responses, summary.trials, summary.missing_in) == (4, 5, 1)


def test_simulated_responses_render(gambles):
    gambles.write("trials.csv", TRIALS.replace("2,2,pink,A|B,A", "2,2,pink,A|B,"))
    task = gambles.load().task
    t = task.transcript("2", ["B", "B"])
    assert t.text == TEXT_2.replace("<<A>>. You win 7", "<<B>>. You win 8")
    with pytest.raises(ValueError, match=r"^participant 2 has 2 trials, got 1 responses$"):
        task.transcript("2", ["B"])
