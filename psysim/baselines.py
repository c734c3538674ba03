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
* :class:`IndividualCeiling` — the participant's own responses on their other
  trials (how much individual-specific signal the data hold).

:func:`cross_validate` fits every baseline without the participant it
predicts (leave-one-participant-out) and returns one probability vector over
the options per response, ready for :mod:`psysim.metrics`.
"""

from __future__ import annotations

import math
from collections import Counter

__all__ = ["IndividualCeiling", "PopulationFrequency", "UniformBaseline", "cross_validate", "response_table"]


def response_table(experiment):
    """One row per human response of a loaded experiment: experiment, participant, trial, item, options, response.

    ``item`` is the text of the trial up to the response (the line the response
    is on, for Psych-201 transcripts; the rendered trial for structured ones),
    so two participants who saw the same stimulus share an item.
    """
    import pandas as pd

    rows = []
    for pid in experiment.participants:
        transcript = experiment.transcripts.get(pid)
        if transcript is None:
            continue
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
                }
            )
    return pd.DataFrame(rows, columns=["experiment", "participant", "trial", "item", "options", "response"])


class _Baseline:
    """Shared pieces: smoothing and turning counts into a distribution over a trial's options."""

    def __init__(self, alpha: float = 1.0):
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (additive smoothing), got {alpha!r}")
        self.alpha = alpha

    def _distribution(self, counts: Counter, options: list[str]) -> list[float]:
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


def cross_validate(table, baselines: dict[str, _Baseline] | None = None):
    """Leave-one-participant-out probabilities of each baseline for every response that has options.

    Returns the rows with options, with a ``baseline`` column and
    ``option_probs`` (over ``options``) — the shape :mod:`psysim.metrics`
    reads. :class:`IndividualCeiling` is fitted on the participant's own data
    (it leaves out the predicted trial instead).
    """
    import pandas as pd

    baselines = baselines or {
        "uniform": UniformBaseline(),
        "population": PopulationFrequency(),
        "individual": IndividualCeiling(),
    }
    scored = table[table["options"].notna()].reset_index(drop=True)
    frames = []
    for name, baseline in baselines.items():
        probs: list[list[float] | None] = [None] * len(scored)
        for pid, rows in scored.groupby("participant", sort=False):
            train = rows if isinstance(baseline, IndividualCeiling) else scored[scored["participant"] != pid]
            for i, p in zip(rows.index, baseline.fit(train).predict_proba(rows), strict=True):
                probs[i] = p
        frame = scored.assign(baseline=name, option_probs=probs)
        frame["correct"] = [
            options[max(range(len(p)), key=lambda k: (p[k], -k))] == response
            for options, p, response in zip(frame["options"], frame["option_probs"], frame["response"], strict=True)
        ]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
