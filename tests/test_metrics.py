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
).assign(trial=[0, 1, 0, 0])


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


def _reference_bootstrap(values: dict[str, dict[str, list[float]]], seed: int, n_boot: int, chunk: int = 256):
    """An independent, plain-Python reference of psysim.stats.Bootstrap's documented scheme.

    ``values[study][participant]`` are one series' response values. Per study (sorted names; participants sorted),
    resample participants with replacement using numpy's generator seeded [seed, study index, chunk index] for each
    chunk of ``chunk`` resamples; a study's resampled score is the mean of the resampled participants' responses
    (a response-weighted mean); a resample's score is the plain mean over studies; the interval is the 2.5% and
    97.5% linear quantiles.
    """
    import statistics

    import numpy as np

    per_study = []
    for si, study in enumerate(sorted(values)):
        pids = sorted(values[study])
        scores = []
        for c, start in enumerate(range(0, n_boot, chunk)):
            draws = np.random.default_rng([seed, si, c]).integers(0, len(pids), size=(min(chunk, n_boot - start), len(pids)))
            for row_ in draws.tolist():
                picked = [v for i in row_ for v in values[study][pids[i]]]
                scores.append(statistics.fmean(picked))
        per_study.append(scores)
    means = sorted(statistics.fmean(col) for col in zip(*per_study, strict=True))

    def quantile(q):  # numpy's default (linear) definition
        pos = q * (len(means) - 1)
        lo = int(pos)
        return means[lo] + (means[min(lo + 1, len(means) - 1)] - means[lo]) * (pos - lo)

    point = statistics.fmean(statistics.fmean([v for vs in values[s].values() for v in vs]) for s in sorted(values))
    return point, quantile(0.025), quantile(0.975)


def test_the_one_bootstrap_equals_an_independent_reference():
    """Study-stratified, participant-resampled, response-weighted per study, unweighted over studies; chunked draws."""
    from psysim.stats import Bootstrap

    values = {
        "s1": {"a": [1.0, 2.0], "b": [0.5], "c": [3.0, 1.0, 2.0], "d": [0.0]},
        "s2": {"x": [4.0], "y": [2.0, 2.5], "z": [1.0]},
    }
    frame = pd.DataFrame(
        [(s, p, v) for s, ps in values.items() for p, vs in ps.items() for v in vs], columns=["experiment", "participant", "v"]
    )
    for chunk in (7, 256):  # the chunk size bounds memory; draws are defined per chunk, so test two
        boot = Bootstrap(frame[["experiment", "participant"]], n_boot=600, seed=3, chunk=chunk)
        got = boot.estimate(frame, ["v"])["v"]
        point, lo, hi = _reference_bootstrap(values, seed=3, n_boot=600, chunk=chunk)
        assert got.point == pytest.approx(point) and got.n == 7
        assert (got.ci_low, got.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_the_bootstrap_keeps_memory_bounded_on_a_large_cohort():
    """20,000 participants, 10,000 resamples: chunked draws never hold n_boot × n indices (1.6 GB) at once."""
    import tracemalloc

    import numpy as np

    from psysim.stats import Bootstrap

    n = 20_000
    frame = pd.DataFrame({"experiment": "s", "participant": np.arange(n), "v": np.random.default_rng(0).random(n)})
    boot = Bootstrap(frame[["experiment", "participant"]], n_boot=10_000, seed=0)
    tracemalloc.start()
    est = boot.estimate(frame, ["v"])["v"]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6 and est.ci_low < 0.5 < est.ci_high


def test_compare_conditions_pairs_participants():
    """Persona benefit per model × format: the mean over participants of (persona − no_persona) participant NLLs."""
    from psysim.metrics import compare_conditions

    rows = []
    for cond, shift in (("no_persona", 0.0), ("persona", -0.5)):
        for pid, lp in (("p1", -1.0), ("p2", -2.0), ("p3", -4.0)):
            rows.append(dict(row("s", pid, "A", lp - shift), condition=cond))
    out = compare_conditions(pd.DataFrame(rows).assign(trial=0), "no_persona", "persona", seed=1, n_boot=500)
    [res] = out.to_dict("records")
    assert res["experiment"] == "all studies"
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

    assert headroom_recovered(model=1.5, population=2.0, individual=1.0) == pytest.approx(0.5)
    assert headroom_recovered(model=2.0, population=2.0, individual=1.0) == 0.0
    assert math.isnan(headroom_recovered(model=1.0, population=1.0, individual=1.2))  # no gap
    assert math.isnan(headroom_recovered(model=2.5, population=2.0, individual=1.0))  # worse than the population: not "−50%"


def test_compare_models_is_the_paired_difference_on_common_responses():
    """Fine-tuned minus base: the difference of Psych-201 scores on the responses both scored, per study and over studies."""
    from psysim.metrics import compare_models

    tuned = TRIALS.assign(model="tuned", logprob=TRIALS["logprob"] + pd.Series([0.1, 0.3, -0.2, 0.05]))
    both = pd.concat([TRIALS, tuned], ignore_index=True)
    table = compare_models(both, "m", "tuned", measure="nll", seed=4, n_boot=500).set_index("experiment")
    # NLL changes by -0.1, -0.3 (s1, p1), +0.2 (s1, p2), -0.05 (s2): s1's mean over responses -0.2/3, s2 -0.05
    assert table.loc["s1", "mean"] == pytest.approx((-0.1 - 0.3 + 0.2) / 3)
    assert table.loc["all studies", "mean"] == pytest.approx(((-0.1 - 0.3 + 0.2) / 3 - 0.05) / 2)
    assert table.loc["all studies", "n"] == 3 and table.loc["all studies", "responses"] == 4
    half = both.drop(index=[5])  # the tuned model did not score p1's second response: it leaves both arms
    assert (
        compare_models(half, "m", "tuned", measure="nll", seed=4, n_boot=500).set_index("experiment").loc["s1", "responses"] == 2
    )
