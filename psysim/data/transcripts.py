"""Transcripts: the one internal representation of a participant's session.

A :class:`Transcript` is the whole session as text, with every human response
wrapped in ``<<`` and ``>>`` (the Psych-101/201 convention), and the character
span of each response's content. Psych-201 JSONL files are parsed into it
(:func:`read_psych201`); structured trial tables are rendered into it
(:mod:`psysim.data.trials`). Everything downstream sees only transcripts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import validation
from ..errors import DataError, Problem, raise_if
from ..files import read_jsonl
from ..participants import participant_id

__all__ = ["CLOSE", "OPEN", "PsychRecord", "Response", "Transcript", "build_transcript", "parse_markup", "read_psych201"]

OPEN = "<<"
CLOSE = ">>"
#: Keys of a Psych-201 record that are not profile fields.
RESERVED_KEYS = ("text", "participant", "experiment")


@dataclass(frozen=True)
class Response:
    """One human response: its 0-based index, its text, and its span in the transcript text.

    ``start``/``end`` delimit the content strictly between ``<<`` and ``>>``.
    ``options`` are the choices offered on that trial where known, ``roles``
    what each option stands for where the study declares it (counterbalanced
    keys), ``item`` the stimulus the trial shared with other participants
    (:mod:`psysim.data.studies` sets all three from the study's rules); ``data``
    holds per-response values such as a reaction time. ``excluded`` says why
    a response is left out of scoring (e.g. not among its trial's options
    under ``outside_options: drop``).
    """

    index: int
    text: str
    start: int
    end: int
    options: tuple[str, ...] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] | None = None
    item: str | None = None
    excluded: str | None = None

    @property
    def role(self) -> str | None:
        """The role of the chosen option (the option itself where no roles are declared); None without options."""
        if not self.options or self.text not in self.options:
            return None
        return self.roles[self.options.index(self.text)] if self.roles else self.text


@dataclass(frozen=True)
class Transcript:
    """A participant's whole session with response spans."""

    participant: str
    experiment: str
    text: str
    responses: tuple[Response, ...]
    source: str = ""

    def contexts(self) -> list[str]:
        """The text around the responses, without the ``<<``/``>>`` delimiters.

        There is always one more context than responses: the text before the
        first response, between consecutive responses, and after the last.
        """
        out, pos = [], 0
        for r in self.responses:
            out.append(self.text[pos : r.start - len(OPEN)])
            pos = r.end + len(CLOSE)
        out.append(self.text[pos:])
        return out

    def trial_starts(self) -> list[int]:
        """Where each response's trial starts in :attr:`text`: the boundaries :meth:`without_first` cuts at.

        A trial is the text since the previous response's line: trial ``i``
        (``i >= 1``) starts after the line break that ends response ``i - 1``'s
        line (right after its ``>>`` when both responses share a line), so a
        stimulus of several lines, a section header ("Set 2/9:") and the
        previous trial's feedback on the same line stay with their own trial.
        The first trial has as many lines before its response's line as the
        second trial has (the trials of a study share their shape); what comes
        before it is the instructions. With one response, the first trial is
        its response's line.
        """
        rs = self.responses
        starts = []
        for prev, r in itertools.pairwise(rs):
            after = prev.end + len(CLOSE)
            newline = self.text.find("\n", after, r.start - len(OPEN))
            starts.append(newline + 1 if newline != -1 else after)
        first = self.text.rfind("\n", 0, rs[0].start - len(OPEN)) + 1 if rs else 0
        if len(rs) > 1:
            for _ in range(self.text.count("\n", starts[0], rs[1].start - len(OPEN))):
                if first == 0:
                    break
                first = self.text.rfind("\n", 0, first - 1) + 1
        return [first, *starts]

    def without_first(self, k: int) -> Transcript:
        """The transcript with its ``k`` oldest trials removed (for contexts too short to hold it all).

        Trials are those of :meth:`trial_starts`: the instructions (the text
        before the first trial) are kept, then the text from trial ``k`` on,
        so the shortened transcript is the original with whole trials removed
        and no stimulus of a dropped trial is left behind. Responses keep
        their original ``index``.
        """
        if k <= 0:
            return self
        if k >= len(self.responses):
            raise ValueError(f"cannot drop {k} of {len(self.responses)} responses")
        starts = self.trial_starts()
        head, cut = starts[0], starts[k]
        shift = cut - head
        kept = tuple(replace(r, start=r.start - shift, end=r.end - shift) for r in self.responses[k:])
        return replace(self, text=self.text[:head] + self.text[cut:], responses=kept)

    def trial_texts(self) -> list[str]:
        """The text of each response's trial (:meth:`trial_starts`), up to its ``<<``: what the person saw before answering."""
        return [self.text[s : r.start - len(OPEN)] for s, r in zip(self.trial_starts(), self.responses, strict=True)]

    def instructions(self) -> str:
        """The text before the first trial: the participant's instructions."""
        return self.text[: self.trial_starts()[0]] if self.responses else self.text

    def segments(self) -> Iterator[tuple[str, Response | None]]:
        """``(context, response)`` pairs in reading order; the last response is ``None``."""
        contexts = self.contexts()
        for i, ctx in enumerate(contexts):
            yield ctx, (self.responses[i] if i < len(self.responses) else None)


def parse_markup(text: str) -> tuple[list[tuple[int, int]], list[str]]:
    """Find the content spans of ``<<...>>`` responses.

    Returns ``(spans, errors)``; each error is a message that names the
    character offset (0-based, in Python characters) of the offending delimiter.
    A ``<<`` inside a response is one error: that response yields no span, the
    next ``>>`` closes the inner ``<<`` and, if another ``>>`` follows before any
    ``<<``, it is taken as the outer response's close — so one typo is one error.
    """
    spans: list[tuple[int, int]] = []
    errors: list[str] = []
    pos = 0
    open_at: int | None = None
    while True:
        i_open = text.find(OPEN, pos)
        i_close = text.find(CLOSE, pos)
        if i_open == -1 and i_close == -1:
            break
        if i_close == -1 or (i_open != -1 and i_open < i_close):
            if open_at is None:
                open_at = i_open
                pos = i_open + len(OPEN)
                continue
            errors.append(f"nested '<<' at character offset {i_open} (inside the response opened at offset {open_at})")
            inner_close = text.find(CLOSE, i_open + len(OPEN))
            if inner_close == -1:
                errors.append(f"unclosed '<<' at character offset {open_at} (no '>>' after it)")
                return spans, errors
            pos = inner_close + len(CLOSE)
            next_open, next_close = text.find(OPEN, pos), text.find(CLOSE, pos)
            if next_close != -1 and (next_open == -1 or next_close < next_open):
                pos = next_close + len(CLOSE)
            open_at = None
            continue
        if open_at is None:
            errors.append(f"'>>' at character offset {i_close} closes no response (no '<<' before it)")
        else:
            start, end = open_at + len(OPEN), i_close
            if text[start:end].strip():
                spans.append((start, end))
            else:
                errors.append(f"empty response '<<{text[start:end]}>>' at character offset {open_at}")
            open_at = None
        pos = i_close + len(CLOSE)
    if open_at is not None:
        errors.append(f"unclosed '<<' at character offset {open_at} (no '>>' after it)")
    return spans, errors


def build_transcript(
    participant: str,
    experiment: str,
    contexts: Sequence[str],
    responses: Sequence[str],
    *,
    options: Sequence[tuple[str, ...] | None] | None = None,
    data: Sequence[dict[str, Any]] | None = None,
    items: Sequence[str | None] | None = None,
    source: str = "",
) -> Transcript:
    """Assemble a transcript from alternating contexts and responses (``len(contexts) == len(responses) + 1``)."""
    if len(contexts) != len(responses) + 1:
        raise ValueError("need exactly one more context than responses")
    parts: list[str] = []
    out: list[Response] = []
    pos = 0
    for i, resp in enumerate(responses):
        parts += [contexts[i], OPEN]
        pos += len(contexts[i]) + len(OPEN)
        out.append(
            Response(
                index=i,
                text=resp,
                start=pos,
                end=pos + len(resp),
                options=options[i] if options else None,
                data=dict(data[i]) if data else {},
                item=items[i] if items else None,
            )
        )
        parts += [resp, CLOSE]
        pos += len(resp) + len(CLOSE)
    parts.append(contexts[-1])
    return Transcript(participant, experiment, "".join(parts), tuple(out), source)


@dataclass(frozen=True)
class PsychRecord:
    """A parsed Psych-101/201 JSONL record: the transcript plus the participant's profile keys."""

    transcript: Transcript
    profile: dict[str, Any]
    line: int


def read_psych201(path: str | Path, *, study: str | None = None, prefix: str = "") -> list[PsychRecord]:
    """Read a Psych-101/201 JSONL file (or a ``.jsonl.zip`` holding one).

    Each object has ``text`` (responses marked ``<<...>>``), ``participant`` and
    ``experiment``. Any other key whose value is a list is per-response data and
    must have one value per response; any other key is a profile field. All
    problems in the file (markup, missing keys, duplicate ids, list lengths)
    are reported together, each with line, participant id and character offset.

    A participant is identified by (sub-experiment, participant): in a file
    that holds several values of ``experiment``, ids are written
    ``<experiment>/<participant>``, so one id in two sub-experiments is two
    people, and each sub-experiment is a study of its own (named by its
    value). ``prefix`` is put before every id (``<study>/`` when an
    experiment reads several files); ``study`` names the transcripts' study
    when the file holds one sub-experiment (default: its ``experiment`` value).
    """
    problems: list[Problem] = []
    table = read_jsonl(path, what="Psych-201 data file", problems=problems)
    shown = table.path
    records: list[PsychRecord] = []
    first_line: dict[str, int] = {}
    subs = {
        row["experiment"].strip() for row in table.rows if isinstance(row.get("experiment"), str) and row["experiment"].strip()
    }
    for row, line in zip(table.rows, table.lines, strict=True):
        pid = participant_id(row.get("participant"))
        if pid is not None:
            sub = row.get("experiment")
            pid = prefix + (f"{str(sub).strip()}/{pid}" if len(subs) > 1 else pid)
        who = f"participant {pid}" if pid is not None else "record"
        if pid is None:
            problems.append(
                Problem(
                    f"expected a participant id in key 'participant', found {validation.found(row.get('participant'))}",
                    file=shown,
                    line=line,
                )
            )
        elif pid in first_line:
            problems.append(
                Problem(f"duplicate participant id {pid!r} (first on line {first_line[pid]})", file=shown, line=line, where=who)
            )
            continue
        else:
            first_line[pid] = line
        text = row.get("text")
        if not isinstance(text, str):
            problems.append(
                Problem(
                    f"expected the session text in key 'text', found {validation.found(text)}", file=shown, line=line, where=who
                )
            )
            continue
        experiment = row.get("experiment")
        if not isinstance(experiment, str) or not experiment.strip():
            problems.append(
                Problem(
                    f"expected the experiment name in key 'experiment', found {validation.found(experiment)}",
                    file=shown,
                    line=line,
                    where=who,
                )
            )
            continue
        spans, errors = parse_markup(text)
        problems += [Problem(f"malformed markup: {e}", file=shown, line=line, where=who) for e in errors]
        if not spans and not errors:
            problems.append(
                Problem("the transcript has no responses (nothing is marked <<...>>)", file=shown, line=line, where=who)
            )
        per_response: dict[str, list[Any]] = {}
        profile: dict[str, Any] = {}
        for key, value in row.items():
            if key in RESERVED_KEYS:
                continue
            if isinstance(value, list):
                if not errors and len(value) != len(spans):
                    problems.append(
                        Problem(
                            f"per-response list {key!r} has {len(value)} values but the transcript has {len(spans)} responses",
                            file=shown,
                            line=line,
                            where=who,
                        )
                    )
                per_response[key] = value
            else:
                profile[key] = value
        if pid is None or errors:
            continue
        responses = tuple(
            Response(
                index=i,
                text=text[s:e],
                start=s,
                end=e,
                data={k: v[i] for k, v in per_response.items() if len(v) == len(spans)},
            )
            for i, (s, e) in enumerate(spans)
        )
        name = experiment.strip() if len(subs) > 1 or not study else study
        transcript = Transcript(pid, name, text, responses, f"{shown}:{line}")
        records.append(PsychRecord(transcript, profile, line))
    if not table.rows and not problems:
        problems.append(Problem("the file has no participants", file=shown))
    raise_if(problems, DataError, f"invalid Psych-201 data in {shown}")
    return records
