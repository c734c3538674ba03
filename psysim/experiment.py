"""An experiment, loaded and checked: participants, transcripts, conditions, models, and prompts.

This is the Python API behind ``psysim validate`` and ``psysim render``::

    import psysim
    exp = psysim.load_experiment("experiments/quickstart.yaml")
    print(exp.summary())
    prompt = exp.render("1", "persona", format="chat")
    prompt.text, prompt.spans

Loading checks everything that can be checked without a model: the experiment
file, the profile schema, every profile, the data, every template (statically
and by rendering each participant's persona and transcript), and chat templates.
All problems are reported together.
"""

from __future__ import annotations

import os
import random
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import ConditionConfig, ExperimentConfig, ModelConfig, load_config
from .data.studies import StudyProfile, apply_rules, pooled_options, profile_study
from .data.transcripts import CLOSE, OPEN, Transcript, read_psych201
from .data.trials import StructuredTask
from .errors import DataError, ModelError, Problem, PsysimError, TemplateError, raise_if
from .files import Location, display_path
from .participants import Cohort, Profile, ProfileSchema, cohort_from_records, load_cohort
from .render.chat import ChatTemplate, chat_template_for
from .render.persona import PERSONA_NAMES, derangement, render_persona
from .render.prompt import Prompt, assemble
from .templating import Template, load_template, resolve_template

__all__ = ["Experiment", "Prompt", "Summary", "load_experiment"]


@dataclass
class Summary:
    """Counts describing a loaded experiment (what ``psysim validate`` prints)."""

    name: str
    config: str
    data: str
    participants: int
    responses: int
    responses_per_participant: tuple[int, float, int]
    scorable: int
    profile_fields: dict[str, int]
    conditions: list[str]
    models: list[str]
    output: str
    experiments: list[str] = field(default_factory=list)
    cohort_size: int = 0
    #: Trials of the participants (responses included); equals ``responses`` for Psych-201 data.
    trials: int = 0
    #: Participants with at least one trial without a human response.
    missing_in: int = 0
    #: ``cohort.unmatched: drop``: (profiles without data, data without a profile) dropped; None under ``error``.
    dropped: tuple[int, int] | None = None
    #: Where profiles and data come from (for the dropped line).
    sources: tuple[str, str] = ("", "")
    #: Per field, the values an ``"invalid": "missing"`` field treated as unknown.
    invalid_fields: dict[str, int] = field(default_factory=dict)
    #: Per study: its option and item rules, options per trial, items and responses per item.
    studies: list[StudyProfile] = field(default_factory=list)
    #: ``cohort.split`` in words (which part of which split file), or None.
    split: str | None = None
    #: ``cohort.generate`` in words (what ``psysim simulate`` draws), or None.
    generate: str | None = None
    #: The ``finetune:`` section in words (what ``psysim finetune`` trains), or None when the file has none.
    finetune: tuple[str, str] | None = None

    def __str__(self) -> str:
        lo, med, hi = self.responses_per_participant
        known = (
            ", ".join(
                f"{k} {v}" + (f" ({n} invalid, treated as unknown)" if (n := self.invalid_fields.get(k)) else "")
                for k, v in self.profile_fields.items()
            )
            or "none"
        )
        rows = [
            ("experiment", f"{self.name} ({', '.join(self.experiments)})"),
            ("data", self.data),
            (
                "participants",
                f"{self.participants}"
                + (f" (a seeded sample of {self.cohort_size})" if self.cohort_size > self.participants else ""),
            ),
        ]
        if self.split:
            rows.append(("split", self.split))
        if self.dropped is not None:
            no_data, no_profile = self.dropped
            rows.append(
                (
                    "dropped",
                    f"{no_data} with a profile but no data in {self.sources[1]}, "
                    f"{no_profile} with data but no profile in {self.sources[0]} (cohort.unmatched: drop)",
                )
            )
        rows.append(("responses", f"{self.responses} (per participant: median {med:g}, min {lo}, max {hi})"))
        if self.responses < self.trials:
            rows.append(("missing", self._missing()))
        rows.append(("profiles", f"known fields: {known}"))
        if self.generate:
            rows.append(("synthetic", self.generate))
        for study in self.studies:
            rows.append(("study", f"{study.name}: {study.participants} participants, {study.responses} responses"))
            rows += [(f"  {k}" if k else "", v) for k, v in study.lines()]
        rows += [
            ("conditions", ", ".join(self.conditions)),
            ("models", ", ".join(self.models)),
        ]
        if self.finetune:
            rows += [("finetune", self.finetune[0]), ("  training", self.finetune[1])]
        rows.append(("output", self.output))
        return "\n".join(f"  {k:<13}{v}" for k, v in rows)

    def _missing(self) -> str:
        n = self.trials - self.responses
        if not self.responses:
            return f"no human response on any of the {self.trials} trials: nothing to score (simulation only)"
        text = (
            f"{n} of {self.trials} trials {'has' if n == 1 else 'have'} no human response "
            f"({self.missing_in} participant{'s' if self.missing_in != 1 else ''}); "
            "they are left out of the transcripts: not shown to the models, not scored"
        )
        if none := self.participants - self.scorable:
            text += f"; {none} participant{'s have' if none != 1 else ' has'} no response at all (simulation only)"
        return text


class Experiment:
    """A fully loaded and checked experiment. Build it with :func:`load_experiment`."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        problems: list[Problem] = []
        # Each stage raises its own error listing everything wrong at that stage; later
        # stages depend on earlier ones, so they run only when those passed.
        self.schema = ProfileSchema.load(config.cohort.schema)
        self.task: StructuredTask | None = None
        self.transcripts: dict[str, Transcript] = {}
        #: The studies by name (one entry of ``data:`` per study; a glob gives one per file).
        self.studies = {s.name: s for s in config.studies if s.name} if config.studies else {config.data.name: config.data}
        #: Each participant's study (Psych-201 data; a trial table is one study).
        self.study_of: dict[str, str] = {}
        self._lines: dict[str, tuple[str, int]] = {}
        #: With ``cohort.unmatched: drop``: ids with a profile but no data, and with data but no profile.
        self.dropped: tuple[list[str], list[str]] = ([], [])
        self.cohort = self._load_data()
        self.participants: list[str] = list(self.cohort.profiles)
        problems += self._match_participants()
        raise_if(problems, DataError, "participants and data do not match")
        self.cohort_size = len(self.participants)
        if config.cohort.sample is not None:
            self.participants = self._sample(config.cohort.sample)
        if config.cohort.split is not None:
            self.participants = self._split_part(*config.cohort.split)
        if self.task:
            # Rendered only for the participants in the experiment: a sample of a large
            # questionnaire renders its few hundred transcripts, not tens of thousands.
            self._render_transcripts()
        self._apply_study_rules()
        #: Studies none of whose participants has a known profile field: persona conditions are skipped there.
        self.no_profiles: set[str] = self._studies_without_profiles()
        self.persona_templates = self._load_persona_templates()
        self.chat_templates = self._load_chat_templates()
        self.shuffle: dict[str, str] = self._derange()
        self._check_rendering()

    # -- loading -----------------------------------------------------------
    def _sample(self, n: int) -> list[str]:
        """``cohort.sample``: a seeded sample of ``n`` participants per study, in cohort order."""
        groups: dict[str, list[int]] = {}
        for i, pid in enumerate(self.participants):
            groups.setdefault(self._experiment_of(pid), []).append(i)
        keep: set[int] = set()
        for members in groups.values():
            # random.sample draws positions, not values: one study draws the same people as before studies existed.
            keep.update(members if n >= len(members) else random.Random(self.config.seed).sample(members, n))
        return [p for i, p in enumerate(self.participants) if i in keep]

    def _studies_without_profiles(self) -> set[str]:
        known: dict[str, bool] = {}
        for pid in self.participants:
            study = self._experiment_of(pid)
            known[study] = known.get(study, False) or bool(self.cohort.profiles[pid].values)
        return {s for s, k in known.items() if not k}

    def conditions_for(self, participant: str) -> list[ConditionConfig]:
        """The conditions ``participant`` is scored under: persona conditions only where their study has profiles."""
        if self._experiment_of(participant) in self.no_profiles:
            return [c for c in self.config.conditions if c.type == "no_persona"]
        return list(self.config.conditions)

    def _split_part(self, path: Path, part: str) -> list[str]:
        """``cohort.split``: the participants of one part of a split.json (psysim finetune), in cohort order."""
        import json

        from .files import read_text

        shown = display_path(path)
        try:
            data = json.loads(read_text(path, error=DataError, what="split file"))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"split file is not valid JSON: {shown}",
                [Problem(f"invalid JSON: {exc.msg}", file=shown, line=exc.lineno, column=exc.colno)],
            ) from None
        ids = data.get(part) if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(
                f"invalid split file {shown}",
                [
                    Problem(
                        f"expected a JSON object whose {part!r} is a list of participant ids (as psysim finetune writes)",
                        file=shown,
                    )
                ],
            )
        unknown = [i for i in ids if i not in self.cohort.profiles]
        if unknown:
            raise DataError(
                f"the split file {shown} names participants this experiment does not have",
                [Problem(f"{part}: unknown participant ids, e.g. {', '.join(unknown[:5])} ({len(unknown)} in all)", file=shown)],
            )
        if not ids:
            raise DataError(f"the {part!r} part of {shown} is empty: no participant to evaluate")
        chosen = set(ids)
        return [p for p in self.participants if p in chosen]

    def _load_data(self) -> Cohort:
        c = self.config
        if c.data.format == "psych201":
            several = len(c.studies) > 1
            located = []
            for study in c.studies:
                shown = display_path(study.path)
                prefix = f"{study.name or _stem(study.path)}/" if several else ""
                records = read_psych201(study.path, study=study.name or None, prefix=prefix)
                for r in records:
                    name = r.transcript.experiment
                    self.studies.setdefault(name, replace(study, name=name))
                    self.transcripts[r.transcript.participant] = r.transcript
                    self.study_of[r.transcript.participant] = name
                    self._lines[r.transcript.participant] = (shown, r.line)
                    located.append((r.transcript.participant, r.profile, Location(shown, line=r.line)))
            if c.cohort.path is None:
                return cohort_from_records(self.schema, located, c.cohort.missing, ", ".join(self._data_files()))
        else:
            self.task = StructuredTask(c.data, c.data.experiment or c.name, c.cohort.missing)
            if c.cohort.path == c.data.path and self.task.wide:
                # The wide table is its own cohort file: its response columns are not profile
                # fields, and without a participant column its rows number both alike.
                row_numbers = self.task.row_numbers and c.cohort.id_column == "participant"
                return load_cohort(
                    c.cohort.path,
                    self.schema,
                    id_column=None if row_numbers else c.cohort.id_column,
                    missing=c.cohort.missing,
                    exclude=[*self.task.response_columns, c.data.participant_column],
                )
        return load_cohort(c.cohort.path, self.schema, id_column=c.cohort.id_column, missing=c.cohort.missing)

    def _data_files(self) -> list[str]:
        return [display_path(s.path) for s in self.config.studies]

    def _apply_study_rules(self) -> None:
        """Every response's options, roles and item from its study's rules (:mod:`psysim.data.studies`); all problems at once."""
        by_study: dict[str, list[str]] = {}
        for pid in self.transcripts:
            by_study.setdefault(self._experiment_of(pid), []).append(pid)
        problems: list[Problem] = []
        for name, ids in by_study.items():
            study = self.studies.get(name, self.config.data)
            pooled = pooled_options(self.transcripts[p] for p in ids) if study.pooled_options else None
            for pid in ids:
                file, line = self._lines.get(pid, (display_path(study.path), None))
                self.transcripts[pid], found = apply_rules(self.transcripts[pid], study, pooled=pooled, file=file, line=line)
                problems += found
        raise_if(problems, DataError, "responses and their trials' options or items do not fit the study's rules")

    def _render_transcripts(self) -> None:
        """Each participant's transcript from the trial table: the trials with a human response."""
        problems = []
        for pid in self.participants:
            if self.task.n_responses(pid):
                try:
                    self.transcripts[pid] = self.task.transcript(pid)
                except PsysimError as exc:
                    problems += exc.problems
        raise_if(problems, TemplateError, "cannot render the trial table into transcripts")

    def _match_participants(self) -> list[Problem]:
        """Problems of participants with a profile but no data or data but no profile; ``drop`` keeps those with both."""
        shown = ", ".join(self._data_files())
        if self.task:
            data_where = self.task.where
        else:
            data_where = {pid: Location(file, line=line) for pid, (file, line) in self._lines.items()}
        if self.config.cohort.unmatched == "drop":
            no_data = [pid for pid in self.participants if pid not in data_where]
            no_profile = [pid for pid in data_where if pid not in self.cohort.profiles]
            self.dropped = (no_data, no_profile)
            self.participants = [pid for pid in self.participants if pid in data_where]
            for pid in no_profile:
                self.transcripts.pop(pid, None)
            if self.participants:
                return []
            return [
                Problem(
                    f"no participant has both a profile in {self.cohort.source} and data in {shown} "
                    f"(cohort.unmatched: drop dropped {len(no_data)} profiles and {len(no_profile)} participants' data); "
                    f"profile ids are e.g. {_examples(list(self.cohort.profiles))}, data ids e.g. {_examples(list(data_where))}"
                )
            ]
        problems = [
            self.cohort.where[pid].problem(f"has a profile but no transcript in {shown}", f"participant {pid}")
            for pid in self.participants
            if pid not in data_where
        ]
        problems += [
            where.problem(f"has data but no profile in {self.cohort.source}", f"participant {pid}")
            for pid, where in data_where.items()
            if pid not in self.cohort.profiles
        ]
        return problems

    def _load_persona_templates(self) -> dict[str, Template]:
        out: dict[str, Template] = {}
        loaded: dict[Path, Template] = {}
        problems: list[Problem] = []
        allowed: dict[str, set[str] | None] = {name: None for name in PERSONA_NAMES}
        allowed["profile"] = set(self.schema.fields)
        for i, cond in enumerate(self.config.conditions):
            if cond.type == "no_persona":
                continue
            raw = self.config.raw["conditions"][i]
            if isinstance(raw, dict) and "format" in raw:
                yaml_path: tuple = ("conditions", i, "format")
            elif "format" in self.config.raw.get("persona", {}):
                yaml_path = ("persona", "format")
            else:
                yaml_path = ("conditions", i)
            try:
                path = resolve_template(cond.format, "persona", self.config.folder)
            except KeyError as exc:
                problems.append(self.config.problem(yaml_path, exc.args[0]))
                continue
            if path not in loaded:  # conditions may share a template: check it once
                loaded[path] = load_template(path, "persona")
                problems += loaded[path].check_names(allowed)
            out[cond.name] = loaded[path]
        raise_if(problems, TemplateError, "invalid persona templates")
        return out

    def _load_chat_templates(self) -> dict[str, ChatTemplate]:
        out: dict[str, ChatTemplate] = {}
        problems: list[Problem] = []
        for m in self.config.models:
            # Needed to score the chat format; also loaded when named, so `psysim render --chat` can show it.
            if "chat" not in m.formats and not m.chat_template:
                continue
            try:
                out[m.name] = chat_template_for(m, self.config.folder)
            except ModelError as exc:
                problems.append(self.config.problem(("models", m.index), exc.message))
        raise_if(problems, ModelError, "no chat template for a model that uses the chat format")
        return out

    def _derange(self) -> dict[str, str]:
        if not any(c.type == "shuffled_persona" for c in self.config.conditions):
            return {}
        groups: dict[str, list[str]] = {}
        for pid in self.participants:
            if self._experiment_of(pid) not in self.no_profiles:  # no profiles: persona conditions are skipped there
                groups.setdefault(self._experiment_of(pid), []).append(pid)
        mapping: dict[str, str] = {}
        problems = []
        for experiment, ids in groups.items():
            if len(ids) < 2:
                problems.append(
                    Problem(f"shuffled_persona needs at least two participants per experiment; {experiment!r} has {len(ids)}")
                )
                continue
            mapping.update(derangement(ids, self.config.seed))
        raise_if(problems, DataError, "cannot build the shuffled_persona control")
        return mapping

    def _check_rendering(self) -> None:
        problems: list[Problem] = []
        for cond in self.config.conditions:
            if cond.type == "no_persona":
                continue
            for pid in self.participants:
                if self._experiment_of(pid) in self.no_profiles:
                    continue
                try:
                    self.persona(pid, cond.name)
                except PsysimError as exc:
                    problems += exc.problems
        # A chat template may refuse a conversation's shape (e.g. two assistant turns in a
        # row), which varies by participant; personas change only the first user turn.
        # So: every participant under the first condition, every condition for one participant.
        first_condition = self.config.conditions[0].name
        scorable = [p for p in self.participants if p in self.transcripts]
        pairs = [(pid, first_condition) for pid in scorable]
        pairs += [(pid, c.name) for pid in scorable[:1] for c in self.config.conditions[1:]]
        for model in self.config.models:
            if model.name not in self.chat_templates:
                continue
            for pid, condition in pairs:
                try:
                    self.render(pid, condition, format="chat", model=model.name)
                except PsysimError as exc:
                    problems += exc.problems
                    break  # one located example per model is enough to act on
        raise_if(problems, TemplateError, "cannot render prompts")

    # -- public API ----------------------------------------------------------
    def study(self, participant: str) -> str:
        """The name of ``participant``'s study (the ``experiment`` column of every result table)."""
        return self._experiment_of(participant)

    def _experiment_of(self, pid: str) -> str:
        if pid in self.study_of:
            return self.study_of[pid]
        t = self.transcripts.get(pid)
        return t.experiment if t else (self.task.experiment if self.task else self.config.name)

    def condition(self, name: str | None) -> ConditionConfig:
        """The condition called ``name`` (the first condition if ``None``)."""
        if name is None:
            return self.config.conditions[0]
        for c in self.config.conditions:
            if c.name == name:
                return c
        raise PsysimError(f"unknown condition {name!r}; this experiment has: {', '.join(c.name for c in self.config.conditions)}")

    def model(self, name: str | None) -> ModelConfig:
        """The model called ``name`` (the first model if ``None``)."""
        if name is None:
            return self.config.models[0]
        for m in self.config.models:
            if m.name == name:
                return m
        raise PsysimError(f"unknown model {name!r}; this experiment has: {', '.join(m.name for m in self.config.models)}")

    def profile(self, participant: str) -> Profile:
        """The validated profile of ``participant``."""
        if participant not in self.participants:
            close = ", ".join(self.participants[:5]) + (", ..." if len(self.participants) > 5 else "")
            if participant in self.cohort.profiles:
                raise PsysimError(
                    f"participant {participant!r} is in the cohort but not in this experiment's sample "
                    f"(cohort.sample: {self.config.cohort.sample}); participants are e.g. {close}"
                )
            raise PsysimError(f"unknown participant {participant!r}; participants are e.g. {close}")
        return self.cohort.profiles[participant]

    def persona(self, participant: str, condition: str) -> tuple[str, str | None]:
        """``(conditioning text, whose profile)`` for ``participant`` under ``condition``."""
        cond = self.condition(condition)
        self.profile(participant)
        if cond.type == "no_persona":
            return "", None
        if self._experiment_of(participant) in self.no_profiles:
            raise PsysimError(
                f"study {self._experiment_of(participant)} has no profile fields, so condition {condition} "
                f"({cond.type}) is skipped for its participants; only no_persona conditions apply to participant {participant}"
            )
        source = self.shuffle[participant] if cond.type == "shuffled_persona" else participant
        text = render_persona(
            self.persona_templates[cond.name],
            self.cohort.profiles[source],
            self.schema,
            experiment=self._experiment_of(participant),
        )
        if OPEN in text or CLOSE in text:
            # The persona is read as part of a Psych-201-style transcript, where << >>
            # mark responses: a delimiter in it would make exported transcripts ambiguous.
            profile = self.cohort.profiles[source]
            fields = [k for k, v in profile.text.items() if OPEN in v or CLOSE in v]
            raise DataError(
                f"the persona of participant {source} contains a response delimiter",
                [
                    Problem(
                        f"the value {profile.text[f]!r} contains '<<' or '>>', which mark responses in transcripts; "
                        "use value_labels in the schema to give it other words",
                        file=self.cohort.source,
                        where=f"participant {source}, field {f}",
                    )
                    for f in fields
                ]
                or [Problem("the persona template writes '<<' or '>>'", where=f"condition {cond.name}")],
            )
        return text, source

    def transcript(self, participant: str) -> Transcript:
        """The participant's transcript (human responses)."""
        self.profile(participant)
        if participant not in self.transcripts:
            raise DataError(f"participant {participant} has no human response on any trial, so there is no transcript to score")
        return self.transcripts[participant]

    def render(
        self, participant: str, condition: str, *, format: str = "raw", model: str | None = None, drop_oldest: int = 0
    ) -> Prompt:
        """Exactly what ``model`` reads for ``participant`` under ``condition`` in ``format`` (raw or chat).

        Raw: the persona text followed by the transcript exactly as given (for
        ``no_persona`` on Psych-201 data, byte for byte the file's ``text``).
        Chat: the same content through the model's chat template, one user turn
        per context and one assistant turn per response. ``drop_oldest`` removes
        that many of the oldest trials (keeping persona and instructions), for
        transcripts longer than a model's context.
        """
        transcript = self.transcript(participant).without_first(drop_oldest)
        persona, source = self.persona(participant, condition)
        chat_template = None
        if format == "chat":
            m = self.model(model)
            if m.name not in self.chat_templates:
                raise PsysimError(
                    f"model {m.name!r} has no chat template here; add 'chat' to its formats or set its chat_template"
                )
            chat_template = self.chat_templates[m.name]
        return assemble(participant, condition, format, transcript, persona, source, chat_template)

    def prompts(self, condition: str, *, format: str = "raw", model: str | None = None):
        """Prompts of every scorable participant under ``condition``, in cohort order."""
        for pid in self.participants:
            if pid in self.transcripts:
                yield self.render(pid, condition, format=format, model=model)

    def summary(self) -> Summary:
        """Counts for ``psysim validate``."""
        if self.task:
            counts_all = [self.task.n_responses(p) for p in self.participants]
            trials = sum(self.task.n_trials(p) for p in self.participants)
            missing_in = sum(not self.task.complete(p) for p in self.participants)
        else:
            counts_all = [len(self.transcripts[p].responses) for p in self.participants]
            trials, missing_in = sum(counts_all), 0
        known = {name: sum(name in self.cohort[p].values for p in self.participants) for name in self.schema.fields}
        invalid = {name: sum(name in self.cohort[p].invalid for p in self.participants) for name in self.schema.fields}
        conds = [
            c.name
            + (f" ({Path(c.format).stem})" if c.type != "no_persona" else "")
            + (f" [{c.type}]" if c.name != c.type else "")
            for c in self.config.conditions
        ]
        models = [f"{m.name} ({', '.join(m.formats)}{'; ' + m.backend if m.backend != 'hf' else ''})" for m in self.config.models]
        experiments = sorted({self._experiment_of(p) for p in self.participants})
        d = self.config.data
        kind = "Psych-201 JSONL" if d.format == "psych201" else "trial table"
        if len(self.config.studies) > 1:
            kind += f", {len(self.config.studies)} studies"
        if d.format == "trials" and d.layout == "wide":
            n_items = len(self.task.response_columns)
            kind = f"wide trial table: one row per participant, {n_items} items of {display_path(d.items)}"
        elif d.format == "trials" and d.items is not None:
            kind += f", joined with the item table {display_path(d.items)} by {d.items_key}"
        data = f"{', '.join(self._data_files())} ({kind})"
        return Summary(
            name=self.config.name,
            config=display_path(self.config.path),
            data=data,
            participants=len(self.participants),
            cohort_size=self.cohort_size,
            responses=sum(counts_all),
            responses_per_participant=(min(counts_all), statistics.median(counts_all), max(counts_all)),
            scorable=sum(p in self.transcripts for p in self.participants),
            profile_fields=known,
            conditions=conds,
            models=models,
            output=display_path(self.config.output),
            experiments=experiments,
            trials=trials,
            missing_in=missing_in,
            dropped=tuple(len(ids) for ids in self.dropped) if self.config.cohort.unmatched == "drop" else None,
            sources=(self.cohort.source, ", ".join(self._data_files())),
            invalid_fields={k: v for k, v in invalid.items() if v},
            studies=self.study_profiles(),
            split=self._split_line(),
            generate=self._generate_line(),
            finetune=self._finetune_lines(),
        )

    def _split_line(self) -> str | None:
        split = self.config.cohort.split
        if split is None:
            return None
        file, part = split
        return f"the {part} part of {display_path(file)} (written by psysim finetune): {len(self.participants)} participants"

    def _finetune_lines(self) -> tuple[str, str] | None:
        if "finetune" not in self.config.raw:
            return None
        ft = self.config.finetune
        targets = ft.target_modules if isinstance(ft.target_modules, str) else ", ".join(ft.target_modules)
        train, validation, test = ft.split
        adapter = (
            f"LoRA rank {ft.rank}, alpha {ft.alpha:g}{' (rsLoRA)' if ft.rslora else ''}, dropout {ft.dropout:g} on "
            f"{targets} of {self.model(ft.model).name}, trained on the {self.condition(ft.condition).name} "
            f"prompts of {train:.0%} of the participants (validation {validation:.0%}, test {test:.0%})"
        )
        training = (
            f"{ft.epochs} epochs, batches of {ft.batch_size} in parts of at most {ft.batch_tokens} tokens, learning rate "
            f"{ft.learning_rate:g}, patience {ft.patience}, max length {ft.max_length}, gradient checkpointing "
            f"{ft.gradient_checkpointing}"
        )
        if ft.gradient_checkpointing == "auto":  # psysim.finetune.choose_checkpointing's rule
            training += f" (none while a part keeps at most {ft.activation_budget_mib} MiB of activations, else selective)"
        return adapter, training

    def _generate_line(self) -> str | None:
        gen = self.config.cohort.generate
        if not gen:
            return None
        n = self.config.simulation.n
        how = []
        if gen.get("resample"):
            how.append("each a real participant's profile drawn with replacement")
        fields = list(gen.get("fields", {}))
        if fields:
            how.append(f"{', '.join(fields)} drawn from cohort.generate")
        size = f"{n} profiles" if n else "profiles (as many as --n or simulation.n asks)"
        return f"psysim simulate draws {size}: {'; '.join(how) or 'no field drawn'}"

    def study_profiles(self) -> list[StudyProfile]:
        """Per study (in ``data:`` order): options per trial, items, responses per item, example trials."""
        by_study: dict[str, list[Transcript]] = {name: [] for name in self.studies}
        for pid in self.participants:
            if pid in self.transcripts:
                by_study.setdefault(self._experiment_of(pid), []).append(self.transcripts[pid])
        return [
            profile_study(name, self.studies.get(name, self.config.data), ts, has_profiles=name not in self.no_profiles)
            for name, ts in by_study.items()
            if ts
        ]


def _stem(path: Path) -> str:
    """A data file's name without its suffixes (``studies/a.jsonl.zip`` → ``a``)."""
    name = path.name
    for suffix in (".jsonl.zip", ".jsonl", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _examples(ids: list[str], most: int = 5) -> str:
    return ", ".join(ids[:most]) + (", ..." if len(ids) > most else "") if ids else "none"


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Load and check an experiment file and everything it names. Raises :class:`~psysim.errors.PsysimError`."""
    return Experiment(load_config(path))
