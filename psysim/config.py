"""The experiment file: YAML, validated against a JSON Schema shipped in the package.

:func:`load_config` reads the file, reports *all* problems at once (each with
line, column, YAML path, what was expected and what was found), and returns a
typed :class:`ExperimentConfig` whose paths are resolved relative to the YAML
file. Unknown keys are errors; nothing is silently filled in except the
documented defaults listed in the schema's descriptions.
"""

from __future__ import annotations

import dataclasses
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

from . import validation
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
    """One entry of ``data:`` — a study: where its human data is, how to read it, and its option and item rules.

    The option rule (``options``) says what each trial offered; the item rule
    (``item``) says which stimulus participants shared. Both are applied by
    :mod:`psysim.data.studies`, the one home of those definitions.
    """

    format: str
    path: Path
    experiment: str | None = None
    participant_column: str = "participant"
    trial_column: str = "trial"
    response_column: str = "response"
    #: A fixed list shared by all trials (``options: [...]``).
    options: tuple[str, ...] | None = None
    options_column: str | None = None
    options_sep: str = "|"
    #: ``options: {pattern, from, roles}``: a regular expression read on each trial's text or on the instructions.
    options_pattern: str | None = None
    options_from: str = "trial"
    options_roles: tuple[str, ...] = ()
    #: ``options: pooled``: every distinct response of the study (approximate chance and pseudo-R²).
    pooled_options: bool = False
    #: ``text`` (default), ``position``, ``pattern`` or ``columns``; see ``item_pattern`` and ``item_columns``.
    item_rule: str = "text"
    item_pattern: str | None = None
    item_columns: tuple[str, ...] = ()
    #: ``error`` or ``drop``: a human response that is not among its trial's options.
    outside_options: str = "error"
    templates: dict[str, Path] = field(default_factory=dict)
    separator: str = "\n"
    #: A table of items joined to every trial (``data.items``), and the column it is joined by.
    items: Path | None = None
    items_key: str = "item"
    #: ``long`` (one row per participant × trial) or ``wide`` (one row per participant, one column per item).
    layout: str = "long"
    #: The study's name in results (``data.name``; derived from the file when not given).
    name: str = ""

    @property
    def declared_options(self) -> str:
        """The option rule in words (what ``psysim validate`` shows)."""
        if self.options is not None:
            return f"the list {list(self.options)} on every trial"
        if self.options_column:
            return f"each trial's column {self.options_column!r}"
        if self.options_pattern:
            where = "the participant's instructions" if self.options_from == "instructions" else "each trial's text"
            roles = f", roles {list(self.options_roles)}" if self.options_roles else ""
            return f"pattern «{self.options_pattern}» on {where}{roles}"
        if self.pooled_options:
            return "pooled: every distinct response of the study (chance and pseudo-R² approximate)"
        return "none (NLL only)"

    @property
    def declared_item(self) -> str:
        """The item rule in words."""
        if self.item_rule == "pattern":
            return f"pattern «{self.item_pattern}» on each trial's text"
        if self.item_rule == "columns":
            return f"columns {', '.join(self.item_columns)}"
        if self.item_rule == "position":
            return "the trial's position"
        return "the trial's text since the previous response"


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


def _check(section: str, checks: list[tuple[str, Any, bool, str]]) -> None:
    """Raise one :class:`ConfigError` naming every setting of ``section`` that fails its check.

    The experiment file is checked against the schema (with line numbers) before
    these classes are built; these checks hold the same limits for configs made
    in Python, as peft's configs check theirs.
    """
    problems = [
        Problem(f"expected {expected}, found {value!r}", where=f"{section}.{name}")
        for name, value, ok, expected in checks
        if not ok
    ]
    raise_if(problems, ConfigError, f"invalid {section} settings")


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
    #: ``vllm:`` as written (the engine's settings; :data:`VLLM_DEFAULTS` fills the rest).
    vllm: tuple[tuple[str, Any], ...] = ()
    index: int = 0

    def __post_init__(self) -> None:
        _check("models", [("batch_tokens", self.batch_tokens, self.batch_tokens >= 1, "a number of tokens of at least 1")])

    def vllm_settings(self) -> dict[str, Any]:
        """The vLLM engine's settings of this entry: :data:`VLLM_DEFAULTS` updated with what the file says."""
        return {**VLLM_DEFAULTS, **dict(self.vllm)}


#: Settings of the vLLM engine (a ``models:`` entry's ``vllm:``) and their defaults, written once here.
VLLM_DEFAULTS: dict[str, Any] = {
    # KV-cache memory on CPU (VLLM_CPU_KVCACHE_SPACE, GiB): unset, vLLM would take most of the machine's memory.
    "kv_cache_gb": 1.0,
    # Share of a GPU's memory the engine may use (weights, activations and KV cache).
    "gpu_memory_utilization": 0.9,
    "tensor_parallel_size": 1,
    # Longest sequence the engine plans for; None: the model's own context length.
    "max_model_len": None,
    # Skip torch.compile and CUDA graphs: start-up in seconds, not minutes, at some throughput cost on GPUs.
    "enforce_eager": True,
}


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

    def __post_init__(self) -> None:
        _check(
            "evaluation",
            [
                ("baselines", self.baselines, set(self.baselines) <= set(BASELINES), f"names among {', '.join(BASELINES)}"),
                ("cross_validation", self.folds, self.folds is None or self.folds >= 2, "leave_one_out or at least 2 folds"),
                ("bootstrap", self.bootstrap, self.bootstrap >= 100, "at least 100 resamples"),
            ],
        )


#: ``finetune.gradient_checkpointing``'s values: ``auto``, then the modes from the most memory kept to the least.
CHECKPOINTING = ("auto", "none", "selective", "full")


@dataclass(frozen=True)
class FinetuneConfig:
    """``finetune:`` — LoRA fine-tuning on the training participants (``psysim finetune``)."""

    model: str | None = None
    condition: str | None = None
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    rank: int = 8
    alpha: float = 16.0
    #: peft's default. Dropout on the adapters' inputs drew a random mask per adapted layer per step, 16% of a CPU
    #: step, and kept a masked copy of every layer's input for the backward pass (bench/bench_finetune.py).
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    rslora: bool = False
    learning_rate: float = 2e-4
    epochs: int = 3
    batch_size: int = 4
    max_length: int = 2048
    patience: int = 1
    #: What a layer keeps for its backward pass (one of :data:`CHECKPOINTING`; psysim.finetune.lora_model says what
    #: each does). ``auto`` keeps everything (``none``, the fastest) when a part's activations fit in
    #: ``activation_budget_mib`` and checkpoints selectively otherwise (psysim.finetune.choose_checkpointing);
    #: the adapter is the same bit for bit whichever mode runs (bench/bench_finetune.py, BENCHMARKS.md).
    gradient_checkpointing: str = "auto"
    #: A batch is computed in parts of at most this many (padded) tokens, gradients accumulated: memory follows it.
    batch_tokens: int = 1024
    #: Under ``gradient_checkpointing: auto``, the most activation memory (MiB) a part may keep without checkpointing:
    #: 2 GiB lets the finetune quickstart's model run its 1,024-token parts uncheckpointed (1.15 MiB a token) with the
    #: whole command under 3 GB, and sends larger models to selective checkpointing (2,099 MiB a part for SmolLM2-360M).
    activation_budget_mib: int = 2048

    def __post_init__(self) -> None:
        split = tuple(self.split)
        _check(
            "finetune",
            [
                (
                    "split",
                    split,
                    len(split) == 3 and all(0 <= x <= 1 for x in split) and abs(sum(split) - 1) <= 1e-9,
                    "three fractions (train, validation, test) that add up to 1",
                ),
                ("lora.rank", self.rank, self.rank >= 1, "at least 1"),
                ("lora.alpha", self.alpha, self.alpha > 0, "a number above 0"),
                ("lora.dropout", self.dropout, 0 <= self.dropout <= 1, "a probability between 0 and 1"),
                ("learning_rate", self.learning_rate, self.learning_rate > 0, "a number above 0"),
                ("epochs", self.epochs, self.epochs >= 1, "at least 1"),
                ("batch_size", self.batch_size, self.batch_size >= 1, "at least 1"),
                ("max_length", self.max_length, self.max_length >= 16, "at least 16 tokens"),
                ("patience", self.patience, self.patience >= 1, "at least 1 epoch"),
                ("batch_tokens", self.batch_tokens, self.batch_tokens >= 16, "at least 16 tokens"),
                (
                    "activation_budget_mib",
                    self.activation_budget_mib,
                    isinstance(self.activation_budget_mib, int) and self.activation_budget_mib >= 0,
                    "a whole number of MiB, 0 or more",
                ),
                (
                    "gradient_checkpointing",
                    self.gradient_checkpointing,
                    self.gradient_checkpointing in CHECKPOINTING,
                    f"one of {', '.join(CHECKPOINTING)}",
                ),
            ],
        )


@dataclass(frozen=True)
class SimulationConfig:
    """``simulation:`` — closed-loop synthetic participants."""

    n: int | None = None
    temperature: float = 1.0
    #: ``own``, ``resample``, a participant id, or ``None`` (own without cohort.generate, resample with it).
    design: str | None = None
    #: ``auto``, ``ordinal`` or ``nominal``: how the report compares response distributions.
    scale: str = "auto"
    #: Participants advance in lock-step groups whose transcripts together hold at most this many tokens (the keys
    #: and values a group keeps: about 46 kB per token for SmolLM2-135M in float32).
    batch_tokens: int = 32768
    #: ``raw`` (the transcript as text) or ``chat`` (each trial a user turn, each response an assistant turn).
    format: str = "raw"

    def __post_init__(self) -> None:
        _check(
            "simulation",
            [
                ("n", self.n, self.n is None or self.n >= 1, "at least 1 participant"),
                ("temperature", self.temperature, self.temperature >= 0, "a number of at least 0"),
                ("scale", self.scale, self.scale in ("auto", "ordinal", "nominal"), "auto, ordinal or nominal"),
                ("batch_tokens", self.batch_tokens, self.batch_tokens >= 1, "a number of tokens of at least 1"),
                ("format", self.format, self.format in ("raw", "chat"), "raw or chat"),
            ],
        )


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
    save_every: int = 8
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    sha256: str = ""
    marks: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)
    #: Every study of ``data:`` (one entry per file a glob matched); ``data`` is the first.
    studies: tuple[DataConfig, ...] = ()

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
            where=validation.format_path(yaml_path),
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
                        where=validation.format_path(path),
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
                            where=validation.format_path(path + (key,)),
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
    c = section("cohort")
    entries = _entries(data.get("data"))
    for at_data, d in entries:
        problems += _study_problems(d, at_data, at, resolve, must_exist, several=len(entries) > 1)
    names: dict[str, tuple[Any, ...]] = {}
    for at_data, d in entries:
        for path in _expand(d, resolve):
            name = _study_name(d, path)
            if not name:
                continue  # named by the file's experiment values when it is read
            if name in names and names[name] != at_data + (path,):
                where = at_data + ("name",) if "name" in d else at_data + ("path",)
                problems.append(
                    at(
                        where,
                        f"two studies are named {name!r} (also {validation.format_path(names[name][:-1])}); give "
                        "each a distinct data.name",
                    )
                )
            names.setdefault(name, at_data + (path,))
    d = entries[0][1] if len(entries) == 1 else {}
    # Table suffixes are checked here too, so that a wrong one points at its line of the YAML file.
    for yaml_path, value, allowed in (
        (("data", "items", "path"), d["items"].get("path") if isinstance(d.get("items"), dict) else None, TRIAL_TABLE_SUFFIXES),
        (("cohort", "path"), c.get("path"), TABLE_SUFFIXES),
    ):
        if isinstance(value, str) and value and table_suffix(value) not in allowed:
            problems.append(at(yaml_path, f"expected a {_either(allowed)} file, found {Path(value).name!r}"))
    models = data.get("models")
    for i, m in enumerate(models if isinstance(models, list) else ()):
        if isinstance(m, dict) and "vllm" in m and m.get("backend", "hf") != "vllm":
            problems.append(
                at(("models", i, "vllm"), f"vllm: settings apply to backend: vllm only, found backend: {m.get('backend', 'hf')}")
            )
        if isinstance(m, dict) and isinstance(m.get("adapter"), str):
            target = resolve(m["adapter"])
            if not target.is_dir():
                problems.append(
                    at(("models", i, "adapter"), f"adapter folder not found: {m['adapter']!r} ({display_path(target)})")
                )
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
    if any(e.get("format") == "trials" for _, e in entries) and "cohort" in data and "path" not in c:
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


def _entries(value: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """``data:`` as (YAML path, mapping) pairs: one for a mapping, one per mapping of a list."""
    if isinstance(value, dict):
        return [(("data",), value)]
    if isinstance(value, list):
        return [(("data", i), e) for i, e in enumerate(value) if isinstance(e, dict)]
    return []


GLOB_CHARS = "*?["


def _expand(d: dict[str, Any], resolve) -> list[Path]:
    """The files a study entry names: its path, or every file its glob matches (sorted)."""
    value = d.get("path")
    if not isinstance(value, str) or not value:
        return []
    if any(ch in value for ch in GLOB_CHARS) and d.get("format") == "psych201":
        target = resolve(value)
        anchor = Path(target.anchor)
        return sorted(p for p in anchor.glob(str(target.relative_to(anchor))) if p.is_file())
    return [resolve(value)]


def _study_name(d: dict[str, Any], path: Path) -> str:
    """A study's name: ``data.name``; else a Psych-201 folder's name (``<study>/prompts.jsonl``); else "" (then the
    file's own ``experiment`` value names it, or each of its values names one study, when the file is read)."""
    if isinstance(d.get("name"), str) and not any(ch in str(d.get("path", "")) for ch in GLOB_CHARS):
        return d["name"]
    if d.get("format") == "trials":
        return d.get("experiment") or d.get("name") or ""
    if path.name.lower() in ("prompts.jsonl", "prompts.jsonl.zip") and path.parent.name:
        return path.parent.name
    return ""


def _pattern_problem(pattern: Any, groups: int | None = 1) -> str | None:
    """Why ``pattern`` is not a usable regular expression with at least ``groups`` capture groups, or None."""
    import re

    if not isinstance(pattern, str):
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return f"not a valid regular expression: {exc.msg} at character offset {exc.pos} of {pattern!r}"
    if groups and compiled.groups < groups:
        return f"expected a regular expression with a capture group (...) around the option, found {pattern!r} (no group)"
    return None


def _study_problems(d: dict[str, Any], at_data, at, resolve, must_exist, *, several: bool) -> list[Problem]:
    """Problems of one ``data`` entry that its schema cannot express."""
    problems: list[Problem] = []
    fmt = d.get("format")
    value = d.get("path")
    is_glob = isinstance(value, str) and any(ch in value for ch in GLOB_CHARS) and fmt == "psych201"
    if is_glob:
        if not _expand(d, resolve):
            problems.append(
                at(at_data + ("path",), f"the glob {value!r} matches no file (resolved against the YAML file's folder)")
            )
        if "name" in d:
            problems.append(at(at_data + ("name",), "not allowed with a glob path: each matched study is named after its file"))
    else:
        must_exist(at_data + ("path",), value, "data file")
    if several and fmt == "trials":
        problems.append(
            at(
                at_data + ("format",),
                "a list of studies takes psych201 data; a trial table is one study (give data as a mapping)",
            )
        )
    templates = d.get("templates")
    for kind, v in templates.items() if isinstance(templates, dict) else ():
        must_exist(at_data + ("templates", kind), v, f"{kind} template")
    suffixes = {"psych201": (".jsonl", ".jsonl.zip"), "trials": TRIAL_TABLE_SUFFIXES}.get(fmt)
    if suffixes and isinstance(value, str) and not is_glob:
        if not any(value.lower().endswith(sfx) for sfx in suffixes):
            found = Path(value).name
            problems.append(at(at_data + ("path",), f"expected a {_either(suffixes)} file for format {fmt}, found {found!r}"))
    opts = d.get("options")
    if opts == "infer":
        problems.append(
            at(
                at_data + ("options",),
                "options: infer is refused: it pooled every response of a study into one option set, so chance and the "
                "baselines were computed over options no trial offered. Declare what each trial offered: a list "
                "([C, W]); {pattern: ...} read on each trial's text (e.g. marked '(\\w)'); {pattern: ..., from: "
                "instructions} for keys assigned per participant; {column: ...} for trial tables; or pooled (every "
                "distinct response, with chance and pseudo-R² marked approximate)",
            )
        )
    if fmt == "trials" and opts == "pooled":
        problems.append(
            at(at_data + ("options",), "options: pooled applies to psych201 data; for trials give a list or {column, sep}")
        )
    if isinstance(opts, dict) and "pattern" in opts:
        roles = opts.get("roles")
        import re

        why = _pattern_problem(opts["pattern"])
        if why is None and isinstance(roles, list):
            n = re.compile(opts["pattern"]).groups
            if n != len(roles):
                why = f"roles name {len(roles)} groups but the pattern has {n} capture groups"
        elif why is None and isinstance(opts["pattern"], str):
            names = re.compile(opts["pattern"]).groupindex
            if "role" in names and "option" not in names:
                why = "a pattern with a group 'role' needs a group 'option' too"
        if why:
            problems.append(at(at_data + ("options", "pattern"), why))
    item = d.get("item")
    if isinstance(item, dict) and "pattern" in item:
        why = _pattern_problem(item["pattern"], groups=0)
        if why:
            problems.append(at(at_data + ("item", "pattern"), why))
    if isinstance(item, dict) and "columns" in item and fmt != "trials":
        problems.append(
            at(at_data + ("item",), "item: {columns} applies to trials data; for psych201 use text, position or {pattern}")
        )
    items = d.get("items")
    if isinstance(items, dict):
        must_exist(at_data + ("items", "path"), items.get("path"), "item table")
    if fmt == "psych201":
        for key in ("items", "layout"):
            if key in d:
                problems.append(at(at_data + (key,), "not allowed when data.format is psych201 (it applies to trials data only)"))
    if d.get("layout") == "wide" and "items" not in d:
        problems.append(at(at_data + ("layout",), "a wide table needs data.items: the item table naming each item's column"))
    return problems


def _either(suffixes: tuple[str, ...]) -> str:
    """``.a``, ``.b or .c``: a list of suffixes in words."""
    return " or ".join(suffixes) if len(suffixes) < 3 else ", ".join(suffixes[:-1]) + " or " + suffixes[-1]


def _checkpointing(value: str | bool) -> str:
    """``finetune.gradient_checkpointing`` as one of :data:`CHECKPOINTING`; psysim 0.2.0's booleans are documented
    spellings (true: ``full``, what it meant then; false: ``none``)."""
    return {True: "full", False: "none"}.get(value, value) if isinstance(value, bool) else value


def _default(cls, name: str) -> Any:
    """The default of ``cls``'s field ``name``: every default is written once, in its config class."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def _finetune(f: dict[str, Any]) -> FinetuneConfig:
    lora = f.get("lora", {})
    split = f.get("split")
    targets = lora.get("target_modules", _default(FinetuneConfig, "target_modules"))
    return FinetuneConfig(
        model=f.get("model"),
        condition=f.get("condition"),
        split=(split["train"], split["validation"], split["test"]) if split else _default(FinetuneConfig, "split"),
        rank=lora.get("rank", _default(FinetuneConfig, "rank")),
        alpha=float(lora.get("alpha", _default(FinetuneConfig, "alpha"))),
        dropout=float(lora.get("dropout", _default(FinetuneConfig, "dropout"))),
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        rslora=lora.get("rslora", _default(FinetuneConfig, "rslora")),
        learning_rate=float(f.get("learning_rate", _default(FinetuneConfig, "learning_rate"))),
        epochs=f.get("epochs", _default(FinetuneConfig, "epochs")),
        batch_size=f.get("batch_size", _default(FinetuneConfig, "batch_size")),
        max_length=f.get("max_length", _default(FinetuneConfig, "max_length")),
        patience=f.get("patience", _default(FinetuneConfig, "patience")),
        gradient_checkpointing=_checkpointing(
            f.get("gradient_checkpointing", _default(FinetuneConfig, "gradient_checkpointing"))
        ),
        batch_tokens=f.get("batch_tokens", _default(FinetuneConfig, "batch_tokens")),
        activation_budget_mib=f.get("activation_budget_mib", _default(FinetuneConfig, "activation_budget_mib")),
    )


def _study(d: dict[str, Any], path: Path, resolve, experiment_name: str) -> DataConfig:
    """One validated ``data`` entry (one file of a glob) as a :class:`DataConfig`."""
    cols = d.get("columns", {})
    opts = d.get("options")
    declared = opts if isinstance(opts, dict) else {}  # options: {pattern | column, ...}
    item = d.get("item", _default(DataConfig, "item_rule"))
    name = _study_name(d, path) or (experiment_name if d["format"] == "trials" else "")
    return DataConfig(
        format=d["format"],
        path=path,
        experiment=d.get("experiment") or (name if d["format"] == "trials" and "name" in d else None),
        participant_column=cols.get("participant", _default(DataConfig, "participant_column")),
        trial_column=cols.get("trial", _default(DataConfig, "trial_column")),
        response_column=cols.get("response", _default(DataConfig, "response_column")),
        options=tuple(opts) if isinstance(opts, list) else None,
        options_column=declared.get("column"),
        options_sep=declared.get("sep", _default(DataConfig, "options_sep")),
        options_pattern=declared.get("pattern"),
        options_from=declared.get("from", _default(DataConfig, "options_from")),
        options_roles=tuple(declared.get("roles", ())),
        pooled_options=opts == "pooled",
        item_rule=item if isinstance(item, str) else ("pattern" if "pattern" in item else "columns"),
        item_pattern=item.get("pattern") if isinstance(item, dict) else None,
        item_columns=tuple(item.get("columns", ())) if isinstance(item, dict) else (),
        outside_options=d.get("outside_options", _default(DataConfig, "outside_options")),
        templates={kind: resolve(value) for kind, value in d.get("templates", {}).items()},
        separator=d.get("separator", _default(DataConfig, "separator")),
        items=resolve(d["items"]["path"]) if "items" in d else None,
        items_key=d.get("items", {}).get("key", _default(DataConfig, "items_key")),
        layout=d.get("layout", _default(DataConfig, "layout")),
        name=name,
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
        return Problem(message, file=shown, where=validation.format_path(yaml_path), line=line, column=col)

    if data is None:
        raise ConfigError(
            f"experiment file is empty: {shown}",
            [Problem("expected a mapping of keys, found an empty file (or only comments)", file=shown)],
        )
    validator = Draft202012Validator(experiment_schema())
    for yaml_path, message in validation.iter_described(validator, data):
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

    studies = tuple(_study(d, path, resolve, data["name"]) for _, d in _entries(data["data"]) for path in _expand(d, resolve))
    c = data["cohort"]
    cohort_cfg = CohortConfig(
        schema=resolve(c["schema"]),
        path=resolve(c["path"]) if "path" in c else None,
        id_column=c.get("id", _default(CohortConfig, "id_column")),
        missing=tuple(c.get("missing", _default(CohortConfig, "missing"))),
        sample=c.get("sample"),
        unmatched=c.get("unmatched", _default(CohortConfig, "unmatched")),
        generate=c.get("generate"),
        split=(resolve(c["split"]["file"]), c["split"]["part"]) if "split" in c else None,
    )
    models = [
        ModelConfig(
            name=m["name"],
            source=m.get("source", m["name"]),
            backend=m.get("backend", _default(ModelConfig, "backend")),
            formats=tuple(m.get("formats", _default(ModelConfig, "formats"))),
            chat_template=m.get("chat_template"),
            dtype=m.get("dtype", _default(ModelConfig, "dtype")),
            device=m.get("device", _default(ModelConfig, "device")),
            adapter=m.get("adapter"),
            trust_remote_code=m.get("trust_remote_code", _default(ModelConfig, "trust_remote_code")),
            batch_tokens=m.get("batch_tokens", _default(ModelConfig, "batch_tokens")),
            vllm=tuple(sorted(m.get("vllm", {}).items())),
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
        data=studies[0],
        studies=studies,
        cohort=cohort_cfg,
        models=tuple(models),
        conditions=tuple(conditions),
        output=output,
        persona_format=persona_format,
        context_policy=data.get("scoring", {}).get("context", _default(ExperimentConfig, "context_policy")),
        save_every=data.get("scoring", {}).get("save_every", _default(ExperimentConfig, "save_every")),
        evaluation=EvaluationConfig(
            baselines=tuple(ev.get("baselines", _default(EvaluationConfig, "baselines"))),
            folds=None if ev.get("cross_validation", "leave_one_out") == "leave_one_out" else ev["cross_validation"],
            bootstrap=ev.get("bootstrap", _default(EvaluationConfig, "bootstrap")),
            post_training=tuple((p["base"], p["post_trained"]) for p in ev.get("post_training", [])),
            fine_tuning=tuple((p["base"], p["fine_tuned"]) for p in ev.get("fine_tuning", [])),
        ),
        simulation=SimulationConfig(
            n=data.get("simulation", {}).get("n"),
            temperature=float(data.get("simulation", {}).get("temperature", _default(SimulationConfig, "temperature"))),
            design=data.get("simulation", {}).get("design"),
            scale=data.get("simulation", {}).get("scale", _default(SimulationConfig, "scale")),
            batch_tokens=data.get("simulation", {}).get("batch_tokens", _default(SimulationConfig, "batch_tokens")),
            format=data.get("simulation", {}).get("format", _default(SimulationConfig, "format")),
        ),
        finetune=_finetune(data.get("finetune", {})),
        description=data.get("description", ""),
        raw=data,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        marks=marks,
    )
