"""User-facing errors.

Every error psysim raises on bad input is a :class:`PsysimError`. It carries one
or more :class:`Problem` records, each saying *where* (file, line/column, YAML
path, participant id, field, character offset), *what was expected* and *what
was found*. The CLI prints them and exits with code 2; no traceback reaches the
user. Error messages are API: tests pin them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SHOWN_PROBLEMS", "ConfigError", "DataError", "ModelError", "Problem", "PsysimError", "TemplateError"]

#: An error prints at most this many of its problems (a message says how many more there are).
SHOWN_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """One located problem.

    ``file`` is the path as the user gave it (or as psysim resolved it),
    ``line``/``column`` are 1-based when known, ``where`` is a logical location
    such as a YAML path (``models[0].source``) or ``participant 17, field age``.
    """

    message: str
    file: str | None = None
    where: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        head = ""
        if self.file:
            head = self.file
            if self.line is not None:
                head += f":{self.line}"
                if self.column is not None:
                    head += f":{self.column}"
        parts = [p for p in (head, self.where) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class PsysimError(Exception):
    """Base class of every error caused by user input (exit code 2 in the CLI)."""

    exit_code = 2

    def __init__(self, message: str, problems: list[Problem] | tuple[Problem, ...] = ()):
        super().__init__(message)
        self.message = message
        self.problems: tuple[Problem, ...] = tuple(problems)

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        lines = [self.message]
        lines += [f"  - {p}" for p in self.problems[:SHOWN_PROBLEMS]]
        rest = len(self.problems) - SHOWN_PROBLEMS
        if rest > 0:
            # A wrong rule on a large study fails for every participant: the first ones show what to fix.
            lines.append(
                f"  … and {rest} more (the first {SHOWN_PROBLEMS} of {len(self.problems)} are shown; "
                "the exception's .problems lists every one)"
            )
        return "\n".join(lines)


class ConfigError(PsysimError):
    """The experiment file (YAML) is malformed or invalid."""


class DataError(PsysimError):
    """Human data, a cohort, or a profile schema is malformed or invalid."""


class TemplateError(PsysimError):
    """A prompt template is malformed or refers to something that does not exist."""


class ModelError(PsysimError):
    """A model cannot be resolved, loaded or used."""


def raise_if(problems: list[Problem], error: type[PsysimError], message: str) -> None:
    """Raise ``error`` carrying all ``problems`` at once (each distinct problem once), if there are any."""
    problems = list(dict.fromkeys(problems))  # e.g. one template checked under two conditions
    if problems:
        n = len(problems)
        raise error(f"{message} ({n} problem{'s' if n != 1 else ''})", problems)
