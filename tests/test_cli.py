"""The shipped quickstart and the CLI as a user sees it: exact output, exit codes, start-up cost."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO

import psysim
from psysim import registry

QUICKSTART = REPO / "experiments" / "quickstart.yaml"
THOMA = REPO / "participants" / "thoma2025riskychoice" / "prompts.jsonl"


def _record(pid: str) -> dict:
    for line in THOMA.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["participant"] == pid:
            return rec
    raise KeyError(pid)


def test_quickstart_validates_with_exact_summary(run_cli, monkeypatch):
    """`psysim validate experiments/quickstart.yaml` passes and prints the summary the README shows."""
    monkeypatch.chdir(REPO)
    r = run_cli("validate", "experiments/quickstart.yaml")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:6] == [
        "ok: experiments/quickstart.yaml is valid",
        "  experiment   quickstart (thoma2025riskychoice)",
        "  data         participants/thoma2025riskychoice/prompts.jsonl (Psych-201 JSONL)",
        "  participants 50 (a seeded sample of 301)",
        "  responses    450 (per participant: median 9, min 9, max 9)",
        "  profiles     known fields: age 50, gender 50, condition 50",
    ]
    # Per study: the declared option rule, options per trial, items, and example trials with their options.
    assert lines[6] == "  study        thoma2025riskychoice: 50 participants, 450 responses"
    assert lines[7].startswith("    options    pattern «(?i)(?P<role>seven|three)")
    assert lines[8].strip() == "per trial: 2 options: 450 responses; roles: seven, three"
    assert lines[9] == "    items      the trial's position: 9 distinct, responses per item median 50 (min 50, max 50)"
    assert lines[10].endswith("→ options ['Z', 'V'], response 'Z'")
    assert lines[12:] == [
        "  conditions   no_persona, persona (interview), shuffled_persona (interview)",
        "  models       smollm2-135m-instruct (raw)",
        "  output       runs/quickstart",
        # With the default model pulled, its tokenizer counts every prompt against its context.
        "  context      smollm2-135m-instruct (raw): all 150 transcripts fit its context"
        if registry.pulled_path("smollm2-135m-instruct")
        else "  context      smollm2-135m-instruct: not checked (model smollm2-135m-instruct is not pulled; "
        "run `psysim models pull smollm2-135m-instruct`)",
    ]


def test_quickstart_no_persona_is_the_psych201_text_byte_for_byte(run_cli):
    """Raw no_persona output is exactly the Psych-201 file's text, for every sampled participant."""
    exp = psysim.load_experiment(QUICKSTART)
    for pid in exp.participants:
        assert exp.render(pid, "no_persona").text == _record(pid)["text"]
    r = run_cli("render", str(QUICKSTART), "-p", "6", "-c", "no_persona", "--text-only")
    assert r.exit_code == 0
    assert r.stdout == _record("6")["text"]


def test_quickstart_persona_is_psych201_interview(run_cli):
    """The persona condition prepends Psych-201's interview lines, values exactly as in the file."""
    rec = _record("108")
    expected = (
        f"Interviewer: What is your age?\nInterviewee: {rec['age']}\n\n"
        f"Interviewer: What is your gender?\nInterviewee: {rec['gender']}\n\n"
        f"Interviewer: Which condition of the study are you in?\nInterviewee: {rec['condition']}\n\n"
    ) + rec["text"]
    r = run_cli("render", str(QUICKSTART), "-p", "108", "-c", "persona", "--text-only")
    assert r.stdout == expected
    assert f"Interviewee: {rec['age']}\n" in expected


def test_render_shows_three_conditions_raw_and_chat(run_cli):
    """Without --condition every condition is shown; spans are listed and slice to the responses."""
    for extra in ([], ["--chat"]):
        r = run_cli("render", str(QUICKSTART), "-p", "108", "--mark", "brackets", *extra)
        assert r.exit_code == 0, r.stderr
        headers = [line for line in r.stdout.splitlines() if line.startswith("─── participant")]
        fmt = "chat · model smollm2-135m-instruct" if extra else "raw"
        assert [h.split(" · ")[1] for h in headers] == [
            "no_persona",
            "persona (profile of participant 108)",
            f"shuffled_persona (profile of participant {psysim.load_experiment(QUICKSTART).shuffle['108']})",
        ]
        assert all(fmt in h for h in headers)
        assert r.stdout.count("<<⟦" if not extra else "⟦") == 27
    payload = json.loads(run_cli("render", str(QUICKSTART), "-p", "108", "--chat", "--json").stdout)
    assert len(payload) == 3
    human = re.findall(r"<<(.*?)>>", _record("108")["text"])
    for p in payload:
        assert p["text"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        assert [p["text"][s:e] for s, e in p["spans"]] == p["responses"] == human


def test_python_m_psysim_and_lazy_imports(toy):
    """`python -m psysim` works; validating imports no torch, transformers or pandas unless a model's tokenizer is here.

    (With a model on this machine, validate reads its tokenizer, through transformers, to count contexts.)
    """
    code = (
        "import sys, psysim.cli\n"
        "try:\n"
        f"    psysim.cli.main(['validate', {str(toy.yaml)!r}])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'pandas', 'peft', 'sklearn') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    r = subprocess.run([sys.executable, "-m", "psysim", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "validate" in r.stdout and "render" in r.stdout


def test_templates_lists_builtins(run_cli):
    """`psysim templates` lists the built-in persona and chat templates."""
    out = run_cli("templates").stdout
    for name in ("interview", "first_person", "third_person", "chatml", "smollm2"):
        assert f"  {name}" in out


def test_usage_error_is_exit_2_without_traceback(run_cli):
    """A missing argument is a usage error (exit 2), not a traceback."""
    r = run_cli("render")
    assert r.exit_code == 2
    assert "Missing argument 'EXPERIMENT'" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
