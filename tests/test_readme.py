"""The README's Python API blocks run as written, from the repository's root, and say what they print.

The blocks are read from README.md itself (not copied here), so an edit that breaks them fails this test.
They use the default model (slow; skipped where it is not pulled) and, for the simulation, ../shared/data.
Outputs go to a temporary folder: the blocks' relative ``runs/...`` paths are taken from the working folder,
while experiment files are found through links to the repository's folders.
"""

from __future__ import annotations

import re

import pytest
from conftest import REPO, needs_shared_data

pytestmark = pytest.mark.slow


def python_blocks() -> list[str]:
    """The Python code blocks of the README's "Python API" section, in order."""
    text = (REPO / "README.md").read_text("utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_api_blocks_run_as_written(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from psysim import models

    if models.pulled_path("smollm2-135m-instruct") is None:
        pytest.skip("the default model is not pulled (psysim models pull smollm2-135m-instruct)")
    needs_shared_data("self_regulation_ontology")
    blocks = python_blocks()
    assert len(blocks) == 3 and "finetune_experiment" in blocks[2]  # the third (fine-tuning) is documented, not run
    for name in ("experiments", "participants", "prompts"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md (Python API, first block)", "exec"), namespace)
    exp, trials, prompt = namespace["exp"], namespace["trials"], namespace["prompt"]
    # What the comments in the block say.
    assert prompt.persona_of == "294"
    first = exp.transcript("108").responses[0]
    assert (first.text, first.options, first.roles, first.item) == ("U", ("U", "F"), ("three", "seven"), "trial 1")
    assert exp.profile("108").values == {"age": 3.86, "gender": "Female", "condition": "unique"}
    assert trials["participant"].nunique() == 5 and (tmp_path / "runs" / "quickstart-5" / "trials.parquet").exists()
    assert set(namespace["baselines"]["baseline"]) == {"uniform", "population", "profile", "individual"}

    exec(compile(blocks[1], "README.md (Python API, second block)", "exec"), namespace)
    assert (tmp_path / "runs" / "quickstart-5" / "report.html").exists()
    assert len(namespace["report"].comparisons)
    sim = namespace["sim"].simulated
    assert sim["participant"].nunique() == 3 and set(sim["condition"]) == {"no_persona", "persona", "shuffled_persona"}
    export = tmp_path / "runs" / "holt_laury-3" / "export"
    assert all((export / f).exists() for f in ("wide.csv", "wide.dta", "data_dictionary.csv"))
    # Run twice, as a notebook cell is: the saved run is reused, not refused.
    exec(compile(blocks[0], "README.md (Python API, first block, again)", "exec"), namespace)
    assert namespace["result"].resumed
