"""Closed-loop simulation: sampling, feedback from the sampled choice, KV-cache exactness, seeds, resume.

The central check: a synthetic transcript written by a tiny random-weight
Llama (hf backend, key/value cache kept across trials) is scored again with
the single-pass scoring method; every option probability recorded while
simulating must come back within 1e-5. That shows the cache, the piecewise
tokenization and the feedback loop are exact, not approximately right.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from test_run import error_of, save_tiny
from test_trials import COHORT, FEEDBACK, INSTRUCTIONS, SCHEMA, TRIAL, TRIALS
from test_trials import YAML as TRIALS_YAML

from psysim.metrics import option_probs
from psysim.simulate import SIM_COLUMNS

# The gamble task of tests/test_trials.py with a local tiny model and all three persona conditions.
YAML = TRIALS_YAML.replace("  - name: tiny\n", "  - name: tiny\n    source: tiny-model\n").replace(
    "conditions: [no_persona, persona]\n", "conditions: [no_persona, persona, shuffled_persona]\n"
)


@pytest.fixture
def gambles(tmp_path, monkeypatch):
    """The structured two-participant gamble task of tests/test_trials.py, in tmp_path."""
    monkeypatch.chdir(tmp_path)
    files = {
        "experiment.yaml": YAML,
        "trials.csv": TRIALS,
        "cohort.csv": COHORT,
        "schema.json": json.dumps(SCHEMA),
        "instructions.jinja": INSTRUCTIONS,
        "trial.jinja": TRIAL,
        "feedback.jinja": FEEDBACK,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def simulate(run_cli, *args):
    r = run_cli("simulate", "experiment.yaml", "-q", *args)
    assert r.exit_code == 0, r.stderr
    out = args[args.index("--out") + 1]
    return {name: pd.read_parquet(f"{out}/{name}.parquet") for name in ("simulated", "transcripts", "participants")}


def test_dry_run_tables_and_feedback_follow_the_sampled_choice(gambles, run_cli):
    """Twins of both participants × 3 conditions; each transcript's feedback pays the sampled option's payoff."""
    t = simulate(run_cli, "--dry-run", "--out", "out")
    sim, tr = t["simulated"], t["transcripts"]
    assert list(sim.columns) == SIM_COLUMNS
    assert len(sim) == 3 * (3 + 2) and len(tr) == 3 * 2
    payoffs = {("1", 1): (1, 2), ("1", 2): (5, 6), ("1", 10): (3, 4), ("2", 1): (5, 6), ("2", 2): (7, 8)}
    for row in tr.itertuples(index=False):
        rows = sim[(sim["condition"] == row.condition) & (sim["participant"] == row.participant)]
        wins = [int(x) for x in re.findall(r"You win (\d+) points", row.text)]
        assert wins == [
            payoffs[(row.participant, n)][0 if r == "A" else 1]
            for n, r in zip(rows["trial_number"], rows["response"], strict=True)
        ]
        assert re.findall(r"<<(\w)>>", row.text) == rows["response"].tolist()
    twins = sim[sim["condition"] == "no_persona"]
    assert twins["human_response"].tolist() == ["A", "B", "B", "B", "A"]  # the real people's own answers beside
    assert sim["design_of"].tolist() == sim["participant"].tolist()
    for r in sim.itertuples(index=False):
        assert math.fsum(r.option_probs) == pytest.approx(1.0, abs=1e-12)
        assert list(r.option_probs) == pytest.approx(option_probs(list(r.option_logprobs)))
    assert t["participants"]["participant"].tolist() == ["1", "2"]
    assert t["participants"]["profile.gender"].tolist() == ["Female", "Male"]
    # The headline's option columns follow the order the trials offer the options, not how often each was chosen.
    shown = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out").stdout
    header = next(line for line in shown.splitlines() if "participants" in line and "responses" in line)
    assert header.split()[-2:] == ["A", "B"], shown


def test_headline_option_columns_follow_the_offered_order_not_frequency():
    from psysim.cli import option_shares

    sim = pd.DataFrame(
        {
            "model": "m",
            "condition": "c",
            "options": [["1", "2", "3"]] * 6,
            "response": ["3", "3", "3", "2", "2", "1"],  # most often 3, then 2, then 1
        }
    )
    assert option_shares(sim).columns.tolist() == ["1", "2", "3"]


def test_sampling_is_the_documented_seeded_draw(gambles, run_cli):
    """Each response is numpy's default_rng([seed, model, condition, participant]).choice over sampling_probs."""
    t = simulate(run_cli, "--dry-run", "--out", "out")
    sim = t["simulated"]
    conditions = ["no_persona", "persona", "shuffled_persona"]
    for (cond, pid), rows in sim.groupby(["condition", "participant"], sort=False):
        rng = np.random.default_rng([1, 0, conditions.index(cond), ["1", "2"].index(pid)])
        expected = [r.options[int(rng.choice(len(r.sampling_probs), p=list(r.sampling_probs)))] for r in rows.itertuples()]
        assert rows["response"].tolist() == expected


def test_temperature_zero_always_takes_the_most_probable_option(gambles, run_cli):
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  temperature: 0\n", encoding="utf-8")
    sim = simulate(run_cli, "--dry-run", "--out", "out")["simulated"]
    for r in sim.itertuples(index=False):
        best = max(range(len(r.options)), key=lambda i: (r.option_logprobs[i], -i))
        assert r.response == r.options[best]
        assert list(r.sampling_probs) == [1.0 if i == best else 0.0 for i in range(len(r.options))]


def test_temperature_scales_the_sampling_distribution(gambles, run_cli):
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  temperature: 2.5\n", encoding="utf-8")
    sim = simulate(run_cli, "--dry-run", "--out", "out")["simulated"]
    for r in sim.itertuples(index=False):
        lp = np.array(r.option_logprobs) / 2.5
        expected = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
        assert list(r.sampling_probs) == pytest.approx(expected.tolist(), abs=1e-12)


def test_same_seed_same_synthetic_data_and_resume_after_interrupt(gambles, run_cli, monkeypatch):
    """Two fresh simulations are identical; one interrupted after its first batch resumes to the same tables."""
    from psysim.backends.mock import MockSession

    (gambles / "experiment.yaml").write_text(YAML + "scoring:\n  save_every: 1\n", encoding="utf-8")
    a = simulate(run_cli, "--dry-run", "--out", "a")
    b = simulate(run_cli, "--dry-run", "--out", "b")
    for name in a:
        assert_frame_equal(a[name], b[name], check_exact=True)

    real = MockSession.options
    calls = []

    def interrupted(self, options):
        calls.append(1)
        # Participants 1 (3 trials) and 2 (2 trials) walk together, one batch each: after four calls participant 2
        # has finished and its batch is saved; the fifth (participant 1's last trial) is interrupted.
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, options)

    monkeypatch.setattr(MockSession, "options", interrupted)
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "c")
    assert r.exit_code == 130
    assert "interrupted: every simulated batch is saved in c; run the same command again to resume" in r.stderr
    monkeypatch.setattr(MockSession, "options", real)
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "c")
    assert r.exit_code == 0 and "resumed: 1 saved batches reused" in r.stdout
    c = {name: pd.read_parquet(f"c/{name}.parquet") for name in a}
    for name in a:
        assert_frame_equal(a[name], c[name], check_exact=True)


def test_hf_simulation_is_exact_against_single_pass_scoring(gambles, run_cli, hf):
    """Tiny Llama in closed loop with its KV cache; rescoring each synthetic transcript gives the same options' logprobs."""
    import torch

    import psysim
    from psysim.backends.encoding import TokenReader
    from psysim.backends.forward import score_encoded

    save_tiny(gambles / "tiny-model", hf)
    t = simulate(run_cli, "--out", "out")
    exp = psysim.load_experiment("experiment.yaml")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained("tiny-model").eval()
    tok = AutoTokenizer.from_pretrained("tiny-model")
    sim = t["simulated"]
    checked = 0
    for row in t["transcripts"].itertuples(index=False):
        rows = sim[(sim["condition"] == row.condition) & (sim["participant"] == row.participant)]
        spans = [m.span(1) for m in re.finditer(r"<<(.*?)>>", row.text)]
        reader = TokenReader(tok)
        enc = reader.encode(row.text, spans, add_special_tokens=True)
        # The cache read every token once: everything before the last response, nothing twice.
        assert row.tokens_read == enc.ranges[-1][0]
        enc.options, _ = reader.options(row.text, spans, list(rows["options"]), [">>"] * len(spans))
        with torch.no_grad():
            scores = score_encoded(model, [enc])[0]
        for (lp, _, opt_lp), r in zip(scores, rows.itertuples(index=False), strict=True):
            assert list(r.option_logprobs) == pytest.approx(opt_lp, abs=1e-5)
            # The chosen option is the response followed by '>>': less likely than the response's content alone.
            assert r.option_logprobs[list(r.options).index(r.response)] < lp
            checked += 1
    assert checked == len(sim) == 15
    assert exp.config.simulation.temperature == 1.0


@pytest.mark.parametrize("save_every", [8, 1])
def test_lock_step_groups_give_the_numbers_and_draws_of_one_at_a_time(gambles, run_cli, hf, monkeypatch, save_every):
    """Participants advancing together in one padded forward pass per trial (ragged lengths, one leaving early;
    in one saved batch, or each in its own with the group spanning both) see the option probabilities they see
    alone, within 1e-6, and sample the same responses."""
    import psysim.simulate as simulate_module

    save_tiny(gambles / "tiny-model", hf)
    (gambles / "experiment.yaml").write_text(YAML + f"scoring:\n  save_every: {save_every}\n", encoding="utf-8")
    passes = []
    real = simulate_module.lock_step

    def spy(backend, walks, sizes=None, budget=None):
        passes.append(len(walks))
        yield from real(backend, walks, sizes, budget)

    monkeypatch.setattr(simulate_module, "lock_step", spy)
    together = simulate(run_cli, "--out", "together")["simulated"]
    assert together["participant"].value_counts().to_dict() == {"1": 9, "2": 6}  # 3 and 2 trials: one leaves first
    assert passes == [2, 2, 2]  # one stream of both participants per condition, whatever the saved batches
    monkeypatch.setattr(simulate_module, "admits", lambda total, size, budget: total == 0)  # one at a time
    alone = simulate(run_cli, "--out", "alone")["simulated"]
    assert together["response"].tolist() == alone["response"].tolist()
    for a, b in zip(together["option_probs"], alone["option_probs"], strict=True):
        assert list(a) == pytest.approx(list(b), abs=1e-6)
    for a, b in zip(together["option_logprobs"], alone["option_logprobs"], strict=True):
        assert list(a) == pytest.approx(list(b), abs=1e-5)


def test_a_shared_beginning_is_read_once_with_the_same_numbers(gambles, run_cli, hf, monkeypatch):
    """Everyone doing participant 1's trials without a persona starts with the same tokens: they are read once,
    shared, and the numbers and draws are those of participants simulated one at a time."""
    import psysim.backends.lockstep as lockstep
    import psysim.simulate as simulate_module

    save_tiny(gambles / "tiny-model", hf)
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  design: '1'\n", encoding="utf-8")
    shared = []
    real = lockstep.Group.share_prefix

    def spy(group, plans):
        real(group, plans)
        shared.extend(p["start"] for p in plans if p["start"])

    monkeypatch.setattr(lockstep.Group, "share_prefix", spy)
    together = simulate(run_cli, "--out", "together")["simulated"]
    assert len(shared) >= 2 and min(shared) >= lockstep.SHARED_PREFIX  # the no_persona pair shared its beginning
    monkeypatch.setattr(simulate_module, "admits", lambda total, size, budget: total == 0)  # one at a time
    alone = simulate(run_cli, "--out", "alone")["simulated"]
    assert together["response"].tolist() == alone["response"].tolist()
    for a, b in zip(together["option_probs"], alone["option_probs"], strict=True):
        assert list(a) == pytest.approx(list(b), abs=1e-6)


def test_a_lock_step_budget_smaller_than_one_participant_is_a_clear_error(gambles, run_cli):
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  batch_tokens: 10\n", encoding="utf-8")
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out")
    assert r.exit_code == 2
    assert "simulation.batch_tokens (10) is smaller than one participant's transcript" in r.stderr
    assert re.search(r"participant 1: about \d+ tokens; expected simulation.batch_tokens of at least \d+", r.stderr)


def test_n_larger_than_the_cohort_needs_generate(gambles, run_cli):
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out", "--n", "5")
    assert r.exit_code == 2
    message = error_of(r.stderr)
    assert message.startswith("error: simulation.n is 5, but the cohort has 2 participants")
    assert "add cohort.generate to draw more synthetic profiles" in message


@pytest.mark.parametrize("n", ["0", "-3"])
def test_n_must_be_positive(gambles, run_cli, n):
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out", "--n", n)
    assert r.exit_code == 2
    assert f"Invalid value for --n: expected at least 1, found {n}" in r.stderr


def test_negative_temperature_is_a_located_error(gambles, run_cli):
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  temperature: -0.5\n", encoding="utf-8")
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out")
    assert r.exit_code == 2
    assert "experiment.yaml:19:16: simulation.temperature: expected a number ≥ 0, found a number -0.5" in r.stderr


def test_psych201_data_cannot_be_simulated(toy, run_cli):
    from test_run import DRY

    toy.write_yaml(DRY)
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out")
    assert r.exit_code == 2
    assert "error: psysim simulate needs a structured experiment (data.format: trials)" in r.stderr
    assert "experiment.yaml:4:11: data.format: expected trials" in r.stderr


def test_unknown_design_participant(gambles, run_cli):
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  design: '7'\n", encoding="utf-8")
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out")
    assert r.exit_code == 2
    assert "simulation.design: expected own, resample or a participant id of the trial table, found '7'" in r.stderr


def test_fixed_design_gives_everyone_the_same_trials(gambles, run_cli):
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  design: '2'\n", encoding="utf-8")
    sim = simulate(run_cli, "--dry-run", "--out", "out")["simulated"]
    assert set(sim["design_of"]) == {"2"}
    assert sim.groupby(["condition", "participant"]).size().eq(2).all()
    assert sim[sim["participant"] == "1"]["human_response"].isna().all()  # not participant 1's own trials


def test_feedback_for_an_option_nobody_chose_is_checked_before_the_model_loads(gambles, run_cli):
    """Humans only chose A, so loading renders fine; a synthetic participant may choose B, whose payoff column is missing."""
    only_a = "participant,trial,stimulus,options,response,payoff_A\n1,1,red,A|B,A,1\n1,2,gold,A|B,A,5\n2,1,green,A|B,A,5\n"
    (gambles / "trials.csv").write_text(only_a, encoding="utf-8")
    assert run_cli("validate", "experiment.yaml").exit_code == 0  # scoring the humans is fine
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out")
    assert r.exit_code == 2
    message = error_of(r.stderr)
    assert message.startswith("error: the templates cannot render every option a synthetic participant may choose")
    assert (
        "feedback.jinja:1: participant 1, trial 1 (trials.csv line 2): "
        "with response 'B': the trial table has no column 'payoff_B'" in message
    )
    assert not (gambles / "out" / "manifest.json").exists()


GENERATE = """\
  generate:
    fields:
      age: {distribution: normal, mean: 40, sd: 12, min: 18, max: 90, decimals: 0}
      gender: {distribution: categorical, weights: {Female: 0.6, Male: 0.4}}
"""


def test_generated_cohort_does_resampled_designs_with_its_own_personas(gambles, run_cli):
    """cohort.generate: n drawn profiles (psysim.cohorts), each doing a seeded random real participant's trials."""
    import psysim
    from psysim.cohorts import generate_profiles

    yaml = YAML.replace("  path: cohort.csv\n", "  path: cohort.csv\n" + GENERATE) + "simulation:\n  n: 6\n"
    (gambles / "experiment.yaml").write_text(yaml, encoding="utf-8")
    shown = run_cli("validate", "experiment.yaml").stdout
    assert "  synthetic    psysim simulate draws 6 profiles: age, gender drawn from cohort.generate\n" in shown
    t = simulate(run_cli, "--dry-run", "--out", "out")
    exp = psysim.load_experiment("experiment.yaml")
    profiles, _ = generate_profiles(exp.config, exp.schema, exp.cohort, 6, 1)
    people = t["participants"]
    assert people["participant"].tolist() == [p.participant for p in profiles] == [f"s{i:04d}" for i in range(1, 7)]
    assert people["profile.gender"].tolist() == [p.values["gender"] for p in profiles]
    picks = np.random.default_rng([1, 1]).integers(0, 2, size=6)
    assert people["design_of"].tolist() == [["1", "2"][i] for i in picks]
    sim = t["simulated"]
    assert sim["human_response"].isna().all()  # nobody's own trials: no human answer belongs beside theirs
    persona = t["transcripts"]
    persona = persona[persona["condition"] == "persona"]
    for row, p in zip(persona.itertuples(index=False), profiles, strict=True):
        assert f"Interviewee: {p.text['gender']}" in row.persona and row.text.startswith(row.persona)
    assert run_cli("report", "out").exit_code == 0


def test_generated_cohort_that_cannot_be_valid_stops_before_the_model(gambles, run_cli):
    bad = GENERATE.replace("{Female: 0.6, Male: 0.4}", "{Female: 0.6, Robot: 0.4}")
    yaml = YAML.replace("  path: cohort.csv\n", "  path: cohort.csv\n" + bad) + "simulation:\n  n: 6\n"
    (gambles / "experiment.yaml").write_text(yaml, encoding="utf-8")
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out")
    assert r.exit_code == 2
    assert "cohort.generate.fields.gender" in r.stderr and "Robot" in r.stderr
    assert not (gambles / "out" / "manifest.json").exists()


def test_chat_only_models_are_refused_not_silently_simulated_raw(gambles, run_cli):
    yaml = YAML.replace("    source: tiny-model\n", "    source: tiny-model\n    formats: [chat]\n    chat_template: chatml\n")
    (gambles / "experiment.yaml").write_text(yaml, encoding="utf-8")
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out")
    assert r.exit_code == 2
    assert "error: simulation.format is raw: every model must read the experiment in that format" in r.stderr
    assert "models[0].formats: expected raw among the formats of 'tiny', found ['chat']" in r.stderr
    # And the other way round: chat simulation of a model not read as chat, refused before any model loads.
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  format: chat\n", encoding="utf-8")
    r = run_cli("simulate", "experiment.yaml", "-q", "--out", "out")
    assert r.exit_code == 2 and "expected chat among the formats of 'tiny', found ['raw']" in r.stderr


def test_chat_simulation_is_exact_against_scoring_the_finished_chat(gambles, run_cli, hf):
    """simulation.format: chat: each trial the user's turn, each response the assistant's, read turn by turn through
    the model's chat template; scoring the finished conversation (as psysim run scores chat) gives back every
    option's log-probability."""
    import torch

    import psysim
    from psysim.backends.encoding import TokenReader
    from psysim.backends.forward import score_encoded
    from psysim.data.transcripts import Response, Transcript, parse_markup
    from psysim.render.chat import to_messages

    save_tiny(gambles / "tiny-model", hf)
    yaml = YAML.replace("    source: tiny-model\n", "    source: tiny-model\n    formats: [chat]\n    chat_template: chatml\n")
    (gambles / "experiment.yaml").write_text(yaml + "simulation:\n  format: chat\n", encoding="utf-8")
    t = simulate(run_cli, "--out", "out")
    exp = psysim.load_experiment("experiment.yaml")
    template = exp.chat_templates["tiny"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained("tiny-model").eval()
    reader = TokenReader(AutoTokenizer.from_pretrained("tiny-model"))
    sim, checked = t["simulated"], 0
    for row in t["transcripts"].itertuples(index=False):
        rows = sim[(sim["condition"] == row.condition) & (sim["participant"] == row.participant)]
        # The synthetic transcript (raw, responses in <<...>>) as the conversation psysim run would score.
        body = row.text[len(row.persona) :]
        marks, _ = parse_markup(body)
        responses = tuple(Response(index=i, text=body[a:b], start=a, end=b) for i, (a, b) in enumerate(marks))
        transcript = Transcript(row.participant, "gambles", body, responses)
        rendering = template.render(to_messages(transcript, row.persona))
        enc = reader.encode(rendering.text, rendering.spans, add_special_tokens=False)
        enc.options, _ = reader.options(rendering.text, rendering.spans, list(rows["options"]), [template.closer] * len(marks))
        with torch.no_grad():
            scores = score_encoded(model, [enc])[0]
        assert [r.text for r in transcript.responses] == rows["response"].tolist()
        for (_, _, opt_lp), r in zip(scores, rows.itertuples(index=False), strict=True):
            assert list(r.option_logprobs) == pytest.approx(opt_lp, abs=1e-5)
            checked += 1
        assert "<|im_start|>user" in rendering.text and "<<" not in rendering.text
    assert checked == len(sim) == 15
    manifest = json.loads((gambles / "out" / "manifest.json").read_text("utf-8"))
    assert manifest["simulation"]["format"] == "chat"
