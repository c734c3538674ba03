"""The report's page: ``write_report`` writes ``summary.csv``, the figures and ``report.html`` for either kind of run.

A scoring run's page is ``templates/report.html.j2``, a simulation's
``templates/simulation.html.j2`` (both share ``templates/report.css``, read
from the installed package through :mod:`importlib.resources`); this module
turns the reports' tables into the rows those templates show.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ..baselines import LABELS as BASELINE_LABELS
from ..files import display_path
from ..metrics import CONDITION_KEYS
from ..store import SavedRun, open_run, write_atomic
from .plots import emit, plot_benefit, plot_comparisons, plot_conditions, plot_items, plot_post_training, plot_style
from .scoring import LABELS, MEASURES, NO_OPTIONS, OPTION_MEASURES, Report, build_report
from .simulation import build_simulation_report
from .wording import number


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
    env.filters["num"] = lambda x, d=3: number(x, d)
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
    plot_style()
    figures = {
        "conditions": emit(plot_conditions(report), folder, "figure-1-scores"),
        "comparisons": emit(plot_comparisons(report), folder, "figure-2-comparisons"),
        "benefit": emit(plot_benefit(report), folder, "figure-3-persona-benefit"),
        "post_training": emit(plot_post_training(report), folder, "figure-4-post-training"),
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


def _numbered(items):
    """The per-item table with each item's number (order of first appearance), as Figure 1 labels its points."""
    numbers = {item: k + 1 for k, item in enumerate(dict.fromkeys(items[items["n_human"] > 0]["item"]))}
    return items.assign(number=[numbers.get(i, "") for i in items["item"]])


def _write_simulation_report(run: SavedRun, out):
    from ..metrics import FLOOR_MIN_HUMANS

    rep = build_simulation_report(run)
    folder = Path(out) if out is not None else run.folder
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "summary.csv"
    table = rep.summary if len(rep.summary) else rep.items
    write_atomic(csv, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    plot_style()
    env = _environment()
    env.filters["pct"] = lambda xs: "—" if xs is None else " / ".join(f"{x:.2f}" for x in xs)
    env.filters["share"] = lambda x: "—" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"
    template = env.get_template("simulation.html.j2")
    page = template.render(
        rep=rep,
        man=run.manifest,
        summary=_records(rep.summary) if len(rep.summary) else [],
        items=_records(_numbered(rep.items)) if len(rep.items) else [],
        figure=emit(plot_items(rep), folder, "figure-1-items"),
        floor_min=FLOOR_MIN_HUMANS,
        run_folder=display_path(run.folder),
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    target = folder / "report.html"
    write_atomic(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return csv, target, rep
