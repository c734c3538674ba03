"""Jinja templates, sandboxed: the one environment psysim renders with, built-in templates, loading and checking.

Templates are Jinja, rendered in Jinja's *sandboxed* environment with strict
undefined variables: a profile value is data, never template code (a value
``{{ 7*7 }}`` reaches the prompt literally), and a template that refers to a
field or variable that does not exist fails with a located message. Persona,
instructions, trial and feedback templates and chat templates all render here.

Built-in templates live in ``prompts/`` (persona formats in
``prompts/persona/``, chat templates in ``prompts/chat/``); an experiment can
name a built-in or give a path to its own ``.jinja`` file.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import Problem, TemplateError
from .files import display_path, read_text

__all__ = [
    "Template",
    "builtin_templates",
    "load_template",
    "resolve_template",
    "sandbox",
]


def sandbox(**options: Any) -> ImmutableSandboxedEnvironment:
    """The only Jinja environment psysim renders with: sandboxed, strict, no autoescape.

    ``keep_trailing_newline`` is on so that a template's text reaches the model
    exactly as written in the file.
    """
    settings: dict[str, Any] = {"undefined": jinja2.StrictUndefined, "autoescape": False, "keep_trailing_newline": True}
    settings.update(options)
    return ImmutableSandboxedEnvironment(**settings)


def _prompts_dir() -> Path:
    # In a wheel the project's prompts/ folder is packaged as psysim/_prompts
    # (see pyproject.toml); in a source checkout it sits beside the package.
    here = Path(__file__).resolve().parent
    packaged = here / "_prompts"
    return packaged if packaged.is_dir() else here.parent / "prompts"


@cache
def builtin_templates(kind: str) -> dict[str, Path]:
    """Built-in templates of a kind (``persona`` or ``chat``): name -> file."""
    folder = _prompts_dir() / kind
    return {p.stem: p for p in sorted(folder.glob("*.jinja"))}


def resolve_template(value: str, kind: str, base: Path) -> Path:
    """A template reference from an experiment file: a built-in name, or a path relative to ``base``.

    Raises :class:`KeyError` with a helpful message when it is neither.
    """
    builtins = builtin_templates(kind)
    if "/" not in value and "\\" not in value and not value.endswith(".jinja"):
        if value in builtins:
            return builtins[value]
        raise KeyError(
            f"unknown built-in {kind} template {value!r}; expected one of: {', '.join(builtins)}, or a path to a .jinja file"
        )
    path = (base / value).resolve()
    if not path.is_file():
        raise KeyError(f"{kind} template not found: {display_path(path)} (relative paths are relative to the YAML file)")
    return path


class Template:
    """A Jinja template loaded from a file, rendered in the sandbox with located errors."""

    def __init__(self, path: Path, kind: str, env: ImmutableSandboxedEnvironment | None = None):
        self.path = Path(path)
        self.kind = kind
        self.shown = display_path(self.path)
        self.source = read_text(self.path, error=TemplateError, what=f"{kind} template")
        self.env = env or sandbox()
        try:
            self.ast = self.env.parse(self.source)
            self._template = self.env.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{kind} template has a syntax error: {self.shown}",
                [Problem(f"template syntax error: {exc.message}", file=self.shown, line=exc.lineno)],
            ) from None

    # Pickled (to Ray workers) as its source; compiled again, in a fresh sandbox, where it is unpickled.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("env", "ast", "_template")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.env = sandbox()
        self.ast = self.env.parse(self.source)
        self._template = self.env.from_string(self.source)

    def check_names(self, allowed: dict[str, set[str] | None]) -> list[Problem]:
        """Statically check the variables a template uses.

        ``allowed`` maps each top-level name to the set of attributes/keys that
        exist on it (``None``: any). A template that uses an unknown name, or
        e.g. ``profile.income`` where the schema has no ``income``, gets a
        problem with the line it is on — before anything is rendered.
        """
        problems: list[Problem] = []
        # Names Jinja itself provides inside loops and macros, and names the template assigns.
        assigned = {"loop", "caller", "varargs", "kwargs"}
        assigned |= {n.name for n in self.ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
        for n in self.ast.find_all(nodes.Name):
            if n.ctx == "load" and n.name not in allowed and n.name not in assigned and n.name not in self.env.globals:
                problems.append(
                    Problem(
                        f"unknown variable {n.name!r}; a {self.kind} template can use: {', '.join(sorted(allowed))}",
                        file=self.shown,
                        line=n.lineno,
                    )
                )
        for n in self.ast.find_all((nodes.Getattr, nodes.Getitem)):
            base = n.node
            if not isinstance(base, nodes.Name) or allowed.get(base.name) is None or base.name in assigned:
                continue
            if isinstance(n, nodes.Getattr):
                key = n.attr
            elif isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, str):
                key = n.arg.value
            else:
                continue
            names = allowed[base.name]
            if key not in names:
                problems.append(
                    Problem(
                        f"{base.name}.{key} does not exist; {base.name} has: {', '.join(sorted(names)) or 'nothing'}",
                        file=self.shown,
                        line=n.lineno,
                    )
                )
        return problems

    def render(self, context: dict[str, Any], *, where: str = "") -> str:
        """Render with ``context``; errors name the template, its line and ``where`` (e.g. the participant)."""
        try:
            return self._template.render(context)
        except Exception as exc:  # any failure inside a user's template is the template's problem, not a crash
            raise TemplateError(f"cannot render {self.kind} template {self.shown}", [self._problem(exc, where)]) from None

    def _problem(self, exc: Exception, where: str) -> Problem:
        line = None
        tb = exc.__traceback__
        while tb is not None:
            # Jinja rewrites tracebacks so that template frames carry the template's line.
            if tb.tb_frame.f_code.co_filename == "<template>":
                line = tb.tb_lineno
            tb = tb.tb_next
        msg = getattr(exc, "message", None) or str(exc)
        if not isinstance(exc, jinja2.TemplateError):
            msg = f"{type(exc).__name__}: {msg}"
        # Jinja words a missing key of a mapping as a missing attribute of a 'dict object'.
        missing = re.match(r"^'dict object' has no attribute '(.*)'$", msg)
        if missing:
            key = missing.group(1)
            if self.kind == "persona":
                msg = f"this participant's profile has no {key!r}; guard it with {{% if profile.{key} is defined %}}"
            elif self.kind in ("trial", "feedback", "instructions"):
                msg = f"the trial table has no column {key!r}"
            else:
                msg = f"no key {key!r}"
        return Problem(msg, file=self.shown, line=line, where=where or None)


def load_template(path: Path, kind: str) -> Template:
    """Load a template file of ``kind`` (persona, instructions, trial or feedback)."""
    return Template(Path(path).resolve(), kind)
