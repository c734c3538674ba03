"""Single-pass scoring equals the straightforward method on a tiny random-weight model (float32, within 1e-5).

tests/test_tokenizers.py checks the same against a reference that shares no
code with psysim, on four tokenizer families; here: batching, padding,
memory bounds and the chat format.
"""

from __future__ import annotations

import functools
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import models_tiny  # noqa: E402

from psysim.backends.encoding import TokenReader  # noqa: E402
from psysim.backends.forward import ROWS, reference_scores, score_encoded  # noqa: E402

TEXTS = models_tiny.corpus(6)


def spans_of(text: str) -> list[tuple[int, int]]:
    from psysim.data.transcripts import parse_markup

    spans, errors = parse_markup(text)
    assert not errors
    return spans


def naive_option_logprob(model, prefix_ids: list[int], option_ids: list[int]) -> float:
    ids = torch.tensor([prefix_ids + option_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return math.fsum(float(logp[len(prefix_ids) + j - 1, t]) for j, t in enumerate(option_ids))


@pytest.mark.parametrize("merge", [False, True], ids=["aligned", "merged-boundaries"])
def test_single_pass_equals_reference_on_real_transcripts(merge):
    """Every response of six real transcripts, in one batch of unequal lengths, equals the reference."""
    tok = models_tiny.tokenizer(merge_boundaries=merge)
    model = models_tiny.model(len(tok))
    texts = [t if i % 2 else "Interviewer: What is your age?\nInterviewee: 31.0\n\n" + t for i, t in enumerate(TEXTS)]
    encoded = [TokenReader(tok).encode(t, spans_of(t)) for t in texts]
    assert len({len(e.ids) for e in encoded}) > 1  # unequal lengths: padding is exercised
    assert any(e.forced for e in encoded) == merge
    with torch.no_grad():
        got = score_encoded(model, encoded, pad_id=tok.pad_token_id)
        for text, scores in zip(texts, got, strict=True):
            ref = reference_scores(model, tok, text, spans_of(text))
            assert [n for _, n, _ in scores] == [n for _, n in ref]
            for (lp, _, _), (rlp, _) in zip(scores, ref, strict=True):
                assert lp == pytest.approx(rlp, abs=1e-5)


def test_merged_boundary_is_repaired_in_one_place():
    """A tokenizer that learned '<<O' as one token: the boundary is forced, so 'O' is its own token."""
    tok = models_tiny.tokenizer(merge_boundaries=True)
    text = "You predict <<O>>. You predict <<Q>>.\n"
    whole = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    assert any("<<O" in t or "O>>" in t for t in whole), whole  # the nasty case really happens
    enc = TokenReader(tok).encode(text, spans_of(text))
    assert enc.forced
    assert [tok.decode(enc.ids[s:e]) for s, e in enc.ranges] == ["O", "Q"]
    assert tok.decode(enc.ids) == text


def test_multi_token_responses_and_options_share_the_prefix():
    """Multi-token responses score like the reference; every option (single- and multi-token) is exact."""
    tok = models_tiny.tokenizer()
    model = models_tiny.model(len(tok))
    text = "Choose a word. You say <<relational meaning>>. Again: <<O>>. And: <<predict card Q>>.\n"
    spans = spans_of(text)
    reader = TokenReader(tok)
    enc = reader.encode(text, spans)
    assert next(e - s for s, e in enc.ranges) > 1
    options = [["relational meaning", "O", "predict card Q"], ["O", "Q"], ["predict card Q", "Q", "seven cards"]]
    enc.options, _ = reader.options(text, spans, options, [">>"] * 3)
    with torch.no_grad():
        [scores] = score_encoded(model, [enc], pad_id=tok.pad_token_id)
        ref = reference_scores(model, tok, text, spans)
        for t, ((lp, n, opt_lp), (rlp, rn)) in enumerate(zip(scores, ref, strict=True)):
            assert n == rn
            assert lp == pytest.approx(rlp, abs=1e-5)
            prefix = enc.ids[: enc.ranges[t][0]]
            expected = [naive_option_logprob(model, prefix, o) for o in enc.options[t]]
            assert opt_lp == pytest.approx(expected, abs=1e-5)
        # The human's own option is its response followed by '>>': the response's tokens, then more.
        own, response = enc.options[1][0], enc.ids[slice(*enc.ranges[1])]
        assert own[: len(response)] == response and len(own) > len(response)
        assert scores[1][2][0] < scores[1][0]


def test_chat_formatted_text_scores_like_reference():
    """Chat-template text (special tokens as text, no added BOS) scores like the reference."""
    from psysim.data.transcripts import Transcript, build_transcript
    from psysim.render.chat import ChatTemplate
    from psysim.templating import builtin_templates

    tok = models_tiny.tokenizer()
    model = models_tiny.model(len(tok))
    spans = spans_of(TEXTS[0])
    contexts = Transcript("1", "x", TEXTS[0], ()).text
    del contexts
    # Rebuild the transcript with responses to split it into messages.
    from psysim.data.transcripts import parse_markup

    s, _ = parse_markup(TEXTS[0])
    pieces, pos = [], 0
    for a, b in s:
        pieces.append(TEXTS[0][pos : a - 2])
        pos = b + 2
    pieces.append(TEXTS[0][pos:])
    transcript = build_transcript("1", "x", pieces, [TEXTS[0][a:b] for a, b in s])
    from psysim.render.chat import to_messages

    rendering = ChatTemplate.from_file(builtin_templates("chat")["smollm2"]).render(to_messages(transcript))
    enc = TokenReader(tok).encode(rendering.text, rendering.spans, add_special_tokens=False)
    with torch.no_grad():
        [scores] = score_encoded(model, [enc], pad_id=tok.pad_token_id)
        ref = reference_scores(model, tok, rendering.text, rendering.spans, add_special_tokens=False)
    assert len(scores) == len(spans)
    for (lp, _, _), (rlp, _) in zip(scores, ref, strict=True):
        assert lp == pytest.approx(rlp, abs=1e-5)


def test_memory_is_bounded_vocabulary_rows_and_caches(monkeypatch):
    """At most ROWS positions are projected at a time, and only rows with options keep a key/value cache."""
    tok = models_tiny.tokenizer()
    model = models_tiny.model(len(tok))
    text = "You pick " + " then ".join(["<<O>>"] * (ROWS + 40)) + ".\n"
    reader = TokenReader(tok)
    plain = reader.encode(text, spans_of(text))
    with_opts = reader.encode(text, spans_of(text))
    with_opts.options, _ = reader.options(text, spans_of(text), [("O", "Q")] * (ROWS + 40), [">>"] * (ROWS + 40))
    head = model.get_output_embeddings()
    rows, caches = [], []
    real_head, real_decoder = head.forward, model.get_decoder().forward
    monkeypatch.setattr(head, "forward", lambda x: (rows.append(x.shape[0]), real_head(x))[1])
    decoder = model.get_decoder()

    @functools.wraps(real_decoder)  # keeps the signature psysim reads the cache keyword from
    def recording(*a, **k):
        caches.append(k.get("use_cache"))
        return real_decoder(*a, **k)

    monkeypatch.setattr(decoder, "forward", recording)
    with torch.no_grad():
        score_encoded(model, [plain], pad_id=tok.pad_token_id)
        assert caches == [False] and max(rows) <= ROWS and sum(rows) == ROWS + 40
        rows.clear()
        caches.clear()
        score_encoded(model, [with_opts], pad_id=tok.pad_token_id)
    assert caches[0] is True and max(rows) <= ROWS
