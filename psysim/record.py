"""What a run folder records about how its numbers were made: the manifest's common fields and the fingerprint.

Every command that writes a folder (``run``, ``simulate``, ``finetune``)
records the same things from here: the experiment's settings that can change a
number, the sha256 of every input file, the versions of psysim and the
libraries it computes with, the machine, and a fingerprint of all that, which
decides whether an existing folder can be resumed (:mod:`psysim.store`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import time
from typing import Any

from .experiment import Experiment
from .files import display_path
from .store import FORMAT

__all__ = ["fingerprint", "inputs", "manifest_base", "now", "result_config", "study_manifest", "versions"]


def versions() -> dict[str, str | None]:
    """The installed version of psysim and of every library that can change a number (None where not installed)."""
    from importlib import metadata

    out = {}
    for pkg in ("psysim", "torch", "transformers", "peft", "numpy", "pandas", "scikit-learn", "pyarrow", "jsonschema", "Jinja2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def now(t: float) -> str:
    """``t`` (seconds since the epoch) as an ISO 8601 UTC timestamp, as manifests write times."""
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat()


def inputs(exp: Experiment) -> dict[str, str]:
    """sha256 of every input file the run reads (data, profiles, schema, templates), by their YAML key."""
    from .registry import file_sha256

    cfg = exp.config
    files = {"cohort.schema": cfg.cohort.schema}
    if len(cfg.studies) > 1:
        files.update({f"data.{s.name}.path": s.path for s in cfg.studies})
    else:
        files["data.path"] = cfg.data.path
    if cfg.cohort.path is not None:
        files["cohort.path"] = cfg.cohort.path
    files.update({f"data.templates.{k}": v for k, v in cfg.data.templates.items()})
    return {key: file_sha256(path) for key, path in sorted(files.items())}


def result_config(exp: Experiment) -> dict[str, Any]:
    """The experiment file's settings that can change a number: all but where results go and the description."""
    return {k: v for k, v in exp.config.raw.items() if k not in ("output", "description")}


def fingerprint(key: dict[str, Any]) -> str:
    """SHA-256 of everything that decides a run's numbers (config, input hashes, limits, versions), as canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def manifest_base(exp: Experiment, *, limit, dry_run: bool, kind: str | None = None) -> dict[str, Any]:
    """The fields every run folder's manifest starts with (``psysim run`` and ``psysim simulate``), fingerprint included.

    ``kind`` (the simulation's) enters the fingerprint; a scoring run's fingerprint is keyed without it.
    """
    cfg = exp.config
    config, hashes, packages = result_config(exp), inputs(exp), versions()
    key = {"config": config, "inputs": hashes, "limit": limit, "dry_run": dry_run, "psysim": packages["psysim"]}
    if kind is not None:
        key["kind"] = kind
    return {
        "psysim_run": FORMAT,
        "kind": kind or "scoring",
        "experiment": cfg.name,
        "config_path": display_path(cfg.path),
        "config_sha256": cfg.sha256,
        "config": config,
        "inputs": hashes,
        "fingerprint": fingerprint(key),
        "seed": cfg.seed,
        "dry_run": dry_run,
        "limit": limit,
        "save_every": cfg.save_every,
        "model_order": [m.name for m in cfg.models],
        "conditions": [c.name for c in cfg.conditions],
        "condition_types": {c.name: {"type": c.type, "format": c.format} for c in cfg.conditions},
        # The words the schema gives coded values (e.g. sex "1" = "Female"): report subgroups and export dictionaries.
        "value_labels": {name: dict(spec.value_labels) for name, spec in exp.schema.fields.items() if spec.value_labels},
        # Each field's question (x-psysim.question, else its label): variable labels of Stata/SPSS exports.
        "field_labels": {name: spec.question or spec.label for name, spec in exp.schema.fields.items()},
        "versions": packages,
        "python": platform.python_version(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "started": now(time.time()),
    }


def study_manifest(exp: Experiment, participants) -> dict[str, dict[str, Any]]:
    """Per study: its declared option and item rules, whether options are pooled, and whether it has profiles."""
    chosen = {exp.study(p) for p in participants}
    out = {}
    for prof in exp.study_profiles():
        if prof.name not in chosen:
            continue
        out[prof.name] = {
            "options": prof.options,
            "item": prof.item,
            "pooled_options": prof.approximate,
            "profiles": prof.has_profiles,
            "items": prof.items,
            "excluded": prof.excluded,
        }
    return out
