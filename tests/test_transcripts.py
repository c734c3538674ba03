"""Transcripts: ``<<...>>`` markup, context/response round trips, and Psych-201 JSONL files.

Offsets are Python character offsets (code points), never bytes or UTF-16 units:
every span test checks ``text[start:end]`` directly.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
from pathlib import Path

import pytest
from conftest import RECORDS, needs_shared_data

from psysim.data.transcripts import Response, Transcript, build_transcript, parse_markup, read_psych201
from psysim.errors import DataError, Problem

# -- parse_markup: spans ------------------------------------------------------


def contents(text: str) -> list[str]:
    spans, errors = parse_markup(text)
    assert errors == []
    return [text[s:e] for s, e in spans]


def test_simple_response_span():
    text = "Pick A or B. You pick <<A>>."
    assert parse_markup(text) == ([(24, 25)], [])
    assert text[24:25] == "A"


def test_several_responses_in_order():
    text = "<<A>> then <<B>><<C>>"
    assert parse_markup(text) == ([(2, 3), (13, 14), (18, 19)], [])
    assert contents(text) == ["A", "B", "C"]


def test_multi_token_response():
    text = "Relation: <<crest CAUSES take>>. Next."
    spans, errors = parse_markup(text)
    assert errors == []
    assert spans == [(12, 29)]
    assert text[12:29] == "crest CAUSES take"


def test_multi_line_response():
    text = "Describe it:\n<<first line\nsecond line>>\nThanks."
    spans, errors = parse_markup(text)
    assert errors == []
    assert spans == [(15, 37)]
    assert text[15:37] == "first line\nsecond line"


def test_surrounding_spaces_belong_to_the_response():
    # Everything strictly between << and >> is the response (Psych-201's scoring convention).
    text = "You say << left door >>."
    spans, errors = parse_markup(text)
    assert errors == []
    assert spans == [(10, 21)]
    assert text[10:21] == " left door "


def test_offsets_are_python_characters_after_unicode():
    # 'é' and '日本' are 1 character each but 2-3 bytes in UTF-8; '😀' is 2 UTF-16 units.
    text = "é日本 😀 Wähle: <<ß>> und <<Ω x>>"
    spans, errors = parse_markup(text)
    assert errors == []
    assert spans == [(15, 16), (25, 28)]
    assert [text[s:e] for s, e in spans] == ["ß", "Ω x"]


def test_no_markup_gives_no_spans_and_no_errors():
    assert parse_markup("no responses here < > <> ><") == ([], [])


# -- parse_markup: errors -----------------------------------------------------


def test_unclosed():
    assert parse_markup("Pick <<A") == ([], ["unclosed '<<' at character offset 5 (no '>>' after it)"])


def test_unclosed_after_a_good_response():
    assert parse_markup("<<a>> <<") == ([(2, 3)], ["unclosed '<<' at character offset 6 (no '>>' after it)"])


def test_nested():
    _, errors = parse_markup("<<a<<b>>")
    # One typo (a missing '>>' after 'a') is one error, not a cascade.
    assert errors == ["nested '<<' at character offset 3 (inside the response opened at offset 0)"]


def test_nested_reports_the_nesting_first():
    _, errors = parse_markup("<<a <<b>> c>>")
    assert errors[0] == "nested '<<' at character offset 4 (inside the response opened at offset 0)"


def test_nested_is_one_error_not_a_cascade():
    _, errors = parse_markup("<<a <<b>> c>>")
    assert errors == ["nested '<<' at character offset 4 (inside the response opened at offset 0)"]


def test_stray_close():
    assert parse_markup("x >> y") == ([], ["'>>' at character offset 2 closes no response (no '<<' before it)"])


def test_empty():
    assert parse_markup("You pick <<>>.") == ([], ["empty response '<<>>' at character offset 9"])


def test_whitespace_only():
    assert parse_markup("a <<  >> b") == ([], ["empty response '<<  >>' at character offset 2"])
    assert parse_markup("<<\n\t>>") == ([], ["empty response '<<\n\t>>' at character offset 0"])


def test_all_errors_of_a_text_are_reported_in_order():
    spans, errors = parse_markup(">> <<a>> <<>> <<")
    assert spans == [(5, 6)]
    assert errors == [
        "'>>' at character offset 0 closes no response (no '<<' before it)",
        "empty response '<<>>' at character offset 9",
        "unclosed '<<' at character offset 14 (no '>>' after it)",
    ]


def test_error_offsets_are_python_characters():
    assert parse_markup("日本😀 <<") == ([], ["unclosed '<<' at character offset 4 (no '>>' after it)"])


def test_three_opening_brackets():
    # A response opens at the *first* '<<' (leftmost match, like re.findall(r"<<(.*?)>>"), which is how
    # Psych-201 marks and scores responses), so the third '<' is the first character of the response.
    # Not an error: the text is unambiguous under the leftmost rule, and agreeing with the regex keeps
    # psysim's spans identical to Psych-201's own on its data.
    text = "<<<x>>"
    assert parse_markup(text) == ([(2, 4)], [])
    assert text[2:4] == "<x"
    assert re.findall(r"<<(.*?)>>", text) == ["<x"]


def test_three_closing_brackets_after_a_response():
    # Symmetrically, the first '>>' closes; the remaining '>' is ordinary text after the response.
    text = "<<x>>>"
    assert parse_markup(text) == ([(2, 3)], [])
    assert re.findall(r"<<(.*?)>>", text) == ["x"]


def test_three_closing_brackets_alone():
    # One stray '>>' (at offset 0); the leftover single '>' is plain text, not a second error.
    assert parse_markup(">>>") == ([], ["'>>' at character offset 0 closes no response (no '<<' before it)"])


# -- Transcript: contexts / segments / build_transcript -----------------------

ROUND_TRIP_TEXTS = [
    "Pick A or B. You pick <<A>>. Again? You pick <<B>>.\n",
    "<<first>> middle <<second>>",
    "<<a>><<b>>",
    "é日本 😀 <<Ω x>>\n<<multi\nline>> end",
    "no responses at all",
]


def transcript_of(text: str) -> Transcript:
    spans, errors = parse_markup(text)
    assert errors == []
    responses = tuple(Response(i, text[s:e], s, e) for i, (s, e) in enumerate(spans))
    return Transcript("p", "exp", text, responses)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_contexts_rebuild_text(text):
    t = transcript_of(text)
    contexts = t.contexts()
    assert len(contexts) == len(t.responses) + 1
    rebuilt = contexts[0] + "".join("<<" + r.text + ">>" + c for r, c in zip(t.responses, contexts[1:], strict=True))
    assert rebuilt == text


def test_contexts_exact():
    t = transcript_of("<<first>> middle <<second>>")
    assert t.contexts() == ["", " middle ", ""]
    assert [(c, r.text if r else None) for c, r in t.segments()] == [("", "first"), (" middle ", "second"), ("", None)]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_segments_rebuild_text(text):
    t = transcript_of(text)
    segments = list(t.segments())
    assert segments[-1][1] is None
    assert all(r is not None for _, r in segments[:-1])
    assert "".join(c + (f"<<{r.text}>>" if r else "") for c, r in segments) == text


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_build_transcript_equals_parsing_its_text(text):
    t = transcript_of(text)
    built = build_transcript("p", "exp", t.contexts(), [r.text for r in t.responses])
    assert built == t
    assert built.text == text


def test_build_transcript_spans_options_and_data():
    t = build_transcript(
        "7", "toy", ["Q1 ", " Q2 ", "."], ["A", "B"], options=[("A", "B"), None], data=[{"rt": 1}, {"rt": 2}], source="s"
    )
    assert t.text == "Q1 <<A>> Q2 <<B>>."
    assert t.responses == (
        Response(0, "A", 5, 6, ("A", "B"), {"rt": 1}),
        Response(1, "B", 14, 15, None, {"rt": 2}),
    )
    assert t.source == "s"
    assert parse_markup(t.text) == ([(5, 6), (14, 15)], [])


def test_build_transcript_needs_one_more_context():
    with pytest.raises(ValueError, match=r"^need exactly one more context than responses$"):
        build_transcript("p", "e", ["a", "b"], ["x", "y"])


def test_read_psych201_equals_build_transcript(toy):
    records = read_psych201("data.jsonl")
    for rec, raw in zip(records, RECORDS, strict=True):
        t = rec.transcript
        built = build_transcript(
            t.participant,
            t.experiment,
            t.contexts(),
            [r.text for r in t.responses],
            data=[{"RTs": rt} for rt in raw["RTs"]],
            source=t.source,
        )
        assert built == t


# -- read_psych201: the toy file ----------------------------------------------


def test_read_psych201_toy(toy):
    records = read_psych201("data.jsonl")
    assert [r.line for r in records] == [1, 2, 3]
    first = records[0]
    t = first.transcript
    assert (t.participant, t.experiment, t.source) == ("p1", "toy", "data.jsonl:1")
    assert t.text == RECORDS[0]["text"]
    assert t.responses == (
        Response(0, "A", 24, 25, None, {"RTs": 100}),
        Response(1, "B", 47, 48, None, {"RTs": 200}),
    )
    # Profile keys are the non-list keys; lists are per-response data.
    assert first.profile == {"age": "31.0", "gender": "Female"}
    assert records[1].profile == {"age": "N/A", "gender": "Male"}


def test_read_psych201_ids_are_unique_per_sub_experiment(tmp_path):
    """One id in two sub-experiments of a file is two people: ids become <experiment>/<participant>, each its own study."""
    path = tmp_path / "d.jsonl"
    rows = [{"text": "<<a>>", "experiment": e, "participant": 1} for e in ("e1", "e2")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    got = [(r.transcript.participant, r.transcript.experiment) for r in read_psych201(path, prefix="s/")]
    assert got == [("s/e1/1", "e1"), ("s/e2/1", "e2")]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="duplicate participant id"):
        read_psych201(path)


def test_read_psych201_normalises_integer_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "<<a>>", "experiment": "e", "participant": 17}) + "\n", encoding="utf-8")
    [rec] = read_psych201(path)
    assert rec.transcript.participant == "17"


# -- read_psych201: errors ------------------------------------------------------


def write_lines(folder: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def rec(pid, text="Pick <<A>>.", experiment="toy", **extra) -> str:
    obj = {"text": text, "experiment": experiment, "participant": pid, **extra}
    return json.dumps({k: v for k, v in obj.items() if v is not None})


def test_record_errors_reported_together(toy):
    write_lines(
        toy.folder,
        [
            rec("p1"),
            rec("p1", text="Pick <<B>>."),
            rec("p2", text=None),
            rec("p3", experiment=None),
            rec(1),
            rec("1"),
        ],
    )
    with pytest.raises(DataError) as info:
        read_psych201("data.jsonl")
    assert info.value.message == "invalid Psych-201 data in data.jsonl (4 problems)"
    assert info.value.problems == (
        Problem("duplicate participant id 'p1' (first on line 1)", file="data.jsonl", where="participant p1", line=2),
        Problem(
            "expected the session text in key 'text', found nothing (null)", file="data.jsonl", where="participant p2", line=3
        ),
        Problem(
            "expected the experiment name in key 'experiment', found nothing (null)",
            file="data.jsonl",
            where="participant p3",
            line=4,
        ),
        Problem("duplicate participant id '1' (first on line 5)", file="data.jsonl", where="participant 1", line=6),
    )
    assert str(info.value).splitlines()[1] == "  - data.jsonl:2: participant p1: duplicate participant id 'p1' (first on line 1)"


def test_wrong_types_of_text_and_experiment(toy):
    write_lines(toy.folder, [rec("p1", text=["<<a>>"]), rec("p2", experiment="  ")])
    with pytest.raises(DataError) as info:
        read_psych201("data.jsonl")
    assert [(p.line, p.where, p.message) for p in info.value.problems] == [
        (1, "participant p1", "expected the session text in key 'text', found a list"),
        (2, "participant p2", "expected the experiment name in key 'experiment', found a string \"  \""),
    ]


def test_json_syntax_errors_reported_together(toy):
    write_lines(
        toy.folder,
        [
            rec("p1"),
            '["not", "an", "object"]',
            '{"text": "<<A>>", "experiment": "toy", "participant": "p4",}',
            "",
            "42",
        ],
    )
    with pytest.raises(DataError) as info:
        read_psych201("data.jsonl")
    assert info.value.message == "invalid Psych-201 data in data.jsonl (3 problems)"
    assert info.value.problems == (
        Problem("expected a JSON object, found an array", file="data.jsonl", line=2, column=1),
        Problem("invalid JSON: Expecting property name enclosed in double quotes", file="data.jsonl", line=3, column=60),
        Problem("expected a JSON object, found a number", file="data.jsonl", line=5, column=1),
    )
    assert str(info.value.problems[1]) == "data.jsonl:3:60: invalid JSON: Expecting property name enclosed in double quotes"


def test_every_kind_of_problem_in_one_error(toy):
    write_lines(
        toy.folder,
        [
            rec("p1"),
            rec("p1", text="Pick <<B>>."),
            rec("p2", text=None),
            rec("p3", experiment=None),
            '["not", "an", "object"]',
            '{"text": "<<A>>", "experiment": "toy", "participant": "p4",}',
        ],
    )
    with pytest.raises(DataError) as info:
        read_psych201("data.jsonl")
    assert sorted((p.file, p.line, p.where or "", p.message) for p in info.value.problems) == [
        ("data.jsonl", 2, "participant p1", "duplicate participant id 'p1' (first on line 1)"),
        ("data.jsonl", 3, "participant p2", "expected the session text in key 'text', found nothing (null)"),
        ("data.jsonl", 4, "participant p3", "expected the experiment name in key 'experiment', found nothing (null)"),
        ("data.jsonl", 5, "", "expected a JSON object, found an array"),
        ("data.jsonl", 6, "", "invalid JSON: Expecting property name enclosed in double quotes"),
    ]


def test_markup_list_length_and_id_problems(toy):
    write_lines(
        toy.folder,
        [
            rec("p1", text="Pick <<A>> or <<>>."),
            rec("p2", text="No responses."),
            rec("p3", RTs=[1, 2]),
            rec(None),
            rec(True),
        ],
    )
    with pytest.raises(DataError) as info:
        read_psych201("data.jsonl")
    assert info.value.message == "invalid Psych-201 data in data.jsonl (5 problems)"
    assert [(p.line, p.where, p.message) for p in info.value.problems] == [
        (1, "participant p1", "malformed markup: empty response '<<>>' at character offset 14"),
        (2, "participant p2", "the transcript has no responses (nothing is marked <<...>>)"),
        (3, "participant p3", "per-response list 'RTs' has 2 values but the transcript has 1 responses"),
        (4, None, "expected a participant id in key 'participant', found nothing (null)"),
        (5, None, "expected a participant id in key 'participant', found a boolean true"),
    ]
    assert all(p.file == "data.jsonl" for p in info.value.problems)


def test_empty_file(toy):
    write_lines(toy.folder, ["", "  "])
    with pytest.raises(DataError) as info:
        read_psych201("data.jsonl")
    assert info.value.problems == (Problem("the file has no participants", file="data.jsonl"),)


# -- read_psych201: the real Psych-201 studies (shared data) ---------------------

# study: (participants, (min, median, max) responses per participant, profile keys, per-response keys)
STUDIES = {
    "thoma2025riskychoice": (301, (9, 9, 9), {"age", "gender", "condition"}, set()),
    "guenther2022relational": (400, (55, 55, 55), {"age"}, set()),
    "franke2024bayesian": (302, (4, 4, 4), set(), {"RTs"}),
    "busch2024_stroop": (125, (84, 84, 120), {"age"}, {"RTs"}),
    "dezfouli2019": (101, (None, 1256, None), {"diagnosis"}, set()),
}


@functools.cache
def _load(path: Path):
    raws = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return read_psych201(path), raws


def study(name: str):
    return _load(needs_shared_data("psych201", name, "prompts.jsonl"))


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(STUDIES))
def test_real_study_counts(name):
    records, raws = study(name)
    n_participants, (lo, med, hi), _, _ = STUDIES[name]
    assert len(records) == len(raws) == n_participants
    counts = [len(r.transcript.responses) for r in records]
    expected = [len(re.findall(r"<<(.*?)>>", raw["text"])) for raw in raws]
    assert counts == expected
    assert statistics.median(counts) == med
    if lo is not None:
        assert (min(counts), max(counts)) == (lo, hi)
    assert len({r.transcript.participant for r in records}) == n_participants


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(STUDIES))
def test_real_study_transcripts_match_regex(name):
    records, raws = study(name)
    for rec_, raw in zip(records, raws, strict=True):
        t = rec_.transcript
        assert t.text == raw["text"]
        assert t.participant == str(raw["participant"])
        assert t.experiment == raw["experiment"]
        assert [r.text for r in t.responses] == re.findall(r"<<(.*?)>>", raw["text"])
        assert all(t.text[r.start : r.end] == r.text for r in t.responses)
        assert [r.index for r in t.responses] == list(range(len(t.responses)))


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(STUDIES))
def test_real_study_profiles_and_per_response_data(name):
    records, raws = study(name)
    _, _, profile_keys, list_keys = STUDIES[name]
    for rec_, raw in zip(records, raws, strict=True):
        assert set(rec_.profile) <= profile_keys
        assert rec_.profile == {k: raw[k] for k in profile_keys if k in raw}
        for r in rec_.transcript.responses:
            assert set(r.data) == list_keys
            for key in list_keys:
                assert r.data[key] == raw[key][r.index]
    # Every profile key of the study occurs in some record.
    assert set().union(*(rec_.profile for rec_ in records)) == profile_keys


@pytest.mark.shared_data
def test_real_rts_exact_values():
    franke, _ = study("franke2024bayesian")
    assert [r.data["RTs"] for r in franke[0].transcript.responses][:3] == [18060, 7732, 23122]
    busch, _ = study("busch2024_stroop")
    first = busch[0].transcript.responses[0]
    assert (first.text, first.data) == ("down", {"RTs": "1159"})
    assert busch[0].profile == {"age": "37"}


# ------------------------------------------------------------------ trials and dropping the oldest

MULTI = (
    "Welcome. You will play 3 sets of rounds.\nPress the key of your choice.\n\n"
    "Set 1/3:\nThe urn has 7 red and 3 blue balls.\nKeys: R = red, B = blue.\nYou press <<R>>. Correct.\n"
    "The urn has 2 red and 8 blue balls.\nKeys: R = red, B = blue.\nYou press <<B>>. Correct.\n"
    "Set 2/3:\nThe urn has 5 red and 5 blue balls.\nKeys: F = red, J = blue.\nYou press <<F>>. Wrong.\n"
    "The urn has 9 red and 1 blue balls.\nKeys: F = red, J = blue.\nYou press <<F>>. Correct.\n"
    "Set 3/3:\nThe urn has 4 red and 6 blue balls.\nKeys: J = red, F = blue.\nYou press <<F>>. Correct. Done.\n"
)


def _transcript(text: str) -> Transcript:
    spans, errors = parse_markup(text)
    assert not errors
    responses = tuple(Response(i, text[s:e], s, e) for i, (s, e) in enumerate(spans))
    return Transcript("p", "x", text, responses)


def test_trials_are_the_text_since_the_previous_response_line():
    """A stimulus of several lines and its section header belong to their own trial; the first trial has their shape."""
    t = _transcript(MULTI)
    starts = t.trial_starts()
    trials = [MULTI[a:b] for a, b in zip(starts, [*starts[1:], len(MULTI)], strict=True)]
    assert MULTI[: starts[0]] == "Welcome. You will play 3 sets of rounds.\nPress the key of your choice.\n\nSet 1/3:\n"
    assert trials[0].startswith("The urn has 7 red") and trials[0].endswith("<<R>>. Correct.\n")
    assert trials[2] == "Set 2/3:\nThe urn has 5 red and 5 blue balls.\nKeys: F = red, J = blue.\nYou press <<F>>. Wrong.\n"


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_dropping_the_oldest_removes_whole_trials(k):
    """The shortened transcript is the original with whole trials removed: no stimulus or header of a dropped trial."""
    t = _transcript(MULTI)
    starts = t.trial_starts()
    short = t.without_first(k)
    assert short.text == MULTI[: starts[0]] + MULTI[starts[k] :]
    assert [r.text for r in short.responses] == [r.text for r in t.responses[k:]]
    assert [short.text[r.start : r.end] for r in short.responses] == [r.text for r in t.responses[k:]]
    assert [r.index for r in short.responses] == list(range(k, 5))
    if k >= 3:  # set 2's header went with its first round; the key mapping of a later round is its own
        assert "Set 2/3" not in short.text and "R = red" not in short.text


def test_dropping_the_oldest_on_a_real_multi_line_study():
    """franke2024bayesian: each trial is a 16-line block with its own key mapping; dropping keeps whole blocks."""
    path = needs_shared_data("psych201", "franke2024bayesian", "prompts.jsonl")
    for record in read_psych201(path)[:40]:
        t = record.transcript
        starts = t.trial_starts()
        assert t.text[starts[0] :].startswith("Your task is to play")
        for k in range(1, len(t.responses)):
            short = t.without_first(k)
            assert short.text == t.text[: starts[0]] + t.text[starts[k] :]
            # The first kept response reads after its own trial's key list, which names its key.
            first = short.responses[0]
            trial_text = short.text[starts[0] : first.start]
            assert trial_text == t.text[starts[k] : t.responses[k].start]
            assert f"\n{first.text}: " in trial_text
