"""psysim run --engine ray: real Ray on this machine, on loopback only; tables equal a single-process run's.

Each test starts its own Ray (a private instance, or a two-node ``cluster_utils.Cluster``) and stops it; a
check after each asserts that no Ray process is left and that nothing psysim started listened on any address but
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Ray reads this when it is imported: its local-only mode binds every server to 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

import pandas as pd  # noqa: E402
from conftest import REPO  # noqa: E402
from test_simulate import gambles  # noqa: E402, F401 (a structured task, a fixture)

import psysim  # noqa: E402
from psysim.run import run_experiment  # noqa: E402

QUICKSTART = (REPO / "experiments" / "quickstart.yaml").read_text("utf-8")


def experiment(tmp_path: Path, model: str, save_every: int = 2) -> Path:
    """The quickstart (shipped data) with ``model`` as its models: list and small batches, written into tmp_path."""
    text = QUICKSTART.replace("../participants", str(REPO / "participants")).replace("../runs/quickstart", str(tmp_path / "out"))
    head, rest = text.split("models:\n", 1)
    rest = rest[rest.index("conditions:") :]
    path = tmp_path / "exp.yaml"
    path.write_text(f"{head}models:\n{model}\n{rest}\nscoring:\n  save_every: {save_every}\n", "utf-8")
    return path


def tiny_model(tmp_path: Path, hf) -> str:
    """A tiny random Llama saved as a folder; the models: entry that names it."""
    folder = tmp_path / "tiny"
    tok = hf.tokenizer()
    hf.model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return f"  - name: tiny\n    source: {folder}\n"


def listeners() -> list[str]:
    """TCP listeners of Ray's processes on an address other than loopback (``ss``; [] where it is missing)."""
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    loopback = ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")
    return [
        line
        for line in out.splitlines()
        if ("ray" in line or "gcs_server" in line or "raylet" in line) and line.split()[3].rpartition(":")[0] not in loopback
    ]


@pytest.fixture(autouse=True)
def stopped_afterwards():
    yield
    assert not ray.is_initialized()
    deadline = time.time() + 20
    while time.time() < deadline and subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True).returncode == 0:
        time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True).returncode != 0, "Ray processes left"


def test_ray_tables_equal_a_single_process_run_exactly(tmp_path, hf, monkeypatch):
    """Two workers, one thread each, against one process at one thread: the same float32 numbers, bit for bit."""
    monkeypatch.setenv("PSYSIM_THREADS", "1")
    exp = psysim.load_experiment(experiment(tmp_path, tiny_model(tmp_path, hf)))
    local = run_experiment(exp, out=tmp_path / "local", limit=6, progress=False)
    distributed = run_experiment(exp, out=tmp_path / "ray", limit=6, progress=False, engine="ray", workers=2)
    pd.testing.assert_frame_equal(local.trials, distributed.trials)
    for table in ("participants.parquet", "baselines.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local" / table), pd.read_parquet(tmp_path / "ray" / table))
    assert distributed.manifest["sessions"][-1]["engine"] == {"engine": "ray", "address": "local", "workers": 2, "threads": 1}
    assert distributed.manifest["fingerprint"] == local.manifest["fingerprint"]  # where it ran does not change numbers


def test_private_ray_listens_on_loopback_only(tmp_path):
    from psysim.distributed import ray_engine

    with ray_engine(workers=2) as engine:
        assert ray.is_initialized()
        assert engine.describe()["address"] == "local"
        assert listeners() == []


@pytest.mark.slow
def test_two_node_cluster_gives_the_same_tables(tmp_path):
    from ray.cluster_utils import Cluster

    exp = psysim.load_experiment(experiment(tmp_path, "  - name: tiny\n    backend: mock\n"))
    local = run_experiment(exp, out=tmp_path / "local", limit=8, progress=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert listeners() == []
        result = run_experiment(exp, out=tmp_path / "ray", limit=8, progress=False, engine="ray", address=cluster.address)
    finally:
        cluster.shutdown()
    pd.testing.assert_frame_equal(local.trials, result.trials)
    assert result.manifest["sessions"][-1]["engine"]["workers"] is None  # one per CPU of the cluster: two


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_batch_retried(tmp_path, hf):
    """kill -9 a worker mid-run: Ray restarts it and reruns its batch; the tables equal a single-process run's."""
    path = experiment(tmp_path, tiny_model(tmp_path, hf), save_every=1)
    env = {**os.environ, "PSYSIM_THREADS": "1"}
    args = [sys.executable, "-m", "psysim", "run", str(path), "--limit", "10", "-q"]
    subprocess.run([*args, "--out", str(tmp_path / "local")], check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(
        [*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and proc.poll() is None:
            parts = tmp_path / "ray" / "parts"
            saved = list(parts.rglob("*.parquet")) if parts.exists() else []
            workers = subprocess.run(["pgrep", "-f", "ray::BatchWorker"], capture_output=True, text=True).stdout.split()
            if saved and workers:
                killed = int(workers[0])
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no worker was seen while the run was going"
    assert proc.returncode == 0, err
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "local" / "trials.parquet"), pd.read_parquet(tmp_path / "ray" / "trials.parquet")
    )


def test_unreachable_address_fails_within_seconds(tmp_path, run_cli):
    path = experiment(tmp_path, "  - name: tiny\n    backend: mock\n")
    started = time.monotonic()
    r = run_cli("run", str(path), "--dry-run", "--limit", "2", "--engine", "ray", "--address", "127.0.0.1:9", "-q")
    assert r.exit_code == 2
    assert time.monotonic() - started < 15
    assert "cannot reach a Ray head at 127.0.0.1:9" in r.stderr
    r = run_cli("run", str(path), "--dry-run", "--engine", "ray", "--address", "nowhere", "-q")
    assert r.exit_code == 2 and "expected host:port" in r.stderr
    r = run_cli("run", str(path), "--dry-run", "--address", "127.0.0.1:9", "-q")
    assert r.exit_code == 2 and "--address and --workers go with --engine ray" in r.stderr


def test_ray_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    from psysim.distributed import ray_engine
    from psysim.errors import PsysimError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(PsysimError, match=r"needs Ray, which is not installed here: pip install 'psysim\[ray\]'"):
        with ray_engine():
            pass


def test_simulate_on_ray_equals_one_process(gambles, hf, monkeypatch, run_cli):  # noqa: F811
    """The closed loop on two Ray workers: the same probabilities and the same draws as one process."""
    from test_run import save_tiny

    monkeypatch.setenv("PSYSIM_THREADS", "1")
    save_tiny(gambles / "tiny-model", hf)
    text = (gambles / "experiment.yaml").read_text()
    (gambles / "experiment.yaml").write_text(text + "scoring:\n  save_every: 1\n")
    for args in (("--out", "local"), ("--out", "ray", "--engine", "ray", "--workers", "2")):
        r = run_cli("simulate", "experiment.yaml", "-q", *args)
        assert r.exit_code == 0, r.stderr
    for table in ("simulated", "transcripts", "participants"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(gambles / "local" / f"{table}.parquet"), pd.read_parquet(gambles / "ray" / f"{table}.parquet")
        )
    manifest = json.loads((gambles / "ray" / "manifest.json").read_text())
    assert manifest["sessions"][-1]["engine"]["workers"] == 2
