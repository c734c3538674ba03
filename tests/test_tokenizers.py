"""Scoring is exact for every tokenizer family: psysim against a naive scorer that shares no code with it.

The reference below re-tokenises every prefix and continuation from scratch
(the whole text before it, never a window), runs one forward pass per scored
string with full logits, and sums log-softmax values. It implements the
documented rule of psysim.backends.encoding on its own:

- a transcript is cut at every response boundary; each piece's tokens are
  ``tok(text[:b])`` minus ``tok(text[:a])`` (its tokens in context), unless the
  tokenizer merges the piece with its prefix, when the piece is read as it
  reads after a line break (after a letter when it starts with whitespace);
- the special tokens before a text (a BOS) come once, first, in raw text;
- a response's log-probability is its content's; an option's is the option
  followed by the closing text (``>>``), read right after the text before the response.

Four tokenizer families are built locally (tests/models_tiny.py): byte-level
BPE without and with a BOS, SentencePiece-style with a prefix space and a BOS,
and one that merges responses with their delimiters. Every response and option
log-probability must equal the reference within 1e-5 (float32).
"""

from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import models_tiny  # noqa: E402

from psysim.backends import ScoreRequest  # noqa: E402
from psysim.backends.hf import HFBackend  # noqa: E402
from psysim.data.transcripts import parse_markup  # noqa: E402

TOLERANCE = 1e-5

TEXTS = [
    *models_tiny.corpus(3),
    "Interviewer: What is your age?\nInterviewee: 31.0\n\n" + models_tiny.corpus(4)[3],
    models_tiny.NON_ASCII + "Noch einmal: <<ß>>, dann <<Äpfel>>.\n",
    "How many cards? You chose <<1>>, then <<10>>, then <<100>>.\nAnd finally <<1>>.\n",
    # A trial whose stimulus spans several lines; a multi-token response; a response with spaces.
    "Set 1/2:\nThe urn holds red and blue balls.\nIt is shaken.\nYou say <<relational meaning>>.\n"
    "Set 2/2:\nYou predict <<O>>. Q? << Q>>\n",
]


def spans_of(text: str) -> list[tuple[int, int]]:
    spans, errors = parse_markup(text)
    assert not errors
    return spans


def options_for(text: str) -> list[tuple[str, ...]]:
    """Each response's own text among options that include prefixes of each other and multi-token strings."""
    pool = ("1", "10", "100", "O", "Q", " Q", "ß", "α", "relational meaning", "predict card Q")
    return [tuple(dict.fromkeys((text[s:e], *pool))) for s, e in spans_of(text)]


# ------------------------------------------------------------------ the reference (no psysim code below)


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _after_break(tok, piece: str) -> list[int]:
    anchor = "a" if piece[:1].isspace() else "\n"
    head, whole = _ids(tok, anchor), _ids(tok, anchor + piece)
    return whole[len(head) :] if whole[: len(head)] == head else _ids(tok, piece)


def _in_context(tok, prefix: str, piece: str) -> list[int]:
    before, whole = _ids(tok, prefix), _ids(tok, prefix + piece)
    return whole[len(before) :] if whole[: len(before)] == before else _after_break(tok, piece)


def _bos(tok) -> list[int]:
    with_special, without = list(tok("a")["input_ids"]), _ids(tok, "a")
    return with_special[: len(with_special) - len(without)]


def _logprob(model, prefix: list[int], tokens: list[int]) -> float:
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([prefix + tokens])).logits[0].float().log_softmax(-1)
    return math.fsum(float(logp[len(prefix) + k - 1, t]) for k, t in enumerate(tokens))


def naive(model, tok, text: str, options, closer: str = ">>", add_special_tokens: bool = True, spans=None):
    """``[(logprob, n_tokens, [option logprobs])]`` per response, from scratch (spans: the ``<<…>>`` contents by default)."""
    spans = spans_of(text) if spans is None else spans
    cuts = sorted({0, len(text), *(b for s in spans for b in s)})
    ids = _bos(tok) if add_special_tokens else []
    at = {}
    for a, b in itertools.pairwise(cuts):
        at[a] = len(ids)
        ids = ids + _in_context(tok, text[:a], text[a:b])
    at[len(text)] = len(ids)
    out = []
    for (s, e), offered in zip(spans, options, strict=True):
        prefix = ids[: at[s]]
        response = ids[at[s] : at[e]]
        opts = [_logprob(model, prefix, _in_context(tok, text[:s], o + closer)) for o in offered]
        out.append((_logprob(model, prefix, response), len(response), opts))
    return out


# ------------------------------------------------------------------ the tests


def backend_for(family: str, batch_tokens: int = 4096) -> HFBackend:
    tok = models_tiny.family(family)
    vocab = max(tok.get_vocab().values()) + 1  # added merges can give ids past len(tok)
    return HFBackend(models_tiny.model(vocab), tok, name="tiny", identity={}, batch_tokens=batch_tokens)


@pytest.mark.parametrize("family", models_tiny.FAMILIES)
def test_every_response_and_option_equals_the_naive_reference(family):
    """One call, batches of unequal lengths: every log-probability equals the from-scratch reference."""
    backend = backend_for(family)
    requests = [ScoreRequest(i, t, tuple(spans_of(t)), tuple(options_for(t))) for i, t in enumerate(TEXTS)]
    results = backend.score(requests)
    for text, result in zip(TEXTS, results, strict=True):
        ref = naive(backend.model, backend.tokenizer, text, options_for(text))
        for got, (lp, n, opts) in zip(result.responses, ref, strict=True):
            assert got.n_tokens == n
            assert got.logprob == pytest.approx(lp, abs=TOLERANCE)
            assert list(got.option_logprobs) == pytest.approx(opts, abs=TOLERANCE)


@pytest.mark.parametrize("family", models_tiny.FAMILIES)
def test_options_that_are_prefixes_of_each_other_are_mutually_exclusive(family):
    """'1', '10' and '100' are scored up to the closing '>>': their probabilities sum to at most one."""
    backend = backend_for(family)
    text = "How many cards? You chose <<1>>.\n"
    [result] = backend.score([ScoreRequest("x", text, tuple(spans_of(text)), (("1", "10", "100"),))])
    [response] = result.responses
    probs = [math.exp(lp) for lp in response.option_logprobs]
    assert sum(probs) <= 1.0
    # The human's own option is its content followed by '>>', so less likely than the content alone.
    assert response.option_logprobs[0] < response.logprob


def test_sentencepiece_reads_an_option_as_it_reads_in_context():
    """With a prefix space on every input, 'O' alone is '▁O'; after '<<' in a transcript it is 'O', and so is the option."""
    tok = models_tiny.family("sentencepiece")
    assert tok.convert_ids_to_tokens(_ids(tok, "O")) == ["▁O"]
    backend = backend_for("sentencepiece")
    text = "You say << Q>> and then <<ß>>.\n"
    spans = spans_of(text)
    enc = backend.reader.encode(text, spans)
    opts, forced = backend.reader.options(text, spans, [None, ("ß", "α")], ["", ">>"])
    assert forced == 0
    read = [tok.convert_ids_to_tokens(o) for o in opts[1]]
    assert read == [tok.convert_ids_to_tokens(_in_context(tok, text[: spans[1][0]], x + ">>")) for x in ("ß", "α")]
    assert not any(t.startswith("▁") for t in read[0] + read[1])  # no spurious prefix space on an option
    assert tok.convert_ids_to_tokens(enc.ids[slice(*enc.ranges[1])]) == ["ß"]
    assert read[0][0] == "ß"  # the option reads as the response does
    assert tok.decode(enc.ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("family", models_tiny.FAMILIES)
def test_a_session_reads_the_same_tokens_and_numbers_as_scoring(family):
    """Closed loop (key/value cache, text read piece by piece) gives the option numbers of scoring the finished text."""
    backend = backend_for(family)
    for text in TEXTS[3:]:
        spans, options = spans_of(text), options_for(text)
        [scored] = backend.score([ScoreRequest("x", text, tuple(spans), tuple(options))])
        session = backend.session(add_special_tokens=True)
        pos = 0
        for (s, e), offered, got in zip(spans, options, scored.responses, strict=True):
            session.read(text[pos:s])
            assert session.options(list(offered)) == pytest.approx(list(got.option_logprobs), abs=TOLERANCE)
            session.respond(text[s:e])
            pos = e
        session.read(text[pos:])
        enc = backend.reader.encode(text, spans)
        assert session.tokens_read == enc.ranges[-1][0]  # everything before the last response, each token once


@pytest.mark.parametrize("family", models_tiny.FAMILIES)
def test_lock_step_sessions_joining_leaving_and_pausing_read_as_scoring(family):
    """Seven transcripts of unequal lengths in one lock-step group (one batched cache): they join one per trial,
    leave (close) as they finish, one sits out two trials and comes back; every option number equals scoring
    the finished transcript, and each session has read each of its tokens once."""
    backend = backend_for(family)
    scored = backend.score([ScoreRequest(i, t, tuple(spans_of(t)), tuple(options_for(t))) for i, t in enumerate(TEXTS)])
    sessions = [backend.session(add_special_tokens=True) for _ in TEXTS]
    at = [0] * len(TEXTS)  # the next response of each transcript
    pos = [0] * len(TEXTS)
    step = 0
    while any(k < len(spans_of(t)) for k, t in zip(at, TEXTS, strict=True)):
        asked = [i for i, t in enumerate(TEXTS) if i <= step and at[i] < len(spans_of(t)) and not (i == 1 and step in (3, 4))]
        options = []
        for i in asked:
            s, _ = spans_of(TEXTS[i])[at[i]]
            sessions[i].read(TEXTS[i][pos[i] : s])
            options.append(list(options_for(TEXTS[i])[at[i]]))
        for i, offered, got in zip(asked, options, backend.options_batch([sessions[i] for i in asked], options), strict=True):
            expected = scored[i].responses[at[i]].option_logprobs
            assert got == pytest.approx(list(expected), abs=TOLERANCE), (i, at[i], offered)
            s, e = spans_of(TEXTS[i])[at[i]]
            sessions[i].respond(TEXTS[i][s:e])
            pos[i], at[i] = e, at[i] + 1
            if at[i] == len(spans_of(TEXTS[i])):
                enc = backend.reader.encode(TEXTS[i], spans_of(TEXTS[i]))
                assert sessions[i].tokens_read == enc.ranges[-1][0]
                sessions[i].close()
        step += 1
    assert step > max(len(spans_of(t)) for t in TEXTS)  # the pause and the late joins made it longer than any one


@pytest.mark.parametrize("family", models_tiny.FAMILIES)
def test_the_window_reads_like_the_whole_prefix(family):
    """A long transcript (past the reading window): the windowed ids equal whole-prefix re-tokenisation."""
    tok = models_tiny.family(family)
    text = "\n".join(TEXTS) * 4
    spans = spans_of(text)
    backend = backend_for(family)
    enc = backend.reader.encode(text, spans)
    cuts = sorted({0, len(text), *(b for s in spans for b in s)})
    ids = _bos(tok)
    for a, b in itertools.pairwise(cuts):
        ids = ids + _in_context(tok, text[:a], text[a:b])
    assert enc.ids == ids
