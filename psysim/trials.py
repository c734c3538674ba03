"""Structured experiments: a trial table plus Jinja templates, rendered into transcripts.

The table (CSV or Parquet) has one row per participant × trial: the
participant id, a trial number, stimulus fields, the options (a fixed list
in the YAML, or a column listing them), and the human response where known.
Templates turn it into the same transcript form Psych-201 uses, responses
in ``<<...>>``:

* ``instructions`` (optional): once, before the first trial;
* ``trial``: once per trial; it must place ``{{ response }}`` exactly once,
  where the response goes (e.g. ``... You choose {{ response }}.``);
* ``feedback`` (optional): after each response; ``response`` is the option
  chosen, so outcome columns can be looked up (``row['payoff_' ~ response]``).

Every table column is a template variable, and all are under ``row`` too
(``row['column with spaces']``). psysim provides ``participant``, ``trial``
(0-based position of the trial), ``n_trials``, ``options``, ``response`` and
``row``; these names take precedence over columns of the same name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import DataConfig
from .errors import DataError, Problem, TemplateError, raise_if
from .files import Location, Table, read_table
from .participants import is_missing, participant_id
from .prompts import Template, load_template
from .transcripts import CLOSE, OPEN, Transcript, build_transcript

__all__ = ["StructuredTask", "Trial", "load_structured"]

_RESPONSE_SLOT = "\ue002"
_PROVIDED = ("participant", "trial", "n_trials", "options", "response", "row")


@dataclass(frozen=True)
class Trial:
    """One row of the trial table: ``index`` is its 0-based position, ``number`` its trial number in the table."""

    participant: str
    index: int
    number: int
    row: dict[str, Any]
    options: tuple[str, ...] | None
    response: str | None
    where: Location


class StructuredTask:
    """A trial table with its templates; renders trials for scoring and for closed-loop simulation."""

    def __init__(self, config: DataConfig, experiment: str, missing: tuple[str, ...]):
        self.config = config
        self.experiment = experiment
        self.missing = frozenset(missing)
        self.table: Table = read_table(config.path, what="trial table")
        self.shown = self.table.path
        self.templates: dict[str, Template] = {k: load_template(p, k) for k, p in config.templates.items()}
        problems = self._check_columns()
        raise_if(problems, DataError, f"invalid trial table {self.shown}")
        self.trials: dict[str, list[Trial]] = self._group()
        raise_if(self._check_templates(), TemplateError, "invalid templates")

    # -- table ---------------------------------------------------------------
    def _check_columns(self) -> list[Problem]:
        c = self.config
        problems = []
        needed = [("participant", c.participant_column), ("trial", c.trial_column)]
        if c.options_column:
            needed.append(("options", c.options_column))
        for role, col in needed:
            if col not in self.table.columns:
                problems.append(
                    Problem(f"expected a {role} column {col!r}, found columns: {', '.join(self.table.columns)}", file=self.shown)
                )
        if not self.table.rows:
            problems.append(Problem("the trial table has no rows", file=self.shown))
        return problems

    def _group(self) -> dict[str, list[Trial]]:
        c = self.config
        problems: list[Problem] = []
        rows_by: dict[str, list[tuple[int, int]]] = {}
        for i, row in enumerate(self.table.rows):
            loc = self.table.location(i)
            pid = participant_id(row.get(c.participant_column))
            if pid is None:
                problems.append(
                    loc.problem(
                        f"expected a participant id in column {c.participant_column!r}, found {row.get(c.participant_column)!r}"
                    )
                )
                continue
            number = _trial_number(row.get(c.trial_column))
            if number is None:
                problems.append(
                    loc.problem(
                        f"expected an integer trial number in column {c.trial_column!r}, found {row.get(c.trial_column)!r}",
                        f"participant {pid}",
                    )
                )
                continue
            rows_by.setdefault(pid, []).append((number, i))
        out: dict[str, list[Trial]] = {}
        for pid, numbered in rows_by.items():
            numbered.sort()
            seen: dict[int, Location] = {}
            trials = []
            for number, i in numbered:
                loc = self.table.location(i)
                who = f"participant {pid}, trial {number}"
                if number in seen:
                    problems.append(loc.problem(f"trial {number} appears twice (also {seen[number]})", f"participant {pid}"))
                    continue
                seen[number] = loc
                row = self.table.rows[i]
                options, found = self._options(row, loc, who)
                problems += found
                response = row.get(c.response_column)
                response = None if is_missing(response, self.missing) else str(response).strip()
                if response is not None:
                    problems += self._check_response(response, options, loc, who)
                trials.append(Trial(pid, len(trials), number, dict(row), options, response, loc))
            out[pid] = trials
        raise_if(problems, DataError, f"invalid trial table {self.shown}")
        return out

    def _options(self, row: dict[str, Any], loc: Location, who: str) -> tuple[tuple[str, ...] | None, list[Problem]]:
        c = self.config
        if c.options is not None:
            return c.options, []
        if c.options_column is None:
            return None, []
        cell = row.get(c.options_column)
        if is_missing(cell, self.missing):
            return None, [loc.problem(f"no options in column {c.options_column!r}", who)]
        options = tuple(o.strip() for o in str(cell).split(c.options_sep))
        if len(options) < 2 or "" in options or len(set(options)) != len(options):
            message = (
                f"expected at least two distinct, non-empty options separated by {c.options_sep!r} "
                f"in column {c.options_column!r}, found {cell!r}"
            )
            return None, [loc.problem(message, who)]
        return options, []

    def _check_response(self, response: str, options: tuple[str, ...] | None, loc: Location, who: str) -> list[Problem]:
        problems = []
        if options is not None and response not in options:
            problems.append(loc.problem(f"response {response!r} is not one of the options {list(options)}", who))
        if OPEN in response or CLOSE in response:
            problems.append(loc.problem(f"response {response!r} contains a '<<' or '>>' delimiter", who))
        return problems

    # -- templates -----------------------------------------------------------
    def _check_templates(self) -> list[Problem]:
        columns = set(self.table.columns)
        names: dict[str, set[str] | None] = {col: None for col in columns if col.isidentifier()}
        names.update({name: None for name in _PROVIDED})
        names["row"] = columns
        problems = []
        for kind, template in self.templates.items():
            allowed = {"participant": None, "n_trials": None, "options": None} if kind == "instructions" else names
            problems += template.check_names(allowed)
        if problems:
            return problems
        # Render each participant's first trial to check the response slot.
        first = next(iter(self.trials.values()))[0]
        text = self._render("trial", first, _RESPONSE_SLOT, len(self.trials[first.participant]))
        if text.count(_RESPONSE_SLOT) != 1:
            problems.append(
                Problem(
                    f"the trial template must place {{{{ response }}}} exactly once, found it {text.count(_RESPONSE_SLOT)} times",
                    file=self.templates["trial"].shown,
                )
            )
        return problems

    def _context(self, trial: Trial, response: str | None, n_trials: int) -> dict[str, Any]:
        context = {k: v for k, v in trial.row.items() if k.isidentifier()}
        context.update(
            participant=trial.participant,
            trial=trial.index,
            n_trials=n_trials,
            options=list(trial.options) if trial.options else None,
            response=response,
            row=trial.row,
        )
        return context

    def _render(self, kind: str, trial: Trial, response: str | None, n_trials: int) -> str:
        where = f"participant {trial.participant}, trial {trial.number} ({self.shown} {trial.where})"
        text = self.templates[kind].render(self._context(trial, response, n_trials), where=where)
        if OPEN in text or CLOSE in text:
            offset = min(i for i in (text.find(OPEN), text.find(CLOSE)) if i >= 0)
            raise TemplateError(
                f"{kind} template output contains a response delimiter",
                [
                    Problem(
                        f"rendered text contains '<<' or '>>' at character offset {offset}; only psysim marks responses",
                        file=self.templates[kind].shown,
                        where=where,
                    )
                ],
            )
        return text

    def instructions(self, participant: str) -> str:
        """The instructions text for ``participant`` ('' without an instructions template)."""
        if "instructions" not in self.templates:
            return ""
        trials = self.trials[participant]
        opts = trials[0].options if trials else None
        context = {"participant": participant, "n_trials": len(trials), "options": list(opts) if opts else None}
        return self.templates["instructions"].render(context, where=f"participant {participant}")

    def render_trial(self, trial: Trial, response: str) -> tuple[str, str]:
        """Text before and after the response of ``trial`` given ``response`` (feedback included)."""
        n = len(self.trials[trial.participant])
        text = self._render("trial", trial, _RESPONSE_SLOT, n)
        if (count := text.count(_RESPONSE_SLOT)) != 1:
            # Checked once at load time; a template may still place it conditionally.
            raise TemplateError(
                "the trial template must place {{ response }} exactly once",
                [
                    Problem(
                        f"the trial template must place {{{{ response }}}} exactly once, found it {count} times",
                        file=self.templates["trial"].shown,
                        where=f"participant {trial.participant}, trial {trial.number} ({self.shown} {trial.where})",
                    )
                ],
            )
        before, after = text.split(_RESPONSE_SLOT)
        if "feedback" in self.templates:
            after += self._render("feedback", trial, response, n)
        return before, after

    def transcript(self, participant: str, responses: Sequence[str] | None = None) -> Transcript:
        """The participant's transcript with the human responses (or ``responses`` if given)."""
        trials = self.trials[participant]
        chosen = list(responses) if responses is not None else [t.response for t in trials]
        if len(chosen) != len(trials):
            raise ValueError(f"participant {participant} has {len(trials)} trials, got {len(chosen)} responses")
        missing = [t for t, r in zip(trials, chosen, strict=True) if r is None]
        if missing:
            raise DataError(
                f"participant {participant} has trials without a human response: it can be simulated but not scored",
                [t.where.problem("no human response", f"participant {participant}, trial {t.number}") for t in missing],
            )
        sep = self.config.separator
        contexts: list[str] = []
        carry = self.instructions(participant) + sep if "instructions" in self.templates else ""
        for trial, response in zip(trials, chosen, strict=True):
            before, after = self.render_trial(trial, response)
            contexts.append(carry + before)
            carry = after + sep
        contexts.append(carry[: -len(sep)] if sep else carry)
        return build_transcript(
            participant,
            self.experiment,
            contexts,
            chosen,
            options=[t.options for t in trials],
            data=[{k: v for k, v in t.row.items() if k != self.config.participant_column} for t in trials],
            source=self.shown,
        )

    def complete(self, participant: str) -> bool:
        """True when every trial of ``participant`` has a human response (so it can be scored)."""
        return all(t.response is not None for t in self.trials[participant])


def _trial_number(value: Any) -> int | None:
    """An integer trial number from a cell: 3, "3", 3.0 or "3.0" (Parquet writes integer columns with gaps as floats)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                return None
            return int(f) if f.is_integer() else None
    return None


def load_structured(config: DataConfig, experiment: str, missing: tuple[str, ...]) -> StructuredTask:
    """Read a trial table and its templates (see :class:`StructuredTask`)."""
    return StructuredTask(config, experiment, missing)
