"""The prompt a model reads: one participant's transcript under one condition, in the raw or chat format.

:func:`assemble` puts the persona (if any) before the transcript, raw or through
a chat template, and records where every response lies in the text (its
character span), with the options, closers and exclusions scoring needs. Every
backend, the context fitting and the export read prompts made here
(through :meth:`psysim.experiment.Experiment.render`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.transcripts import CLOSE, Transcript
from ..errors import PsysimError
from .chat import ChatTemplate, to_messages

__all__ = ["Prompt", "assemble"]


@dataclass(frozen=True)
class Prompt:
    """Exactly what a model reads for one participant under one condition and format.

    ``spans[i]`` is the character span of response ``i`` in ``text`` (its content,
    without delimiters); ``responses[i]`` is that response's text.
    ``persona_of`` names the participant whose profile conditions the prompt
    (``None`` for ``no_persona``; another participant for ``shuffled_persona``).
    """

    participant: str
    experiment: str
    condition: str
    format: str
    text: str
    spans: tuple[tuple[int, int], ...]
    responses: tuple[str, ...]
    persona: str = ""
    persona_of: str | None = None
    #: The index of each response in the participant's full transcript (differs after drop_oldest).
    indices: tuple[int, ...] = ()
    #: The options offered with each response, where known.
    options: tuple[tuple[str, ...] | None, ...] = ()
    #: The text that ends each response in this format (``>>`` raw; the chat template's end of turn), scored after options.
    closers: tuple[str, ...] = ()
    #: Per response: left out of scoring by its study's rules (read as context only), e.g. outside its trial's options.
    excluded: tuple[bool, ...] = ()

    def marked(self, left: str = "⟦", right: str = "⟧") -> str:
        """The text with every response span wrapped in ``left``/``right`` (for reading, not for models)."""
        out, pos = [], 0
        for s, e in self.spans:
            out += [self.text[pos:s], left, self.text[s:e], right]
            pos = e
        out.append(self.text[pos:])
        return "".join(out)


def assemble(
    participant: str,
    condition: str,
    format: str,
    transcript: Transcript,
    persona: str,
    persona_of: str | None,
    chat_template: ChatTemplate | None = None,
) -> Prompt:
    """The :class:`Prompt` of ``transcript`` preceded by ``persona``, in ``format``.

    Raw: the persona text followed by the transcript exactly as given. Chat:
    the same content through ``chat_template``, one user turn per context and
    one assistant turn per response.
    """
    responses = tuple(r.text for r in transcript.responses)
    if format == "raw":
        shift = len(persona)
        spans = tuple((r.start + shift, r.end + shift) for r in transcript.responses)
        text = persona + transcript.text
        closers = (CLOSE,) * len(spans)
    elif format == "chat":
        if chat_template is None:
            raise PsysimError("the chat format needs a chat template")
        rendering = chat_template.render(to_messages(transcript, persona), where=f"participant {participant}")
        text, spans = rendering.text, tuple(rendering.spans)
        closers = (chat_template.closer,) * len(spans)
    else:
        raise PsysimError(f"unknown format {format!r}; expected raw or chat")
    return Prompt(
        participant,
        transcript.experiment,
        condition,
        format,
        text,
        spans,
        responses,
        persona,
        persona_of,
        indices=tuple(r.index for r in transcript.responses),
        options=tuple(r.options for r in transcript.responses),
        closers=closers,
        excluded=tuple(r.excluded is not None for r in transcript.responses),
    )
