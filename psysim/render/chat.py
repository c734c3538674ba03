"""Chat formatting: the same transcript through a tokenizer's chat template.

Psych-201's instruct analysis gives a post-trained model its transcript as a
conversation: everything between responses is a user turn and each response
an assistant turn (the ``<<``/``>>`` delimiters disappear). This module does
the same and, unlike string matching on token ids, knows the exact character
span of every response in the rendered text: each assistant message is
rendered wrapped in two private-use sentinel characters, the sentinels are
located and removed, and the result is checked to be identical to the
template's output without sentinels (so a template that rewrites message
content is refused rather than mis-scored).

Chat templates are rendered the way ``transformers`` renders them (sandboxed
Jinja, ``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``tojson`` and
``raise_exception``), so a tokenizer's template gives the same text here as
``tokenizer.apply_chat_template(messages, tokenize=False)``.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from ..config import ModelConfig
from ..data.transcripts import Transcript
from ..errors import ModelError, Problem, TemplateError
from ..files import display_path
from ..templating import resolve_template, sandbox

__all__ = ["ChatTemplate", "chat_template_for", "to_messages"]

_OPEN_MARK = "\ue000"
_CLOSE_MARK = "\ue001"


def to_messages(transcript: Transcript, persona: str = "") -> list[dict[str, str]]:
    """Split a transcript into user/assistant messages, as Psych-201's instruct analysis does.

    Text between responses becomes a user message (empty text makes no
    message), each response an assistant message. A persona is prepended to
    the first user message, so that raw and chat formats condition on the
    same text.
    """
    messages: list[dict[str, str]] = []
    for i, (context, response) in enumerate(transcript.segments()):
        content = (persona + context) if i == 0 else context
        if content:
            messages.append({"role": "user", "content": content})
        if response is not None:
            messages.append({"role": "assistant", "content": response.text})
    return messages


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@dataclass
class ChatRendering:
    """A rendered conversation and the character span of each assistant message's content."""

    text: str
    spans: list[tuple[int, int]]


class ChatTemplate:
    """A chat template (Jinja source as tokenizers ship it), rendered with known response spans."""

    def __init__(self, source: str, *, name: str = "<chat template>", special_tokens: dict[str, str] | None = None):
        self.source = source
        self.name = name
        self.special_tokens = dict(special_tokens or {})
        env = sandbox(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"chat template has a syntax error: {name}",
                [Problem(f"template syntax error: {exc.message}", file=name, line=exc.lineno)],
            ) from None

    def __reduce__(self):
        # Pickled (to Ray workers) as what it was made from; compiled again where it is unpickled.
        return (_chat_template, (self.source, self.name, self.special_tokens))

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> ChatTemplate:
        """Load a chat template from a ``.jinja`` file."""
        from ..files import read_text

        p = Path(path)
        return cls(read_text(p, error=TemplateError, what="chat template"), name=display_path(p), **kwargs)

    def _render(self, messages: list[dict[str, str]], where: str) -> str:
        # The variables transformers passes (tools/documents absent). No strftime_now: templates
        # that date the prompt (Llama 3.1+) fall back to their fixed default date, so the same
        # experiment reads the same text on every day it is run.
        context = {"messages": messages, "add_generation_prompt": False, "tools": None, "documents": None}
        try:
            return self._template.render(**context, **self.special_tokens)
        except Exception as exc:  # a failure inside the template is the template's problem, not a crash
            message = getattr(exc, "message", None) or str(exc)
            if not isinstance(exc, jinja2.TemplateError):
                message = f"{type(exc).__name__}: {message}"
            raise TemplateError(
                f"cannot render chat template {self.name}", [Problem(message, file=self.name, where=where or None)]
            ) from None

    @functools.cached_property
    def closer(self) -> str:
        """What the template writes after an assistant message, up to the next user message's content.

        It ends a response in the chat format: options are scored followed by
        it, so that they are mutually exclusive. Found by rendering a probe
        conversation (user, assistant, user, assistant) with private-use
        characters as contents.
        """
        probe = [
            {"role": "user", "content": "\ue002"},
            {"role": "assistant", "content": _OPEN_MARK},
            {"role": "user", "content": "\ue003"},
            {"role": "assistant", "content": _CLOSE_MARK},
        ]
        text = self._render(probe, "the probe conversation that finds the end of an assistant turn")
        a, u = text.find(_OPEN_MARK), text.find("\ue003")
        if a == -1 or u <= a:
            raise TemplateError(
                f"chat template {self.name} does not write messages in order, so the end of an assistant turn is unknown",
                [Problem("rendering user, assistant, user, assistant did not give their contents in that order", file=self.name)],
            )
        return text[a + 1 : u]

    def render(self, messages: list[dict[str, str]], *, where: str = "") -> ChatRendering:
        """Render ``messages``; return the text and the spans of the assistant contents, in order."""
        for m in messages:
            if _OPEN_MARK in m["content"] or _CLOSE_MARK in m["content"]:
                raise TemplateError(
                    "text contains a private-use character psysim reserves for chat rendering",
                    [Problem("remove U+E000/U+E001 from the data", where=where or None)],
                )
        marked = [{**m, "content": _OPEN_MARK + m["content"] + _CLOSE_MARK} if m["role"] == "assistant" else m for m in messages]
        text_marked = self._render(marked, where)
        spans: list[tuple[int, int]] = []
        out: list[str] = []
        pos = 0
        removed = 0
        while True:
            i = text_marked.find(_OPEN_MARK, pos)
            if i == -1:
                break
            j = text_marked.find(_CLOSE_MARK, i)
            if j == -1:
                break
            out.append(text_marked[pos:i])
            start = i - removed
            removed += 1
            end = j - removed
            removed += 1
            out.append(text_marked[i + 1 : j])
            spans.append((start, end))
            pos = j + 1
        out.append(text_marked[pos:])
        text = "".join(out)
        contents = [m["content"] for m in messages if m["role"] == "assistant"]
        found = [text[s:e] for s, e in spans]
        if found != contents or text != self._render(messages, where):
            if len(found) != len(contents):
                detail = f"expected {len(contents)} assistant messages in the output, found {len(found)}"
            elif found != contents:
                i = next(k for k, (a, b) in enumerate(zip(found, contents, strict=True)) if a != b)
                detail = f"assistant message {i} is {contents[i]!r} but the template writes {found[i]!r}"
            else:
                detail = "the template's output depends on where message content starts and ends"
            raise TemplateError(
                f"chat template {self.name} changes or drops message content, so response positions cannot be known",
                [Problem(detail, file=self.name, where=where or None)],
            )
        return ChatRendering(text, spans)


def _chat_template(source: str, name: str, special_tokens: dict[str, str]) -> ChatTemplate:
    return ChatTemplate(source, name=name, special_tokens=special_tokens)


def chat_template_for(model: ModelConfig, base: Path) -> ChatTemplate:
    """The chat template of ``model``: the experiment's ``chat_template``, else the model's own files.

    A local model folder provides ``chat_template.jinja`` or the
    ``chat_template`` of ``tokenizer_config.json``; a local ``.gguf`` file
    provides ``tokenizer.chat_template`` from its metadata.
    """
    if model.chat_template:
        try:
            return ChatTemplate.from_file(resolve_template(model.chat_template, "chat", base))
        except KeyError as exc:
            raise ModelError(exc.args[0]) from None
    source = Path(base, os.path.expanduser(model.source))
    if not source.exists():
        from ..registry import resolve

        try:  # a registry name or hub id that has been pulled: its folder has the template
            source = resolve(model.source, base).path
        except ModelError:
            pass
    if source.is_dir():
        # transformers' save_pretrained writes the template to chat_template.jinja (newer) or
        # into tokenizer_config.json (older); the special tokens are in tokenizer_config.json.
        config = source / "tokenizer_config.json"
        data = _read_json(config) if config.is_file() else {}
        special = {}
        for key in ("bos_token", "eos_token"):
            token = data.get(key)
            token = token.get("content") if isinstance(token, dict) else token  # older AddedToken form
            if isinstance(token, str):
                special[key] = token
        jinja = source / "chat_template.jinja"
        if jinja.is_file():
            return ChatTemplate.from_file(jinja, special_tokens=special)
        template = data.get("chat_template")
        if isinstance(template, str):
            return ChatTemplate(template, name=display_path(config), special_tokens=special)
    if source.is_file() and source.suffix == ".gguf":
        try:
            from gguf import GGUFReader  # lazy: only GGUF users need it
        except ImportError:
            raise ModelError(
                "reading a chat template from a .gguf file needs the gguf package: pip install 'psysim[gguf]'"
            ) from None
        reader = GGUFReader(str(source))
        tmpl = reader.fields.get("tokenizer.chat_template")
        if tmpl is not None:
            return ChatTemplate(bytes(tmpl.parts[tmpl.data[0]]).decode("utf-8"), name=display_path(source))
    raise ModelError(
        f"model {model.name!r} has no chat template psysim can find without loading it; "
        "set chat_template to a built-in name (chatml, smollm2) or a .jinja file"
    )


def _read_json(path: Path) -> dict:
    import json

    from ..files import read_text

    try:
        data = json.loads(read_text(path, error=ModelError, what="tokenizer config"))
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"tokenizer config is not valid JSON: {display_path(path)}",
            [Problem(f"invalid JSON: {exc.msg}", file=display_path(path), line=exc.lineno, column=exc.colno)],
        ) from None
    return data if isinstance(data, dict) else {}
