"""The simulation-run report: a ``psysim simulate`` folder's synthetic against human response distributions.

:func:`build_simulation_report` compares each item's synthetic response
distribution with the humans' and with the humans' own noise floor, overall
and per subgroup of the profile fields (:func:`subgroups`; numeric fields in
bands of the humans' tertiles, :func:`add_bands`), into a
:class:`SimulationReport`.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..store import SavedRun, open_run
from .wording import simulation_paragraphs


@dataclass
class SimulationReport:
    """Does the synthetic cohort look like the real one? Tables and words for a ``psysim simulate`` run."""

    run: SavedRun
    items: Any  # per model × condition × item: proportions, distance, noise floor
    summary: Any  # per model × condition × measure (× subgroup): mean distance vs mean floor
    paragraphs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _numeric(values) -> bool:
    return len(values) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def add_bands(humans, synthetic, bands: int = 3) -> list[str]:
    """For numeric profile fields with many values (age, income), add ``profile.<field> band`` columns to both frames.

    Bands are the humans' tertiles (``bands`` quantile bands), labelled by their
    range, e.g. ``age 18–29``; the same cut points apply to the synthetic
    participants. Returns the new subgroup names.
    """
    import numpy as np

    names = []
    for column in [c for c in humans.columns if c.startswith("profile.") and c in synthetic.columns]:
        values = humans[column].dropna().tolist()
        if not _numeric(values) or len(set(values)) < 10:
            continue
        cuts = sorted(set(np.quantile(np.array(values, dtype=float), np.linspace(0, 1, bands + 1)).tolist()))
        if len(cuts) < 3:
            continue
        labels = [f"{_fmt_cut(a)}–{_fmt_cut(b)}" for a, b in itertools.pairwise(cuts)]

        def band(v, cuts=cuts, labels=labels):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None
            for label, hi in zip(labels, cuts[1:], strict=True):
                if float(v) <= hi:
                    return label
            return None  # above the humans' range: in no band

        name = f"{column[len('profile.') :]} band"
        humans[f"profile.{name}"] = [band(v) for v in humans[column]]
        synthetic[f"profile.{name}"] = [band(v) for v in synthetic[column]]
        names.append(name)
    return names


def _fmt_cut(x: float) -> str:
    return f"{x:g}"


#: A categorical profile field splits the cohort into subgroups when it has 2 to this many levels among the humans.
MAX_LEVELS = 6


def subgroups(humans, synthetic, max_levels: int = MAX_LEVELS) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Subgroups to compare, and notes on fields that are not split.

    Returns ``(field, level, reason)`` for every level of a categorical profile
    field with 2..``max_levels`` levels among the humans or the synthetic
    participants (``reason`` is empty where both cohorts have the level, else
    says which has none), and one note per profile field that is not split
    (too many levels, one level). Numeric fields count through their bands
    (:func:`add_bands`), not their raw values.
    """
    out, notes = [], []
    for column in [c for c in humans.columns if c.startswith("profile.") and c in synthetic.columns]:
        name = column[len("profile.") :]
        values = humans[column].dropna().tolist()
        if not values or _numeric(values):
            continue
        levels = sorted({str(v) for v in values})
        shared = set(synthetic[column].dropna().astype(str))
        if len(levels) > max_levels:
            notes.append(f"{name} has {len(levels)} levels among the humans: not split into subgroups (at most {max_levels}).")
            continue
        if len(levels) < 2:
            continue
        for level in sorted(set(levels) | shared):
            reason = (
                ""
                if level in shared and level in levels
                else "no synthetic participant in this subgroup"
                if level not in shared
                else "no human in this subgroup"
            )
            out.append((name, level, reason))
    return out, notes


def build_simulation_report(run: SavedRun | str | os.PathLike) -> SimulationReport:
    """Synthetic vs human response distributions per item, overall and per subgroup, with the human noise floor.

    Each summary row (model × condition × measure × subgroup) averages the
    distance over the items both cohorts answered, and compares distance and
    floor over the items with at least :data:`psysim.metrics.FLOOR_MIN_HUMANS`
    human responses (a floor needs them); the counts of items without humans
    and without a floor are columns, and ``note`` says why a row has no number.
    """
    import pandas as pd

    from ..metrics import FLOOR_MIN_HUMANS, population_comparison

    if not isinstance(run, SavedRun):
        run = open_run(run)
    rec = run.record
    seed = rec.seed
    notes: list[str] = []
    sim = run.table("simulated")
    people = run.participants.drop(columns=[c for c in ("design_of",) if c in run.participants])
    sim = sim.merge(people, on="participant", how="left")
    humans_path = run.folder / "humans.parquet"
    humans = pd.read_parquet(humans_path) if humans_path.exists() else None
    if humans is None or not len(humans):
        notes.append("No human responses are known for this experiment's trials: there is nothing to compare with.")
        empty = pd.DataFrame()
        rep = SimulationReport(run, empty, empty, notes=notes)
        rep.paragraphs = simulation_paragraphs(rep)
        return rep
    scale = rec.simulation.scale
    items = population_comparison(sim, humans, seed=seed, scale=scale)
    rows = []
    units = list(dict.fromkeys(zip(sim["model"], sim["condition"], strict=True)))

    def summarise(table, group: str, level: str, reason: str = "") -> None:
        for model, condition in units:
            g = table[(table["model"] == model) & (table["condition"] == condition)]
            compared = g[g["n_human"] > 0]
            floored = compared[compared["floor"].notna()]
            note = reason
            if not note and not len(compared):
                note = "no item answered by both cohorts"
            elif not note and not len(floored):
                note = f"no item has {FLOOR_MIN_HUMANS} human responses: no noise floor"
            measures = list(dict.fromkeys(compared["measure"])) or [None]
            for measure in measures:
                c = compared[compared["measure"] == measure] if measure else compared
                f = floored[floored["measure"] == measure] if measure else floored
                floor = f["floor"].mean() if len(f) else math.nan
                rows.append(
                    {
                        "model": model,
                        "condition": condition,
                        "subgroup": group,
                        "level": level,
                        "measure": measure,
                        "items": len(c),
                        "distance": c["distance"].mean() if len(c) else math.nan,
                        "items_with_floor": len(f),
                        "distance_with_floor": f["distance"].mean() if len(f) else math.nan,
                        "floor": floor,
                        "ratio": f["distance"].mean() / floor if len(f) and floor > 0 else math.nan,
                        "beyond_noise": float((f["distance"] > f["floor_p95"]).mean()) if len(f) else math.nan,
                        "items_without_humans": int((g["n_human"] == 0).sum()),
                        "n_synthetic": int(c["n_synthetic"].sum()),
                        "n_human": int(c["n_human"].sum()),
                        "note": note,
                    }
                )

    summarise(items, "everyone", "")
    add_bands(humans, sim)
    labels = rec.value_labels
    groups, split_notes = subgroups(humans, sim)
    for by, level, reason in groups:
        shown = f"{level} ({labels[by][level]})" if level in labels.get(by, {}) else level
        table = items.iloc[:0] if reason else population_comparison(sim, humans, seed=seed, by=by, level=level, scale=scale)
        summarise(table, by, shown, reason)
    notes += split_notes
    summary = pd.DataFrame(rows)
    everyone = items.drop_duplicates(["experiment", "item"])
    unmatched = int((everyone["n_human"] == 0).sum())
    if unmatched:
        notes.append(f"{unmatched} simulated items have no human responses to compare with; they are counted, not compared.")
    thin = int(((everyone["n_human"] > 0) & everyone["floor"].isna()).sum())
    if thin:
        notes.append(
            f"{thin} of {int((everyone['n_human'] > 0).sum())} items have fewer than {FLOOR_MIN_HUMANS} human responses: "
            "their distances are averaged, but no noise floor can be computed there, so the comparison with the floor "
            "uses the other items only."
        )
    rep = SimulationReport(run, items, summary, notes=notes)
    rep.paragraphs = simulation_paragraphs(rep)
    return rep
