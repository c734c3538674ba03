"""Context-aware tokenisation: the token ids a model reads for a transcript, its responses and its options.

This module owns one rule, used by scoring, by closed-loop sessions and by
context fitting alike, so that a transcript scored after the fact and the same
transcript written by a simulation are read as the same tokens:

*The tokens of a piece of text are the tokens it adds when it follows its real
prefix*: ``tok(prefix + piece)`` minus ``tok(prefix)``. A transcript is cut at
every response boundary (before and after each response's content) and read
piece by piece with this rule, so every response owns exactly its own tokens,
and an option is read exactly as the response would have been had the
participant given it. Tokenising a piece on its own instead (out of context)
is wrong for tokenizers that add a prefix space to every input
(SentencePiece: Llama-2, Mistral): a response ``O`` reads as ``O`` inside the
transcript but ``▁O`` on its own.

Two refinements keep the rule exact and cheap:

- *Forced boundaries.* When the tokenizer merges a piece with the end of its
  prefix (a token such as ``<<O`` crosses the response boundary), there is no
  tokenisation in which both keep their own tokens. The boundary is then
  forced: the piece is tokenised as it reads right after a line break
  (after a letter, if the piece itself starts with whitespace), which is its
  in-context reading without the merge and without any prefix space.
- *A window of the prefix.* Tokenisers only look at nearby text (pre-token
  chunks; SentencePiece words), so the prefix is cut at a word start at least
  :data:`WINDOW` characters back; ``tok(window)`` and ``tok(window + piece)``
  give the same new tokens as the whole prefix would, at a cost linear in the
  transcript's length. ``tests/test_tokenizers.py`` checks this against
  whole-prefix re-tokenisation on four tokenizer families.

Special tokens the tokenizer puts before a text (a BOS) are added once, at the
start, when ``add_special_tokens`` is set (raw text); chat-formatted text
already contains its own.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["WINDOW", "Encoded", "TokenReader"]

#: How many characters of prefix (at least) the tokenizer sees before a piece; see the module docstring.
WINDOW = 64
#: Token ids of this many windowed texts are remembered: a transcript read under three conditions, or again and
#: again while the oldest trials are dropped to fit a context, has the same windows and pieces every time.
MEMO = 1 << 17

# The last word start in the searched range: greedy ".*" runs to the end, then backs up to the nearest one.
_LAST_WORD_START = re.compile(r"(?s).*(?<=\s)(?=\S)")


@dataclass
class Encoded:
    """Token ids of a transcript and, per response, the half-open range of its token positions.

    ``options[t][j]`` (when options were asked for) are the token ids of option
    ``j`` of response ``t`` followed by the response's closing text, as read
    right after the text before the response; ``forced`` counts boundaries that
    had to be forced (see the module docstring).
    """

    ids: list[int]
    ranges: list[tuple[int, int]]
    options: list[list[list[int]] | None] | None = None
    forced: int = 0


class TokenReader:
    """A tokenizer (transformers' interface) reading text as the continuation of a prefix."""

    def __init__(self, tokenizer, window: int = WINDOW):
        self.tokenizer = tokenizer
        self.window = window
        self._memo: dict[str, list[int]] = {}
        self.bos = self._leading_special_ids()

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens), remembered (:data:`MEMO`) and tokenised in one batch."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            for text, ids in zip(missing, self._tokenize(missing), strict=True):
                if len(self._memo) >= MEMO:
                    del self._memo[next(iter(self._memo))]  # the oldest: reading moves forward through a transcript
                self._memo[text] = ids
        return [self._memo[t] for t in texts]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if getattr(self.tokenizer, "is_fast", False) else None
        if backend is not None and backend.padding is None and backend.truncation is None:
            # What a fast tokenizer's __call__ does, without converting every encoding into a Python dict of
            # attention masks and offsets first (a third of the time on long transcripts).
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _leading_special_ids(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (e.g. Llama's BOS), as ids."""
        with_special = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
        without = list(self.tokenizer("a", add_special_tokens=False)["input_ids"])
        if without and with_special[len(with_special) - len(without) :] == without:
            return with_special[: len(with_special) - len(without)]
        return []

    def _window_start(self, text: str, end: int) -> int:
        """Where the part of ``text[:end]`` that the tokenizer needs to read what follows it starts (module docstring)."""
        if end <= self.window:
            return 0
        limit = end - self.window
        # The last word start at or before `limit`; looking back a bounded stretch keeps this linear.
        lo = max(0, limit - 4 * self.window)
        m = _LAST_WORD_START.match(text, lo, limit + 1)
        # No word start near the edge (one very long word): the whole prefix, which is always exact.
        return m.end() if m else 0

    def read(self, jobs: Sequence[tuple[str, int, Sequence[str]]]) -> tuple[list[list[list[int]]], int]:
        """For each job ``(text, end, pieces)``: the tokens each piece adds when it follows ``text[:end]``.

        All jobs go to the tokenizer in one batched call. Returns, per job, one
        token list per piece, and how many needed a forced boundary.
        """
        texts: list[str] = []
        for text, end, pieces in jobs:
            window = text[self._window_start(text, end) : end]
            texts += [window, *(window + p for p in pieces)]
        ids = self._ids(texts) if texts else []
        out, forced, k = [], 0, 0
        for _, _, pieces in jobs:
            before = ids[k]
            got = []
            for piece, whole in zip(pieces, ids[k + 1 : k + 1 + len(pieces)], strict=True):
                if whole[: len(before)] == before:
                    got.append(whole[len(before) :])
                else:
                    got.append(self.after_break(piece))
                    forced += 1
            out.append(got)
            k += 1 + len(pieces)
        return out, forced

    def continuations(self, prefix: str, pieces: Sequence[str]) -> tuple[list[list[int]], int]:
        """The tokens each of ``pieces`` adds when it follows ``prefix`` (alternatives, not a sequence)."""
        [out], forced = self.read([(prefix, len(prefix), pieces)])
        return out, forced

    def after_break(self, piece: str) -> list[int]:
        """``piece``'s tokens after a forced boundary: as it reads after a line break (a letter, if it starts with a space)."""
        anchor = "a" if piece[:1].isspace() else "\n"
        head, whole = self._ids([anchor, anchor + piece])
        if whole[: len(head)] == head:
            return whole[len(head) :]
        return self._ids([piece])[0]  # the anchor itself merged with the piece: the piece alone is all that is left

    def encode(self, text: str, spans: Sequence[tuple[int, int]], add_special_tokens: bool = True) -> Encoded:
        """Token ids of ``text`` read piece by piece (cut at every span boundary), with each response's token range."""
        cuts = sorted({0, len(text), *(b for span in spans for b in span)})
        ids = list(self.bos) if add_special_tokens else []
        starts: dict[int, int] = {}
        pieces, forced = self.read([(text, a, [text[a:b]]) for a, b in itertools.pairwise(cuts)])
        for a, [new] in zip(cuts, pieces, strict=False):
            starts[a] = len(ids)
            ids += new
        starts[len(text)] = len(ids)
        ranges = [(starts[s], starts[e]) for s, e in spans]
        if ranges and ranges[0][0] == 0:
            # A response's first token is predicted from the position before it; the very first token
            # of a text has none (Psych-201 text always has "<<" there, so this only catches malformed input).
            raise ValueError("a response starts the text: there is nothing to predict its first token from")
        empty = [t for t, (s, e) in enumerate(ranges) if s == e]
        if empty:
            raise ValueError(f"response {empty[0]} ({text[slice(*spans[empty[0]])]!r}) reads as no tokens")
        return Encoded(ids, ranges, forced=forced)

    def options(
        self,
        text: str,
        spans: Sequence[tuple[int, int]],
        options: Sequence[Sequence[str] | None],
        closers: Sequence[str],
    ) -> tuple[list[list[list[int]] | None], int]:
        """Each option of each response read as ``option + closers[t]`` right after the text before response ``t``.

        So an option's probability is that of the whole response, ended (see
        :class:`psysim.backends.ScoreRequest`). Returns the token lists
        (``None`` where a response has no options) and the number of forced boundaries.
        """
        asked = [t for t, offered in enumerate(options) if offered is not None and len(offered)]
        got, forced = self.read([(text, spans[t][0], [o + closers[t] for o in options[t]]) for t in asked])
        out: list[list[list[int]] | None] = [None] * len(options)
        for t, tokens in zip(asked, got, strict=True):
            out[t] = tokens
        return out, forced


class ReadingSession:
    """How a closed-loop session reads text: in pieces, each by the one rule (module docstring) after all before it.

    Text read between two responses is one piece, tokenized when the model
    next has to predict; each response is another. A mixin for
    :class:`psysim.backends.Session` subclasses with a ``backend`` (a
    :class:`TokenizedBackend`); they decide what to do with each piece's ids
    (:meth:`_take`).
    """

    backend: TokenizedBackend
    read_text: str = ""  # everything read and tokenized so far
    text: str = ""  # read but not yet tokenized

    def read(self, text: str) -> None:
        """Append context text (it is tokenized with what follows, up to the next response)."""
        self.text += text

    def respond(self, text: str) -> None:
        """Append the response given, as its own piece."""
        self._tokenize()
        self._add(text)

    def _add(self, piece: str) -> None:
        [ids], _ = self.backend.reader.continuations(self.read_text, [piece])
        self._take(ids)
        self.read_text += piece

    def _tokenize(self) -> None:
        if self.text:
            piece, self.text = self.text, ""
            self._add(piece)

    def _take(self, ids: list[int]) -> None:
        raise NotImplementedError


class TokenizedBackend:
    """What every backend with a real tokenizer shares: reading text by the one rule above, and checking it.

    A mixin for :class:`psysim.backends.Backend` subclasses (``hf``, ``vllm``)
    that set ``self.tokenizer``, ``self.name`` and ``self.max_length``: both
    engines then read exactly the same token ids for the same transcript.
    """

    tokenizer: object
    name: str
    max_length: int | None

    @property
    def reader(self) -> TokenReader:
        """The :class:`TokenReader` of this model's tokenizer (the one tokenisation rule)."""
        if getattr(self, "_reader", None) is None:
            self._reader = TokenReader(self.tokenizer)
        return self._reader

    def encode(self, text: str, spans=(), add_special_tokens: bool = True) -> Encoded:
        """The transcript's token ids as the model reads them (memoised: context fitting and scoring share it)."""
        memo = self.__dict__.setdefault("_encoded", {})
        key = (text, tuple(spans), add_special_tokens)
        if key not in memo:
            if len(memo) >= 256:
                memo.pop(next(iter(memo)))
            memo[key] = self.reader.encode(text, spans, add_special_tokens)
        return memo[key]

    def count_tokens(self, text: str, spans=(), add_special_tokens: bool = True) -> int:
        """How many tokens the model reads for ``text`` with responses at ``spans``."""
        return len(self.encode(text, spans, add_special_tokens).ids)

    def chat_template(self) -> str | None:
        """The tokenizer's own chat template source, if it has one."""
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None

    def prepare(self, requests) -> list[Encoded]:
        """Each request's token ids, response ranges and option tokens, checked against the model's context.

        Raises :class:`psysim.errors.ModelError` naming the request for text
        that cannot be read (a response that reads as no tokens), a transcript
        longer than the context, or an option that tokenizes to nothing.
        """
        from ..errors import ModelError

        out = []
        for req in requests:
            try:
                enc = self.encode(req.text, req.spans, req.add_special_tokens)
            except ValueError as exc:
                raise ModelError(f"{req.key}: {exc}") from None
            if self.max_length and len(enc.ids) > self.max_length:
                raise ModelError(
                    f"{req.key} is {len(enc.ids)} tokens, longer than the context of model {self.name!r} "
                    f"({self.max_length} tokens); set `scoring: {{context: drop_oldest}}` in the experiment file"
                )
            forced = enc.forced
            opts = None
            if req.options and any(req.options):
                closers = [req.closer(t) for t in range(len(req.spans))]
                opts, more = self.reader.options(req.text, req.spans, req.options, closers)
                forced += more
                for t, toks in enumerate(opts):
                    empty = [x for x, tk in zip(req.options[t] or (), toks or (), strict=True) if not tk]
                    if empty:
                        raise ModelError(f"option {empty[0]!r} of response {t} of {req.key!r} tokenizes to nothing")
            out.append(Encoded(enc.ids, enc.ranges, opts, forced))
        return out
