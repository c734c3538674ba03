"""Baselines: how well the human responses can be predicted without a language model.

Each baseline is a scikit-learn estimator (:class:`sklearn.base.BaseEstimator`:
parameters in ``__init__``, ``fit`` returns ``self``, learned attributes end in
``_``, ``predict_proba``), so one contract test runs over all of them. Their
input is a *response table* (:func:`response_table`): one row per scored human
response, with ``experiment`` (the study), ``participant``, ``trial``,
``item`` (the stimulus participants shared, by the study's item rule),
``options`` (what *its trial* offered), ``keys`` (each option's role where the
study declares roles, else the option itself), ``response`` and ``choice``
(the chosen option's key). Baselines count and pool *keys*: with
counterbalanced response keys, people are pooled by what they chose, not by
which letter meant it.

* :class:`UniformBaseline` — every option of the trial equally likely (chance).
* :class:`PopulationFrequency` — the other participants' choices on the same
  item, else in the same study (the population).
* :class:`ProfileModel` — per item, a logistic regression from the profile to
  the choice: the non-LLM way to use a profile.
* :class:`PersonAdjustedPopulation` — the population's item probabilities,
  adjusted by what this participant did on their *other* trials (their own
  rate of choosing each option's key and position, and whether the option
  repeats their previous choice), with weights learned on the other
  participants: how much of a person is predictable from the person, beyond
  the population. It replaces the former "individual ceiling" (the person's
  raw frequencies, which ignored the item).

:func:`cross_validate` fits every baseline without the participants it
predicts (leave-one-participant-out, or k folds of participants) and returns
one probability vector over the options per response, ready for
:mod:`psysim.metrics`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from sklearn.base import BaseEstimator

__all__ = [
    "LABELS",
    "Baseline",
    "PersonAdjustedPopulation",
    "PopulationFrequency",
    "ProfileModel",
    "UniformBaseline",
    "cross_validate",
    "default_baselines",
    "expected_accuracy",
    "participant_folds",
    "response_table",
]

#: What each baseline is, in words (tables, plots and the report use these).
LABELS = {
    "uniform": "uniform (chance)",
    "population": "population frequency",
    "profile": "profile-only model",
    "individual": "person-adjusted population",
}


def response_table(experiment):
    """One row per scored human response of a loaded experiment (see the module docstring for the columns).

    Responses excluded by their study's rules (``outside_options: drop``) are
    left out; ``previous`` is the key of the participant's previous response
    (None on their first trial or where it had no options).
    """
    import pandas as pd

    fields = list(experiment.schema.fields)
    rows = []
    for pid in experiment.participants:
        transcript = experiment.transcripts.get(pid)
        if transcript is None:
            continue
        profile = experiment.profile(pid).values
        previous = None
        for r in transcript.responses:
            if r.excluded:
                previous = None
                continue
            keys = list(r.roles) if r.roles else (list(r.options) if r.options else None)
            rows.append(
                {
                    "experiment": transcript.experiment,
                    "participant": pid,
                    "trial": r.index,
                    "item": r.item,
                    "options": list(r.options) if r.options else None,
                    "keys": keys,
                    "response": r.text,
                    "choice": r.role,
                    "previous": previous,
                    **{f"profile.{f}": profile.get(f) for f in fields},
                }
            )
            previous = r.role
    columns = ["experiment", "participant", "trial", "item", "options", "keys", "response", "choice", "previous"]
    return pd.DataFrame(rows, columns=[*columns, *(f"profile.{f}" for f in fields)])


def _keys(table) -> list[list[str]]:
    """Each row's option keys: its ``keys`` column where present, else its options."""
    if "keys" in table:
        return [
            list(k) if k is not None else list(o) for k, o in zip(table["keys"].tolist(), table["options"].tolist(), strict=True)
        ]
    return [list(o) for o in table["options"].tolist()]


def _choices(table) -> list[str]:
    """Each row's chosen key: its ``choice`` column where present, else its response."""
    if "choice" in table:
        return [c if c is not None else r for c, r in zip(table["choice"].tolist(), table["response"].tolist(), strict=True)]
    return table["response"].tolist()


def expected_accuracy(probs, options, response) -> float:
    """The chance that a prediction picks the human's option when it breaks ties among the most probable at random.

    1/k for the uniform distribution over k options (chance as it is, not
    "always the first option"); 1 or 0 when one option is most probable.
    """
    top = max(probs)
    best = [o for o, p in zip(options, probs, strict=True) if p >= top - 1e-12]
    return (1.0 / len(best)) if response in best else 0.0


class Baseline(BaseEstimator):
    """What every baseline shares, and the class a new one subclasses (docs/architecture.md): additive smoothing
    (``alpha``) and counts turned into a distribution over a trial's option keys; subclasses ``fit`` on training
    participants' rows and ``predict_proba`` per row over that row's options."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def _check(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 (additive smoothing), got {self.alpha!r}")

    def _distribution(self, counts: Mapping[str, float], keys: list[str]) -> list[float]:
        weights = [counts.get(k, 0) + self.alpha for k in keys]
        total = math.fsum(weights)
        return [w / total for w in weights]


class UniformBaseline(Baseline):
    """Chance: every option of a trial equally likely. Learns nothing (``alpha`` is ignored)."""

    def fit(self, table):
        """Nothing to learn; returns self."""
        self._check()
        self.n_fit_ = len(table)
        return self

    def predict_proba(self, table) -> list[list[float]]:
        """One uniform distribution over each row's options."""
        return [[1.0 / len(o)] * len(o) for o in table["options"].tolist()]


class PopulationFrequency(Baseline):
    """The population: choice frequencies of the training participants on the same item, else in the study.

    Choices are counted by key (an option's role where the study declares
    roles). ``alpha`` is additive (Laplace) smoothing, so an option nobody
    chose keeps a non-zero probability.
    """

    def fit(self, table):
        """Count choices per (experiment, item) and per experiment; returns self."""
        self._check()
        self.item_counts_: dict[tuple[str, str], Counter] = {}
        self.study_counts_: dict[str, Counter] = {}
        for exp, item, choice in zip(table["experiment"].tolist(), table["item"].tolist(), _choices(table), strict=True):
            self.item_counts_.setdefault((exp, item), Counter())[choice] += 1
            self.study_counts_.setdefault(exp, Counter())[choice] += 1
        return self

    def counts(self, exp: str, item: str) -> Counter:
        """The counts a row of (``exp``, ``item``) is predicted from: its item's if seen in training, else its study's."""
        return self.item_counts_.get((exp, item)) or self.study_counts_.get(exp, Counter())

    def covers(self, table) -> list[bool]:
        """Per row: whether its item was seen in training (else the study's frequencies predict it)."""
        return [
            (exp, item) in self.item_counts_
            for exp, item in zip(table["experiment"].tolist(), table["item"].tolist(), strict=True)
        ]

    def predict_proba(self, table) -> list[list[float]]:
        """Per row: smoothed frequencies over its option keys, from its item if seen in training, else its study."""
        return [
            self._distribution(self.counts(exp, item), keys)
            for exp, item, keys in zip(table["experiment"].tolist(), table["item"].tolist(), _keys(table), strict=True)
        ]


class PersonAdjustedPopulation(Baseline):
    """The population on this item, adjusted by what this person did on their other trials.

    For an option ``o`` of a trial, ``P(o) ∝ P_pop(o | item) · exp(β · x_o)``: a
    conditional logit with the population's item log-probabilities as offset
    and three person-level features, each computed from the participant's
    *other* trials only (never the predicted response):

    * ``own_key`` — log of the person's smoothed rate of choosing ``o``'s key
      when it was offered, over the population's rate of choosing it;
    * ``own_position`` — the same for ``o``'s position in the list of options;
    * ``repeat`` — 1 if ``o``'s key is the person's previous choice.

    The weights ``β`` are learned on the training participants (their own
    features computed the same leave-one-trial-out way, their offsets from
    the population without them), with an L2 penalty ``l2`` towards ``β = 0``,
    i.e. towards the population. Where people do not differ, ``β`` stays near
    0 and the baseline stays near the population; where people have stable
    preferences, ``own_key`` carries them.
    """

    FEATURES = ("own_key", "own_position", "repeat")

    def __init__(self, alpha: float = 1.0, prior: float = 2.0, l2: float = 1.0):
        super().__init__(alpha)
        self.prior = prior
        self.l2 = l2

    # -- features ------------------------------------------------------------
    @staticmethod
    def _names(keys: list[str]) -> list[tuple[str, str]]:
        """Per option: the two things a person may prefer, its key and its position among this many options."""
        return [(k, f"#{j}/{len(keys)}") for j, k in enumerate(keys)]

    def _tally(self, table, *, per_person: bool) -> tuple[Counter, Counter]:
        """How often each key / position was chosen and offered, per study (the features' reference rates) or per
        study and participant (a person's own rates)."""
        offered: Counter = Counter()
        chosen: Counter = Counter()
        whos = table["participant"].tolist() if per_person else [None] * len(table)
        for exp, who, keys, choice in zip(table["experiment"].tolist(), whos, _keys(table), _choices(table), strict=True):
            at = (exp, who) if per_person else (exp,)
            for pair in self._names(keys):
                for name in pair:
                    offered[(*at, name)] += 1
            if choice in keys:
                for name in self._names(keys)[keys.index(choice)]:
                    chosen[(*at, name)] += 1
        return chosen, offered

    def _design(self, table, population: PopulationFrequency, minus_own: bool):
        """(offsets, features): the conditional logit's inputs, padded to the most options of a row.

        ``offsets[i, j]`` is the population's log-probability of row ``i``'s
        option ``j`` (−inf for padding); ``features[i, j]`` its three features.
        """
        import numpy as np

        keys_all, choices = _keys(table), _choices(table)
        exps, pids, items = table["experiment"].tolist(), table["participant"].tolist(), table["item"].tolist()
        previous = table["previous"].tolist() if "previous" in table else [None] * len(table)

        names = self._names
        # The reference rates are the training participants' (fitted), never the predicted rows'.
        chosen, offered = self.reference_
        own_cho, own_off = self._tally(table, per_person=True)
        width = max((len(k) for k in keys_all), default=1)
        offsets = np.full((len(table), width), -np.inf)
        features = np.zeros((len(table), width, len(self.FEATURES)))
        for i, (exp, pid, item, keys, choice, prev) in enumerate(
            zip(exps, pids, items, keys_all, choices, previous, strict=True)
        ):
            counts = population.counts(exp, item)
            if minus_own:
                # A training row's offset is the population without its own participant's choice on it.
                counts = {k: counts.get(k, 0) - (k == choice) for k in keys}
            offsets[i, : len(keys)] = np.log(self._distribution(counts, keys))
            mine = set(names(keys)[keys.index(choice)]) if choice in keys else set()
            for j, pair in enumerate(names(keys)):
                for f, name in enumerate(pair):
                    # The person's other trials: their totals minus this very trial (which offered it).
                    off = own_off[(exp, pid, name)] - 1
                    cho = own_cho[(exp, pid, name)] - (name in mine)
                    base = (chosen[(exp, name)] + 1) / (offered[(exp, name)] + 2)
                    features[i, j, f] = math.log((cho + self.prior * base) / (off + self.prior) / base)
                features[i, j, 2] = 1.0 if prev is not None and prev == keys[j] else 0.0
        return offsets, features

    @staticmethod
    def _softmax(offsets, features, beta):
        import numpy as np

        z = offsets + features @ beta
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def fit(self, table):
        """Learn the feature weights on the training participants; returns self."""
        import numpy as np
        from scipy.optimize import minimize

        self._check()
        if not self.prior > 0 or not self.l2 >= 0:
            raise ValueError(f"prior must be > 0 and l2 >= 0, got prior={self.prior!r}, l2={self.l2!r}")
        self.population_ = PopulationFrequency(self.alpha).fit(table)
        self.reference_ = self._tally(table, per_person=False)
        offsets, features = self._design(table, self.population_, minus_own=True)
        targets = np.array([k.index(c) if c in k else -1 for k, c in zip(_keys(table), _choices(table), strict=True)])
        keep = targets >= 0
        offsets, features, targets = offsets[keep], features[keep], targets[keep]
        rows = np.arange(len(targets))

        def loss(beta):
            p = self._softmax(offsets, features, beta)
            value = -np.log(p[rows, targets]).sum() + 0.5 * self.l2 * float(beta @ beta)
            grad = -(features[rows, targets] - np.einsum("ij,ijf->if", p, features)).sum(axis=0) + self.l2 * beta
            return value, grad

        start = np.zeros(len(self.FEATURES))
        self.coef_ = minimize(loss, start, jac=True, method="L-BFGS-B").x if len(targets) else start
        self.n_fit_ = len(targets)
        return self

    def predict_proba(self, table) -> list[list[float]]:
        """Per row: the population's item probabilities tilted by the person's other trials, over its options."""
        offsets, features = self._design(table, self.population_, minus_own=False)
        probs = self._softmax(offsets, features, self.coef_)
        return [[float(v) for v in p[: len(k)]] for p, k in zip(probs, _keys(table), strict=True)]


class ProfileModel(Baseline):
    """The non-LLM way to use a profile: per item, a multinomial logistic regression from profile to choice.

    Features are the table's ``profile.*`` columns: numbers standardised (a
    missing value imputed with the training mean), other values one-hot
    encoded (missing is its own category). An item whose training choices
    are all the same, or that was not seen in training, falls back to
    :class:`PopulationFrequency`. Probabilities are smoothed towards every
    option with ``alpha`` pseudo-counts, as the frequency baselines are.
    """

    def __init__(self, alpha: float = 1.0, C: float = 1.0):
        super().__init__(alpha)
        self.C = C

    def _features(self, table):
        return [c for c in table.columns if c.startswith("profile.")]

    def _design(self, table):
        return _design_matrix(table, self.numeric_, self.other_)

    def fit(self, table):
        """Fit one logistic regression per item with at least two distinct choices; returns self."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        self._check()
        if not self.C > 0:
            raise ValueError(f"C must be > 0 (inverse regularisation strength), got {self.C!r}")
        self.fallback_ = PopulationFrequency(self.alpha).fit(table)
        self.features_ = self._features(table)
        # Decided once, at fit time, so that prediction encodes columns the same way.
        self.numeric_ = numeric = [c for c in self.features_ if _is_numeric(table[c])]
        self.other_ = other = [c for c in self.features_ if c not in numeric]
        self.models_: dict[tuple[str, str], Any] = {}
        table = table.assign(_choice=_choices(table))
        for (exp, item), rows in table.groupby(["experiment", "item"], sort=False):
            if rows["_choice"].nunique() < 2 or not self.features_:
                continue
            encode = ColumnTransformer(
                [
                    ("num", make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler()), numeric),
                    ("cat", OneHotEncoder(handle_unknown="ignore"), other),
                ]
            )
            model = make_pipeline(encode, LogisticRegression(C=self.C, max_iter=1000))
            self.models_[(exp, item)] = (model.fit(self._design(rows), rows["_choice"]), len(rows))
        return self

    def covers(self, table) -> list[bool]:
        """Per row: whether a regression was fitted for its item (else it is predicted by the population fallback)."""
        return [
            (exp, item) in self.models_ for exp, item in zip(table["experiment"].tolist(), table["item"].tolist(), strict=True)
        ]

    def predict_proba(self, table) -> list[list[float]]:
        """Per row: the item's regression prediction over its option keys, smoothed; else the population's."""
        out = self.fallback_.predict_proba(table)
        x_all = self._design(table)
        keys_all = _keys(table)
        where: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(zip(table["experiment"].tolist(), table["item"].tolist(), strict=True)):
            if key in self.models_:
                where.setdefault(key, []).append(i)
        for key, rows in where.items():
            model, n = self.models_[key]
            # The item's rows encoded at once (imputing, scaling and one-hot encoding work value by value), the
            # regression applied row by row: a matrix product over many rows may round differently in the last
            # bit, and a row's probabilities should not depend on which rows it is predicted with.
            encoded = model[:-1].transform(x_all.iloc[rows])
            regression = model[-1]
            for k, i in enumerate(rows):
                probs = dict(zip(model.classes_, regression.predict_proba(encoded[k : k + 1])[0], strict=True))
                keys = keys_all[i]
                # The regression's probabilities as n pseudo-counts, smoothed like the frequency baselines.
                out[i] = self._distribution({k: n * probs.get(k, 0.0) for k in keys}, keys)
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

    k folds are scikit-learn's :class:`~sklearn.model_selection.GroupKFold`
    with participants as groups, shuffled with ``random_state=seed``: every
    participant's responses are in one fold, and the same seed gives the same
    folds everywhere.
    """
    import numpy as np
    from sklearn.model_selection import GroupKFold

    unique = list(dict.fromkeys(participants))
    if folds is None:
        return {pid: i for i, pid in enumerate(unique)}
    if folds < 2:
        raise ValueError(f"expected at least 2 folds, found {folds}")
    if folds > len(unique):
        raise ValueError(f"{folds} folds need at least {folds} participants, found {len(unique)}")
    groups = np.arange(len(unique))
    out: dict[str, int] = {}
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(groups, groups=groups)):
        out.update({unique[j]: k for j in test})
    return out


def default_baselines(names=("uniform", "population", "profile", "individual")) -> dict[str, Baseline]:
    """Fresh baselines by name (the keys of :data:`LABELS`), with their default parameters."""
    make = {
        "uniform": UniformBaseline,
        "population": PopulationFrequency,
        "profile": ProfileModel,
        "individual": PersonAdjustedPopulation,
    }
    return {name: make[name]() for name in names}


def cross_validate(
    table, baselines: dict[str, Baseline] | None = None, *, folds: int | None = None, seed: int = 0, progress: bool = False
):
    """Cross-validated probabilities of each baseline for every response that has options.

    Every baseline is fitted without the participants it predicts: one
    participant at a time (``folds=None``) or ``folds`` folds of participants
    (:func:`participant_folds`). :class:`PersonAdjustedPopulation` then reads
    the predicted participant's *other* trials, never the predicted response.

    Returns the rows with options, with columns ``baseline``, ``option_probs``
    (over ``options``; ``None`` where the baseline cannot predict the row),
    ``correct`` (the expected accuracy of a prediction that breaks ties at
    random: 1/k for chance, :func:`expected_accuracy`) and ``note`` (why a row
    has no prediction, or how it was made when the baseline fell back to a
    simpler one) — the shape :mod:`psysim.metrics` reads. ``progress`` shows a
    bar (with ETA) over fits.
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

        bar = tqdm(total=fold.nunique() * len(baselines), desc="baselines", unit="fit", dynamic_ncols=True)
    for name, baseline in baselines.items():
        probs: list[list[float] | None] = [None] * len(scored)
        notes: list[str | None] = [None] * len(scored)
        for key, rows in scored.groupby(fold, sort=False):
            if bar is not None:
                bar.set_postfix_str(name, refresh=False)
                bar.update(1)
            train = scored[fold != key]
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
            None if p is None else expected_accuracy(p, options, response)
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
    studies = set(train["experiment"])
    out: list[str | None] = []
    if isinstance(baseline, ProfileModel):
        covered = baseline.covers(rows)
        fallback = "fell back to population frequencies: item not shared by other participants, or no variation in it"
    else:
        population = baseline.population_ if isinstance(baseline, PersonAdjustedPopulation) else baseline
        covered = population.covers(rows)
        fallback = "fell back to study-level frequencies: no other participant answered this item"
    single = set()
    if isinstance(baseline, PersonAdjustedPopulation):
        sizes = rows.groupby(["experiment", "participant"]).size()
        single = {k for k, n in sizes.items() if n < 2}
    for exp, pid, has_model in zip(rows["experiment"], rows["participant"], covered, strict=True):
        if exp not in studies:
            out.append(f"no other participant in study {exp} to learn from")
        elif not has_model:
            out.append(fallback)
        elif (exp, pid) in single:
            out.append("fell back to the population: no other trials of this participant to learn from")
        else:
            out.append(None)
    return out
