"""Metrics equal hand computations on a small table, and aggregate as Psych-201 does (mean over a study's
responses, then an unweighted mean over studies)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from psysim.metrics import condition_metrics, participant_metrics, response_metrics, study_metrics


def row(experiment, participant, response, logprob, probs=None, options=("A", "B")):
    correct = None
    if probs is not None:
        correct = options[max(range(len(probs)), key=lambda i: probs[i])] == response
    return {
        "model": "m",
        "format": "raw",
        "condition": "no_persona",
        "experiment": experiment,
        "participant": participant,
        "response": response,
        "logprob": logprob,
        "options": list(options) if probs is not None else None,
        "option_probs": list(probs) if probs is not None else None,
        "correct": correct,
    }


TRIALS = pd.DataFrame(
    [
        row("s1", "p1", "A", math.log(0.5), [0.8, 0.2]),
        row("s1", "p1", "B", math.log(0.1), [0.6, 0.4]),
        row("s1", "p2", "A", math.log(0.25), [0.5, 0.5]),
        row("s2", "q1", "B", math.log(0.9), [0.1, 0.9]),
    ]
)


def test_response_level_measures_by_hand():
    """nll, option-normalised nll, Brier and pseudo-R² of each response, computed by hand."""
    m = response_metrics(TRIALS)
    assert m["nll"].tolist() == pytest.approx([-math.log(0.5), -math.log(0.1), -math.log(0.25), -math.log(0.9)])
    assert m["option_nll"].tolist() == pytest.approx([-math.log(0.8), -math.log(0.4), -math.log(0.5), -math.log(0.9)])
    assert m["brier"].tolist() == pytest.approx([0.2**2 * 2, 0.6**2 * 2, 0.5**2 * 2, 0.1**2 * 2])
    assert m["pseudo_r2"].tolist() == pytest.approx(
        [1 + math.log(0.8) / math.log(2), 1 + math.log(0.4) / math.log(2), 0.0, 1 + math.log(0.9) / math.log(2)]
    )
    assert m["accuracy"].tolist() == [1.0, 0.0, 1.0, 1.0]  # a tie goes to the first option


def test_without_options_only_nll_is_defined():
    """Where options are unknown, option-based measures are NaN, never 0."""
    m = response_metrics(pd.DataFrame([row("s", "p", "hello", -3.0)]))
    assert m["nll"].tolist() == [3.0]
    assert m[["option_nll", "brier", "pseudo_r2", "accuracy"]].isna().all().all()


def test_aggregation_follows_psych201():
    """Participant and study scores are means over responses; a condition's is the unweighted mean over studies."""
    nll = response_metrics(TRIALS)["nll"].tolist()
    parts = participant_metrics(TRIALS)
    assert parts["participant"].tolist() == ["p1", "p2", "q1"]
    assert parts["nll"].tolist() == pytest.approx([(nll[0] + nll[1]) / 2, nll[2], nll[3]])
    studies = study_metrics(TRIALS)
    s1, s2 = (nll[0] + nll[1] + nll[2]) / 3, nll[3]
    assert studies["nll"].tolist() == pytest.approx([s1, s2])
    assert studies["responses"].tolist() == [3, 1]
    [cond] = condition_metrics(TRIALS).to_dict("records")
    assert cond["nll"] == pytest.approx((s1 + s2) / 2)  # not (sum of 4 responses) / 4
    assert (cond["studies"], cond["responses"]) == (2, 4)
    assert cond["accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_paired_bootstrap_equals_a_plain_reference():
    """Mean difference, percentile CI and d_z equal a plain-Python computation from the same resampling draws."""
    import statistics

    import numpy as np

    from psysim.metrics import paired_bootstrap

    before = [1.0, 2.0, 1.5, 3.0, 2.5, 0.5]
    after = [0.8, 2.1, 1.0, 2.0, 2.6, 0.1]
    got = paired_bootstrap(before, after, seed=11, n_boot=2000)
    diff = [b - a for a, b in zip(before, after, strict=True)]
    draws = np.random.default_rng(11).integers(0, len(diff), size=(2000, len(diff))).tolist()
    means = sorted(statistics.fmean(diff[i] for i in row) for row in draws)

    def quantile(q):  # numpy's default (linear) definition
        pos = q * (len(means) - 1)
        lo = int(pos)
        return means[lo] + (means[min(lo + 1, len(means) - 1)] - means[lo]) * (pos - lo)

    assert got["n"] == 6
    assert got["mean"] == pytest.approx(statistics.fmean(diff))
    assert got["ci_low"] == pytest.approx(quantile(0.025)) and got["ci_high"] == pytest.approx(quantile(0.975))
    assert got["d_z"] == pytest.approx(statistics.fmean(diff) / statistics.stdev(diff))
    assert paired_bootstrap(before, after, seed=11, n_boot=2000) == got  # same seed, same interval


def test_compare_conditions_pairs_participants():
    """Persona benefit per model × format: the mean over participants of (persona − no_persona) participant NLLs."""
    from psysim.metrics import compare_conditions

    rows = []
    for cond, shift in (("no_persona", 0.0), ("persona", -0.5)):
        for pid, lp in (("p1", -1.0), ("p2", -2.0), ("p3", -4.0)):
            rows.append(dict(row("s", pid, "A", lp - shift), condition=cond))
    out = compare_conditions(pd.DataFrame(rows), "no_persona", "persona", seed=1, n_boot=500)
    [res] = out.to_dict("records")
    assert (res["model"], res["format"], res["n"]) == ("m", "raw", 3)
    assert res["mean"] == pytest.approx(-0.5)  # the persona lowers every participant's NLL by 0.5
    assert res["ci_low"] == pytest.approx(-0.5) and res["ci_high"] == pytest.approx(-0.5)
    assert math.isnan(res["d_z"])  # no spread in the differences: d_z is undefined, not infinite


def test_post_training_d_per_study_by_hand():
    """Cohen's d of NLL (post − base) with the pooled SD of each study, then the unweighted mean over studies."""
    import statistics

    from psysim.metrics import post_training_d

    rows = []
    base_lp = {"s1": [-1.0, -2.0, -3.0], "s2": [-1.0, -1.5]}
    post_lp = {"s1": [-2.0, -2.5, -4.5], "s2": [-1.2, -1.1]}
    for model, table in (("base", base_lp), ("post", post_lp)):
        for exp, lps in table.items():
            for i, lp in enumerate(lps):
                rows.append(dict(row(exp, f"p{i}", "A", lp), model=model))
    out = post_training_d(pd.DataFrame(rows), "base", "post")
    expected = {}
    for exp in ("s1", "s2"):
        x, y = [-v for v in base_lp[exp]], [-v for v in post_lp[exp]]
        pooled = math.sqrt((statistics.variance(x) + statistics.variance(y)) / 2)
        expected[exp] = (statistics.fmean(y) - statistics.fmean(x)) / pooled
    assert out["experiment"].tolist() == ["s1", "s2"]
    assert out["d"].tolist() == pytest.approx([expected["s1"], expected["s2"]])
    assert out.attrs["mean_d"] == pytest.approx((expected["s1"] + expected["s2"]) / 2)


def test_headroom_recovered():
    """Share of the population-to-ceiling gap a model closes; undefined without headroom."""
    from psysim.metrics import headroom_recovered

    assert headroom_recovered(model=1.5, population=2.0, ceiling=1.0) == pytest.approx(0.5)
    assert headroom_recovered(model=2.0, population=2.0, ceiling=1.0) == 0.0
    assert math.isnan(headroom_recovered(model=1.0, population=1.0, ceiling=1.2))


def test_compare_models_is_the_paired_difference_of_participant_means():
    """Fine-tuned minus base, per participant (mean NLL over their responses), bootstrapped as paired_bootstrap does."""
    from psysim.metrics import compare_models, paired_bootstrap

    tuned = TRIALS.assign(model="tuned", logprob=TRIALS["logprob"] + pd.Series([0.1, 0.3, -0.2, 0.05]))
    both = pd.concat([TRIALS, tuned], ignore_index=True)
    table = compare_models(both, "m", "tuned", measure="nll", seed=4, n_boot=500)
    assert len(table) == 1
    r = table.iloc[0]
    # per participant: p1 mean change (-0.1 - 0.3) / 2 = -0.2; p2: +0.2; q1: -0.05 (NLL = -logprob)
    assert r["mean"] == pytest.approx((-0.2 + 0.2 - 0.05) / 3, abs=1e-12)
    expected = paired_bootstrap([0.0, 0.0, 0.0], [-0.2, 0.2, -0.05], seed=4, n_boot=500)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(expected["ci_low"]), pytest.approx(expected["ci_high"]))
    assert r["n"] == 3 and (r["before"], r["after"]) == ("m", "tuned")
