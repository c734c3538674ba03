"""Studies: what each trial offered (its options) and which stimulus it showed (its item), by the study's declared rules.

This module is the one home of two definitions every number of psysim rests on:

* **Options.** The options of a response are the options *its trial*
  offered: a fixed list for the study, the matches of a pattern on the
  trial's own text (e.g. thoma2025riskychoice's ``marked '(\\w)'`` gives the
  trial's two letters), the matches of a pattern on the participant's
  instructions (keys assigned per participant), a trial table's column, or,
  only when declared as such, the study's pooled distinct responses. Options
  may carry a *role* (what a counterbalanced key stands for), so that
  baselines pool people by what they chose, not by which key meant it.
* **Items.** An item is the stimulus participants shared: the key under which
  the population baseline pools responses and the simulation report compares
  distributions. Default: the trial's text since the previous response,
  whitespace normalised; or the trial's position; or the matches of a
  pattern on the trial's text; or, for trial tables, the values of the
  columns that identify the stimulus.

:func:`apply_rules` sets ``options``, ``roles`` and ``item`` on every response
of a study's transcripts and checks every human response against its
trial's options; :class:`StudyProfile` counts what ``psysim validate`` shows.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import DataConfig
from ..errors import Problem
from .transcripts import Transcript

__all__ = [
    "StudyProfile",
    "apply_rules",
    "columns_item",
    "normalise",
    "pattern_item",
    "pooled_options",
    "profile_study",
    "role_key",
    "trial_item",
]

#: How many example trials ``psysim validate`` shows per study.
EXAMPLES = 2
#: A trial text shown in a message is cut to this many characters (its end: where the options are).
SHOWN = 300


def normalise(text: str) -> str:
    """A stimulus text as an item key: runs of whitespace (line breaks included) become one space, ends stripped."""
    return " ".join(text.split())


def role_key(role: str) -> str:
    """Roles compare case-insensitively and whitespace-normalised ("Seven" and "seven " are one role)."""
    return normalise(role).casefold()


def pattern_item(pattern: re.Pattern[str], text: str) -> str | None:
    """The item a pattern reads in a trial's text: every match (its first group, else the whole match), joined by `` | ``."""
    parts = [normalise(m.group(1) if pattern.groups else m.group(0)) for m in pattern.finditer(text)]
    parts = [p for p in parts if p]
    return " | ".join(parts) if parts else None


def columns_item(columns: Iterable[str], row: dict) -> str:
    """A trial table's item: the values of the columns that identify the stimulus (``domain=gains | set=3``)."""
    return " | ".join(f"{c}={row.get(c)}" for c in columns)


def trial_item(
    study: DataConfig,
    text: str,
    *,
    row: Mapping[str, Any],
    number: Any,
    rendered: str | None = None,
    pattern: re.Pattern[str] | None = None,
) -> str | None:
    """One trial's item by the study's rule; ``None`` where the item pattern matches nothing.

    ``text`` is the trial's text since the previous response, ``row`` its
    trial-table columns, ``number`` its trial number (or 1-based position),
    ``rendered`` a trial table's rendered trial (the default item there:
    never the previous trial's feedback). ``pattern`` is the compiled item
    pattern, when the caller already has it. Run, baselines, simulation and
    export all take their items from here, through :func:`apply_rules`.
    """
    if study.item_rule == "position":
        whole = _whole(number)
        return f"trial {whole if whole is not None else number}"
    if study.item_pattern:
        return pattern_item(pattern or re.compile(study.item_pattern), text)
    if study.item_rule == "columns":
        return columns_item(study.item_columns, row)
    return rendered if rendered is not None else normalise(text)


def _whole(value: Any) -> int | None:
    """A trial number as an integer where it is one (``3``, ``"3"``, ``3.0``): one item whatever the file's type."""
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def _options(pattern: re.Pattern[str], text: str, roles: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """(options, roles) read by ``pattern`` in ``text``; options in order of first appearance, without repeats.

    With ``roles`` (one per capture group), the first match gives one option
    per group. Otherwise every match gives one option: its group ``option``
    (else its first group), with its group ``role`` as the role where there is one.
    """
    if roles:
        m = pattern.search(text)
        if m is None:
            return (), None
        pairs = [(m.group(i + 1), role_key(r)) for i, r in enumerate(roles)]
    else:
        names = pattern.groupindex
        pairs = []
        for m in pattern.finditer(text):
            option = m.group("option") if "option" in names else m.group(1)
            role = m.group("role") if "role" in names else None
            pairs.append((option, role_key(role) if role is not None else None))
    seen: dict[str, str | None] = {}
    for option, role in pairs:
        if option is not None and option.strip() and option not in seen:
            seen[option] = role
    options = tuple(seen)
    has_roles = any(r is not None for r in seen.values())
    return options, (tuple(r if r is not None else role_key(o) for o, r in seen.items()) if has_roles else None)


def pooled_options(transcripts: Iterable[Transcript]) -> tuple[str, ...]:
    """``options: pooled``: the study's distinct responses, sorted (the same set on every trial: an approximation)."""
    return tuple(sorted({r.text for t in transcripts for r in t.responses}))


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= SHOWN else "…" + text[-SHOWN:])


def apply_rules(
    transcript: Transcript, study: DataConfig, *, pooled: tuple[str, ...] | None = None, file: str = "", line: int | None = None
) -> tuple[Transcript, list[Problem]]:
    """The transcript with every response's options, roles and item set by the study's rules, and the problems found.

    Problems (each naming study, participant and trial, with the trial's text
    where it helps): a pattern that reads fewer than two options on a trial,
    and a human response that is not among its trial's options (unless
    ``outside_options: drop``, which marks the response ``excluded`` instead).
    Trial-table transcripts keep their table's per-trial options and their
    rendered items unless the study declares another item rule.
    """
    where = f"study {transcript.experiment}, participant {transcript.participant}"
    problems: list[Problem] = []
    texts = transcript.trial_texts()
    option_pattern = re.compile(study.options_pattern) if study.options_pattern else None
    item_pattern = re.compile(study.item_pattern) if study.item_pattern else None
    from_instructions: tuple[tuple[str, ...], tuple[str, ...] | None] | None = None
    if option_pattern is not None and study.options_from == "instructions":
        from_instructions = _options(option_pattern, transcript.instructions(), study.options_roles)
        if len(from_instructions[0]) < 2:
            problems.append(
                Problem(
                    f"options pattern «{study.options_pattern}» reads {len(from_instructions[0])} option(s) in the "
                    "participant's instructions, expected at least two; the instructions end: "
                    f"{_shown(transcript.instructions())}",
                    file=file,
                    line=line,
                    where=where,
                )
            )
            return transcript, problems
    out = []
    # Per kind of problem, the trials it occurs on: a rule that fails on one trial usually fails on all of a
    # participant's trials, and one located example with a count says it without a thousand lines.
    failed: dict[str, list[tuple[int, str]]] = {}
    for r, text in zip(transcript.responses, texts, strict=True):
        options, roles = r.options, r.roles
        if from_instructions is not None:
            options, roles = from_instructions
        elif option_pattern is not None:
            options, roles = _options(option_pattern, text, study.options_roles)
            if len(options) < 2:
                failed.setdefault("options", []).append(
                    (
                        r.index + 1,
                        f"options pattern «{study.options_pattern}» reads {list(options) or 'no option'} on this trial, "
                        f"expected at least two options; the trial's text: {_shown(text)}",
                    )
                )
                continue
        elif study.options is not None:
            options = study.options
        elif pooled is not None:
            options = pooled
        number = r.data.get(study.trial_column, r.index + 1) if study.format == "trials" else r.index + 1
        if study.item_rule == "columns":
            missing = [c for c in study.item_columns if c not in r.data]
            if missing:
                found = ", ".join(map(str, r.data)) or "none"
                problems.append(
                    Problem(
                        f"item columns {missing} are not columns of the trial table (its columns: {found})",
                        file=file,
                        where=where,
                    )
                )
                return transcript, problems
        item = trial_item(study, text, row=r.data, number=number, rendered=r.item, pattern=item_pattern)
        if item is None:
            failed.setdefault("item", []).append(
                (
                    r.index + 1,
                    f"item pattern «{study.item_pattern}» matches nothing on this trial; the trial's text: {_shown(text)}",
                )
            )
            continue
        excluded = None
        if options is not None and r.text not in options:
            if study.outside_options == "drop":
                excluded = f"not among its trial's options {list(options)}"
            else:
                failed.setdefault("outside", []).append(
                    (
                        r.index + 1,
                        f"response {r.text!r} is not among its trial's options {list(options)} "
                        f"(options: {study.declared_options}); set data.outside_options: drop to leave such responses out",
                    )
                )
        out.append(replace(r, options=options, roles=roles, item=item, excluded=excluded))
    for trials in failed.values():
        (first, message), rest = trials[0], trials[1:]
        if rest:
            shown = ", ".join(str(k) for k, _ in rest[:5]) + (", …" if len(rest) > 5 else "")
            message += f" (the same kind of problem on {len(rest)} more trials of this participant: {shown})"
        problems.append(Problem(message, file=file, line=line, where=f"{where}, trial {first}"))
    return replace(transcript, responses=tuple(out)), problems


@dataclass
class StudyProfile:
    """What ``psysim validate`` shows about one study's options and items."""

    name: str
    options: str
    item: str
    participants: int = 0
    responses: int = 0
    #: Number of options per trial → number of responses.
    per_trial: Counter = field(default_factory=Counter)
    #: Responses with options (those the option measures use) and those excluded as outside their options.
    with_options: int = 0
    excluded: int = 0
    items: int = 0
    #: Responses per item: (median, min, max).
    per_item: tuple[float, int, int] = (0, 0, 0)
    #: Responses whose item no other participant shares (the population falls back to study-level frequencies there).
    unshared: int = 0
    roles: tuple[str, ...] = ()
    examples: list[tuple[str, int, str, tuple[str, ...] | None, str]] = field(default_factory=list)
    has_profiles: bool = True
    approximate: bool = False

    def lines(self) -> list[tuple[str, str]]:
        """``(label, text)`` rows for the validate summary."""
        rows = [("options", self.options)]
        if self.per_trial:
            dist = ", ".join(f"{k} options: {n}" for k, n in sorted(self.per_trial.items()))
            rows.append(("", f"per trial: {dist} responses" + (f"; roles: {', '.join(self.roles)}" if self.roles else "")))
        elif self.responses:
            rows.append(("", "no options: only NLL is computed (option NLL, accuracy, Brier and pseudo-R² need options)"))
        if self.excluded:
            rows.append(
                ("", f"{self.excluded} responses are not among their trial's options and are left out (outside_options: drop)")
            )
        med, lo, hi = self.per_item
        rows.append(("items", f"{self.item}: {self.items} distinct, responses per item median {med:g} (min {lo}, max {hi})"))
        if self.responses and self.items == 1:
            rows.append(
                (
                    "",
                    f"warning: one item for the whole study ({self.responses} responses): the population baseline "
                    "is study-level frequencies",
                )
            )
        if self.unshared:
            share = self.unshared / max(self.responses, 1)
            rows.append(
                (
                    "",
                    f"{self.unshared} responses ({share:.0%}) are on items no other participant saw: there the population "
                    "baseline falls back to study-level frequencies",
                )
            )
        for pid, k, text, options, response in self.examples:
            shown = text.strip().replace("\n", " ⏎ ")
            shown = shown if len(shown) <= 160 else "…" + shown[-160:]
            opts = list(options) if options else "none"
            rows.append(("example", f"participant {pid}, trial {k}: {shown!r} → options {opts}, response {response!r}"))
        if not self.has_profiles:
            rows.append(("profiles", "none in this study: persona conditions are skipped for it (only no_persona is scored)"))
        return rows


def profile_study(name: str, study: DataConfig, transcripts: list[Transcript], *, has_profiles: bool = True) -> StudyProfile:
    """Count one study's options per trial, items and responses per item, with a few example trials."""
    prof = StudyProfile(name, study.declared_options, study.declared_item, has_profiles=has_profiles)
    prof.approximate = study.pooled_options
    prof.participants = len(transcripts)
    people: dict[str, set[str]] = {}
    counts: Counter = Counter()
    roles: dict[str, None] = {}
    for t in transcripts:
        texts = None
        for r in t.responses:
            prof.responses += 1
            if r.excluded:
                prof.excluded += 1
            if r.options:
                prof.per_trial[len(r.options)] += 1
                if not r.excluded:
                    prof.with_options += 1
            for role in r.roles or ():
                roles.setdefault(role)
            counts[r.item] += 1
            people.setdefault(r.item, set()).add(t.participant)
            if len(prof.examples) < EXAMPLES and r.index == len(prof.examples):
                texts = texts or t.trial_texts()
                prof.examples.append((t.participant, r.index + 1, texts[r.index], r.options, r.text))
    prof.roles = tuple(roles) if len(roles) <= 12 else (*tuple(roles)[:12], "…")
    prof.items = len(counts)
    if counts:
        values = list(counts.values())
        prof.per_item = (statistics.median(values), min(values), max(values))
    prof.unshared = sum(n for item, n in counts.items() if len(people[item]) < 2) if prof.participants > 1 else 0
    return prof
