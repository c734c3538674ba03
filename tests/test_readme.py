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


def console_commands(section: str) -> list[tuple[str, list[str]]]:
    """``(command, printed lines)`` of every ``$ ...`` line in the console blocks of a README section, in order."""
    text = (REPO / "README.md").read_text("utf-8")
    part = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    out = []
    for block in re.findall(r"```console\n(.*?)```", part, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out:
                out[-1][1].append(line)
    return out


def shows(printed: list[str], shown: list[str]) -> bool:
    """Whether ``printed`` is what the README ``shown``: line for line, where a line ``...`` leaves lines out and a
    line ending in `` ...`` leaves the rest of its line out."""
    at = 0
    for k, line in enumerate(shown):
        if line == "...":
            rest = shown[k + 1 :]
            return any(shows(printed[j:], rest) for j in range(at, len(printed) + 1))
        if at >= len(printed):
            return False
        if (line.endswith(" ...") and printed[at].startswith(line[:-4])) or printed[at] == line:
            at += 1
            continue
        return False
    return at == len(printed)


def test_shows_reads_the_readmes_elisions():
    assert shows(["a", "b", "c"], ["a", "b", "c"]) and not shows(["a", "b"], ["a", "b", "c"])
    assert shows(["a", "b", "c", "d"], ["a", "..."]) and shows(["a", "x", "y", "d"], ["a", "...", "d"])
    assert shows(["abc def"], ["abc ..."]) and not shows(["abd"], ["abc ..."]) and not shows(["a", "b"], ["a"])


@pytest.mark.journey
def test_the_quickstart_prints_what_the_readme_shows(tmp_path, monkeypatch, run_cli):
    """The quickstart's commands as the README shows them, run in full (several minutes on 2 cores): validate,
    run, report and render print the README's lines, every number included (only the run's seconds differ from
    machine to machine)."""
    pytest.importorskip("torch")
    from psysim import registry

    if registry.pulled_path("smollm2-135m-instruct") is None:
        pytest.skip("the default model is not pulled (psysim models pull smollm2-135m-instruct)")
    monkeypatch.chdir(REPO)  # paths print as the README shows them, relative to the repository
    out = tmp_path / "quickstart"  # the run folder the README calls runs/quickstart
    commands = [(c.split()[1:], shown) for c, shown in console_commands("The quickstart")]
    assert [args[0] for args, _ in commands] == ["models", "validate", "run", "report", "render"]
    for args, shown in commands[1:]:
        if args[0] == "run":
            args = [*args, "--out", str(out), "-q"]
        if args[0] == "report":
            args = [args[0], str(out), *args[2:]]
        r = run_cli(*args)
        assert r.exit_code == 0, r.stderr
        # A page keeps no trailing blanks; the folder is the README's.
        printed = [line.rstrip().replace(str(out), "runs/quickstart") for line in r.stdout.rstrip("\n").splitlines()]
        if args[0] == "run":  # the seconds it took are the machine's
            seconds = re.compile(r"\(\d+\.\d s\)$")
            printed[0], shown = seconds.sub("(T s)", printed[0]), [seconds.sub("(T s)", shown[0]), *shown[1:]]
        assert shows(printed, shown), f"{' '.join(args)} printed:\n" + "\n".join(printed)


def _api_setup(tmp_path, monkeypatch) -> list[str]:
    pytest.importorskip("torch")
    from psysim import registry

    if registry.pulled_path("smollm2-135m-instruct") is None:
        pytest.skip("the default model is not pulled (psysim models pull smollm2-135m-instruct)")
    blocks = python_blocks()
    assert len(blocks) == 3 and "finetune_experiment" in blocks[2]  # the third (fine-tuning) is documented, not run
    for name in ("experiments", "participants", "prompts"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    return blocks


def _first_block(blocks, tmp_path) -> dict:
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
    return namespace


def test_the_python_api_first_block_runs_as_written_twice(tmp_path, monkeypatch):
    """The first block (load, render, a five-participant run) needs only what the repository ships."""
    blocks = _api_setup(tmp_path, monkeypatch)
    assert not _first_block(blocks, tmp_path)["result"].resumed
    # Run twice, as a notebook cell is: the saved run is reused, not refused.
    assert _first_block(blocks, tmp_path)["result"].resumed


def test_the_python_api_blocks_run_as_written(tmp_path, monkeypatch):
    """The second block (report, a Holt-Laury simulation and its exports) after the first; reads ../shared/data."""
    needs_shared_data("self_regulation_ontology")
    blocks = _api_setup(tmp_path, monkeypatch)
    namespace = _first_block(blocks, tmp_path)
    exec(compile(blocks[1], "README.md (Python API, second block)", "exec"), namespace)
    assert (tmp_path / "runs" / "quickstart-5" / "report.html").exists()
    assert len(namespace["report"].comparisons)
    sim = namespace["sim"].simulated
    assert sim["participant"].nunique() == 3 and set(sim["condition"]) == {"no_persona", "persona", "shuffled_persona"}
    export = tmp_path / "runs" / "holt_laury-3" / "export"
    assert all((export / f).exists() for f in ("wide.csv", "wide.dta", "data_dictionary.csv"))
