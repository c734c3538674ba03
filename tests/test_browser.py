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
