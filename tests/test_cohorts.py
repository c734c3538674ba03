"""Synthetic cohorts (psysim.cohorts): the documented draw order, the distributions, resampling, and bad specs.

Golden draws come from a plain reimplementation of the draw order documented
in psysim/cohorts.py (and a few literal values, which pin NumPy's streams);
every bad ``cohort.generate`` is pinned with its exact located message.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap

import numpy as np
import pytest
from conftest import EXPERIMENT

import psysim.cohorts
from psysim.cohorts import Generated, check_spec, generate_profiles
from psysim.config import load_config
from psysim.errors import ConfigError, DataError
from psysim.participants import Cohort, ProfileSchema, load_cohort

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["gender"],
    "properties": {
        "age": {"type": "number", "minimum": 0, "maximum": 120},
        "gender": {"type": "string", "enum": ["Female", "Male", "Other"]},
        "handedness": {
            "type": "integer",
            "enum": [1, 2, 3],
            "x-psysim": {"value_labels": {"1": "right", "2": "left", "3": "both"}},
        },
        "rating": {"type": "integer", "enum": [1, 3, 5]},
        "dose": {"type": "number", "multipleOf": 0.5},
        "condition": {"type": "string"},
        "score": {"type": "number"},
    },
}
ORDER = list(SCHEMA["properties"])

# Four real participants; (gender, handedness, condition) occur only as in these rows.
COHORT = """\
participant,age,gender,handedness,condition,score
p1,31.0,Female,1,A,0.5
p2,45,Male,2,B,
p3,,Other,3,C,1.25
p4,8,Female,2,B,-3
"""
ROWS = {("Female", 1, "A"), ("Male", 2, "B"), ("Other", 3, "C"), ("Female", 2, "B")}


def setup(toy, generate: str):
    """The toy experiment with ``generate`` (YAML, dedented) under cohort.generate; line 9 is its first line."""
    block = textwrap.indent(textwrap.dedent(generate), "    ")
    toy.write_yaml(EXPERIMENT.replace("  schema: schema.json\n", "  schema: schema.json\n  generate:\n" + block))
    toy.write_schema(SCHEMA)
    (toy.folder / "cohort.csv").write_text(COHORT, encoding="utf-8")
    config = load_config(toy.yaml)
    schema = ProfileSchema.load(config.cohort.schema)
    return config, schema, load_cohort(toy.folder / "cohort.csv", schema)


def with_spec(config, generate: dict):
    """``config`` with another cohort.generate (no YAML positions: for many generated specs)."""
    return dataclasses.replace(config, cohort=dataclasses.replace(config.cohort, generate=generate), marks={})


# -- the reference: the documented draw order, written out plainly ----------------------


def reference(generate: dict, rows: list, n: int, seed: int) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    """``(id, values)`` of each profile and the resampled sources, by the documented draw order."""
    rng = np.random.default_rng(seed)
    fields = generate.get("fields", {})
    out, sources = [], {}
    for i in range(n):
        sid = "s" + str(i + 1).zfill(max(4, len(str(n))))
        values = {}
        if generate.get("resample"):
            row = rows[int(rng.integers(len(rows)))]
            values = dict(row.values)
            sources[sid] = row.participant
        for name in ORDER:
            if name not in fields:
                continue
            f = fields[name]
            if f.get("missing", 0) > 0 and rng.random() < f["missing"]:
                values.pop(name, None)
                continue
            d = f["distribution"]
            if d == "constant":
                values[name] = f["value"]
                continue
            if d == "categorical":
                keys, weights = list(f["weights"]), list(f["weights"].values())
                sums = []
                for w in weights:
                    sums.append((sums[-1] if sums else 0.0) + w)
                x = rng.random() * sums[-1]
                values[name] = next(k for k, s in zip(keys, sums, strict=True) if x < s)
                continue
            if d == "uniform":
                v = f["min"] + (f["max"] - f["min"]) * rng.random()
            else:
                v = f["mean"] + f["sd"] * rng.standard_normal()
                v = max(v, f.get("min", -math.inf))
                v = min(v, f.get("max", math.inf))
            if SCHEMA["properties"][name]["type"] == "integer":
                v = round(v)
            elif "decimals" in f:
                v = round(v, f["decimals"]) + 0.0  # never -0.0
            values[name] = v
        out.append((sid, {k: values[k] for k in ORDER if k in values}))
    return out, sources


GOLDEN = """\
resample: true
fields:
  score: {distribution: normal, mean: 0, sd: 1, decimals: 2}
  age: {distribution: normal, mean: 35, sd: 12, min: 18, max: 90, decimals: 1, missing: 0.2}
  handedness: {distribution: uniform, min: 1, max: 3}
  condition: {distribution: constant, value: synthetic}
"""


def test_golden_draws_follow_the_documented_order(toy):
    config, schema, cohort = setup(toy, GOLDEN)
    result = generate_profiles(config, schema, cohort, 50, 2026)
    profiles = result.profiles
    expected, sources = reference(config.cohort.generate, list(cohort), 50, 2026)
    assert [(p.participant, p.values) for p in profiles] == expected
    assert result.sources == sources
    assert isinstance(result, Generated) and result == (profiles, sources)
    # Literal values pin NumPy's PCG64 and normal streams: the same seed, the same cohort, on every machine.
    assert [(p.participant, p.values) for p in profiles[:3]] == [
        ("s0001", {"age": 18.0, "gender": "Female", "handedness": 2, "condition": "synthetic", "score": 0.64}),
        ("s0002", {"age": 31.3, "gender": "Female", "handedness": 1, "condition": "synthetic", "score": -0.27}),
        ("s0003", {"age": 41.2, "gender": "Female", "handedness": 2, "condition": "synthetic", "score": -0.09}),
    ]
    assert list(result.sources.values())[:3] == ["p4", "p1", "p1"]


def test_golden_draws_without_resampling(toy):
    spec = """\
    fields:
      gender: {distribution: categorical, weights: {Female: 3, Male: 0, Other: 1.5}}
      handedness: {distribution: categorical, weights: {1: 0.7, 2: 0.2, 3: 0.1}, missing: 0.5}
      age: {distribution: uniform, min: 18, max: 65, decimals: 0}
    """
    config, schema, _ = setup(toy, spec)
    profiles, drawn_from = generate_profiles(config, schema, None, 200, 7)
    expected, sources = reference(config.cohort.generate, [], 200, 7)
    assert [(p.participant, p.values) for p in profiles] == expected
    assert drawn_from == sources == {}
    assert {p.values["gender"] for p in profiles} == {"Female", "Other"}  # weight 0: never drawn


def test_same_seed_same_profiles_and_a_prefix_for_any_n(toy):
    config, schema, cohort = setup(toy, GOLDEN)
    a = generate_profiles(config, schema, cohort, 40, 11)
    b = generate_profiles(config, schema, cohort, 40, 11)
    assert a == b
    assert generate_profiles(config, schema, cohort, 10, 11).profiles == a.profiles[:10]  # profile after profile
    assert [p.values for p in generate_profiles(config, schema, cohort, 40, 12).profiles] != [p.values for p in a.profiles]


def test_ids_are_padded_to_the_width_of_n(toy):
    config, schema, _ = setup(toy, "fields:\n  gender: {distribution: constant, value: Male}\n")
    assert [p.participant for p in generate_profiles(config, schema, None, 3, 0).profiles] == ["s0001", "s0002", "s0003"]
    ids = [p.participant for p in generate_profiles(config, schema, None, 9999, 0).profiles]
    assert (ids[0], ids[-1]) == ("s0001", "s9999")
    ids = [p.participant for p in generate_profiles(config, schema, None, 10000, 0).profiles]
    assert (ids[0], ids[-1], len(set(ids))) == ("s00001", "s10000", 10000)


@pytest.mark.parametrize("n", [0, -3])
def test_n_must_be_at_least_one(toy, n):
    config, schema, cohort = setup(toy, GOLDEN)
    with pytest.raises(ConfigError) as info:
        generate_profiles(config, schema, cohort, n, 1)
    assert str(info.value) == f"simulation.n must be at least 1, found {n}"


def test_without_generate_there_is_nothing_to_draw(toy):
    config = load_config(toy.yaml)
    schema = ProfileSchema.load(config.cohort.schema)
    assert check_spec(config, schema) == []
    with pytest.raises(ConfigError) as info:
        generate_profiles(config, schema, None, 5, 1)
    assert [str(p) for p in info.value.problems] == [
        "experiment.yaml:7:3: cohort.generate: missing required key: synthetic profiles are drawn from cohort.generate"
    ]


# -- distributions --------------------------------------------------------------------

N = 20_000


def test_distributions_over_many_draws(toy):
    spec = """\
    fields:
      gender: {distribution: categorical, weights: {Female: 5, Male: 3, Other: 2}}
      age: {distribution: normal, mean: 40, sd: 10, min: 0, max: 120, decimals: 1}
      score: {distribution: normal, mean: 0, sd: 1, min: -0.5, max: 0.5}
      handedness: {distribution: uniform, min: 0.501, max: 3.499}
      condition: {distribution: constant, value: X, missing: 0.25}
      dose: {distribution: uniform, min: 0, max: 10, decimals: 0}
    """
    config, schema, _ = setup(toy, spec)
    profiles, _ = generate_profiles(config, schema, None, N, 3)
    col = {name: [p.values.get(name) for p in profiles] for name in ORDER}

    def within_3se(count: int, p: float) -> bool:
        return abs(count / N - p) <= 3 * math.sqrt(p * (1 - p) / N)

    for value, p in (("Female", 0.5), ("Male", 0.3), ("Other", 0.2)):
        assert within_3se(col["gender"].count(value), p), value
    age = np.array(col["age"])
    assert abs(age.mean() - 40) <= 3 * 10 / math.sqrt(N)
    assert abs(age.std() - 10) <= 3 * 10 / math.sqrt(2 * N)
    assert all(round(a, 1) == a for a in col["age"])  # decimals: 1
    score = np.array(col["score"])
    assert score.min() == -0.5 and score.max() == 0.5  # clipped, and the bounds are reached
    phi = 0.5 * math.erfc(0.5 / math.sqrt(2))  # P(z < -0.5)
    assert within_3se(int((score == -0.5).sum()), phi) and within_3se(int((score == 0.5).sum()), phi)
    # An integer field gets ints; [0.501, 3.499) rounds to 1, 2, 3 with (nearly) equal chances.
    assert {type(h) for h in col["handedness"]} == {int}
    for h in (1, 2, 3):
        assert within_3se(col["handedness"].count(h), 1 / 3), h
    assert within_3se(col["condition"].count(None), 0.25)
    # decimals: 0 on a number field: whole numbers, still floats; the ends get half the mass (half to even).
    assert {type(d) for d in col["dose"]} == {float} and set(col["dose"]) == {float(k) for k in range(11)}
    assert within_3se(col["dose"].count(5.0), 0.1) and within_3se(col["dose"].count(0.0), 0.05)


def test_resample_keeps_the_joint_structure_of_real_rows(toy):
    config, schema, cohort = setup(toy, "resample: true\nfields:\n  score: {distribution: uniform, min: 0, max: 1}\n")
    profiles, sources = generate_profiles(config, schema, cohort, 2000, 5)
    triples = {(p.values["gender"], p.values["handedness"], p.values["condition"]) for p in profiles}
    assert triples == ROWS  # every real combination, and no other
    for p in profiles:
        row = cohort[sources[p.participant]]
        assert {k: v for k, v in p.values.items() if k != "score"} == {k: v for k, v in row.values.items() if k != "score"}
        # A resampled field reads as the real participant's: raw "45" stays "45", codes keep their labels.
        assert {k: v for k, v in p.text.items() if k != "score"} == {k: v for k, v in row.text.items() if k != "score"}
        assert 0 <= p.values["score"] < 1
    counts = {pid: list(sources.values()).count(pid) for pid in ("p1", "p2", "p3", "p4")}
    assert all(abs(c / 2000 - 0.25) <= 3 * math.sqrt(0.25 * 0.75 / 2000) for c in counts.values()), counts
    assert cohort["p2"].text["age"] == "45" and cohort["p1"].text["handedness"] == "right"
    assert "age" not in cohort["p3"]  # unknown in the row, unknown in its copies
    assert all("age" not in p for p in profiles if sources[p.participant] == "p3")


def test_rounding_never_shows_minus_zero(toy):
    config, schema, _ = setup(
        toy,
        """\
        fields:
          gender: {distribution: constant, value: Male}
          score: {distribution: normal, mean: 0, sd: 0.01, decimals: 1}
        """,
    )
    assert {p.text["score"] for p in generate_profiles(config, schema, None, 200, 1).profiles} == {"0.0"}


def test_drawn_codes_are_typed_and_labelled_by_the_schema(toy):
    config, schema, _ = setup(
        toy,
        """\
        fields:
          gender: {distribution: constant, value: Other}
          handedness: {distribution: categorical, weights: {"2": 1}}
          age: {distribution: constant, value: "31.0"}
        """,
    )
    ((p,), _) = generate_profiles(config, schema, None, 1, 0)
    assert p.values == {"age": 31.0, "gender": "Other", "handedness": 2}
    assert p.text == {"age": "31.0", "gender": "Other", "handedness": "left"}


# -- bad specs: every problem at once, each located ----------------------------------------

BAD = {
    "unknown field": (
        """\
        fields:
          gendr: {distribution: categorical, weights: {Male: 1}}
          gender: {distribution: constant, value: Male}
        """,
        [
            "experiment.yaml:10:14: cohort.generate.fields.gendr: unknown profile field 'gendr' (did you mean 'gender'?); "
            "the profile schema has: age, gender, handedness, rating, dose, condition, score"
        ],
    ),
    "keys of another distribution, required keys missing": (
        """\
        fields:
          gender: {distribution: categorical}
          age: {distribution: normal, mean: 30, min: 0, max: 99, weights: {a: 1}}
          score: {distribution: uniform, min: 1, decimals: 1}
          condition: {distribution: constant}
        """,
        [
            "experiment.yaml:10:15: cohort.generate.fields.gender.weights: missing required key for distribution categorical",
            "experiment.yaml:11:12: cohort.generate.fields.age.sd: missing required key for distribution normal",
            "experiment.yaml:11:71: cohort.generate.fields.age.weights: not allowed for distribution normal; "
            "expected one of: mean, sd, min, max, decimals, missing",
            "experiment.yaml:12:14: cohort.generate.fields.score.max: missing required key for distribution uniform",
            "experiment.yaml:13:18: cohort.generate.fields.condition.value: missing required key for distribution constant",
        ],
    ),
    "bad ranges": (
        """\
        fields:
          gender: {distribution: constant, value: Male}
          age: {distribution: uniform, min: -5, max: 130}
          score: {distribution: uniform, min: 2, max: 2}
          dose: {distribution: normal, mean: 1, sd: 1, min: 3, max: 1}
        """,
        [
            "experiment.yaml:11:41: cohort.generate.fields.age.min: the lowest draw is not a valid value of profile field age: "
            "expected a number ≥ 0, found a number -5.0",
            "experiment.yaml:11:50: cohort.generate.fields.age.max: the highest draw is not a valid value of profile field age: "
            "expected a number ≤ 120, found a number 130.0",
            "experiment.yaml:12:51: cohort.generate.fields.score.max: expected a number greater than min (2), "
            "found an integer 2; use constant for a single value",
            "experiment.yaml:13:65: cohort.generate.fields.dose.max: expected a number greater than min (3), found an integer 1",
        ],
    ),
    "categorical and constant values the schema rejects": (
        """\
        fields:
          gender: {distribution: categorical, weights: {female: 1, Male: 1, 1: 1}}
          handedness: {distribution: categorical, weights: {1: 0, 4: 0, "two": 0}}
          condition: {distribution: constant, value: [A, B]}
          age: {distribution: constant, value: "31 years"}
        """,
        [
            "experiment.yaml:10:61: cohort.generate.fields.gender.weights.female: not a valid value of profile field gender: "
            'expected one of "Female", "Male", "Other"; found a string "female" (did you mean \'Female\'?)',
            "experiment.yaml:10:76: cohort.generate.fields.gender.weights.1: not a valid value of profile field gender: "
            'expected a string, found an integer 1; expected one of "Female", "Male", "Other"; found an integer 1',
            "experiment.yaml:11:56: cohort.generate.fields.handedness.weights: expected at least one weight > 0, found all 0",
            "experiment.yaml:11:66: cohort.generate.fields.handedness.weights.4: not a valid value of profile field handedness: "
            "expected one of 1, 2, 3; found an integer 4",
            "experiment.yaml:11:76: cohort.generate.fields.handedness.weights.two: not a valid value of profile field "
            'handedness: expected an integer, found a string "two"; expected one of 1, 2, 3; found a string "two"',
            "experiment.yaml:12:50: cohort.generate.fields.condition.value: not a valid value of profile field condition: "
            "expected a string, found a list",
            "experiment.yaml:13:44: cohort.generate.fields.age.value: not a valid value of profile field age: "
            'expected a number, found a string "31 years"',
        ],
    ),
    "values that mean unknown": (
        """\
        fields:
          gender: {distribution: categorical, weights: {Male: 1, "N/A": 1}}
          condition: {distribution: constant, value: null}
        """,
        [
            "experiment.yaml:10:69: cohort.generate.fields.gender.weights.N/A: 'N/A' means unknown (cohort.missing), "
            "not a value; to leave gender unknown in some profiles, use missing: <probability>",
            "experiment.yaml:11:50: cohort.generate.fields.condition.value: null means unknown (cohort.missing), "
            "not a value; to leave condition unknown in some profiles, use missing: <probability>",
        ],
    ),
    "a normal that could leave the schema's bounds": (
        """\
        fields:
          gender: {distribution: constant, value: Male}
          age: {distribution: normal, mean: 40, sd: 10}
          score: {distribution: normal, mean: 0, sd: 1}
        """,
        [
            "experiment.yaml:11:12: cohort.generate.fields.age.min: missing required key: a normal distribution can draw "
            "any number, but profile field age must be ≥ 0; give min (draws are clipped to [min, max])",
            "experiment.yaml:11:12: cohort.generate.fields.age.max: missing required key: a normal distribution can draw "
            "any number, but profile field age must be ≤ 120; give max (draws are clipped to [min, max])",
        ],
    ),
    "numbers the schema does not take": (
        """\
        fields:
          gender: {distribution: uniform, min: 0, max: 1}
          handedness: {distribution: uniform, min: 1, max: 3, decimals: 2}
          rating: {distribution: uniform, min: 1, max: 5}
          dose: {distribution: uniform, min: 0, max: 10}
          age: {distribution: normal, mean: 1, sd: 1, min: 0, max: 1, decimals: 1}
        """,
        [
            "experiment.yaml:10:30: cohort.generate.fields.gender.distribution: profile field gender is a string in the "
            "profile schema, but uniform draws numbers; use categorical or constant",
            "experiment.yaml:11:69: cohort.generate.fields.handedness.decimals: profile field handedness is an integer in "
            "the profile schema: expected decimals 0 (or none), found an integer 2",
            "experiment.yaml:12:30: cohort.generate.fields.rating.distribution: draws between min and max can be 2, which "
            "is not a valid value of profile field rating: expected one of 1, 3, 5; found an integer 2",
            "experiment.yaml:13:28: cohort.generate.fields.dose.distribution: profile field dose takes only multiples of "
            "0.5, but uniform draws any number between min and max; give decimals or use categorical",
        ],
    ),
    "listed values and an unbounded normal": (
        """\
        fields:
          gender: {distribution: constant, value: Male}
          rating: {distribution: normal, mean: 3, sd: 1}
          dose: {distribution: uniform, min: 0, max: 1000, decimals: 1}
        """,
        [
            "experiment.yaml:11:30: cohort.generate.fields.rating.distribution: profile field rating takes only the values "
            "its schema lists; give min and max (so that every value drawn can be checked) or use categorical",
            "experiment.yaml:12:28: cohort.generate.fields.dose.distribution: profile field dose takes only multiples of "
            "0.5, but there are too many values between min and max to check (10001); use categorical",
        ],
    ),
    "required fields": (
        """\
        fields:
          age: {distribution: uniform, min: 1, max: 2}
        """,
        [
            "experiment.yaml:10:7: cohort.generate.fields.gender: profile field gender is required by the profile schema, "
            "but it is neither drawn (fields) nor resampled (resample: true); give it a distribution"
        ],
    ),
    "a required field that may be unknown": (
        """\
        resample: true
        fields:
          gender: {distribution: categorical, weights: {Male: 1}, missing: 0.1}
        """,
        [
            "experiment.yaml:11:72: cohort.generate.fields.gender.missing: profile field gender is required by the profile "
            "schema, so it cannot be unknown: expected missing 0, found a number 0.1"
        ],
    ),
    "nothing to draw": (
        "fields: {}\n",
        [
            "experiment.yaml:9:5: cohort.generate: expected fields to draw or resample: true, found neither: "
            "every profile would be empty",
            "experiment.yaml:9:13: cohort.generate.fields.gender: profile field gender is required by the profile schema, "
            "but it is neither drawn (fields) nor resampled (resample: true); give it a distribution",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_spec_is_reported_at_once_and_located(toy, case):
    spec, expected = BAD[case]
    config, schema, cohort = setup(toy, spec)
    assert [str(p) for p in check_spec(config, schema, cohort)] == expected
    with pytest.raises(ConfigError) as info:
        generate_profiles(config, schema, cohort, 10, 1)
    n = len(expected)
    assert info.value.message == f"invalid cohort.generate in experiment.yaml ({n} problem{'s' if n > 1 else ''})"
    assert [str(p) for p in info.value.problems] == expected


def test_resample_needs_rows(toy):
    config, schema, cohort = setup(toy, "resample: true\n")
    expected = [
        "experiment.yaml:9:15: cohort.generate.resample: resample: true needs the cohort's rows to draw from, but there are none"
    ]
    assert check_spec(config, schema) == []  # no cohort given: left to generate_profiles
    assert [str(p) for p in check_spec(config, schema, None)] == expected
    assert [str(p) for p in check_spec(config, schema, Cohort(schema, {}, "cohort.csv"))] == expected
    assert check_spec(config, schema, cohort) == []
    with pytest.raises(ConfigError) as info:
        generate_profiles(config, schema, None, 3, 1)
    assert [str(p) for p in info.value.problems] == expected


# -- what check_spec guards against ----------------------------------------------------------

# Specs check_spec rejects, and what drawing from them anyway would produce.
UNGUARDED = {
    "age: {distribution: normal, mean: -50, sd: 1, max: 99, decimals: 1}": "field age: expected a number ≥ 0",
    "age: {distribution: uniform, min: 100, max: 200, decimals: 0}": "field age: expected a number ≤ 120",
    "gender: {distribution: categorical, weights: {female: 1}}": 'field gender: expected one of "Female", "Male", "Other"',
    "condition: {distribution: constant, value: 3}": "field condition: expected a string, found an integer 3",
    "rating: {distribution: uniform, min: 1.6, max: 2.4}": "field rating: expected one of 1, 3, 5; found an integer 2",
    "dose: {distribution: uniform, min: 0.1, max: 0.4}": "field dose: ",
}


@pytest.mark.parametrize("field", list(UNGUARDED))
def test_check_spec_catches_what_drawing_would_reject(toy, monkeypatch, field):
    spec = f"resample: true\nfields:\n  {field}\n"
    config, schema, cohort = setup(toy, spec)
    assert check_spec(config, schema, cohort) != []
    # Drawing regardless (the check switched off) fails in the profile schema's own validation,
    # with a located error naming the synthetic participant, where they came from, the field and value.
    monkeypatch.setattr(psysim.cohorts, "check_spec", lambda *a, **k: [])
    with pytest.raises(ConfigError) as info:
        generate_profiles(config, schema, cohort, 20, 1)
    first = str(info.value.problems[0])
    name = field.split(":")[0]
    assert first.startswith("experiment.yaml:11:") and f": cohort.generate.fields.{name}: synthetic participant s00" in first
    assert "(resampled from participant p" in first and UNGUARDED[field] in first


def test_specs_that_pass_check_spec_always_draw_valid_profiles(toy):
    """Random specs: whenever check_spec finds nothing, 100 draws all pass the schema."""
    config, schema, cohort = setup(toy, "resample: true\n")
    rng = np.random.default_rng(0)
    numeric = ["age", "handedness", "rating", "dose", "score"]
    passed = 0
    for _ in range(600):
        fields = {}
        for name in rng.choice(numeric, size=2, replace=False):
            lo = float(rng.choice([-10, 0, 0.5, 1, 2, 4.5, 100]))
            hi = lo + float(rng.choice([0.3, 1, 3, 50]))
            f = {"distribution": str(rng.choice(["uniform", "normal"])), "min": lo, "max": hi}
            if f["distribution"] == "normal":
                f |= {"mean": (lo + hi) / 2, "sd": float(rng.choice([0.1, 1, 30]))}
                for bound in ("min", "max"):
                    if rng.random() < 0.3:
                        del f[bound]
            if rng.random() < 0.5:
                f["decimals"] = int(rng.choice([0, 1, 2]))
            fields[str(name)] = f
        cfg = with_spec(config, {"resample": True, "fields": fields})
        if check_spec(cfg, schema, cohort):
            continue
        passed += 1
        generate_profiles(cfg, schema, cohort, 100, passed)  # raises if any profile were invalid
    assert passed > 40  # the loop tested something


def test_a_rule_across_fields_is_caught_when_drawing(toy):
    """A schema rule that ties two fields together cannot be checked field by field: drawing reports it, located."""
    config, schema, cohort = setup(
        toy,
        """\
        fields:
          gender: {distribution: constant, value: Male}
          age: {distribution: uniform, min: 0, max: 100, decimals: 0}
        """,
    )
    rule = {
        "if": {"required": ["gender"], "properties": {"gender": {"const": "Male"}}},
        "then": {"properties": {"age": {"maximum": 60}}},
    }
    schema = ProfileSchema({**SCHEMA, **rule})
    assert check_spec(config, schema, cohort) == []
    with pytest.raises(ConfigError) as info:
        generate_profiles(config, schema, cohort, 10, 3)
    assert str(info.value) == (
        "cohort.generate drew profiles the profile schema rejects in experiment.yaml (1 problem)\n"
        "  - experiment.yaml:11:12: cohort.generate.fields.age: synthetic participant s0003, field age: "
        "expected a number ≤ 60, found a number 80.0 (and 1 more synthetic participant)"
    )


def test_drawn_values_are_never_left_out_as_invalid(toy, monkeypatch):
    """x-psysim "invalid": "missing" makes a real participant's bad value unknown; a bad draw is still an error."""
    lenient = {**SCHEMA["properties"]["age"], "x-psysim": {"invalid": "missing"}}
    try:
        schema = ProfileSchema({**SCHEMA, "properties": {**SCHEMA["properties"], "age": lenient}})
    except DataError:
        pytest.skip("this version of psysim has no x-psysim invalid annotation")
    config, _, cohort = setup(toy, "resample: true\nfields:\n  age: {distribution: uniform, min: 100, max: 200}\n")
    assert [str(p) for p in check_spec(config, schema, cohort)] == [
        "experiment.yaml:11:51: cohort.generate.fields.age.max: the highest draw is not a valid value of profile field "
        "age: expected a number ≤ 120, found a number 200.0"
    ]
    # Drawing regardless, the value is an error too, never silently unknown.
    monkeypatch.setattr(psysim.cohorts, "check_spec", lambda *a, **k: [])
    with pytest.raises(ConfigError) as info:
        generate_profiles(config, schema, cohort, 5, 1)
    assert "field age: expected a number ≤ 120, found a number 1" in str(info.value.problems[0])
