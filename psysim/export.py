"""``psysim export``: a run's data in the formats people already use, with a data dictionary.

* ``csv`` / ``parquet`` — one tidy table, one row per response: for a
  simulation run, model × condition × synthetic participant × trial
  (``simulated.csv``); for a scoring run, model × format × condition ×
  participant × response (``trials.csv``). Profile columns (``profile.<field>``)
  are joined in. Where every row has the same options, each option's
  probability also gets its own column (``prob.<option>``). In CSV, list
  cells (options, probabilities) are JSON arrays, so they read back exactly.
* ``psych201`` — a simulation's synthetic transcripts as Psych-101/201 JSONL,
  one file per model × condition (``<model>__<condition>.jsonl``): ``text``
  (responses in ``<<…>>``, without the persona the model was conditioned on),
  ``experiment``, ``participant`` and the profile fields — anything that
  reads Psych-201 (psysim included) reads them.
* ``wide`` — a simulation as survey tools export a questionnaire
  (``wide.csv``): one row per model × condition × synthetic respondent, the
  profile columns, then one column per item named by its item code (the item
  table's key, e.g. ``E1``; ``item1``, ``item2`` … in order of appearance
  where the experiment has no item table), holding the sampled response.
* Always ``data_dictionary.csv``: every column of every exported file, its
  type, its meaning (an item column: the item's text) and its values (the
  schema's value labels, ``1 = Male; 2 = Female``, or an item's options).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from .errors import Problem, PsysimError
from .files import display_path
from .store import SavedRun, open_run, write_atomic

__all__ = ["FORMATS", "export_run"]

FORMATS = ("csv", "parquet", "psych201", "wide")

#: What every column means (the data dictionary); profile and per-option columns are described on the fly.
MEANINGS = {
    "model": "The model's name in the experiment file.",
    "format": "raw (the transcript as text) or chat (through the model's chat template).",
    "condition": "The condition: what the model was conditioned on (no_persona, persona, shuffled_persona, or a named one).",
    "participant": "Participant id (synthetic ids for generated cohorts; a real id for a twin).",
    "experiment": "The experiment (study) name.",
    "trial": "0-based position of the trial (simulation) or of the response in the transcript (scoring).",
    "trial_number": "The trial number in the trial table.",
    "design_of": "The real participant whose trial sequence the synthetic participant did.",
    "persona_of": "Whose profile conditioned the model: the participant, another participant (shuffled), or empty (no persona).",
    "item": "The trial's item (the stimulus participants shared), by the study's item rule.",
    "item_code": "The item's code: its key in the item table (a wide questionnaire's column name), empty without one.",
    "options": "The options offered on the trial.",
    "option_logprobs": "Natural-log probability of each option (in the order of options), over the full vocabulary.",
    "option_probs": "The model's probability of each option, renormalised over the options (temperature 1).",
    "sampling_probs": "The distribution the response was sampled from (option_probs at the simulation's temperature).",
    "response": "The response: sampled from the model (simulation) or the human's (scoring).",
    "human_response": "The real participant's own response on this trial (twins only; empty otherwise).",
    "logprob": "Natural-log probability of the human response given everything before it, summed over its tokens.",
    "n_tokens": "Number of tokens of the response.",
    "predicted": "The model's most probable option (ties: the first).",
    "correct": "Whether predicted is the human's response.",
    "context_dropped": "How many of the oldest trials were dropped to fit the model's context.",
    "source": "The real participant the synthetic profile was resampled from (empty when drawn field by field).",
    "text": "The transcript, responses marked <<…>> (Psych-201 format).",
}


def _dtype(series) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return "boolean"
    if pd.api.types.is_integer_dtype(series):
        return "integer"
    if pd.api.types.is_float_dtype(series):
        return "number"
    sample = next((v for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))), None)
    if isinstance(sample, (list, tuple)) or (sample is not None and hasattr(sample, "tolist") and not isinstance(sample, str)):
        inner = next(iter(sample), None)
        return "list of numbers" if isinstance(inner, (int, float)) else "list of strings"
    if isinstance(sample, bool):
        return "boolean"
    if isinstance(sample, (int, float)):
        return "number"
    return "string"


def _profiles(run: SavedRun):
    """participant → profile.* columns (one row per participant) from participants.parquet."""
    parts = run.participants
    columns = [c for c in parts.columns if c.startswith("profile.")]
    extra = [c for c in ("design_of", "source") if c in parts.columns and run.kind == "simulation"]
    return parts.drop_duplicates("participant")[["participant", *extra, *columns]].reset_index(drop=True)


def _tidy(run: SavedRun):
    """The one-row-per-response table with profiles joined and per-option probability columns."""
    main = run.table("simulated" if run.kind == "simulation" else "trials")
    profiles = _profiles(run)
    joined = main.merge(
        profiles.drop(columns=[c for c in ("design_of",) if c in profiles and c in main]), on="participant", how="left"
    )
    option_sets = {tuple(o) for o in main["options"] if o is not None and not (isinstance(o, float) and math.isnan(o))}
    if len(option_sets) == 1 and main["options"].notna().all():
        (options,) = option_sets
        for i, option in enumerate(options):
            joined[f"prob.{option}"] = [list(p)[i] if p is not None else math.nan for p in joined["option_probs"]]
    return joined


def _dictionary(files: dict[str, Any], labels: dict[str, dict[str, str]], items: dict[str, tuple[str, list]]) -> list[dict]:
    """One row per column of every file: type, meaning and values (value labels, or an item column's options)."""
    rows = []
    for name, frame in files.items():
        for column in frame.columns:
            values = ""
            if column.startswith("profile."):
                field = column[len("profile.") :]
                meaning = f"Profile field {field!r} of the participant (as validated by the cohort's schema)."
                values = "; ".join(f"{k} = {v}" for k, v in labels.get(field, {}).items())
            elif column.startswith("prob."):
                meaning = f"The model's probability of option {column[len('prob.') :]!r} (option_probs, one column per option)."
            elif column in items:
                text, options = items[column]
                meaning = f"Response to item {column}: {text}"
                values = "options: " + ", ".join(map(str, options))
            else:
                meaning = MEANINGS.get(column, "Profile field (Psych-201 key).")
                values = "; ".join(f"{k} = {v}" for k, v in labels.get(column, {}).items())
            rows.append({"file": name, "column": column, "type": _dtype(frame[column]), "meaning": meaning, "values": values})
    return rows


def _wide(run: SavedRun):
    """A simulation as one row per model × condition × respondent and one column per item (see the module docstring).

    Returns the table and, per item column, (item text, options) for the dictionary.
    """
    sim = run.table("simulated")
    codes = sim["item_code"] if "item_code" in sim else None
    if codes is not None and codes.notna().all():
        sim = sim.assign(_column=codes.astype(str))
    else:
        names = {item: f"item{k + 1}" for k, item in enumerate(dict.fromkeys(sim["item"]))}
        sim = sim.assign(_column=sim["item"].map(names))
    keys = ["model", "condition", "participant"]
    twice = sim[sim.duplicated([*keys, "_column"], keep=False)]
    if len(twice):
        r = twice.iloc[0]
        raise PsysimError(
            f"{display_path(run.folder)} cannot be one row per respondent: participant {r.participant} answered item "
            f"{r._column} more than once",
            [Problem("export it in long form (--format csv or parquet): one row per response")],
        )
    order = list(dict.fromkeys(sim["_column"]))
    table = sim.pivot(index=keys, columns="_column", values="response")[order]
    units = list(dict.fromkeys(zip(sim["model"], sim["condition"], sim["participant"], strict=True)))
    table = table.reindex(units).reset_index()
    table.columns.name = None
    profiles = _profiles(run)
    table = table.merge(profiles, on="participant", how="left")
    table = table[[*keys, *(c for c in profiles.columns if c != "participant"), *order]]
    first = sim.drop_duplicates("_column").set_index("_column")
    return table, {c: (first.at[c, "item"], list(first.at[c, "options"])) for c in order}


def export_run(run_dir: str | os.PathLike, format: str, out: str | os.PathLike | None = None) -> list[Path]:
    """Export a completed run folder (scoring or simulation) as ``format``; returns the files written.

    ``out`` defaults to ``RUN_DIR/export``. See the module docstring for the files.
    """
    import pandas as pd

    if format not in FORMATS:
        raise PsysimError(f"unknown export format {format!r}", [Problem(f"expected one of {', '.join(FORMATS)}")])
    run = open_run(run_dir)
    folder = Path(out) if out is not None else run.folder / "export"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {}
    items: dict[str, tuple[str, list]] = {}
    if format == "wide":
        if run.kind != "simulation":
            raise PsysimError(
                f"{display_path(run.folder)} is a scoring run: its responses are the humans' own, already in your data file",
                [Problem("export a simulation run as wide, or this run as csv or parquet (one row per scored response)")],
            )
        table, items = _wide(run)
        path = folder / "wide.csv"
        write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))
        written[path.name] = table
    elif format in ("csv", "parquet"):
        table = _tidy(run)
        stem = "simulated" if run.kind == "simulation" else "trials"
        path = folder / f"{stem}.{format}"
        if format == "parquet":
            write_atomic(path, lambda tmp: table.to_parquet(tmp, index=False))
        else:
            flat = table.copy()
            for column in flat.columns:
                if _dtype(flat[column]).startswith("list"):
                    flat[column] = [None if v is None else json.dumps(list(v)) for v in flat[column]]
            write_atomic(path, lambda tmp: flat.to_csv(tmp, index=False))
        written[path.name] = table
    else:
        if run.kind != "simulation":
            raise PsysimError(
                f"{display_path(run.folder)} is a scoring run: it holds scores of human transcripts, not new transcripts",
                [
                    Problem("export it as csv or parquet; its human transcripts are the experiment's data file itself"),
                ],
            )
        transcripts = run.table("transcripts")
        profiles = _profiles(run).set_index("participant")
        fields = [c for c in profiles.columns if c.startswith("profile.")]
        for (model, condition), group in transcripts.groupby(["model", "condition"], sort=False):
            path = folder / f"{_safe(model)}__{_safe(condition)}.jsonl"
            lines = []
            for r in group.itertuples(index=False):
                text = r.text[len(r.persona) :] if r.persona else r.text  # Psych-201 text: the session itself
                record = {"text": text, "experiment": r.experiment, "participant": r.participant}
                for f in fields:
                    value = profiles.at[r.participant, f]
                    if value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA:
                        record[f[len("profile.") :]] = value.item() if hasattr(value, "item") else value
                lines.append(json.dumps(record, ensure_ascii=False))
            body = "\n".join(lines) + "\n"
            write_atomic(path, lambda tmp, body=body: tmp.write_text(body, encoding="utf-8"))
            written[path.name] = pd.DataFrame([json.loads(line) for line in lines])
    columns = ["file", "column", "type", "meaning", "values"]
    dictionary = pd.DataFrame(_dictionary(written, run.manifest.get("value_labels", {}), items), columns=columns)
    path = folder / "data_dictionary.csv"
    if path.exists():  # keep the entries of files other exports wrote into this folder
        old = pd.read_csv(path, dtype=str, keep_default_na=False).reindex(columns=columns, fill_value="")
        dictionary = pd.concat([old[~old["file"].isin(list(written))], dictionary], ignore_index=True)
    write_atomic(path, lambda tmp: dictionary.to_csv(tmp, index=False))
    return [folder / name for name in written] + [path]


def _safe(name: str) -> str:
    """A model or condition name as a file name (registry names may contain / or :)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
