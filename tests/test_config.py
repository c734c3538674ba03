"""The Python API of the experiment file: psysim.config.load_config.

Pins path resolution (relative to the YAML, never the cwd), the documented
defaults, conditions, uniqueness of names, the keys that apply only to one
data format, and the stability of the config hash.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
from conftest import EXPERIMENT

from psysim.config import DEFAULT_MISSING, ConditionConfig, ConfigError, load_config

TRIALS = """\
name: trialtask
seed: 1
data:
  format: trials
  path: tables/trials.csv
  options: {column: choices, sep: ";"}
  columns: {participant: pid, trial: t, response: choice}
  templates:
    trial: templates/trial.jinja
    instructions: templates/instructions.jinja
  separator: " "
  experiment: task-1
cohort:
  schema: schema.json
  path: tables/cohort.csv
  id: pid
  missing: ["?"]
models:
  - name: tiny
conditions: [no_persona]
"""


def write(folder: Path, name: str, text: str = "") -> Path:
    """Write ``text`` (dedented) to ``folder/name``, creating parent folders."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def trials(toy) -> Path:
    """A valid trials-format experiment file beside the toy one (its files exist, their contents are not read)."""
    for name in ("tables/trials.csv", "tables/cohort.csv", "templates/trial.jinja", "templates/instructions.jinja"):
        write(toy.folder, name)
    return write(toy.folder, "trials.yaml", TRIALS)


def problems_of(path: str | Path) -> list[str]:
    """The problem lines load_config raises for ``path`` (as the CLI prints them)."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_relative_paths_are_relative_to_the_yaml_not_the_cwd(toy, monkeypatch):
    """Loaded from another working folder, every relative path resolves against the YAML's folder."""
    write(toy.folder, "exp/experiment.yaml", EXPERIMENT.replace("  schema: schema.json\n", "  schema: ../schema.json\n"))
    write(toy.folder, "exp/data.jsonl")
    elsewhere = toy.folder / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config("../exp/experiment.yaml")
    exp = toy.folder.resolve() / "exp"
    assert cfg.path == exp / "experiment.yaml"
    assert cfg.folder == exp
    assert cfg.data.path == exp / "data.jsonl"
    assert cfg.cohort.schema == toy.folder.resolve() / "schema.json"
    assert cfg.output == exp / "runs" / "toy"


def test_trials_paths_and_output_are_relative_to_the_yaml(trials, monkeypatch, toy):
    """Templates, the cohort file and an explicit output folder also resolve against the YAML's folder."""
    write(toy.folder, "trials.yaml", TRIALS + "output: ../results/here\n")
    (toy.folder / "sub").mkdir()
    monkeypatch.chdir(toy.folder / "sub")
    cfg = load_config(trials)
    base = toy.folder.resolve()
    assert cfg.data.path == base / "tables" / "trials.csv"
    assert cfg.data.templates == {
        "trial": base / "templates" / "trial.jinja",
        "instructions": base / "templates" / "instructions.jinja",
    }
    assert cfg.cohort.path == base / "tables" / "cohort.csv"
    assert cfg.output == base.parent / "results" / "here"


def test_defaults(toy):
    """Only the documented defaults are filled in: formats [raw], backend hf, interview personas, runs/<name>."""
    toy.write_yaml(EXPERIMENT.replace("    formats: [raw, chat]\n    chat_template: chatml\n", ""))
    cfg = load_config("experiment.yaml")
    [model] = cfg.models
    assert (model.name, model.source, model.backend, model.formats, model.chat_template, model.index) == (
        "tiny",
        "tiny",
        "hf",
        ("raw",),
        None,
        0,
    )
    assert cfg.persona_format == "interview"
    assert all(c.format == "interview" for c in cfg.conditions)
    assert cfg.output == toy.folder.resolve() / "runs" / "toy"
    assert cfg.description == ""
    assert (cfg.cohort.path, cfg.cohort.id_column, cfg.cohort.missing) == (None, "participant", DEFAULT_MISSING)
    d = cfg.data
    assert (d.participant_column, d.trial_column, d.response_column) == ("participant", "trial", "response")
    assert (d.options, d.options_column, d.options_sep, d.templates, d.separator, d.experiment) == (
        None,
        None,
        "|",
        {},
        "\n",
        None,
    )


def test_explicit_values_are_kept(trials):
    """Every trials-format key given in the YAML reaches the typed config unchanged."""
    cfg = load_config(trials)
    d = cfg.data
    assert (d.format, d.experiment, d.separator) == ("trials", "task-1", " ")
    assert (d.participant_column, d.trial_column, d.response_column) == ("pid", "t", "choice")
    assert (d.options, d.options_column, d.options_sep) == (None, "choices", ";")
    assert (cfg.cohort.id_column, cfg.cohort.missing) == ("pid", ("?",))


def test_model_source_backend_and_formats(toy):
    """A model's source, backend and formats are read as given; index is its position in the list."""
    toy.write_yaml(
        EXPERIMENT.replace(
            "conditions:",
            "  - {name: other, source: org/other-model, backend: mock, formats: [chat], chat_template: t.jinja}\nconditions:",
        )
    )
    cfg = load_config("experiment.yaml")
    other = cfg.models[1]
    assert (other.name, other.source, other.backend, other.formats, other.chat_template, other.index) == (
        "other",
        "org/other-model",
        "mock",
        ("chat",),
        "t.jinja",
        1,
    )


def test_string_conditions(toy):
    """A condition given as a string is named after its type and uses persona.format."""
    toy.write_yaml(EXPERIMENT + "persona:\n  format: third_person\n")
    cfg = load_config("experiment.yaml")
    assert cfg.conditions == (
        ConditionConfig("no_persona", "no_persona", "third_person"),
        ConditionConfig("persona", "persona", "third_person"),
        ConditionConfig("shuffled_persona", "shuffled_persona", "third_person"),
    )


def test_object_conditions(toy):
    """A condition given as {name, type, format} keeps them; without format it uses persona.format."""
    toy.write_yaml(
        EXPERIMENT.replace(
            "conditions: [no_persona, persona, shuffled_persona]",
            "conditions:\n"
            "  - persona\n"
            "  - {name: first, type: persona, format: first_person}\n"
            "  - {name: control, type: shuffled_persona}\n",
        )
    )
    cfg = load_config("experiment.yaml")
    assert cfg.conditions == (
        ConditionConfig("persona", "persona", "interview"),
        ConditionConfig("first", "persona", "first_person"),
        ConditionConfig("control", "shuffled_persona", "interview"),
    )


def test_duplicate_model_names_are_rejected(toy):
    """Two models with the same name are an error at the second one's name."""
    toy.write_yaml(EXPERIMENT.replace("conditions:", "  - name: tiny\n    backend: mock\nconditions:"))
    assert problems_of("experiment.yaml") == [
        "experiment.yaml:12:11: models[1].name: duplicate model name 'tiny' (also models[0])"
    ]


@pytest.mark.parametrize(
    ("conditions", "problem"),
    [
        (
            "[persona, no_persona, persona]",
            "experiment.yaml:12:35: conditions[2]: duplicate condition name 'persona' (also conditions[0])",
        ),
        (
            "[persona, {name: persona, type: shuffled_persona}]",
            "experiment.yaml:12:30: conditions[1].name: duplicate condition name 'persona' (also conditions[0])",
        ),
    ],
    ids=["strings", "string-and-object"],
)
def test_duplicate_condition_names_are_rejected(toy, conditions, problem):
    """Two conditions with the same name (as strings or as a string and a mapping) are an error at the second."""
    toy.write_yaml(EXPERIMENT.replace("[no_persona, persona, shuffled_persona]", conditions))
    assert problems_of("experiment.yaml") == [problem]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param("  templates:\n    trial: t.jinja\n", id="templates"),
        pytest.param("  columns: {trial: t}\n", id="columns"),
        pytest.param("  separator: ' '\n", id="separator"),
        pytest.param("  experiment: x\n", id="experiment"),
    ],
)
def test_trials_only_keys_are_rejected_under_psych201(toy, extra):
    """Keys that apply only to trial tables are errors under a psych201 data block, on the key's line."""
    key = extra.split(":")[0].strip()
    (toy.folder / "t.jinja").write_text("{{ response }}")  # exists, so the only problem is the key itself
    toy.write_yaml(EXPERIMENT.replace("  path: data.jsonl\n", "  path: data.jsonl\n" + extra))
    with pytest.raises(ConfigError) as info:
        load_config("experiment.yaml")
    assert [(p.file, p.line, p.where, p.message) for p in info.value.problems] == [
        (
            "experiment.yaml",
            6,
            f"data.{key}",
            "not allowed when data.format is psych201 (it applies to trials data only)",
        )
    ]


def test_options_column_is_rejected_under_psych201(toy):
    """psych201 data takes options only as a list, not as {column, sep}."""
    toy.write_yaml(EXPERIMENT.replace("  path: data.jsonl\n", "  path: data.jsonl\n  options: {column: x}\n"))
    assert problems_of("experiment.yaml") == [
        "experiment.yaml:6:12: data.options: {column, sep} applies to trials data; for psych201 give a list, "
        "{pattern}, pooled or none"
    ]


def test_psych201_options_list_is_accepted(toy):
    """psych201 data accepts a list of options shared by every response."""
    toy.write_yaml(EXPERIMENT.replace("  path: data.jsonl\n", "  path: data.jsonl\n  options: [A, B]\n"))
    assert load_config("experiment.yaml").data.options == ("A", "B")


def test_trials_without_cohort_path_is_rejected(trials, toy):
    """A trial table has no profiles, so trials data without cohort.path is an error at cohort."""
    write(toy.folder, "trials.yaml", TRIALS.replace("  path: tables/cohort.csv\n", ""))
    assert problems_of("trials.yaml") == [
        "trials.yaml:13:1: cohort: missing required key 'path': a trial table has no profiles, name the cohort file"
    ]


def test_trials_without_templates_is_rejected(trials, toy):
    """Trials data must name its templates."""
    text = TRIALS.replace("  templates:\n    trial: templates/trial.jinja\n    instructions: templates/instructions.jinja\n", "")
    write(toy.folder, "trials.yaml", text)
    assert problems_of("trials.yaml") == ["trials.yaml:3:1: data.templates: missing required key"]


def test_wrong_data_suffix_for_the_format(toy):
    """A psych201 data path must be a .jsonl file."""
    toy.write_yaml(EXPERIMENT.replace("path: data.jsonl", "path: schema.json"))
    assert problems_of("experiment.yaml") == [
        "experiment.yaml:5:9: data.path: expected a .jsonl or .jsonl.zip file for format psych201, found 'schema.json'"
    ]


def test_problems_carry_file_line_column_and_yaml_path(toy):
    """A ConfigError's problems are structured: file, line, column, YAML path and message."""
    toy.write_yaml(EXPERIMENT.replace("seed: 7", "seed: -1"))
    with pytest.raises(ConfigError) as info:
        load_config("experiment.yaml")
    [p] = info.value.problems
    assert (p.file, p.line, p.column, p.where, p.message) == (
        "experiment.yaml",
        2,
        7,
        "seed",
        "expected a number ≥ 0, found an integer -1",
    )
    assert info.value.exit_code == 2


def test_config_hash_is_stable(toy, monkeypatch):
    """The config hash is the SHA-256 of the file: the same across loads and working folders, new on any edit."""
    first = load_config("experiment.yaml").sha256
    assert first == hashlib.sha256(toy.yaml.read_bytes()).hexdigest()
    assert load_config(toy.yaml).sha256 == first
    (toy.folder / "sub").mkdir()
    monkeypatch.chdir(toy.folder / "sub")
    assert load_config("../experiment.yaml").sha256 == first
    toy.write_yaml(EXPERIMENT.replace("seed: 7", "seed: 8"))
    assert load_config(toy.yaml).sha256 != first


def test_marks_locate_values_for_later_stages(toy):
    """The loaded config can locate any YAML path it read, for problems found after loading."""
    cfg = load_config("experiment.yaml")
    p = cfg.problem(("models", 0, "chat_template"), "some later problem")
    assert str(p) == "experiment.yaml:11:20: models[0].chat_template: some later problem"


@pytest.mark.parametrize(
    "make, where, found",
    [
        (lambda c: c.FinetuneConfig(learning_rate=0.0), "finetune.learning_rate", "0.0"),
        (lambda c: c.FinetuneConfig(split=(0.5, 0.5, 0.5)), "finetune.split", "(0.5, 0.5, 0.5)"),
        (lambda c: c.FinetuneConfig(batch_tokens=8), "finetune.batch_tokens", "8"),
        (lambda c: c.SimulationConfig(format="html"), "simulation.format", "'html'"),
        (lambda c: c.SimulationConfig(n=0), "simulation.n", "0"),
        (lambda c: c.EvaluationConfig(bootstrap=10), "evaluation.bootstrap", "10"),
        (lambda c: c.EvaluationConfig(baselines=("population", "oracle")), "evaluation.baselines", "('population', 'oracle')"),
        (lambda c: c.ModelConfig(name="m", source="s", batch_tokens=0), "models.batch_tokens", "0"),
    ],
)
def test_config_classes_made_in_python_check_their_values(make, where, found):
    """The Python API holds the schema's limits too: a bad value is a ConfigError naming the setting and the value."""
    from psysim import config
    from psysim.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        make(config)
    assert [p.where for p in exc.value.problems] == [where]
    assert exc.value.problems[0].message.endswith(f"found {found}")


def test_default_config_classes_are_valid():
    from psysim import config

    config.FinetuneConfig(), config.SimulationConfig(), config.EvaluationConfig(), config.ModelConfig(name="m", source="s")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("selective", "selective"),
        ("none", "none"),
        ("full", "full"),
        ("auto", "auto"),
        ("true", "full"),
        ("false", "none"),
        (None, "auto"),
    ],
)
def test_gradient_checkpointing_values(toy, value, expected):
    """finetune.gradient_checkpointing: auto (default) | none | selective | full; 0.2.0's true / false mean full / none."""
    toy.write_yaml(EXPERIMENT + ("finetune: {}\n" if value is None else f"finetune:\n  gradient_checkpointing: {value}\n"))
    assert load_config("experiment.yaml").finetune.gradient_checkpointing == expected


def test_gradient_checkpointing_rejects_other_values(toy):
    """Anything else is named with its location and the values allowed, in YAML and in Python."""
    from psysim.config import FinetuneConfig

    toy.write_yaml(EXPERIMENT + "finetune:\n  gradient_checkpointing: partial\n")
    (problem,) = problems_of("experiment.yaml")
    assert problem.startswith("experiment.yaml:") and "finetune.gradient_checkpointing" in problem
    assert 'found a string "partial"' in problem and '"selective"' in problem
    with pytest.raises(ConfigError, match=r"gradient_checkpointing.*one of auto, none, selective, full.*'partial'"):
        FinetuneConfig(gradient_checkpointing="partial")
