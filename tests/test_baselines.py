"""Baselines follow scikit-learn's conventions, equal hand computations, and never see the participant they predict."""

from __future__ import annotations

import pandas as pd
import pytest

from psysim.baselines import (
    IndividualCeiling,
    PopulationFrequency,
    ProfileModel,
    UniformBaseline,
    cross_validate,
    response_table,
)

OPTIONS = ["A", "B"]
TABLE = pd.DataFrame(
    [
        # experiment, participant, trial, item, response
        ("s", "p1", 0, "x", "A"),
        ("s", "p1", 1, "y", "A"),
        ("s", "p1", 2, "x", "B"),
        ("s", "p2", 0, "x", "A"),
        ("s", "p2", 1, "y", "B"),
        ("s", "p3", 0, "x", "A"),
        ("s", "p3", 1, "z", "B"),
    ],
    columns=["experiment", "participant", "trial", "item", "response"],
).assign(
    options=[OPTIONS] * 7,
    **{"profile.age": [30.0, 30.0, 30.0, 60.0, 60.0, None, None], "profile.group": ["a", "a", "a", "b", "b", "b", None]},
)

ALL = [UniformBaseline, PopulationFrequency, ProfileModel, IndividualCeiling]


@pytest.mark.parametrize("cls", ALL)
def test_scikit_learn_contract(cls):
    """Parameters in __init__, fit returns self, learned attributes end in '_', predict_proba gives distributions."""
    est = cls()
    assert est.get_params() == ({"alpha": 1.0, "C": 1.0} if cls is ProfileModel else {"alpha": 1.0})
    assert est.set_params(alpha=0.5) is est and est.alpha == 0.5
    assert not [k for k in vars(est) if k.endswith("_")]
    assert est.fit(TABLE) is est
    assert [k for k in vars(est) if k.endswith("_")]
    probs = est.predict_proba(TABLE)
    assert len(probs) == len(TABLE)
    assert all(len(p) == 2 and sum(p) == pytest.approx(1.0) and min(p) > 0 for p in probs)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        cls(alpha=0)
    with pytest.raises(ValueError, match="unknown parameter 'beta'"):
        est.set_params(beta=1)


def test_population_frequency_by_hand():
    """Item counts with add-one smoothing; an item never seen falls back to the study's counts."""
    est = PopulationFrequency().fit(TABLE[TABLE["participant"] != "p3"])  # item x: A,B,A; y: A,B; study: A3 B2
    probs = est.predict_proba(TABLE[TABLE["participant"] == "p3"])
    assert probs[0] == pytest.approx([(2 + 1) / (3 + 2), (1 + 1) / (3 + 2)])  # item x
    assert probs[1] == pytest.approx([(3 + 1) / (5 + 2), (2 + 1) / (5 + 2)])  # item z unseen: the study


def test_individual_ceiling_leaves_the_trial_out():
    """p1 answered A, A, B: predicting its trial 2 (B) uses A, A only."""
    est = IndividualCeiling().fit(TABLE)
    probs = est.predict_proba(TABLE[TABLE["participant"] == "p1"])
    assert probs[0] == pytest.approx([(1 + 1) / 4, (1 + 1) / 4])  # without this A: one A, one B
    assert probs[2] == pytest.approx([(2 + 1) / 4, (0 + 1) / 4])  # without this B: two A


def test_cross_validation_never_sees_the_predicted_participant():
    """Leave-one-participant-out: p3's population prediction equals a fit on p1 and p2 alone."""
    cv = cross_validate(TABLE)
    assert sorted(cv["baseline"].unique()) == ["individual", "population", "profile", "uniform"]
    got = cv[(cv["baseline"] == "population") & (cv["participant"] == "p3")]["option_probs"].tolist()
    expected = PopulationFrequency().fit(TABLE[TABLE["participant"] != "p3"]).predict_proba(TABLE[TABLE["participant"] == "p3"])
    assert got == expected
    uniform = cv[cv["baseline"] == "uniform"].reset_index(drop=True)
    assert uniform["option_probs"].tolist() == [[0.5, 0.5]] * 7
    assert uniform["correct"].tolist() == [r == "A" for r in TABLE["response"]]  # ties go to the first option


def test_response_table_of_the_quickstart():
    """The quickstart's responses, with items that pair up participants who saw the same trial text."""
    from conftest import REPO

    import psysim

    exp = psysim.load_experiment(REPO / "experiments" / "quickstart.yaml")
    table = response_table(exp)
    assert len(table) == 450 and table["options"].notna().all()
    first = table.iloc[0]
    assert first["item"].endswith("You predict <<") and first["response"] in first["options"]
    assert table.groupby("item")["participant"].nunique().max() > 1  # items are shared across people


def test_profile_model_learns_what_the_profile_determines():
    """On an item where group 'a' always answers A and group 'b' always B, the profile model predicts each
    held-out person better than the population does; unseen items fall back to the population."""
    rows = []
    for i in range(12):
        group = "a" if i % 2 else "b"
        rows.append(("s", f"p{i}", 0, "x", "A" if group == "a" else "B", group, 20.0 + i))
    table = pd.DataFrame(rows, columns=["experiment", "participant", "trial", "item", "response", "profile.group", "profile.age"])
    table = table.assign(options=[OPTIONS] * len(table))
    cv = cross_validate(table, {"population": PopulationFrequency(), "profile": ProfileModel()})
    p_human = {
        name: [p[OPTIONS.index(r)] for p, r in zip(g["option_probs"], g["response"], strict=True)]
        for name, g in cv.groupby("baseline")
    }
    assert all(a > b for a, b in zip(p_human["profile"], p_human["population"], strict=True))
    assert cv[cv["baseline"] == "profile"]["correct"].all()
    unseen = table.assign(item="never seen")
    fitted = ProfileModel().fit(table)
    assert fitted.predict_proba(unseen) == PopulationFrequency().fit(table).predict_proba(unseen)
    with pytest.raises(ValueError, match="C must be > 0"):
        ProfileModel(C=0)
