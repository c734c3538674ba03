"""Baselines: how well the human responses can be predicted without a language model.

Each baseline follows scikit-learn's conventions (parameters in ``__init__``,
``fit`` returns ``self``, learned attributes end in ``_``, ``predict_proba``),
so one contract test runs over all of them. Their input is a *response table*
(:func:`response_table`): one row per human response, with ``experiment``,
``participant``, ``item`` (what the trial showed: responses to the same item
are comparable across people), ``options`` and ``response``.

* :class:`UniformBaseline` — every option equally likely (chance).
* :class:`PopulationFrequency` — the response frequencies of the *other*
  participants on the same item, else in the same study (the population).
* :class:`ProfileModel` — per item, a logistic regression from the profile to
  the response: the non-LLM way to use a profile.
* :class:`IndividualCeiling` — the participant's own responses on their other
  trials (how much individual-specific signal the data hold).

:func:`cross_validate` fits every baseline without the participant it
predicts (leave-one-participant-out, or seeded k folds of participants) and returns one probability vector over
the options per response, ready for :mod:`psysim.metrics`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .metrics import predicted_option

__all__ = [
    "IndividualCeiling",
    "PopulationFrequency",
    "ProfileModel",
    "UniformBaseline",
    "cross_validate",
    "default_baselines",
    "participant_folds",
    "response_table",
]


def response_table(experiment):
    """One row per human response of a loaded experiment: experiment, participant, trial, item, options, response.

    ``item`` is the text of the trial up to the response (the line the response
    is on, for Psych-201 transcripts; the rendered trial for structured ones),
    so two participants who saw the same stimulus share an item.
    """
    import pandas as pd

    fields = list(experiment.schema.fields)
    rows = []
    for pid in experiment.participants:
        transcript = experiment.transcripts.get(pid)
        if transcript is None:
            continue
        profile = experiment.profile(pid).values
        for r in transcript.responses:
            line_start = transcript.trial_start(r.index)
            rows.append(
                {
                    "experiment": transcript.experiment,
                    "participant": pid,
                    "trial": r.index,
                    "item": transcript.text[line_start : r.start],
                    "options": list(r.options) if r.options else None,
                    "response": r.text,
                    **{f"profile.{f}": profile.get(f) for f in fields},
                }
            )
    columns = ["experiment", "participant", "trial", "item", "options", "response", *(f"profile.{f}" for f in fields)]
    return pd.DataFrame(rows, columns=columns)


class _Baseline:
    """Shared pieces: smoothing and turning counts into a distribution over a trial's options."""

    def __init__(self, alpha: float = 1.0):
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (additive smoothing), got {alpha!r}")
        self.alpha = alpha

    def _distribution(self, counts: Mapping[str, float], options: list[str]) -> list[float]:
        weights = [counts.get(o, 0) + self.alpha for o in options]
        total = math.fsum(weights)
        return [w / total for w in weights]

    def get_params(self, deep: bool = True) -> dict:
        """scikit-learn's parameter protocol."""
        return {"alpha": self.alpha}

    def set_params(self, **params):
        """scikit-learn's parameter protocol."""
        for key, value in params.items():
            if key != "alpha":
                raise ValueError(f"unknown parameter {key!r}; {type(self).__name__} has: alpha")
            self.alpha = value
        return self


class UniformBaseline(_Baseline):
    """Chance: every option of a trial equally likely. Learns nothing (``alpha`` is ignored)."""

    def fit(self, table):
        """Nothing to learn; returns self."""
        self.n_fit_ = len(table)
        return self

    def predict_proba(self, table) -> list[list[float]]:
        """One uniform distribution over each row's options."""
        return [[1.0 / len(o)] * len(o) for o in table["options"]]


class PopulationFrequency(_Baseline):
    """The population: response frequencies of the training participants on the same item, else in the study.

    ``alpha`` is additive (Laplace) smoothing, so an option nobody chose keeps
    a non-zero probability.
    """

    def fit(self, table):
        """Count responses per (experiment, item) and per experiment; returns self."""
        self.item_counts_: dict[tuple[str, str], Counter] = {}
        self.study_counts_: dict[str, Counter] = {}
        for exp, item, response in zip(table["experiment"], table["item"], table["response"], strict=True):
            self.item_counts_.setdefault((exp, item), Counter())[response] += 1
            self.study_counts_.setdefault(exp, Counter())[response] += 1
        return self

    def predict_proba(self, table) -> list[list[float]]:
        """Per row: smoothed frequencies over its options, from its item if seen in training, else its study."""
        out = []
        for exp, item, options in zip(table["experiment"], table["item"], table["options"], strict=True):
            counts = self.item_counts_.get((exp, item)) or self.study_counts_.get(exp, Counter())
            out.append(self._distribution(counts, list(options)))
        return out


class IndividualCeiling(_Baseline):
    """The individual: a participant's own response frequencies on their *other* trials (leave one trial out)."""

    def fit(self, table):
        """Count each participant's responses; returns self."""
        self.counts_: dict[tuple[str, str], Counter] = {}
        for exp, pid, response in zip(table["experiment"], table["participant"], table["response"], strict=True):
            self.counts_.setdefault((exp, pid), Counter())[response] += 1
        return self

    def predict_proba(self, table) -> list[list[float]]:
        """Per row: the participant's smoothed frequencies over its options, without this very response."""
        out = []
        for exp, pid, options, response in zip(
            table["experiment"], table["participant"], table["options"], table["response"], strict=True
        ):
            counts = Counter(self.counts_.get((exp, pid), Counter()))
            counts[response] -= 1  # leave this trial out: the ceiling may not peek at the answer
            out.append(self._distribution(counts, list(options)))
        return out


class ProfileModel(_Baseline):
    """The non-LLM way to use a profile: per item, a multinomial logistic regression from profile to response.

    Features are the table's ``profile.*`` columns: numbers standardised (a
    missing value imputed with the training mean), other values one-hot
    encoded (missing is its own category). An item whose training responses
    are all the same, or that was not seen in training, falls back to
    :class:`PopulationFrequency`. Probabilities are smoothed towards every
    option with ``alpha`` pseudo-counts, as the frequency baselines are.
    """

    def __init__(self, alpha: float = 1.0, C: float = 1.0):
        super().__init__(alpha)
        if not C > 0:
            raise ValueError(f"C must be > 0 (inverse regularisation strength), got {C!r}")
        self.C = C

    def get_params(self, deep: bool = True) -> dict:
        return {"alpha": self.alpha, "C": self.C}

    def set_params(self, **params):
        for key, value in params.items():
            if key not in ("alpha", "C"):
                raise ValueError(f"unknown parameter {key!r}; {type(self).__name__} has: C, alpha")
            setattr(self, key, value)
        return self

    def _features(self, table):
        return [c for c in table.columns if c.startswith("profile.")]

    def _design(self, table):
        return _design_matrix(table, self.numeric_, self.other_)

    def fit(self, table):
        """Fit one logistic regression per item with at least two distinct responses; returns self."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        self.fallback_ = PopulationFrequency(self.alpha).fit(table)
        self.features_ = self._features(table)
        # Decided once, at fit time, so that prediction encodes columns the same way.
        self.numeric_ = numeric = [c for c in self.features_ if _is_numeric(table[c])]
        self.other_ = other = [c for c in self.features_ if c not in numeric]
        self.models_: dict[tuple[str, str], Any] = {}
        for (exp, item), rows in table.groupby(["experiment", "item"], sort=False):
            if rows["response"].nunique() < 2 or not self.features_:
                continue
            encode = ColumnTransformer(
                [
                    ("num", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), numeric),
                    ("cat", OneHotEncoder(handle_unknown="ignore"), other),
                ]
            )
            model = make_pipeline(encode, LogisticRegression(C=self.C, max_iter=1000))
            self.models_[(exp, item)] = (model.fit(self._design(rows), rows["response"]), len(rows))
        return self

    def covers(self, table) -> list[bool]:
        """Per row: whether a regression was fitted for its item (else it is predicted by the population fallback)."""
        return [(exp, item) in self.models_ for exp, item in zip(table["experiment"], table["item"], strict=True)]

    def predict_proba(self, table) -> list[list[float]]:
        """Per row: the item's regression prediction over its options, smoothed; else the population's."""
        fallback = self.fallback_.predict_proba(table)
        x_all = self._design(table)
        out = []
        for i, (exp, item, options) in enumerate(zip(table["experiment"], table["item"], table["options"], strict=True)):
            fitted = self.models_.get((exp, item))
            if fitted is None:
                out.append(fallback[i])
                continue
            model, n = fitted
            probs = dict(zip(model.classes_, model.predict_proba(x_all.iloc[[i]])[0], strict=True))
            # The regression's probabilities as n pseudo-counts, smoothed like the frequency baselines.
            out.append(self._distribution({o: n * probs.get(o, 0.0) for o in options}, list(options)))
        return out


def _design_matrix(table, numeric: list[str], other: list[str]):
    import pandas as pd

    x = table[numeric + other].copy()
    for c in numeric:
        x[c] = pd.to_numeric(x[c], errors="coerce").astype("float64")  # missing -> NaN -> imputed
    for c in other:
        x[c] = x[c].astype("object").where(x[c].notna(), "(missing)").astype(str)
    return x


def _is_numeric(column) -> bool:
    import pandas as pd

    values = column.dropna()
    return len(values) > 0 and pd.api.types.is_numeric_dtype(values.infer_objects()) and not pd.api.types.is_bool_dtype(values)


def participant_folds(participants, folds: int | None, seed: int) -> dict[str, int]:
    """Each participant's fold: leave-one-participant-out (``folds=None``) or ``folds`` seeded folds of participants.

    For k folds the distinct participants (in order of appearance) are shuffled
    with ``numpy.random.default_rng(seed)`` and dealt round-robin, so fold sizes
    differ by at most one and the same seed gives the same folds everywhere.
    """
    import numpy as np

    unique = list(dict.fromkeys(participants))
    if folds is None:
        return {pid: i for i, pid in enumerate(unique)}
    if folds < 2:
        raise ValueError(f"expected at least 2 folds, found {folds}")
    if folds > len(unique):
        raise ValueError(f"{folds} folds need at least {folds} participants, found {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[j]: pos % folds for pos, j in enumerate(order)}


def default_baselines(names=("uniform", "population", "profile", "individual")) -> dict[str, _Baseline]:
    """Fresh baselines by name, with their default parameters."""
    make = {
        "uniform": UniformBaseline,
        "population": PopulationFrequency,
        "profile": ProfileModel,
        "individual": IndividualCeiling,
    }
    return {name: make[name]() for name in names}


def cross_validate(
    table, baselines: dict[str, _Baseline] | None = None, *, folds: int | None = None, seed: int = 0, progress: bool = False
):
    """Cross-validated probabilities of each baseline for every response that has options.

    Every baseline is fitted without the participants it predicts: one
    participant at a time (``folds=None``) or ``folds`` seeded folds of
    participants (:func:`participant_folds`). :class:`IndividualCeiling` is the
    exception by design: it is fitted on the participant's own data and leaves
    out the predicted trial instead.

    Returns the rows with options, with columns ``baseline``, ``option_probs``
    (over ``options``; ``None`` where the baseline cannot predict the row),
    ``correct`` and ``note`` (why a row has no prediction, or how it was made
    when the baseline fell back to a simpler one) — the shape
    :mod:`psysim.metrics` reads. ``progress`` shows a bar (with ETA) over fits.
    """
    import pandas as pd

    baselines = baselines if baselines is not None else default_baselines()
    scored = table[table["options"].notna()].reset_index(drop=True)
    fold_of = participant_folds(scored["participant"], folds, seed)
    fold = scored["participant"].map(fold_of)
    frames = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        n_fits = sum(
            scored["participant"].nunique() if isinstance(b, IndividualCeiling) else fold.nunique() for b in baselines.values()
        )
        bar = tqdm(total=n_fits, desc="baselines", unit="fit", dynamic_ncols=True)
    for name, baseline in baselines.items():
        probs: list[list[float] | None] = [None] * len(scored)
        notes: list[str | None] = [None] * len(scored)
        own = isinstance(baseline, IndividualCeiling)
        groups = scored.groupby("participant", sort=False) if own else scored.groupby(fold, sort=False)
        for key, rows in groups:
            if bar is not None:
                bar.set_postfix_str(name, refresh=False)
                bar.update(1)
            train = rows if own else scored[fold != key]
            fitted = baseline.fit(train)
            for i, p in zip(rows.index, fitted.predict_proba(rows), strict=True):
                probs[i] = p
            for i, note in zip(rows.index, _notes(fitted, train, rows), strict=True):
                if note is not None:
                    notes[i] = note
                    if not note.startswith("fell back"):
                        probs[i] = None
        frame = scored.assign(baseline=name, option_probs=probs, note=notes)
        frame["correct"] = [
            None if p is None else predicted_option(options, p) == response
            for options, p, response in zip(frame["options"], frame["option_probs"], frame["response"], strict=True)
        ]
        frames.append(frame)
    if bar is not None:
        bar.close()
    return pd.concat(frames, ignore_index=True)


def _notes(baseline, train, rows) -> list[str | None]:
    """Per predicted row: why the baseline cannot predict it (or that it fell back), else None."""
    if isinstance(baseline, UniformBaseline):
        return [None] * len(rows)
    if isinstance(baseline, IndividualCeiling):
        others = train.groupby(["experiment", "participant"]).size()
        return [
            "only one response: no other trials of this participant to learn from" if others.get((exp, pid), 0) < 2 else None
            for exp, pid in zip(rows["experiment"], rows["participant"], strict=True)
        ]
    studies = set(train["experiment"])
    out: list[str | None] = []
    covered = baseline.covers(rows) if isinstance(baseline, ProfileModel) else [True] * len(rows)
    for exp, has_model in zip(rows["experiment"], covered, strict=True):
        if exp not in studies:
            out.append(f"no other participant in study {exp} to learn from")
        elif not has_model:
            out.append("fell back to population frequencies: item not shared by other participants, or no variation in it")
        else:
            out.append(None)
    return out
