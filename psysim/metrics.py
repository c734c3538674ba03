"""Metrics of how well a model predicts each human response, from a run's ``trials`` table.

Levels: response → participant → study → model × format × condition.

* ``nll`` — negative log-likelihood of the human response over the full
  vocabulary, summed over its tokens (Psych-201's measure; ``-logprob``).
* ``option_nll`` — the same with the probability renormalised over the trial's
  options (only where options are known).
* ``accuracy`` — whether the most probable option is the human's.
* ``brier`` — squared error of the option probabilities against the human's
  choice, summed over options (0 is perfect, 2 the worst).
* ``pseudo_r2`` — ``1 − option_nll / nll_random``, with ``nll_random =
  log(number of options)``: 0 is chance, 1 perfect, negative worse than chance.

Aggregation follows Psych-201: a study's score is the mean over its responses;
a condition's score is the unweighted mean over studies (so a long study does
not outweigh a short one).
"""

from __future__ import annotations

import itertools
import math

from .config import EvaluationConfig

__all__ = [
    "CONDITION_KEYS",
    "compare_conditions",
    "compare_models",
    "condition_metrics",
    "distribution_distance",
    "headroom_recovered",
    "jensen_shannon",
    "option_probs",
    "ordinal_values",
    "participant_metrics",
    "population_comparison",
    "post_training_d",
    "predicted_option",
    "proportions",
    "response_metrics",
    "study_metrics",
    "wasserstein",
]

#: The columns that identify one scored condition.
CONDITION_KEYS = ["model", "format", "condition"]
_MEASURES = ["nll", "option_nll", "accuracy", "brier", "pseudo_r2"]


def predicted_option(options, scores):
    """The option with the highest score (probability or log-probability); ties go to the first option."""
    return options[max(range(len(options)), key=lambda i: (scores[i], -i))]


def option_probs(logprobs, temperature: float = 1.0) -> list[float]:
    """Options' log-probabilities renormalised over the options, at ``temperature`` (0: all mass on the most probable,
    ties to the first, as :func:`predicted_option`)."""
    if temperature == 0:
        best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
        return [1.0 if i == best else 0.0 for i in range(len(logprobs))]
    scaled = [x / temperature for x in logprobs]
    top = max(scaled)
    norm = top + math.log(math.fsum(math.exp(x - top) for x in scaled))  # log-sum-exp: no overflow, no underflow to 0/0
    return [math.exp(x - norm) for x in scaled]


def response_metrics(trials):
    """``trials`` with one column per measure added (NaN where a measure needs options that are unknown)."""
    import numpy as np

    out = trials.copy()
    out["nll"] = -out["logprob"]
    option_nll, brier, r2 = [], [], []
    for options, probs, response in zip(out["options"], out["option_probs"], out["response"], strict=True):
        if options is None or probs is None or len(options) == 0 or response not in list(options):
            option_nll.append(math.nan)
            brier.append(math.nan)
            r2.append(math.nan)
            continue
        probs = [float(p) for p in probs]
        k = list(options).index(response)
        nll = -math.log(probs[k]) if probs[k] > 0 else math.inf
        option_nll.append(nll)
        brier.append(math.fsum((p - (1.0 if i == k else 0.0)) ** 2 for i, p in enumerate(probs)))
        r2.append(1.0 - nll / math.log(len(options)))
    out["option_nll"] = np.array(option_nll, dtype=float)
    out["brier"] = np.array(brier, dtype=float)
    out["pseudo_r2"] = np.array(r2, dtype=float)
    out["accuracy"] = out["correct"].astype("float64") if "correct" in out else math.nan
    return out


def _mean_by(frame, keys):
    measured = frame if "option_nll" in frame else response_metrics(frame)
    grouped = measured.groupby(keys, sort=False, dropna=False)
    table = grouped[_MEASURES].mean()
    table.insert(0, "responses", grouped.size())
    return table.reset_index()


def participant_metrics(trials):
    """One row per model × format × condition × experiment × participant: mean of each measure over responses."""
    return _mean_by(trials, [*CONDITION_KEYS, "experiment", "participant"])


def study_metrics(trials):
    """One row per model × format × condition × experiment: the mean over the study's responses (Psych-201's score)."""
    return _mean_by(trials, [*CONDITION_KEYS, "experiment"])


def dropped_to_fit(trials, by: tuple[str, ...] = ("experiment", "condition")):
    """Responses left unscored to fit a model's context (``scoring.context: drop_oldest``), summed per ``by``.

    Each scored prompt records how many of its oldest trials it dropped
    (``context_dropped``, the same on every row of the prompt); only groups
    with at least one dropped response are returned.
    """
    if "context_dropped" not in trials:
        return None
    per_prompt = trials.groupby([*CONDITION_KEYS, "experiment", "participant"], sort=False)["context_dropped"].first()
    dropped = per_prompt[per_prompt > 0]
    return dropped.groupby(list(by)).sum().astype(int)


def condition_metrics(trials):
    """One row per model × format × condition: the unweighted mean over studies of each study's score."""
    studies = study_metrics(trials)
    grouped = studies.groupby(CONDITION_KEYS, sort=False, dropna=False)
    table = grouped[_MEASURES].mean()
    table.insert(0, "studies", grouped.size())
    table.insert(1, "responses", grouped["responses"].sum())
    return table.reset_index()


def compare_conditions(
    trials, before: str, after: str, *, measure: str = "nll", seed: int, n_boot: int = EvaluationConfig.bootstrap
):
    """Paired comparison of two conditions per model × format: ``after − before`` of a measure.

    E.g. ``compare_conditions(trials, "no_persona", "persona", seed=...)`` is the
    persona benefit in NLL (negative: the persona helps); ``"persona"`` vs
    ``"shuffled_persona"`` asks whether a person's *own* profile matters. Both
    arms are compared on exactly the responses both scored
    (:func:`psysim.stats.paired`), over studies and per study.
    """
    return _paired(trials, "condition", before, after, measure=measure, seed=seed, n_boot=n_boot)


def _paired(trials, across: str, before: str, after: str, *, measure: str, seed: int, n_boot: int):
    """``after − before`` of ``measure`` where the two differ in column ``across``, on common responses,
    within every combination of the other condition keys."""
    import pandas as pd

    from .stats import Bootstrap, paired

    measured = trials if measure in trials else response_metrics(trials)
    within = [k for k in CONDITION_KEYS if k != across]
    rows = []
    boot = Bootstrap(measured[["experiment", "participant"]].drop_duplicates(), n_boot=n_boot, seed=seed)
    for key, group in measured.groupby(within, sort=False):
        wide = group.pivot_table(index=["experiment", "participant", "trial"], columns=across, values=measure, aggfunc="first")
        if before not in wide or after not in wide:
            continue
        wide = wide.reset_index()
        for r in paired(boot, wide, before, after):
            rows.append(
                {
                    **dict(zip(within, key, strict=True)),
                    "measure": measure,
                    "before": before,
                    "after": after,
                    "mean": r.pop("estimate"),
                    **r,
                }
            )
    columns = [*within, "measure", "before", "after", "experiment", "mean", "ci_low", "ci_high", "n", "responses", "d_z"]
    return pd.DataFrame(rows, columns=columns)


def post_training_d(trials, base: str, post: str, *, fmt_base: str = "raw", fmt_post: str = "raw", condition: str = "no_persona"):
    """Psych-201's post-training misalignment: Cohen's d of response NLL, post-trained minus base, per study.

    Per study, ``d = (mean NLL_post − mean NLL_base) / pooled SD`` over the
    study's responses (pooled SD = sqrt of the mean of the two variances);
    positive d means the post-trained model predicts people worse. Returns one
    row per study and the unweighted mean over studies as ``mean_d``.
    """
    import pandas as pd

    m = response_metrics(trials)
    sel = m[m["condition"] == condition]
    a = sel[(sel["model"] == base) & (sel["format"] == fmt_base)]
    b = sel[(sel["model"] == post) & (sel["format"] == fmt_post)]
    rows = []
    for exp in sorted(set(a["experiment"]) & set(b["experiment"])):
        x, y = a[a["experiment"] == exp]["nll"], b[b["experiment"] == exp]["nll"]
        pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2) if len(x) > 1 and len(y) > 1 else math.nan
        d = (y.mean() - x.mean()) / pooled if pooled and pooled > 0 else math.nan
        rows.append({"experiment": exp, "base_nll": x.mean(), "post_nll": y.mean(), "d": d, "responses": len(y)})
    table = pd.DataFrame(rows, columns=["experiment", "base_nll", "post_nll", "d", "responses"])
    table.attrs["mean_d"] = float(table["d"].mean()) if len(table) else math.nan
    return table


def headroom_recovered(model: float, population: float, individual: float) -> float:
    """Share of the gap between the population baseline and the person-adjusted population that a model closes.

    With losses (lower is better): ``(population − model) / (population − individual)``.
    0: no better than the population; 1: as good as the person-adjusted
    population; NaN when there is no gap (the person-adjusted baseline is no
    better than the population) or the model lies outside it (a share of a
    gap the model is not in would be a misleading number).
    """
    gap = population - individual
    if not gap > 0 or not individual <= model <= population:
        return math.nan
    return (population - model) / gap


def proportions(responses, options) -> list[float]:
    """The share of ``responses`` equal to each option (in the order of ``options``); NaN shares without responses."""
    responses = list(responses)
    if not responses:
        return [math.nan] * len(options)
    return [sum(r == o for r in responses) / len(responses) for o in options]


def jensen_shannon(p, q) -> float:
    """Jensen–Shannon divergence of two distributions over the same options, in bits (0: equal, 1: disjoint)."""
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x, y):
        return math.fsum(a * math.log2(a / b) for a, b in zip(x, y, strict=True) if a > 0)

    return (kl(p, m) + kl(q, m)) / 2


def wasserstein(p, q, values) -> float:
    """Wasserstein-1 (earth mover's) distance between two distributions over ordered numeric ``values``.

    In the units of the scale (e.g. Likert points): the area between the two
    cumulative distributions.
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    total, cp, cq = 0.0, 0.0, 0.0
    for a, b in itertools.pairwise(order):
        cp += p[a]
        cq += q[a]
        total += abs(cp - cq) * (values[b] - values[a])
    return total


def ordinal_values(options) -> list[float] | None:
    """The options as numbers when every option is one (a rating scale: ordinal), else None (nominal)."""
    try:
        return [float(o) for o in options]
    except (TypeError, ValueError):
        return None


def distribution_distance(p, q, options, scale: str = "auto") -> tuple[str, float]:
    """``("wasserstein", d)`` for ordinal options, ``("jsd", d)`` for nominal ones.

    ``scale``: ``auto`` (numeric options are a rating scale: ordinal), ``ordinal``
    (numeric options required) or ``nominal`` (categories, even when coded 1, 2, ...).
    """
    values = ordinal_values(options)
    if scale == "ordinal" and values is None:
        raise ValueError(f"scale ordinal needs numeric options, found {list(options)}")
    if values is not None and scale != "nominal":
        return "wasserstein", wasserstein(p, q, values)
    return "jsd", jensen_shannon(p, q)


#: An item's noise floor needs at least this many human responses: resampling one human answer always gives it
#: back (a floor of 0), and a handful more still makes any simulator look far beyond the floor.
FLOOR_MIN_HUMANS = 5


def population_comparison(
    synthetic, humans, *, seed: int, n_boot: int = 200, by: str | None = None, level=None, scale: str = "auto"
):
    """Synthetic vs human response distributions, item by item, beside the humans' own sampling noise.

    ``synthetic`` has one row per model × condition × synthetic participant ×
    trial (``simulated.parquet``), ``humans`` one row per human response
    (``humans.parquet``); items are matched by experiment and item (the
    study's item rule, :mod:`psysim.data.studies`). Per model × condition × item:
    the response proportions of both over the options the item offered (in
    order of first appearance), their distance (:func:`distribution_distance`:
    Wasserstein-1 in scale points for numeric rating options, else
    Jensen–Shannon divergence in bits), and the *noise floor*: the mean
    distance between the humans' proportions and those of ``n`` responses
    resampled from the humans (``n`` = the number of synthetic responses;
    ``n_boot`` seeded resamples) — the distance a perfect simulator would still
    show from sampling alone — with its 95th percentile. Every synthetic item
    has a row: where no human answered it, distance and floor are NaN; where
    fewer than :data:`FLOOR_MIN_HUMANS` did, the floor is NaN; ``note`` says
    which. ``by``/``level`` restrict both to participants whose
    ``profile.<by>`` equals ``level`` (a subgroup); ``scale`` is passed to
    :func:`distribution_distance`.
    """
    import numpy as np
    import pandas as pd

    if by is not None:
        synthetic = synthetic[synthetic[f"profile.{by}"].astype(str) == str(level)]
        humans = humans[humans[f"profile.{by}"].astype(str) == str(level)]
    rng = np.random.default_rng(seed)
    human_items = {key: g for key, g in humans.groupby(["experiment", "item"], sort=False)}
    rows = []
    for (model, condition, exp, item), g in synthetic.groupby(["model", "condition", "experiment", "item"], sort=False):
        h = human_items.get((exp, item))
        offered = [*g["options"], *(h["options"] if h is not None and "options" in h else [])]
        options = list(dict.fromkeys(o for opts in offered for o in opts))
        p = proportions(g["response"], options)
        row = {
            "model": model,
            "condition": condition,
            "experiment": exp,
            "item": item,
            "options": options,
            "synthetic": p,
            "human": None,
            "n_synthetic": len(g),
            "n_human": 0 if h is None else len(h),
            "measure": None,
            "distance": math.nan,
            "floor": math.nan,
            "floor_p95": math.nan,
            "note": "no human response on this item",
        }
        if h is not None and len(h):
            q = proportions(h["response"], options)
            row["human"] = q
            row["measure"], row["distance"] = distribution_distance(p, q, options, scale)
            row["note"] = ""
            if len(h) >= FLOOR_MIN_HUMANS:
                human = h["response"].to_numpy()
                draws = (human[rng.integers(0, len(human), size=len(g))] for _ in range(n_boot))
                floors = [distribution_distance(proportions(d, options), q, options, scale)[1] for d in draws]
                row["floor"], row["floor_p95"] = float(np.mean(floors)), float(np.quantile(floors, 0.95))
            else:
                row["note"] = f"{len(h)} human response(s): too few for a noise floor (at least {FLOOR_MIN_HUMANS})"
        rows.append(row)
    columns = ["model", "condition", "experiment", "item", "options", "synthetic", "human", "n_synthetic", "n_human"]
    return pd.DataFrame(rows, columns=[*columns, "measure", "distance", "floor", "floor_p95", "note"])


def compare_models(trials, before: str, after: str, *, measure: str = "nll", seed: int, n_boot: int = EvaluationConfig.bootstrap):
    """Paired comparison of two models per format × condition: ``after − before`` of a measure.

    E.g. a base model and the same model with a fine-tuned adapter, on the same
    (held-out) participants and exactly the responses both scored: the
    difference of scores, its paired percentile interval and d_z, over
    studies and per study (:func:`psysim.stats.paired`).
    """
    return _paired(trials, "model", before, after, measure=measure, seed=seed, n_boot=n_boot)
