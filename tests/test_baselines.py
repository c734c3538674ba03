"""Baselines follow scikit-learn's conventions, equal hand computations, and never see the participant they predict."""

from __future__ import annotations

import pandas as pd
import pytest

from psysim.baselines import (
    PersonAdjustedPopulation,
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

ALL = [UniformBaseline, PopulationFrequency, ProfileModel, PersonAdjustedPopulation]


@pytest.mark.parametrize("cls", ALL)
def test_scikit_learn_contract(cls):
    """Parameters in __init__, fit returns self, learned attributes end in '_', predict_proba gives distributions."""
    from sklearn.base import BaseEstimator, clone

    est = cls()
    params = {
        "alpha": 1.0,
        **({"C": 1.0} if cls is ProfileModel else {}),
        **({"l2": 1.0, "prior": 2.0} if cls is PersonAdjustedPopulation else {}),
    }
    assert isinstance(est, BaseEstimator) and est.get_params() == params
    assert clone(est).get_params() == params
    assert est.set_params(alpha=0.5) is est and est.alpha == 0.5
    assert not [k for k in vars(est) if k.endswith("_")]
    assert est.fit(TABLE) is est
    assert [k for k in vars(est) if k.endswith("_")]
    probs = est.predict_proba(TABLE)
    assert len(probs) == len(TABLE)
    assert all(len(p) == 2 and sum(p) == pytest.approx(1.0) and min(p) > 0 for p in probs)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        cls(alpha=0).fit(TABLE)  # scikit-learn's convention: parameters are checked in fit
    with pytest.raises(ValueError, match="beta"):
        est.set_params(beta=1)


def test_population_frequency_by_hand():
    """Item counts with add-one smoothing; an item never seen falls back to the study's counts."""
    est = PopulationFrequency().fit(TABLE[TABLE["participant"] != "p3"])  # item x: A,B,A; y: A,B; study: A3 B2
    probs = est.predict_proba(TABLE[TABLE["participant"] == "p3"])
    assert probs[0] == pytest.approx([(2 + 1) / (3 + 2), (1 + 1) / (3 + 2)])  # item x
    assert probs[1] == pytest.approx([(3 + 1) / (5 + 2), (2 + 1) / (5 + 2)])  # item z unseen: the study


def _cohort(n_people: int, n_trials: int, biased: bool, seed: int):
    """A synthetic two-option study: each trial shows keys A/B in a random order; every item is shared.

    ``biased``: every person has a strong, stable preference (0.9 for their own favourite key, half the
    people A, half B); otherwise everyone chooses A with probability 0.6 whatever they did before.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_people):
        favourite = "A" if i % 2 else "B"
        for t in range(n_trials):
            options = ["A", "B"] if rng.random() < 0.5 else ["B", "A"]
            p_a = (0.9 if favourite == "A" else 0.1) if biased else 0.6
            rows.append(("s", f"p{i}", t, f"item {t}", options, "A" if rng.random() < p_a else "B"))
    return pd.DataFrame(rows, columns=["experiment", "participant", "trial", "item", "options", "response"])


def _nll(cv, name):
    import math

    g = cv[cv["baseline"] == name]
    return sum(-math.log(p[o.index(r)]) for p, o, r in zip(g["option_probs"], g["options"], g["response"], strict=True)) / len(g)


def test_person_adjusted_population_beats_the_population_where_people_differ():
    """Every person has a strong stable bias: their other trials predict them far better than the population."""
    cv = cross_validate(
        _cohort(30, 12, biased=True, seed=1), {"population": PopulationFrequency(), "individual": PersonAdjustedPopulation()}
    )
    pop, ind = _nll(cv, "population"), _nll(cv, "individual")
    assert pop > 0.65  # the population mixes A-people and B-people: near a coin flip
    assert ind < pop - 0.2  # the person's own rate carries their preference


def test_person_adjusted_population_stays_near_the_population_where_people_do_not_differ():
    """Nobody differs: the learned weights stay near zero and the baseline is within noise of the population, never far worse."""
    for seed in range(3):
        cv = cross_validate(
            _cohort(30, 12, biased=False, seed=seed),
            {"population": PopulationFrequency(), "individual": PersonAdjustedPopulation()},
        )
        assert abs(_nll(cv, "individual") - _nll(cv, "population")) < 0.02


def test_person_adjusted_population_never_reads_the_predicted_response():
    """Flipping the predicted response changes nothing in its own prediction (other rows may change: they see it)."""
    table = _cohort(10, 6, biased=True, seed=4)
    est = PersonAdjustedPopulation().fit(table[table["participant"] != "p0"])
    rows = table[table["participant"] == "p0"].reset_index(drop=True)
    before = est.predict_proba(rows)[3]
    flipped = rows.copy()
    flipped.loc[3, "response"] = "B" if rows.loc[3, "response"] == "A" else "A"
    assert est.predict_proba(flipped)[3] == pytest.approx(before)


def test_roles_pool_counterbalanced_keys():
    """Keys are counterbalanced (half the people press C for 'exists', half R): pooled by role, the population
    predicts everyone as well as they deserve; pooled by letter, it would be no better than a coin flip."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        keys = ["C", "R"] if i % 2 else ["R", "C"]  # first key means "exists"
        for t in range(8):
            exists = rng.random() < 0.9
            rows.append(
                (
                    "s",
                    f"p{i}",
                    t,
                    f"word {t}",
                    keys,
                    ["exists", "absent"],
                    keys[0] if exists else keys[1],
                    "exists" if exists else "absent",
                )
            )
    table = pd.DataFrame(rows, columns=["experiment", "participant", "trial", "item", "options", "keys", "response", "choice"])
    by_role = cross_validate(table, {"population": PopulationFrequency(), "uniform": UniformBaseline()})
    by_letter = cross_validate(table.drop(columns=["keys", "choice"]), {"population": PopulationFrequency()})
    assert _nll(by_role, "population") < 0.45 < 0.69 < _nll(by_role, "uniform")
    assert _nll(by_letter, "population") > _nll(by_role, "population") + 0.1


def test_cross_validation_never_sees_the_predicted_participant():
    """Leave-one-participant-out: p3's population prediction equals a fit on p1 and p2 alone."""
    cv = cross_validate(TABLE)
    assert sorted(cv["baseline"].unique()) == ["individual", "population", "profile", "uniform"]
    got = cv[(cv["baseline"] == "population") & (cv["participant"] == "p3")]["option_probs"].tolist()
    expected = PopulationFrequency().fit(TABLE[TABLE["participant"] != "p3"]).predict_proba(TABLE[TABLE["participant"] == "p3"])
    assert got == expected
    uniform = cv[cv["baseline"] == "uniform"].reset_index(drop=True)
    assert uniform["option_probs"].tolist() == [[0.5, 0.5]] * 7
    assert uniform["correct"].tolist() == [0.5] * 7  # chance as it is: the expected accuracy 1/k


def test_response_table_of_the_quickstart():
    """The quickstart's responses: each trial's two letters, roles, and items shared across people."""
    from conftest import REPO

    import psysim

    exp = psysim.load_experiment(REPO / "experiments" / "quickstart.yaml")
    table = response_table(exp)
    assert len(table) == 450 and table["options"].map(len).eq(2).all()
    first = table.iloc[0]
    assert first["item"] == "trial 1" and first["response"] in first["options"]
    assert sorted(first["keys"]) == ["seven", "three"] and first["choice"] in first["keys"]
    assert table.groupby("item")["participant"].nunique().min() == 50  # every item is shared by everyone


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
        ProfileModel(C=0).fit(table)


def test_participant_folds_are_seeded_balanced_and_cover_everyone():
    """k folds: every participant in exactly one, sizes differ by at most one, same seed same folds."""
    from psysim.baselines import participant_folds

    pids = [f"p{i}" for i in range(10)] * 2  # repeated rows of the same participants
    folds = participant_folds(pids, 3, seed=5)
    assert sorted(folds) == sorted(set(pids))
    sizes = sorted(pd.Series(folds).value_counts().tolist())
    assert sizes == [3, 3, 4]  # scikit-learn's GroupKFold, participants as groups
    assert participant_folds(pids, 3, seed=5) == folds
    assert participant_folds(pids, 3, seed=6) != folds
    assert participant_folds(pids, None, seed=5) == {f"p{i}": i for i in range(10)}  # leave one out
    with pytest.raises(ValueError, match="3 folds need at least 3 participants, found 2"):
        participant_folds(["a", "b"], 3, seed=0)
    with pytest.raises(ValueError, match="expected at least 2 folds, found 1"):
        participant_folds(["a", "b"], 1, seed=0)


def test_k_fold_population_equals_fitting_on_the_other_folds_by_hand():
    """With folds, a participant is predicted from the participants of the *other* folds only."""
    from psysim.baselines import participant_folds

    folds = participant_folds(TABLE["participant"], 2, seed=3)
    out = cross_validate(TABLE, {"population": PopulationFrequency()}, folds=2, seed=3)
    for pid in ("p1", "p2", "p3"):
        train = TABLE[TABLE["participant"].map(folds) != folds[pid]]
        rows = TABLE[TABLE["participant"] == pid]
        expected = PopulationFrequency().fit(train).predict_proba(rows) if len(train) else None
        got = out[out["participant"] == pid]["option_probs"].tolist()
        if expected is None:
            assert all(p is None for p in got)
        else:
            assert [list(p) for p in got] == [pytest.approx(e) for e in expected]


def test_unfittable_baselines_say_why_instead_of_guessing():
    """One participant: no population to learn from; one response: the person-adjusted model is the population."""
    one = TABLE[TABLE["participant"] == "p1"]
    out = cross_validate(one)
    pop = out[out["baseline"] == "population"]
    assert pop["option_probs"].isna().all() and pop["correct"].isna().all()
    assert set(pop["note"]) == {"no other participant in study s to learn from"}
    assert out[out["baseline"] == "uniform"]["note"].isna().all()
    single = TABLE[(TABLE["participant"] == "p2") & (TABLE["trial"] == 0)]
    both = pd.concat([single, TABLE[TABLE["participant"] != "p2"]])
    adjusted = cross_validate(both, {"individual": PersonAdjustedPopulation(), "population": PopulationFrequency()})
    p2 = adjusted[(adjusted["participant"] == "p2")].set_index("baseline")
    assert p2.loc["individual", "note"] == "fell back to the population: no other trials of this participant to learn from"
    assert p2.loc["individual", "option_probs"] == pytest.approx(p2.loc["population", "option_probs"])


def test_profile_model_notes_its_population_fallback():
    """Items without a regression (unseen, or no variation) are predicted by the population and say so."""
    out = cross_validate(TABLE, {"profile": ProfileModel()})
    notes = out.set_index(["participant", "trial"])["note"]
    # p3's item z is nobody else's: population fallback; p3's item x is shared and varies (A, B, A): a regression.
    assert notes[("p3", 1)].startswith("fell back to population frequencies")
    assert pd.isna(notes[("p3", 0)])
    assert out["option_probs"].notna().all()  # a fallback still predicts
