"""`psysim run`: the trials table and manifest, --limit, unwritable results, the hf backend on tiny local models.

The dry-run tests use the deterministic mock backend. The hf tests save a tiny
random-weight Llama and a locally trained tokenizer (tests/models_tiny.py) into
tmp_path and point the experiment's ``source`` at that folder: no network.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from psysim.render.persona import derangement
from psysim.run import COLUMNS

DRY = """\
name: toy
seed: 7
data:
  format: psych201
  path: data.jsonl
  options: [A, B]
cohort:
  schema: schema.json
models:
  - name: tiny
    formats: [raw, chat]
    chat_template: chatml
conditions: [no_persona, persona, shuffled_persona]
"""

HUMAN = {"p1": ["A", "B"], "p2": ["B", "B"], "p3": ["A", "A"]}  # the responses in conftest.RECORDS


def read_trials(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "trials.parquet")


def table_lines(stdout: str) -> list[str]:
    """The headline table: everything after the 'wrote N rows ...' line (and a dry run's note on the mock model)."""
    lines = stdout.splitlines()
    assert re.fullmatch(r"wrote \d+ rows to .+trials\.parquet \(\d+\.\d s\)", lines[0]), lines[0]
    assert lines[-1].startswith("baselines, comparisons with CIs and plots: psysim report "), lines[-1]
    return [line for line in lines[1:-1] if not line.startswith("dry run: ")]


# --------------------------------------------------------------------------------------------- dry run


def test_dry_run_writes_the_documented_table(toy, run_cli):
    """--dry-run: 16 public columns in order, one row per format × condition × participant × response, exact values."""
    toy.write_yaml(DRY)
    r = run_cli("run", "experiment.yaml", "--dry-run", "--quiet", "--out", "out")
    assert r.exit_code == 0, r.stderr
    assert "dry run: the numbers below come from psysim's mock model (no weights), not from a language model" in r.stdout
    trials = read_trials(toy.folder / "out")
    assert list(trials.columns) == COLUMNS
    assert len(trials) == 2 * 3 * 3 * 2  # formats × conditions × participants × responses
    assert trials.groupby(["format", "condition", "participant"]).size().eq(2).all()
    assert set(trials["model"]) == {"tiny"} and set(trials["experiment"]) == {"toy"}

    shuffle = derangement(["p1", "p2", "p3"], 7)
    assert all(a != b for a, b in shuffle.items())
    for (fmt, cond, pid), g in trials.groupby(["format", "condition", "participant"], sort=False):
        assert g["trial"].tolist() == [0, 1], (fmt, cond, pid)
        assert g["response"].tolist() == HUMAN[pid]
        expected_persona = {"no_persona": None, "persona": pid, "shuffled_persona": shuffle[pid]}[cond]
        assert [None if pd.isna(x) else x for x in g["persona_of"]] == [expected_persona] * 2  # null: NaN in pandas 3
    assert trials["context_dropped"].eq(0).all()
    assert trials["n_tokens"].eq(1).all()  # the mock "tokenizes" into characters

    for row in trials.itertuples():
        options = list(row.options)
        lps, probs = list(row.option_logprobs), list(row.option_probs)
        assert options == ["A", "B"]
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12)
        assert row.predicted == options[max(range(len(lps)), key=lambda i: (lps[i], -i))]
        assert row.correct == (row.predicted == row.response)
        # The human's own option is the response followed by '>>': two more mock characters, each below -4.5 nats.
        assert lps[options.index(row.response)] < row.logprob - 9
    assert trials["correct"].any() and not trials["correct"].all()  # both outcomes occur: the checks above bite

    manifest = json.loads((toy.folder / "out" / "manifest.json").read_text("utf-8"))
    assert manifest["config_sha256"] == hashlib.sha256(toy.yaml.read_bytes()).hexdigest()
    assert manifest["dry_run"] is True and manifest["limit"] is None and manifest["participants"] == 3
    assert manifest["models"] == {"tiny": {"backend": "mock", "name": "tiny", "vocab": 256}}
    assert manifest["versions"]["psysim"] == metadata.version("psysim")
    assert manifest["versions"]["pandas"] == metadata.version("pandas")

    assert r.stdout.startswith("wrote 36 rows to out/trials.parquet (")
    assert table_lines(r.stdout) == [  # the mock backend's scores are the same on every machine
        "                               responses   nll  option_nll  accuracy  pseudo_r2",
        "model format condition                                                         ",
        "tiny  raw    no_persona                6 5.855       0.869     0.500     -0.253",
        "             persona                   6 5.452       1.223     0.000     -0.764",
        "             shuffled_persona          6 5.396       0.993     0.667     -0.433",
        "      chat   no_persona                6 5.142       1.070     0.667     -0.544",
        "             persona                   6 5.420       2.423     0.333     -2.495",
        "             shuffled_persona          6 5.755       1.445     0.667     -1.085",
    ]
    for line, (_, g) in zip(table_lines(r.stdout)[2:], trials.groupby(["format", "condition"], sort=False), strict=True):
        # ... and it is the parquet's, computed here directly
        option_nll = [
            -math.log(p[list(o).index(h)]) for o, p, h in zip(g["options"], g["option_probs"], g["response"], strict=True)
        ]
        mean_option_nll = sum(option_nll) / len(option_nll)
        assert line.split()[-5:] == [
            "6",
            f"{-g['logprob'].mean():.3f}",
            f"{mean_option_nll:.3f}",
            f"{g['correct'].mean():.3f}",
            f"{1 - mean_option_nll / math.log(2):.3f}",
        ]


def test_dry_run_is_deterministic(toy, run_cli):
    """The same experiment run twice gives identical tables and the same printed summary."""
    toy.write_yaml(DRY)
    first = run_cli("run", "experiment.yaml", "--dry-run", "--quiet", "--out", "one")
    second = run_cli("run", "experiment.yaml", "--dry-run", "--quiet", "--out", "two")
    assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr
    assert_frame_equal(read_trials(toy.folder / "one"), read_trials(toy.folder / "two"))
    assert table_lines(first.stdout) == table_lines(second.stdout)


# --------------------------------------------------------------------------------------------- --limit


def test_limit_keeps_the_first_participants_in_cohort_order(toy, run_cli):
    """--limit 2 keeps the first two participants of the cohort file (not of the data file)."""
    (toy.folder / "cohort.csv").write_text("participant,age,gender\np3,45,Male\np1,31,Female\np2,,Male\n", encoding="utf-8")
    toy.write_yaml(DRY.replace("  schema: schema.json\n", "  schema: schema.json\n  path: cohort.csv\n"))
    r = run_cli("run", "experiment.yaml", "--dry-run", "--quiet", "--limit", "2", "--out", "out")
    assert r.exit_code == 0, r.stderr
    trials = read_trials(toy.folder / "out")
    assert trials["participant"].drop_duplicates().tolist() == ["p3", "p1"]
    assert len(trials) == 2 * 3 * 2 * 2
    manifest = json.loads((toy.folder / "out" / "manifest.json").read_text("utf-8"))
    assert (manifest["limit"], manifest["participants"]) == (2, 2)


def test_limit_zero_is_a_usage_error(toy, run_cli):
    """--limit 0 exits 2 with a message, before anything is written; the library refuses it too."""
    toy.write_yaml(DRY)
    r = run_cli("run", "experiment.yaml", "--dry-run", "--limit", "0", "--out", "out")
    assert r.exit_code == 2
    assert r.stderr.endswith("Error: Invalid value for --limit: expected at least 1, found 0\n")
    assert not (toy.folder / "out").exists()

    from psysim.errors import PsysimError
    from psysim.experiment import load_experiment
    from psysim.run import run_experiment

    with pytest.raises(PsysimError, match=r"^--limit must be at least 1, found 0$"):
        run_experiment(load_experiment(toy.yaml), out=toy.folder / "lib", limit=0, dry_run=True, progress=False)


# --------------------------------------------------------------------------------------------- results folder


def test_unwritable_results_folder_fails_before_any_model_is_loaded(toy, run_cli, monkeypatch):
    """--out below a regular file: exit 2 naming the folder; the (unloadable) model is never touched."""
    import psysim.backends
    import psysim.run

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the results folder was checked")

    monkeypatch.setattr(psysim.run, "get_backend", no_loading)
    monkeypatch.setattr(psysim.backends, "get_backend", no_loading)
    (toy.folder / "file.txt").write_text("not a folder\n", encoding="utf-8")
    toy.write_yaml(DRY.replace("  - name: tiny\n", "  - name: tiny\n    source: ./no-such-model\n"))
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "file.txt/out")
    assert r.exit_code == 2
    assert r.stderr == (
        "error: the results folder is not writable: file.txt/out\n"
        "  - Not a directory; choose another with --out or the experiment's output key\n"
    )
    assert r.stdout == ""


# --------------------------------------------------------------------------------------------- hf backend, tiny models


def error_of(stderr: str) -> str:
    """psysim's error message: stderr from its 'error:' line on (transformers prints a loading bar before it)."""
    at = stderr.find("error: ")
    assert at >= 0, stderr
    return stderr[at:]


def save_tiny(folder: Path, hf, merge_boundaries: bool = False, **config) -> Path:
    """Save the tiny Llama (tests/models_tiny.py) and its tokenizer to ``folder``; ``config`` edits config.json."""
    tok = hf.tokenizer(merge_boundaries=merge_boundaries)
    hf.model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    if config:
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text("utf-8")), **config}, indent=2), encoding="utf-8")
    return folder


def new_llama(vocab_size: int, hidden_size: int, seed: int):
    """A fresh tiny random Llama (not the cached one of models_tiny, which peft must not modify)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def load_folder(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


HF_MODEL = "  - name: tiny\n    source: tiny-model\n    formats: [raw, chat]\n    chat_template: chatml\n"


def hf_experiment(toy, models: str = HF_MODEL, extra: str = "") -> Path:
    """The toy experiment (three participants, options A/B, three conditions) with hf models from local folders."""
    head, _ = DRY.split("models:\n")
    return toy.write_yaml(head + "models:\n" + models + "conditions: [no_persona, persona, shuffled_persona]\n" + extra)


def assert_rows_equal_reference(trials: pd.DataFrame, exp, model, tok, model_name: str = "tiny") -> int:
    """Every row's logprob, n_tokens and option logprobs equal the naive scorer on the rendered text (float32, 1e-5).

    The naive scorer is tests/test_tokenizers.py's (no psysim code); options are
    scored followed by the format's closing text (``>>`` raw, the template's end of turn in chat).
    """
    from test_tokenizers import naive

    checked = 0
    rows = trials[trials["model"] == model_name]
    for (fmt, cond, pid), g in rows.groupby(["format", "condition", "participant"], sort=False):
        prompt = exp.render(pid, cond, format=fmt, model=model_name, drop_oldest=int(g["context_dropped"].iloc[0]))
        assert set(prompt.closers) == ({">>"} if fmt == "raw" else {exp.chat_templates[model_name].closer})
        options = [tuple(o) if o is not None else () for o in g["options"]]
        ref = naive(model, tok, prompt.text, options, prompt.closers[0], add_special_tokens=fmt == "raw", spans=prompt.spans)
        assert g["n_tokens"].tolist() == [n for _, n, _ in ref], (fmt, cond, pid)
        assert g["logprob"].tolist() == pytest.approx([lp for lp, _, _ in ref], abs=1e-5), (fmt, cond, pid)
        for got, (_, _, opts) in zip(g["option_logprobs"], ref, strict=True):
            assert (list(got) if got is not None else []) == pytest.approx(opts, abs=1e-5), (fmt, cond, pid)
        checked += len(g)
    return checked


def test_hf_run_equals_the_reference_method(toy, run_cli, hf):
    """A real (not dry) run of a tiny local model: every row, raw and chat (chatml), equals reference_scores."""
    from psysim.experiment import load_experiment

    folder = save_tiny(toy.folder / "tiny-model", hf)
    hf_experiment(toy)
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 0, r.stderr
    trials = read_trials(toy.folder / "out")
    assert list(trials.columns) == COLUMNS
    assert len(trials) == 2 * 3 * 3 * 2
    exp = load_experiment(toy.yaml)
    model, tok = load_folder(folder)
    assert assert_rows_equal_reference(trials, exp, model, tok) == len(trials)
    # no_persona raw is the Psych-201 text byte for byte: its numbers are the reference's on the file's own text.
    from conftest import RECORDS

    assert exp.render("p1", "no_persona").text == RECORDS[0]["text"]
    # The human's own option is the response followed by its closing text: less likely than the content alone.
    for row in trials.itertuples():
        assert list(row.option_logprobs)[["A", "B"].index(row.response)] < row.logprob
        assert math.fsum(row.option_probs) == pytest.approx(1.0, abs=1e-12)
    manifest = json.loads((toy.folder / "out" / "manifest.json").read_text("utf-8"))
    identity = manifest["models"]["tiny"]
    assert [identity[k] for k in ("kind", "source", "dtype", "device")] == ["folder", "tiny-model", "float32", "cpu"]
    assert identity["files"]["model.safetensors"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_quiet_run_prints_nothing_on_stderr(toy, run_cli, hf):
    """`psysim run --quiet` of an hf model writes nothing to stderr."""
    save_tiny(toy.folder / "tiny-model", hf)
    hf_experiment(toy, models="  - name: tiny\n    source: tiny-model\n")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 0
    assert r.stderr == ""


# --------------------------------------------------------------------------------------------- context policy

LONG = "Pick A or B each round.\n" + "".join(f"Round {i}: you pick <<{c}>>.\n" for i, c in enumerate("ABBAABABBABA"))
CONTEXT = 128  # the interview persona alone is ~70 tokens with the tiny 400-token vocabulary


def long_experiment(toy, hf, extra: str = "") -> Path:
    """Two participants with 12-trial transcripts, and the tiny model saved with a 128-token context."""
    save_tiny(toy.folder / "tiny-model", hf, max_position_embeddings=CONTEXT)
    record = {"text": LONG, "experiment": "toy", "age": "30", "gender": "Male"}
    toy.write_records([{**record, "participant": p} for p in ("p1", "p2")])
    return toy.write_yaml(
        "name: long\nseed: 7\ndata:\n  format: psych201\n  path: data.jsonl\ncohort:\n  schema: schema.json\n"
        "models:\n  - name: tiny\n    source: tiny-model\nconditions: [no_persona, persona]\n" + extra
    )


def test_transcript_longer_than_the_context_is_an_error_by_default(toy, run_cli, hf):
    """Default context policy: exit 2 naming the participant, its token length, the model's context and the fix."""
    long_experiment(toy, hf)
    tokens = len(hf.tokenizer()(LONG)["input_ids"])
    assert tokens > CONTEXT
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 2
    assert error_of(r.stderr) == (
        f"error: participant p1's transcript (no_persona, raw) is {tokens} tokens, longer than the context of "
        f"model 'tiny' ({CONTEXT} tokens)\n"
        "  - experiment.yaml: set `scoring: {context: drop_oldest}` in the experiment file to drop the oldest trials\n"
    )
    assert not (toy.folder / "out" / "trials.parquet").exists()


def test_drop_oldest_keeps_the_newest_trials_with_their_indices(toy, run_cli, hf):
    """scoring.context drop_oldest: the fewest oldest trials are dropped; the rest keep their indices and scores."""
    from psysim.experiment import load_experiment

    long_experiment(toy, hf, extra="scoring:\n  context: drop_oldest\n")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 0, r.stderr
    trials = read_trials(toy.folder / "out")
    exp = load_experiment(toy.yaml)
    tok = hf.tokenizer()
    n = len("ABBAABABBABA")
    dropped = {}
    for (cond, pid), g in trials.groupby(["condition", "participant"], sort=False):
        k = int(g["context_dropped"].iloc[0])
        assert g["context_dropped"].eq(k).all() and 0 < k < n, (cond, pid)
        assert g["trial"].tolist() == list(range(k, n))  # the dropped trials have no rows
        assert g["response"].tolist() == list("ABBAABABBABA"[k:])
        assert len(tok(exp.render(pid, cond, drop_oldest=k).text)["input_ids"]) <= CONTEXT
        assert len(tok(exp.render(pid, cond, drop_oldest=k - 1).text)["input_ids"]) > CONTEXT  # the fewest that fit
        dropped[cond] = k
    assert dropped["persona"] > dropped["no_persona"]  # the persona takes room too, and is kept
    # The headline counts them beside the scored responses (summed over participants), not only the report.
    expected = trials.groupby(["condition", "participant"])["context_dropped"].first().groupby("condition").sum()
    header = next(line for line in r.stdout.splitlines() if "dropped to fit" in line).split()
    assert header[:4] == ["responses", "dropped", "to", "fit"]
    # Rows read "... <condition> <responses> <dropped> <nll> ..." (model and format are printed once, sparsified).
    rows = {}
    for line in r.stdout.splitlines():
        words = line.split()
        for c in ("persona", "no_persona"):
            if c in words:
                rows[c] = int(words[words.index(c) + 2])
    assert rows == expected.to_dict(), r.stdout
    model, _ = load_folder(toy.folder / "tiny-model")
    assert assert_rows_equal_reference(trials, exp, model, tok) == len(trials)


# Whole-text tokenization merges '<<Q' ... 'Q>>' into fewer tokens than the boundary-repaired encoding scored:
# with the merge_boundaries tokenizer this transcript is 29 tokens as text but 35 as encode() feeds the model.
MERGED = "Guess O or Q.\n" + "You predict <<Q>>.\n" * 6


def merged_experiment(toy, hf, context: str) -> Path:
    from psysim.backends.encoding import TokenReader
    from psysim.data.transcripts import parse_markup

    tok = hf.tokenizer(merge_boundaries=True)
    whole, scored = len(tok(MERGED)["input_ids"]), len(TokenReader(tok).encode(MERGED, parse_markup(MERGED)[0]).ids)
    assert whole <= 32 < scored, (whole, scored)
    save_tiny(toy.folder / "tiny-model", hf, merge_boundaries=True, max_position_embeddings=32)
    toy.write_records([{"text": MERGED, "experiment": "toy", "participant": "p1", "age": "30", "gender": "Male"}])
    return toy.write_yaml(
        "name: merged\nseed: 7\ndata:\n  format: psych201\n  path: data.jsonl\ncohort:\n  schema: schema.json\n"
        f"models:\n  - name: tiny\n    source: tiny-model\nconditions: [no_persona]\nscoring:\n  context: {context}\n"
    )


def test_drop_oldest_uses_the_token_count_the_model_reads(toy, run_cli, hf):
    """drop_oldest fits transcripts by the ids actually scored (after boundary repair), not by the whole-text count."""
    merged_experiment(toy, hf, "drop_oldest")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 0, r.stderr
    assert read_trials(toy.folder / "out")["context_dropped"].gt(0).all()


def test_context_error_after_boundary_repair_names_the_participant(toy, run_cli, hf):
    """A transcript too long only after boundary repair is still reported by participant."""
    merged_experiment(toy, hf, "error")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 2
    assert error_of(r.stderr).startswith("error: participant p1's transcript (no_persona, raw) is 35 tokens")


# --------------------------------------------------------------------------------------------- bad models


def test_source_that_resolves_nowhere(toy, run_cli):
    """A source that is no folder, file, registry name nor hub id: exit 2 naming it, the place tried, and the known models."""
    hf_experiment(toy, models="  - name: tiny\n    source: nonexistent-model\n")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 2
    assert r.stderr == (
        "error: unknown model 'nonexistent-model': not a registry name, a local model folder or .gguf file "
        "(resolved against .: nonexistent-model), nor a Hugging Face hub id (org/name); known models: llama-3.2-1b, "
        "llama-3.2-1b-instruct, qwen2.5-0.5b, qwen2.5-0.5b-instruct, smollm2-135m, smollm2-135m-instruct\n"
    )


def test_registry_model_not_pulled(toy, run_cli, monkeypatch):
    """A registry name that is not pulled (empty caches, hub off): exit 2 saying how to pull it."""
    import huggingface_hub.constants

    monkeypatch.setenv("PSYSIM_CACHE", str(toy.folder / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(toy.folder / "hf"))
    hf_experiment(toy, models="  - name: tiny\n    source: smollm2-135m\n")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 2
    assert r.stderr == (
        "error: model smollm2-135m is not pulled; run `psysim models pull smollm2-135m` (once: it is then cached in "
        "cache/models/smollm2-135m)\n"
    )


def test_model_folder_with_a_corrupt_config(toy, run_cli, hf):
    """config.json that is not JSON: exit 2 naming the model and its folder, suggesting to delete and pull again."""
    folder = save_tiny(toy.folder / "tiny-model", hf)
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    hf_experiment(toy, models="  - name: tiny\n    source: tiny-model\n")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 2
    lines = error_of(r.stderr).splitlines()
    assert lines[0] == f"error: cannot load model 'tiny' from {folder}"
    assert lines[1].startswith("  - OSError: ") and f"{folder / 'config.json'}' is not a valid JSON file" in lines[1]
    assert lines[1].endswith("; the files may be corrupt or truncated: delete them and pull again (psysim models pull)")
    assert len(lines) == 2


def test_model_folder_with_truncated_weights(toy, run_cli, hf):
    """model.safetensors truncated to 8 bytes: exit 2 naming the model and its folder, suggesting to delete and pull again."""
    folder = save_tiny(toy.folder / "tiny-model", hf)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:8])
    hf_experiment(toy, models="  - name: tiny\n    source: tiny-model\n")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 2
    lines = error_of(r.stderr).splitlines()
    assert lines[0] == f"error: cannot load model 'tiny' from {folder}"
    assert lines[1].endswith("; the files may be corrupt or truncated: delete them and pull again (psysim models pull)")


@pytest.fixture
def adapter(toy, hf):
    """A LoRA adapter (q_proj, v_proj; random non-zero B, so it changes the model) made on the tiny Llama in base-model/."""
    peft = pytest.importorskip("peft")
    base = save_tiny(toy.folder / "base-model", hf)
    model, _ = load_folder(base)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    tuned = peft.get_peft_model(model, config).eval()
    tuned.save_pretrained(toy.folder / "adapter")
    return tuned


def test_adapter_for_another_base_model(toy, run_cli, hf, adapter):
    """An adapter made on a hidden-64 model used with a hidden-32 model: exit 2 naming the model and the adapter's base."""
    tok = hf.tokenizer()
    small = toy.folder / "small-model"
    new_llama(len(tok), 32, seed=1).save_pretrained(small)
    tok.save_pretrained(small)
    hf_experiment(toy, models="  - name: small\n    source: small-model\n    adapter: adapter\n")
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 2
    assert error_of(r.stderr) == (
        f"error: model 'small': the adapter in {toy.folder / 'adapter'} does not fit this base model\n"
        f"  - the adapter was trained on {str(toy.folder / 'base-model')!r}; size mismatch for "
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight: copying a param with shape "
        "torch.Size([4, 64]) from checkpoint, the shape in current model is torch.Size([4, 32]).\n"
    )


def test_adapter_for_the_same_base_reloads_exactly(toy, run_cli, hf, adapter):
    """A matching adapter loads, changes the scores, equals the in-memory adapted model, and is deterministic."""
    from psysim.experiment import load_experiment
    from psysim.registry import file_sha256

    two_models = "  - name: base\n    source: base-model\n  - name: tuned\n    source: base-model\n    adapter: adapter\n"
    hf_experiment(toy, models=two_models)
    runs = [run_cli("run", "experiment.yaml", "--quiet", "--out", out) for out in ("one", "two")]
    assert [r.exit_code for r in runs] == [0, 0], runs[0].stderr
    one, two = read_trials(toy.folder / "one"), read_trials(toy.folder / "two")
    assert_frame_equal(one, two)
    base, tuned = one[one["model"] == "base"], one[one["model"] == "tuned"]
    assert base["trial"].tolist() == tuned["trial"].tolist()
    assert abs(base["logprob"].to_numpy() - tuned["logprob"].to_numpy()).min() > 1e-4  # the adapter changes every score
    exp = load_experiment(toy.yaml)
    assert assert_rows_equal_reference(one, exp, adapter, hf.tokenizer(), model_name="tuned") == len(tuned)
    identity = json.loads((toy.folder / "one" / "manifest.json").read_text("utf-8"))["models"]["tuned"]["adapter"]
    assert identity == {
        "path": str(toy.folder / "adapter"),
        "base_model": str(toy.folder / "base-model"),
        "sha256": file_sha256(toy.folder / "adapter" / "adapter_model.safetensors"),
    }


# --------------------------------------------------------------------------------------------- out of memory


def _requests(hf):
    from psysim.backends import ScoreRequest
    from psysim.data.transcripts import parse_markup

    requests = []
    for i, text in enumerate(hf.corpus(6)):
        spans, errors = parse_markup(text)
        assert not errors
        # Every transcript has options on some trials (so all six share a batch), none on others.
        options = tuple(("O", "Q") if (i + t) % 2 else None for t in range(len(spans)))
        requests.append(ScoreRequest(key=f"t{i}", text=text, spans=tuple(spans), options=options))
    return requests


def test_out_of_memory_halves_the_batch(hf, monkeypatch):
    """A batch that runs out of memory is halved until it fits; the results equal the unhalved run's."""
    import psysim.backends.forward
    from psysim.backends.hf import HFBackend

    tok = hf.tokenizer()
    backend = HFBackend(hf.model(len(tok)), tok, name="tiny", identity={}, batch_tokens=10**6)
    requests = _requests(hf)
    expected = backend.score(requests)

    real, sizes = psysim.backends.forward.score_encoded, []

    def oom_above_one(model, batch, pad_id=0):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch, pad_id)

    monkeypatch.setattr(psysim.backends.forward, "score_encoded", oom_above_one)
    progress: list[int] = []
    got = backend.score(requests, progress=progress.append)
    assert sizes[0] == 6 and sizes.count(1) == 6  # one batch of six, halved down to single transcripts
    assert progress[-1] == 6
    assert [r.key for r in got] == [r.key for r in expected] == [f"t{i}" for i in range(6)]
    for g, e in zip(got, expected, strict=True):
        assert g.n_tokens == e.n_tokens
        assert [s.n_tokens for s in g.responses] == [s.n_tokens for s in e.responses]
        assert [s.logprob for s in g.responses] == pytest.approx([s.logprob for s in e.responses], abs=1e-5)
        for gs, es in zip(g.responses, e.responses, strict=True):
            assert (gs.option_logprobs is None) == (es.option_logprobs is None)
            if es.option_logprobs is not None:
                assert list(gs.option_logprobs) == pytest.approx(list(es.option_logprobs), abs=1e-5)


@pytest.mark.parametrize(
    ("message", "fail_single"), [("CUDA out of memory", True), ("expected scalar type Float", False)], ids=["oom-one", "other"]
)
def test_errors_that_halving_cannot_fix_propagate(hf, monkeypatch, message, fail_single):
    """Out of memory on a single transcript, or any other RuntimeError, is raised as is (no endless halving)."""
    import psysim.backends.forward
    from psysim.backends.hf import HFBackend

    tok = hf.tokenizer()
    backend = HFBackend(hf.model(len(tok)), tok, name="tiny", identity={}, batch_tokens=10**6)
    sizes = []

    def failing(model, batch, pad_id=0):
        sizes.append(len(batch))
        raise RuntimeError(message)

    monkeypatch.setattr(psysim.backends.forward, "score_encoded", failing)
    with pytest.raises(RuntimeError, match=message):
        backend.score(_requests(hf)[:4])
    assert sizes == ([4, 2, 1] if fail_single else [4])


def test_validate_counts_the_responses_drop_oldest_drops(toy, run_cli, hf):
    """Before any model loads, validate counts per study and condition what the run then drops, exactly."""
    long_experiment(toy, hf, extra="scoring:\n  context: drop_oldest\n")
    r = run_cli("validate", "experiment.yaml")
    assert r.exit_code == 0, r.stderr
    assert run_cli("run", "experiment.yaml", "--quiet", "--out", "out").exit_code == 0
    trials = read_trials(toy.folder / "out")
    per = trials.groupby(["condition", "participant"])["context_dropped"].first().groupby("condition").sum()
    assert per["persona"] > per["no_persona"] > 0
    context = [line.strip() for line in r.stdout.splitlines()[-2:]]
    assert context == [
        "context      toy · no_persona · tiny (raw): 2 of 2 transcripts longer than the context; "
        f"{per['no_persona']} of 24 responses dropped (oldest trials)",
        f"toy · persona · tiny (raw): 2 of 2 transcripts longer than the context; {per['persona']} of 24 responses "
        "dropped (oldest trials)",
    ]


def test_validate_stops_where_the_run_would(toy, run_cli, hf):
    """Under the default `error` policy, a transcript longer than the context fails validate (exit 2), located."""
    long_experiment(toy, hf)
    r = run_cli("validate", "experiment.yaml")
    assert r.exit_code == 2
    assert error_of(r.stderr) == (
        "error: some transcripts do not fit a model's context\n"
        "  - experiment.yaml: 2 of 2 transcripts of study toy (no_persona, raw) are longer than the context of model "
        "'tiny'; set `scoring: {context: drop_oldest}` to drop their oldest trials\n"
        "  - experiment.yaml: 2 of 2 transcripts of study toy (persona, raw) are longer than the context of model "
        "'tiny'; set `scoring: {context: drop_oldest}` to drop their oldest trials\n"
    )


def test_render_shows_the_shortened_text_the_model_reads(toy, run_cli, hf):
    """`psysim render` under drop_oldest prints the text scored, and says how many trials were dropped."""
    from psysim.experiment import load_experiment

    long_experiment(toy, hf, extra="scoring:\n  context: drop_oldest\n")
    assert run_cli("run", "experiment.yaml", "--quiet", "--out", "out").exit_code == 0
    trials = read_trials(toy.folder / "out")
    k = int(trials[(trials["condition"] == "persona") & (trials["participant"] == "p1")]["context_dropped"].iloc[0])
    r = run_cli("render", "experiment.yaml", "-p", "p1", "-c", "persona", "--json")
    payload = json.loads(r.stdout)
    exp = load_experiment(toy.yaml)
    assert payload["text"] == exp.render("p1", "persona", drop_oldest=k).text != exp.render("p1", "persona").text
    assert payload["context_dropped"] == k
    assert payload["context"].endswith(f"of {CONTEXT} tokens of model tiny; the {k} oldest trials are dropped to fit")
    text = run_cli("render", "experiment.yaml", "-p", "p1", "-c", "persona", "--text-only").stdout
    assert text == payload["text"]


def test_non_ascii_text_is_counted_not_estimated(toy, run_cli, hf):
    """Fewer characters than the context but more tokens (bytes of emoji): drop_oldest drops, never crashes."""
    text = "Pick.\n" + "".join(f"🎲🎲 <<{c}>>\n" for c in "ABBABABBAB")
    tok = hf.tokenizer()
    assert len(text) + 16 <= CONTEXT < len(tok(text)["input_ids"])  # the old character estimate said "fits"
    save_tiny(toy.folder / "tiny-model", hf, max_position_embeddings=CONTEXT)
    toy.write_records([{"text": text, "experiment": "toy", "participant": "p1", "age": "30", "gender": "Male"}])
    toy.write_yaml(
        "name: dice\nseed: 7\ndata:\n  format: psych201\n  path: data.jsonl\ncohort:\n  schema: schema.json\n"
        "models:\n  - name: tiny\n    source: tiny-model\nconditions: [no_persona]\nscoring:\n  context: drop_oldest\n"
    )
    r = run_cli("run", "experiment.yaml", "--quiet", "--out", "out")
    assert r.exit_code == 0, r.stderr
    trials = read_trials(toy.folder / "out")
    assert trials["context_dropped"].gt(0).all()
