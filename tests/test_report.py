"""`psysim report`: every number of the report checked against a plain reference computed here.

The runs are dry runs (the deterministic mock backend). The toy experiment of
conftest (3 participants, one study) is too small for the aggregation to
matter, so most checks use a synthetic Psych-201 experiment written here: 12
participants in two studies of different sizes (8 participants × 4 trials and
4 × 2), so that Psych-201's unweighted mean over studies differs from the mean
over responses. The references are loops over the saved tables (numpy only for
the random draws and the percentiles), never psysim's own aggregation.

Runs are shared per module (they are deterministic), so the file stays fast.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import RECORDS, SCHEMA
from pandas.testing import assert_frame_equal
from test_run import DRY

from psysim.cli import main
from psysim.metrics import compare_conditions, response_metrics
from psysim.report import build_report, write_report

N_BOOT = 200
SEED = 11

# Responses per participant, by study: most participants are consistent, so the
# individual ceiling beats the population baseline (headroom is defined).
CONSISTENT = {
    "s1": ["AAAA", "AAAB", "BBBB", "BBBA", "AAAA", "BBBB", "ABAA", "BBAB"],
    "s2": ["AA", "BB", "AA", "BA"],
}
# Everyone alternates: a participant's other trials mislead the individual ceiling.
ALTERNATING = {
    "s1": ["ABAB", "BABA", "ABAB", "BABA", "ABAB", "BABA", "ABAB", "BABA"],
    "s2": ["AB", "BA", "AB", "BA"],
}

BIG = """\
name: big
description: synthetic two-study experiment for the report tests
seed: 11
data:
  format: psych201
  path: data.jsonl
  options: [A, B]
cohort:
  schema: schema.json
models:
  - name: tiny
    formats: [raw, chat]
    chat_template: chatml
conditions: [no_persona, persona, shuffled_persona]
evaluation:
  baselines: [uniform, population, individual]
  bootstrap: 200
"""

POST = """\
name: post
description: a base and a post-trained mock model
seed: 11
data:
  format: psych201
  path: data.jsonl
  options: [A, B]
cohort:
  schema: schema.json
models:
  - name: base
    formats: [raw]
  - name: post
    formats: [raw, chat]
    chat_template: chatml
conditions: [no_persona]
evaluation:
  baselines: [uniform]
  bootstrap: 200
  post_training:
    - base: base
      post_trained: post
"""

TOY = DRY + "evaluation:\n  bootstrap: 200\n"


# --------------------------------------------------------------------------------------------- building runs


def records(patterns: dict[str, list[str]]) -> list[dict]:
    """Psych-201 records: one trial per line, the same lines for everyone in a study (so items are shared)."""
    out = []
    for exp, people in patterns.items():
        for i, answers in enumerate(people):
            lines = [f"Trial {t + 1}: pick A or B. You pick <<{a}>>." for t, a in enumerate(answers)]
            out.append(
                {
                    "text": "\n".join(lines) + "\n",
                    "experiment": exp,
                    "participant": f"{exp}p{i}",
                    "age": str(20 + 3 * i),
                    "gender": "Female" if i % 2 else "Male",
                }
            )
    return out


def make_experiment(folder: Path, yaml: str, recs: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    (folder / "schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    (folder / "experiment.yaml").write_text(textwrap.dedent(yaml), encoding="utf-8")
    return folder


def dry_run(folder: Path, *extra: str) -> Path:
    """`psysim run experiment.yaml --dry-run -q --out out` in ``folder``, through the console entry point."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        main(["run", "experiment.yaml", "--dry-run", "-q", "--out", "out", *extra])
    return folder / "out"


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """The two-study run, its report written."""
    folder = make_experiment(tmp_path_factory.mktemp("big"), BIG, records(CONSISTENT))
    out = dry_run(folder)
    write_report(out)
    return out


@pytest.fixture(scope="module")
def big_report(big):
    return build_report(big)


# --------------------------------------------------------------------------------------------- references


def softmax(logprobs) -> list[float]:
    top = max(logprobs)
    w = [math.exp(x - top) for x in logprobs]
    return [x / sum(w) for x in w]


def argmax_first(values) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def tie_accuracy(probs, k: int) -> float:
    """Expected accuracy when ties among the most probable options are broken at random (the baselines' accuracy)."""
    top = [i for i, p in enumerate(probs) if p == max(probs)]
    return 1.0 / len(top) if k in top else 0.0


def option_values(options, probs, response, *, ties: str = "first") -> dict[str, float]:
    """The four option measures of one response, from its option probabilities.

    ``ties``: ``first`` (a model's accuracy: its argmax, ties to the first option) or ``random`` (a baseline's:
    the expected accuracy of a random pick among the most probable, 1/k for chance).
    """
    options = list(options)
    k = options.index(response)
    nll = -math.log(probs[k])
    return {
        "option_nll": nll,
        "accuracy": (1.0 if argmax_first(probs) == k else 0.0) if ties == "first" else tie_accuracy(probs, k),
        "brier": sum((p - (1.0 if i == k else 0.0)) ** 2 for i, p in enumerate(probs)),
        "pseudo_r2": 1.0 - nll / math.log(len(options)),
    }


def model_responses(trials: pd.DataFrame) -> dict[tuple, list[tuple[str, str, dict]]]:
    """Per (model, format, condition): (experiment, participant, measures) of every response."""
    out: dict[tuple, list] = {}
    for r in trials.itertuples(index=False):
        values = {"nll": -r.logprob}
        values |= option_values(r.options, softmax(list(r.option_logprobs)), r.response)
        out.setdefault((r.model, r.format, r.condition), []).append((r.experiment, r.participant, values))
    return out


def baseline_responses(bl: pd.DataFrame) -> dict[str, list[tuple[str, str, dict]]]:
    """Per baseline: (experiment, participant, measures) of every response it predicted."""
    out: dict[str, list] = {}
    for r in bl.itertuples(index=False):
        if r.option_probs is None:
            continue
        out.setdefault(r.baseline, []).append(
            (r.experiment, r.participant, option_values(r.options, list(r.option_probs), r.response, ties="random"))
        )
    return out


def psych201_score(rows, measure: str) -> float:
    """Mean over each study's responses, then the unweighted mean over studies."""
    per_study: dict[str, list[float]] = {}
    for exp, _, values in rows:
        per_study.setdefault(exp, []).append(values[measure])
    means = [sum(v) / len(v) for _, v in sorted(per_study.items())]
    return sum(means) / len(means)


def units_of(trials: pd.DataFrame) -> dict[str, list[str]]:
    units: dict[str, set[str]] = {}
    for exp, pid in zip(trials["experiment"], trials["participant"], strict=True):
        units.setdefault(exp, set()).add(pid)
    return {exp: sorted(pids) for exp, pids in units.items()}


class Resamples:
    """psysim.stats.Bootstrap as documented: per study (sorted; index si), pids sorted, resamples drawn in chunks of
    256 with default_rng([seed, si, chunk]).integers(0, n_s, (rows, n_s))."""

    def __init__(self, units: dict[str, list[str]], n_boot: int, seed: int, chunk: int = 256):
        self.n_boot = n_boot
        self.studies = []
        for si, exp in enumerate(sorted(units)):
            n = len(units[exp])
            parts = [
                np.random.default_rng([seed, si, c]).integers(0, n, size=(min(chunk, n_boot - start), n))
                for c, start in enumerate(range(0, n_boot, chunk))
            ]
            self.studies.append((exp, units[exp], np.vstack(parts)))

    def series(self, rows, measure: str) -> list[float]:
        """Per resample: the mean over studies of (sum of the drawn participants' sums / sum of their counts)."""
        sums: dict[tuple[str, str], float] = {}
        counts: dict[tuple[str, str], int] = {}
        for exp, pid, values in rows:
            sums[(exp, pid)] = sums.get((exp, pid), 0.0) + values[measure]
            counts[(exp, pid)] = counts.get((exp, pid), 0) + 1
        out = []
        for b in range(self.n_boot):
            study_means = []
            for exp, pids, idx in self.studies:
                s = sum(sums.get((exp, pids[j]), 0.0) for j in idx[b])
                c = sum(counts.get((exp, pids[j]), 0) for j in idx[b])
                assert c > 0
                study_means.append(s / c)
            out.append(sum(study_means) / len(study_means))
        return out


def percentile_ci(series) -> tuple[float, float]:
    lo, hi = np.nanquantile(np.asarray(series, dtype=float), [0.025, 0.975])
    return float(lo), float(hi)


def per_participant_mean(rows, measure: str) -> dict[tuple[str, str], float]:
    acc: dict[tuple[str, str], list[float]] = {}
    for exp, pid, values in rows:
        acc.setdefault((exp, pid), []).append(values[measure])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def one(frame: pd.DataFrame, **where):
    sel = frame
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (where, sel)
    return sel.iloc[0]


# --------------------------------------------------------------------------------------------- reading the HTML


class Page(HTMLParser):
    """Tables (cells: text and footnote links), notes (id -> text) and the visible text outside <svg> and <style>."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[dict]]] = []
        self.notes: dict[str, str] = {}
        self.text: list[str] = []
        self._skip = 0
        self._cell: dict | None = None
        self._note: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("svg", "style"):
            self._skip += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = {"text": "", "links": []}
        elif tag == "a" and self._cell is not None and a.get("href", "").startswith("#note-"):
            self._cell["links"].append(a["href"][1:])
        elif tag == "li" and a.get("id", "").startswith("note-"):
            self._note = a["id"]
            self.notes[self._note] = ""

    def handle_endtag(self, tag):
        if tag in ("svg", "style"):
            self._skip -= 1
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "li":
            self._note = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data
        if self._note is not None:
            self.notes[self._note] += data

    def table(self, first_header: str) -> list[list[dict]]:
        """The table whose first header cell is ``first_header``, without its header row."""
        for t in self.tables:
            if t and t[0] and t[0][0]["text"].strip() == first_header:
                return t[1:]
        raise AssertionError(f"no table starting with {first_header!r}")


def page_of(out: Path) -> Page:
    return Page((out / "report.html").read_text("utf-8"))


def assert_no_nan_text(out: Path) -> None:
    html_text = (out / "report.html").read_text("utf-8")
    visible = " ".join(page_of(out).text)
    assert not re.search(r"\bnan\b", visible, re.IGNORECASE), re.findall(r".{30}\bnan\b.{30}", visible, re.IGNORECASE)
    assert not re.search(r"\bnan\b", html_text, re.IGNORECASE)  # nor in the plots' text or attributes


#: The columns of each table that hold estimates (shown through the template's footnoted `cell`), by header.
ESTIMATE_COLUMNS = {
    ("model", "format", "condition", "participants"): slice(5, None),  # metrics
    ("baseline", "participants"): slice(2, None),  # baselines
    ("comparison", "model", "format", "conditions"): slice(5, 6),  # comparisons: the estimate
    ("comparison", "models", "study"): slice(5, 6),  # post-training: d
}


def estimate_cells(page: Page, header: tuple[str, ...]):
    for t in page.tables:
        if t and tuple(c["text"].strip() for c in t[0][: len(header)]) == header:
            for row in t[1:]:
                for cell in row[ESTIMATE_COLUMNS[header]]:
                    yield row, cell


def assert_empty_cells_are_explained(out: Path) -> None:
    """Every "—" estimate links to a footnote; every footnote link points at a non-empty note."""
    page = page_of(out)
    for header in ESTIMATE_COLUMNS:
        for row, cell in estimate_cells(page, header):
            if cell["text"].strip().startswith("—"):
                assert cell["links"], f"unexplained empty cell in row {[c['text'] for c in row]}"
    for t in page.tables:
        for row in t:
            for cell in row:
                for link in cell["links"]:
                    assert page.notes.get(link, "").strip(), link


# --------------------------------------------------------------------------------------------- 1. metrics table


def test_metrics_are_psych201_scores_with_the_documented_bootstrap(big, big_report):
    """Each estimate is the mean over studies of the per-study response means; CIs are the stratified bootstrap's."""
    trials = pd.read_parquet(big / "trials.parquet")
    rows = model_responses(trials)
    boot = Resamples(units_of(trials), N_BOOT, SEED)
    m = big_report.metrics
    assert len(m) == 2 * 3 * 5 == len(rows) * 5  # formats × conditions × measures
    assert m["note"].isna().all()
    for (model, fmt, cond), responses in rows.items():
        for measure in ("nll", "option_nll", "accuracy", "brier", "pseudo_r2"):
            r = one(m, model=model, format=fmt, condition=cond, measure=measure)
            expected = psych201_score(responses, measure)
            lo, hi = percentile_ci(boot.series(responses, measure))
            where = (model, fmt, cond, measure)
            assert r.estimate == pytest.approx(expected, abs=1e-12), where
            assert (r.ci_low, r.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12)), where
            assert r.ci_low <= r.estimate <= r.ci_high, where
            assert r.n == 12, where

    # The aggregation matters here: the mean over all responses differs from Psych-201's score.
    plain = rows[("tiny", "raw", "no_persona")]
    pooled = sum(v["nll"] for _, _, v in plain) / len(plain)
    assert abs(pooled - one(m, format="raw", condition="no_persona", measure="nll").estimate) > 1e-3


def test_per_study_table_is_the_mean_over_each_study(big, big_report):
    trials = pd.read_parquet(big / "trials.parquet")
    s = big_report.studies
    assert len(s) == 2 * 3 * 2
    for (model, fmt, cond), responses in model_responses(trials).items():
        for exp, n_people in (("s1", 8), ("s2", 4)):
            mine = [(e, p, v) for e, p, v in responses if e == exp]
            r = one(s, model=model, format=fmt, condition=cond, experiment=exp)
            assert (r.participants, r.responses) == (n_people, len(mine))
            for measure in ("nll", "option_nll", "accuracy", "brier", "pseudo_r2"):
                assert r[measure] == pytest.approx(sum(v[measure] for _, _, v in mine) / len(mine), abs=1e-12)


# --------------------------------------------------------------------------------------------- 2. baselines


def test_baselines_table_is_the_reference_over_baselines_parquet(big, big_report):
    trials = pd.read_parquet(big / "trials.parquet")
    bl = pd.read_parquet(big / "baselines.parquet")
    boot = Resamples(units_of(trials), N_BOOT, SEED)
    per = baseline_responses(bl)
    table = big_report.baselines
    assert table["baseline"].drop_duplicates().tolist() == ["uniform", "population", "individual"]
    for name, responses in per.items():
        assert len(responses) == 8 * 4 + 4 * 2
        for measure in ("option_nll", "accuracy", "brier", "pseudo_r2"):
            r = one(table, baseline=name, measure=measure)
            lo, hi = percentile_ci(boot.series(responses, measure))
            assert r.estimate == pytest.approx(psych201_score(responses, measure), abs=1e-12), (name, measure)
            assert (r.ci_low, r.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12)), (name, measure)
            assert r.ci_low <= r.estimate <= r.ci_high
            assert r.n == 12
    # `correct` in baselines.parquet is the expected accuracy of a random pick among the most probable options
    for r in bl.itertuples(index=False):
        assert r.correct == tie_accuracy(list(r.option_probs), list(r.options).index(r.response))
    assert one(table, baseline="uniform", measure="option_nll").estimate == pytest.approx(math.log(2), abs=1e-15)
    assert one(table, baseline="uniform", measure="accuracy").estimate == 0.5  # chance as it is: 1/k


def test_population_predictions_are_the_hand_computed_frequencies(big, big_report):
    """LOPO population: Laplace-smoothed counts of the *other* participants' answers on the same trial of the study.
    (The person-adjusted population's properties are tested in tests/test_baselines.py.)"""
    bl = pd.read_parquet(big / "baselines.parquet")
    expected: dict[str, list] = {"population": []}
    for exp, people in CONSISTENT.items():
        for i, answers in enumerate(people):
            for t, answer in enumerate(answers):
                others = [p[t] for j, p in enumerate(people) if j != i]
                pop = [(others.count(o) + 1) / (len(others) + 2) for o in "AB"]
                # the file holds two sub-experiments (s1, s2): ids are <experiment>/<participant>
                expected["population"].append((exp, f"{exp}/{exp}p{i}", t, answer, pop))
    for name, rows in expected.items():
        got = bl[bl["baseline"] == name]
        assert len(got) == len(rows)
        index = {(r.experiment, r.participant, r.trial): r for r in got.itertuples(index=False)}
        for exp, pid, t, answer, probs in rows:
            r = index[(exp, pid, t)]
            assert r.response == answer
            assert list(r.option_probs) == pytest.approx(probs, abs=1e-15), (name, pid, t)
        # ... and the table's option NLL is Psych-201's score of exactly these predictions
        hand = [(exp, pid, {"option_nll": -math.log(probs["AB".index(answer)])}) for exp, pid, _, answer, probs in rows]
        assert one(big_report.baselines, baseline=name, measure="option_nll").estimate == pytest.approx(
            psych201_score(hand, "option_nll"), abs=1e-12
        )


# --------------------------------------------------------------------------------------------- 3. comparisons


def paired_reference(rows_before, rows_after, measure: str, boot):
    """The documented paired comparison, by hand: on responses both arms scored (here all), the difference of
    Psych-201 scores, its percentile CI from the study-stratified resamples, and d_z of per-participant differences."""
    diffs = [(e, p, {measure: vb[measure] - va[measure]}) for (e, p, va), (_, _, vb) in zip(rows_before, rows_after, strict=True)]
    mean = psych201_score(diffs, measure)
    lo, hi = percentile_ci(boot.series(diffs, measure))
    per_person = per_participant_mean(diffs, measure)
    d = list(per_person.values())
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    return per_person, mean, lo, hi, m / sd


def test_persona_benefit_and_specificity_are_paired_participant_differences(big, big_report):
    trials = pd.read_parquet(big / "trials.parquet")
    rows = model_responses(trials)
    boot = Resamples(units_of(trials), N_BOOT, SEED)
    comps = big_report.comparisons
    for label, before, after in (
        ("persona benefit", "no_persona", "persona"),
        ("persona specificity", "shuffled_persona", "persona"),
    ):
        for measure in ("nll", "option_nll"):
            lib = compare_conditions(response_metrics(trials), before, after, measure=measure, seed=SEED, n_boot=N_BOOT)
            for fmt in ("raw", "chat"):
                diffs, mean, lo, hi, d_z = paired_reference(
                    rows[("tiny", fmt, before)], rows[("tiny", fmt, after)], measure, boot
                )
                r = one(comps, comparison=label, format=fmt, measure=measure, experiment="all studies")
                assert r.condition == f"{after} - {before}"
                assert (r.n, r.model) == (12, "tiny")
                assert r.estimate == pytest.approx(mean, abs=1e-12), (label, fmt, measure)
                assert r.ci_low == pytest.approx(lo, abs=1e-12) and r.ci_high == pytest.approx(hi, abs=1e-12)
                assert r.d_z == pytest.approx(d_z, abs=1e-12)
                assert r.ci_low <= r.estimate <= r.ci_high and pd.isna(r.note)
                c = one(lib, format=fmt, experiment="all studies")
                assert (c["mean"], c.ci_low, c.ci_high, c.d_z, c.n) == (r.estimate, r.ci_low, r.ci_high, r.d_z, r.n)
                # per study too; s2 has 4 participants: shown, with the note that it is too few to call reliable
                s2 = one(comps, comparison=label, format=fmt, measure=measure, experiment="s2")
                assert s2.n == 4 and s2.note.startswith("Fewer than 10 participants")
                if label == "persona benefit" and measure == "nll":
                    b = big_report.benefit[(big_report.benefit["format"] == fmt) & (big_report.benefit["persona"] == after)]
                    got = {(e, p): d for e, p, d in zip(b["experiment"], b["participant"], b["difference"], strict=True)}
                    assert got.keys() == diffs.keys()
                    for k, d in diffs.items():
                        assert got[k] == pytest.approx(d, abs=1e-12), k


def test_headroom_recovered_is_shown_only_inside_a_reliable_gap(big, big_report):
    """(population − model) / (population − person-adjusted), on common responses with paired resamples; a number
    only where the gap's CI is above 0 and the model lies inside the gap, else a dash with the reason."""
    trials = response_metrics(pd.read_parquet(big / "trials.parquet"))
    bl = response_metrics(pd.read_parquet(big / "baselines.parquet").assign(logprob=math.nan))
    boot = Resamples(units_of(trials), N_BOOT, SEED)
    key = ["experiment", "participant", "trial"]
    base = {name: g.set_index(key)["option_nll"] for name, g in bl.groupby("baseline")}
    heads = big_report.comparisons[big_report.comparisons["comparison"] == "headroom recovered"]
    assert len(heads) == 6
    for (model, fmt, cond), g in trials.groupby(["model", "format", "condition"]):
        m = g.set_index(key)["option_nll"]
        rows = [
            (e, p, {"model": m[(e, p, t)], "pop": base["population"][(e, p, t)], "ind": base["individual"][(e, p, t)]})
            for e, p, t in m.index
        ]
        for _, _, v in rows:
            v["gap"], v["gain"] = v["pop"] - v["ind"], v["pop"] - v["model"]
        gap_lo, _ = percentile_ci(boot.series(rows, "gap"))
        point = {k: psych201_score(rows, k) for k in ("model", "pop", "ind", "gap", "gain")}
        r = one(heads, model=model, format=fmt, condition=cond)
        assert r.measure == "option_nll" and r.n == 12
        if gap_lo > 0 and point["ind"] <= point["model"] <= point["pop"]:
            assert r.estimate == pytest.approx(point["gain"] / point["gap"], abs=1e-12)
            ratio = [x / y for x, y in zip(boot.series(rows, "gain"), boot.series(rows, "gap"), strict=True)]
            lo, hi = percentile_ci(ratio)
            assert r.ci_low == pytest.approx(lo, abs=1e-12) and r.ci_high == pytest.approx(hi, abs=1e-12)
        else:
            assert math.isnan(r.estimate) and r.note.startswith("Headroom recovered is not shown")


# --------------------------------------------------------------------------------------------- 5. summary.csv, 8. determinism


def test_summary_csv_is_tidy_and_its_model_rows_are_the_metrics_table(big, big_report):
    summary = pd.read_csv(big / "summary.csv")
    assert list(summary.columns) == [
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
    assert summary["section"].drop_duplicates().tolist() == ["model", "baseline", "comparison"]
    models = summary[summary["section"] == "model"].reset_index(drop=True)
    metrics = big_report.metrics
    assert len(models) == len(metrics)
    assert models[["model", "format", "condition", "measure"]].values.tolist() == (
        metrics[["model", "format", "condition", "measure"]].values.tolist()
    )
    for col in ("estimate", "ci_low", "ci_high"):  # written with 6 significant digits
        np.testing.assert_allclose(models[col].to_numpy(float), metrics[col].to_numpy(float), rtol=1e-5, atol=1e-9)
    assert models["n"].tolist() == metrics["n"].tolist()
    baselines = summary[summary["section"] == "baseline"]
    assert baselines[["baseline", "measure"]].values.tolist() == big_report.baselines[["baseline", "measure"]].values.tolist()
    np.testing.assert_allclose(baselines["estimate"].to_numpy(float), big_report.baselines["estimate"].to_numpy(float), rtol=1e-5)
    assert len(summary[summary["section"] == "comparison"]) == len(big_report.comparisons)


def test_report_is_deterministic(big, big_report):
    again = build_report(big)
    for name in ("metrics", "baselines", "comparisons", "post_training", "studies", "benefit"):
        assert_frame_equal(getattr(big_report, name), getattr(again, name), check_exact=True, obj=name)
    assert big_report.paragraphs == again.paragraphs
    assert big_report.notes == again.notes


def test_report_html_of_a_full_run(big, big_report):
    """The metrics table shows each estimate with its CI; nothing reads "nan"; every footnote link resolves."""
    page = page_of(big)
    rows = page.table("model")
    assert len(rows) == 6
    for row in rows:
        model, fmt, cond = (c["text"].strip() for c in row[:3])
        assert row[3]["text"].strip() == "12"
        r = one(big_report.metrics, model=model, format=fmt, condition=cond, measure="nll")
        assert row[5]["text"].strip() == f"{r.estimate:.3f}[{r.ci_low:.3f}, {r.ci_high:.3f}]"
    assert_no_nan_text(big)
    assert_empty_cells_are_explained(big)


# --------------------------------------------------------------------------------------------- 4. empty cells


@pytest.fixture(scope="module")
def one_participant(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    make_experiment(folder, TOY, RECORDS)
    return dry_run(folder, "--limit", "1")


def test_one_participant_baselines_are_dashes_with_their_reason(one_participant, run_cli, monkeypatch):
    out = one_participant
    monkeypatch.chdir(out.parent)
    r = run_cli("report", "out")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.endswith("wrote out/summary.csv and out/report.html\n")
    rep = build_report(out)
    bl = rep.baselines
    # The person-adjusted population learns its weights from other participants too: with one, nothing to learn from.
    for name in ("population", "profile", "individual"):
        sel = bl[bl["baseline"] == name]
        assert len(sel) == 4 and sel["estimate"].isna().all() and sel["n"].eq(0).all()
        assert sel["note"].str.contains("no other participant in study toy", regex=False).all(), sel["note"].tolist()
    comps = rep.comparisons
    benefit = comps[comps["comparison"] == "persona benefit"]
    assert len(benefit) == 4 and benefit["ci_low"].isna().all() and benefit["n"].eq(1).all()
    assert benefit["note"].str.contains("fewer than two participants have both arms").all()
    assert "headroom recovered" not in set(comps["comparison"])
    assert any(
        "Headroom recovered needs both the population and the person-adjusted population baselines" in n for n in rep.notes
    )

    page = page_of(out)
    bl_rows = {row[0]["text"].strip(): row for row in page.table("baseline")}
    for label in ("population frequency", "profile-only model", "person-adjusted population"):
        cells = bl_rows[label][2:]
        assert [c["text"].strip()[:1] for c in cells] == ["—"] * 4
        (link,) = set(cells[0]["links"])
        assert "no other participant in study toy" in page.notes[link]
    assert_no_nan_text(out)
    assert_empty_cells_are_explained(out)

    summary = pd.read_csv(out / "summary.csv")
    empty = summary[summary["estimate"].isna()]
    assert len(empty) >= 8 and empty["note"].notna().all() and empty["note"].str.len().gt(0).all()
    no_ci = summary[summary["section"].isin(["baseline", "comparison"]) & summary["ci_low"].isna()]
    assert no_ci["note"].notna().all()


def test_one_participant_per_study_has_no_confidence_interval(one_participant):
    m = build_report(one_participant).metrics
    assert m["estimate"].notna().all()
    assert m["ci_low"].isna().all() and m["ci_high"].isna().all(), m[["measure", "estimate", "ci_low", "ci_high"]]
    assert (m["note"] == "One participant per study: no confidence interval.").all()


def test_without_persona_conditions_the_notes_say_what_is_missing(tmp_path):
    """conditions: [no_persona]; people who alternate A/B, so the ceiling is worse than the population: headroom NaN."""
    yaml = BIG.replace("conditions: [no_persona, persona, shuffled_persona]", "conditions: [no_persona]").replace(
        "formats: [raw, chat]", "formats: [raw]"
    )
    out = dry_run(make_experiment(tmp_path, yaml, records(ALTERNATING)))
    write_report(out)
    rep = build_report(out)
    assert any(
        n.startswith("Persona benefit needs a no_persona and a persona condition; this run has: no_persona") for n in rep.notes
    ), rep.notes
    comps = rep.comparisons
    assert not {"persona benefit", "persona specificity"} & set(comps["comparison"])
    assert "headroom recovered" in set(comps["comparison"])
    assert rep.benefit.empty

    # Everyone alternates: the person-adjusted population learns it from their other trials (the old ceiling, blind
    # to the sequence, was worse than the population here); the mock model is worse than the population, outside
    # the gap, so no share of the gap is shown.
    bl = rep.baselines
    pop = one(bl, baseline="population", measure="option_nll").estimate
    adjusted = one(bl, baseline="individual", measure="option_nll").estimate
    assert adjusted < pop - 0.5
    r = one(comps, comparison="headroom recovered")
    assert math.isnan(r.estimate) and math.isnan(r.ci_low) and math.isnan(r.ci_high)
    assert r.note.startswith("Headroom recovered is not shown where the model lies outside the gap")
    worse = one(comps, comparison="model - population", experiment="all studies")
    assert worse.ci_low > 0  # the model is reliably worse than the population: outside the gap indeed

    page = page_of(out)
    assert "Persona benefit needs a no_persona and a persona condition" in " ".join(page.notes.values())
    (head,) = [row for row in page.table("comparison") if row[0]["text"].strip() == "headroom recovered"]
    assert head[6]["text"].strip().startswith("—") and head[6]["links"]
    assert page.notes[head[6]["links"][0]].startswith("Headroom recovered is not shown")
    assert_no_nan_text(out)
    assert_empty_cells_are_explained(out)


@pytest.fixture(scope="module")
def no_options(tmp_path_factory):
    """The toy experiment without data.options, its report written."""
    yaml = TOY.replace("  options: [A, B]\n", "").replace("formats: [raw, chat]", "formats: [raw]")
    out = dry_run(make_experiment(tmp_path_factory.mktemp("no_options"), yaml, RECORDS))
    write_report(out)
    return out


def test_without_options_option_measures_are_dashes_and_there_are_no_baselines(no_options):
    out = no_options
    assert len(pd.read_parquet(out / "baselines.parquet")) == 0
    rep = build_report(out)
    why = (
        "No options are declared for toy: option NLL, accuracy, Brier and pseudo-R² need each trial's options "
        "(declare data.options for the study: a list, or a pattern read on each trial)."
    )
    assert why in rep.notes
    m = rep.metrics
    options = m[m["measure"] != "nll"]
    assert options["estimate"].isna().all() and (options["note"] == why).all()
    nll = m[m["measure"] == "nll"]
    assert nll["estimate"].notna().all() and nll["note"].isna().all()
    trials = pd.read_parquet(out / "trials.parquet")
    for (model, fmt, cond), responses in model_nll(trials).items():
        assert one(m, model=model, format=fmt, condition=cond, measure="nll").estimate == pytest.approx(
            sum(responses) / len(responses), abs=1e-12
        )
    assert rep.baselines["estimate"].isna().all() and (rep.baselines["note"] == why).all()

    page = page_of(out)
    (link,) = {n for n, text in page.notes.items() if text == why}
    for row in page.table("model"):
        assert not row[5]["text"].strip().startswith("—")  # NLL needs no options
        for cell in row[6:]:
            assert cell["text"].strip().startswith("—") and cell["links"] == [link]
    for row in page.table("baseline"):
        assert all(c["text"].strip().startswith("—") and c["links"] == [link] for c in row[2:])
    assert_no_nan_text(out)
    assert_empty_cells_are_explained(out)
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[summary["estimate"].isna(), "note"].notna().all()


def model_nll(trials):
    out: dict[tuple, list[float]] = {}
    for r in trials.itertuples(index=False):
        out.setdefault((r.model, r.format, r.condition), []).append(-r.logprob)
    return out


def test_per_study_dashes_have_footnotes(no_options):
    page = page_of(no_options)
    rows = [t for t in page.tables if t and [c["text"] for c in t[0][:4]] == ["model", "format", "condition", "study"]]
    assert len(rows) == 1 and len(rows[0]) == 1 + 3  # header + one row per condition
    for row in rows[0][1:]:
        for cell in row[7:]:  # option NLL, accuracy, Brier, pseudo-R²
            assert cell["text"].strip().startswith("—")
            assert cell["links"], [c["text"] for c in row]


MIXED = """\
name: mixed
seed: 11
data:
  - format: psych201
    path: s1.jsonl
    options: [A, B]
  - format: psych201
    path: s2.jsonl
    options: none
cohort:
  schema: schema.json
models:
  - name: tiny
    formats: [raw]
conditions: [no_persona]
evaluation:
  baselines: [uniform]
  bootstrap: 200
"""


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two studies in two files; options are declared for s1 (answers A/B) but not s2 (options: none)."""
    patterns = {"s1": CONSISTENT["s1"], "s2": ["AB", "CA", "DD", "AC"]}
    folder = make_experiment(tmp_path_factory.mktemp("mixed"), MIXED, [])
    for exp in patterns:
        recs = records({exp: patterns[exp]})
        (folder / f"{exp}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    out = dry_run(folder)
    write_report(out)
    return out


def test_option_measures_average_over_the_studies_that_have_options(mixed):
    trials = pd.read_parquet(mixed / "trials.parquet")
    assert set(trials.loc[trials["options"].isna(), "experiment"]) == {"s2"}
    assert set(trials.loc[trials["options"].notna(), "experiment"]) == {"s1"}
    rep = build_report(mixed)
    m = rep.metrics
    s1 = [(e, p, v) for e, p, v in model_responses(trials[trials["experiment"] == "s1"])[("tiny", "raw", "no_persona")]]
    everyone = [
        (e, p, {"nll": x}) for e, p, x in zip(trials["experiment"], trials["participant"], -trials["logprob"], strict=True)
    ]
    assert one(m, measure="nll").estimate == pytest.approx(psych201_score(everyone, "nll"), abs=1e-12)
    assert one(m, measure="nll").n == 12
    boot = Resamples(units_of(trials), N_BOOT, SEED)
    for measure in ("option_nll", "accuracy", "brier", "pseudo_r2"):
        r = one(m, measure=measure)
        assert r.estimate == pytest.approx(psych201_score(s1, measure), abs=1e-12), measure
        # s2 contributes nothing to any resample: the series is s1's alone
        s1_boot = Resamples({"s1": units_of(trials)["s1"]}, N_BOOT, SEED)
        assert s1_boot.studies[0][2].tolist() == boot.studies[0][2].tolist()  # s1 is drawn first: same draws
        lo, hi = percentile_ci(s1_boot.series(s1, measure))
        assert (r.ci_low, r.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
        assert r.n == 8
    assert rep.notes[0].startswith("No options are declared for s2: ")


def test_option_measures_over_fewer_studies_say_so(mixed):
    m = build_report(mixed).metrics
    options = m[m["measure"] != "nll"]
    assert options["note"].fillna("").str.startswith("No options are declared for s2").all(), options["note"].tolist()


def test_report_renders_without_a_description(tmp_path):
    """An experiment without the optional description key renders (the template once required it)."""
    yaml = DRY.replace("conditions: [no_persona, persona, shuffled_persona]", "conditions: [no_persona]")
    assert "description" not in yaml
    out = dry_run(make_experiment(tmp_path, yaml, RECORDS))
    write_report(out)
    assert "<h1>toy</h1>" in (out / "report.html").read_text("utf-8")


# --------------------------------------------------------------------------------------------- 6. post-training


def cohens_d(base: list[float], post: list[float]) -> float:
    def mean(x):
        return sum(x) / len(x)

    def var(x):
        m = mean(x)
        return sum((v - m) ** 2 for v in x) / (len(x) - 1)

    return (mean(post) - mean(base)) / math.sqrt((var(base) + var(post)) / 2)


def test_post_training_d_per_study_and_chat_vs_raw(tmp_path):
    out = dry_run(make_experiment(tmp_path, POST, records(CONSISTENT)))
    write_report(out)
    trials = pd.read_parquet(out / "trials.parquet")
    nll: dict[tuple, list[float]] = {}
    for r in trials.itertuples(index=False):
        assert r.condition == "no_persona"
        nll.setdefault((r.model, r.format, r.experiment), []).append(-r.logprob)
    post = build_report(out).post_training
    assert post["comparison"].tolist() == ["post-training"] * 3 + ["chat vs raw"] * 3
    for label, what, before, after in (
        ("post-training", "post (raw) − base (raw)", ("base", "raw"), ("post", "raw")),
        ("chat vs raw", "post (chat) − post (raw)", ("post", "raw"), ("post", "chat")),
    ):
        ds = []
        for exp, responses in (("s1", 32), ("s2", 8)):
            x, y = nll[(*before, exp)], nll[(*after, exp)]
            r = one(post, comparison=label, experiment=exp)
            assert r.model == what and r.measure == "d" and r.n == responses
            assert r.base_nll == pytest.approx(sum(x) / len(x), abs=1e-12)
            assert r.post_nll == pytest.approx(sum(y) / len(y), abs=1e-12)
            assert r.estimate == pytest.approx(cohens_d(x, y), abs=1e-12), (label, exp)
            ds.append(cohens_d(x, y))
        mean = one(post, comparison=label, experiment="mean over studies")
        assert mean.estimate == pytest.approx(sum(ds) / 2, abs=1e-12) and mean.n == 40
    # The mock model does not depend on the model's name: base and post score alike, so d is 0 ...
    assert one(post, comparison="post-training", experiment="mean over studies").estimate == 0.0
    # ... while the chat template changes the text scored, so chat vs raw is not
    assert abs(one(post, comparison="chat vs raw", experiment="mean over studies").estimate) > 0.01

    page = page_of(out)
    tables = [t for t in page.tables if t and [c["text"] for c in t[0][:3]] == ["comparison", "models", "study"]]
    assert len(tables) == 1
    rows = [[c["text"].strip() for c in row] for row in tables[0][1:]]
    assert [r[:3] for r in rows] == [
        ["post-training", "post (raw) − base (raw)", "s1"],
        ["post-training", "post (raw) − base (raw)", "s2"],
        ["post-training", "post (raw) − base (raw)", "mean over studies"],
        ["chat vs raw", "post (chat) − post (raw)", "s1"],
        ["chat vs raw", "post (chat) − post (raw)", "s2"],
        ["chat vs raw", "post (chat) − post (raw)", "mean over studies"],
    ]
    assert rows[4][5] == f"{cohens_d(nll[('post', 'raw', 's2')], nll[('post', 'chat', 's2')]):.2f}"
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary[summary["section"] == "post_training"]) == 6
    assert_no_nan_text(out)


# --------------------------------------------------------------------------------------------- 7. reading errors


def test_report_explains_folders_it_cannot_read(toy, run_cli):
    r = run_cli("report", "nowhere")
    assert r.exit_code == 2
    assert r.stderr == "error: run folder not found: nowhere\n  - expected the folder `psysim run` wrote (its output)\n"

    (toy.folder / "empty").mkdir()
    r = run_cli("report", "empty")
    assert r.exit_code == 2
    assert r.stderr == (
        "error: empty is not a psysim run folder\n"
        "  - expected manifest.json (written by `psysim run` or `psysim simulate`), found none\n"
    )

    inc = toy.folder / "inc"
    (inc / "parts").mkdir(parents=True)
    (inc / "parts" / "000-00000.parquet").write_bytes(b"")
    (inc / "manifest.json").write_text(
        json.dumps({"psysim_run": 2, "status": "running", "config_path": "experiment.yaml", "batches_total": 3}), "utf-8"
    )
    r = run_cli("report", "inc")
    assert r.exit_code == 2
    assert r.stderr == (
        "error: inc holds an incomplete run (1 of 3 batches saved)\n"
        "  - resume it with the same command: psysim run experiment.yaml --out inc\n"
    )
    assert not (inc / "report.html").exists() and not (inc / "summary.csv").exists()

    for args in (("nowhere",), ("empty",), ("inc",)):
        r = run_cli("report", *args)
        assert "Traceback" not in r.stderr and r.stdout == ""
