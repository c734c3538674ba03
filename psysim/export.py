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
* ``--layout wide`` (csv, parquet, stata, spss) — a simulation as survey
  tools export a questionnaire (``wide.<ext>``): one row per model ×
  condition × synthetic respondent, the profile columns, then one column per
  item named by its item code (the item table's key, e.g. ``E1``; ``item1``,
  ``item2`` … in order of appearance where the experiment has no item table),
  holding the sampled response.
* ``stata`` (``.dta``, through pandas) and ``spss`` (``.sav``, through
  pyreadstat: ``pip install 'psysim[spss]'``) — wide by default, with
  variable labels (an item's text, a profile field's question) and value
  labels (the schema's ``value_labels``); responses and coded fields whose
  values are all numbers are stored as numbers so that their labels attach.
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

__all__ = ["FORMATS", "LAYOUTS", "export_run"]

FORMATS = ("csv", "parquet", "psych201", "stata", "spss")
LAYOUTS = ("long", "wide")

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


def export_run(
    run_dir: str | os.PathLike, format: str, out: str | os.PathLike | None = None, layout: str | None = None
) -> list[Path]:
    """Export a completed run folder (scoring or simulation) as ``format``; returns the files written.

    ``layout`` is ``long`` (one row per response; the default for csv and
    parquet) or ``wide`` (one row per respondent, item codes as columns; the
    default for stata and spss; simulations only). ``out`` defaults to
    ``RUN_DIR/export``. See the module docstring for the files.
    """
    import pandas as pd

    if format not in FORMATS:
        raise PsysimError(f"unknown export format {format!r}", [Problem(f"expected one of {', '.join(FORMATS)}")])
    if layout is not None and layout not in LAYOUTS:
        raise PsysimError(f"unknown layout {layout!r}", [Problem(f"expected one of {', '.join(LAYOUTS)}")])
    if format == "psych201" and layout == "wide":
        raise PsysimError(
            "Psych-201 JSONL is one transcript per line: it has no wide layout",
            [Problem("export --format csv, parquet, stata or spss with --layout wide")],
        )
    layout = layout or ("wide" if format in ("stata", "spss") else "long")
    if format == "spss":
        try:
            import pyreadstat  # noqa: F401
        except ImportError:
            raise PsysimError(
                "--format spss needs the pyreadstat package", [Problem("pip install 'psysim[spss]' (or export --format stata)")]
            ) from None
    run = open_run(run_dir)
    folder = Path(out) if out is not None else run.folder / "export"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {}
    items: dict[str, tuple[str, list]] = {}
    labels = run.record.value_labels
    if format == "psych201":
        written = _psych201(run, folder)
    else:
        if layout == "wide":
            if run.kind != "simulation":
                raise PsysimError(
                    f"{display_path(run.folder)} is a scoring run: its responses are the humans' own, already in your data file",
                    [Problem("export a simulation run with --layout wide, or this run in the long layout")],
                )
            table, items = _wide(run)
            stem = "wide"
        else:
            table = _tidy(run)
            stem = "simulated" if run.kind == "simulation" else "trials"
        ext = {"csv": "csv", "parquet": "parquet", "stata": "dta", "spss": "sav"}[format]
        path = folder / f"{stem}.{ext}"
        if format == "parquet":
            write_atomic(path, lambda tmp: table.to_parquet(tmp, index=False))
        elif format == "csv":
            flat = table.copy()
            for column in flat.columns:
                if _dtype(flat[column]).startswith("list"):
                    flat[column] = [None if v is None else json.dumps(list(v)) for v in flat[column]]
            write_atomic(path, lambda tmp: flat.to_csv(tmp, index=False))
        else:
            _write_labelled(path, table, format, labels, items, run.record.field_labels)
        written[path.name] = table
    columns = ["file", "column", "type", "meaning", "values"]
    dictionary = pd.DataFrame(_dictionary(written, labels, items), columns=columns)
    path = folder / "data_dictionary.csv"
    if path.exists():  # keep the entries of files other exports wrote into this folder
        old = pd.read_csv(path, dtype=str, keep_default_na=False).reindex(columns=columns, fill_value="")
        dictionary = pd.concat([old[~old["file"].isin(list(written))], dictionary], ignore_index=True)
        # Files in name order, columns in their order within each: the same dictionary however exports were repeated.
        dictionary = dictionary.sort_values("file", kind="stable").reset_index(drop=True)
    write_atomic(path, lambda tmp: dictionary.to_csv(tmp, index=False))
    return [folder / name for name in written] + [path]


def _psych201(run: SavedRun, folder: Path) -> dict[str, Any]:
    """One Psych-201 JSONL file per model × condition of a simulation (module docstring)."""
    import pandas as pd

    if run.kind != "simulation":
        raise PsysimError(
            f"{display_path(run.folder)} is a scoring run: it holds scores of human transcripts, not new transcripts",
            [
                Problem("export it as csv or parquet; its human transcripts are the experiment's data file itself"),
            ],
        )
    written: dict[str, Any] = {}
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
    return written


def _numeric_codes(values) -> bool:
    """Whether every non-missing value reads as a number (``"1"``, 2, ``"3.0"``): then it is stored as one."""
    seen = False
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            return False
        seen = True
    return seen


def _write_labelled(path: Path, table, format: str, labels, items, field_labels) -> None:
    """A table as Stata .dta (pandas) or SPSS .sav (pyreadstat), with variable and value labels.

    Variable names follow both formats' rules (letters, digits, underscores;
    ``profile.age`` becomes ``age``); the original column name is the
    variable's label where there is no better one (an item's text, a field's
    question). Columns whose values are all numbers are stored as numbers, so
    that value labels (keyed by number in both formats) attach.
    """
    import pandas as pd

    frame = pd.DataFrame(index=table.index)
    var_labels: dict[str, str] = {}
    value_labels: dict[str, dict[float, str]] = {}
    used: set[str] = set()
    for column in table.columns:
        field = column[len("profile.") :] if column.startswith("profile.") else None
        name = _variable_name(field or column, used)
        values = table[column]
        flat = values.map(lambda v: json.dumps(list(v)) if isinstance(v, (list, tuple)) or hasattr(v, "tolist") else v)
        if _numeric_codes(flat):
            frame[name] = pd.to_numeric(flat.astype(object).where(flat.notna(), None), errors="coerce")
            codes = labels.get(field, {}) if field else {}
            numeric = {}
            for k, v in codes.items():
                try:
                    numeric[float(k)] = str(v)
                except ValueError:
                    continue
            if numeric:
                value_labels[name] = numeric
        else:
            frame[name] = flat.astype(object).where(flat.notna(), "").astype(str)
        if column in items:
            var_labels[name] = f"{column}: {items[column][0]}"
        elif field:
            var_labels[name] = field_labels.get(field) or field
        else:
            var_labels[name] = MEANINGS.get(column, column)
    var_labels = {k: v[:80] for k, v in var_labels.items()}  # Stata's limit; SPSS allows more, but one text serves both

    def write(tmp: Path) -> None:
        if format == "stata":
            frame.to_stata(tmp, write_index=False, variable_labels=var_labels, value_labels=value_labels or None, version=118)
        else:
            import pyreadstat

            pyreadstat.write_sav(
                frame, str(tmp), column_labels=[var_labels[c] for c in frame.columns], variable_value_labels=value_labels
            )

    write_atomic(path, write)


def _variable_name(column: str, used: set[str]) -> str:
    """A Stata/SPSS variable name for a column: letters, digits and underscores, at most 32 characters, unique."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", column).strip("_") or "v"
    if name[0].isdigit():
        name = "v" + name
    name = name[:32]
    base, k = name, 2
    while name.lower() in used:
        suffix = f"_{k}"
        name, k = base[: 32 - len(suffix)] + suffix, k + 1
    used.add(name.lower())
    return name


def _safe(name: str) -> str:
    """A model or condition name as a file name (registry names may contain / or :)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
