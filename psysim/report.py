"""``psysim report``: every metric, baseline and comparison of a run, with paired CIs, plots and a plain summary.

:func:`build_report` turns a completed run folder into tables (pandas) and
:func:`write_report` writes them as ``summary.csv`` (tidy: one row per number)
and ``report.html`` (one self-contained page: inline CSS and SVG plots, no
scripts, no network), beside the run's tables.

Statistics, all seeded with the experiment's seed, all from one
study-stratified, participant-paired bootstrap (:mod:`psysim.stats`):

* **Metric tables.** A condition's score is Psych-201's: the mean over each
  study's responses, then the unweighted mean over studies, with a 95%
  percentile interval. Baselines are scored the same way on the responses
  they predict.
* **Comparisons** are paired and on equal footing: persona vs no persona,
  own vs someone else's profile, each model vs chance, the population and
  the person-adjusted population, fine-tuned vs base — each the difference
  of scores on exactly the responses both arms scored, with its paired
  interval and Cohen's d_z, over studies and per study.
* **Headroom recovered** is ``(population − model) / (population −
  person-adjusted population)`` in option NLL, on common responses, shown
  only where the gap is reliably positive and the model lies inside it.
* **Post-training misalignment** is Psych-201's Cohen's d per study,
  averaged over studies (:func:`psysim.metrics.post_training_d`).

Intervals from fewer than :data:`psysim.stats.MIN_PARTICIPANTS` participants
are shown but never turned into a "reliably" sentence. A cell that cannot be
computed is shown as "—" with a footnote saying why.
"""

from __future__ import annotations

import datetime as _dt
import io
import itertools
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .baselines import LABELS as BASELINE_LABELS
from .config import EvaluationConfig
from .files import display_path
from .metrics import CONDITION_KEYS, compare_conditions, compare_models, dropped_to_fit, post_training_d, response_metrics
from .stats import MIN_PARTICIPANTS, Bootstrap, paired, verdict
from .store import SavedRun, open_run, write_atomic

__all__ = ["Report", "build_report", "write_report"]

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

    if not isinstance(run, SavedRun):
        run = open_run(run)
    if run.kind == "simulation":
        return build_simulation_report(run)
    man = run.manifest
    ev = man.get("evaluation", {})
    seed, n_boot = int(man.get("seed", 0)), int(ev.get("bootstrap", EvaluationConfig.bootstrap))
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
    _context_notes(man, trials, note)

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
    for name in ev.get("baselines", ["uniform", "population", "profile", "individual"]):
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
    report.paragraphs = _paragraphs(report)
    return report


def _context_notes(man, trials, note) -> None:
    """Notes on what is not scored alike in every arm: pooled option sets, responses dropped to fit a context, "
    "skipped personas."""
    studies = man.get("studies", {})
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


def _condition_types(man) -> dict[str, dict[str, str]]:
    types = man.get("condition_types")
    if types:
        return types
    return {c: {"type": c, "format": "interview"} for c in man.get("conditions", [])}


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

    man = run.manifest
    types = _condition_types(man)
    by_type: dict[str, list[str]] = {}
    for name, spec in types.items():
        by_type.setdefault(spec["type"], []).append(name)
    plain = by_type.get("no_persona", [None])[0]
    shuffled = {types[c]["format"]: c for c in by_type.get("shuffled_persona", [])}
    rows, benefit = [], []
    present = set(man.get("conditions", []))
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
    for pair in man.get("evaluation", {}).get("fine_tuning", []):
        for measure in ("nll", "accuracy"):
            table = compare_models(trials, pair["base"], pair["fine_tuned"], measure=measure, seed=seed, n_boot=n_boot)
            what = f"{pair['fine_tuned']} - {pair['base']}"
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

    man = run.manifest
    pairs = man.get("evaluation", {}).get("post_training", [])
    types = _condition_types(man)
    plain = next((c for c, t in types.items() if t["type"] == "no_persona"), None)
    rows = []
    if not pairs:
        return pd.DataFrame(columns=["comparison", "model", "format", "experiment", "measure", "estimate", "n", "note"])
    if plain is None:
        note("Post-training misalignment compares models without a persona; this run has no no_persona condition.")
        return pd.DataFrame(columns=["comparison", "model", "format", "experiment", "measure", "estimate", "n", "note"])
    formats = man.get("formats", {})
    for pair in pairs:
        base, post = pair["base"], pair["post_trained"]
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


# ----------------------------------------------------------------------------- words


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _interval(lo: float, hi: float, digits: int = 3) -> str:
    return f"95% CI [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _percent_interval(lo: float, hi: float) -> str:
    return "no CI" if math.isnan(lo) or math.isnan(hi) else f"95% CI [{lo:.0%}, {hi:.0%}]"


def _pick(comps, comparison, model=None, fmt=None, condition=None, measure="option_nll"):
    sel = comps[(comps["comparison"] == comparison) & (comps["experiment"] == OVERALL) & (comps["measure"] == measure)]
    if model is not None:
        sel = sel[(sel["model"] == model) & (sel["format"] == fmt)]
    if condition is not None:
        sel = sel[sel["condition"] == condition]
    return sel.iloc[0] if len(sel) else None


def _paragraphs(report: Report) -> list[str]:
    """What the numbers show, in plain words; every claim rests on a paired CI over enough participants."""
    man = report.run.manifest
    m = report.metrics
    out = []
    n = man.get("participants", 0)
    studies = sorted(set(report.run.trials["experiment"]))
    n_models, n_conditions = len(man.get("model_order", [])), len(man.get("conditions", []))
    pooled = any(v.get("pooled_options") for v in man.get("studies", {}).values())
    out.append(
        ("DRY RUN: every number below comes from psysim's mock model, not a language model. " if man.get("dry_run") else "")
        + f"This run scored {n} participants from {len(studies)} {'study' if len(studies) == 1 else 'studies'} "
        f"({', '.join(studies)}) with {n_models} {'model' if n_models == 1 else 'models'} under "
        f"{n_conditions} {'condition' if n_conditions == 1 else 'conditions'}. "
        "NLL is the negative log-likelihood of each human response in nats (lower is better); option NLL renormalises "
        "over the options the response's own trial offered. Every comparison below is paired: the difference on exactly "
        "the responses both sides scored, with a 95% bootstrap interval over participants resampled within studies "
        f"({man.get('evaluation', {}).get('bootstrap', EvaluationConfig.bootstrap):,} resamples, seed {man.get('seed')}); "
        f"with fewer than {MIN_PARTICIPANTS} participants an interval is shown but not called reliable."
    )
    comps = report.comparisons
    types = _condition_types(man)
    plain = next((c for c, t in types.items() if t["type"] == "no_persona"), None)
    for (model, fmt), group in m.groupby(["model", "format"], sort=False):
        sentences = []
        if plain is not None:
            row = group[(group["condition"] == plain) & (group["measure"] == "nll")]
            onll = group[(group["condition"] == plain) & (group["measure"] == "option_nll")]
            acc = group[(group["condition"] == plain) & (group["measure"] == "accuracy")]
            if len(row):
                r = row.iloc[0]
                s = (
                    f"Without a persona, {model} ({fmt} format) assigned the human responses an NLL of {_fmt(r.estimate)} "
                    f"({_interval(r.ci_low, r.ci_high)})"
                )
                if len(onll) and not math.isnan(onll.iloc[0].estimate):
                    s += f", an option NLL of {_fmt(onll.iloc[0].estimate)}"
                if len(acc) and not math.isnan(acc.iloc[0].estimate):
                    s += f", and chose the human's option {acc.iloc[0].estimate:.0%} of the time"
                sentences.append(s + ".")
            against = []
            for name, words in (
                ("uniform", "chance (a uniform guess over each trial's options)"),
                ("population", "the population baseline"),
                ("individual", "the person-adjusted population"),
            ):
                r = _pick(comps, f"model - {name}", model, fmt, plain)
                if r is None or math.isnan(r.estimate):
                    continue
                v = verdict(
                    r.ci_low, r.ci_high, r.n, "reliably better than", "reliably worse than", "not reliably different from"
                )
                if pooled and "reliably" in v and not v.startswith("not"):
                    v = "different (over pooled options: approximate) from"
                against.append(f"{v} {words} ({_fmt(r.estimate, 3)} nats, {_interval(r.ci_low, r.ci_high)})")
            if against:
                sentences.append(f"In option NLL it was {'; '.join(against)}.")
        for label in ("persona benefit", "persona specificity"):
            sel = comps[
                (comps["comparison"] == label)
                & (comps["model"] == model)
                & (comps["format"] == fmt)
                & (comps["measure"] == "nll")
                & (comps["experiment"] == OVERALL)
            ]
            for r in sel.itertuples(index=False):
                after, before = r.condition.split(" - ")
                if label == "persona benefit":
                    v = verdict(
                        r.ci_low,
                        r.ci_high,
                        r.n,
                        "so the profile reliably helped",
                        "so the profile reliably made predictions worse",
                        "so there is no reliable benefit of the profile",
                    )
                    sentences.append(
                        f"Conditioning on each participant's own profile ({after}) changed NLL by {_fmt(r.estimate, 4)} "
                        f"({_interval(r.ci_low, r.ci_high, 4)}, d_z = {_fmt(r.d_z, 2)}, n = {r.n}), {v}."
                    )
                else:
                    v = verdict(
                        r.ci_low,
                        r.ci_high,
                        r.n,
                        "a person's own profile predicts them better than someone else's",
                        "someone else's profile predicts them better than their own",
                        "a person's own profile predicts them no better than someone else's",
                    )
                    sentences.append(
                        f"Against a shuffled profile ({before}), the own profile changed NLL by "
                        f"{_fmt(r.estimate, 4)} ({_interval(r.ci_low, r.ci_high, 4)}): {v}."
                    )
        head = comps[(comps["comparison"] == "headroom recovered") & (comps["model"] == model) & (comps["format"] == fmt)]
        for r in head.itertuples(index=False):
            if types.get(r.condition, {}).get("type") != "persona" or math.isnan(r.estimate):
                continue
            sentences.append(
                f"With the profile ({r.condition}) it closes {r.estimate:.0%} "
                f"({_percent_interval(r.ci_low, r.ci_high)}) of the gap "
                "in option NLL between the population and the person-adjusted population."
            )
        if sentences:
            out.append(" ".join(sentences))
    bl = report.baselines.set_index(["baseline", "measure"])
    # Persona words only where a persona was run (a fine-tuning evaluation may have none).
    personas = any(v.get("type") == "persona" for v in types.values())
    if ("population", "option_nll") in bl.index and ("individual", "option_nll") in bl.index:
        pop, ind = bl.loc[("population", "option_nll")], bl.loc[("individual", "option_nll")]
        if not math.isnan(pop.estimate) and not math.isnan(ind.estimate):
            s = (
                "Without any language model, the population's choices on the same item reach an option NLL of "
                f"{_fmt(pop.estimate)}, "
                f"and the population adjusted to each person's other trials {_fmt(ind.estimate)}"
            )
            r = _pick(comps, "individual - population")
            if r is not None and not math.isnan(r.ci_low):
                s += ": " + verdict(
                    r.ci_low,
                    r.ci_high,
                    r.n,
                    f"the person's other trials reliably add to the population ({_fmt(r.estimate)} nats, "
                    f"{_interval(r.ci_low, r.ci_high)}), so there is individual-level signal"
                    + (" for a persona to recover" if personas else ""),
                    f"the person-adjusted model is reliably worse than the population ({_interval(r.ci_low, r.ci_high)})",
                    "the person's other trials add nothing reliable to the population "
                    f"({_interval(r.ci_low, r.ci_high)}), so by this measure there is no established individual-level headroom",
                )
            out.append(s + ".")
    tuned = comps[(comps["comparison"] == "fine-tuning") & (comps["measure"] == "nll") & (comps["experiment"] == OVERALL)]
    for r in tuned.itertuples(index=False):
        v = verdict(
            r.ci_low,
            r.ci_high,
            r.n,
            "fine-tuning reliably improved the prediction of these people",
            "fine-tuning reliably made it worse",
            "no reliable difference",
        )
        out.append(
            f"Fine-tuning ({r.model}, {r.format}, {r.condition}) changed NLL by {_fmt(r.estimate, 4)} "
            f"({_interval(r.ci_low, r.ci_high, 4)}, d_z = {_fmt(r.d_z, 2)}, n = {r.n}): {v}."
        )
    post = report.post_training
    if len(post):
        for r in post[(post["experiment"] == "mean over studies")].itertuples(index=False):
            if math.isnan(r.estimate):
                continue
            worse = "worse" if r.estimate > 0 else "better"
            what = "post-training" if r.comparison == "post-training" else "chat formatting"
            out.append(
                f"{r.model}: Cohen's d of response NLL = {_fmt(r.estimate, 2)} averaged over studies: after {what} "
                f"the model predicts people {worse} (Psych-201 reports positive d, less human-like, for post-trained models)."
            )
    return out


# ----------------------------------------------------------------------------- plots


def _svg(fig) -> str:
    """The figure as standalone SVG text (closing nothing)."""
    buf = io.StringIO()
    # No RDF metadata block (date, creator): the page stays byte-stable and carries nothing but the plot.
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return buf.getvalue()


def _emit(fig, folder: Path, name: str) -> str | None:
    """Write ``figures/<name>.svg`` and ``.png`` (200 dpi) beside the report, for papers; return the SVG to inline.

    ``fig`` is a matplotlib figure or None (no figure for this run); it is closed here.
    """
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    text = _svg(fig)
    write_atomic(figures / f"{name}.svg", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_atomic(
        figures / f"{name}.png",
        lambda tmp: fig.savefig(tmp, format="png", dpi=200, bbox_inches="tight", metadata={"Software": None}),
    )
    plt.close(fig)
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG is inlined in HTML


def _plot_style():
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: crisp, searchable, small
            "svg.hashsalt": "psysim",  # deterministic element ids
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )


#: Line style of each baseline in Figure 1 (one style per baseline, named in the legend).
BASELINE_STYLES = {"uniform": ":", "population": "--", "profile": "-.", "individual": (0, (6, 2, 1, 2, 1, 2))}


def plot_conditions(report: Report) -> Any:
    """NLL (left) and option NLL with the baselines (right) per model × format × condition, with 95% CIs.

    Legends sit below the panels, never over a point; each baseline is a line
    style named in the legend (not a label beside the line, where labels of
    close baselines overprint each other). Returns a matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    m = report.metrics
    measures = ["nll"] + (["option_nll"] if m.loc[m["measure"] == "option_nll", "estimate"].notna().any() else [])
    fig, axes = plt.subplots(1, len(measures), figsize=(4.4 * len(measures) + 1, 3.9), squeeze=False)
    groups = list(m.groupby(["model", "format"], sort=False).groups)
    conditions = list(dict.fromkeys(m["condition"]))
    width = 0.8 / max(len(conditions), 1)
    colors = plt.get_cmap("tab10")
    handles: list = []
    for ax, measure in zip(axes[0], measures, strict=True):
        sub = m[m["measure"] == measure]
        for j, cond in enumerate(conditions):
            xs, ys, lo, hi = [], [], [], []
            for i, key in enumerate(groups):
                r = sub[(sub["model"] == key[0]) & (sub["format"] == key[1]) & (sub["condition"] == cond)]
                if len(r) and not math.isnan(r.iloc[0].estimate):
                    e, low, high = r.iloc[0].estimate, r.iloc[0].ci_low, r.iloc[0].ci_high
                    xs.append(i + (j - (len(conditions) - 1) / 2) * width)
                    ys.append(e)
                    lo.append(e - (low if not math.isnan(low) else e))
                    hi.append((high if not math.isnan(high) else e) - e)
            h = ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color=colors(j), label=cond, capsize=3, markersize=5)
            if measure == "nll":
                handles.append(h)
        if measure == "option_nll":
            bl = report.baselines[report.baselines["measure"] == "option_nll"]
            lines = []
            for r in bl.itertuples(index=False):
                if not math.isnan(r.estimate):
                    style = BASELINE_STYLES.get(r.baseline, "--")
                    ax.axhline(r.estimate, color="0.35", linestyle=style, linewidth=1)
                    label = f"{BASELINE_LABELS.get(r.baseline, r.baseline)} {r.estimate:.3f}"
                    lines.append(Line2D([], [], color="0.35", linestyle=style, linewidth=1, label=label))
            if lines:
                ax.legend(handles=lines, fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        ax.set_xticks(range(len(groups)), [f"{a}\n({b})" for a, b in groups], fontsize=8)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel(f"{LABELS[measure]} per response (nats, lower is better)", fontsize=8)
        ax.set_title(LABELS[measure])
    axes[0][0].legend(
        handles=handles, fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(handles)
    )
    fig.subplots_adjust(bottom=0.32, wspace=0.35)
    return fig


def plot_comparisons(report: Report) -> Any:
    """Every paired comparison over studies as a forest plot: the difference and its 95% paired CI, beside zero.

    Returns a matplotlib figure, or None where there is no comparison.
    """
    import matplotlib.pyplot as plt

    c = report.comparisons
    if c is None or not len(c):
        return None
    c = c[(c["experiment"] == OVERALL) & c["estimate"].notna() & (c["comparison"] != "headroom recovered")]
    if not len(c):
        return None
    rows = list(c.itertuples(index=False))
    models = c[c["model"] != "(baselines)"]
    several = models["model"].nunique() > 1 or models["format"].nunique() > 1

    def named(text: str) -> str:  # baselines by what they are ("person-adjusted population"), not by their key
        return " - ".join(BASELINE_LABELS.get(part, part) for part in text.split(" - "))

    labels = []
    for r in rows:
        if r.comparison.startswith("persona") or r.model == "(baselines)":
            what = named(r.condition)
        else:
            what = f"{named(r.comparison)}, {r.condition}"
        who = f"{r.model} ({r.format}): " if several and r.model != "(baselines)" else ""
        labels.append(f"{who}{what} [{LABELS.get(r.measure, r.measure)}]")
    fig, ax = plt.subplots(figsize=(7.2, 0.32 * len(rows) + 1.2))
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows, strict=True):
        reliable = not math.isnan(r.ci_low) and (r.ci_low > 0 or r.ci_high < 0)
        color = "#4c78a8" if reliable and r.estimate < 0 else "#e45756" if reliable else "0.45"
        if not math.isnan(r.ci_low):
            ax.plot([r.ci_low, r.ci_high], [y, y], color=color, linewidth=1.6)
        ax.plot([r.estimate], [y], "o", color=color, markersize=4.5)
    ax.axvline(0, color="0.2", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xlabel("paired difference (nats; < 0: the first named is better)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig


def plot_benefit(report: Report) -> Any:
    """The distribution over participants of the persona benefit (cf. Psych-201, Figure 5). (A matplotlib figure, or None.)"""
    import matplotlib.pyplot as plt
    import numpy as np

    b = report.benefit
    if not len(b):
        return None
    keys = list(b.groupby(["model", "format", "persona"], sort=False).groups)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys) + 0.6, 3.6), squeeze=False, sharey=True)
    comps = report.comparisons
    comps = comps[comps["experiment"] == OVERALL]
    for ax, (model, fmt, persona) in zip(axes[0], keys, strict=True):
        d = b[(b["model"] == model) & (b["format"] == fmt) & (b["persona"] == persona)]["difference"].to_numpy(float)
        lim = max(abs(d).max(), 1e-3)
        ax.hist(d, bins=np.linspace(-lim, lim, 25), color="#9ecae9", edgecolor="white")
        # Zero as a thin dotted line behind everything: a mean near zero stays visible on top of it.
        ax.axvline(0, color="0.3", linewidth=0.8, linestyle=":", zorder=1)
        c = comps[
            (comps["comparison"] == "persona benefit")
            & (comps["model"] == model)
            & (comps["format"] == fmt)
            & (comps["measure"] == "nll")
            & (comps["condition"].str.startswith(f"{persona} - "))
        ]
        if len(c):
            r = c.iloc[0]
            top = ax.get_ylim()[1]
            if not math.isnan(r.ci_low):
                ax.axvspan(r.ci_low, r.ci_high, color="#e45756", alpha=0.18, label="95% CI of the mean", zorder=2)
            ax.axvline(r.estimate, color="#e45756", linewidth=1.8, label=f"mean {r.estimate:+.4f}", zorder=3)
            ax.plot([r.estimate], [top * 0.97], "v", color="#e45756", markersize=6, zorder=4)
            ax.legend(fontsize=7, frameon=False, loc="upper left")
        share = (d < 0).mean() if len(d) else math.nan
        ax.set_title(f"{model} ({fmt}): {persona}\n{share:.0%} of participants better predicted", fontsize=8)
        ax.set_xlabel("NLL with persona − without (nats; < 0: persona helps)", fontsize=8)
    axes[0][0].set_ylabel("participants")
    return fig


def plot_post_training(report: Report) -> Any:
    """Base vs post-trained NLL per study (lines join a study's two models), per declared pair. (A matplotlib figure, or None.)"""
    import matplotlib.pyplot as plt

    p = report.post_training
    if not len(p) or "base_nll" not in p:
        return None
    studies = p[p["experiment"] != "mean over studies"]
    pairs = list(dict.fromkeys(studies["model"]))
    if not pairs:
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.4 * len(pairs) + 0.5, 3.0), squeeze=False)
    for ax, what in zip(axes[0], pairs, strict=True):
        sub = studies[studies["model"] == what]
        for r in sub.itertuples(index=False):
            ax.plot([0, 1], [r.base_nll, r.post_nll], marker="o", color="#e45756" if r.estimate > 0 else "#4c78a8")
            ax.annotate(
                f"{r.experiment}  d={r.estimate:+.2f}",
                (1, r.post_nll),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=7,
                va="center",
            )
        later, earlier = what.split(" − ")
        ax.set_xticks([0, 1], [earlier, later], fontsize=7)
        ax.set_xlim(-0.3, 1.9)
        ax.set_ylabel("NLL per response (nats)")
        ax.set_title(what, fontsize=8)
    return fig


# ----------------------------------------------------------------------------- writing


def _records(frame) -> list[dict[str, Any]]:
    """Rows as dicts for the template, with missing notes as None (pandas may hold them as NaN)."""
    rows = frame.to_dict("records")
    for r in rows:
        if not isinstance(r.get("note"), str):
            r["note"] = None
    return rows


def _cell(r) -> dict[str, Any]:
    return {k: r.get(k) for k in ("estimate", "ci_low", "ci_high", "note")}


def _environment():
    """Jinja for psysim's own report templates (psysim/templates/, which share report.css): escaping on, strict."""
    from jinja2 import Environment, FunctionLoader, StrictUndefined

    def load(name: str) -> str:
        return resources.files("psysim").joinpath("templates", name).read_text("utf-8")

    env = Environment(
        loader=FunctionLoader(load), autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["num"] = lambda x, d=3: _fmt(x, d)
    return env


def write_report(run: str | os.PathLike | SavedRun, out: str | os.PathLike | None = None):
    """Write ``summary.csv`` and ``report.html`` (into ``out``, default the run folder); return their paths and the report.

    A simulation run (``psysim simulate``) gets the synthetic-vs-human report
    (:func:`build_simulation_report`) instead.
    """

    if not isinstance(run, SavedRun):
        run = open_run(run)
    if run.kind == "simulation":
        return _write_simulation_report(run, out)
    report = build_report(run)
    folder = Path(out) if out is not None else report.run.folder
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "summary.csv"
    write_atomic(csv, lambda tmp: report.summary().to_csv(tmp, index=False, float_format="%.6g"))
    _plot_style()
    figures = {
        "conditions": _emit(plot_conditions(report), folder, "figure-1-scores"),
        "comparisons": _emit(plot_comparisons(report), folder, "figure-2-comparisons"),
        "benefit": _emit(plot_benefit(report), folder, "figure-3-persona-benefit"),
        "post_training": _emit(plot_post_training(report), folder, "figure-4-post-training"),
    }
    env = _environment()
    env.globals["footnote"] = lambda text: report.notes.index(text) + 1 if text in report.notes else None
    template = env.get_template("report.html.j2")
    page = template.render(
        report=report,
        man=report.run.manifest,
        metrics=_metric_rows(report),
        baselines=_baseline_rows(report),
        comparisons=_records(report.comparisons),
        post=_records(report.post_training),
        studies=_study_rows(report),
        figures=figures,
        labels=LABELS,
        baseline_labels=BASELINE_LABELS,
        measures=MEASURES,
        option_measures=OPTION_MEASURES,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        run_folder=display_path(report.run.folder),
    )
    target = folder / "report.html"
    write_atomic(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return csv, target, report


def _metric_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for (model, fmt, cond), g in report.metrics.groupby(CONDITION_KEYS, sort=False):
        cells = {r["measure"]: _cell(r) for r in _records(g)}
        n = int(g["n"].max())
        responses = int(report.run.trials.query("model == @model and format == @fmt and condition == @cond").shape[0])
        rows.append({"model": model, "format": fmt, "condition": cond, "participants": n, "responses": responses, "cells": cells})
    return rows


def _study_rows(report: Report) -> list[dict[str, Any]]:
    """Per-study rows with one cell per measure; an option measure of a study without options is footnoted."""
    missing = next((n for n in report.notes if n.startswith(NO_OPTIONS)), None)
    rows = []
    for r in _records(report.studies):
        cells = {}
        for m in MEASURES:
            value = r[m]
            empty = value is None or (isinstance(value, float) and math.isnan(value))
            cells[m] = {"estimate": value, "note": missing if empty and m in OPTION_MEASURES else None}
        rows.append({**r, "cells": cells})
    return rows


def _baseline_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for name, g in report.baselines.groupby("baseline", sort=False):
        cells = {r["measure"]: _cell(r) for r in _records(g)}
        rows.append({"baseline": name, "participants": int(g["n"].max()), "cells": cells})
    return rows


# ----------------------------------------------------------------------------- simulation runs


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


def _subgroups(humans, synthetic, max_levels: int = MAX_LEVELS) -> tuple[list[tuple[str, str, str]], list[str]]:
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

    from .metrics import FLOOR_MIN_HUMANS, population_comparison

    if not isinstance(run, SavedRun):
        run = open_run(run)
    man = run.manifest
    seed = int(man.get("seed", 0))
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
        rep.paragraphs = _simulation_paragraphs(rep)
        return rep
    scale = man.get("simulation", {}).get("scale", "auto")
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
    labels = man.get("value_labels", {})
    groups, split_notes = _subgroups(humans, sim)
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
    rep.paragraphs = _simulation_paragraphs(rep)
    return rep


def _simulation_paragraphs(rep: SimulationReport) -> list[str]:
    man = rep.run.manifest
    sim = man.get("simulation", {})
    out = [
        ("DRY RUN: every number below comes from psysim's mock model, not a language model. " if man.get("dry_run") else "")
        + f"{sim.get('n', man.get('participants'))} synthetic participants per model and condition "
        f"({'drawn from cohort.generate' if sim.get('generated') else 'twins of real participants'}; "
        f"design: {sim.get('design')}; temperature {sim.get('temperature')}) did the experiment trial by trial. "
        "Each item's synthetic response distribution is compared with the humans': Wasserstein-1 distance in scale "
        "points for rating scales, Jensen–Shannon divergence (bits) otherwise. The noise floor is the distance the same "
        "number of responses resampled from the humans themselves shows: a perfect simulator sits at the floor."
    ]
    if rep.summary is None or not len(rep.summary):
        return out
    overall = rep.summary[rep.summary["subgroup"] == "everyone"]
    for r in overall.itertuples(index=False):
        if not r.items_with_floor:
            out.append(
                f"{r.model} ({r.condition}): mean {r.measure} {r.distance:.3f} over {r.items} items; {r.note}, so it "
                "cannot be told apart from human sampling noise or not."
                if r.items
                else f"{r.model} ({r.condition}): {r.note}."
            )
            continue
        verdict = (
            "indistinguishable from human sampling noise"
            if r.beyond_noise <= 0.05
            else f"beyond human sampling noise on {r.beyond_noise:.0%} of them"
        )
        times = f"{r.ratio:.1f}× the floor" if math.isfinite(r.ratio) else "a floor of 0"
        over = (
            f"over {r.items} items"
            if r.items_with_floor == r.items
            else f"over the {r.items_with_floor} of {r.items} items with a noise floor"
        )
        out.append(
            f"{r.model} ({r.condition}): mean {r.measure} {r.distance_with_floor:.3f} {over} against a noise floor of "
            f"{r.floor:.3f} ({times}), {verdict}."
        )
    groups = rep.summary[(rep.summary["subgroup"] != "everyone") & rep.summary["floor"].notna()]
    if len(groups):
        worst = groups.assign(gap=groups["distance_with_floor"] - groups["floor"]).sort_values("gap", ascending=False).iloc[0]
        out.append(
            f"By subgroup, the largest gap is for {worst.subgroup} = {worst.level} ({worst.model}, {worst.condition}): "
            f"{worst.distance_with_floor:.3f} against a floor of {worst.floor:.3f}."
        )
    return out


def plot_items(rep: SimulationReport) -> Any:
    """Per item: the synthetic against the human mean response (rating scales) or share of each option (otherwise).

    One panel per model × condition, all on the same axes (the scale's range,
    or 0–1 for shares) so panels compare at a glance. With at most
    :data:`LABELLED_ITEMS` items, each item has its own colour, named in a
    legend by its number in the per-item table (and, for shares, each option
    its own marker): points that coincide stay readable, where text labels
    would print over each other. Returns a matplotlib figure, or None.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .metrics import ordinal_values

    items = rep.items
    if items is None or not len(items):
        return None
    items = items[items["n_human"] > 0]
    if not len(items):
        return None
    keys = list(items.groupby(["model", "condition"], sort=False).groups)
    numbers = {item: k + 1 for k, item in enumerate(dict.fromkeys(items["item"]))}
    coloured = len(numbers) <= LABELLED_ITEMS
    palette = plt.get_cmap("tab20")
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    options_seen: dict[str, str] = {}
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys) + 0.6, 3.6), squeeze=False, sharex=True, sharey=True)
    lo, hi, label = 0.0, 1.0, "share of each option"
    for ax, (model, condition) in zip(axes[0], keys, strict=True):
        g = items[(items["model"] == model) & (items["condition"] == condition)]
        for r in g.itertuples(index=False):
            color = palette((numbers[r.item] - 1) % 20) if coloured else "#4c78a8"
            values = ordinal_values(r.options)
            if values is not None:
                x = sum(v * p for v, p in zip(values, r.human, strict=True))
                y = sum(v * p for v, p in zip(values, r.synthetic, strict=True))
                ax.scatter([x], [y], s=16, color=color, alpha=0.85, marker="o")
                lo, hi, label = min(values), max(values), "mean response"
            else:
                for option, x, y in zip(r.options, r.human, r.synthetic, strict=True):
                    marker = options_seen.setdefault(str(option), markers[len(options_seen) % len(markers)])
                    ax.scatter([x], [y], s=16, color=color, alpha=0.85, marker=marker)
        ax.plot([lo, hi], [lo, hi], color="0.4", linewidth=1, linestyle="--")
        ax.set_xlabel(f"human {label}")
        ax.set_title(f"{model}: {condition}", fontsize=8)
    pad = (hi - lo) * 0.04
    axes[0][0].set_xlim(lo - pad, hi + pad)
    axes[0][0].set_ylim(lo - pad, hi + pad)
    axes[0][0].set_ylabel(f"synthetic {label}")
    handles = []
    if coloured:
        handles += [
            Line2D([], [], marker="o", linestyle="", color=palette((k - 1) % 20), label=f"item {k}") for k in numbers.values()
        ]
    if label != "mean response" and len(options_seen) <= len(markers):
        handles += [Line2D([], [], marker=m, linestyle="", color="0.3", label=f"option {o}") for o, m in options_seen.items()]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
        rows = math.ceil(len(handles) / min(len(handles), 6))
        fig.subplots_adjust(bottom=0.2 + 0.06 * rows)
    return fig


#: Points of the per-item figure are numbered when a panel has at most this many items.
LABELLED_ITEMS = 20


def _numbered(items):
    """The per-item table with each item's number (order of first appearance), as Figure 1 labels its points."""
    numbers = {item: k + 1 for k, item in enumerate(dict.fromkeys(items[items["n_human"] > 0]["item"]))}
    return items.assign(number=[numbers.get(i, "") for i in items["item"]])


def _write_simulation_report(run: SavedRun, out):
    from .metrics import FLOOR_MIN_HUMANS

    rep = build_simulation_report(run)
    folder = Path(out) if out is not None else run.folder
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "summary.csv"
    table = rep.summary if len(rep.summary) else rep.items
    write_atomic(csv, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    _plot_style()
    env = _environment()
    env.filters["pct"] = lambda xs: "—" if xs is None else " / ".join(f"{x:.2f}" for x in xs)
    env.filters["share"] = lambda x: "—" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"
    template = env.get_template("simulation.html.j2")
    page = template.render(
        rep=rep,
        man=run.manifest,
        summary=_records(rep.summary) if len(rep.summary) else [],
        items=_records(_numbered(rep.items)) if len(rep.items) else [],
        figure=_emit(plot_items(rep), folder, "figure-1-items"),
        floor_min=FLOOR_MIN_HUMANS,
        run_folder=display_path(run.folder),
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    target = folder / "report.html"
    write_atomic(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return csv, target, rep
