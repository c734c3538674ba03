"""Statistics: the one bootstrap every interval of psysim comes from, and the paired comparisons built on it.

:class:`Bootstrap` is a percentile bootstrap of Psych-201's score (the mean
over each study's responses, then the unweighted mean over studies) that
resamples *participants within each study* (study-stratified: every resample
keeps every study with its own number of participants) and uses the same
resamples for every series it estimates (participant-paired: the difference
of two series estimated with one instance has a paired interval). Draws are
made in chunks from a seeded generator per study and chunk, so memory stays
bounded (``chunk`` × participants of a study, never ``n_boot`` × all
participants) and a study's draws do not depend on which other studies are
in the run.

:func:`paired` compares two arms (conditions, models, a model and a
baseline) on exactly the responses both scored, per study and over studies.
Intervals from fewer than :data:`MIN_PARTICIPANTS` participants are
computed and shown, but :func:`verdict` never turns them into a "reliably"
sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["LEVEL", "MIN_PARTICIPANTS", "Bootstrap", "Estimate", "paired", "verdict"]

#: The confidence level of every interval.
LEVEL = 0.95
#: Below this many participants an interval is shown but no comparison is called reliable.
MIN_PARTICIPANTS = 10
#: Resamples drawn at once: bounds memory to CHUNK × (participants of the largest study) indices.
CHUNK = 256


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its percentile interval, the number of participants, and the bootstrap draws (or None)."""

    point: float
    ci_low: float
    ci_high: float
    n: int
    draws: Any = None

    @property
    def reliable(self) -> bool:
        """Whether the interval rests on enough participants to be stated as a finding."""
        return self.n >= MIN_PARTICIPANTS and not math.isnan(self.ci_low)


def _interval(draws) -> tuple[float, float]:
    import numpy as np

    if draws is None or not np.isfinite(draws).any():
        return math.nan, math.nan
    tail = (1 - LEVEL) / 2
    lo, hi = np.nanquantile(draws, [tail, 1 - tail])
    return float(lo), float(hi)


class Bootstrap:
    """Study-stratified, participant-paired percentile bootstrap of the mean over studies of each study's response mean.

    ``units`` is a frame with columns ``experiment`` (the study) and
    ``participant``: every participant who may appear in an estimated series.
    Series estimated with one instance share their resamples.
    """

    def __init__(self, units, *, n_boot: int, seed: int, chunk: int = CHUNK):
        self.n_boot, self.seed, self.chunk = int(n_boot), int(seed), int(chunk)
        self.studies: dict[str, list[str]] = {}
        for exp in sorted(set(units["experiment"])):
            self.studies[exp] = sorted(set(units.loc[units["experiment"] == exp, "participant"]))

    def _draws(self, study_index: int, n: int):
        """The resampled participant indices of one study, chunk by chunk (the same on every call)."""
        import numpy as np

        for start in range(0, self.n_boot, self.chunk):
            rng = np.random.default_rng([self.seed, study_index, start // self.chunk])
            yield rng.integers(0, n, size=(min(self.chunk, self.n_boot - start), n))

    def estimate(self, frame, columns: list[str]) -> dict[str, Estimate]:
        """Psych-201's score of each column of ``frame`` (one row per response), with paired intervals.

        ``frame`` has ``experiment``, ``participant`` and the ``columns``
        (NaN where a response has no value; each column uses its own non-NaN
        responses, so pass rows already restricted to common responses for
        comparisons).
        """
        import numpy as np

        out: dict[str, Estimate] = {}
        study_points: dict[str, list[float]] = {c: [] for c in columns}
        study_draws: dict[str, list[Any]] = {c: [] for c in columns}
        people: dict[str, set] = {c: set() for c in columns}
        most: dict[str, int] = dict.fromkeys(columns, 0)  # the most participants any one study has for a column
        for si, (exp, pids) in enumerate(self.studies.items()):
            rows = frame[frame["experiment"] == exp]
            if not len(rows):
                continue
            index = {p: i for i, p in enumerate(pids)}
            pos = rows["participant"].map(index).to_numpy()
            if np.isnan(pos.astype(float)).any():
                raise ValueError(f"participants of study {exp} missing from the bootstrap's units")
            sums, counts = {}, {}
            for c in columns:
                values = rows[c].to_numpy(dtype=float)
                ok = ~np.isnan(values)
                if not ok.any():
                    continue
                sums[c] = np.bincount(pos[ok].astype(int), weights=values[ok], minlength=len(pids))
                counts[c] = np.bincount(pos[ok].astype(int), minlength=len(pids)).astype(float)
                study_points[c].append(sums[c].sum() / counts[c].sum())
                present = set(rows.loc[ok, "participant"])
                people[c].update(present)
                most[c] = max(most[c], len(present))
            if not sums:
                continue
            boots = {c: [] for c in sums}
            for idx in self._draws(si, len(pids)):
                for c in sums:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        boots[c].append(sums[c][idx].sum(axis=1) / counts[c][idx].sum(axis=1))
            for c in sums:
                study_draws[c].append(np.concatenate(boots[c]))
        for c in columns:
            if not study_points[c]:
                out[c] = Estimate(math.nan, math.nan, math.nan, 0)
                continue
            # One participant per study: every resample is that participant; a zero-width interval would lie.
            draws = np.nanmean(np.vstack(study_draws[c]), axis=0) if most[c] > 1 else None
            lo, hi = _interval(draws)
            out[c] = Estimate(float(np.mean(study_points[c])), lo, hi, len(people[c]), draws)
        return out

    def ratio(self, numerator: Estimate, denominator: Estimate) -> tuple[float, float]:
        """The percentile interval of the ratio of two series estimated with this instance (paired draws)."""
        import numpy as np

        if numerator.draws is None or denominator.draws is None:
            return math.nan, math.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            return _interval(numerator.draws / denominator.draws)


def paired(boot: Bootstrap, wide, before: str, after: str, *, by_study: bool = True) -> list[dict[str, Any]]:
    """``after − before`` on exactly the responses both arms scored: over studies and, if asked, per study.

    ``wide`` has one row per response (``experiment``, ``participant``) and
    one column per arm. Returns rows with ``experiment`` (a study, or ``"all
    studies"``), ``estimate`` (difference of Psych-201 scores), ``ci_low``,
    ``ci_high`` (paired percentile interval), ``n`` (participants), ``responses``
    and ``d_z`` (mean per-participant difference over its SD).
    """
    import numpy as np

    common = wide[["experiment", "participant", before, after]].dropna()
    common = common.assign(_diff=common[after] - common[before])
    groups = [("all studies", common)]
    if by_study and common["experiment"].nunique() > 1:
        groups += [(exp, g) for exp, g in common.groupby("experiment", sort=True)]
    rows = []
    for label, g in groups:
        est = boot.estimate(g, ["_diff"])["_diff"]
        per_person = g.groupby(["experiment", "participant"])["_diff"].mean()
        sd = float(per_person.std(ddof=1)) if len(per_person) > 1 else math.nan
        rows.append(
            {
                "experiment": label,
                "estimate": est.point,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "n": est.n,
                "responses": len(g),
                "d_z": float(per_person.mean() / sd) if sd and sd > 0 and not np.isnan(sd) else math.nan,
            }
        )
    return rows


def verdict(ci_low: float, ci_high: float, n: int, lower: str, higher: str, neither: str, few: str | None = None) -> str:
    """Words for a difference's interval: ``lower`` / ``higher`` only when it excludes 0 *and* rests on enough participants."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return neither
    if n < MIN_PARTICIPANTS and (ci_high < 0 or ci_low > 0):
        return few or f"{neither} (only {n} participants: fewer than {MIN_PARTICIPANTS}, too few to call it reliable)"
    if ci_high < 0:
        return lower
    if ci_low > 0:
        return higher
    return neither
