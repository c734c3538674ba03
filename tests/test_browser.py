"""The HTML report in a real browser: headless Chromium renders it, offline, into a non-blank page.

`psysim report` promises one self-contained page that any browser opens with
no network. This test renders a dry run's report with Chromium (installed by
.ci/run where the system allows; skipped where absent), takes a screenshot and
checks that it shows content, and reads back the DOM Chromium built to check
that the tables and inline SVG plots survived parsing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from test_run import DRY

pytestmark = pytest.mark.browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium here (.ci/run installs it with apt where it can)")


def headless(*args: str, cwd) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions"]
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    env = {**os.environ, "HOME": str(cwd)}  # a private profile folder, nothing shared with the user's browser
    return subprocess.run([chromium(), *flags, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_report_renders_in_headless_chromium(toy, run_cli):
    import matplotlib.image
    import numpy as np

    toy.write_yaml(DRY)
    assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out").exit_code == 0
    assert run_cli("report", "out").exit_code == 0
    page = (toy.folder / "out" / "report.html").resolve()
    text = page.read_text("utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing to fetch: no remote src or href
    assert "<script" not in text

    shot = toy.folder / "report.png"
    r = headless("--window-size=1200,3000", f"--screenshot={shot}", page.as_uri(), cwd=toy.folder)
    assert shot.exists(), r.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1200)
    gray = pixels[..., :3].mean(axis=2)
    assert (gray < 0.5).mean() > 0.005, "the page is (nearly) blank"  # text and plot marks are dark
    assert np.unique(gray.round(2)).size > 20  # not a flat error page: text, rules, shaded bands, plots

    dom = headless("--dump-dom", page.as_uri(), cwd=toy.folder).stdout
    assert "What the numbers show" in dom and "Provenance" in dom
    assert dom.count("<svg") >= 2  # Figure 1 (conditions) and Figure 2 (persona benefit)
    assert dom.count("<table") >= 4
    assert "smollm2" not in dom and "tiny" in dom  # the toy's own model name, escaped and rendered


BOXES = """<!doctype html><html><body style="margin:0">{svg}<script>
const boxes = [...document.querySelectorAll("svg text")].filter(t => t.textContent.trim()).map(t => {{
  const r = t.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom, t.textContent];
}});
document.body.setAttribute("data-boxes", JSON.stringify(boxes));
</script></body></html>"""


def text_boxes(svg_file, cwd) -> list[tuple[float, float, float, float, str]]:
    """Every text's bounding box in an SVG figure, as Chromium lays it out."""
    import html
    import json

    page = cwd / (svg_file.stem + ".html")
    page.write_text(BOXES.format(svg=svg_file.read_text("utf-8")), encoding="utf-8")
    dom = headless("--virtual-time-budget=3000", "--dump-dom", page.resolve().as_uri(), cwd=cwd).stdout
    match = re.search(r'data-boxes="([^"]*)"', dom)
    assert match, dom[-2000:]
    return [tuple(b) for b in json.loads(html.unescape(match.group(1)))]


def overlaps(boxes) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap by more than a sliver (a tenth of the smaller one)."""
    out = []
    for i, (l1, t1, r1, b1, s1) in enumerate(boxes):
        for l2, t2, r2, b2, s2 in boxes[i + 1 :]:
            w, h = min(r1, r2) - max(l1, l2), min(b1, b2) - max(t1, t2)
            if w > 0 and h > 0:
                smaller = min((r1 - l1) * (b1 - t1), (r2 - l2) * (b2 - t2))
                if w * h > 0.1 * smaller:
                    out.append((s1, s2))
    return out


def test_figure_labels_never_overlap_and_figures_are_written_for_papers(toy, run_cli):
    """Every figure of a scoring and a simulation report: SVG and PNG beside the page, no text over another text."""
    from test_simulate import FEEDBACK, INSTRUCTIONS, SCHEMA, TRIAL, TRIALS, YAML
    from test_trials import COHORT

    toy.write_yaml(DRY)
    assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out").exit_code == 0
    assert run_cli("report", "out").exit_code == 0
    for name, text in {
        "sim.yaml": YAML,
        "trials.csv": TRIALS,
        "cohort.csv": COHORT,
        "sim-schema.json": __import__("json").dumps(SCHEMA),
        "instructions.jinja": INSTRUCTIONS,
        "trial.jinja": TRIAL,
        "feedback.jinja": FEEDBACK,
    }.items():
        (toy.folder / name).write_text(text.replace("schema: schema.json", "schema: sim-schema.json"), encoding="utf-8")
    r = run_cli("simulate", "sim.yaml", "--dry-run", "-q", "--out", "sim")
    assert r.exit_code == 0, r.stderr
    assert run_cli("report", "sim").exit_code == 0
    figures = sorted((toy.folder / "out" / "figures").glob("*.svg")) + sorted((toy.folder / "sim" / "figures").glob("*.svg"))
    names = [f.stem for f in figures]
    assert names[:3] == ["figure-1-scores", "figure-2-comparisons", "figure-3-persona-benefit"] and "figure-1-items" in names
    for svg in figures:
        assert svg.with_suffix(".png").stat().st_size > 1000
        boxes = text_boxes(svg, toy.folder)
        assert len(boxes) > 5, svg.name
        assert not overlaps(boxes), (svg.name, overlaps(boxes))
