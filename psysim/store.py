"""The run folder: everything a run computed, saved as it is computed, so that nothing is lost.

Layout of a run folder (documented for users in docs/results.md)::

    manifest.json          what was run: config and fingerprint, plan, versions, model hashes, status
    parts/<m>-<b>.parquet  the scored rows of model m, participant batch b — one file per saved batch
    trials.parquet         every scored response, in canonical order      (written when the run completes)
    participants.parquet   per-participant metrics beside each profile     (written when the run completes)
    baselines.parquet      cross-validated baseline predictions            (written when the run completes)

Every file is written to a temporary name and renamed into place, so a crash
(Ctrl-C, an exception, ``kill -9``, a power cut) leaves either the old file or
the new one, never half of one. A run resumes by re-reading ``parts/``: saved
batches are not recomputed, and batches are fixed by the plan (participant
order and ``scoring.save_every``), so a resumed run forms exactly the same
batches, and gives exactly the same numbers, as an uninterrupted one.

A folder whose manifest has a different *fingerprint* (the experiment's
settings and the contents of every input file) is never mixed with a new run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import EvaluationConfig
from .errors import Problem, PsysimError
from .files import display_path

__all__ = ["FORMAT", "RunFolder", "RunRecord", "SavedRun", "SimulationRecord", "open_run", "write_atomic"]

#: The run-folder format this psysim writes and reads. Format 1 (psysim before the run store)
#: wrote trials.parquet only at the end and had no fingerprint.
FORMAT = 2
MANIFEST = "manifest.json"
_MAIN_PART = re.compile(r"\d{3}-\d{5}\.parquet")
#: Tables of a complete run folder, by the manifest's ``kind``.
TABLES = {
    "scoring": ("trials", "participants", "baselines"),
    "simulation": ("simulated", "participants", "transcripts"),
}
#: Identity entries that may differ between sessions of one run without changing any score.
_VOLATILE = frozenset({"load_seconds", "path", "threads"})  # how a model was loaded, not which weights
OUTPUTS = (
    "trials.parquet",
    "participants.parquet",
    "baselines.parquet",
    "simulated.parquet",
    "transcripts.parquet",
    "humans.parquet",
    "summary.csv",
    "report.html",
)


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` (atomic on POSIX and Windows)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8"))


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PsysimError(
            f"cannot read the run manifest {display_path(path)}",
            [Problem(f"expected a JSON manifest written by psysim, found unreadable content ({exc})")],
        ) from None
    if not isinstance(data, dict):
        raise PsysimError(f"{display_path(path)} is not a psysim run manifest (expected a JSON object)")
    return data


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


class RunFolder:
    """A run folder being written: the manifest, saved batches, and the final tables.

    Create it with :meth:`open` (new, resumed or restarted); the run then calls
    :meth:`save_batch` per scored batch, :meth:`record_model` per loaded model,
    and :meth:`finish` once at the end.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self.parts = folder / "parts"

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, folder: Path, manifest: dict[str, Any], *, restart: bool = False) -> RunFolder:
        """Start a run in ``folder``, resume the run saved there, or refuse to mix two different runs.

        ``manifest`` describes the run about to start; its ``fingerprint``
        decides whether a saved run is the same run. ``restart`` deletes a
        saved run of any configuration (psysim's files only) and starts afresh.
        """
        old = _read_manifest(folder)
        unfinished_and_empty = (
            old is not None and old.get("status") != "complete" and not any((folder / "parts").glob("*.parquet"))
        )
        if old is not None and (restart or (unfinished_and_empty and old.get("fingerprint") != manifest["fingerprint"])):
            # --restart, or a run that stopped before saving anything (e.g. its model was not pulled):
            # there is nothing computed to protect, so another configuration may start here.
            cls._discard(folder)
            old = None
        if old is not None:
            if old.get("psysim_run") != FORMAT:
                raise PsysimError(
                    f"the results folder {display_path(folder)} holds a run in an older format "
                    f"(run format {old.get('psysim_run', 'unknown')}; this psysim writes format {FORMAT})",
                    [Problem("rerun with --restart to replace it, or choose another folder with --out")],
                )
            if old.get("fingerprint") != manifest["fingerprint"]:
                changed = _changed_keys(old.get("config") or {}, manifest["config"])
                changed += [f"the contents of {k}" for k in _changed_keys(old.get("inputs") or {}, manifest["inputs"])]
                for key in ("limit", "dry_run"):
                    if old.get(key) != manifest.get(key):
                        changed.append(f"--{key.replace('_', '-')}")
                what = ", ".join(changed) or "the settings"
                raise PsysimError(
                    f"the results folder {display_path(folder)} holds a run of a different configuration; "
                    "psysim never mixes two runs in one folder",
                    [
                        Problem(f"changed since that run: {what}"),
                        Problem("choose another folder with --out, or rerun with --restart to discard the saved run"),
                    ],
                )
            # Same run: keep everything the saved manifest knows that the new one does not (model hashes,
            # sessions, run time, when it finished) and its start time; a rerun of a finished run loses nothing.
            merged = {**manifest, **{k: v for k, v in old.items() if k not in manifest}}
            merged["started"] = old.get("started", manifest["started"])
            merged["status"] = old.get("status", "running")
            run = cls(folder, merged)
        else:
            run = cls(folder, {**manifest, "status": "running", "models": {}, "sessions": []})
        run.parts.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob("**/*.tmp"):  # a crash mid-write leaves only these behind
            tmp.unlink(missing_ok=True)
        run._save_manifest()
        return run

    @staticmethod
    def _discard(folder: Path) -> None:
        shutil.rmtree(folder / "parts", ignore_errors=True)
        for name in (MANIFEST, *OUTPUTS):
            (folder / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ writing

    @property
    def complete(self) -> bool:
        """Whether every planned batch was scored and the final tables written."""
        return self.manifest.get("status") == "complete"

    def _part(self, model_index: int, batch: int) -> Path:
        return self.parts / f"{model_index:03d}-{batch:05d}.parquet"

    def saved_batches(self, model_index: int) -> set[int]:
        """The batches of this model (or other unit of work) already saved."""
        out = set()
        for path in self.parts.glob(f"{model_index:03d}-*.parquet"):
            if _MAIN_PART.fullmatch(path.name):
                out.add(int(path.stem.split("-")[1]))
        return out

    def record_model(self, name: str, identity: dict[str, Any]) -> None:
        """Remember a model's identity; refuse to resume with different weights than the saved batches used."""
        known = self.manifest["models"].get(name)
        keys = sorted(k for k in set(known or {}) | set(identity) if k not in _VOLATILE)
        changed = ", ".join(k for k in keys if known is not None and known.get(k) != identity.get(k))
        if changed:
            raise PsysimError(
                f"model {name!r} is not the model the saved batches of {display_path(self.folder)} were scored with",
                [
                    Problem(f"changed: {changed}"),
                    Problem("rerun with --restart to rescore everything with this model, or restore the old one"),
                ],
            )
        self.manifest["models"][name] = identity
        self._save_manifest()

    def save_batch(self, model_index: int, batch: int, frame, extra: dict[str, Any] | None = None) -> None:
        """Write one scored batch (atomically); from now on it survives any crash.

        ``extra`` holds further tables of the same batch by name (e.g. the
        simulated transcripts); they are written first, so a batch counts as
        saved only once all of its tables are.
        """
        for name, table in (extra or {}).items():
            path = self.parts / f"{model_index:03d}-{batch:05d}.{name}.parquet"
            write_atomic(path, lambda tmp, t=table: t.to_parquet(tmp, index=False))
        write_atomic(self._part(model_index, batch), lambda tmp: frame.to_parquet(tmp, index=False))

    def saved_rows(self, name: str | None = None):
        """Every saved row (of the main table, or of the extra table ``name``), concatenated, in file order."""
        import pandas as pd

        main = sorted(p for p in self.parts.glob("*.parquet") if _MAIN_PART.fullmatch(p.name))
        paths = main if name is None else [p.with_name(f"{p.stem}.{name}.parquet") for p in main]
        return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True) if paths else None

    def begin_session(self, started: str, resumed_batches: int) -> None:
        """Record that a (possibly resumed) session of this run began."""
        self.manifest["sessions"].append({"started": started, "resumed_batches": resumed_batches, "seconds": None})
        self._save_manifest()

    def record_engine(self, engine: dict[str, Any]) -> None:
        """Record where this session scores (a distributed engine: :mod:`psysim.distributed`); numbers do not depend on it."""
        self.manifest["sessions"][-1]["engine"] = engine
        self._save_manifest()

    def end_session(self, seconds: float) -> None:
        """Record how long this session took."""
        self.manifest["sessions"][-1]["seconds"] = round(seconds, 2)
        self.manifest["seconds"] = round(sum(s["seconds"] or 0 for s in self.manifest["sessions"]), 2)
        self._save_manifest()

    def write_table(self, name: str, frame) -> None:
        """Write one of the final tables (atomically)."""
        write_atomic(self.folder / name, lambda tmp: frame.to_parquet(tmp, index=False))

    def finish(self, extra: dict[str, Any]) -> None:
        """Mark the run complete (after every final table was written)."""
        self.manifest.update(extra)
        self.manifest["status"] = "complete"
        self._save_manifest()

    def _save_manifest(self) -> None:
        _write_json(self.folder / MANIFEST, self.manifest)


@dataclass(frozen=True)
class SimulationRecord:
    """The ``simulation`` part of a simulation run's manifest: how its synthetic participants were made."""

    n: int | None = None
    temperature: float | None = None
    scale: str = "auto"
    format: str = "raw"
    design: str | None = None
    #: Profiles drawn by ``cohort.generate`` (else twins of real participants).
    generated: bool = False


@dataclass(frozen=True)
class RunRecord:
    """A run folder's manifest as the report and export read it: typed, with what an older manifest lacks defaulted here.

    The manifest file itself stays a plain JSON object (written by :class:`RunFolder`,
    its fields by :mod:`psysim.record`); this is the one place that reads it back.
    """

    kind: str = "scoring"
    seed: int = 0
    dry_run: bool = False
    #: Participants in the run (scored, or simulated per model and condition).
    participants: int = 0
    model_order: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    #: Per condition: ``{"type": no_persona | persona | shuffled_persona, "format": the persona format}``.
    condition_types: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Per model: the formats it was scored in (raw, chat).
    formats: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Per study: its declared option and item rules (:func:`psysim.record.study_manifest`).
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationRecord = field(default_factory=SimulationRecord)
    #: The words the profile schema gives coded values, per field.
    value_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Each profile field's question or label.
    field_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> RunRecord:
        """The typed record of a manifest dict (as :func:`open_run` read it)."""
        conditions = tuple(manifest.get("conditions", ()))
        ev = manifest.get("evaluation", {})
        evaluation = EvaluationConfig(
            baselines=tuple(ev.get("baselines", EvaluationConfig.baselines)),
            bootstrap=int(ev.get("bootstrap", EvaluationConfig.bootstrap)),
            post_training=tuple((p["base"], p["post_trained"]) for p in ev.get("post_training", ())),
            fine_tuning=tuple((p["base"], p["fine_tuned"]) for p in ev.get("fine_tuning", ())),
        )
        sim = manifest.get("simulation", {})
        return cls(
            kind=manifest.get("kind", "scoring"),
            seed=int(manifest.get("seed", 0)),
            dry_run=bool(manifest.get("dry_run", False)),
            participants=int(manifest.get("participants", 0)),
            model_order=tuple(manifest.get("model_order", ())),
            conditions=conditions,
            # Manifests before condition types named each condition by its type, in the interview format.
            condition_types=manifest.get("condition_types") or {c: {"type": c, "format": "interview"} for c in conditions},
            formats={m: tuple(f) for m, f in manifest.get("formats", {}).items()},
            studies=manifest.get("studies", {}),
            evaluation=evaluation,
            simulation=SimulationRecord(
                n=sim.get("n", manifest.get("participants")),
                temperature=sim.get("temperature"),
                scale=sim.get("scale", SimulationRecord.scale),
                format=sim.get("format", SimulationRecord.format),
                design=sim.get("design"),
                generated=bool(sim.get("generated", False)),
            ),
            value_labels=manifest.get("value_labels", {}),
            field_labels=manifest.get("field_labels", {}),
        )


class SavedRun:
    """A completed run folder, read back: manifest and tables (for ``psysim report`` and notebooks)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self._cache: dict[str, Any] = {}

    @property
    def kind(self) -> str:
        """``scoring`` (psysim run) or ``simulation`` (psysim simulate)."""
        return self.record.kind

    @property
    def record(self) -> RunRecord:
        """The manifest, typed (:class:`RunRecord`)."""
        if "record" not in self._cache:
            self._cache["record"] = RunRecord.from_manifest(self.manifest)
        return self._cache["record"]

    def table(self, name: str):
        """A table of the run (``trials``, ``participants``, ``baselines``; ``simulated``, ``transcripts``), read once."""
        import pandas as pd

        if name not in self._cache:
            self._cache[name] = pd.read_parquet(self.folder / f"{name}.parquet")
        return self._cache[name]

    @property
    def trials(self):
        return self.table("trials")

    @property
    def participants(self):
        return self.table("participants")

    @property
    def baselines(self):
        return self.table("baselines")


def open_run(folder: str | os.PathLike) -> SavedRun:
    """Open a completed run folder, or explain precisely why it cannot be read."""
    path = Path(folder)
    shown = display_path(path)
    if not path.is_dir():
        raise PsysimError(f"run folder not found: {shown}", [Problem("expected the folder `psysim run` wrote (its output)")])
    manifest = _read_manifest(path)
    if manifest is None and (path / "state.json").exists() and (path / "split.json").exists():
        # A fine-tuning folder: nothing to report by itself, but there is an obvious next step.
        raise PsysimError(
            f"{shown} is a fine-tuning folder (psysim finetune), not a run folder",
            [
                Problem(f"its adapter and card: {shown}/adapter (README.md, psysim_card.json)"),
                Problem(
                    "to compare the adapter with its base model on the held-out people, run an experiment with "
                    f"cohort.split: {{file: {shown}/split.json, part: test}} and both models (see experiments/"
                    "finetune_eval.yaml), then psysim report that run"
                ),
            ],
        )
    if manifest is None:
        raise PsysimError(
            f"{shown} is not a psysim run folder",
            [Problem(f"expected {MANIFEST} (written by `psysim run` or `psysim simulate`), found none")],
        )
    fmt = manifest.get("psysim_run")
    if fmt != FORMAT:
        raise PsysimError(
            f"{shown} was written by an older psysim (run format {fmt}; this psysim reads format {FORMAT})",
            [Problem("rerun the experiment with `psysim run EXPERIMENT.yaml --restart` to rewrite it in this format")],
        )
    if manifest.get("status") != "complete":
        saved = len(list((path / "parts").glob("*.parquet")))
        config = manifest.get("config_path", "EXPERIMENT.yaml")
        raise PsysimError(
            f"{shown} holds an incomplete run ({saved} of {manifest.get('batches_total', '?')} batches saved)",
            [Problem(f"resume it with the same command: psysim run {config} --out {shown}")],
        )
    tables = TABLES.get(manifest.get("kind", "scoring"), TABLES["scoring"])
    missing = [f"{name}.parquet" for name in tables if not (path / f"{name}.parquet").exists()]
    if missing:
        raise PsysimError(
            f"{shown} is marked complete but lacks {', '.join(missing)}",
            [Problem("rerun `psysim run` with --restart to rewrite the run folder")],
        )
    return SavedRun(path, manifest)
