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

The package's modules: :mod:`~psysim.report.scoring` (a scoring run's
tables), :mod:`~psysim.report.simulation` (a simulation run's tables),
:mod:`~psysim.report.wording` (the plain-language paragraphs),
:mod:`~psysim.report.plots` (the figures) and :mod:`~psysim.report.html`
(``write_report``: ``summary.csv``, figures and the page). Every name below
is importable from ``psysim.report`` itself.
"""

from .html import write_report
from .plots import (
    BASELINE_STYLES,
    LABELLED_ITEMS,
    plot_benefit,
    plot_comparisons,
    plot_conditions,
    plot_items,
    plot_post_training,
)
from .scoring import AGAINST, LABELS, MEASURES, NO_OPTIONS, OPTION_MEASURES, OVERALL, Report, build_report
from .simulation import MAX_LEVELS, SimulationReport, add_bands, build_simulation_report, subgroups

__all__ = [
    "AGAINST",
    "BASELINE_STYLES",
    "LABELLED_ITEMS",
    "LABELS",
    "MAX_LEVELS",
    "MEASURES",
    "NO_OPTIONS",
    "OPTION_MEASURES",
    "OVERALL",
    "Report",
    "SimulationReport",
    "add_bands",
    "build_report",
    "build_simulation_report",
    "plot_benefit",
    "plot_comparisons",
    "plot_conditions",
    "plot_items",
    "plot_post_training",
    "subgroups",
    "write_report",
]
