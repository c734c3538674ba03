"""The backend contract: score rendered transcripts, one forward pass per transcript.

A backend takes a batch of :class:`ScoreRequest` (the exact text a model reads
and the character span of every response in it) and returns, per response, the
log-probability of the response (natural log, summed over its tokens, over the
full vocabulary: the Psych-201 convention, the response's content only) and,
where the trial's options are known, the log-probability of every option
*followed by the response's closing text* (``>>`` in raw text), so that
options are mutually exclusive even when one is a prefix of another. Token
ids follow one rule, in :mod:`psysim.backends.encoding`: text is read as the
continuation of its real prefix. Everything model-specific lives behind this
contract; :func:`get_backend` builds one from a model entry of an experiment
file, importing heavy dependencies only then.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.transcripts import CLOSE

__all__ = ["Backend", "ResponseScore", "ScoreRequest", "ScoreResult", "Session", "engine_problems", "get_backend"]


@dataclass(frozen=True)
class ScoreRequest:
    """One transcript to score.

    ``spans[i]`` is the character span of response ``i`` in ``text``;
    ``options[i]`` the options offered on that trial (or ``None``);
    ``closers[i]`` the text that ends response ``i`` in this format (``>>``
    in raw text; in chat text, what the template writes between an assistant
    message and the next user message), scored after each option. Without
    ``closers`` every response closes with ``>>``.
    ``add_special_tokens``: whether the tokenizer's own special tokens (e.g. a
    BOS) are added, as for raw text; chat-formatted text already contains them.
    """

    key: Any
    text: str
    spans: tuple[tuple[int, int], ...]
    options: tuple[tuple[str, ...] | None, ...] = ()
    add_special_tokens: bool = True
    closers: tuple[str, ...] = ()

    def closer(self, i: int) -> str:
        """The text that ends response ``i`` (see the class docstring)."""
        return self.closers[i] if self.closers else CLOSE


@dataclass(frozen=True)
class ResponseScore:
    """The score of one response: its log-probability and, if options are known, each option's.

    ``logprob`` covers the response's content only (Psych-201's convention);
    ``option_logprobs`` cover each option followed by the response's closing
    text, so they are mutually exclusive (their probabilities sum to at most 1).
    """

    logprob: float
    n_tokens: int
    option_logprobs: tuple[float, ...] | None = None


@dataclass
class ScoreResult:
    """The scores of one request's responses, in order, and how many tokens the model read."""

    key: Any
    responses: list[ResponseScore]
    n_tokens: int
    forced: int = 0  # boundaries the tokenizer merged across, read as forced (psysim.backends.encoding)
    extra: dict[str, Any] = field(default_factory=dict)


class Session(ABC):
    """Closed-loop reading of one transcript as it is written, keeping the model's state between trials.

    Text is *read* in pieces; :meth:`options` gives the log-probability of
    each option (followed by the session's closing text) after everything read
    so far; :meth:`respond` adds the chosen response as its own piece. Text
    between two responses is one piece and every response another, read with
    :class:`psysim.backends.encoding.TokenReader` exactly as scoring reads the
    finished transcript, so scoring it gives back the numbers seen while simulating.
    """

    #: Tokens the model has processed so far (each token once, thanks to the cache).
    tokens_read: int = 0

    @abstractmethod
    def read(self, text: str) -> None:
        """Append context text (instructions, a trial, feedback)."""

    @abstractmethod
    def options(self, options: Sequence[str]) -> list[float]:
        """log p(option | everything read so far) for each option (natural log, summed over its tokens)."""

    @abstractmethod
    def respond(self, text: str) -> None:
        """Append the response given (its own piece)."""

    def close(self) -> None:  # noqa: B027 (optional: only sessions that hold memory need it)
        """Free what the session holds (its cache): it reads no more. Lock-step simulation closes finished sessions."""


class Backend(ABC):
    """A language model that scores transcripts. Subclasses: ``hf`` (transformers), ``vllm`` and ``mock``."""

    #: Longest input (tokens) the model accepts, or None if unbounded.
    max_length: int | None = None

    @abstractmethod
    def count_tokens(self, text: str, spans: Sequence[tuple[int, int]] = (), add_special_tokens: bool = True) -> int:
        """How many tokens the model reads for ``text`` with responses at ``spans``."""

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest], progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        """Score every response of every request (one forward pass per request); ``progress(n)`` after n requests."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What exactly this model is (files, hashes, revision, dtype), for the run manifest."""

    def chat_template(self) -> str | None:
        """The model's own chat template source, if it has one."""
        return None

    def session(self, add_special_tokens: bool = True, key: Any = None, closer: str = CLOSE) -> Session:
        """A :class:`Session` for closed-loop simulation of one participant (``key`` names it in errors).

        ``closer`` is the text that ends every response (``>>``, the raw format's, by default).
        """
        from ..errors import ModelError

        raise ModelError(f"the {type(self).__name__} backend cannot simulate participants (no closed-loop sessions)")

    def options_batch(self, sessions: Sequence[Session], options: Sequence[Sequence[str]]) -> list[list[float]]:
        """:meth:`Session.options` of several sessions of this backend at once (lock-step simulation).

        Each session's numbers are its own, as if asked alone; a backend that
        can batch (``hf``: one forward pass for all) overrides this loop.
        """
        return [s.options(o) for s, o in zip(sessions, options, strict=True)]


def engine_problems(config, ready=()) -> list:
    """Problems with the engines an experiment's models need, found before anything loads (vLLM not installed).

    ``config`` is a :class:`psysim.config.ExperimentConfig`; each problem points at the model's ``backend:`` line.
    Models named in ``ready`` (backends already built) are not checked.
    """
    from .vllm import INSTALL, available

    return [
        config.problem(("models", m.index, "backend"), f"backend: vllm, but vLLM is not installed here: {INSTALL}")
        for m in config.models
        if m.backend == "vllm" and m.name not in ready and not available()
    ]


def get_backend(model, base, **overrides) -> Backend:
    """Build the backend of a ``models:`` entry (:class:`psysim.config.ModelConfig`); ``base`` resolves relative paths."""
    if model.backend == "mock":
        from .mock import MockBackend

        return MockBackend(model.name)
    if model.backend == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend.from_config(model, base, **overrides)
    from .hf import HFBackend

    return HFBackend.from_config(model, base, **overrides)
