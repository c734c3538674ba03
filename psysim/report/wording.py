"""The report's words: the plain-language paragraphs of both report kinds and how their numbers are written.

:func:`paragraphs` says what a scoring run's numbers show (every claim rests
on a paired CI over enough participants, worded through
:func:`psysim.stats.verdict`); :func:`simulation_paragraphs` says how close a
simulated cohort is to the humans. :func:`number` writes a number, or "—"
where there is none, as the paragraphs and the page's tables show it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..stats import MIN_PARTICIPANTS, verdict
from .scoring import OVERALL, Report

if TYPE_CHECKING:
    from .simulation import SimulationReport


def number(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals, or "—" where there is no number."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _interval(lo: float, hi: float, digits: int = 3) -> str:
    return f"95% CI [{number(lo, digits)}, {number(hi, digits)}]"


def _percent_interval(lo: float, hi: float) -> str:
    return "no CI" if math.isnan(lo) or math.isnan(hi) else f"95% CI [{lo:.0%}, {hi:.0%}]"


def _pick(comps, comparison, model=None, fmt=None, condition=None, measure="option_nll"):
    sel = comps[(comps["comparison"] == comparison) & (comps["experiment"] == OVERALL) & (comps["measure"] == measure)]
    if model is not None:
        sel = sel[(sel["model"] == model) & (sel["format"] == fmt)]
    if condition is not None:
        sel = sel[sel["condition"] == condition]
    return sel.iloc[0] if len(sel) else None


def paragraphs(report: Report) -> list[str]:
    """What the numbers show, in plain words; every claim rests on a paired CI over enough participants."""
    rec = report.run.record
    m = report.metrics
    out = []
    n = rec.participants
    studies = sorted(set(report.run.trials["experiment"]))
    n_models, n_conditions = len(rec.model_order), len(rec.conditions)
    pooled = any(v.get("pooled_options") for v in rec.studies.values())
    out.append(
        ("DRY RUN: every number below comes from psysim's mock model, not a language model. " if rec.dry_run else "")
        + f"This run scored {n} participants from {len(studies)} {'study' if len(studies) == 1 else 'studies'} "
        f"({', '.join(studies)}) with {n_models} {'model' if n_models == 1 else 'models'} under "
        f"{n_conditions} {'condition' if n_conditions == 1 else 'conditions'}. "
        "NLL is the negative log-likelihood of each human response in nats (lower is better); option NLL renormalises "
        "over the options the response's own trial offered. Every comparison below is paired: the difference on exactly "
        "the responses both sides scored, with a 95% bootstrap interval over participants resampled within studies "
        f"({rec.evaluation.bootstrap:,} resamples, seed {rec.seed}); "
        f"with fewer than {MIN_PARTICIPANTS} participants an interval is shown but not called reliable."
    )
    comps = report.comparisons
    types = rec.condition_types
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
                    f"Without a persona, {model} ({fmt} format) assigned the human responses an NLL of {number(r.estimate)} "
                    f"({_interval(r.ci_low, r.ci_high)})"
                )
                if len(onll) and not math.isnan(onll.iloc[0].estimate):
                    s += f", an option NLL of {number(onll.iloc[0].estimate)}"
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
                against.append(f"{v} {words} ({number(r.estimate, 3)} nats, {_interval(r.ci_low, r.ci_high)})")
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
                        f"Conditioning on each participant's own profile ({after}) changed NLL by {number(r.estimate, 4)} "
                        f"({_interval(r.ci_low, r.ci_high, 4)}, d_z = {number(r.d_z, 2)}, n = {r.n}), {v}."
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
                        f"{number(r.estimate, 4)} ({_interval(r.ci_low, r.ci_high, 4)}): {v}."
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
                f"{number(pop.estimate)}, "
                f"and the population adjusted to each person's other trials {number(ind.estimate)}"
            )
            r = _pick(comps, "individual - population")
            if r is not None and not math.isnan(r.ci_low):
                s += ": " + verdict(
                    r.ci_low,
                    r.ci_high,
                    r.n,
                    f"the person's other trials reliably add to the population ({number(r.estimate)} nats, "
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
            f"Fine-tuning ({r.model}, {r.format}, {r.condition}) changed NLL by {number(r.estimate, 4)} "
            f"({_interval(r.ci_low, r.ci_high, 4)}, d_z = {number(r.d_z, 2)}, n = {r.n}): {v}."
        )
    post = report.post_training
    if len(post):
        for r in post[(post["experiment"] == "mean over studies")].itertuples(index=False):
            if math.isnan(r.estimate):
                continue
            worse = "worse" if r.estimate > 0 else "better"
            what = "post-training" if r.comparison == "post-training" else "chat formatting"
            out.append(
                f"{r.model}: Cohen's d of response NLL = {number(r.estimate, 2)} averaged over studies: after {what} "
                f"the model predicts people {worse} (Psych-201 reports positive d, less human-like, for post-trained models)."
            )
    return out


def simulation_paragraphs(rep: SimulationReport) -> list[str]:
    """What a simulation's numbers show, in plain words: each cohort's distance from the humans against the noise floor."""
    rec = rep.run.record
    sim = rec.simulation
    out = [
        ("DRY RUN: every number below comes from psysim's mock model, not a language model. " if rec.dry_run else "")
        + f"{sim.n} synthetic participants per model and condition "
        f"({'drawn from cohort.generate' if sim.generated else 'twins of real participants'}; "
        f"design: {sim.design}; temperature {sim.temperature}) did the experiment trial by trial. "
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
