"""Structured experiments: a trial table plus Jinja templates, rendered into transcripts.

The table (CSV/TSV, gzipped or not, or Parquet) comes in two layouts:

* ``long`` (default): one row per participant × trial — the participant id, a
  trial number, stimulus fields, the options (a fixed list in the YAML, or a
  column listing them), and the human response where known;
* ``wide``: one row per participant and one response column per item, as
  questionnaires are usually stored. The item table (``data.items``) lists the
  items in order; its key column names each item's response column. A wide
  table becomes the long form here: trial ``j`` is the ``j``-th item (0-based).
  Without a participant column, participants are numbered by data row
  (``"1"`` for the first row after the header).

An item table (``data.items``) adds columns to every trial: in the long
layout it is joined by its key column matched against the trial number. A
column in both tables must hold the same value on every trial, else it is an
error (neither table silently wins).

Templates turn the trials into the same transcript form Psych-201 uses,
responses in ``<<...>>``:

* ``instructions`` (optional): once, before the first trial;
* ``trial``: once per trial; it must place ``{{ response }}`` exactly once,
  where the response goes (e.g. ``... You choose {{ response }}.``);
* ``feedback`` (optional): after each response; ``response`` is the option
  chosen, so outcome columns can be looked up (``row['payoff_' ~ response]``).

Every column of a trial's row is a template variable, and all are under
``row`` too (``row['column with spaces']``). psysim provides ``participant``,
``trial`` (0-based position of the trial), ``n_trials``, ``options``,
``response`` and ``row``; these names take precedence over columns of the
same name.

A trial without a human response (an empty cell, or one of ``cohort.missing``)
is left out of the participant's scored transcript; the participant is scored
on the trials they answered. Every trial stays in :attr:`StructuredTask.trials`,
for simulation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import DataConfig
from ..errors import DataError, Problem, TemplateError, raise_if
from ..files import Location, Table, read_table
from ..participants import is_missing, participant_id
from ..templating import Template, load_template
from .studies import normalise
from .transcripts import CLOSE, OPEN, Transcript, build_transcript

__all__ = ["StructuredTask", "Trial", "load_structured"]

_RESPONSE_SLOT = "\ue002"
_PROVIDED = ("participant", "trial", "n_trials", "options", "response", "row")
#: Participants of a wide table whose trials are kept built at once (each is rebuilt on demand).
_CACHED_PARTICIPANTS = 256


@dataclass(frozen=True)
class Trial:
    """One trial of a participant: ``index`` is its 0-based position, ``number`` its trial number in the table.

    ``row`` holds the trial's columns: the trial table's row joined with its
    item (for a wide table: the participant's non-item columns, the item's
    columns, and the response under ``data.columns.response``). ``where`` is
    the trial table row it comes from.
    """

    participant: str
    index: int
    number: int
    row: dict[str, Any]
    options: tuple[str, ...] | None
    response: str | None
    where: Location


class _Trials(Mapping[str, list[Trial]]):
    """Participants' trials of a wide table, built when asked for (a few hundred kept), in table order.

    A wide questionnaire of 20,000 people × 50 items is a million trials; a run
    or a sample needs only some of them at a time.
    """

    def __init__(self, order: list[str], build: Callable[[str], list[Trial]]):
        self._order = dict.fromkeys(order)
        self._build = build
        self._cache: OrderedDict[str, list[Trial]] = OrderedDict()

    def __getitem__(self, participant: str) -> list[Trial]:
        if participant not in self._order:
            raise KeyError(participant)
        if participant in self._cache:
            self._cache.move_to_end(participant)
            return self._cache[participant]
        trials = self._build(participant)
        self._cache[participant] = trials
        if len(self._cache) > _CACHED_PARTICIPANTS:
            self._cache.popitem(last=False)
        return trials

    def __contains__(self, participant: object) -> bool:
        return participant in self._order  # without building the participant's trials

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


class StructuredTask:
    """A trial table (and item table) with its templates; renders trials for scoring and for closed-loop simulation.

    ``trials`` maps each participant (in table order) to their trials in
    order; ``where`` says where each participant's data starts in the table.
    ``row_numbers`` is true when participants are the rows of a wide table
    without a participant column (ids ``"1"``, ``"2"``, ...).
    """

    def __init__(self, config: DataConfig, experiment: str, missing: tuple[str, ...]):
        self.config = config
        self.experiment = experiment
        self.missing = frozenset(missing)
        self.table: Table = read_table(config.path, what="trial table")
        self.shown = self.table.path
        self.items: Table | None = read_table(config.items, what="item table") if config.items is not None else None
        self.wide = config.layout == "wide"
        # Only the default column name may be absent: a participant column the YAML names must exist.
        self.row_numbers = self.wide and config.participant_column == "participant" and "participant" not in self.table.columns
        self.templates: dict[str, Template] = {k: load_template(p, k) for k, p in config.templates.items()}
        self.where: dict[str, Location] = {}
        self._counts: dict[str, tuple[int, int]] = {}  # participant -> (trials, trials with a human response)
        raise_if(self._check_items(), DataError, f"invalid item table {self.items.path if self.items else ''}")
        raise_if(self._check_columns(), DataError, f"invalid trial table {self.shown}")
        #: A wide table's response column of each item, in item order (empty for a long table).
        self.response_columns: list[str] = list(self._item_index) if self.wide else []
        #: The columns of a trial's row: what templates can use (identifiers directly, all under ``row``).
        self.columns: list[str] = self._row_columns()
        self.trials: Mapping[str, list[Trial]] = self._group_wide() if self.wide else self._group()
        raise_if(self._check_templates(), TemplateError, "invalid templates")

    # -- item table ----------------------------------------------------------
    def _check_items(self) -> list[Problem]:
        """Check the item table and index it by key: ``self._item_rows`` (in order) and ``self._item_index``."""
        self._item_rows: list[dict[str, Any]] = []
        self._item_locs: list[Location] = []
        self._item_index: dict[Any, int] = {}
        if self.items is None:
            return []
        c, items = self.config, self.items
        if c.items_key not in items.columns:
            return [
                Problem(
                    f"expected a key column {c.items_key!r} (data.items.key), found columns: {', '.join(items.columns)}",
                    file=items.path,
                )
            ]
        if not items.rows:
            return [Problem("the item table has no rows", file=items.path)]
        problems = []
        if self.wide and c.response_column in items.columns:
            problems.append(
                Problem(
                    f"column {c.response_column!r} would hide each trial's response, which a wide table's trials hold "
                    "under that name (data.columns.response); rename the column",
                    file=items.path,
                )
            )
        seen: dict[Any, Location] = {}
        for i, row in enumerate(items.rows):
            loc = items.location(i)
            cell = row.get(c.items_key)
            if self.wide:
                # A wide table's item key is the name of its response column.
                key = cell.strip() if isinstance(cell, str) and cell.strip() else None
                expected = "the name of the item's response column"
            else:
                key = _trial_number(cell)
                expected = f"an integer trial number (matched with column {c.trial_column!r} of the trial table)"
            if key is None:
                problems.append(loc.problem(f"expected {expected} in key column {c.items_key!r}, found {cell!r}"))
                continue
            if key in seen:
                problems.append(loc.problem(f"item {key!r} appears twice (also {seen[key]})"))
                continue
            seen[key] = loc
            self._item_index[key] = len(self._item_rows)
            self._item_rows.append(row)
            self._item_locs.append(loc)
        return problems

    # -- trial table -----------------------------------------------------------
    def _check_columns(self) -> list[Problem]:
        c = self.config
        columns = self.table.columns
        item_columns = self.items.columns if self.items else []
        problems = []
        needed = []
        if not self.row_numbers:
            needed.append(("participant", c.participant_column))
        if not self.wide:
            needed.append(("trial", c.trial_column))
        for role, col in needed:
            if col not in columns:
                problems.append(
                    Problem(f"expected a {role} column {col!r}, found columns: {', '.join(columns)}", file=self.shown)
                )
        if c.options_column and c.options_column not in columns and c.options_column not in item_columns:
            where = f"the trial table or the item table {self.items.path}" if self.items else "the trial table"
            problems.append(
                Problem(
                    f"expected an options column {c.options_column!r} in {where}, found columns: {', '.join(columns)}",
                    file=self.shown,
                )
            )
        if self.wide:
            for key, k in self._item_index.items():
                if key not in columns:
                    problems.append(
                        self._item_locs[k].problem(
                            f"item {key!r}: expected a response column {key!r} in the trial table {self.shown}, "
                            "found no such column"
                        )
                    )
            if c.response_column in columns and c.response_column not in self._item_index:
                problems.append(
                    Problem(
                        f"column {c.response_column!r} would hide each trial's response, which a wide table's trials "
                        "hold under that name (data.columns.response); rename the column",
                        file=self.shown,
                    )
                )
        if not self.table.rows:
            problems.append(Problem("the trial table has no rows", file=self.shown))
        return problems

    def _row_columns(self) -> list[str]:
        item_columns = self.items.columns if self.items else []
        if self.wide:
            base = [col for col in self.table.columns if col not in self._item_index and col != self.config.participant_column]
            return list(dict.fromkeys([*base, *item_columns, self.config.response_column]))
        return list(dict.fromkeys([*self.table.columns, *item_columns]))

    def _joined(self, row: dict[str, Any], item: dict[str, Any], skip: str | None) -> tuple[dict[str, Any], list[str]]:
        """``row`` with the item's columns added; and the columns both hold with different values (``skip`` exempt)."""
        joined = dict(row)
        clashes = []
        for col, value in item.items():
            if col not in joined:
                joined[col] = value
            elif col != skip and not _same(joined[col], value):
                clashes.append(col)
        return joined, clashes

    def _clash(self, loc: Location, who: str, col: str, here: Any, k: int) -> Problem:
        item_loc = self._item_locs[k]
        return loc.problem(
            f"column {col!r} is in both the trial table {self.shown} and the item table {self.items.path} "
            f"with different values: {here!r} here, {self._item_rows[k][col]!r} in the item table ({item_loc}); "
            "rename one of them",
            who,
        )

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
            self.where.setdefault(pid, loc)
        out: dict[str, list[Trial]] = {}
        # The key column is the trial column under another name, or the same column: equal by the join.
        same_key = c.items_key if c.items_key == c.trial_column else None
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
                if self.items is not None:
                    k = self._item_index.get(number)
                    if k is None:
                        problems.append(
                            loc.problem(
                                f"trial {number} (column {c.trial_column!r}) is not in the item table {self.items.path} "
                                f"(key column {c.items_key!r}); its keys are {_listing(self._item_index)}",
                                f"participant {pid}",
                            )
                        )
                        continue
                    row, clashes = self._joined(row, self._item_rows[k], same_key)
                    problems += [self._clash(loc, who, col, row[col], k) for col in clashes]
                options, found = self._options(row, loc, who)
                problems += found
                response = row.get(c.response_column)
                response = None if is_missing(response, self.missing) else str(response).strip()
                if response is not None:
                    problems += self._check_response(response, options, loc, who)
                trials.append(Trial(pid, len(trials), number, dict(row), options, response, loc))
            out[pid] = trials
            self._counts[pid] = (len(trials), sum(t.response is not None for t in trials))
        raise_if(problems, DataError, f"invalid trial table {self.shown}")
        return out

    def _group_wide(self) -> Mapping[str, list[Trial]]:
        """Check every cell of a wide table; trials are built per participant when asked for."""
        c = self.config
        problems: list[Problem] = []
        keys = list(self._item_index)
        base_columns = [col for col in self.columns if col in self.table.columns]
        clashing = [col for col in base_columns if any(col in item for item in self._item_rows)]
        # Options from the item table are the same for every participant: parse them once.
        item_options: list[tuple[tuple[str, ...] | None, list[Problem]]] | None = None
        if c.options_column and self.items and c.options_column in self.items.columns:
            item_options = [self._options(item, self._item_locs[k], f"item {keys[k]}") for k, item in enumerate(self._item_rows)]
            for _, found in item_options:
                problems += found
        self._row_of: dict[str, int] = {}
        for i, row in enumerate(self.table.rows):
            loc = self.table.location(i)
            pid = str(i + 1) if self.row_numbers else participant_id(row.get(c.participant_column))
            if pid is None:
                problems.append(
                    loc.problem(
                        f"expected a participant id in column {c.participant_column!r}, found {row.get(c.participant_column)!r}"
                    )
                )
                continue
            if pid in self._row_of:
                problems.append(
                    loc.problem(
                        f"participant {pid} has a second row (also {self.where[pid]}); a wide table has one row per participant"
                    )
                )
                continue
            self._row_of[pid] = i
            self.where[pid] = loc
            answered = 0
            if item_options is None:
                # Fixed options, none, or a column of the participant's row: the same for all their items.
                options, found = self._options(row, loc, f"participant {pid}")
                problems += found
            # The hot loop of a large questionnaire (a million cells): plain string cells take the short way.
            for k, key in enumerate(keys):
                for col in clashing:
                    if col in self._item_rows[k] and not _same(row[col], self._item_rows[k][col]):
                        problems.append(self._clash(loc, f"participant {pid}, column {key}", col, row[col], k))
                if item_options is not None:
                    options = item_options[k][0]
                cell = row[key]
                if isinstance(cell, str):
                    text = cell.strip()
                    if text in self.missing:
                        continue
                elif is_missing(cell, self.missing):
                    continue
                else:
                    text = str(cell).strip()
                answered += 1
                if (options is not None and text not in options) or OPEN in text or CLOSE in text:
                    problems += self._check_response(text, options, loc, f"participant {pid}, column {key}")
            self._counts[pid] = (len(keys), answered)
        raise_if(problems, DataError, f"invalid trial table {self.shown}")
        return _Trials(list(self._row_of), self._wide_trials)

    def _wide_trials(self, participant: str) -> list[Trial]:
        c = self.config
        i = self._row_of[participant]
        row = self.table.rows[i]
        loc = self.table.location(i)
        base = {col: row[col] for col in self.columns if col in self.table.columns}
        trials = []
        for k, (key, item) in enumerate(zip(self._item_index, self._item_rows, strict=True)):
            cell = row[key]
            response = None if is_missing(cell, self.missing) else str(cell).strip()
            joined = {**base, **item, c.response_column: cell}
            options, _ = self._options(joined, loc, "")  # checked when the table was read
            trials.append(Trial(participant, k, k, joined, options, response, loc))
        return trials

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

    # -- counts ----------------------------------------------------------------
    def n_trials(self, participant: str) -> int:
        """How many trials ``participant`` has."""
        return self._counts[participant][0]

    def n_responses(self, participant: str) -> int:
        """How many of ``participant``'s trials have a human response (the responses a run scores)."""
        return self._counts[participant][1]

    def complete(self, participant: str) -> bool:
        """True when every trial of ``participant`` has a human response."""
        n, answered = self._counts[participant]
        return n == answered

    # -- templates -----------------------------------------------------------
    def _check_templates(self) -> list[Problem]:
        columns = set(self.columns)
        names: dict[str, set[str] | None] = {col: None for col in columns if col.isidentifier()}
        names.update({name: None for name in _PROVIDED})
        names["row"] = columns
        problems = []
        for kind, template in self.templates.items():
            allowed = {"participant": None, "n_trials": None, "options": None} if kind == "instructions" else names
            problems += template.check_names(allowed)
        if problems:
            return problems
        # Render the first participant's first trial to check the response slot.
        first = self.trials[next(iter(self.trials))][0]
        text = self._render("trial", first, _RESPONSE_SLOT, self.n_trials(first.participant))
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

    def _where(self, trial: Trial) -> str:
        """``participant 3, trial 2 (trials.csv line 5)``; for a wide table the item's column instead of the trial."""
        which = f"column {trial.row.get(self.config.items_key)}" if self.wide else f"trial {trial.number}"
        return f"participant {trial.participant}, {which} ({self.shown} {trial.where})"

    def _render(self, kind: str, trial: Trial, response: str | None, n_trials: int) -> str:
        where = self._where(trial)
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
        n = self.n_trials(trial.participant)
        text = self._render("trial", trial, _RESPONSE_SLOT, n)
        if (count := text.count(_RESPONSE_SLOT)) != 1:
            # Checked once at load time; a template may still place it conditionally.
            raise TemplateError(
                "the trial template must place {{ response }} exactly once",
                [
                    Problem(
                        f"the trial template must place {{{{ response }}}} exactly once, found it {count} times",
                        file=self.templates["trial"].shown,
                        where=self._where(trial),
                    )
                ],
            )
        before, after = text.split(_RESPONSE_SLOT)
        if "feedback" in self.templates:
            after += self._render("feedback", trial, response, n)
        return before, after

    def item_code(self, trial: Trial) -> str | None:
        """The trial's item code: its key in the item table (a wide table's response column, e.g. ``E1``), else None.

        What survey users call the variable name; ``psysim export --format wide`` names its columns with it.
        """
        if self.items is None:
            return None
        code = trial.row.get(self.config.items_key)
        return None if code is None else str(code)

    def transcript(self, participant: str, responses: Sequence[str | None] | None = None) -> Transcript:
        """The participant's transcript with the human responses (or ``responses`` if given).

        A trial whose response is ``None`` (no human response) is left out: it
        is neither shown nor scored, and the trials around it keep their
        numbering (``trial``, ``n_trials``). A participant without any response
        has no transcript (a :class:`~psysim.errors.DataError`).
        """
        trials = self.trials[participant]
        chosen = list(responses) if responses is not None else [t.response for t in trials]
        if len(chosen) != len(trials):
            raise ValueError(f"participant {participant} has {len(trials)} trials, got {len(chosen)} responses")
        kept = [(t, r) for t, r in zip(trials, chosen, strict=True) if r is not None]
        if not kept:
            raise DataError(
                f"participant {participant} has no trial with a human response: it can be simulated but not scored",
                [self.where[participant].problem("no human response on any trial", f"participant {participant}")],
            )
        sep = self.config.separator
        contexts: list[str] = []
        carry = self.instructions(participant) + sep if "instructions" in self.templates else ""
        items = []
        for trial, response in kept:
            before, after = self.render_trial(trial, response)
            contexts.append(carry + before)
            items.append(normalise(before))  # the rendered trial itself, never the previous trial's feedback
            carry = after + sep
        contexts.append(carry[: -len(sep)] if sep else carry)
        return build_transcript(
            participant,
            self.experiment,
            contexts,
            [r for _, r in kept],
            options=[t.options for t, _ in kept],
            data=[{k: v for k, v in t.row.items() if k != self.config.participant_column} for t, _ in kept],
            items=items,
            source=self.shown,
        )


def _same(a: Any, b: Any) -> bool:
    """Whether two cells hold the same value: equal, or equal as text (a CSV's ``"2"`` and a Parquet's 2)."""
    return a == b or (a is not None and b is not None and str(a).strip() == str(b).strip())


def _listing(keys: Mapping[Any, Any], most: int = 12) -> str:
    shown = ", ".join(str(k) for k in list(keys)[:most])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > most else "")


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
    """Read a trial table, its item table and its templates (see :class:`StructuredTask`)."""
    return StructuredTask(config, experiment, missing)
