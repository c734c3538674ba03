"""Every command works the second time too: run twice on the same folder, and once after a failure.

A newcomer repeats commands (a notebook cell, a Makefile, "rerun it a month
later"): the second call must give the same files and say what it did, never
a traceback; a failure must leave nothing that blocks the fixed command.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from test_simulate import gambles  # noqa: F401 (a fixture)


def digests(folder: Path, names) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def twice(run_cli, *args):
    """Run a command twice; both succeed; return both results."""
    first, second = run_cli(*args), run_cli(*args)
    assert first.exit_code == 0, first.stderr
    assert second.exit_code == 0, second.stderr
    assert "Traceback" not in first.stderr + second.stderr
    return first, second


def test_every_command_twice_on_the_same_folder(gambles, run_cli):  # noqa: F811
    one, two = twice(run_cli, "validate", "experiment.yaml")
    assert one.stdout == two.stdout

    twice(run_cli, "run", "experiment.yaml", "--dry-run", "-q", "--out", "run")
    scored = ["trials.parquet", "participants.parquet", "baselines.parquet"]
    before = digests(gambles / "run", scored)
    _, again = twice(run_cli, "run", "experiment.yaml", "--dry-run", "-q", "--out", "run")
    assert "already complete: nothing recomputed" in again.stdout
    assert digests(gambles / "run", scored) == before

    one, two = twice(run_cli, "report", "run")
    assert one.stdout == two.stdout
    first = (gambles / "run" / "summary.csv").read_bytes()
    run_cli("report", "run")
    assert (gambles / "run" / "summary.csv").read_bytes() == first

    twice(run_cli, "simulate", "experiment.yaml", "--dry-run", "-q", "--out", "sim")
    simulated = ["simulated.parquet", "transcripts.parquet", "participants.parquet", "humans.parquet"]
    before = digests(gambles / "sim", simulated)
    _, again = twice(run_cli, "simulate", "experiment.yaml", "--dry-run", "-q", "--out", "sim")
    assert "already complete: nothing recomputed" in again.stdout
    assert digests(gambles / "sim", simulated) == before
    one, two = twice(run_cli, "report", "sim")
    assert one.stdout == two.stdout

    for args in (["csv"], ["parquet"], ["psych201"], ["csv", "--layout", "wide"], ["stata"]):
        one, two = twice(run_cli, "export", "sim", "--format", *args)
        assert one.stdout == two.stdout
        files = [Path(line.split(" ", 1)[1]).name for line in one.stdout.splitlines()]
        assert digests(gambles / "sim" / "export", files)  # every file it names exists
    dictionary = (gambles / "sim" / "export" / "data_dictionary.csv").read_text("utf-8")
    run_cli("export", "sim", "--format", "csv")
    assert (gambles / "sim" / "export" / "data_dictionary.csv").read_text("utf-8") == dictionary  # stable, not growing


def test_each_command_after_a_failure(gambles, run_cli):  # noqa: F811
    """A broken template fails located (exit 2); fixed, the same commands succeed on the same folders."""
    good = (gambles / "feedback.jinja").read_text("utf-8")
    (gambles / "feedback.jinja").write_text(" You win {{ row['payoff_' ~ response }} points.", encoding="utf-8")
    for args in (
        ["validate", "experiment.yaml"],
        ["run", "experiment.yaml", "--dry-run", "-q", "--out", "run"],
        ["simulate", "experiment.yaml", "--dry-run", "-q", "--out", "sim"],
    ):
        r = run_cli(*args)
        assert r.exit_code == 2 and "feedback.jinja" in r.stderr and "Traceback" not in r.stderr, args
    r = run_cli("report", "run")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    (gambles / "feedback.jinja").write_text(good, encoding="utf-8")
    for args in (
        ["validate", "experiment.yaml"],
        ["run", "experiment.yaml", "--dry-run", "-q", "--out", "run"],
        ["report", "run"],
        ["simulate", "experiment.yaml", "--dry-run", "-q", "--out", "sim"],
        ["report", "sim"],
        ["export", "sim", "--format", "csv", "--layout", "wide"],
    ):
        r = run_cli(*args)
        assert r.exit_code == 0, (args, r.stderr)


def test_report_on_a_fine_tuning_folder_says_what_to_do(tmp_path, run_cli):
    """psysim report on what psysim finetune wrote: what the folder is, and the next step (not 'no manifest')."""
    folder = tmp_path / "tuned"
    (folder / "adapter").mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"status": "complete"}), encoding="utf-8")
    (folder / "split.json").write_text(json.dumps({"train": [], "validation": [], "test": []}), encoding="utf-8")
    r = run_cli("report", str(folder))
    assert r.exit_code == 2
    assert "is a fine-tuning folder (psysim finetune), not a run folder" in r.stderr
    assert "cohort.split: {file: " in r.stderr and "part: test}" in r.stderr
