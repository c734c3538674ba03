"""A deterministic model with no weights, for tests and ``psysim run --dry-run``.

It "tokenizes" into characters and gives every character a log-probability
drawn from a hash of the text before it, so scores depend on the prefix (a
persona changes them) and are identical on every machine. As with a real
model, an option is scored followed by the response's closing text, so the
human's own option scores its response plus that closing text.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..data.transcripts import CLOSE
from . import Backend, ResponseScore, ScoreRequest, ScoreResult, Session

VOCAB = 256  # a character-level "vocabulary": a uniform model would give log(1/256) per character


def _char_logprob(head: str, prefix: str, char: str) -> float:
    digest = hashlib.blake2b(f"{head}\x00{prefix[-200:]}\x00{char}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    return -math.log(VOCAB) + 2.0 * (u - 0.5)  # within ±1 nat of uniform


def mock_logprob(prefix: str, response: str, head: str = "") -> float:
    """The mock model's log-probability of ``response`` after ``prefix`` (sum over characters).

    ``head`` stands for the start of the transcript (persona and instructions,
    hashed once per transcript), so conditioning text changes every score
    without hashing whole prefixes.
    """
    total = 0.0
    for i, ch in enumerate(response):
        total += _char_logprob(head, prefix + response[:i], ch)
    return total


class MockBackend(Backend):
    """Deterministic scores without weights (see module docstring)."""

    def __init__(self, name: str = "mock"):
        self.name = name

    def count_tokens(self, text: str, spans=(), add_special_tokens: bool = True) -> int:
        return len(text)

    def score(self, requests: Sequence[ScoreRequest], progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        out = []
        for n, req in enumerate(requests, start=1):
            responses = []
            first = req.spans[0][0] if req.spans else len(req.text)
            head = hashlib.blake2b(req.text[:first].encode(), digest_size=8).hexdigest()
            for i, (s, e) in enumerate(req.spans):
                prefix = req.text[:s]
                opts = req.options[i] if req.options else None
                responses.append(
                    ResponseScore(
                        logprob=mock_logprob(prefix, req.text[s:e], head),
                        n_tokens=e - s,
                        option_logprobs=tuple(mock_logprob(prefix, o + req.closer(i), head) for o in opts) if opts else None,
                    )
                )
            out.append(ScoreResult(req.key, responses, len(req.text)))
            if progress:
                progress(n)
        return out

    def identity(self) -> dict[str, Any]:
        return {"backend": "mock", "name": self.name, "vocab": VOCAB}

    def session(self, add_special_tokens: bool = True, key: Any = None, closer: str = CLOSE) -> Session:
        return MockSession(closer)


class MockSession(Session):
    """Closed-loop mock: the same numbers :meth:`MockBackend.score` gives for the finished transcript."""

    def __init__(self, closer: str):
        self.closer = closer
        self.text = ""
        self.head: str | None = None  # fixed at the first response, as score() hashes the text before it

    def read(self, text: str) -> None:
        self.text += text
        self.tokens_read += len(text)

    def options(self, options) -> list[float]:
        if self.head is None:
            self.head = hashlib.blake2b(self.text.encode(), digest_size=8).hexdigest()
        return [mock_logprob(self.text, o + self.closer, self.head) for o in options]

    def respond(self, text: str) -> None:
        self.read(text)
