"""The experiment file: YAML, validated against a JSON Schema shipped in the package.

:func:`load_config` reads the file, reports *all* problems at once (each with
line, column, YAML path, what was expected and what was found), and returns a
typed :class:`ExperimentConfig` whose paths are resolved relative to the YAML
file. Unknown keys are errors; nothing is silently filled in except the
documented defaults listed in the schema's descriptions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from . import _jsonschema
from .errors import ConfigError, Problem, raise_if
from .files import TABLE_SUFFIXES, TRIAL_TABLE_SUFFIXES, display_path, read_text, table_suffix

__all__ = [
    "CONDITION_TYPES",
    "DEFAULT_MISSING",
    "CohortConfig",
    "ConditionConfig",
    "DataConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "ModelConfig",
    "SimulationConfig",
    "experiment_schema",
    "load_config",
]

CONDITION_TYPES = ("no_persona", "persona", "shuffled_persona")
DEFAULT_MISSING = ("", "N/A", "NA", "n/a", "nan", "NaN", "None", "null")
DEFAULT_PERSONA_FORMAT = "interview"


@cache
def experiment_schema() -> dict[str, Any]:
    """The JSON Schema of experiment files (shipped as psysim/schemas/experiment.schema.json)."""
    text = resources.files("psysim").joinpath("schemas/experiment.schema.json").read_text("utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class DataConfig:
    """``data:`` — where the human data is and how to read it."""

    format: str
    path: Path
    experiment: str | None = None
    participant_column: str = "participant"
    trial_column: str = "trial"
    response_column: str = "response"
    options: tuple[str, ...] | None = None
    infer_options: bool = False
    options_column: str | None = None
    options_sep: str = "|"
    templates: dict[str, Path] = field(default_factory=dict)
    separator: str = "\n"
    #: A table of items joined to every trial (``data.items``), and the column it is joined by.
    items: Path | None = None
    items_key: str = "item"
    #: ``long`` (one row per participant × trial) or ``wide`` (one row per participant, one column per item).
    layout: str = "long"


@dataclass(frozen=True)
class CohortConfig:
    """``cohort:`` — the profile schema and where profiles come from."""

    schema: Path
    path: Path | None
    id_column: str = "participant"
    missing: tuple[str, ...] = DEFAULT_MISSING
    sample: int | None = None
    #: ``error`` or ``drop``: what to do with participants who have a profile but no data, or data but no profile.
    unmatched: str = "error"
    #: ``cohort.generate`` as written (validated by the schema; drawn by :mod:`psysim.cohorts`).
    generate: dict[str, Any] | None = None
    #: ``(split.json path, part)``: keep only that part of a fine-tuning split.
    split: tuple[Path, str] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """One entry of ``models:``."""

    name: str
    source: str
    backend: str = "hf"
    formats: tuple[str, ...] = ("raw",)
    chat_template: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    adapter: str | None = None
    trust_remote_code: bool = False
    batch_tokens: int = 8192
    index: int = 0


@dataclass(frozen=True)
class ConditionConfig:
    """One entry of ``conditions:``: what the model is conditioned on."""

    name: str
    type: str
    format: str


BASELINES = ("uniform", "population", "profile", "individual")


@dataclass(frozen=True)
class EvaluationConfig:
    """``evaluation:`` — baselines, their cross-validation, the bootstrap, and post-training pairs."""

    baselines: tuple[str, ...] = BASELINES
    #: ``None``: leave one participant out; an integer k: k folds of participants (seeded).
    folds: int | None = None
    bootstrap: int = 10_000
    #: (base, post_trained) model names.
    post_training: tuple[tuple[str, str], ...] = ()
    #: (base, fine_tuned) model names.
    fine_tuning: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FinetuneConfig:
    """``finetune:`` — LoRA fine-tuning on the training participants (``psysim finetune``)."""

    model: str | None = None
    condition: str | None = None
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    rslora: bool = False
    learning_rate: float = 2e-4
    epochs: int = 3
    batch_size: int = 4
    max_length: int = 2048
    patience: int = 1


@dataclass(frozen=True)
class SimulationConfig:
    """``simulation:`` — closed-loop synthetic participants."""

    n: int | None = None
    temperature: float = 1.0
    #: ``own``, ``resample``, a participant id, or ``None`` (own without cohort.generate, resample with it).
    design: str | None = None
    #: ``auto``, ``ordinal`` or ``nominal``: how the report compares response distributions.
    scale: str = "auto"


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment file. Paths are absolute; ``raw`` is the parsed YAML."""

    path: Path
    name: str
    seed: int
    data: DataConfig
    cohort: CohortConfig
    models: tuple[ModelConfig, ...]
    conditions: tuple[ConditionConfig, ...]
    output: Path
    persona_format: str = DEFAULT_PERSONA_FORMAT
    context_policy: str = "error"
    infer_options_max: int = 10
    save_every: int = 8
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    sha256: str = ""
    marks: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def folder(self) -> Path:
        """The folder of the YAML file: the base of every relative path in it."""
        return self.path.parent

    def problem(self, yaml_path: tuple[Any, ...], message: str) -> Problem:
        """A :class:`Problem` located at ``yaml_path`` of this file (line and column included)."""
        mark = self.marks.get(tuple(yaml_path))
        return Problem(
            message,
            file=display_path(self.path),
            where=_jsonschema.format_path(yaml_path),
            line=mark[0] if mark else None,
            column=mark[1] if mark else None,
        )


Marks = dict[tuple[Any, ...], tuple[int, int]]


def _compose(text: str, shown: str) -> tuple[Any, Marks, Marks, list[Problem]]:
    """Parse YAML, returning the data, the position of every value and of every key, and duplicate-key problems."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark:
            cm = exc.context_mark
            msg += f" ({exc.context} that starts at line {cm.line + 1}, column {cm.column + 1})"
        raise ConfigError(
            f"experiment file is not valid YAML: {shown}",
            [
                Problem(
                    f"invalid YAML: {msg}",
                    file=shown,
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            ],
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiment file is not valid YAML: {shown}", [Problem(str(exc), file=shown)]) from None
    finally:
        loader.dispose()
    marks: Marks = {}
    key_marks: Marks = {}
    problems: list[Problem] = []

    active: set[int] = set()

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        if id(n) in active:
            # An alias to one of its own ancestors (`a: &x [*x]`): data that contains itself.
            raise ConfigError(
                f"experiment file is not valid: {shown}",
                [
                    Problem(
                        "recursive YAML alias: the value refers to itself",
                        file=shown,
                        where=_jsonschema.format_path(path),
                        line=n.start_mark.line + 1,
                        column=n.start_mark.column + 1,
                    )
                ],
            )
        active.add(id(n))
        marks[path] = (n.start_mark.line + 1, n.start_mark.column + 1)
        if isinstance(n, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in n.value:
                key = key_node.value
                if key in seen:
                    problems.append(
                        Problem(
                            f"duplicate key {key!r} (first given on line {seen[key]}); YAML would silently keep the last",
                            file=shown,
                            where=_jsonschema.format_path(path + (key,)),
                            line=key_node.start_mark.line + 1,
                            column=key_node.start_mark.column + 1,
                        )
                    )
                seen[key] = key_node.start_mark.line + 1
                key_marks.setdefault(path + (key,), (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
                walk(value_node, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, path + (i,))
        active.discard(id(n))

    if node is not None:
        walk(node, ())
    return data, marks, key_marks, problems


def _semantic_problems(data: dict[str, Any], at, resolve) -> list[Problem]:
    """Problems the schema cannot express: missing files, wrong suffixes, duplicate names, non-integer seeds."""
    problems: list[Problem] = []

    def section(key: str) -> dict[str, Any]:
        value = data.get(key)
        return value if isinstance(value, dict) else {}

    def must_exist(yaml_path: tuple[Any, ...], value: Any, what: str) -> None:
        if not isinstance(value, str) or not value:
            return
        target = resolve(value)
        if not target.exists():
            problems.append(
                at(yaml_path, f"{what} not found: {value!r} (resolved against the YAML file's folder: {display_path(target)})")
            )
        elif target.is_dir():
            problems.append(at(yaml_path, f"expected a file, found a folder: {value!r} ({display_path(target)})"))

    if isinstance(data.get("seed"), float):
        # JSON Schema counts 7.0 as an integer; a seed written as a float is a typo worth flagging.
        problems.append(at(("seed",), f"expected an integer, found a number {data['seed']!r}"))
    d, c = section("data"), section("cohort")
    must_exist(("data", "path"), d.get("path"), "data file")
    templates = d.get("templates")
    for kind, value in templates.items() if isinstance(templates, dict) else ():
        must_exist(("data", "templates", kind), value, f"{kind} template")
    suffixes = {"psych201": (".jsonl",), "trials": TRIAL_TABLE_SUFFIXES}.get(d.get("format"))
    if suffixes and isinstance(d.get("path"), str) and table_suffix(d["path"]) not in suffixes:
        found = Path(d["path"]).name
        problems.append(at(("data", "path"), f"expected a {_either(suffixes)} file for format {d['format']}, found {found!r}"))
    # Table suffixes are checked here too, so that a wrong one points at its line of the YAML file.
    for yaml_path, value, allowed in (
        (("data", "items", "path"), d["items"].get("path") if isinstance(d.get("items"), dict) else None, TRIAL_TABLE_SUFFIXES),
        (("cohort", "path"), c.get("path"), TABLE_SUFFIXES),
    ):
        if isinstance(value, str) and value and table_suffix(value) not in allowed:
            problems.append(at(yaml_path, f"expected a {_either(allowed)} file, found {Path(value).name!r}"))
    if d.get("format") == "trials" and d.get("options") == "infer":
        problems.append(
            at(("data", "options"), "options: infer applies to psych201 data; for trials give a list or {column, sep}")
        )
    models = data.get("models")
    for i, m in enumerate(models if isinstance(models, list) else ()):
        if isinstance(m, dict) and isinstance(m.get("adapter"), str):
            target = resolve(m["adapter"])
            if not target.is_dir():
                problems.append(
                    at(("models", i, "adapter"), f"adapter folder not found: {m['adapter']!r} ({display_path(target)})")
                )
    items = d.get("items")
    if isinstance(items, dict):
        must_exist(("data", "items", "path"), items.get("path"), "item table")
    if d.get("format") == "psych201":
        for key in ("items", "layout"):
            if key in d:
                problems.append(at(("data", key), "not allowed when data.format is psych201 (it applies to trials data only)"))
    if d.get("layout") == "wide" and "items" not in d:
        problems.append(at(("data", "layout"), "a wide table needs data.items: the item table naming each item's column"))
    split = c.get("split")
    if isinstance(split, dict):
        must_exist(("cohort", "split", "file"), split.get("file"), "split file (written by psysim finetune)")
    ft = section("finetune")
    if isinstance(ft.get("model"), str) and isinstance(data.get("models"), list):
        names = [m.get("name") for m in data["models"] if isinstance(m, dict)]
        if ft["model"] not in names:
            problems.append(
                at(
                    ("finetune", "model"),
                    f"expected the name of a model in models: ({', '.join(map(str, names))}), found {ft['model']!r}",
                )
            )
    if isinstance(ft.get("condition"), str) and isinstance(data.get("conditions"), list):
        names = [x if isinstance(x, str) else x.get("name") for x in data["conditions"] if isinstance(x, (str, dict))]
        if ft["condition"] not in names:
            problems.append(
                at(
                    ("finetune", "condition"),
                    f"expected a condition of conditions: ({', '.join(map(str, names))}), found {ft['condition']!r}",
                )
            )
    fractions = ft.get("split")
    if isinstance(fractions, dict) and all(isinstance(fractions.get(k), (int, float)) for k in ("train", "validation", "test")):
        total = fractions["train"] + fractions["validation"] + fractions["test"]
        if abs(total - 1) > 1e-9:
            problems.append(at(("finetune", "split"), f"expected fractions that add up to 1, found {total:g}"))
    must_exist(("cohort", "schema"), c.get("schema"), "profile schema")
    must_exist(("cohort", "path"), c.get("path"), "cohort file")
    if d.get("format") == "trials" and "cohort" in data and "path" not in c:
        problems.append(at(("cohort",), "missing required key 'path': a trial table has no profiles, name the cohort file"))
    for key, label in (("models", "model"), ("conditions", "condition")):
        items = data.get(key)
        seen: dict[Any, int] = {}
        for i, item in enumerate(items if isinstance(items, list) else ()):
            name = item.get("name") if isinstance(item, dict) else item
            if not isinstance(name, str):
                continue
            if name in seen:
                where = (key, i, "name") if isinstance(item, dict) else (key, i)
                problems.append(at(where, f"duplicate {label} name {name!r} (also {key}[{seen[name]}])"))
            seen.setdefault(name, i)
    model_names = {m.get("name") for m in models if isinstance(m, dict)} if isinstance(models, list) else set()
    for key, other in (("post_training", "post_trained"), ("fine_tuning", "fine_tuned")):
        pairs = section("evaluation").get(key)
        for i, pair in enumerate(pairs if isinstance(pairs, list) else ()):
            if not isinstance(pair, dict):
                continue
            for role in ("base", other):
                name = pair.get(role)
                if isinstance(name, str) and name not in model_names:
                    known = ", ".join(sorted(str(n) for n in model_names if isinstance(n, str))) or "none"
                    message = f"expected the name of a model in models: ({known}), found {name!r}"
                    problems.append(at(("evaluation", key, i, role), message))
            if isinstance(pair.get("base"), str) and pair.get("base") == pair.get(other):
                message = f"expected a model other than the base, found {pair['base']!r} twice"
                problems.append(at(("evaluation", key, i, other), message))
    return problems


def _either(suffixes: tuple[str, ...]) -> str:
    """``.a``, ``.b or .c``: a list of suffixes in words."""
    return " or ".join(suffixes) if len(suffixes) < 3 else ", ".join(suffixes[:-1]) + " or " + suffixes[-1]


def _finetune(f: dict[str, Any]) -> FinetuneConfig:
    lora = f.get("lora", {})
    split = f.get("split")
    targets = lora.get("target_modules", "all-linear")
    return FinetuneConfig(
        model=f.get("model"),
        condition=f.get("condition"),
        split=(split["train"], split["validation"], split["test"]) if split else (0.7, 0.15, 0.15),
        rank=lora.get("rank", 8),
        alpha=float(lora.get("alpha", 16.0)),
        dropout=float(lora.get("dropout", 0.05)),
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        rslora=lora.get("rslora", False),
        learning_rate=float(f.get("learning_rate", 2e-4)),
        epochs=f.get("epochs", 3),
        batch_size=f.get("batch_size", 4),
        max_length=f.get("max_length", 2048),
        patience=f.get("patience", 1),
    )


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment file.

    Raises :class:`~psysim.errors.ConfigError` listing every problem in the file.
    Checks that referenced files exist; their *contents* are checked by
    :func:`psysim.load_experiment`.
    """
    p = Path(path).expanduser().resolve()
    shown = display_path(path)
    text = read_text(p, error=ConfigError, what="experiment file")
    data, marks, key_marks, problems = _compose(text, shown)

    def at(yaml_path: tuple[Any, ...], message: str) -> Problem:
        # Errors about keys point at the key; errors about values at the value. A
        # missing key points at its parent's key (or the top of the file).
        about_key = message.startswith(("unknown key", "missing required key", "not allowed"))
        probe = yaml_path
        while probe and probe not in (key_marks if about_key else marks):
            probe = probe[:-1]
        line, col = (key_marks if about_key else marks).get(probe, marks.get(probe, (1, 1) if not probe else (None, None)))
        return Problem(message, file=shown, where=_jsonschema.format_path(yaml_path), line=line, column=col)

    if data is None:
        raise ConfigError(
            f"experiment file is empty: {shown}",
            [Problem("expected a mapping of keys, found an empty file (or only comments)", file=shown)],
        )
    validator = Draft202012Validator(experiment_schema())
    for yaml_path, message in _jsonschema.iter_described(validator, data):
        problems.append(at(yaml_path, message))
    folder = p.parent

    def resolve(value: str) -> Path:
        return (folder / Path(value).expanduser()).resolve()

    # Checks beyond the schema run even when the schema found problems, so that a
    # user sees every problem of the file at once; each guards against bad shapes.
    if isinstance(data, dict):
        problems += _semantic_problems(data, at, resolve)
    problems.sort(key=lambda pr: (pr.line or 0, pr.column or 0))
    raise_if(problems, ConfigError, f"invalid experiment file {shown}")

    d = data["data"]
    cols = d.get("columns", {})
    opts = d.get("options")
    data_cfg = DataConfig(
        format=d["format"],
        path=resolve(d["path"]),
        experiment=d.get("experiment"),
        participant_column=cols.get("participant", "participant"),
        trial_column=cols.get("trial", "trial"),
        response_column=cols.get("response", "response"),
        options=tuple(opts) if isinstance(opts, list) else None,
        infer_options=opts == "infer",
        options_column=opts.get("column") if isinstance(opts, dict) else None,
        options_sep=opts.get("sep", "|") if isinstance(opts, dict) else "|",
        templates={kind: resolve(value) for kind, value in d.get("templates", {}).items()},
        separator=d.get("separator", "\n"),
        items=resolve(d["items"]["path"]) if "items" in d else None,
        items_key=d.get("items", {}).get("key", "item"),
        layout=d.get("layout", "long"),
    )
    c = data["cohort"]
    cohort_cfg = CohortConfig(
        schema=resolve(c["schema"]),
        path=resolve(c["path"]) if "path" in c else None,
        id_column=c.get("id", "participant"),
        missing=tuple(c.get("missing", DEFAULT_MISSING)),
        sample=c.get("sample"),
        unmatched=c.get("unmatched", "error"),
        generate=c.get("generate"),
        split=(resolve(c["split"]["file"]), c["split"]["part"]) if "split" in c else None,
    )
    models = [
        ModelConfig(
            name=m["name"],
            source=m.get("source", m["name"]),
            backend=m.get("backend", "hf"),
            formats=tuple(m.get("formats", ["raw"])),
            chat_template=m.get("chat_template"),
            dtype=m.get("dtype", "float32"),
            device=m.get("device", "cpu"),
            adapter=m.get("adapter"),
            trust_remote_code=m.get("trust_remote_code", False),
            batch_tokens=m.get("batch_tokens", 8192),
            index=i,
        )
        for i, m in enumerate(data["models"])
    ]
    persona_format = data.get("persona", {}).get("format", DEFAULT_PERSONA_FORMAT)
    conditions = [
        ConditionConfig(name=cnd, type=cnd, format=persona_format)
        if isinstance(cnd, str)
        else ConditionConfig(name=cnd["name"], type=cnd["type"], format=cnd.get("format", persona_format))
        for cnd in data["conditions"]
    ]
    ev = data.get("evaluation", {})
    output = resolve(data["output"]) if "output" in data else folder / "runs" / data["name"]
    return ExperimentConfig(
        path=p,
        name=data["name"],
        seed=data["seed"],
        data=data_cfg,
        cohort=cohort_cfg,
        models=tuple(models),
        conditions=tuple(conditions),
        output=output,
        persona_format=persona_format,
        context_policy=data.get("scoring", {}).get("context", "error"),
        infer_options_max=data.get("scoring", {}).get("infer_options_max", 10),
        save_every=data.get("scoring", {}).get("save_every", 8),
        evaluation=EvaluationConfig(
            baselines=tuple(ev.get("baselines", BASELINES)),
            folds=None if ev.get("cross_validation", "leave_one_out") == "leave_one_out" else ev["cross_validation"],
            bootstrap=ev.get("bootstrap", 10_000),
            post_training=tuple((p["base"], p["post_trained"]) for p in ev.get("post_training", [])),
            fine_tuning=tuple((p["base"], p["fine_tuned"]) for p in ev.get("fine_tuning", [])),
        ),
        simulation=SimulationConfig(
            n=data.get("simulation", {}).get("n"),
            temperature=float(data.get("simulation", {}).get("temperature", 1.0)),
            design=data.get("simulation", {}).get("design"),
            scale=data.get("simulation", {}).get("scale", "auto"),
        ),
        finetune=_finetune(data.get("finetune", {})),
        description=data.get("description", ""),
        raw=data,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        marks=marks,
    )
