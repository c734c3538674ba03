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

import math

__all__ = ["CONDITION_KEYS", "condition_metrics", "participant_metrics", "response_metrics", "study_metrics"]

#: The columns that identify one scored condition.
CONDITION_KEYS = ["model", "format", "condition"]
_MEASURES = ["nll", "option_nll", "accuracy", "brier", "pseudo_r2"]


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


def condition_metrics(trials):
    """One row per model × format × condition: the unweighted mean over studies of each study's score."""
    studies = study_metrics(trials)
    grouped = studies.groupby(CONDITION_KEYS, sort=False, dropna=False)
    table = grouped[_MEASURES].mean()
    table.insert(0, "studies", grouped.size())
    table.insert(1, "responses", grouped["responses"].sum())
    return table.reset_index()
