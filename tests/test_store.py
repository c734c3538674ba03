"""The run store: saved batches, resuming after kill -9 and Ctrl-C, refusing to mix runs, reading runs back.

The central test kills a real scoring process (a tiny random-weight Llama,
the hf backend) with SIGKILL after two of its three batches, resumes it with
the same call, and compares every final table with an uninterrupted run's:
they must be equal exactly, and the resumed session must score only the
batch that was lost.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from test_run import DRY, error_of, hf_experiment, save_tiny

from psysim.backends.mock import MockBackend
from psysim.store import FORMAT, open_run

TABLES = ("trials", "participants", "baselines")
SAVE_EVERY_1 = "scoring:\n  save_every: 1\n"


def read(folder, name):
    return pd.read_parquet(folder / f"{name}.parquet")


class Counting:
    """Wraps a backend and records the participants of every score() call."""

    def __init__(self, backend):
        self.backend = backend
        self.calls: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def score(self, requests, progress=None):
        self.calls.append([r.key for r in requests])
        return self.backend.score(requests, progress)


KILLER = textwrap.dedent(
    """
    import os, signal
    from psysim.backends import get_backend
    from psysim.experiment import load_experiment
    from psysim.run import run_experiment

    exp = load_experiment("experiment.yaml")
    real = get_backend(exp.config.models[0], exp.config.folder)
    calls = 0

    class Dying:
        def __getattr__(self, name):
            return getattr(real, name)

        def score(self, requests, progress=None):
            global calls
            calls += 1
            if calls == 3:  # two batches are saved; die like a power cut, no cleanup of any kind
                os.kill(os.getpid(), signal.SIGKILL)
            return real.score(requests, progress)

    run_experiment(exp, out="killed", progress=False, backends={"tiny": Dying()})
    """
)


def test_kill_9_midway_then_resume_equals_an_uninterrupted_run(toy, hf):
    """SIGKILL after 2 of 3 batches; the same call resumes, scores only the lost batch, and every table is identical."""
    from psysim.backends import get_backend
    from psysim.experiment import load_experiment
    from psysim.run import run_experiment

    save_tiny(toy.folder / "tiny-model", hf)
    hf_experiment(toy, extra=SAVE_EVERY_1)
    (toy.folder / "killer.py").write_text(KILLER, encoding="utf-8")
    proc = subprocess.run([sys.executable, "killer.py"], cwd=toy.folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = toy.folder / "killed"
    assert sorted(p.name for p in (killed / "parts").iterdir()) == ["000-00000.parquet", "000-00001.parquet"]
    assert not (killed / "trials.parquet").exists()
    with pytest.raises(Exception, match=r"incomplete run \(2 of 3 batches saved\)"):
        open_run(killed)

    exp = load_experiment(toy.yaml)
    backend = Counting(get_backend(exp.config.models[0], exp.config.folder))
    resumed = run_experiment(exp, out=killed, progress=False, backends={"tiny": backend})
    assert resumed.resumed
    assert [sorted({k.split()[1] for k in call}) for call in backend.calls] == [["p3"]]  # only the lost batch
    assert len(backend.calls[0]) == 2 * 3  # its formats × conditions

    fresh = run_experiment(exp, out=toy.folder / "fresh", progress=False, backends={"tiny": backend.backend})
    assert not fresh.resumed
    for name in TABLES:
        assert_frame_equal(read(killed, name), read(toy.folder / "fresh", name), check_exact=True)
    assert len(read(killed, "trials")) == 2 * 3 * 3 * 2
    manifest = json.loads((killed / "manifest.json").read_text("utf-8"))
    assert manifest["status"] == "complete" and manifest["psysim_run"] == FORMAT
    assert [s["resumed_batches"] for s in manifest["sessions"]] == [0, 2]
    assert manifest["sessions"][0]["seconds"] is None  # the killed session never got to record its end


def test_ctrl_c_keeps_saved_batches_and_the_same_command_resumes(toy, run_cli, monkeypatch):
    """KeyboardInterrupt in the second batch: exit 130 with a resume hint; rerunning completes with equal numbers."""
    toy.write_yaml(DRY + SAVE_EVERY_1)
    real_score = MockBackend.score
    calls = []

    def interrupted(self, requests, progress=None):
        calls.append(len(requests))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(self, requests, progress)

    monkeypatch.setattr(MockBackend, "score", interrupted)
    r = run_cli("run", "experiment.yaml", "--dry-run", "--quiet", "--out", "out")
    assert r.exit_code == 130
    assert "interrupted: every scored batch is saved in out; run the same command again to resume" in r.stderr
    assert [p.name for p in (toy.folder / "out" / "parts").iterdir()] == ["000-00000.parquet"]

    calls.clear()
    monkeypatch.setattr(
        MockBackend, "score", lambda self, requests, progress=None: calls.append(1) or real_score(self, requests, progress)
    )
    r = run_cli("run", "experiment.yaml", "--dry-run", "--quiet", "--out", "out")
    assert r.exit_code == 0, r.stderr
    assert "resumed: 1 saved batches reused" in r.stdout.splitlines()[0]
    assert len(calls) == 2
    r = run_cli("run", "experiment.yaml", "--dry-run", "--quiet", "--out", "fresh")
    for name in TABLES:
        assert_frame_equal(read(toy.folder / "out", name), read(toy.folder / "fresh", name), check_exact=True)


def test_a_complete_run_is_not_recomputed(toy, run_cli, monkeypatch):
    """Running the same config into a complete folder reads it back; --restart rescores everything."""
    toy.write_yaml(DRY)
    assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out").exit_code == 0
    real_score = MockBackend.score
    calls = []
    monkeypatch.setattr(MockBackend, "score", lambda self, req, progress=None: calls.append(1) or real_score(self, req, progress))
    first = json.loads((toy.folder / "out" / "manifest.json").read_text("utf-8"))
    r = run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out")
    assert r.exit_code == 0, r.stderr
    assert "already complete: nothing recomputed (--restart rescores)" in r.stdout.splitlines()[0]
    assert calls == []
    # The rerun keeps what the finished run recorded (run time, sessions, when it finished): the report still works.
    again = json.loads((toy.folder / "out" / "manifest.json").read_text("utf-8"))
    assert {k: again.get(k) for k in ("seconds", "sessions", "finished", "started", "models", "status")} == {
        k: first.get(k) for k in ("seconds", "sessions", "finished", "started", "models", "status")
    }
    assert run_cli("report", "out").exit_code == 0
    r = run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out", "--restart")
    assert r.exit_code == 0, r.stderr
    assert calls == [1] and "already complete" not in r.stdout


def test_same_config_twice_gives_identical_tables(toy, run_cli):
    """Two fresh runs of one config: every table equal exactly (baselines' k folds are seeded too)."""
    toy.write_yaml(DRY + "evaluation:\n  cross_validation: 2\n")
    for out in ("a", "b"):
        assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", out).exit_code == 0
    for name in TABLES:
        assert_frame_equal(read(toy.folder / "a", name), read(toy.folder / "b", name), check_exact=True)


def _edit_data(toy):
    path = toy.folder / "data.jsonl"
    path.write_text(path.read_text("utf-8").replace("<<A>>. Again", "<<B>>. Again", 1), "utf-8")


@pytest.mark.parametrize(
    ("yaml", "edit", "named"),
    [
        (DRY.replace("seed: 7", "seed: 8"), None, "changed since that run: seed"),
        (DRY.replace("[no_persona, persona, shuffled_persona]", "[no_persona]"), None, "changed since that run: conditions"),
        (DRY, _edit_data, "changed since that run: the contents of data.path"),
    ],
    ids=["seed", "conditions", "data-file"],
)
def test_a_changed_config_is_never_mixed_into_a_saved_run(toy, run_cli, yaml, edit, named):
    """A saved run, then a change to the config or a data file: refuse, saying what changed; --restart starts over."""
    toy.write_yaml(DRY)
    assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out").exit_code == 0
    toy.write_yaml(yaml)
    if edit:
        edit(toy)
    r = run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out")
    assert r.exit_code == 2
    message = error_of(r.stderr)
    assert message.startswith(
        "error: the results folder out holds a run of a different configuration; psysim never mixes two runs in one folder"
    )
    assert named in message
    assert "choose another folder with --out, or rerun with --restart to discard the saved run" in message
    r = run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out", "--restart")
    assert r.exit_code == 0, r.stderr


def test_limit_is_part_of_the_run(toy, run_cli):
    """--limit changes which participants a run holds: resuming with another limit is refused."""
    toy.write_yaml(DRY)
    assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out", "--limit", "2").exit_code == 0
    r = run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out")
    assert r.exit_code == 2 and "changed since that run: --limit" in r.stderr


def test_other_model_weights_are_refused_on_resume(toy, hf, monkeypatch):
    """Saved batches scored with one set of weights are not completed with another."""
    from psysim.errors import PsysimError
    from psysim.experiment import load_experiment
    from psysim.run import run_experiment

    save_tiny(toy.folder / "tiny-model", hf)
    hf_experiment(toy, extra=SAVE_EVERY_1)
    exp = load_experiment(toy.yaml)
    calls = []

    def interrupt(self, requests, progress=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return MockBackend.score(self, requests, progress)

    class First(MockBackend):
        score = interrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, out="out", progress=False, backends={"tiny": First("tiny")})

    class Other(MockBackend):
        def identity(self):
            return {**super().identity(), "sha256": "0" * 64}

    with pytest.raises(PsysimError) as info:
        run_experiment(exp, out="out", progress=False, backends={"tiny": Other("tiny")})
    text = str(info.value)
    assert "model 'tiny' is not the model the saved batches of out were scored with" in text
    assert "changed: sha256" in text


def test_open_run_explains_what_it_cannot_read(toy, run_cli, tmp_path):
    """report's reader: missing folder, no manifest, an older format, a complete folder missing a table."""
    with pytest.raises(Exception, match="run folder not found: nowhere"):
        open_run("nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match=r"empty is not a psysim run folder") as info:
        open_run("empty")
    assert "expected manifest.json (written by `psysim run` or `psysim simulate`), found none" in str(info.value)
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"psysim_run": 1}), "utf-8")
    with pytest.raises(Exception, match=r"old was written by an older psysim \(run format 1; this psysim reads format 2\)"):
        open_run("old")
    toy.write_yaml(DRY)
    assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out").exit_code == 0
    assert open_run("out").trials.shape[0] == 36
    (toy.folder / "out" / "baselines.parquet").unlink()
    with pytest.raises(Exception, match=r"out is marked complete but lacks baselines\.parquet"):
        open_run("out")


def test_participants_table_is_the_per_participant_mean_beside_the_profile(toy, run_cli):
    """participants.parquet: participant_metrics of the trials, persona_of, and typed profile columns."""
    from psysim.metrics import participant_metrics

    toy.write_yaml(DRY)
    assert run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out").exit_code == 0
    parts = read(toy.folder / "out", "participants")
    expected = participant_metrics(read(toy.folder / "out", "trials"))
    assert_frame_equal(parts[expected.columns], expected)
    assert parts["profile.age"].isna().tolist()[:3] == [False, True, False]  # p2's age is N/A in the data
    assert parts["profile.age"].tolist()[0] == 31.0
    first = parts[(parts["format"] == "raw") & (parts["condition"] == "no_persona")]
    assert first["profile.gender"].tolist() == ["Female", "Male", "Male"]
    assert first["persona_of"].isna().all()
    own = parts[(parts["format"] == "raw") & (parts["condition"] == "persona")]
    assert own["persona_of"].tolist() == own["participant"].tolist()


def test_folds_larger_than_the_cohort_are_refused_before_scoring(toy, run_cli):
    toy.write_yaml(DRY + "evaluation:\n  cross_validation: 5\n")
    r = run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out")
    assert r.exit_code == 2
    assert "error: cannot make 5 folds of 3 participants" in r.stderr
    assert (
        "experiment.yaml:15:21: evaluation.cross_validation: expected at most 3 folds (one participant each), found 5" in r.stderr
    )
    assert not (toy.folder / "out" / "manifest.json").exists()


def test_a_run_that_failed_before_saving_anything_does_not_block_the_next(toy, run_cli):
    """A model that is not there: exit 2, nothing scored; the fixed experiment then runs in the same folder."""
    toy.write_yaml(DRY.replace("  - name: tiny\n", "  - name: tiny\n    source: no-such-model\n"))
    r = run_cli("run", "experiment.yaml", "-q", "--out", "out")
    assert r.exit_code == 2 and "unknown model 'no-such-model'" in r.stderr
    assert json.loads((toy.folder / "out" / "manifest.json").read_text("utf-8"))["status"] == "running"
    toy.write_yaml(DRY)
    r = run_cli("run", "experiment.yaml", "--dry-run", "-q", "--out", "out")
    assert r.exit_code == 0, r.stderr
    assert json.loads((toy.folder / "out" / "manifest.json").read_text("utf-8"))["status"] == "complete"
