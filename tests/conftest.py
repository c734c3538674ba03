"""Shared fixtures: a tiny valid experiment written into a temporary folder, and a CLI runner.

Tests build their inputs here (small, readable, exact) rather than depending on
the network or a model; tests that read ../shared/data skip cleanly without it.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from psysim.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "age": {"type": "number", "minimum": 0, "x-psysim": {"question": "What is your age?", "units": "years"}},
        "gender": {"type": "string", "enum": ["Female", "Male"]},
    },
}

RECORDS = [
    {
        "text": "Pick A or B. You pick <<A>>. Again? You pick <<B>>.\n",
        "experiment": "toy",
        "participant": "p1",
        "age": "31.0",
        "gender": "Female",
        "RTs": [100, 200],
    },
    {
        "text": "Pick A or B. You pick <<B>>. Again? You pick <<B>>.\n",
        "experiment": "toy",
        "participant": "p2",
        "age": "N/A",
        "gender": "Male",
        "RTs": [150, 250],
    },
    {
        "text": "Pick A or B. You pick <<A>>. Again? You pick <<A>>.\n",
        "experiment": "toy",
        "participant": "p3",
        "age": "45",
        "gender": "Male",
        "RTs": [120, 220],
    },
]

EXPERIMENT = """\
name: toy
seed: 7
data:
  format: psych201
  path: data.jsonl
cohort:
  schema: schema.json
models:
  - name: tiny
    formats: [raw, chat]
    chat_template: chatml
conditions: [no_persona, persona, shuffled_persona]
"""


@dataclass
class Toy:
    """A tiny valid experiment on disk; tests overwrite one piece to make it invalid."""

    folder: Path

    @property
    def yaml(self) -> Path:
        return self.folder / "experiment.yaml"

    def write_yaml(self, text: str) -> Path:
        self.yaml.write_text(textwrap.dedent(text), encoding="utf-8")
        return self.yaml

    def write_records(self, records: list[dict], name: str = "data.jsonl") -> Path:
        path = self.folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path

    def write_schema(self, schema: dict, name: str = "schema.json") -> Path:
        path = self.folder / name
        path.write_text(json.dumps(schema, indent=2), encoding="utf-8")
        return path


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Toy:
    """A valid three-participant Psych-201 experiment in ``tmp_path`` (also the working folder)."""
    monkeypatch.chdir(tmp_path)
    t = Toy(tmp_path)
    t.write_records(RECORDS)
    t.write_schema(SCHEMA)
    t.write_yaml(EXPERIMENT)
    return t


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli():
    """Run ``psysim ARGS`` through the real entry point (errors -> message and exit 2); capture its output."""

    def run(*args: str) -> Result:
        r = CliRunner().invoke(_Main(), list(args), catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    return run


class _Main:
    """Lets CliRunner invoke :func:`psysim.cli.main`, the console script, which turns errors into exit code 2."""

    name = "psysim"

    def main(self, args=None, prog_name=None, **extra):
        main(list(args or []))


@pytest.fixture
def hf():
    """tests/models_tiny.py (tiny random Llamas, local tokenizers); skip where torch or transformers is missing."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import models_tiny

    return models_tiny


def needs_shared_data(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared real data), not present here")
    return path
