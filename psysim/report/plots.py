"""The report's figures: matplotlib plots of both report kinds, written as SVG (inlined in the page) and PNG.

:func:`plot_conditions`, :func:`plot_comparisons`, :func:`plot_benefit` and
:func:`plot_post_training` draw a scoring run's :class:`Report`;
:func:`plot_items` a simulation's :class:`SimulationReport`. :func:`plot_style`
sets matplotlib up for byte-stable SVG, and :func:`emit` writes a figure into
``figures/`` and returns the SVG the page inlines.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from ..baselines import LABELS as BASELINE_LABELS
from ..store import write_atomic
from .scoring import LABELS, OVERALL, Report
from .simulation import SimulationReport


def _svg(fig) -> str:
    """The figure as standalone SVG text (closing nothing)."""
    buf = io.StringIO()
    # No RDF metadata block (date, creator): the page stays byte-stable and carries nothing but the plot.
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return buf.getvalue()


def emit(fig, folder: Path, name: str) -> str | None:
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


def plot_style():
    """Matplotlib set up for the report's figures: no display, text kept as text and deterministic ids in SVG."""
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

    from ..metrics import ordinal_values

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
