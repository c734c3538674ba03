"""The scoring-run report's tables: every metric, baseline and paired comparison of a ``psysim run`` folder.

:class:`Report` holds them as data frames and :func:`build_report` computes
them from a completed run folder: Psych-201's metric table per model ×
format × condition, the baselines, the paired comparisons (persona benefit
and specificity, model vs each baseline, fine-tuning), headroom recovered,
post-training misalignment and the per-study table, with the notes that say
why a cell is empty. The names every other part of the report shares
(:data:`MEASURES`, :data:`LABELS`, :data:`OVERALL`)
live here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..baselines import LABELS as BASELINE_LABELS
from ..metrics import CONDITION_KEYS, compare_conditions, compare_models, dropped_to_fit, post_training_d, response_metrics
from ..stats import MIN_PARTICIPANTS, Bootstrap, paired
from ..store import SavedRun, open_run

if TYPE_CHECKING:
    from .simulation import SimulationReport

MEASURES = ["nll", "option_nll", "accuracy", "brier", "pseudo_r2"]
OPTION_MEASURES = ["option_nll", "accuracy", "brier", "pseudo_r2"]
LABELS = {
    "nll": "NLL",
    "option_nll": "option NLL",
    "accuracy": "accuracy",
    "brier": "Brier",
    "pseudo_r2": "pseudo-R²",
}
#: The comparison of a model with each baseline, in option NLL (model − baseline: negative means the model is better).
AGAINST = ("uniform", "population", "individual")
OVERALL = "all studies"
#: How the note on studies without options begins (the per-study table footnotes its dashes with it).
NO_OPTIONS = "No options are declared for"


# ----------------------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything ``report.html`` and ``summary.csv`` show, as data frames and text."""

    run: SavedRun
    metrics: Any  # model × format × condition × measure: estimate, CI, n, note
    baselines: Any  # baseline × measure: estimate, CI, n, note
    comparisons: Any  # paired comparisons and headroom, per model × format × condition × study
    post_training: Any  # per pair × study: d
    studies: Any  # per model × format × condition × study
    benefit: Any  # per-participant differences for the distribution plot
    paragraphs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self):
        """The tidy ``summary.csv``: one row per number the report shows."""
        import pandas as pd

        frames = []
        m = self.metrics.assign(section="model")
        frames.append(m)
        frames.append(self.baselines.assign(section="baseline"))
        frames.append(self.comparisons.assign(section="comparison"))
        if len(self.post_training):
            frames.append(self.post_training.assign(section="post_training"))
        columns = [
            "section",
            "model",
            "format",
            "condition",
            "baseline",
            "comparison",
            "experiment",
            "measure",
            "estimate",
            "ci_low",
            "ci_high",
            "n",
            "note",
        ]
        out = pd.concat([f.reindex(columns=columns) for f in frames if len(f)], ignore_index=True)
        return out[columns]


def build_report(run: SavedRun | str | os.PathLike) -> Report | SimulationReport:
    """Compute every table, comparison and summary sentence of a completed run folder.

    A simulation's folder gives its :class:`SimulationReport` (:func:`build_simulation_report`).
    """
    import pandas as pd

    # The simulation report and the words build on this module's tables: imported here, not above, so that the
    # report's modules form no import cycle.
    from .simulation import build_simulation_report
    from .wording import paragraphs

    if not isinstance(run, SavedRun):
        run = open_run(run)
    if run.kind == "simulation":
        return build_simulation_report(run)
    rec = run.record
    seed, n_boot = rec.seed, rec.evaluation.bootstrap
    trials = response_metrics(run.trials)
    bl = response_metrics(run.baselines.assign(logprob=math.nan)) if len(run.baselines) else run.baselines
    units = pd.concat(
        [trials[["experiment", "participant"]], bl[["experiment", "participant"]] if len(bl) else None]
    ).drop_duplicates()
    boot = Bootstrap(units, n_boot=n_boot, seed=seed)
    notes: list[str] = []

    def note(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return text

    # Responses without options have no option measures: say so once, per study.
    no_options = sorted(set(trials.loc[trials["options"].isna(), "experiment"]))
    option_note = (
        note(
            f"{NO_OPTIONS} {', '.join(no_options)}: option NLL, accuracy, Brier and pseudo-R² need each "
            "trial's options (declare data.options for the study: a list, or a pattern read on each trial)."
        )
        if no_options
        else None
    )
    _context_notes(rec, trials, note)

    rows = []
    for key, group in trials.groupby(CONDITION_KEYS, sort=False):
        estimates = boot.estimate(group, MEASURES)
        for measure in MEASURES:
            e = estimates[measure]
            why = None
            if math.isnan(e.point):
                why = option_note if measure in OPTION_MEASURES else note("No scored responses.")
            elif measure in OPTION_MEASURES and option_note:
                why = option_note  # the estimate covers only the studies whose options are known
            elif math.isnan(e.ci_low):
                why = note("One participant per study: no confidence interval.")
            rows.append(
                dict(
                    zip(CONDITION_KEYS, key, strict=True),
                    measure=measure,
                    estimate=e.point,
                    ci_low=e.ci_low,
                    ci_high=e.ci_high,
                    n=e.n,
                    note=why,
                )
            )
    metrics = pd.DataFrame(rows)

    bl_rows = []
    for name in rec.evaluation.baselines:
        frame = bl[bl["baseline"] == name] if len(bl) else bl
        label = BASELINE_LABELS.get(name, name)
        if not len(frame):
            reason = option_note or note(f"The {label} baseline has no predictions in this run.")
            for measure in OPTION_MEASURES:
                bl_rows.append(
                    dict(baseline=name, measure=measure, estimate=math.nan, ci_low=math.nan, ci_high=math.nan, n=0, note=reason)
                )
            continue
        reasons = sorted({str(r) for r in frame["note"].dropna()})
        empty = [r for r in reasons if not r.startswith("fell back")]
        estimates = boot.estimate(frame, OPTION_MEASURES)
        for measure in OPTION_MEASURES:
            e = estimates[measure]
            why = None
            if math.isnan(e.point):
                why = note(f"{label}: cannot be fitted: {'; '.join(empty) or 'no predictions'}.")
            elif empty:
                missing = int(frame["option_probs"].isna().sum())
                why = note(
                    f"{label}: {missing} of {len(frame)} responses have no prediction ({'; '.join(empty)}); the "
                    "estimate uses the others."
                )
            elif math.isnan(e.ci_low):
                why = note("One participant per study: no confidence interval.")
            elif name != "uniform" and frame["note"].fillna("").str.startswith("fell back").any():
                share = frame["note"].fillna("").str.startswith("fell back").mean()
                fallback = "population frequencies" if name == "profile" else "study-level frequencies"
                why = note(
                    f"{label}: {share:.0%} of responses are predicted from {fallback} (their item was answered by "
                    "no other participant, or its answers never vary)."
                )
            bl_rows.append(
                dict(baseline=name, measure=measure, estimate=e.point, ci_low=e.ci_low, ci_high=e.ci_high, n=e.n, note=why)
            )
    baselines = pd.DataFrame(bl_rows, columns=["baseline", "measure", "estimate", "ci_low", "ci_high", "n", "note"])

    comparisons, benefit = _comparisons(run, trials, bl, boot, seed, n_boot, note)
    post = _post_training(run, trials, note)
    studies = _study_table(trials)
    report = Report(run, metrics, baselines, comparisons, post, studies, benefit, notes=notes)
    report.paragraphs = paragraphs(report)
    return report


def _context_notes(rec, trials, note) -> None:
    """Notes on what is not scored alike in every arm: pooled option sets, responses dropped to fit a context, "
    "skipped personas."""
    studies = rec.studies
    pooled = sorted(s for s, v in studies.items() if v.get("pooled_options"))
    if pooled:
        note(
            f"Options of {', '.join(pooled)} are pooled (every distinct response of the study, not what each trial offered): "
            "chance, option NLL and pseudo-R² there are approximate, and no comparison over them is called reliable."
        )
    skipped = sorted(s for s, v in studies.items() if not v.get("profiles", True))
    if skipped:
        note(
            f"{', '.join(skipped)}: no profile fields, so persona conditions were not run there (no_persona "
            "only); persona comparisons use the other studies."
        )
    dropped = dropped_to_fit(trials)
    if dropped is not None and len(dropped):
        listing = "; ".join(f"{exp} / {cond}: {n}" for (exp, cond), n in dropped.items())
        note(
            "Responses dropped to fit the model's context (scoring.context: drop_oldest), per study and condition: "
            f"{listing}. Paired comparisons use only the responses scored in both arms."
        )


def _paired_rows(comparison, model, fmt, condition, measure, table, note_for) -> list[dict[str, Any]]:
    """Comparison-table rows from a :func:`psysim.metrics.compare_conditions`-style table (one row per study and overall).

    ``model``, ``fmt`` and ``condition`` label every row; ``None`` takes each row's own column.
    """
    out = []
    for r in table.itertuples(index=False):
        why = note_for(r) if note_for else None
        out.append(
            dict(
                comparison=comparison,
                model=model if model is not None else r.model,
                format=fmt if fmt is not None else r.format,
                condition=condition if condition is not None else r.condition,
                experiment=r.experiment,
                measure=measure,
                estimate=r.mean,
                ci_low=r.ci_low,
                ci_high=r.ci_high,
                d_z=r.d_z,
                n=r.n,
                responses=r.responses,
                note=why,
            )
        )
    return out


def _comparisons(run, trials, bl, boot, seed, n_boot, note):
    """Paired comparisons per model × format (× condition), over studies and per study, and headroom recovered."""
    import pandas as pd

    rec = run.record
    types = rec.condition_types
    by_type: dict[str, list[str]] = {}
    for name, spec in types.items():
        by_type.setdefault(spec["type"], []).append(name)
    plain = by_type.get("no_persona", [None])[0]
    shuffled = {types[c]["format"]: c for c in by_type.get("shuffled_persona", [])}
    rows, benefit = [], []
    present = set(rec.conditions)
    if plain is None or not by_type.get("persona"):
        note(
            "Persona benefit needs a no_persona and a persona condition; this run has: "
            + ", ".join(f"{c} ({types[c]['type']})" for c in present)
            + "."
        )
    if not by_type.get("shuffled_persona") and by_type.get("persona"):
        note("Persona specificity needs a shuffled_persona condition (someone else's profile); this run has none.")

    def few(label):
        def check(r):
            if r.n < 2:
                return note(f"{label}: fewer than two participants have both arms.")
            if r.n < MIN_PARTICIPANTS:
                return note(f"Fewer than {MIN_PARTICIPANTS} participants: the interval is shown, but not called reliable.")
            return None

        return check

    for persona in by_type.get("persona", []):
        pairs = []
        if plain is not None:
            pairs.append(("persona benefit", plain, persona))
        fmt = types[persona]["format"]
        if fmt in shuffled:
            pairs.append(("persona specificity", shuffled[fmt], persona))
        for label, before, after in pairs:
            for measure in ("nll", "option_nll"):
                table = compare_conditions(trials, before, after, measure=measure, seed=seed, n_boot=n_boot)
                rows += _paired_rows(
                    label, None, None, f"{after} - {before}", measure, table, few(f"{label} ({before} → {after})")
                )
            if label == "persona benefit":
                parts = (
                    trials.groupby([*CONDITION_KEYS, "experiment", "participant", "trial"])["nll"].first().unstack("condition")
                )
                if before in parts and after in parts:
                    both = parts[[before, after]].dropna()  # the responses both arms scored
                    diff = (both[after] - both[before]).groupby(["model", "format", "experiment", "participant"]).mean()
                    benefit.append(diff.reset_index(name="difference").assign(persona=after))

    # Each model against each baseline, in option NLL, on the responses both scored.
    keyed = ["experiment", "participant", "trial"]
    base_values = {}
    if len(bl):
        for name in AGAINST:
            frame = bl[bl["baseline"] == name]
            if len(frame) and frame["option_nll"].notna().any():
                base_values[name] = frame.set_index(keyed)["option_nll"].rename(name)
    for (model, fmt, cond), group in trials.groupby(CONDITION_KEYS, sort=False):
        if group["option_nll"].isna().all() or not base_values:
            continue
        wide = group.set_index(keyed)["option_nll"].rename("model").to_frame()
        for values in base_values.values():
            wide = wide.join(values, how="left")
        wide = wide.reset_index()
        for name in base_values:
            table = pd.DataFrame([{**r, "mean": r.pop("estimate")} for r in paired(boot, wide, name, "model")])
            label = f"model - {name}"
            rows += _paired_rows(label, model, fmt, cond, "option_nll", table, few(label))
        rows += _headroom(boot, wide, model, fmt, cond, note)
    if not {"population", "individual"} <= set(base_values):  # not declared, or not fittable (e.g. one participant)
        note("Headroom recovered needs both the population and the person-adjusted population baselines (option NLL).")
    else:
        wide = pd.concat([base_values["population"], base_values["individual"], base_values.get("uniform")], axis=1).reset_index()
        for before, after in (("uniform", "population"), ("population", "individual")):
            if before in wide and after in wide:
                table = pd.DataFrame([{**r, "mean": r.pop("estimate")} for r in paired(boot, wide, before, after)])
                label = f"{after} - {before}"
                rows += _paired_rows(label, "(baselines)", "", label, "option_nll", table, few(label))
    for base, tuned in rec.evaluation.fine_tuning:
        for measure in ("nll", "accuracy"):
            table = compare_models(trials, base, tuned, measure=measure, seed=seed, n_boot=n_boot)
            what = f"{tuned} - {base}"
            rows += _paired_rows("fine-tuning", what, None, None, measure, table, few("fine-tuning"))
    columns = [
        "comparison",
        "model",
        "format",
        "condition",
        "experiment",
        "measure",
        "estimate",
        "ci_low",
        "ci_high",
        "d_z",
        "n",
        "responses",
        "note",
    ]
    benefit_frame = (
        pd.concat(benefit, ignore_index=True)
        if benefit
        else pd.DataFrame(columns=["model", "format", "experiment", "participant", "difference", "persona"])
    )
    return pd.DataFrame(rows, columns=columns), benefit_frame


def _headroom(boot, wide, model, fmt, cond, note) -> list[dict[str, Any]]:
    """Headroom recovered on the responses scored by the model and both baselines: shown only where it means something."""
    if "population" not in wide or "individual" not in wide:
        return []
    common = wide[["experiment", "participant", "model", "population", "individual"]].dropna()
    if not len(common):
        return []
    est = boot.estimate(
        common.assign(gap=common["population"] - common["individual"], gain=common["population"] - common["model"]),
        ["gap", "gain", "model", "population", "individual"],
    )
    gap, gain = est["gap"], est["gain"]
    row = dict(
        comparison="headroom recovered",
        model=model,
        format=fmt,
        condition=cond,
        experiment=OVERALL,
        measure="option_nll",
        estimate=math.nan,
        ci_low=math.nan,
        ci_high=math.nan,
        d_z=math.nan,
        n=gap.n,
        responses=len(common),
        note=None,
    )
    if not (gap.ci_low > 0):
        row["note"] = note(
            f"Headroom recovered is not shown where the person-adjusted population is not reliably better than the population "
            f"(gap {gap.point:.3f} nats, 95% CI [{gap.ci_low:.3f}, {gap.ci_high:.3f}]): there is no established "
            "individual-level gap to close."
        )
    elif not (est["individual"].point <= est["model"].point <= est["population"].point):
        row["note"] = note(
            "Headroom recovered is not shown where the model lies outside the gap (worse than the population, or better than the "
            "person-adjusted population): a share of a gap the model is not in would mislead."
        )
    else:
        row["estimate"] = gain.point / gap.point
        row["ci_low"], row["ci_high"] = boot.ratio(gain, gap)
    return [row]


def _post_training(run, trials, note):
    """Cohen's d per study for every declared (base, post-trained) pair, and raw vs chat for the post-trained model."""
    import pandas as pd

    rec = run.record
    pairs = rec.evaluation.post_training
    types = rec.condition_types
    plain = next((c for c, t in types.items() if t["type"] == "no_persona"), None)
    rows = []
    if not pairs:
        return pd.DataFrame(columns=["comparison", "model", "format", "experiment", "measure", "estimate", "n", "note"])
    if plain is None:
        note("Post-training misalignment compares models without a persona; this run has no no_persona condition.")
        return pd.DataFrame(columns=["comparison", "model", "format", "experiment", "measure", "estimate", "n", "note"])
    formats = rec.formats
    for base, post in pairs:
        compared = [("post-training", base, "raw", post, "raw")]
        if "chat" in formats.get(post, []):
            compared.append(("chat vs raw", post, "raw", post, "chat"))
        for label, m0, f0, m1, f1 in compared:
            table = post_training_d(trials, m0, m1, fmt_base=f0, fmt_post=f1, condition=plain)
            what = f"{m1} ({f1}) − {m0} ({f0})"
            for r in table.itertuples(index=False):
                rows.append(
                    dict(
                        comparison=label,
                        model=what,
                        format=f1,
                        experiment=r.experiment,
                        measure="d",
                        estimate=r.d,
                        base_nll=r.base_nll,
                        post_nll=r.post_nll,
                        n=r.responses,
                        note=None,
                    )
                )
            mean_d = table.attrs.get("mean_d", math.nan)
            rows.append(
                dict(
                    comparison=label,
                    model=what,
                    format=f1,
                    experiment="mean over studies",
                    measure="d",
                    estimate=mean_d,
                    n=int(table["responses"].sum()) if len(table) else 0,
                    note=None if len(table) else note(f"{what}: no study was scored by both."),
                )
            )
    return pd.DataFrame(rows)


def _study_table(trials):
    """Per model × format × condition × study: responses, participants and the mean of each measure."""
    grouped = trials.groupby([*CONDITION_KEYS, "experiment"], sort=False)
    table = grouped[MEASURES].mean()
    table.insert(0, "participants", grouped["participant"].nunique())
    table.insert(1, "responses", grouped.size())
    return table.reset_index()
