"""Single-pass scoring equals the straightforward method on a tiny random-weight model (float32, within 1e-5)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import models_tiny  # noqa: E402

from psysim.scoring import encode, option_token_ids, reference_scores, score_encoded  # noqa: E402

TEXTS = models_tiny.corpus(6)


def spans_of(text: str) -> list[tuple[int, int]]:
    from psysim.transcripts import parse_markup

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
    encoded = [encode(tok, t, spans_of(t)) for t in texts]
    assert len({len(e.ids) for e in encoded}) > 1  # unequal lengths: padding is exercised
    assert any(e.boundary_fixed for e in encoded) == merge
    with torch.no_grad():
        got = score_encoded(model, encoded, pad_id=tok.pad_token_id)
        for text, scores in zip(texts, got, strict=True):
            ref = reference_scores(model, tok, text, spans_of(text))
            assert [n for _, n, _ in scores] == [n for _, n in ref]
            for (lp, _, _), (rlp, _) in zip(scores, ref, strict=True):
                assert lp == pytest.approx(rlp, abs=1e-5)


def test_merged_boundary_is_repaired_in_one_place():
    """A tokenizer that learned '<<O' as one token: encode() cuts at span boundaries so 'O' is its own token."""
    tok = models_tiny.tokenizer(merge_boundaries=True)
    text = "You predict <<O>>. You predict <<Q>>.\n"
    whole = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    assert any("<<O" in t or "O>>" in t for t in whole), whole  # the nasty case really happens
    enc = encode(tok, text, spans_of(text))
    assert enc.boundary_fixed
    assert [tok.decode(enc.ids[s:e]) for s, e in enc.ranges] == ["O", "Q"]
    assert tok.decode(enc.ids) == text


def test_multi_token_responses_and_options_share_the_prefix():
    """Multi-token responses score like the reference; every option (single- and multi-token) is exact."""
    tok = models_tiny.tokenizer()
    model = models_tiny.model(len(tok))
    text = "Choose a word. You say <<relational meaning>>. Again: <<O>>. And: <<predict card Q>>.\n"
    spans = spans_of(text)
    enc = encode(tok, text, spans)
    assert next(e - s for s, e in enc.ranges) > 1
    options = [["relational meaning", "O", "predict card Q"], ["O", "Q"], ["predict card Q", "Q", "seven cards"]]
    opt_ids = [[option_token_ids(tok, o) for o in opts] for opts in options]
    assert any(len(o) > 1 for opts in opt_ids for o in opts)
    with torch.no_grad():
        [scores] = score_encoded(model, [enc], [opt_ids], pad_id=tok.pad_token_id)
        ref = reference_scores(model, tok, text, spans)
        for t, ((lp, n, opt_lp), (rlp, rn)) in enumerate(zip(scores, ref, strict=True)):
            assert n == rn
            assert lp == pytest.approx(rlp, abs=1e-5)
            prefix = enc.ids[: enc.ranges[t][0]]
            expected = [naive_option_logprob(model, prefix, o) for o in opt_ids[t]]
            assert opt_lp == pytest.approx(expected, abs=1e-5)
        # The human's own option scores exactly its response.
        assert scores[1][2][0] == pytest.approx(scores[1][0], abs=1e-6)


def test_chat_formatted_text_scores_like_reference():
    """Chat-template text (special tokens as text, no added BOS) scores like the reference."""
    from psysim.chat import ChatTemplate
    from psysim.prompts import builtin_templates
    from psysim.transcripts import Transcript, build_transcript

    tok = models_tiny.tokenizer()
    model = models_tiny.model(len(tok))
    spans = spans_of(TEXTS[0])
    contexts = Transcript("1", "x", TEXTS[0], ()).text
    del contexts
    # Rebuild the transcript with responses to split it into messages.
    from psysim.transcripts import parse_markup

    s, _ = parse_markup(TEXTS[0])
    pieces, pos = [], 0
    for a, b in s:
        pieces.append(TEXTS[0][pos : a - 2])
        pos = b + 2
    pieces.append(TEXTS[0][pos:])
    transcript = build_transcript("1", "x", pieces, [TEXTS[0][a:b] for a, b in s])
    from psysim.chat import to_messages

    rendering = ChatTemplate.from_file(builtin_templates("chat")["smollm2"]).render(to_messages(transcript))
    enc = encode(tok, rendering.text, rendering.spans, add_special_tokens=False)
    with torch.no_grad():
        [scores] = score_encoded(model, [enc], pad_id=tok.pad_token_id)
        ref = reference_scores(model, tok, rendering.text, rendering.spans, add_special_tokens=False)
    assert len(scores) == len(spans)
    for (lp, _, _), (rlp, _) in zip(scores, ref, strict=True):
        assert lp == pytest.approx(rlp, abs=1e-5)
