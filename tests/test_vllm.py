"""backend: vllm with the real vLLM engine (CPU build), in its own virtual environment, against hf.

vLLM pins its own torch and transformers, so it lives in ``.venv-vllm`` (``make
vllm-env``, which `.ci/run` runs; or ``PSYSIM_VLLM_PYTHON``) with psysim
installed beside it; these tests drive that environment's psysim in a
subprocess and compare with hf here. Slow: each engine start takes 15-60 s on
2 CPU cores. They skip where the environment was not made.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from test_default_model import folder  # noqa: F401 (the pulled default model, a fixture)
from test_simulate import gambles  # noqa: F401 (a structured task, a fixture)

import psysim
from psysim.run import run_experiment

pytestmark = pytest.mark.slow

PYTHON = Path(os.environ.get("PSYSIM_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
if not PYTHON.is_file():
    pytest.skip(f"no vLLM environment at {PYTHON}: `make vllm-env` makes one", allow_module_level=True)

# float32: the gate's bound (psysim.backends.parity.TOLERANCE); measured here: 5.3e-05 on the quickstart.
TOLERANCE = 1e-3


def vllm_psysim(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``psysim ARGS`` in the vLLM environment (same model cache as this process)."""
    r = subprocess.run([str(PYTHON), "-m", "psysim", *args], cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_parity_gate_passes_on_the_quickstart(folder):  # noqa: F811
    assert vllm_psysim("validate", "experiments/quickstart_vllm.yaml").stdout.startswith("ok: ")
    r = vllm_psysim("models", "check", "experiments/quickstart_vllm.yaml", "--limit", "2")
    head = r.stdout.splitlines()[0]
    assert head.startswith("smollm2-135m-instruct: vllm vs hf (float32) on 54 responses"), r.stdout
    assert head.endswith(": ok")
    assert float(re.search(r"largest difference (\S+) nats", head).group(1)) < TOLERANCE
    assert r.stderr.strip() == ""  # the engine's start-up chatter stays out of the user's terminal


def test_vllm_run_equals_hf_run_of_the_quickstart(folder, tmp_path):  # noqa: F811
    vllm_psysim("run", "experiments/quickstart_vllm.yaml", "--limit", "2", "-q", "--out", str(tmp_path / "vllm"))
    got = pd.read_parquet(tmp_path / "vllm" / "trials.parquet")
    want = run_experiment(
        psysim.load_experiment(REPO / "experiments" / "quickstart.yaml"), out=tmp_path / "hf", limit=2, progress=False
    ).trials
    keys = ["condition", "participant", "trial", "response", "n_tokens", "persona_of", "predicted"]
    pd.testing.assert_frame_equal(got[keys], want[keys])
    assert np.abs(got["logprob"] - want["logprob"]).max() < TOLERANCE
    diff = np.abs(np.concatenate(got["option_logprobs"].to_list()) - np.concatenate(want["option_logprobs"].to_list()))
    assert diff.max() < TOLERANCE
    identity = json.loads((tmp_path / "vllm" / "manifest.json").read_text())["models"]["smollm2-135m-instruct"]
    assert identity["backend"] == "vllm" and identity["vllm"]


def test_vllm_closed_loop_simulation_equals_hf(folder, gambles, tmp_path, run_cli):  # noqa: F811
    """Closed loop through the engine's next-token log-probabilities: the same probabilities and the same draws."""
    text = (gambles / "experiment.yaml").read_text()
    text = re.sub(r"  - name: tiny\n    source: tiny-model\n", "  - name: smollm2-135m-instruct\n", text)
    (gambles / "experiment.yaml").write_text(text)
    r = run_cli("simulate", "experiment.yaml", "-q", "--n", "2", "--out", "hf")
    assert r.exit_code == 0, r.stderr
    (gambles / "vllm.yaml").write_text(
        text.replace("  - name: smollm2-135m-instruct\n", "  - name: smollm2-135m-instruct\n    backend: vllm\n")
    )
    vllm_psysim("simulate", "vllm.yaml", "-q", "--n", "2", "--out", "vllm", cwd=gambles)
    want, got = (pd.read_parquet(gambles / out / "simulated.parquet") for out in ("hf", "vllm"))
    assert got["response"].tolist() == want["response"].tolist()
    diff = np.abs(np.concatenate(got["option_probs"].to_list()) - np.concatenate(want["option_probs"].to_list()))
    assert diff.max() < TOLERANCE


def test_an_adapter_is_merged_once_and_scores_as_hf_applies_it(folder, tmp_path):  # noqa: F811
    """vLLM on CPU cannot apply a LoRA to prompt log-probabilities: psysim merges it into a cached folder."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder)
    # init_lora_weights=False: random A and B, so that the adapter changes every number (peft's default B = 0 would not).
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    text = (REPO / "experiments" / "quickstart_vllm.yaml").read_text()
    text = text.replace("../participants", str(REPO / "participants")).replace("../runs/quickstart_vllm", str(tmp_path / "o"))
    text = text.replace("    backend: vllm\n", f"    backend: vllm\n    adapter: {tmp_path / 'adapter'}\n")
    text = text.replace("  - persona\n  - shuffled_persona\n", "")
    (tmp_path / "vllm.yaml").write_text(text)
    (tmp_path / "hf.yaml").write_text(
        text.replace("    backend: vllm\n", "").replace("    vllm: {kv_cache_gb: 1, max_model_len: 4096}", "")
    )
    try:
        vllm_psysim("run", str(tmp_path / "vllm.yaml"), "--limit", "2", "-q", "--out", str(tmp_path / "vllm"))
        identity = json.loads((tmp_path / "vllm" / "manifest.json").read_text())["models"]["smollm2-135m-instruct"]
        merged = Path(identity["adapter"]["merged_into"])
        assert (merged / "psysim-merged.json").is_file()
        # Asked again (as the next run's backend asks, without starting an engine): the same folder, not merged again.
        stamp = (merged / "psysim-merged.json").stat().st_mtime_ns
        ask = (
            "import sys; from pathlib import Path; from psysim.backends.vllm import merged_model; from psysim.registry import "
            "resolve; print(merged_model(resolve('smollm2-135m-instruct'), Path(sys.argv[1]), 'm')[0])"
        )
        again = subprocess.run([str(PYTHON), "-c", ask, str(tmp_path / "adapter")], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert Path(again.stdout.strip()) == merged and (merged / "psysim-merged.json").stat().st_mtime_ns == stamp
        got = pd.read_parquet(tmp_path / "vllm" / "trials.parquet")
        want = run_experiment(psysim.load_experiment(tmp_path / "hf.yaml"), out=tmp_path / "hf", limit=2, progress=False).trials
        base_run = run_experiment(
            psysim.load_experiment(REPO / "experiments" / "quickstart.yaml"), out=tmp_path / "base", limit=2, progress=False
        ).trials
        base_run = base_run[base_run["condition"] == "no_persona"].reset_index(drop=True)
        assert np.abs(got["logprob"] - want["logprob"]).max() < TOLERANCE
        assert np.abs(want["logprob"] - base_run["logprob"]).max() > 0.01  # the adapter does change the numbers
    finally:
        if "merged" in locals():
            shutil.rmtree(merged, ignore_errors=True)
