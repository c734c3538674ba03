"""Synthetic vs human distributions: distances equal scipy's, the noise floor is the documented resampling, reports."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from test_simulate import gambles, simulate  # noqa: F401 (gambles is a fixture)

from psysim.metrics import distribution_distance, jensen_shannon, population_comparison, proportions, wasserstein


@pytest.mark.parametrize(
    ("p", "q"),
    [([0.1, 0.2, 0.7], [0.3, 0.3, 0.4]), ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0]), ([0.2, 0.2, 0.2, 0.2, 0.2], [0.5, 0, 0, 0, 0.5])],
)
def test_distances_equal_scipy(p, q):
    assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-12)
    values = list(range(1, len(p) + 1))
    assert wasserstein(p, q, values) == pytest.approx(wasserstein_distance(values, values, p, q), abs=1e-12)
    assert distribution_distance(p, q, [str(v) for v in values]) == ("wasserstein", pytest.approx(wasserstein(p, q, values)))
    assert distribution_distance(p, q, [f"opt{v}" for v in values])[0] == "jsd"


def test_wasserstein_uses_the_scale_values_in_order():
    """Options '5','1','3' are points 5, 1, 3 of the scale, whatever their order in the list."""
    p, q = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]  # everyone '5' vs everyone '1'
    assert distribution_distance(p, q, ["5", "1", "3"]) == ("wasserstein", pytest.approx(4.0))


def test_population_comparison_by_hand():
    """Proportions, distance and the seeded bootstrap floor recomputed independently; items with too few humans
    for a floor, or none, are rows that say so."""
    options = ["1", "2", "3"]
    sim = pd.DataFrame(
        [("m", "c", "e", "q1", options, r) for r in ["1", "1", "2", "3"]]
        + [("m", "c", "e", "q2", options, r) for r in ["3", "3"]]
        + [("m", "c", "e", "q3", options, r) for r in ["1", "2"]]
        + [("m", "c", "e", "q4", options, r) for r in ["2"]],
        columns=["model", "condition", "experiment", "item", "options", "response"],
    )
    humans = pd.DataFrame(
        [("e", "q1", r) for r in ["1", "2", "2", "2", "3"]]
        + [("e", "q2", r) for r in ["1", "3", "3", "3", "2", "3"]]
        + [("e", "q3", r) for r in ["1", "1"]],
        columns=["experiment", "item", "response"],
    )
    table = population_comparison(sim, humans, seed=3, n_boot=50)
    assert table["item"].tolist() == ["q1", "q2", "q3", "q4"]
    q3, q4 = table.iloc[2], table.iloc[3]
    assert q3.distance == pytest.approx(wasserstein([0.5, 0.5, 0], [1, 0, 0], [1, 2, 3])) and np.isnan(q3.floor)
    assert q3.note == "2 human response(s): too few for a noise floor (at least 5)"
    assert np.isnan(q4.distance) and q4.n_human == 0 and q4.note == "no human response on this item"
    rng = np.random.default_rng(3)
    for row, item in zip(table.iloc[:2].itertuples(index=False), ["q1", "q2"], strict=True):
        s = sim[sim["item"] == item]["response"].tolist()
        h = humans[humans["item"] == item]["response"].to_numpy()
        p, q = proportions(s, options), proportions(h, options)
        assert list(row.synthetic) == p and list(row.human) == q
        assert row.measure == "wasserstein"
        assert row.distance == pytest.approx(wasserstein_distance([1, 2, 3], [1, 2, 3], p, q), abs=1e-12)
        floors = [wasserstein(proportions(h[rng.integers(0, len(h), size=len(s))], options), q, [1, 2, 3]) for _ in range(50)]
        assert row.floor == pytest.approx(np.mean(floors), abs=1e-12)
        assert row.floor_p95 == pytest.approx(np.quantile(floors, 0.95), abs=1e-12)
        assert (row.n_synthetic, row.n_human) == (len(s), len(h))


def test_simulation_report_compares_with_the_humans(gambles, run_cli):  # noqa: F811
    """psysim report on a simulation: summary.csv per model × condition (+ subgroups) and a self-contained page."""
    simulate(run_cli, "--dry-run", "--out", "out")
    r = run_cli("report", "out")
    assert r.exit_code == 0, r.stderr
    assert "synthetic participants per model and condition (twins of real participants" in " ".join(r.stdout.split())
    summary = pd.read_csv("out/summary.csv", keep_default_na=False)
    overall = summary[summary["subgroup"] == "everyone"]
    assert overall["condition"].tolist() == ["no_persona", "persona", "shuffled_persona"]
    sim = pd.read_parquet("out/simulated.parquet")
    humans = pd.read_parquet("out/humans.parquet")
    assert len(humans) == 5 and set(humans["item"]) == set(sim["item"])
    table = population_comparison(sim, humans, seed=1)
    for row in overall.itertuples(index=False):
        mine = table[table["condition"] == row.condition]
        assert row.items == len(mine) == 5
        assert row.distance == pytest.approx(mine["distance"].mean(), rel=1e-5)
        # One human per item: no noise floor anywhere, said rather than shown as a floor of 0 ("164.8× the floor").
        assert row.items_with_floor == 0 and row.floor == "" and row.note == "no item has 5 human responses: no noise floor"
    assert "cannot be told apart from human sampling noise or not" in " ".join(r.stdout.split())
    assert set(summary.loc[summary["subgroup"] == "gender", "level"]) == {"Female", "Male"}
    page = open("out/report.html", encoding="utf-8").read()
    assert "Does the synthetic cohort look like the real one?" in page and "<svg" in page and "<script" not in page


def test_numeric_profile_fields_become_tertile_bands_of_the_humans():
    """Ages 20..49 (30 people): cut at the humans' tertiles; synthetic participants get the same cut points."""
    from psysim.report import add_bands, subgroups

    humans = pd.DataFrame({"profile.age": list(range(20, 50)), "profile.sex": ["f", "m"] * 15})
    synthetic = pd.DataFrame({"profile.age": [20, 35, 49, 80, None], "profile.sex": ["f", "m", "f", "m", "f"]})
    assert add_bands(humans, synthetic) == ["age band"]
    cuts = np.quantile(np.arange(20, 50), [0, 1 / 3, 2 / 3, 1])
    labels = [f"{a:g}–{b:g}" for a, b in itertools.pairwise(cuts)]
    bands = [None if pd.isna(b) else b for b in synthetic["profile.age band"]]
    assert bands == [labels[0], labels[1], labels[2], None, None]  # 80: above the humans
    assert humans["profile.age band"].value_counts().tolist() == [10, 10, 10]
    groups, notes = subgroups(humans, synthetic)
    assert ("sex", "f", "") in groups and ("age band", labels[1], "") in groups and not notes
    assert not [g for g in groups if g[0] == "age"]  # raw numbers are never levels


def test_subgroups_that_cannot_be_compared_say_why():
    """A level only one cohort has is a row with its reason; a field with too many levels is a note, not silence."""
    from psysim.report import subgroups

    humans = pd.DataFrame({"profile.sex": ["f", "m", "x"] * 4, "profile.city": [f"c{i:02}" for i in range(12)]})
    synthetic = pd.DataFrame({"profile.sex": ["f", "m", "other"], "profile.city": ["c01", "c02", "c03"]})
    groups, notes = subgroups(humans, synthetic)
    assert groups == [
        ("sex", "f", ""),
        ("sex", "m", ""),
        ("sex", "other", "no human in this subgroup"),
        ("sex", "x", "no synthetic participant in this subgroup"),
    ]
    assert notes == ["city has 12 levels among the humans: not split into subgroups (at most 6)."]


def test_subgroups_are_named_with_the_schemas_value_labels(gambles, run_cli):  # noqa: F811
    import json

    schema = json.loads((gambles / "schema.json").read_text("utf-8"))
    schema["properties"]["gender"]["x-psysim"] = {"value_labels": {"Female": "woman", "Male": "man"}}
    (gambles / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    simulate(run_cli, "--dry-run", "--out", "out")
    assert run_cli("report", "out").exit_code == 0
    summary = pd.read_csv("out/summary.csv", keep_default_na=False)
    assert set(summary.loc[summary["subgroup"] == "gender", "level"]) == {"Female (woman)", "Male (man)"}


def test_scale_nominal_compares_coded_choices_as_categories():
    """Options '1'/'2' are numbers, but with scale: nominal they are categories (Jensen–Shannon)."""
    assert distribution_distance([0.2, 0.8], [0.6, 0.4], ["1", "2"]) == ("wasserstein", pytest.approx(0.4))
    assert distribution_distance([0.2, 0.8], [0.6, 0.4], ["1", "2"], "nominal") == (
        "jsd",
        pytest.approx(jensenshannon([0.2, 0.8], [0.6, 0.4], base=2) ** 2),
    )
    with pytest.raises(ValueError, match="scale ordinal needs numeric options"):
        distribution_distance([0.5, 0.5], [0.5, 0.5], ["A", "B"], "ordinal")


def test_scale_in_the_experiment_file_reaches_the_report(gambles, run_cli):  # noqa: F811
    from test_simulate import YAML

    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  scale: ordinal\n", encoding="utf-8")
    r = run_cli("simulate", "experiment.yaml", "-q", "--dry-run", "--out", "out")
    assert r.exit_code == 2
    assert "simulation.scale: expected options that are numbers (a rating scale), found ['A', 'B']" in r.stderr
    (gambles / "experiment.yaml").write_text(YAML + "simulation:\n  scale: nominal\n", encoding="utf-8")
    simulate(run_cli, "--dry-run", "--out", "out")
    assert run_cli("report", "out").exit_code == 0
    assert set(pd.read_csv("out/summary.csv")["measure"]) == {"jsd"}
